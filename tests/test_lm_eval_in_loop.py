"""lm-evaluation-harness tasks in the loop: scored at every full evaluation, offline, with paired s.e."""

from __future__ import annotations

import json

import pytest

from forgetless.errors import ForgetlessError

from .conftest import tiny_config
from .test_lm_eval_agreement import capital_items

pytest.importorskip("lm_eval", reason="lm-evaluation-harness (pip install lm-eval) is needed")

from forgetless.evaluation.lm_eval_bridge import run_lm_eval_multiple_choice, write_task  # noqa: E402
from forgetless.evaluation.lm_eval_tasks import load_lm_eval_tasks  # noqa: E402


def _generation_task(folder, rows):
    """A local generate_until task: greedy, 4 new tokens, exact match against `answer`."""
    data = folder / "gen.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    config = {
        "task": "forgetless_gen", "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(data)}},
        "test_split": "test", "output_type": "generate_until", "doc_to_text": "{{question}}",
        "doc_to_target": "{{answer}}", "generation_kwargs": {"until": ["\n"], "max_gen_toks": 4, "do_sample": False},
        "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}],
    }
    (folder / "forgetless_gen.yaml").write_text(json.dumps(config))


def test_a_multiple_choice_task_gives_lm_evals_own_numbers(tmp_path, tiny_lm, tokenizer):
    items = capital_items(12)
    write_task(tmp_path, items)
    [task] = load_lm_eval_tasks(["forgetless_mc"], str(tmp_path))
    ours = task.evaluate(tiny_lm, tokenizer)
    theirs = run_lm_eval_multiple_choice(tiny_lm, tokenizer, items)
    assert ours.samples.values == [float(c) for c in theirs.correct]
    assert ours.summary["score"] == pytest.approx(theirs.acc) and ours.summary["acc_norm"] == pytest.approx(theirs.acc_norm)
    assert task.evaluate(tiny_lm, tokenizer, limit=5).summary["n"] == 5


def test_a_generation_task_runs_through_lm_eval(tmp_path, tiny_lm, tokenizer):
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    _generation_task(tmp_path, [{"question": f"Say {w}:", "answer": w} for w in ("yes", "no", "red", "blue", "one")])
    [task] = load_lm_eval_tasks(["forgetless_gen"], str(tmp_path))
    score = task.evaluate(tiny_lm, tokenizer, limit=4)
    assert score.summary["n"] == 4 and set(score.samples.values) <= {0.0, 1.0}
    # The same numbers as lm-eval's own aggregate over the same documents.
    reference = simple_evaluate(model=HFLM(pretrained=tiny_lm, tokenizer=tokenizer), tasks=["forgetless_gen"],
                                task_manager=task.manager, limit=4, verbosity="ERROR")
    assert score.summary["score"] == pytest.approx(reference["results"]["forgetless_gen"]["exact_match,none"])


def test_lm_eval_tasks_join_the_general_suite_of_a_run(tmp_path, task_files, tiny_lm, tokenizer):
    from forgetless.training import run_continual

    write_task(tmp_path / "lm_tasks", capital_items(10))
    config = tiny_config(task_files, eval={"suites": [], "lm_eval_tasks": ["forgetless_mc"],
                                           "lm_eval_include": str(tmp_path / "lm_tasks"), "every_steps": 2})
    results = run_continual(config, tmp_path / "run", model=tiny_lm, tokenizer=tokenizer, progress=False)
    assert [set(e.scores) for e in results.general] == [{"forgetless_mc"}] * len(results.general)
    assert len(results.general) == 5  # before, a step evaluation and the end of each task
    change = results.metrics.general_tasks["forgetless_mc"]
    assert change.delta == pytest.approx(results.general[-1].mean - results.general[0].mean)


def test_unknown_and_rolling_tasks_are_refused(tmp_path):
    write_task(tmp_path, capital_items(3))
    with pytest.raises(ForgetlessError, match=r"\['nope'\] not found in"):
        load_lm_eval_tasks(["forgetless_mc", "nope"], str(tmp_path))
    (tmp_path / "texts.jsonl").write_text('{"text": "A plain sentence."}\n')
    rolling = {"task": "forgetless_rolling", "dataset_path": "json", "test_split": "test",
               "dataset_kwargs": {"data_files": {"test": str(tmp_path / "texts.jsonl")}},
               "output_type": "loglikelihood_rolling", "doc_to_text": "", "doc_to_target": "{{text}}",
               "metric_list": [{"metric": "word_perplexity"}]}
    (tmp_path / "forgetless_rolling.yaml").write_text(json.dumps(rolling))
    with pytest.raises(ForgetlessError, match="rolling log-likelihood"):
        load_lm_eval_tasks(["forgetless_rolling"], str(tmp_path))
