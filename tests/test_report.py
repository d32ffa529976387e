"""report.md and the two plots, rendered from synthetic results dicts shaped like results.json."""

from __future__ import annotations

import pytest

from forgetless.metrics import continual_metrics
from forgetless.report import format_table, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _general_entry(stage, task, step, capitals, fortunes):
    scores = {
        "capitals": {"score": capitals, "acc": capitals, "acc_norm": capitals, "acc_stderr": 0.031, "n": 200},
        "fortunes": {"score": fortunes, "perplexity": 1 / fortunes, "n_tokens": 9000},
    }
    return {"stage": stage, "task": task, "step": step, "scores": scores, "mean": (capitals + fortunes) / 2}


def _results(matrix, tasks, within_noise):
    general = [_general_entry("before", None, 0, 0.680, 0.031)]
    for index, task in enumerate(tasks, start=1):
        general.append(_general_entry("step", task, 10 * index - 5, 0.670, 0.030))
        general.append(_general_entry("after_task", task, 10 * index, 0.660, 0.029))
    metrics = continual_metrics(matrix)
    metrics.update(
        general_before=0.356, general_after=0.345,  # what metrics.general_change gives (the mean of the tasks, rounded)
        general_delta_abs=-0.011, general_delta_rel=-0.031, general_delta_se=0.009 if within_noise else 0.002,
        general_within_noise=within_noise,
        general_tasks={
            "capitals": {"before": 0.680, "after": 0.660, "delta": -0.020, "rel": -0.0294, "se": 0.012,
                         "within_noise": True},
            "fortunes": {"before": 0.031, "after": 0.029, "delta": -0.002, "rel": -0.0645, "se": 0.0004,
                         "within_noise": False},
        },
    )
    return {
        "model": "default", "adapter": "lora", "strategies": ["ewc", "replay"], "tasks": tasks,
        "matrix": matrix, "matrix_rows": ["before training"] + [f"after {task}" for task in tasks],
        "task_metric": {task: "perplexity" for task in tasks}, "general": general, "task_evals": [],
        "metrics": metrics, "wall_time_s": 12.5,
    }


def _assert_valid_pngs(out_dir):
    for name in ("general_over_steps.png", "score_matrix.png"):
        data = (out_dir / name).read_bytes()
        assert data.startswith(PNG_MAGIC), name
        assert len(data) > 10_000, f"{name} is suspiciously small ({len(data)} bytes)"


def test_report_for_three_tasks(tmp_path):
    matrix = [[0.101, 0.202, 0.303], [0.412, 0.215, 0.301], [0.388, 0.437, 0.299], [0.356, 0.401, 0.466]]
    path = write_report(_results(matrix, ["support", "legal", "code"], within_noise=False), tmp_path)
    assert path == tmp_path / "report.md"
    _assert_valid_pngs(tmp_path)
    text = path.read_text(encoding="utf-8")
    for value in ("0.101", "0.412", "0.437", "0.466", "0.299"):
        assert value in text
    assert "`default`" in text and "`lora`" in text and "ewc, replay" in text
    assert "support → legal → code" in text
    assert "beyond noise" in text
    assert "n/a (one task)" not in text
    # BWT = ((0.356 - 0.412) + (0.401 - 0.437)) / 2 = -0.046
    assert "-0.046" in text
    # The headline: metrics.py's general means (the report recomputes nothing), absolute and relative change, se.
    assert "General score 0.356 -> 0.345 (-0.011, -3.1 %; ± 0.002 s.e.)" in text
    # Accuracy tasks show lm-eval's stderr; perplexity tasks do not have one.
    assert "0.031 / 0.031" in text
    # Atomic writes leave no temporary files behind.
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == ["general_over_steps.png", "report.html", "report.md", "score_matrix.png"]


def test_report_for_one_task_says_not_applicable_and_within_noise(tmp_path):
    path = write_report(_results([[0.250], [0.375]], ["support"], within_noise=True), tmp_path / "run")
    _assert_valid_pngs(tmp_path / "run")
    text = path.read_text(encoding="utf-8")
    assert "0.250" in text and "0.375" in text
    assert text.count("n/a (one task)") >= 3  # BWT, FWT, forgetting
    assert "within noise (|delta| < 1.96 s.e.), do not read it as forgetting" in text


