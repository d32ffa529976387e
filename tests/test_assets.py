"""The shipped data under forgetless/data/assets: well-formed, held out, leak-free, reproducible."""

from __future__ import annotations

import importlib.util
import random
import re
import sys
from collections import Counter
from pathlib import Path

import pytest

from forgetless.errors import ForgetlessError
from forgetless.fileio import read_jsonl

REPO = Path(__file__).resolve().parents[1]
ASSETS = REPO / "src" / "forgetless" / "data" / "assets"
MC_TASKS = ("capitals", "elements", "currencies", "word_definitions")
PERPLEXITY_TASKS = ("fortunes", "glosses")


def load_build_script():
    """scripts/build_assets.py as a module (scripts/ is not a package)."""
    if "build_assets" not in sys.modules:
        spec = importlib.util.spec_from_file_location("build_assets", REPO / "scripts" / "build_assets.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["build_assets"] = module  # dataclasses look their module up while the file runs
        spec.loader.exec_module(module)
    return sys.modules["build_assets"]


def rows(relative: str) -> list[dict]:
    return read_jsonl(ASSETS / relative)


def texts(relative: str) -> list[str]:
    return [row["text"] for row in rows(relative)]


def answer(item: dict) -> str:
    return item["choices"][item["answer"]]


def mentions(text: str, phrase: str, case_sensitive: bool = False) -> bool:
    flags = 0 if case_sensitive else re.IGNORECASE
    return re.search(rf"(?<!\w){re.escape(phrase)}(?!\w)", text, flags) is not None


def without_article(country: str) -> str:
    return country.removeprefix("the ")


@pytest.mark.parametrize("task", MC_TASKS)
def test_multiple_choice_items_are_well_formed(task):
    items = rows(f"general/{task}.jsonl")
    assert 150 <= len(items) <= 250
    for item in items:
        assert set(item) == {"question", "choices", "answer"}
        assert item["question"].startswith("Question: ") and item["question"].endswith("?\nAnswer:")
        assert len(item["choices"]) == 4
        assert all(isinstance(choice, str) and choice.strip() == choice and choice for choice in item["choices"])
        assert len({choice.lower() for choice in item["choices"]}) == 4
        assert isinstance(item["answer"], int) and 0 <= item["answer"] < 4
    assert len({item["question"] for item in items}) == len(items)
    # The answer position is shuffled: every slot holds the answer for at least a tenth of items.
    positions = Counter(item["answer"] for item in items)
    assert min(positions[slot] for slot in range(4)) >= len(items) // 10


def test_multiple_choice_answers_are_the_source_facts():
    # Spot checks against facts known independently of the Debian files.
    capitals = {re.search(r"capital of (.+)\?", i["question"]).group(1): answer(i) for i in rows("general/capitals.jsonl")}
    assert capitals["France"] == "Paris" and capitals["Japan"] == "Tokyo" and capitals["Kenya"] == "Nairobi"
    assert "Mexico" not in capitals  # capital named like the country: ambiguous, skipped
    elements = {i["question"]: answer(i) for i in rows("general/elements.jsonl")}
    assert elements["Question: What is the chemical symbol for gold?\nAnswer:"] == "Au"
    assert elements["Question: Which chemical element has the symbol Fe?\nAnswer:"] == "Iron"


@pytest.mark.parametrize("task", PERPLEXITY_TASKS)
def test_perplexity_texts(task):
    items = rows(f"general/{task}.jsonl")
    assert 200 <= len(items) <= 300
    assert all(set(item) == {"text"} and 20 <= len(item["text"]) <= 400 for item in items)
    assert len({item["text"] for item in items}) == len(items)


def test_glosses_read_as_word_colon_definition():
    for text in texts("general/glosses.jsonl"):
        word, _, definition = text.partition(": ")
        assert word and definition.endswith(".")


def test_general_train_is_disjoint_from_every_evaluation_text():
    train = texts("general/general_train.jsonl")
    assert 2500 <= len(train) <= 3500
    assert len(set(train)) == len(train)
    evaluation = set(texts("general/fortunes.jsonl")) | set(texts("general/glosses.jsonl"))
    assert not set(train) & evaluation
    # No evaluation fortune hides inside a training text either.
    joined = "\n".join(train)
    assert not [text for text in texts("general/fortunes.jsonl") if text in joined]


def test_general_train_leaks_no_multiple_choice_answer():
    train = texts("general/general_train.jsonl")
    pairs: list[tuple[str, str, bool]] = []  # (first, second, second is case sensitive)
    for item in rows("general/capitals.jsonl"):
        country = re.search(r"capital of (.+)\?", item["question"]).group(1)
        pairs.append((without_article(country), answer(item), False))
    for item in rows("general/elements.jsonl"):
        if match := re.search(r"symbol for (\w+)\?", item["question"]):
            pairs.append((match.group(1), answer(item), True))
        else:
            symbol = re.search(r"the symbol (\w+)\?", item["question"]).group(1)
            pairs.append((answer(item), symbol, True))
    for item in rows("general/currencies.jsonl"):
        if match := re.search(r"currency of (.+)\?", item["question"]):
            pairs.append((without_article(match.group(1)), answer(item), False))
        else:
            currency = re.search(r"uses the (.+) as its currency\?", item["question"]).group(1)
            pairs.append((without_article(answer(item)), currency, False))
    leaks = []
    for text in train:
        lowered = text.lower()
        for first, second, case_sensitive in pairs:
            if first.lower() in lowered and mentions(text, first) and mentions(text, second, case_sensitive):
                leaks.append((first, second, text))
    assert not leaks

    definitions = {}
    for item in rows("general/word_definitions.jsonl"):
        definitions[answer(item).lower()] = re.search(r'means "(.+)"\?', item["question"]).group(1).lower()
    for text in train:
        assert text.split(": ", 1)[0].lower() not in definitions  # no other sense of a defined word
        assert not [d for d in definitions.values() if d in text.lower()]


def test_leak_filter_on_hand_written_texts():
    build = load_build_script()
    leak_filter = build.AnswerLeakFilter(
        capitals=[("France", "Paris")], elements=[("Tin", "Sn")], currencies=[("Japan", "Yen")], definitions=["a domestic cat"]
    )
    assert leak_filter.leaks("Paris is the capital of France.")
    assert leak_filter.leaks("tin (Sn) is a soft metal")
    assert leak_filter.leaks("yen: the basic unit of money in Japan")
    assert leak_filter.leaks("kitty: A domestic cat.")
    assert not leak_filter.leaks("Paris in the spring is lovely.")  # one side of a pair only
    assert not leak_filter.leaks("Snow fell on the tin roof.")  # "Sn" only inside a word
    assert not leak_filter.leaks("Tin and SN are different.")  # symbols are case sensitive


def test_legal_domain_splits():
    train, heldout = texts("domains/legal_train.jsonl"), texts("domains/legal_heldout.jsonl")
    assert not set(train) & set(heldout)
    # Every 5th passage is held out.
    assert len(heldout) == (len(train) + len(heldout)) // 5
    assert all(100 <= len(text) <= 800 for text in train + heldout)
    assert sum(400 <= len(text) for text in train + heldout) >= 0.9 * len(train + heldout)
    assert train[0].startswith("The Constitution of the United States of America")
    assert any("unalienable Rights" in text for text in train + heldout)


def test_jargon_domain_splits_and_cleaning():
    train, heldout = texts("domains/jargon_train.jsonl"), texts("domains/jargon_heldout.jsonl")
    assert (len(train), len(heldout)) == (240, 60) and not set(train) & set(heldout)
    assert all(len(text) <= 800 for text in train + heldout)
    assert sum(400 <= len(text) for text in train + heldout) >= 0.9 * len(train + heldout)
    everything = "\n".join(train + heldout)
    # Cross-reference braces and pronunciation fields are dropped; entries read "term (part of speech): text".
    assert "{" not in everything and "}" not in everything
    headers = re.findall(r"(?:^|\n\n)([^\n:]{1,40}) \(([^)]*)\): ", everything)
    assert len(headers) > 100 and not [kind for _, kind in headers if "/" in kind or "·" in kind]
    # No passage of this domain is in the general evaluation or the general training text.
    general = {row["text"] for task in ("fortunes", "glosses") for row in rows(f"general/{task}.jsonl")}
    assert not general & set(train + heldout)


def test_jargon_entries_on_a_hand_written_lexicon(monkeypatch):
    build = load_build_script()
    text = (
        "Glossary\n\n   :(TM): //\n\n   [Usenet] ASCII rendition of the trademark sign.\n\n"
        "   :/dev/null: /dev\u00b7nuhl/, n.\n\n   [from the Unix null device] A notional black hole; see\n"
        "   {bit bucket}.\n\n   Second paragraph.\n\n"
        "   :frobnitz: pl. frobnitzem, /frob\u00b4nit\u00b7zm/\n\n   An unspecified physical object.\n\n"
        "   :Dilbert:\n\n   n. Name of a comic strip.\n\n"
        "Appendix\u00a0A.\u00a0Hacker Folklore\n\n   :not an entry: n.\n\n   Folklore text.\n"
    )
    monkeypatch.setattr(build, "read_gzip_text", lambda path: text)
    assert build.jargon_entries() == [
        "(TM): [Usenet] ASCII rendition of the trademark sign.",
        "/dev/null (n.): [from the Unix null device] A notional black hole; see bit bucket. Second paragraph.",
        "frobnitz (pl. frobnitzem): An unspecified physical object.",
        "Dilbert: n. Name of a comic strip.",
    ]


def test_shipped_assets_are_small():
    total = sum(path.stat().st_size for path in ASSETS.rglob("*") if path.is_file())
    assert total < 2_000_000


def test_missing_debian_file_names_its_package(monkeypatch):
    build = load_build_script()
    monkeypatch.setattr(build, "SOURCE_PACKAGES", {Path("/nonexistent/data.noun"): "wordnet-base"})
    with pytest.raises(ForgetlessError, match=r"/nonexistent/data.noun.*apt-get install .*wordnet-base"):
        build.check_sources()


def test_mc_item_rejects_duplicate_choices():
    build = load_build_script()
    item = build.mc_item("What is 2+2?", "4", ["3", "5", "6"], random.Random(0))
    assert item["question"] == "Question: What is 2+2?\nAnswer:" and item["choices"][item["answer"]] == "4"
    with pytest.raises(ValueError):
        build.mc_item("What is 2+2?", "4", ["3", "3", "6"], random.Random(0))


def test_rebuild_gives_identical_files(tmp_path):
    build = load_build_script()
    if any(not path.is_file() for path in build.SOURCE_PACKAGES):
        pytest.skip("Debian source packages not installed (wordnet-base fortunes fortunes-min miscfiles dict-elements "
                    "jargon-text)")
    assert build.main(["--out", str(tmp_path)]) == 0
    rebuilt = sorted(path.relative_to(tmp_path) for path in tmp_path.rglob("*.jsonl"))
    # instructions/ is written by scripts/build_instructions.py (checked in test_instructions.py).
    shipped = sorted(path.relative_to(ASSETS) for path in ASSETS.rglob("*.jsonl") if path.parent.name != "instructions")
    assert rebuilt == shipped
    for relative in rebuilt:
        assert (tmp_path / relative).read_bytes() == (ASSETS / relative).read_bytes(), relative
