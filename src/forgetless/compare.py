"""Several strategies (or stacks) on the same sequence, side by side: `forgetless compare CONFIG --strategies ...`.

Every row trains the config's tasks from the same starting model with only `strategies` changed, so the
"before training" evaluation is run once and shared (saved as `before.json` in the output folder, reused by a
later invocation with the same config). One table (`compare.json`, `compare.md`) and a Pareto plot
(`pareto.png`: share of the baseline's in-domain gain kept against share of its general drop cut) are written
after every row, so a crash loses nothing already measured. Each row's own run folder (`<label>/`) holds its
results.json and report.

Columns beyond the run's own metrics:
- in-domain gain per task with a paired bootstrap s.e. (the held-out score just after the task minus before) and,
  over two or more tasks, the mean gain at the end (every task scored after the last: what later tasks took back);
- seconds per optimizer step (the task's whole training time, including a strategy's work at the task's start
  and end, over its steps) and its ratio to the baseline row's: one process, one machine, so noisy;
- peak memory: on CUDA the allocator's peak during the row; on CPU the process's peak resident set size,
  sampled every 20 ms (it includes whatever earlier rows left allocated: a coarse upper bound);
- state size: the bytes of every strategy's `state_tensors()` at the end (what a checkpoint stores for it);
- the strategies that store raw training rows (replay buffers), which matters where data may not be kept;
- over two or more tasks, the lowest general change at a task's end with its paired s.e.: the final change can hide a
  drop in the middle, at a state a user may have shipped;
- over two or more tasks, the change saved at equal gain against naive's frontier at the end: every row's and naive's
  points by the mean gain at the end instead of right after each task, so that what a later task takes back from an
  earlier one counts against the row (the frontier distances right after each task do not see it).
"""

from __future__ import annotations

import hashlib
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import yaml
from pydantic import Field

from .config import RunConfig, parse_config
from .environment import environment_changes, environment_note, run_environment
from .errors import ForgetlessError
from .fileio import atomic_write_bytes, atomic_write_json, atomic_write_text, check_output_path
from .metrics import general_change, paired_delta
from .results import GeneralSummary
from .resume import RunInterrupted, data_digests

GENERATION_CHECKS = ("instructions", "leakage")

# What a row is run with: (config, out_dir, before=EvaluationLog | None) -> an object with execute(),
# .evaluator.log and .strategies (ContinualRun, or the SFTTrainer variant in benchmarks/sft_run.py).
RunFactory = Callable[..., Any]


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
    # Generation-based checks when the run scored them (the instructions suite and its leakage task): change, s.e.
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


def parse_strategy(text: str):
    """A command-line strategy: `ewc`, `{name: ewc, lam: 1000}` or `[replay, wise]` (YAML, so JSON works too)."""
    try:
        spec = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ForgetlessError(f"--strategies {text!r}: not valid YAML ({exc})") from None
    if not isinstance(spec, (str, dict, list)) or (isinstance(spec, dict) and "name" not in spec):
        raise ForgetlessError(f"--strategies {text!r}: give a name, a mapping with `name`, or a list of those (a stack)")
    return spec


