"""Rebuild the bundled data under src/forgetless/data/assets/ from Debian packages.

Users never run this: the derived files are shipped. Maintainers rebuild them with

    sudo apt-get install -y --no-install-recommends wordnet-base fortunes fortunes-min miscfiles dict-elements jargon-text
    .venv/bin/python scripts/build_assets.py [--out FOLDER]

Everything is deterministic (sorted inputs, fixed seeds), so two runs write byte-identical files.
What each file holds, and under which licence, is in assets/PROVENANCE.md.

Outputs (relative to --out, default src/forgetless/data/assets):
  general/capitals.jsonl, elements.jsonl, currencies.jsonl, word_definitions.jsonl
      4-choice questions {"question", "choices", "answer"}; "Question: ...\\nAnswer:" is the full
      context and each choice is scored as the continuation " " + choice (lm-evaluation-harness style).
  general/fortunes.jsonl, glosses.jsonl      held-out general English for perplexity, {"text"}.
  general/general_train.jsonl                general text strategies may train on or replay, disjoint
                                             from every evaluation file and free of answer leaks.
  domains/legal_train.jsonl, legal_heldout.jsonl   US Constitution + Declaration passages.
  domains/jargon_train.jsonl, jargon_heldout.jsonl The Jargon File's lexicon entries (hacker slang), packed
                                             into passages: a plain-text domain used for no choice of setting.
"""

from __future__ import annotations

import argparse
import gzip
import random
import re
import sys
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

from forgetless.data.pydoc_text import split_into_passages
from forgetless.errors import ForgetlessError
from forgetless.fileio import write_jsonl

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "src" / "forgetless" / "data" / "assets"

WORDNET = Path("/usr/share/wordnet")
FORTUNES = Path("/usr/share/games/fortunes")
COUNTRIES = Path("/usr/share/misc/countries.gz")
CURRENCIES = Path("/usr/share/misc/currency.gz")
ELEMENTS = Path("/usr/share/dictd/elements.dict.dz")
CONSTITUTION = Path("/usr/share/state/us-constitution.gz")
DECLARATION = Path("/usr/share/state/us-declaration.gz")
JARGON = Path("/usr/share/doc/jargon-text/jargon.txt.gz")

# General-interest files only: no ascii-art, IRC logs (linux, debian, knghtbrd), ethnic or
# political jokes, drugs, or the nonsense of zippy and translate-me.
FORTUNE_FILES = (
    "computers", "cookie", "definitions", "education", "food", "fortunes", "goedel", "humorists",
    "kids", "law", "literature", "love", "magic", "medicine", "miscellaneous", "news", "paradoxum",
    "people", "pets", "platitudes", "pratchett", "riddles", "science", "songs-poems", "sports",
    "startrek", "tao", "wisdom", "work",
)

# Which apt package provides each input, for the error message when one is missing.
SOURCE_PACKAGES = {
    **{WORDNET / name: "wordnet-base" for name in ("data.noun", "data.verb", "data.adj", "data.adv", "cntlist.rev")},
    **{
        FORTUNES / name: "fortunes-min" if name in ("fortunes", "literature", "riddles") else "fortunes"
        for name in FORTUNE_FILES
    },
    COUNTRIES: "miscfiles",
    CURRENCIES: "miscfiles",
    CONSTITUTION: "miscfiles",
    DECLARATION: "miscfiles",
    ELEMENTS: "dict-elements",
    JARGON: "jargon-text",
}

MC_ITEMS_MAX = 250
PERPLEXITY_TEXTS = 250
TRAIN_FORTUNES = 1500
TRAIN_GLOSSES = 1500
# Enough passages for 30 steps x batch 4 without repeats, and 60 held out: the size of support's held-out set
# (about a minute of scoring on 2 cores).
JARGON_TRAIN = 240
JARGON_HELDOUT = 60

# ---------------------------------------------------------------------------------------------
# Reading the Debian files


