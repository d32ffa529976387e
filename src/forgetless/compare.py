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
- where the run scored the `instructions` suite: its pass rate's change, the `leakage` task's, and `formats`, the
  share of the answers asked for a JSON object, a numbered list or bullets that hold it anywhere, text around it
  allowed (forgetless.evaluation.formats): where the pass rate fell and `formats` did not, the structures are
  still written (the losses are text around them or the other 80 prompts' checks); where `formats` fell, they are
  no longer written as asked (or a list of another length, an object with other keys); and `stops`, the share of
  the answers that ended by themselves within the suite's budget (forgetless.evaluation.stops): a fall means the
  fine-tune made answers run on until cut;
- over two or more tasks, the change saved at equal gain against naive's frontier at the end: every row's and naive's
  points by the mean gain at the end instead of right after each task, so that what a later task takes back from an
  earlier one counts against the row (the frontier distances right after each task do not see it).
"""

from __future__ import annotations

import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import yaml

from .comparison_rows import (
    ComparisonRow,
    against_baseline,
    fill_formats,
    fill_task_end_changes,
    frontier_noise,
    gain_at_end,
    generation_checks,
    run_folder,
)
from .comparison_table import write_table
from .config import RunConfig, parse_config
from .environment import environment_changes, run_environment
from .errors import ForgetlessError
from .fileio import atomic_write_json, check_output_path
from .metrics import paired_delta
from .results import GeneralSummary
from .resume import RunInterrupted, data_digests, same_data_fields, without_paths

# What a row is run with: (config, out_dir, before=EvaluationLog | None) -> an object with execute(),
# .evaluator.log and .strategies (ContinualRun, or the SFTTrainer variant in benchmarks/sft_run.py).
RunFactory = Callable[..., Any]


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
    at_end, at_end_se = gain_at_end(log, tasks)
    return ComparisonRow(
        strategy=label, spec=spec, in_domain_gain=gain, in_domain_gain_se=gain_se,
        in_domain_gain_at_end=at_end, in_domain_gain_at_end_se=at_end_se,
        general_after_each_task=results.general_after_each_task(),
        general_change_after_each_task={p.task: (p.delta, p.se) for p in results.general_curve if p.stage == "after_task"},
        generation=generation_checks(m.general_tasks, log),
        **m.model_dump(include=set(GeneralSummary.model_fields)), bwt=m.bwt, forgetting=m.forgetting,
        seconds_per_step=trained / timed_steps if timed_steps else None,
        peak_memory_mb=memory.peak / 2**20 if memory.peak else None, memory_measure=memory.measure,
        state_mb=_state_bytes(run.strategies) / 2**20, stores_raw_data=getattr(results, "stores_raw_data", []),
        wall_time_s=seconds, training=results.training, resumed=getattr(run, "resume_from", None) is not None,
        finished_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        environment=getattr(results, "environment", {}),
        environment_changes=list(getattr(results, "environment_changes", None) or []),
    )


def differing_keys(one: dict[str, Any], other: dict[str, Any]) -> list[str]:
    """The top-level keys whose values differ between two settings: what a refusal to mix them names."""
    return sorted(k for k in set(one) | set(other) if one.get(k) != other.get(k))


def setting_differences(one: dict[str, Any], other: dict[str, Any]) -> list[str]:
    """What two table settings differ in ([]: one setting). The data files' digests are compared file by file
    ("data_digests.tasks.0.file") and only where both settings have them: tables written before 2026-12-06 lack them.
    Where both record one digest for a field, its path is not compared (the same file spelled from another folder)."""
    one, other = dict(one), dict(other)
    mine, theirs = one.pop("data_digests", None), other.pop("data_digests", None)
    same = same_data_fields(mine, theirs)  # one content under two spellings of its path is one setting
    keys = differing_keys(without_paths(one, same), without_paths(other, same))
    if isinstance(mine, dict) and isinstance(theirs, dict):
        keys += [f"data_digests.{f}" for f in sorted(set(mine) | set(theirs)) if mine.get(f) != theirs.get(f)]
    return keys


def differences_note(keys: list[str]) -> str:
    edited = any(key.startswith("data_digests.") for key in keys)
    return f"differs in {keys}" + (": a data file under the same path holds other content" if edited else "")


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


def same_before_key(saved: Any, key: dict[str, Any]) -> bool:
    """Whether a saved "before" evaluation's key is `key`: equal but for the spelling of data files' paths whose
    content both record with one digest. A key without digests (saved before 2026-12-06) matches only one without."""
    if not isinstance(saved, dict) or saved.get("data_digests") != key.get("data_digests"):
        return False
    same = same_data_fields(saved.get("data_digests"), key.get("data_digests"))
    return without_paths(saved, same) == without_paths(key, same)


def saved_before(out: Path, config: RunConfig) -> dict[str, Any] | None:
    """out/before.json as saved by a run of the same config ({"key", "log", "environment"}), or None."""
    import json

    path = out / "before.json"
    if not path.exists():
        return None
    saved = json.loads(path.read_text(encoding="utf-8"))
    return saved if same_before_key(saved.get("key"), before_key(config)) else None


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
    fill_formats(rows, out)
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
        if getattr(run, "interrupted", False):  # a stop signal after the row's last step: the row finished, stop here
            raise RunInterrupted(f"interrupted after row {label} finished; continue with the same command and --resume "
                                 f"(the finished rows stay in {path})", signum=run.stop_signal)
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
