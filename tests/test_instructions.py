"""The instruction-following suite: programmatic checks, the prompt file, generation wiring."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from forgetless.evaluation import instructions
from forgetless.evaluation.instructions import CHECKS, passes
from forgetless.evaluation.suites import load_suite

CASES = [  # (check, arguments, a response that passes, one that fails)
    ("line_count", {"n": 4}, "Waves fall\nand rise\nunder the\npale moon", "Waves fall\nand rise"),
    ("bullet_count", {"n": 3}, "- one\n- two\n* three", "- one\n- two\nthree"),
    ("numbered_count", {"n": 3}, "1. salt\n2. wave\n3. tide", "1. salt\n3. wave\n2. tide"),
    ("lowercase", {}, "the sea is wide.", "The sea is wide."),
    ("uppercase", {}, "THE SEA IS WIDE.", "THE SEA is WIDE."),
    ("include_word", {"word": "blue"}, "A Blue sea.", "A bluest sea."),
    ("max_words", {"n": 5}, "one two three four five", "one two three four five six"),
    ("end_with", {"phrase": "That is all."}, "Bees dance. That is all.  ", "That is all. Bees dance."),
    ("start_with", {"phrase": "In short,"}, "In short, bees dance.", "Briefly, bees dance."),
    ("no_commas", {}, "Bees dance and sing.", "Bees dance, and sing."),
    ("json_keys", {"keys": ["description", "name"]}, '```json\n{"name": "x", "description": "y"}\n```',
     '{"name": "x"}'),
]


@pytest.mark.parametrize("name, arguments, good, bad", CASES)
def test_each_check_by_hand(name, arguments, good, bad):
    assert CHECKS[name](good, **arguments) and not CHECKS[name](bad, **arguments)


def test_every_check_is_covered_and_a_prompt_passes_only_if_all_hold():
    assert {case[0] for case in CASES} == set(CHECKS)
    assert passes("in short, a", [["lowercase", {}], ["max_words", {"n": 3}]])
    assert not passes("in short, a b", [["lowercase", {}], ["max_words", {"n": 3}]])
    assert not passes("In short, a", [["lowercase", {}], ["max_words", {"n": 3}]])


def test_the_prompt_file_is_what_the_script_builds():
    script = Path(__file__).resolve().parents[1] / "scripts" / "build_instructions.py"
    done = subprocess.run([sys.executable, str(script), "--check"], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    [task] = load_suite("instructions")
    assert len(task.rows) >= 100 and len({row["id"] for row in task.rows}) == len(task.rows)
    assert {name for row in task.rows for name, _ in row["checks"]} == set(CHECKS)


def test_the_task_scores_each_prompts_answer(monkeypatch, tiny_lm, tokenizer):
    [task] = load_suite("instructions")
    rows = task.rows[:11]  # one topic, every template
    good = {"line_count": "a\nb\nc\nd", "bullet_count": "- a\n- b\n- c", "lowercase": "the sea.",
            "include_word": None, "max_words": "Water.", "end_with": "Sea. Sky. That is all.",
            "json_keys": '{"name": "n", "description": "d"}', "uppercase": "THE SEA.", "start_with": "In short, it moved.",
            "no_commas": "Wide and deep.", "numbered_count": "1. a\n2. b\n3. c\n4. d\n5. e"}
    answers = []
    for row in rows:
        [[name, arguments]] = row["checks"]
        answers.append(good[name] if name != "include_word" else f"It is {arguments['word']}.")
    monkeypatch.setattr(instructions, "generate_with_lengths",
                        lambda model, tok, prompts, budget, progress=False: (answers[: len(prompts)], [1] * len(prompts)))
    score = task.evaluate(tiny_lm, tokenizer, limit=11)
    assert score.samples.values == [1.0] * 11
    answers[2] = "The Sea."  # the lowercase prompt now fails
    assert task.evaluate(tiny_lm, tokenizer, limit=11).samples.values == [1.0, 1.0, 0.0] + [1.0] * 8


def test_generation_runs_greedily_in_batches(tiny_lm, tokenizer):
    prompts = ["Say hi.", "Write a poem about the sea in four lines please."]
    first = instructions.generate(tiny_lm, tokenizer, prompts, max_new_tokens=5)
    assert len(first) == 2 and first == instructions.generate(tiny_lm, tokenizer, prompts, max_new_tokens=5)
    # Left padding does not change an answer: each prompt alone gives the same greedy tokens.
    assert [instructions.generate(tiny_lm, tokenizer, [p], max_new_tokens=5)[0] for p in prompts] == first


def test_leakage_counts_answers_that_took_up_the_domains_phrasing(monkeypatch, tiny_lm, tokenizer):
    from forgetless.evaluation.instructions import LeakageTask, with_leakage

    [task] = load_suite("instructions")
    domain = [{"prompt": f"Ticket {i}", "response": "Please restart the router and wait a minute."} for i in range(10)]
    tasks = with_leakage([task], domain)
    assert [t.name for t in tasks] == ["instructions", "leakage"] and isinstance(tasks[1], LeakageTask)
    leakage = tasks[1]
    answers = ["The sea is wide.", "Please restart the ocean.", "Waves and wind."]
    monkeypatch.setattr(instructions, "generate_with_lengths",
                        lambda model, tok, prompts, budget, progress=False: (answers[: len(prompts)], [1] * len(prompts)))
    task.evaluate(tiny_lm, tokenizer, limit=3)
    before = leakage.evaluate(tiny_lm, tokenizer, limit=3)
    # "please restart the" is in every domain row and in a starting answer: never part of the signature.
    assert ("please", "restart", "the") not in leakage.signature and ("restart", "the", "router") in leakage.signature
    assert before.samples.values == [1.0, 1.0, 1.0]
    answers[:] = ["You should restart the router and wait.", "Please restart the ocean.", "Waves and wind."]
    task.evaluate(tiny_lm, tokenizer, limit=3)
    after = leakage.evaluate(tiny_lm, tokenizer, limit=3)
    assert after.samples.values == [0.0, 1.0, 1.0] and after.summary["leak_rate"] == pytest.approx(1 / 3)


def test_a_shared_or_resumed_before_evaluation_keeps_the_starting_models_leakage_signature(monkeypatch, tokenizer):
    """compare shares one "before" evaluation across rows and --resume restores it: a row that did not generate the
    starting model's answers must still fix its signature from them, not from its first (trained) answers, which
    would exclude the very phrases that leaked and report no leakage."""
    from forgetless.errors import ForgetlessError
    from forgetless.evaluation.evaluator import EvaluationLog, Evaluator
    from forgetless.evaluation.instructions import with_leakage

    domain = [{"prompt": f"Ticket {i}", "response": "Please restart the router and wait a minute."} for i in range(10)]
    answers = {"start": ["The sea is wide.", "A poem.", "Waves and wind."],
               "trained": ["You should restart the router and wait.", "A poem.", "Restart the router and wait."]}
    monkeypatch.setattr(instructions, "generate_with_lengths",
                        lambda model, tok, prompts, budget, progress=False: (answers[model][: len(prompts)], [1] * len(prompts)))

    def evaluator():
        return Evaluator(with_leakage(load_suite("instructions"), domain), [], tokenizer, limit=3, progress=False)

    first = evaluator()
    first.evaluate("start", "before", None, 0)
    first.evaluate("trained", "after_task", "support", 10)
    shared = EvaluationLog.from_json(json.loads(json.dumps(first.log.to_json())))  # as before.json or a resume state
    for adopt in ("adopt_before", "restore"):
        second = evaluator()
        getattr(second, adopt)(EvaluationLog.from_json(shared.to_json()) if adopt == "restore" else shared)
        second.evaluate("trained", "after_task", "support", 10)
        assert second.log.general[-1]["scores"]["leakage"] == first.log.general[1]["scores"]["leakage"]
        assert second.log.general_samples[-1]["leakage"].values == [0.0, 1.0, 0.0]  # two answers took up the phrasing
    shared.general_samples[0]["instructions"].texts = None  # a "before" written before answers were kept
    with pytest.raises(ForgetlessError, match="needs the starting model's answers"):
        evaluator().adopt_before(shared)
