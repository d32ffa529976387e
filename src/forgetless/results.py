"""The results of a run or of a monitored training: one builder shared by the runner and the monitor.

Everything here is derived from the evaluation log (the raw truth) with the functions of metrics.py;
report.py renders it and recomputes nothing.
"""

from __future__ import annotations

from typing import Any

from . import __version__
from .evaluation.evaluator import EvaluationLog
from .metrics import continual_metrics, general_change


def build_results(log: EvaluationLog, task_names: list[str], task_metric: dict[str, str], **meta: Any) -> dict[str, Any]:
    """results.json's content: the score matrix over `task_names`, its metrics, the general change, `meta`.

    Matrix rows are the "before" evaluation and every "after_task" one; step evaluations stay in
    `general` / `task_evals` only.
    """
    matrix_records = [r for r in log.task_evals if r["stage"] in ("before", "after_task")]
    matrix = [[record["scores"][name]["score"] for name in task_names] for record in matrix_records]
    # ACC/BWT/FWT need one column per trained task (the runner); a monitor's own eval files may differ.
    square = bool(task_names) and len(matrix) == len(task_names) + 1
    metrics: dict[str, Any] = dict(continual_metrics(matrix)) if square else {}
    if log.general and log.general[0]["scores"]:
        change = general_change(log.general_samples[0], log.general_samples[-1])
        metrics.update(
            general_before=change["before"],
            general_after=change["after"],
            general_delta_abs=change["delta_abs"],
            general_delta_rel=change["delta_rel"],
            general_delta_se=change["delta_se"],
            general_within_noise=change["within_noise"],
            general_tasks=change["tasks"],
        )
    trained = [r["task"] for r in matrix_records[1:]]
    return {
        "forgetless_version": __version__,
        **meta,
        "tasks": task_names,
        "matrix": matrix,
        "matrix_rows": ["before training"] + [f"after {name}" for name in trained],
        "task_metric": task_metric,
        "general": log.general,
        "task_evals": log.task_evals,
        "metrics": metrics,
        "eval_seconds": log.seconds,
    }