def _value_text(value) -> str:
    """A knob's value in a label: a mapping (l2sp's target_scale) as {key: value, ...}, a regex as written."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_value_text(v)}" for k, v in value.items()) + "}"
    return str(value)


def label_of(spec) -> str:
    if isinstance(spec, list):
        return "+".join(map(label_of, spec))
    if isinstance(spec, str):
        return spec
    params = ",".join(f"{k}={_value_text(v)}" for k, v in spec.items() if k != "name")
    return f"{spec['name']}({params})" if params else spec["name"]


class _PeakMemory:
    """Peak memory while the block runs: CUDA allocator peak, or sampled resident set size on CPU."""

    def __enter__(self):
        import torch

        self.cuda = torch.cuda.is_available()
        self.peak = 0
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
            return self
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while True:
            self.peak = max(self.peak, _resident_bytes())
            if self._stop.wait(0.02):
                return

    def __exit__(self, *exc) -> None:
        import torch

        if self.cuda:
            self.peak = torch.cuda.max_memory_allocated()
        else:
            self._stop.set()
            self._thread.join()

    @property
    def measure(self) -> str:
        return "cuda peak allocated" if self.cuda else "cpu peak rss"


def _resident_bytes() -> int:
    try:  # Linux: the second field of statm is resident pages
        import os

        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _state_bytes(strategies) -> int:
    return sum(t.numel() * t.element_size() for s in strategies for t in (s.state_tensors() or {}).values())


def _row(label: str, spec, run, results, seconds: float, memory: _PeakMemory, steps_per_task: int) -> ComparisonRow:
    log, tasks, m = run.evaluator.log, results.tasks, results.metrics
    gain, gain_se = {}, {}
    for column, task in enumerate(tasks):
        after = next(i for i, r in enumerate(log.task_evals) if r["stage"] == "after_task" and r["task"] == task)
        gain[task] = results.matrix[column + 1][column] - results.matrix[0][column]
        gain_se[task] = paired_delta(log.task_samples[0][task], log.task_samples[after][task])[1]
    trained = sum(entry.get("train_seconds", 0.0) for entry in results.training)
    # A task continued from a resumable state timed only the steps after it (training.py's resumed_at_step).
    timed_steps = sum(steps_per_task - entry.get("resumed_at_step", 0) for entry in results.training)
    at_end, at_end_se = _gain_at_end(log, tasks)
    return ComparisonRow(
        strategy=label, spec=spec, in_domain_gain=gain, in_domain_gain_se=gain_se,
        in_domain_gain_at_end=at_end, in_domain_gain_at_end_se=at_end_se,
        general_after_each_task=results.general_after_each_task(),
        general_change_after_each_task={p.task: (p.delta, p.se) for p in results.general_curve if p.stage == "after_task"},
        generation={name: (t.delta, t.se) for name, t in m.general_tasks.items() if name in GENERATION_CHECKS},
        **m.model_dump(include=set(GeneralSummary.model_fields)), bwt=m.bwt, forgetting=m.forgetting,
        seconds_per_step=trained / timed_steps if timed_steps else None,
        peak_memory_mb=memory.peak / 2**20 if memory.peak else None, memory_measure=memory.measure,
        state_mb=_state_bytes(run.strategies) / 2**20, stores_raw_data=getattr(results, "stores_raw_data", []),
        wall_time_s=seconds, training=results.training, resumed=getattr(run, "resume_from", None) is not None,
        finished_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        environment=getattr(results, "environment", {}),
        environment_changes=list(getattr(results, "environment_changes", None) or []),
    )


def run_folder(label: str) -> str:
    """The folder, inside a comparison's folder, of the row labelled `label` (a label may hold "/"); a label past
    file systems' 255-byte names (long regexes in a knob) keeps its start and a hash of the whole."""
    folder = label.replace("/", "_")
    if len(folder.encode()) <= 200:
        return folder
    return folder.encode()[:180].decode(errors="ignore") + "-" + hashlib.sha256(label.encode()).hexdigest()[:12]


def differing_keys(one: dict[str, Any], other: dict[str, Any]) -> list[str]:
    """The top-level keys whose values differ between two settings: what a refusal to mix them names."""
    return sorted(k for k in set(one) | set(other) if one.get(k) != other.get(k))


def setting_differences(one: dict[str, Any], other: dict[str, Any]) -> list[str]:
    """What two table settings differ in ([]: one setting). The data files' digests are compared file by file
    ("data_digests.tasks.0.file") and only where both settings have them: tables written before 2026-12-06 lack them."""
    one, other = dict(one), dict(other)
    mine, theirs = one.pop("data_digests", None), other.pop("data_digests", None)
    keys = differing_keys(one, other)
    if isinstance(mine, dict) and isinstance(theirs, dict):
        keys += [f"data_digests.{f}" for f in sorted(set(mine) | set(theirs)) if mine.get(f) != theirs.get(f)]
    return keys


