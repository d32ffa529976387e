"""The results of a run or of a monitored training: one typed object shared by the runner, the monitor, the
CLI, the demo, the report and the benchmarks.

Everything here is derived from the evaluation log (the raw truth) with the functions of metrics.py;
report.py renders it and recomputes nothing. `RunResults.to_json()` is results.json's content, and
`RunResults.read(path)` reads one back (a report can be rebuilt from a finished run without the model).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from . import __version__
from .metrics import continual_metrics, general_change

if TYPE_CHECKING:  # the evaluator imports torch; reading or rendering results should not need it
    from .evaluation.evaluator import EvaluationLog


class GeneralTaskChange(BaseModel):
    """One general task's change from the first evaluation to the last (metrics.general_change)."""

    before: float
    after: float
    delta: float
    rel: float | None  # None when `before` is 0
    se: float  # paired bootstrap standard error of `delta`
    within_noise: bool  # not |delta| > 1.96 se


class GeneralSummary(BaseModel):
    """The general mean's change from before training to the end, and the worst task behind it."""

    model_config = ConfigDict(extra="forbid")

    # None when no general suite was scored.
    general_before: float | None = None
    general_after: float | None = None
    general_delta_abs: float | None = None
    general_delta_rel: float | None = None
    general_delta_se: float | None = None
    general_within_noise: bool | None = None
    # The mean can hide a loss (one task down, another up): the worst task and how many moved beyond noise.
    general_worst_task: str | None = None
    general_worst_delta: float | None = None
    general_worst_se: float | None = None
    general_tasks_fell: int | None = None  # general tasks whose score fell beyond noise (delta < -1.96 se)
    general_tasks_rose: int | None = None


class Metrics(GeneralSummary):
    """Continual-learning metrics of the score matrix, and the general change with its standard error."""

    # None where the matrix is not square (a monitor's own eval files) or has one task (BWT, FWT, forgetting).
    acc: float | None = None
    bwt: float | None = None
    fwt: float | None = None
    forgetting: float | None = None
    general_tasks: dict[str, GeneralTaskChange] = Field(default_factory=dict)

    @property
    def has_general(self) -> bool:
        return self.general_delta_abs is not None


class Evaluation(BaseModel):
    """One evaluation record: the general suite (`mean` over its tasks) or the held-out tasks, at one point."""

    model_config = ConfigDict(extra="allow")

    stage: str  # before | step | after_task | end
    task: str | None = None  # the task being trained (None before training)
    step: int = 0  # global optimizer step
    mean: float | None = None  # general records: unweighted mean of the task scores
    scores: dict[str, dict[str, Any]] = Field(default_factory=dict)  # task -> {score, acc, acc_stderr, ...}


class GeneralPoint(BaseModel):
    """The general mean's change from before training at one evaluation, with its paired bootstrap s.e."""

    stage: str
    task: str | None = None
    step: int = 0
    delta: float
    se: float


class RunResults(BaseModel):
    """results.json: the score matrix over the trained tasks, its metrics, the general change, and what ran."""

    # Run facts beyond these fields (seed, config, stores_raw_data, ...) are kept as given.
    model_config = ConfigDict(extra="allow", protected_namespaces=())

    forgetless_version: str = __version__
    model: str | None = None
    adapter: str | None = None
    strategies: list[str] = Field(default_factory=list)
    tasks: list[str]
    matrix: list[list[float]]  # rows: before training, then after each trained task; columns: `tasks`
    matrix_rows: list[str]
    task_metric: dict[str, str] = Field(default_factory=dict)  # task -> the metric its score is
    general: list[Evaluation] = Field(default_factory=list)
    task_evals: list[Evaluation] = Field(default_factory=list)
    metrics: Metrics = Field(default_factory=Metrics)
    general_curve: list[GeneralPoint] = Field(default_factory=list)  # every evaluation's change, for noise bands
    training: list[dict[str, Any]] = Field(default_factory=list)  # per task: loss, seconds, each strategy's log
    eval_seconds: float = 0.0
    wall_time_s: float | None = None
    # Python, package versions, device, threads (forgetless.environment); empty in files written before it was kept.
    environment: dict[str, Any] = Field(default_factory=dict)

    def general_after_each_task(self) -> dict[str, float | None]:
        """The general mean after each trained task, by task name (a final score can hide a drop in the middle)."""
        return {entry.task: entry.mean for entry in self.general if entry.stage == "after_task"}

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    @classmethod
    def read(cls, path: str | Path) -> "RunResults":
        return cls.model_validate(json.loads(Path(path).read_text(encoding="utf-8")))


def worst_task_fields(tasks: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The general task that changed most for the worse, and how many fell or rose beyond noise."""
    worst = min(tasks, key=lambda name: tasks[name]["delta"])
    moved = [t for t in tasks.values() if not t["within_noise"]]
    return {"general_worst_task": worst, "general_worst_delta": tasks[worst]["delta"], "general_worst_se": tasks[worst]["se"],
            "general_tasks_fell": sum(t["delta"] < 0 for t in moved), "general_tasks_rose": sum(t["delta"] > 0 for t in moved)}


def build_results(log: EvaluationLog, task_names: list[str], task_metric: dict[str, str], **meta: Any) -> RunResults:
    """The results of an evaluation log: the score matrix over `task_names`, its metrics, the general change, `meta`.

    Matrix rows are the "before" evaluation and every "after_task" one; step evaluations stay in
    `general` / `task_evals` only.
    """
    matrix_records = [r for r in log.task_evals if r["stage"] in ("before", "after_task")]
    matrix = [[record["scores"][name]["score"] for name in task_names] for record in matrix_records]
    # ACC/BWT/FWT need one column per trained task (the runner); a monitor's own eval files may differ.
    square = bool(task_names) and len(matrix) == len(task_names) + 1
    metrics = Metrics(**continual_metrics(matrix)) if square else Metrics()
    if log.general and log.general[0]["scores"]:
        change = general_change(log.general_samples[0], log.general_samples[-1])
        metrics = metrics.model_copy(update=dict(
            general_before=change["before"],
            general_after=change["after"],
            general_delta_abs=change["delta_abs"],
            general_delta_rel=change["delta_rel"],
            general_delta_se=change["delta_se"],
            general_within_noise=change["within_noise"],
            general_tasks={name: GeneralTaskChange(**task) for name, task in change["tasks"].items()},
            **worst_task_fields(change["tasks"]),
        ))
    curve = []
    if log.general and log.general[0]["scores"]:
        for record, samples in zip(log.general, log.general_samples):
            point = general_change(log.general_samples[0], samples)
            curve.append(GeneralPoint(stage=record["stage"], task=record["task"], step=record["step"],
                                      delta=point["delta_abs"], se=point["delta_se"]))
    trained = [r["task"] for r in matrix_records[1:]]
    return RunResults(
        **meta,
        tasks=task_names,
        matrix=matrix,
        matrix_rows=["before training"] + [f"after {name}" for name in trained],
        task_metric=task_metric,
        general=log.general,
        task_evals=log.task_evals,
        metrics=metrics,
        general_curve=curve,
        eval_seconds=log.seconds,
    )