def check_sources() -> None:
    """Fail early, naming the apt package, when an input file is absent."""
    missing = {path: package for path, package in SOURCE_PACKAGES.items() if not path.is_file()}
    if missing:
        raise ForgetlessError(
            f"missing Debian data files ({', '.join(map(str, missing))}); install them with: "
            f"sudo apt-get install -y --no-install-recommends {' '.join(sorted(set(missing.values())))}"
        )


def read_gzip_text(path: Path) -> str:
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        return handle.read()


# ---------------------------------------------------------------------------------------------
# Multiple-choice helpers


def mc_item(question: str, answer: str, distractors: list[str], rng: random.Random) -> dict:
    """One lm-eval style item; the answer lands at a seeded random position among the 4 choices."""
    choices = [answer, *distractors]
    if len(choices) != 4 or len({choice.lower() for choice in choices}) != 4:
        raise ValueError(f"need 4 distinct choices for {question!r}, got {choices}")
    rng.shuffle(choices)
    return {"question": f"Question: {question}\nAnswer:", "choices": choices, "answer": choices.index(answer)}


def pick_distractors(answer: str, pool: list[str], rng: random.Random, forbidden: set[str] = frozenset()) -> list[str]:
    """Three distinct members of `pool` (same type as the answer), none equal to it or forbidden."""
    candidates = sorted({x for x in pool if x.lower() != answer.lower() and x.lower() not in forbidden})
    return rng.sample(candidates, 3)


def ask(question: str, answer: str, pool: list[str], rng: random.Random, forbidden: set[str] = frozenset()) -> dict:
    """`mc_item` with distractors drawn from `pool`."""
    return mc_item(question, answer, pick_distractors(answer, pool, rng, forbidden), rng)


def cap_items(items: list[dict], rng: random.Random) -> list[dict]:
    """At most MC_ITEMS_MAX items, a seeded sample that keeps the original order."""
    if len(items) <= MC_ITEMS_MAX:
        return items
    keep = sorted(rng.sample(range(len(items)), MC_ITEMS_MAX))
    return [items[i] for i in keep]


# ---------------------------------------------------------------------------------------------
# Countries and capitals (miscfiles: countries.gz, "UN code:ISO2:ISO3:name:capital")

# The file's formal UN names read oddly in a question; these are the names people use.
COUNTRY_NAMES = {
    "Bahamas": "the Bahamas",
    "Brunei Darussalam": "Brunei",
    "Democratic People's Republic of Korea": "North Korea",
    "Falkland Islands (Malvinas)": "the Falkland Islands",
    "Federated States of Micronesia": "Micronesia",
    "Lao People's Democratic Republic": "Laos",
    "Libyan Arab Jamahiriya": "Libya",
    "Republic of Korea": "South Korea",
    "Republic of Moldova": "Moldova",
    "Russian Federation": "Russia",
    "Syrian Arab Republic": "Syria",
    "Taiwan, Province of China": "Taiwan",
    "The former Yugoslav Republic of Macedonia": "North Macedonia",
    "United Kingdom of Great Britain and Northern Ireland": "the United Kingdom",
    "United Republic of Tanzania": "Tanzania",
    "United States of America": "the United States",
    "Viet Nam": "Vietnam",
}
# Transliterations with stray apostrophes in the source.
CAPITAL_SPELLINGS = {"T'bilisi": "Tbilisi", "'Amman": "Amman"}
# Facts the 2000s-era file has that are no longer true (Myanmar moved its capital in 2005).
STALE_CAPITALS = {"Myanmar"}


@dataclass(frozen=True)
class Country:
    iso2: str
    name: str  # as used in questions (COUNTRY_NAMES applied)
    capital: str  # "" when the file gives none


def read_countries() -> list[Country]:
    countries = []
    for line in read_gzip_text(COUNTRIES).splitlines():
        if line.startswith("#") or not line.strip():
            continue
        _, iso2, _, name, capital = line.split(":")
        capital = CAPITAL_SPELLINGS.get(capital.strip(), capital.strip())
        countries.append(Country(iso2.strip(), COUNTRY_NAMES.get(name.strip(), name.strip()), capital))
    return countries