def differences_note(keys: list[str]) -> str:
    edited = any(key.startswith("data_digests.") for key in keys)
    return f"differs in {keys}" + (": a data file under the same path holds other content" if edited else "")


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


def markdown(table: dict[str, Any]) -> str:
    from .report import format_table

    rows = [ComparisonRow(**row) for row in table["rows"]]
    if not rows:
        return "# Comparison\n\nNo rows yet.\n"
    tasks = list(rows[0].in_domain_gain)
    baseline = table.get("baseline", "naive")

    def pct(value):
        return "—" if value is None else f"{100 * value:.0f} %"

    def signed(value, digits=4):  # BWT and forgetting need an earlier task: none in a one-task sequence
        return "—" if value is None else f"{value:+.{digits}f}"

    def general(row: ComparisonRow) -> str:
        if row.general_delta_abs is None:
            return "—"
        return f"{row.general_delta_abs:+.4f} ± {row.general_delta_se:.4f}"

    def worst(row: ComparisonRow) -> str:
        if row.general_worst_task is None:
            return "—"
        return (f"{row.general_worst_task} {row.general_worst_delta:+.4f} ± {row.general_worst_se:.4f} "
                f"({row.general_tasks_fell})")

    checks = [name for name in GENERATION_CHECKS if any(name in row.generation for row in rows)]
    # In a one-task sequence the only task end is the end: the column would repeat the general change.
    task_ends = ["lowest general change at a task end ± s.e."] if len(tasks) > 1 else []
    end_gain = ["mean gain at the end ± s.e."] if len(tasks) > 1 else []
    end_frontier = ["change saved vs frontier at the end ± s.e."] if len(tasks) > 1 else []

    def generation(row: ComparisonRow, name: str) -> str:
        if name not in row.generation:
            return "—"
        delta, se = row.generation[name]
        return f"{delta:+.4f} ± {se:.4f}"

    headers = [
        "strategy", *[f"gain {t} ± s.e." for t in tasks], *end_gain, *[f"general after {t}" for t in tasks],
        "general delta ± s.e.", *task_ends, "worst general task ± s.e. (fell)", *[f"{name} ± s.e." for name in checks],
        "relative", "BWT", "forgetting",
        f"drop cut vs {baseline}", f"gain kept vs {baseline}",
        "change saved vs frontier ± s.e.", "gain added vs frontier ± s.e.", *end_frontier,
        "s / step", f"step time vs {baseline}", "peak memory", "state", "stores raw data", "wall time",
    ]
    body = [
        [
            row.strategy,
            *[f"{row.in_domain_gain[t]:+.4f} ± {row.in_domain_gain_se.get(t, float('nan')):.4f}" for t in tasks],
            *[signed_with_se(row.in_domain_gain_at_end, row.in_domain_gain_at_end_se) for _ in end_gain],
            *[_number(row.general_after_each_task.get(t)) for t in tasks],
            general(row),
            *[task_end_text(row) for _ in task_ends],
            worst(row),
            *[generation(row, name) for name in checks],
            "—" if row.general_delta_rel is None else f"{100 * row.general_delta_rel:+.1f} %",
            signed(row.bwt),
            signed(row.forgetting),
            pct(row.general_drop_cut),
            pct(row.in_domain_gain_kept),
            signed_with_se(row.change_saved_vs_frontier, row.change_saved_vs_frontier_se),
            signed_with_se(row.gain_added_vs_frontier, row.gain_added_vs_frontier_se),
            *[signed_with_se(row.change_saved_vs_frontier_at_end, row.change_saved_vs_frontier_at_end_se)
              for _ in end_frontier],
            "—" if row.seconds_per_step is None else f"{row.seconds_per_step:.2f}",
            "—" if row.step_time_ratio is None else f"{row.step_time_ratio:.2f}x",
            "—" if row.peak_memory_mb is None else f"{row.peak_memory_mb:,.0f} MiB",
            f"{row.state_mb:,.1f} MiB",
            ", ".join(row.stores_raw_data) or "no",
            f"{row.wall_time_s:.0f} s" + (" (since the resume)" if row.resumed else ""),
        ]
        for row in rows
    ]
    commands = "\n".join(f"    {c}" for c in table.get("commands", []))
    lowest = [row.lowest_task_end_change() for row in rows] if task_ends else []
    without_se = any(found is not None and found[2] is None for found in lowest) or any(
        row.in_domain_gain_at_end is not None and row.in_domain_gain_at_end_se is None for row in rows if end_gain)
    old_rows_note = (" A value without an s.e. in the columns at the end or at a task end is from a row written before "
                     "they existed whose run kept no per-item scores or whose folder is gone: a difference of means."
                     if without_se else "")
    before = rows[0].general_before
    memory = rows[0].memory_measure or ""
    lines = [
        "# Comparison",
        "",
        *(["Commands:", "", commands, ""] if commands else []),
        *([f"General score before training: {before:.4f}.", ""] if before is not None else []),
        format_table(headers, body),
        "",
        f"s.e.: paired bootstrap over the same evaluation items. Peak memory: {memory} (see forgetless.compare). "
        "Frontier: naive's rows at every train setting and the untrained model; distances along it are explained in "
        "forgetless.frontier (positive beats what naive reaches by training less); their s.e. rescores every run on "
        "the same resampled items and rebuilds the frontier each time (forgetless.frontier_noise), none where a run "
        "kept no evaluations.json or the distance is undefined in some resample."
        + (" At the end: every row's and naive's points by the mean gain at the end instead of right after each task."
           if end_frontier else "") + old_rows_note,
        "",
        SEED_NOISE,
        "",
        *([note, ""] if (note := rows_environment_note(rows)) else []),
    ]
    return "\n".join(lines)


