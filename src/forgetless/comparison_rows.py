"""A comparison's rows (forgetless.compare) and what is worked out across them: each row against the baseline
row and against naive's trade-off frontier (forgetless.frontier), with the distances' s.e.; each row's run folder,
and the columns rows written before them lack, filled from that folder."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from pydantic import Field

from .evaluation.formats import format_change
from .evaluation.stops import stop_change
from .metrics import general_change
from .results import GeneralSummary

# The generation checks a row shows, in table order. `formats` and `stops` are derived from the `instructions`
# answers (forgetless.evaluation.formats, .stops), not tasks of the suite: a user's task of that name is not taken.
GENERATION_CHECKS = ("instructions", "formats", "stops", "leakage")
_GENERATION_TASKS = ("instructions", "leakage")


class ComparisonRow(GeneralSummary):
    strategy: str  # the row's label
    spec: Any  # the strategies entry as given: a name, a {name: ..., <params>} mapping or a list (a stack)
    in_domain_gain: dict[str, float]
    in_domain_gain_se: dict[str, float] = Field(default_factory=dict)
    # The mean over tasks of (held-out score after the last task - before), with its paired s.e.: the gain a model
    # shipped at the end has, earlier tasks' losses to later ones included. Rows written before it was kept get it
    # from their run folder where it is still there (fill_task_end_changes), else have none.
    in_domain_gain_at_end: float | None = None
    in_domain_gain_at_end_se: float | None = None
    general_after_each_task: dict[str, float | None] = Field(default_factory=dict)
    # The general change from before training at each task's end, with its paired s.e.: a sequence's final change
    # can hide a larger drop in the middle, at a state a user may have deployed. Rows written before it was kept
    # have none: fill_task_end_changes reads it from the row's run folder, and where that is gone too
    # lowest_task_end_change falls back on general_after_each_task, without an s.e.
    general_change_after_each_task: dict[str, tuple[float, float]] = Field(default_factory=dict)
    # Generation-based checks when the run scored them (the instructions suite, the formats its answers hold, the
    # share of them that stopped by themselves, and its leakage task): change, s.e. Rows written before `formats`
    # existed get it from their run folder (fill_formats); `stops` needs the answer lengths, recorded since.
    generation: dict[str, tuple[float, float]] = Field(default_factory=dict)
    bwt: float | None = None
    forgetting: float | None = None
    seconds_per_step: float | None = None
    peak_memory_mb: float | None = None
    memory_measure: str | None = None  # "cuda peak allocated" or "cpu peak rss"
    state_mb: float = 0.0
    stores_raw_data: list[str] = Field(default_factory=list)
    wall_time_s: float = 0.0
    # When the row's run ended (UTC, ISO 8601): which of two measurements of a label is the later one, where they
    # are merged (benchmarks/seeds_table.py). Rows written before it was recorded have none.
    finished_at: str | None = None
    # What the row was measured with (forgetless.environment); rows written before it was kept have none. Changes within
    # the row: a shared "before" evaluation made in another environment, or a resume under another one.
    environment: dict[str, Any] = Field(default_factory=dict)
    environment_changes: list[str] = Field(default_factory=list)
    # Continued from a killed invocation's resumable state (compare --resume): its wall time and peak memory are the
    # last invocation's only; s / step counts the steps each part trained.
    resumed: bool = False
    training: list[dict[str, Any]] = Field(default_factory=list)
    # Against the baseline row (None when there is none, or when it has no drop or gain to compare with).
    general_drop_cut: float | None = None
    in_domain_gain_kept: float | None = None
    step_time_ratio: float | None = None
    # Naive rows at other train settings ({"lr": ..., "steps": ...}) trace naive's frontier (forgetless.frontier).
    train_override: dict[str, Any] = Field(default_factory=dict)
    change_saved_vs_frontier: float | None = None
    gain_added_vs_frontier: float | None = None
    # Their paired bootstrap s.e. over the evaluation items (forgetless.frontier_noise), where every run kept them.
    change_saved_vs_frontier_se: float | None = None
    gain_added_vs_frontier_se: float | None = None
    # Over two or more tasks, the same distances with every row's gain at the end (in_domain_gain_at_end) in place of
    # the gain right after each task, against naive's frontier traced the same way: a strategy that keeps earlier
    # tasks' gains through later ones (replay) earns credit there that the gain right after each task misses.
    change_saved_vs_frontier_at_end: float | None = None
    gain_added_vs_frontier_at_end: float | None = None
    change_saved_vs_frontier_at_end_se: float | None = None
    gain_added_vs_frontier_at_end_se: float | None = None

    @property
    def is_naive(self) -> bool:
        return self.spec == "naive" or self.spec == ["naive"]

    @property
    def mean_gain(self) -> float:
        return sum(self.in_domain_gain.values()) / len(self.in_domain_gain)

    def trade_off_point(self, at_end: bool = False) -> tuple[float, float] | None:
        """(mean in-domain gain, general change): the gain right after each task, or at the end (two or more tasks)."""
        if self.general_delta_abs is None:
            return None
        if not at_end:
            return self.mean_gain, self.general_delta_abs
        if len(self.in_domain_gain) < 2 or self.in_domain_gain_at_end is None:
            return None
        return self.in_domain_gain_at_end, self.general_delta_abs

    def lowest_task_end_change(self) -> tuple[str, float, float | None] | None:
        """(task, change, s.e.) at the task end where the general change was lowest; None without a general suite."""
        changes = dict(self.general_change_after_each_task)
        if not changes and self.general_before is not None:
            changes = {t: (after - self.general_before, None) for t, after in self.general_after_each_task.items()
                       if after is not None}
        if not changes:
            return None
        task = min(changes, key=lambda t: changes[t][0])
        return (task, *changes[task])


def run_folder(label: str) -> str:
    """The folder, inside a comparison's folder, of the row labelled `label` (a label may hold "/"); a label past
    file systems' 255-byte names (long regexes in a knob) keeps its start and a hash of the whole."""
    folder = label.replace("/", "_")
    if len(folder.encode()) <= 200:
        return folder
    return folder.encode()[:180].decode(errors="ignore") + "-" + hashlib.sha256(label.encode()).hexdigest()[:12]


