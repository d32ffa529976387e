"""benchmarks/data/short_general.jsonl: the starting model's replies that stopped well inside the suite's budget, to
requests the `instructions` suite does not make (the file is built with the default model: scripts/build_short_general.py)."""

import json
import re
from pathlib import Path

from forgetless.evaluation.instructions import MAX_NEW_TOKENS

from .conftest import load_script

ROOT = Path(__file__).resolve().parents[1]


def test_every_row_is_a_listed_request_answered_well_inside_the_budget(tokenizer, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "scripts"))  # the script imports its neighbours
    script = load_script("scripts", "build_short_general")
    rows = [json.loads(line) for line in (ROOT / "benchmarks/data/short_general.jsonl").read_text().splitlines()]
    asked = script.prompts()
    assert [row["prompt"] for row in rows] == [p for p in asked if p in {row["prompt"] for row in rows}]  # in order
    lengths = [len(tokenizer(row["response"], add_special_tokens=False)["input_ids"]) for row in rows]
    assert min(lengths) > 0 and max(lengths) <= script.SHORT < MAX_NEW_TOKENS - 8  # far from a reply cut by the budget
    # Brevity is asked ("briefly"), never a count or a form the suite checks.
    checked = re.compile(r"\d|\b(words?|lines?|sentences?|json|list|commas?|capital|lowercase|bullets?|start|end)\b", re.I)
    assert not [p for p in asked if checked.search(p)]
    suite_topics = load_script("scripts", "build_instructions").TOPICS
    assert not [p for p in asked if any(f" {topic} " in f" {p.lower()[:-1]} " for topic in suite_topics)]  # none shared