def rows_environment_note(rows: list[ComparisonRow]) -> str:
    """forgetless.environment.environment_note over the rows, by label, the rows measured across two environments,
    and the rows continued from a killed invocation (whose wall time and memory are not the whole run's)."""
    note = environment_note({row.strategy: row.environment for row in rows})
    within = [f"{row.strategy} ({'; '.join(row.environment_changes)})" for row in rows if row.environment_changes]
    if within:
        note = (note + " " if note else "") + "Rows measured across two environments: " + ", ".join(within) + "."
    resumed = [row.strategy for row in rows if row.resumed]
    if resumed:
        note = (note + " " if note else "") + (
            f"Rows continued from a killed invocation's resumable state (--resume): {', '.join(resumed)}; their wall "
            "time and peak memory are the last invocation's only, and s / step counts the steps each part trained.")
    return note


# One table is one training seed, and its s.e. is over the evaluation items only. Measured on the default model:
# naive's general change at one setting moved with the seed by an s.d. of 0.0100 (`legal` at lr 5e-4, five seeds;
# quality-legal.md) to 0.022 (bundled at lr 3e-4 for 30 steps, seeds 0-5; quality.md, 0.0191 at lr 5e-4), and to
# 0.049 at lr 5e-4 once seed 6 was added (naive lost 0.187 there; its pydoc training was unstable), against one
# run's s.e. of about 0.009.
SEED_NOISE = ("One training seed: each s.e. is over the evaluation items of this run, not over training seeds. On "
              "forgetless's benchmark sequences naive's general change at one setting moved with the seed by an s.d. "
              "of 0.010 to 0.022 (0.049 with one seed whose training was unstable), more than one run's s.e. of "
              "about 0.009, so a difference within about twice its "
              "s.e. (or a frontier verdict) needs `--seeds 0 1 2` before it is a finding.")