def bare(name: str) -> str:
    return re.sub(r"^the ", "", name).lower()


def capital_pairs(countries: list[Country]) -> list[Country]:
    """Countries whose capital question has one clear answer."""
    capital_counts: dict[str, int] = {}
    for country in countries:
        capital_counts[country.capital] = capital_counts.get(country.capital, 0) + 1
    return [
        country
        for country in countries
        if country.capital
        and "(" not in country.capital  # "Pretoria (official), Cape Town (legislative), ..."
        and capital_counts[country.capital] == 1  # Kingston: Jamaica and Norfolk Island
        and bare(country.name) not in country.capital.lower()  # Mexico / Mexico, Guatemala City
        and country.capital.lower() not in bare(country.name)
        and country.name not in STALE_CAPITALS
    ]


def build_capitals(countries: list[Country]) -> list[dict]:
    rng = random.Random(101)
    pairs = capital_pairs(countries)
    pool = [country.capital for country in pairs]
    items = [
        ask(f"What is the capital of {country.name}?", country.capital, pool, rng)
        for country in pairs
    ]
    return cap_items(items, rng)


# ---------------------------------------------------------------------------------------------
# Chemical elements (dict-elements: dictd text, "name\nSymbol: X\nAtomic number: N")

LAST_NAMED_ELEMENT = 103  # beyond lawrencium the file has provisional "unnil..." names


def read_elements() -> list[tuple[str, str]]:
    """(name, symbol) in atomic-number order, names capitalised as in running text."""
    text = gzip.decompress(ELEMENTS.read_bytes()).decode("latin-1")  # the file is not UTF-8
    found = re.findall(r"\n\n([a-z]+)\nSymbol: (\w+)\nAtomic number: (\d+)\n", text)
    by_number = {int(number): (name.capitalize(), symbol) for name, symbol, number in found}
    return [by_number[number] for number in sorted(by_number) if number <= LAST_NAMED_ELEMENT]


def build_elements(elements: list[tuple[str, str]]) -> list[dict]:
    rng = random.Random(102)
    names = [name for name, _ in elements]
    symbols = [symbol for _, symbol in elements]
    items = []
    for name, symbol in elements:
        items.append(ask(f"What is the chemical symbol for {name.lower()}?", symbol, symbols, rng))
        items.append(ask(f"Which chemical element has the symbol {symbol}?", name, names, rng))
    return cap_items(items, rng)


# ---------------------------------------------------------------------------------------------
# Currencies (miscfiles: currency.gz, "ISO code:number:name", joined to countries by ISO2 = code[:2])

# Codes that are funds or accounting units rather than a country's money.
NON_CURRENCY_CODES = {"BOV", "CLF", "COU", "MXV", "USN", "USS"}
# Currencies since replaced (mostly by the euro); the file predates the change.
STALE_CURRENCY_CODES = {"CYP", "EEK", "LTL", "LVL", "MTL", "SIT", "SKK", "HRK", "SDD", "MGF", "ZWD", "GHC"}


def currency_pairs(countries: list[Country]) -> list[tuple[str, str]]:
    """(country, currency) where exactly one current currency code starts with the country's ISO2."""
    by_prefix: dict[str, list[str]] = {}
    for line in read_gzip_text(CURRENCIES).splitlines():
        if line.startswith("#") or not line.strip():
            continue
        code, _, name = line.split(":", 2)
        if code in NON_CURRENCY_CODES or code in STALE_CURRENCY_CODES:
            continue
        by_prefix.setdefault(code[:2], []).append(name.strip())
    pairs = []
    for country in countries:
        names = by_prefix.get(country.iso2, [])
        if len(names) == 1:
            pairs.append((country.name, names[0]))
    currency_counts: dict[str, int] = {}
    for _, currency in pairs:
        currency_counts[currency.lower()] = currency_counts.get(currency.lower(), 0) + 1
    return [(country, currency) for country, currency in pairs if currency_counts[currency.lower()] == 1]