def against_baseline(rows: list[ComparisonRow], baseline: str = "naive") -> None:
    """Fill each row's drop cut, gain kept and step-time ratio against the row labelled `baseline`, if present.

    drop cut = 1 - (row's general drop) / (baseline's drop): 100 % ends where it started, above 100 % ends higher.
    gain kept = the smallest, over tasks, of row's in-domain gain / baseline's gain (tasks the baseline did not
    improve are skipped): a strategy must keep every task's gain, not the average.
    """
    base = next((row for row in rows if row.strategy == baseline), None)
    for row in rows:
        if base is None:
            row.general_drop_cut = row.in_domain_gain_kept = row.step_time_ratio = None
            continue
        drop = None if base.general_delta_abs is None else -base.general_delta_abs
        row.general_drop_cut = (
            None if drop is None or drop <= 0 or row.general_delta_abs is None else 1 - (-row.general_delta_abs) / drop
        )
        kept = [row.in_domain_gain[t] / g for t, g in base.in_domain_gain.items() if g > 0 and t in row.in_domain_gain]
        row.in_domain_gain_kept = min(kept) if kept else None
        row.step_time_ratio = (
            row.seconds_per_step / base.seconds_per_step if row.seconds_per_step and base.seconds_per_step else None
        )
    against_frontier(rows)


def naive_frontier(rows: list[ComparisonRow], at_end: bool = False) -> list[tuple[float, float]]:
    """The Pareto frontier of the naive rows (every train setting) and the untrained model (0, 0); `at_end`: by the
    gain at the end, none unless every naive row has one (a frontier missing a setting would flatter the others)."""
    from .frontier import naive_front

    naive = [r for r in rows if r.is_naive and r.general_delta_abs is not None]
    points = [r.trade_off_point(at_end) for r in naive]
    return naive_front(points) if points and None not in points else []


def against_frontier(rows: list[ComparisonRow], readings: tuple[bool, ...] = (False, True)) -> None:
    """Each non-naive row's distances from naive's frontier, by the gain right after each task (reading False) and
    by the gain at the end (True); None without naive rows to build one, or without the gain at the end."""
    from .frontier import distances

    for at_end in readings:
        front = naive_frontier(rows, at_end)
        for row in rows:
            point = row.trade_off_point(at_end)
            found = distances(front, point) if front and point is not None and not row.is_naive else (None, None)
            for name, value in zip(_DISTANCES[at_end], found):
                setattr(row, name, value)


# The fields each distance is kept in: by the gain right after each task (False) and at the end (True).
_DISTANCES = {False: ("change_saved_vs_frontier", "gain_added_vs_frontier"),
              True: ("change_saved_vs_frontier_at_end", "gain_added_vs_frontier_at_end")}