def task_end_text(row: ComparisonRow) -> str:
    """"-0.0390 ± 0.0073 (after support)": the lowest general change at a task's end, and after which task."""
    lowest = row.lowest_task_end_change()
    if lowest is None:
        return "—"
    task, change, se = lowest
    return f"{signed_with_se(change, se)} (after {task})"


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
            row.in_domain_gain_at_end, row.in_domain_gain_at_end_se = _gain_at_end(log, list(row.in_domain_gain))
        elif row.in_domain_gain_at_end is None and results.get("matrix"):
            matrix = results["matrix"]
            row.in_domain_gain_at_end = sum(matrix[-1][j] - matrix[0][j] for j in range(len(matrix[0]))) / len(matrix[0])


def _gain_at_end(log, tasks: list[str]) -> tuple[float, float]:
    """The mean over `tasks` of (held-out score after the last task - before), with its paired s.e."""
    found = general_change({t: log.task_samples[0][t] for t in tasks}, log.held_out_after_task(tasks[-1], tasks))
    return found["delta_abs"], found["delta_se"]


def signed_with_se(value: float | None, se: float | None) -> str:
    """"+0.0123 ± 0.0045", "+0.0123" without an s.e., "—" without a value."""
    if value is None:
        return "—"
    return f"{value:+.4f}" if se is None else f"{value:+.4f} ± {se:.4f}"


def _number(value) -> str:
    return "—" if value is None else f"{value:.4f}"


def pareto_png(table: dict[str, Any]) -> bytes | None:
    """The trade-off, one labelled point per row.

    Left: mean in-domain gain against general change, with 1.96 s.e. bars (needs no baseline). Right, when the
    baseline dropped and gained: share of its gain kept (worst task) against share of its drop cut.
    """
    from matplotlib.figure import Figure

    from .report import _png

    rows = [ComparisonRow(**row) for row in table["rows"]]
    rows = [r for r in rows if r.general_delta_abs is not None]
    if not rows:
        return None
    relative = [(r.strategy, r.general_drop_cut, r.in_domain_gain_kept) for r in rows]
    relative = [(label, x, y) for label, x, y in relative if x is not None and y is not None]
    figure = Figure(figsize=(13 if relative else 7, 5), layout="constrained")
    panels = figure.subplots(1, 2 if relative else 1, squeeze=False)[0]
    absolute = panels[0]
    for r in rows:
        gains = list(r.in_domain_gain.values())
        gain = sum(gains) / len(gains)
        gain_se = (sum(r.in_domain_gain_se.get(t, 0.0) ** 2 for t in r.in_domain_gain) ** 0.5) / len(gains)
        absolute.errorbar(r.general_delta_abs, gain, xerr=1.96 * (r.general_delta_se or 0.0), yerr=1.96 * gain_se,
                          fmt="o", capsize=3)
        absolute.annotate(r.strategy, (r.general_delta_abs, gain), xytext=(4, 4), textcoords="offset points",
                          fontsize="small")
    trade_off_frame(absolute, naive_frontier(rows), "naive's frontier (training less)",
                    "general change (after - before; bars 1.96 s.e.)", "Trade-off: up and right is better")
    if relative:
        axes = panels[1]
        for label, x, y in relative:
            axes.scatter(100 * x, 100 * y, s=30)
            axes.annotate(label, (100 * x, 100 * y), xytext=(4, 4), textcoords="offset points", fontsize="small")
        # The better corner: the baseline's whole drop cut with its whole gain kept.
        axes.axvline(100, color="grey", linewidth=0.8, linestyle="--")
        axes.axhline(100, color="grey", linewidth=0.8, linestyle="--")
        baseline = table.get("baseline", "naive")
        axes.set_xlabel(f"share of {baseline}'s general drop cut (%)")
        axes.set_ylabel(f"share of {baseline}'s in-domain gain kept (%, worst task)")
        axes.set_title(f"Against {baseline}")
        axes.grid(alpha=0.3)
    return _png(figure)


