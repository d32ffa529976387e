"""benchmarks/instruction_answers.py's readings of an answer: the asked format anywhere in it, text around it allowed."""

import sys

import pytest

from forgetless.evaluation.instructions import passes

from .conftest import ROOT, load_script


@pytest.fixture
def script(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))  # it imports general_data_table beside it
    yield load_script("benchmarks", "instruction_answers")
    sys.modules.pop("general_data_table", None)


KEYS = ["name", "description"]
JSON_CASES = [  # (answer, the suite's check passes, the object is somewhere in it)
    ('{"name": "Moon", "description": "A rock."}', True, True),
    ('```json\n{"name": "Moon", "description": "A rock."}\n```', True, True),
    ('Here it is:\n```json\n{"name": "Moon", "description": "A rock."}\n```\nYour answer is above.', False, True),
    ('{"name": "Moon", "description": {"size": "small"}}', True, True),  # a nested value
    ('Sure: {"name": "a}b", "description": "x"} and more', False, True),  # a brace inside a string
    ('{"name": "Moon"}', False, False),  # a key missing
    ('{"name": "Moon", "description": "x", "size": 1} text', False, False),  # a key too many
    ("The moon is a rock.", False, False),
]
LIST_CASES = [  # (answer, n asked, the suite's check passes, the list is somewhere in it)
    ("1. a\n2. b\n3. c", 3, True, True),
    ("Here are three:\n1. a\n2. b\n3. c\n\nYour answer is: 1. a", 3, False, True),
    ("1. a\n2. b\n3. c\n4. d", 3, False, False),  # a longer list is not the asked one
    ("1. a\n3. b\n2. c", 3, False, False),
    ("1) a\n2) b", 2, True, True),
]


@pytest.mark.parametrize("answer, strict, somewhere", JSON_CASES)
def test_a_json_object_with_the_keys_is_found_anywhere(script, answer, strict, somewhere):
    assert passes(answer, [["json_keys", {"keys": KEYS}]]) is strict
    assert script.SOMEWHERE["json_keys"](answer, keys=KEYS) is somewhere


@pytest.mark.parametrize("answer, n, strict, somewhere", LIST_CASES)
def test_a_numbered_list_of_exactly_n_is_found_anywhere(script, answer, n, strict, somewhere):
    assert passes(answer, [["numbered_count", {"n": n}]]) is strict
    assert script.SOMEWHERE["numbered_count"](answer, n=n) is somewhere


def test_the_rates_count_each_check_and_its_somewhere_reading(script):
    rows = [{"checks": [["json_keys", {"keys": KEYS}]]}, {"checks": [["json_keys", {"keys": KEYS}]]},
            {"checks": [["numbered_count", {"n": 2}]]}, {"checks": [["max_words", {"n": 3}]]}]
    answers = ['{"name": "a", "description": "b"}', 'Here: {"name": "a", "description": "b"} done.', "1. a\n2. b\nmore",
               "Two words."]
    assert script.check_pass_rates(answers, rows) == {
        "json_keys": 0.5, "json_keys, somewhere in the answer": 1.0, "numbered_count": 0.0,
        "numbered_count, somewhere in the answer": 1.0, "max_words": 1.0}