def test_report_without_general_suite(tmp_path):
    results = _results([[0.250], [0.375]], ["support"], within_noise=True)
    results["general"] = []
    for key in [k for k in results["metrics"] if k.startswith("general")]:
        del results["metrics"][key]  # results.json as a run without a general suite writes it
    text = write_report(results, tmp_path).read_text(encoding="utf-8")
    assert "No general suite was evaluated" in text
    # The plot still renders, saying there is nothing to plot.
    assert (tmp_path / "general_over_steps.png").read_bytes().startswith(PNG_MAGIC)


def test_format_table_aligns_and_formats():
    table = format_table(["name", "score", "n"], [["a", 0.5, 1200], ["longer|name", 0.12345, 7], ["c", None, 3]])
    lines = table.splitlines()
    assert lines[0] == "| name         | score |     n |"
    assert lines[1] == "| ------------ | ----: | ----: |"  # numeric columns are right-aligned
    assert lines[2] == "| a            | 0.500 | 1,200 |"
    assert lines[3] == "| longer\\|name | 0.123 |     7 |"
    assert lines[4] == "| c            |   n/a |     3 |"
    assert len({len(line) for line in lines}) == 1


def test_the_mean_does_not_hide_a_loss(tmp_path):
    from forgetless.evaluation.evaluator import EvaluationLog
    from forgetless.metrics import ScoreSamples
    from forgetless.report import render_markdown
    from forgetless.results import build_results

    def samples(wrong: int):
        return ScoreSamples(kind="mean", values=[0.0] * wrong + [1.0] * (400 - wrong))

    # capitals loses 40 of 400 items (-0.10), definitions gains 40 (+0.10), elements is unchanged: the mean
    # does not move, and the worst task is capitals, beyond noise (se about sqrt(0.1 * 0.9 / 400) = 0.015).
    before = {"capitals": samples(40), "definitions": samples(80), "elements": samples(100)}
    after = {"capitals": samples(80), "definitions": samples(40), "elements": samples(100)}
    records = [{"stage": "before", "task": None, "step": 0}, {"stage": "after_task", "task": "t", "step": 5}]
    for record, group in zip(records, (before, after)):
        record["scores"] = {n: {"score": s.score()} for n, s in group.items()}
        record["mean"] = sum(s.score() for s in group.values()) / 3
    log = EvaluationLog(records, [dict(r, scores={}) for r in records], [before, after], [{}, {}])
    results = build_results(log, [], {})
    m = results.metrics
    assert m.general_delta_abs == pytest.approx(0.0, abs=1e-12)
    assert m.general_worst_task == "capitals" and m.general_worst_delta == pytest.approx(-0.1)
    assert 0.010 < m.general_worst_se < 0.020 and (m.general_tasks_fell, m.general_tasks_rose) == (1, 1)
    text = render_markdown(results)
    assert "Worst general task: capitals -0.100 ±" in text and "1 of 3 general tasks fell beyond noise, 1 rose" in text


def test_the_report_says_what_the_run_was_measured_with():
    from forgetless.report import render_markdown

    results = _results([[0.1], [0.2]], ["support"], within_noise=True)
    assert "measured with" not in render_markdown(results)  # a results.json from before it was kept
    results["environment"] = {"python": "3.11.7", "device": "cpu", "cpu": "AMD EPYC", "cpu_capability": "AVX512",
                              "torch_threads": 2, "packages": {"torch": "2.13.0+cpu", "trl": None, "peft": "0.21.2"}}
    results["environment_changes"] = ["transformers 5.24.0 -> 5.25.0"]
    text = render_markdown(results)
    assert ("- measured with: Python 3.11.7; torch 2.13.0+cpu, peft 0.21.2; cpu (AMD EPYC, AVX512, 2 threads)\n"
            "- resumed under another environment: transformers 5.24.0 -> 5.25.0") in text