def trade_off_frame(axes, front: list[tuple[float, float]], front_label: str, xlabel: str, title: str) -> None:
    """Gain against general change: naive's frontier `front` ((gain, change) points) as a line, no change marked."""
    if len(front) > 1:
        axes.plot([c for _, c in front], [g for g, _ in front], color="black", linestyle="--", linewidth=1,
                  label=front_label)
        axes.legend(fontsize="small", loc="best")
    axes.axvline(0, color="grey", linewidth=0.8, linestyle="--")
    axes.set_xlabel(xlabel)
    axes.set_ylabel("mean in-domain gain over tasks")
    axes.set_title(title)
    axes.grid(alpha=0.3)


def split_depends_on_seed(config: RunConfig) -> bool:
    """Whether train.seed draws a task's held-out split: a `file` task without `heldout_file` is split by it; a
    built-in task's split (and a given heldout_file) is the same at every seed."""
    return any(task.file is not None and task.heldout_file is None for task in config.tasks)


def before_key(config: RunConfig) -> dict[str, Any]:
    """What the shared "before" evaluation depends on: the model, the tasks and their held-out split (the seed,
    where it draws one) and the evaluation settings; not the strategies or how training runs."""
    data = config.model_dump(mode="json", include={"model", "model_dtype", "trust_remote_code", "tasks", "eval"})
    data["eval"].pop("every_steps")
    data["seed"] = config.train.seed if split_depends_on_seed(config) else None
    data["format"] = 2  # 2: generation tasks keep their answers (older files lack the start's, needed by leakage)
    scored = data_digests(data)  # of the tasks' and evaluation's files (`data` holds no general_data)
    if scored:  # files edited under the same path are scored anew; built-in tasks (no files) keep their old keys
        data["data_digests"] = scored
    return data


# Config fields added after tables were first written: left out of a table's setting while unset, so that a table
# written before them (a compare folder grown over days, a merge of old and new folders) still takes today's rows.
ADDED_SINCE_TABLES = ("general_data",)


def table_setting(config: RunConfig) -> dict[str, Any]:
    """What rows of one table must share: the whole config but the strategies."""
    setting = config.model_dump(mode="json", exclude={"strategies"})
    setting = {key: value for key, value in setting.items() if not (key in ADDED_SINCE_TABLES and value is None)}
    digests = data_digests(setting)
    # Rows trained on a file edited under the same path are not the same setting; without files, nothing is added.
    return {**setting, "data_digests": digests} if digests else setting


def frontier_settings(config: RunConfig, lrs: list[float] | None, steps: list[int] | None) -> list[dict[str, Any]]:
    """Every (lr, steps) pair of the given values (the config's own where one list is missing), minus the config's."""
    pairs = [(lr, n) for lr in (lrs or [config.train.lr]) for n in (steps or [config.train.steps])]
    return [{"lr": lr, "steps": n} for lr, n in pairs if (lr, n) != (config.train.lr, config.train.steps)]


def frontier_label(override: dict[str, Any]) -> str:
    return "naive(" + ",".join(f"{k}={v}" for k, v in sorted(override.items())) + ")"


def saved_before(out: Path, config: RunConfig) -> dict[str, Any] | None:
    """out/before.json as saved by a run of the same config ({"key", "log", "environment"}), or None."""
    import json

    path = out / "before.json"
    if not path.exists():
        return None
    saved = json.loads(path.read_text(encoding="utf-8"))
    return saved if saved.get("key") == before_key(config) else None


def load_before(out: Path, config: RunConfig):
    """The "before training" evaluation saved in `out` by a run of the same config, or None."""
    from .evaluation.evaluator import EvaluationLog

    saved = saved_before(out, config)
    return None if saved is None else EvaluationLog.from_json(saved["log"])