def build_currencies(countries: list[Country]) -> list[dict]:
    """Both directions: a country's currency, and which country uses a currency."""
    rng = random.Random(103)
    pairs = currency_pairs(countries)
    currencies = [currency for _, currency in pairs]
    names = [country for country, _ in pairs]
    items = []
    for country, currency in pairs:
        items.append(ask(f"What is the currency of {country}?", currency, currencies, rng))
    for country, currency in pairs:
        items.append(ask(f"Which country uses the {currency} as its currency?", country, names, rng))
    return cap_items(items, rng)


# ---------------------------------------------------------------------------------------------
# WordNet (wordnet-base): synsets, and how often each word sense occurs in tagged text

POS_FILES = {"n": "data.noun", "v": "data.verb", "a": "data.adj", "r": "data.adv"}
SENSE_KEY_POS = {"n": 1, "v": 2, "a": 3, "r": 4}  # 's' satellites need a head word; skipped


@dataclass(frozen=True)
class Synset:
    key: str  # "n:02084071", unique
    pos: str
    lexfile: int  # WordNet's semantic field, e.g. 5 = noun.animal
    lemmas: tuple[str, ...]  # spaces for underscores, adjective markers "(a)" removed
    definition: str  # the gloss without its quoted examples
    sense_keys: tuple[str, ...]  # "dog%1:05:00::" per lemma