def frontier_noise(rows: list[ComparisonRow], out: Path) -> None:
    """Each distance's s.e. from naive's frontier, where the naive rows and the row kept their evaluations.json."""
    from .evaluation.evaluator import EvaluationLog
    from .frontier_noise import RunItems, frontier_distance_se

    tasks = list(rows[0].in_domain_gain) if rows else []
    logs: dict[str, Any] = {}

    def items(row: ComparisonRow, at_end: bool) -> RunItems | None:
        path = out / run_folder(row.strategy) / "evaluations.json"  # rows from before 2026-12-03 have none
        if not path.exists():
            return None
        if row.strategy not in logs:
            logs[row.strategy] = EvaluationLog.read(path)
        return RunItems.from_log(logs[row.strategy], tasks, at_end=at_end)

    for row in rows:
        for names in _DISTANCES.values():
            for name in names:
                setattr(row, name + "_se", None)
    for at_end in (False, True) if len(tasks) > 1 else (False,):
        saved_name, added_name = _DISTANCES[at_end]
        naive = [items(row, at_end) for row in rows if row.is_naive and row.general_delta_abs is not None]
        if not naive or None in naive:
            continue
        measured = [(row, items(row, at_end)) for row in rows
                    if (getattr(row, saved_name), getattr(row, added_name)) != (None, None)]
        measured = [(row, found) for row, found in measured if found is not None]
        if not measured:
            continue
        for (row, _), (saved, added) in zip(measured, frontier_distance_se(naive, [found for _, found in measured])):
            setattr(row, saved_name + "_se", saved if getattr(row, saved_name) is not None else None)
            setattr(row, added_name + "_se", added if getattr(row, added_name) is not None else None)


def fill_task_end_changes(rows: list[ComparisonRow], out: Path) -> None:
    """Give rows written before the task-end columns existed the general change at each task's end (from the
    general curve in the row's run folder, results.json) and the mean in-domain gain at the end (its s.e. from the
    folder's evaluations.json, where the run kept one), where the folder is still there."""
    import json

    from .evaluation.evaluator import EvaluationLog

    for row in rows:
        folder = out / run_folder(row.strategy)
        if not (folder / "results.json").exists():
            continue
        results = json.loads((folder / "results.json").read_text(encoding="utf-8"))
        if not row.general_change_after_each_task:
            row.general_change_after_each_task = {p["task"]: (p["delta"], p["se"]) for p in results.get("general_curve", [])
                                                  if p["stage"] == "after_task"}
        if row.in_domain_gain_at_end is None and (folder / "evaluations.json").exists():
            log = EvaluationLog.read(folder / "evaluations.json")
            row.in_domain_gain_at_end, row.in_domain_gain_at_end_se = gain_at_end(log, list(row.in_domain_gain))
        elif row.in_domain_gain_at_end is None and results.get("matrix"):
            matrix = results["matrix"]
            row.in_domain_gain_at_end = sum(matrix[-1][j] - matrix[0][j] for j in range(len(matrix[0]))) / len(matrix[0])


def generation_checks(general_tasks: dict[str, Any], log) -> dict[str, tuple[float, float]]:
    """A run's generation checks as {name: (change, se)}: the instructions and leakage tasks' changes from its
    metrics' `general_tasks`, and `formats` and `stops` read from the first and last evaluations' instruction answers."""
    found = {name: (t.delta, t.se) for name, t in general_tasks.items() if name in _GENERATION_TASKS}
    if "instructions" in found:
        first, last = (log.general_samples[i].get("instructions") for i in (0, -1))
        derived = {"formats": format_change(first, last), "stops": stop_change(first, last)}
        found |= {name: change for name, change in derived.items() if change is not None}
    return {name: found[name] for name in GENERATION_CHECKS if name in found}


def _formats(log) -> tuple[float, float] | None:
    return format_change(log.general_samples[0].get("instructions"), log.general_samples[-1].get("instructions"))


def with_formats(generation: dict[str, Any], out: Path, label: str) -> dict[str, Any]:
    """A row's generation checks, with `formats` added where the row (labelled `label`, in the comparison folder
    `out`) was written before that check existed: read from its run folder's evaluations.json, where that is still
    there and holds the instruction answers. Otherwise `generation` itself."""
    from .evaluation.evaluator import EvaluationLog

    path = out / run_folder(label) / "evaluations.json"
    if "instructions" not in generation or "formats" in generation or not path.exists():
        return generation
    formats = _formats(EvaluationLog.read(path))
    return generation if formats is None else {**generation, "formats": formats}


def fill_formats(rows: list[ComparisonRow], out: Path) -> None:
    """Give rows written before the `formats` check existed its change (with_formats)."""
    for row in rows:
        row.generation = with_formats(row.generation, out, row.strategy)


def gain_at_end(log, tasks: list[str]) -> tuple[float, float]:
    """The mean over `tasks` of (held-out score after the last task - before), with its paired s.e."""
    found = general_change({t: log.task_samples[0][t] for t in tasks}, log.held_out_after_task(tasks[-1], tasks))
    return found["delta_abs"], found["delta_se"]
