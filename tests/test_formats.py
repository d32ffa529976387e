"""The `formats` check: the asked structure anywhere in an instruction answer, text around it allowed, and its
change in a comparison's row (forgetless.evaluation.formats)."""

import json

import pytest

from forgetless.comparison_rows import ComparisonRow, fill_formats, generation_checks
from forgetless.evaluation.evaluator import EvaluationLog
from forgetless.evaluation.formats import (
    bullets_anywhere,
    format_change,
    format_samples,
    json_anywhere,
    numbered_anywhere,
)
from forgetless.evaluation.instructions import instruction_suite, passes
from forgetless.metrics import ScoreSamples
from forgetless.results import GeneralTaskChange

KEYS = ["name", "description"]
ANY = ("json_keys", "numbered_count", "bullet_count")  # the structures the check reads
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
BULLET_CASES = [  # (answer, n asked, the suite's check passes, the bullets are somewhere in it)
    ("- a\n- b\n- c", 3, True, True),
    ("* a\n* b\n* c", 3, True, True),
    ("Three facts:\n- a\n- b\n- c\n\nThat is the ocean.", 3, False, True),
    ("- a\n- b\n- c\n- d", 3, False, False),  # four bullets are not the asked three
    ("- a\n- b\ntext\n- c", 3, False, False),  # not one run
    ("- a\n- b\ntext\n- c\n- d\n- e", 3, False, True),  # the second run is the asked one
    ("-a\n-b\n-c", 3, False, False),  # no space: not a bullet to the suite either
]


@pytest.mark.parametrize("answer, strict, anywhere", JSON_CASES)
def test_a_json_object_with_the_keys_is_found_anywhere(answer, strict, anywhere):
    assert passes(answer, [["json_keys", {"keys": KEYS}]]) is strict
    assert json_anywhere(answer, keys=KEYS) is anywhere


@pytest.mark.parametrize("answer, n, strict, anywhere", LIST_CASES)
def test_a_numbered_list_of_exactly_n_is_found_anywhere(answer, n, strict, anywhere):
    assert passes(answer, [["numbered_count", {"n": n}]]) is strict
    assert numbered_anywhere(answer, n=n) is anywhere


@pytest.mark.parametrize("answer, n, strict, anywhere", BULLET_CASES)
def test_a_run_of_exactly_n_bullets_is_found_anywhere(answer, n, strict, anywhere):
    assert passes(answer, [["bullet_count", {"n": n}]]) is strict
    assert bullets_anywhere(answer, n=n) is anywhere


def _answers(rows, *, json_text: str, list_text: str, bullet_text: str, other: str = "A reply.") -> list[str]:
    """One answer per suite row: the given text for each structure (formatted with the row's keys or n)."""
    answers = []
    for row in rows:
        name, arguments = row["checks"][0]
        if name == "json_keys":
            answers.append(json_text.format(obj=json.dumps({key: "x" for key in arguments["keys"]})))
        elif name == "numbered_count":
            answers.append(list_text.format(items="\n".join(f"{i}. x" for i in range(1, arguments["n"] + 1)),
                                            more=f"{arguments['n'] + 1}. y"))
        elif name == "bullet_count":
            answers.append(bullet_text.format(items="\n".join("- x" for _ in range(arguments["n"]))))
        else:
            answers.append(other)
    return answers


def _samples(answers: list[str]) -> ScoreSamples:
    """The instruction task's record of `answers` to the suite's first prompts: pass or fail, and the answers."""
    rows = instruction_suite()[0].rows
    return ScoreSamples(kind="mean", values=[float(passes(a, row["checks"])) for a, row in zip(answers, rows)],
                        texts=answers)


def test_format_samples_score_only_the_prompts_asking_for_a_structure():
    rows = [{"checks": [["json_keys", {"keys": KEYS}]]}, {"checks": [["max_words", {"n": 3}]]},
            {"checks": [["bullet_count", {"n": 2}]]}, {"checks": [["numbered_count", {"n": 2}]]}]
    answers = ['Here: {"name": "a", "description": "b"} done.', "Two words.", "- a\n- b\n- c", "1. a\n2. b"]
    assert format_samples(answers, rows).values == [1.0, 0.0, 1.0]
    assert format_samples(["Two words."], rows[1:2]) is None