def read_synsets() -> list[Synset]:
    synsets = []
    for pos, filename in POS_FILES.items():
        with open(WORDNET / filename, encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("  "):  # licence header
                    continue
                fields, _, gloss = line.partition(" | ")
                parts = fields.split()
                offset, lex_filenum, ss_type, word_count = parts[0], int(parts[1]), parts[2], int(parts[3], 16)
                words = parts[4 : 4 + 2 * word_count : 2]
                lex_ids = parts[5 : 5 + 2 * word_count : 2]
                words = [re.sub(r"\(\w+\)$", "", w) for w in words]  # adjective markers: "big(a)"
                lemmas = tuple(w.replace("_", " ") for w in words)
                keys = tuple(
                    f"{w.lower()}%{SENSE_KEY_POS[ss_type]}:{lex_filenum:02d}:{int(lex_id, 16):02d}::"
                    if ss_type in SENSE_KEY_POS
                    else ""
                    for w, lex_id in zip(words, lex_ids)
                )
                definition = gloss.split('; "')[0].strip().rstrip(";").strip()
                synsets.append(Synset(f"{pos}:{offset}", pos, lex_filenum, lemmas, definition, keys))
    return synsets


def read_sense_counts() -> dict[str, tuple[int, int]]:
    """sense key -> (sense number, times tagged in the SemCor corpus)."""
    counts = {}
    with open(WORDNET / "cntlist.rev", encoding="utf-8") as handle:
        for line in handle:
            key, sense_number, count = line.split()
            counts[key] = (int(sense_number), int(count))
    return counts


def is_plain_ascii(text: str) -> bool:
    return all(32 <= ord(char) < 127 for char in text)


def gloss_text(synset: Synset) -> str:
    """A gloss written as a sentence: "dog: a member of the genus Canis ..."."""
    return f"{synset.lemmas[0]}: {synset.definition}."


def usable_for_gloss_text(synset: Synset) -> bool:
    head = synset.lemmas[0]
    return (
        head[:1].islower()  # common words; proper-noun glosses are where the geography facts live
        and is_plain_ascii(head + synset.definition)
        and 25 <= len(synset.definition) <= 250
    )


# Word-definition questions: common words, their most frequent sense, a gloss that does not give
# the word away. Counts per part of speech keep the mix close to natural text.
DEFINITION_ITEMS = {"n": 110, "v": 60, "a": 40}
MIN_TAG_COUNT = 8


SenseCounts = dict[str, tuple[int, int]]
WordSense = tuple[str, Synset]


def definition_candidates(synsets: list[Synset], counts: SenseCounts) -> dict[str, list[WordSense]]:
    """Per part of speech: (word, synset) where the synset is the word's first, frequent sense."""
    candidates: dict[str, list[WordSense]] = {pos: [] for pos in DEFINITION_ITEMS}
    for synset in synsets:
        if synset.pos not in DEFINITION_ITEMS:
            continue
        for word, key in zip(synset.lemmas, synset.sense_keys):
            sense_number, count = counts.get(key, (0, 0))
            stem = word[:5].lower()
            if (
                sense_number == 1
                and count >= MIN_TAG_COUNT
                and re.fullmatch(r"[a-z]{3,}", word)
                and stem not in synset.definition.lower()  # "happiness: the state of being happy"
                and is_plain_ascii(synset.definition)
                and 20 <= len(synset.definition) <= 160
            ):
                candidates[synset.pos].append((word, synset))
                break
    return candidates


def build_word_definitions(synsets: list[Synset], counts: SenseCounts) -> tuple[list[dict], list[WordSense]]:
    """Items, and the (word, synset) pairs they ask about (general_train must avoid them)."""
    rng = random.Random(104)
    candidates = definition_candidates(synsets, counts)
    # Synonyms must never be distractors: words sharing any synset with the answer are forbidden.
    synonyms_of: dict[str, set[str]] = {}
    for synset in synsets:
        lowered = {lemma.lower() for lemma in synset.lemmas}
        for lemma in lowered:
            synonyms_of.setdefault(lemma, set()).update(lowered)
    used: list[WordSense] = []
    items = []
    for pos, wanted in DEFINITION_ITEMS.items():
        pool = sorted(candidates[pos], key=lambda pair: pair[0])
        chosen = rng.sample(pool, wanted)
        for word, synset in chosen:
            # Distractors come from another semantic field, so a near-synonym ("detail" for
            # "component") cannot also fit the definition.
            words = [other for other, other_synset in pool if other_synset.lexfile != synset.lexfile]
            distractors = pick_distractors(word, words, rng, forbidden=synonyms_of[word])
            items.append(mc_item(f'Which word means "{synset.definition}"?', word, distractors, rng))
            used.append((word, synset))
    return items, used


# ---------------------------------------------------------------------------------------------
# Fortunes (fortunes, fortunes-min: "%"-separated entries)

# Words that make a fortune look offensive (after the criteria in fortunes' own "Offensive" notes:
# sex, religion, vulgarity, violence); such entries are skipped, not censored.
OFFENSIVE_WORDS = frozenset(
    """ass asses bastard bitch bloody breast breasts christ church cock crap cunt damn dick drunk
    fag fuck fucking god gods hell hitler jesus jew jews kill killed killing kills murder nazi
    naked nigger nude orgasm penis porn rape religion screw sex sexual sexy shit slut suicide
    tits virgin vagina whore""".split()
)


def clean_fortune(raw: str) -> str | None:
    """The fortune on one line, or None when it is ascii art, too short/long, or offensive-looking."""
    if not is_plain_ascii(raw.replace("\n", " ").replace("\t", " ")):
        return None
    if re.search(r"[|_\\/=*#~^<>{}]{2,}|^\s*[<\[]\w+[>\]]", raw, flags=re.MULTILINE):
        return None  # drawings, boxes, rules, IRC transcripts
    text = re.sub(r"\s+", " ", raw).strip()
    if not 40 <= len(text) <= 400:
        return None
    letters = sum(char.isalpha() or char == " " for char in text)
    if letters < 0.85 * len(text):
        return None
    if OFFENSIVE_WORDS & set(re.findall(r"[a-z]+", text.lower())):
        return None
    return text


def read_fortunes() -> list[str]:
    """Clean, distinct fortunes in (file, position) order."""
    seen: set[str] = set()
    fortunes = []
    for name in FORTUNE_FILES:
        for raw in (FORTUNES / name).read_text(encoding="utf-8", errors="replace").split("\n%\n"):
            text = clean_fortune(raw)
            if text and text.lower() not in seen:
                seen.add(text.lower())
                fortunes.append(text)
    return fortunes


# ---------------------------------------------------------------------------------------------
# Leak filter for general_train


def whole_phrase(phrase: str, case_sensitive: bool = False) -> re.Pattern:
    """Matches `phrase` as whole words ("Sn" not inside "Snow")."""
    return re.compile(rf"(?<!\w){re.escape(phrase)}(?!\w)", 0 if case_sensitive else re.IGNORECASE)


class AnswerLeakFilter:
    """The fact pairs the multiple-choice files ask about; training text must not state any of them.

    A text leaks a pair when it mentions both sides (a country and its capital or currency, an
    element and its symbol), or contains the definition of a word_definitions item.
    """

    def __init__(
        self,
        capitals: list[tuple[str, str]],
        elements: list[tuple[str, str]],
        currencies: list[tuple[str, str]],
        definitions: list[str],
    ):
        self.pairs = [(whole_phrase(bare(country)), whole_phrase(capital)) for country, capital in capitals]
        self.pairs += [(whole_phrase(name), whole_phrase(symbol, case_sensitive=True)) for name, symbol in elements]
        self.pairs += [(whole_phrase(bare(country)), whole_phrase(currency)) for country, currency in currencies]
        self.definitions = [definition.lower() for definition in definitions]

    def leaks(self, text: str) -> bool:
        lowered = text.lower()
        return any(first.search(text) and second.search(text) for first, second in self.pairs) or any(
            definition in lowered for definition in self.definitions
        )


# ---------------------------------------------------------------------------------------------
# Legal domain (miscfiles: /usr/share/state)


def is_heading(paragraph: str) -> bool:
    """"Article I", "Section 2", "Amendment XIV": short lines without closing punctuation."""
    return len(paragraph) < 40 and not paragraph.endswith((".", ";", ":", ","))


def legal_passages() -> list[str]:
    """Constitution then Declaration, paragraphs reflowed to one line, packed into 400-800 characters.

    Headings are joined to the paragraph they introduce ("Section 2. The House of ..."), so that a
    passage never ends on a bare heading.
    """
    passages = []
    for path in (CONSTITUTION, DECLARATION):
        paragraphs = [re.sub(r"\s+", " ", p).strip() for p in re.split(r"\n\s*\n", read_gzip_text(path)) if p.strip()]
        merged: list[str] = []
        pending_headings: list[str] = []
        for paragraph in paragraphs:
            if is_heading(paragraph):
                pending_headings.append(paragraph)
                continue
            merged.append(". ".join([*pending_headings, paragraph]))
            pending_headings = []
        merged.extend(pending_headings)
        passages.extend(split_into_passages("\n\n".join(merged), max_chars=800, min_chars=400))
    return passages


def jargon_entries() -> list[str]:
    """The lexicon's entries as one line each: "term (n.): text", cross-reference braces and pronunciations dropped.

    The lexicon runs from the first entry header (`   :term: /pron/, n.`) to Appendix A; each entry is its header
    and the indented paragraphs under it.
    """
    text = read_gzip_text(JARGON)
    end = re.search(r"\nAppendix\s+A\.\s+Hacker Folklore", text).start()  # the title has no-break spaces
    lexicon = text[text.index("\n   :(TM):"):end]
    entries = []
    for block in re.split(r"\n(?=   :[^\n]+:)", lexicon):
        header, _, body = block.strip("\n").partition("\n")
        found = re.fullmatch(r"\s*:(.+?):\s*(.*)", header)
        if found is None:
            continue
        term, rest = found.groups()
        # "/dev·nuhl/, n." -> "n."; "pl., frobnitzem, /frob´nit·zm/, frobni" -> "pl., frobnitzem, frobni"
        kind = ", ".join(part.strip() for part in re.sub(r"/[^/]*/", "", rest).split(",") if part.strip())
        body = re.sub(r"\{([^}]*)\}", r"\1", re.sub(r"\s+", " ", body)).strip()
        if body:
            entries.append(f"{term} ({kind}): {body}" if kind else f"{term}: {body}")
    return entries


def jargon_passages() -> tuple[list[str], list[str]]:
    """(train, held out): entries in a seeded order packed into 400-800 characters, every 5th passage held out."""
    entries = jargon_entries()
    random.Random(108).shuffle(entries)
    passages = split_into_passages("\n\n".join(entries), max_chars=800, min_chars=400)
    heldout = passages[4::5][:JARGON_HELDOUT]
    train = [t for i, t in enumerate(passages) if i % 5 != 4][:JARGON_TRAIN]
    return train, heldout


# ---------------------------------------------------------------------------------------------


def build(out: Path) -> dict[str, int]:
    """Write every asset under `out`; returns rows per file (relative path -> count)."""
    check_sources()
    countries = read_countries()
    synsets = read_synsets()
    counts = read_sense_counts()
    elements = read_elements()

    capitals = build_capitals(countries)
    element_items = build_elements(elements)
    currencies = build_currencies(countries)
    definitions, defined = build_word_definitions(synsets, counts)

    # Perplexity texts and training text come from one seeded shuffle of each source, so the
    # evaluation slice and the training slice cannot overlap.
    fortunes = read_fortunes()
    random.Random(105).shuffle(fortunes)
    defined_words = {word.lower() for word, _ in defined}
    defined_keys = {synset.key for _, synset in defined}
    gloss_synsets = [s for s in synsets if usable_for_gloss_text(s) and s.key not in defined_keys]
    random.Random(106).shuffle(gloss_synsets)

    fortune_eval = fortunes[:PERPLEXITY_TEXTS]
    gloss_eval = [gloss_text(s) for s in gloss_synsets[:PERPLEXITY_TEXTS]]

    leak_filter = AnswerLeakFilter(
        capitals=[(c.name, c.capital) for c in capital_pairs(countries)],
        elements=elements,
        currencies=currency_pairs(countries),
        definitions=[synset.definition for _, synset in defined],
    )
    # Generators with islice: the leak filter only runs until enough clean texts are found.
    train_fortunes = list(islice((t for t in fortunes[PERPLEXITY_TEXTS:] if not leak_filter.leaks(t)), TRAIN_FORTUNES))
    train_glosses = list(
        islice(
            (
                gloss_text(s)
                for s in gloss_synsets[PERPLEXITY_TEXTS:]
                # another sense of a defined word would teach the word-definition pairing
                if not {lemma.lower() for lemma in s.lemmas} & defined_words and not leak_filter.leaks(gloss_text(s))
            ),
            TRAIN_GLOSSES,
        )
    )
    general_train = train_fortunes + train_glosses
    random.Random(107).shuffle(general_train)

    legal = legal_passages()
    jargon_train, jargon_heldout = jargon_passages()
    outputs = {
        "general/capitals.jsonl": capitals,
        "general/elements.jsonl": element_items,
        "general/currencies.jsonl": currencies,
        "general/word_definitions.jsonl": definitions,
        "general/fortunes.jsonl": [{"text": t} for t in fortune_eval],
        "general/glosses.jsonl": [{"text": t} for t in gloss_eval],
        "general/general_train.jsonl": [{"text": t} for t in general_train],
        "domains/legal_train.jsonl": [{"text": t} for i, t in enumerate(legal) if i % 5 != 4],
        "domains/legal_heldout.jsonl": [{"text": t} for i, t in enumerate(legal) if i % 5 == 4],
        "domains/jargon_train.jsonl": [{"text": t} for t in jargon_train],
        "domains/jargon_heldout.jsonl": [{"text": t} for t in jargon_heldout],
    }
    for relative, rows in outputs.items():
        write_jsonl(out / relative, rows)
    return {relative: len(rows) for relative, rows in outputs.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help="folder to write into (default: the package's assets)"
    )
    args = parser.parse_args(argv)
    try:
        written = build(args.out)
    except ForgetlessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for relative, count in written.items():
        print(f"{count:5d}  {args.out / relative}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
