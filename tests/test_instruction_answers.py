"""benchmarks/instruction_answers.py's rates: each check's pass rate beside the asked format anywhere in the answer
(the readings themselves are tested in test_formats.py)."""

import sys

import pytest

from .conftest import ROOT, load_script


@pytest.fixture
def script(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))  # it imports general_data_table beside it
    yield load_script("benchmarks", "instruction_answers")
    sys.modules.pop("general_data_table", None)


KEYS = ["name", "description"]


def test_the_rates_count_each_check_and_its_somewhere_reading(script):
    rows = [{"checks": [["json_keys", {"keys": KEYS}]]}, {"checks": [["json_keys", {"keys": KEYS}]]},
            {"checks": [["numbered_count", {"n": 2}]]}, {"checks": [["max_words", {"n": 3}]]}]
    answers = ['{"name": "a", "description": "b"}', 'Here: {"name": "a", "description": "b"} done.', "1. a\n2. b\nmore",
               "Two words."]
    assert script.check_pass_rates(answers, rows) == {
        "json_keys": 0.5, "json_keys, somewhere in the answer": 1.0, "numbered_count": 0.0,
        "numbered_count, somewhere in the answer": 1.0, "max_words": 1.0}