def test_format_change_over_the_builtin_suite_against_a_hand_count():
    rows = instruction_suite()[0].rows
    structured = [row["checks"][0][0] for row in rows if row["checks"][0][0] in ANY]
    assert len(structured) == 30  # ten prompts of each structure
    clean = _answers(rows, json_text="{obj}", list_text="{items}", bullet_text="{items}")
    # After: the JSON and the bullets written with text around them (still held), every list one item too long.
    ran_on = _answers(rows, json_text="Here is the JSON: {obj} Your answer.", list_text="{items}\n{more}",
                      bullet_text="Facts:\n{items}\nThat is all.")
    assert sum(passes(a, row["checks"]) for a, row in zip(clean, rows) if row["checks"][0][0] in ANY) == 30
    before, after = _samples(clean), _samples(ran_on)
    delta, se = format_change(before, after)
    assert delta == pytest.approx(20 / 30 - 1)  # the ten numbered lists lost, by hand
    assert 0.05 < se < 0.12  # a proportion's s.e. over 30 items: sqrt(1/3 * 2/3 / 30) = 0.086
    # An evaluation with a limit scores the prompts it answered (the first 11 ask for bullets, JSON and a numbered
    # list, the last lost); one that kept no answers gives none.
    short = _samples(clean[:11])
    delta, _ = format_change(short, _samples(ran_on[:11]))
    assert delta == pytest.approx(-1 / 3)
    assert format_change(ScoreSamples(kind="mean", values=[0.0]), after) is None
    assert format_change(short, after) is None  # not the same prompts
    # Answers of another suite (here today's in another order) disagree with the pass or fail recorded: none.
    moved = ScoreSamples(kind="mean", values=before.values, texts=clean[1:] + clean[:1])
    assert format_change(moved, after) is None



def _log(*answer_lists: list[str]) -> EvaluationLog:
    return EvaluationLog(general_samples=[{"instructions": _samples(a)} for a in answer_lists])


def test_a_row_reads_formats_from_its_first_and_last_evaluations_and_an_old_row_from_its_folder(tmp_path):
    rows = instruction_suite()[0].rows
    clean = _answers(rows, json_text="{obj}", list_text="{items}", bullet_text="{items}")
    lost = _answers(rows, json_text="no JSON", list_text="no list", bullet_text="{items}")  # only bullets kept
    log = _log(clean, lost, clean[:30] + lost[30:])  # the last: the prompts from the 31st on lost their JSON / list
    kept = sum(1 for row in rows[:30] if row["checks"][0][0] in ANY) + sum(
        1 for row in rows[30:] if row["checks"][0][0] == "bullet_count")
    change = GeneralTaskChange(before=0.3, after=0.1, delta=-0.2, rel=None, se=0.04, within_noise=False)
    found = generation_checks({"instructions": change, "general": change}, log)
    assert found["instructions"] == (-0.2, 0.04) and "general" not in found
    assert found["formats"][0] == pytest.approx(kept / 30 - 1)  # the middle evaluation is not read
    assert generation_checks({"leakage": change}, log) == {"leakage": (-0.2, 0.04)}  # no instructions, no formats

    out = tmp_path / "cmp"
    (out / "ewc").mkdir(parents=True)
    log.write(out / "ewc" / "evaluations.json")
    row = ComparisonRow(strategy="ewc", spec="ewc", in_domain_gain={"t": 0.1}, generation={"instructions": (-0.2, 0.04)})
    gone = ComparisonRow(strategy="l2sp", spec="l2sp", in_domain_gain={"t": 0.1}, generation={"instructions": (-0.2, 0.04)})
    fill_formats([row, gone], out)
    assert row.generation["formats"] == pytest.approx(found["formats"])
    assert "formats" not in gone.generation  # its folder is gone


def test_advise_reads_formats_for_a_compare_row_written_before_it(tmp_path):
    from forgetless.advise import compare_evidence

    rows = instruction_suite()[0].rows
    clean = _answers(rows, json_text="{obj}", list_text="{items}", bullet_text="{items}")
    lost = _answers(rows, json_text="no JSON", list_text="no list", bullet_text="no bullets")
    (tmp_path / "ewc").mkdir()
    _log(clean, lost).write(tmp_path / "ewc" / "evaluations.json")
    row = {"strategy": "ewc", "general_delta_abs": -0.01, "general_delta_se": 0.005,
           "generation": {"instructions": [-0.3, 0.04]}}
    (tmp_path / "compare.json").write_text(json.dumps({"rows": [row]}))
    [candidate], _ = compare_evidence([tmp_path])
    assert candidate.generation["formats"][0] == pytest.approx(-1.0)  # every structure held before, none after
    assert candidate.lost_generation(0.01) == ["formats", "instructions"]