def compare(
    config: RunConfig,
    specs: list,
    out_dir: str | Path,
    *,
    baseline: str = "naive",
    run_factory: RunFactory | None = None,
    command: str | None = None,
    progress: bool = True,
    setting: dict[str, Any] | None = None,
    frontier: list[dict[str, Any]] = (),
    resume: bool = False,
) -> list[ComparisonRow]:
    """Run `config` once per strategies entry in `specs` (sharing the "before" evaluation) and write the table.

    `frontier`: train settings (`{"lr": 2e-4, "steps": 10}`) at which naive also runs, to trace naive's
    trade-off frontier (forgetless.frontier); every row is then reported by its distance from it.

    Rows already in `out_dir/compare.json` are kept (a row with the same label is replaced), so a table can
    grow over several invocations; a folder holding rows for another config (or another `setting`, e.g. the
    trainer a benchmark used) is refused.

    `resume`: after a killed or Ctrl-C'd invocation, a row whose run folder holds a resumable state continues from
    it (forgetless.resume; a finished task is not trained again), and a row already in the table is kept, not run
    again, unless the killed invocation was measuring it again (compare.json's "pending"); the others run.
    `run_factory(config, folder, before, resume_from)` builds each row's run.
    """
    import json

    from .evaluation.evaluator import EvaluationLog
    from .strategies import StrategyStack
    from .training import ContinualRun

    out = Path(out_dir)
    check_output_path(out, "--out", folder=True)
    if (out / "seeds.json").exists():  # a folder of per-seed comparisons (forgetless.seeds)
        raise ForgetlessError(f"{out} holds a comparison over seeds (seeds.json): give --seeds, or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    run_factory = run_factory or (lambda cfg, folder, before, resume_from: ContinualRun(
        cfg, folder, progress=progress, before=before, resume_from=resume_from))
    path = out / "compare.json"
    table = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {"commands": [], "rows": []}
    setting = {**table_setting(config), **(setting or {})}
    changed = setting_differences(setting, table.setdefault("setting", setting))
    if changed:
        raise ForgetlessError(f"{path} holds rows for another config ({differences_note(changed)}): choose another --out")
    if "data_digests" in setting:  # a table written before the digests were kept checks later rows from now on
        table["setting"]["data_digests"] = setting["data_digests"]
    table["baseline"] = baseline
    if command:
        table["commands"] = [*table.get("commands", []), command]
    entries = [(label_of(spec), spec, {}) for spec in specs] + [(frontier_label(o), "naive", o) for o in frontier]
    labels = [label for label, _, _ in entries]
    if len(set(labels)) != len(labels):
        repeated = sorted({label for label in labels if labels.count(label) > 1})
        raise ForgetlessError(f"--strategies: the same entry appears twice ({repeated})")
    saved = saved_before(out, config)  # read once: it holds the whole "before" evaluation
    before = None if saved is None else EvaluationLog.from_json(saved["log"])
    # A row's general change spans the environment that scored the start and its own: a change between them is said.
    start_environment = {} if saved is None else saved.get("environment") or {}
    rows = [ComparisonRow(**row) for row in table["rows"]]
    fill_task_end_changes(rows, out)
    configs = []
    for label, spec, override in entries:
        # Every entry is checked before the first row trains: a typo in the last one should not cost hours.
        try:
            data = config.model_dump()
            row_config = parse_config({**data, "strategies": spec if isinstance(spec, list) else [spec],
                                       "train": {**data["train"], **override}}, label)
            StrategyStack.from_specs(row_config.strategies).check(row_config.training_setup())
        except ForgetlessError as exc:
            raise ForgetlessError(f"--strategies {label}: {exc}") from None
        configs.append(row_config)
    # Before any training too: a state that cannot be continued (its config resolved otherwise) is said at once.
    resume_from = [resumable_row(out / run_folder(label), row_config, label) if resume else None
                   for (label, _, _), row_config in zip(entries, configs)]
    # A row the killed invocation was about to measure again (its label still "pending") is not kept from before it.
    done = {row.strategy for row in rows} - set(table.get("pending", []))
    skip = [resume and state is None and label in done for (label, _, _), state in zip(entries, resume_from)]
    table.pop("pending", None)
    if pending := [label for (label, _, _), skipped in zip(entries, skip) if not skipped]:
        table["pending"] = pending
    if rows:  # compare.json says which of its rows this invocation replaces, for a --resume after a kill
        atomic_write_json(path, table)
    for (label, spec, override), row_config, state, skipped in zip(entries, configs, resume_from, skip):
        if skipped:
            if progress:
                print(f"\n=== {label}: in the table already (--resume) ===", flush=True)
            continue
        if progress:
            print(f"\n=== {label}{f' (continued from {state})' if state else ''} ===", flush=True)
        started, scores_start = time.perf_counter(), before is None
        with _PeakMemory() as memory:
            run = run_factory(row_config, out / run_folder(label), before, state)
            if hasattr(run, "continue_with"):  # what a Ctrl-C's message says to run next
                run.continue_with = (f"the same command with --resume: the finished rows stay in {path}, and row "
                                     f"{label} goes on from that state")
            results = run.execute()
        read = getattr(run, "data_digests", None)  # as the row read them; the table's are from the invocation's start
        expected = setting.get("data_digests", {}) if read is not None else {}
        edited = [field for field in sorted(expected) if read.get(field) != expected[field]]
        if edited:
            raise ForgetlessError(f"row {label}: {edited} edited while compare ran (the row trained on other rows than "
                                  f"the table's); its folder {out / run_folder(label)} is not added to the table")
        if before is None:
            before = run.evaluator.log.first()
            # A resumed row scored it in the invocation it was cut off in.
            start_environment = getattr(run, "before_environment", None) or run_environment()
            atomic_write_json(out / "before.json", {"key": before_key(config), "log": before.to_json(),
                                                    "environment": start_environment})
        row = _row(label, spec, run, results, time.perf_counter() - started, memory, row_config.train.steps)
        row.train_override = override
        if start_environment and row.environment and not scores_start:  # its own resume's changes are said already
            row.environment_changes += [f"the 'before' evaluation's {change}"
                                        for change in environment_changes(start_environment, row.environment)]
        rows = [r for r in rows if r.strategy != label] + [row]
        against_baseline(rows, baseline)
        frontier_noise(rows, out)
        table["rows"] = [r.model_dump(mode="json") for r in rows]
        if pending := [other for other in table.pop("pending", []) if other != label]:
            table["pending"] = pending
        write_table(table, out)
        if getattr(run, "interrupted", False):  # a Ctrl-C after the row's last step: the row finished, stop here
            raise RunInterrupted(f"interrupted after row {label} finished; continue with the same command and --resume "
                                 f"(the finished rows stay in {path})")
    return rows


def resumable_row(folder: Path, config: RunConfig, label: str) -> Path | None:
    """The resumable state (forgetless.resume) a row's run folder holds for `config`, or None where it holds none."""
    from .resume import ResumeStore, check_resumable, complete_run
    from .training import resolved_strategy_params

    store = ResumeStore(folder)
    if store.latest() is None:
        return None
    if complete_run(folder):  # killed after the run finished, before its state was removed: nothing to continue
        store.remove()
        return None
    config_json = config.model_dump(mode="json")
    try:
        return check_resumable(folder, config_json, resolved_strategy_params(config), data_digests(config_json))
    except ForgetlessError as exc:
        raise ForgetlessError(f"row {label}: {exc} (in compare: remove {store.root} to run that row again from its "
                              "start)") from None


def write_table(table: dict[str, Any], out: Path) -> None:
    from .html_report import render_comparison_html

    atomic_write_json(out / "compare.json", table)
    atomic_write_text(out / "compare.md", markdown(table))
    atomic_write_text(out / "compare.html", render_comparison_html(table))
    image = pareto_png(table)
    if image is not None:
        atomic_write_bytes(out / "pareto.png", image)
