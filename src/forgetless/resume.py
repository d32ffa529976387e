"""A run's resumable state: written atomically at every task's start, every `checkpoint_every_steps` steps and on
Ctrl-C or SIGTERM (forgetless.stopping); read by `run --resume`; removed when the run completes.

Layout under OUT/resume/:
    current.json               names the newest complete state folder; written last, atomically
    <n>/state.json             where the run is (task, mid-task or not), its config, the evaluations so far,
                               per-task logs, budget and probe state, strategy strengths and in-task values, RNG,
                               the sha256 of each data file the config names
    <n>/model.safetensors      the model at the start of that task (after the previous task's merge); none for
                               the first task, whose start is the loaded model itself
    <n>/strategies.safetensors each strategy's consolidated state (`state_tensors`), keys "<strategy>/<key>"
    <n>/task.safetensors       in the middle of a task: strategies' in-task tensors and the budget's kept weights
    <n>/trainer/               in the middle of a task: transformers' own checkpoint (trained weights, optimizer,
                               scheduler, RNG states, step), which `Trainer.train(resume_from_checkpoint=)` reads

A kill at any moment leaves current.json naming a complete folder (or no current.json): a folder is filled
before current.json names it. Folders it does not name are leftovers, removed when a run starts.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import ForgetlessError
from .fileio import atomic_write_json

TensorGroups = dict[str, dict[str, torch.Tensor]]  # group (a strategy, "budget", ...) -> name -> tensor


class RunInterrupted(ForgetlessError):
    """A stop signal (forgetless.stopping): the run wrote a resumable state and stopped. The CLI exits 128 + the
    signal's number, as a shell reports a process the signal ended: 130 for SIGINT, 143 for SIGTERM."""

    def __init__(self, message: str, signum: int = signal.SIGINT):
        super().__init__(message)
        self.signum = signum


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        flat: dict[str, Any] = {}
        for key, item in value.items():
            flat.update(_flatten(item, f"{prefix}{key}."))
        return flat
    return {prefix.rstrip("."): value}


def _knob_values(knobs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """strategy.knob -> value; a mapping knob (l2sp's target_scale) whole, as its items in order: its order matters."""
    return {f"{strategy}.{knob}": [list(item) for item in value.items()] if isinstance(value, dict) else value
            for strategy, values in knobs.items() for knob, value in values.items()}


def config_differences(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Dotted config keys whose values differ between two configs (model_dump(mode="json") of each). A key one of them
    lacks (a field added since the state was written, as `general_data`) counts as its default there: at its default
    the new field changes nothing."""
    a, b, defaults = _flatten(recorded), _flatten(current), _flatten(_config_defaults())
    return sorted(key for key in set(a) | set(b)
                  if a.get(key, defaults.get(key, "<absent>")) != b.get(key, defaults.get(key, "<absent>")))


def _field_value(config_json: dict[str, Any], field: str) -> Any:
    """The value at a dotted field ("tasks.0.file"); None where a step of it is missing."""
    value: Any = config_json
    for part in field.split("."):
        if isinstance(value, list):
            # a hand-edited state or table can name a step that is no index: that field is simply not there
            value = value[int(part)] if part.isdecimal() and int(part) < len(value) else None
        elif isinstance(value, dict):
            value = value.get(part)
        else:
            return None
    return value


def _file_at(config_json: dict[str, Any], field: str) -> str:
    """The path at a dotted field and the field, for a message."""
    return f"{_field_value(config_json, field)} ({field})"


def same_data_fields(one: dict[str, str] | None, other: dict[str, str] | None) -> set[str]:
    """The dotted fields whose data both digest maps record, with one digest."""
    if not isinstance(one, dict) or not isinstance(other, dict):
        return set()
    return {field for field in set(one) & set(other) if one[field] == other[field]}


def without_paths(config_json: dict[str, Any], fields: set[str]) -> dict[str, Any]:
    """A copy of config_json with the path at each dotted field replaced by one marker. Used on the fields whose
    content both sides recorded with one digest: a config passed by a relative path from another folder (or by its
    absolute path) spells its files' paths otherwise, and data moved to another folder is the same data."""
    copy = json.loads(json.dumps(config_json))
    for field in fields:
        parent, _, last = field.rpartition(".")
        holder = _field_value(copy, parent) if parent else copy
        if isinstance(holder, dict) and last in holder:
            holder[last] = "<same data>"
    return copy


def _config_defaults() -> dict[str, Any]:
    """Every config field at its default (a task is required: its list differs anyway and is not a default)."""
    from .config import parse_config

    defaults = parse_config({"tasks": [{"name": "_", "builtin": "support"}]}).model_dump(mode="json")
    return {key: value for key, value in defaults.items() if key != "tasks"}


def data_digests(config_json: dict[str, Any]) -> dict[str, str]:
    """The sha256 of every file the config reads rows from, by its dotted field ("tasks.0.file", "general_data"), and
    of the files under `eval.lm_eval_include` (their names and contents): the config names a path, and a file edited
    under the same path between a kill and `--resume` would otherwise give the rest of the run other rows (another
    held-out split, other protection data) without a word. Missing files are left out: the run refuses them itself,
    naming the field. Data lm-evaluation-harness keeps in its own cache is not covered."""
    fields = {"general_data": config_json.get("general_data")}
    for i, task in enumerate(config_json.get("tasks", [])):
        fields |= {f"tasks.{i}.file": task.get("file"), f"tasks.{i}.heldout_file": task.get("heldout_file")}
    evaluation = config_json.get("eval", {})
    for i, task in enumerate(evaluation.get("tasks", [])):
        fields[f"eval.tasks.{i}.file"] = task.get("file")
    digests = {field: _sha256([Path(path)]) for field, path in fields.items() if path and Path(path).is_file()}
    include = evaluation.get("lm_eval_include")
    if include and Path(include).is_dir():
        # Python writes bytecode beside a task's `!function` module when lm-eval imports it: not the task's content.
        files = [p for p in Path(include).rglob("*") if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"]
        digests["eval.lm_eval_include"] = _sha256(sorted(files), Path(include))
    return digests


def _sha256(paths: list[Path], root: Path | None = None) -> str:
    """One digest of the files' contents (and, under a folder `root`, of their names relative to it)."""
    digest = hashlib.sha256()
    for path in paths:
        if root is not None:
            digest.update(str(path.relative_to(root)).encode() + b"\0")
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    version, internal, gauss = random.getstate()
    kind, keys, position, has_gauss, cached = np.random.get_state()
    return {"torch_cpu": torch.get_rng_state()}, {
        "python": [version, list(internal), gauss],
        "numpy": [kind, keys.tolist(), int(position), int(has_gauss), float(cached)],
    }


def load_rng_state(tensors: dict[str, torch.Tensor], values: dict[str, Any]) -> None:
    version, internal, gauss = values["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, position, has_gauss, cached = values["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), position, has_gauss, cached))
    torch.set_rng_state(tensors["torch_cpu"])


def _save_tensors(path: Path, groups: dict[str, dict[str, torch.Tensor]]) -> None:
    from safetensors.torch import save_file

    flat = {f"{group}/{key}": t.detach().contiguous().cpu() for group, tensors in groups.items() for key, t in tensors.items()}
    if flat:
        save_file(flat, path)


def _load_tensors(path: Path, device: str | torch.device = "cpu") -> dict[str, dict[str, torch.Tensor]]:
    from safetensors.torch import load_file

    groups: dict[str, dict[str, torch.Tensor]] = {}
    if path.exists():
        for key, tensor in load_file(path, device=str(device)).items():
            group, _, name = key.partition("/")
            groups.setdefault(group, {})[name] = tensor
    return groups


class ResumeStore:
    """OUT/resume/: `write` a state folder, `latest` the one current.json names, `clean` the leftovers."""

    def __init__(self, out_dir: str | Path):
        self.root = Path(out_dir) / "resume"
        self.pointer = self.root / "current.json"

    def latest(self) -> Path | None:
        if not self.pointer.exists():
            return None
        folder = self.root / json.loads(self.pointer.read_text(encoding="utf-8"))["folder"]
        return folder if (folder / "state.json").exists() else None

    def clean(self) -> None:
        """Remove state folders current.json does not name (a kill while one was being written)."""
        if not self.root.is_dir():
            return
        keep = self.latest()
        for item in self.root.iterdir():
            if item != self.pointer and item != keep:
                shutil.rmtree(item) if item.is_dir() else item.unlink()

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    def write(self, state: dict[str, Any], model: torch.nn.Module | None, tensor_files: dict[str, TensorGroups],
              trainer_checkpoint: Path | None = None) -> Path:
        """A new complete folder, then current.json naming it, then the older folder removed.

        `model`: the task's starting model to save, or None to reuse the current folder's copy of it and of
        the strategies' state at the task's start (hard links; in the middle of a task both must be as they
        were when it started, since `on_task_start` runs again on them), or, at the first task, to have none.
        """
        from safetensors.torch import save_model

        previous = self.latest()
        number = 1 + max([int(p.name) for p in self.root.iterdir() if p.name.isdigit()], default=0) if self.root.is_dir() else 1
        folder = self.root / str(number)
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        if model is not None:
            save_model(model, str(folder / "model.safetensors"))  # handles tied weights (one tensor, two names)
        elif previous is not None:
            for name in ("model.safetensors", "strategies.safetensors"):
                if (previous / name).exists():
                    try:
                        os.link(previous / name, folder / name)
                    except OSError:  # a file system without hard links
                        shutil.copy2(previous / name, folder / name)
        for name, groups in tensor_files.items():
            _save_tensors(folder / f"{name}.safetensors", groups)
        if trainer_checkpoint is not None:
            os.replace(trainer_checkpoint, folder / "trainer")
        (folder / "state.json").write_text(json.dumps(state, ensure_ascii=False), encoding="utf-8")
        atomic_write_json(self.pointer, {"folder": folder.name})
        if previous is not None and previous != folder:
            shutil.rmtree(previous, ignore_errors=True)
        return folder

    @staticmethod
    def read(folder: Path, device: str | torch.device = "cpu") -> tuple[dict[str, Any], dict[str, TensorGroups]]:
        """(state.json, {file stem: tensor groups}) of a state folder."""
        state = json.loads((folder / "state.json").read_text(encoding="utf-8"))
        tensors = {name: _load_tensors(folder / f"{name}.safetensors", device) for name in ("strategies", "task", "rng")}
        return state, tensors

    @staticmethod
    def load_model(folder: Path, model: torch.nn.Module) -> None:
        from safetensors.torch import load_model

        if (folder / "model.safetensors").exists():
            load_model(model, str(folder / "model.safetensors"), strict=True)


def complete_run(out_dir: Path) -> bool:
    """Whether `out_dir/results.json` marks a finished run (files written before the mark existed count as finished)."""
    try:
        return bool(json.loads((out_dir / "results.json").read_text(encoding="utf-8")).get("complete", True))
    except (OSError, ValueError, AttributeError):
        return False


def check_resumable(out_dir: Path, config_json: dict[str, Any], strategy_params: dict[str, Any] | None = None,
                    digests: dict[str, str] | None = None) -> Path:
    """The state folder `run --resume` continues from, or a ForgetlessError that says why there is none.

    `strategy_params`: every strategy's knobs as this version resolves the config (`resolved_strategy_params`). The
    same config can resolve otherwise after an upgrade (a bare `ewc` was lam 100, now a cap; `replay`'s draws followed
    seed 0, now the training seed), and a run must not switch settings half-way; a config that names the run's values
    resumes. States written before the knobs were recorded are compared by their config alone.

    `digests`: `data_digests` of the config now; a data file whose content changed since the run started is refused
    (states written before digests were recorded are not checked).
    """
    if complete_run(out_dir):
        raise ForgetlessError(f"{out_dir} holds a complete run: nothing to resume (pass --overwrite to run it again)")
    folder = ResumeStore(out_dir).latest()
    if folder is None:
        raise ForgetlessError(
            f"{out_dir} holds no resumable state (a run writes its first one once the evaluation before training is "
            "done); pass --overwrite to start again"
        )
    state = json.loads((folder / "state.json").read_text(encoding="utf-8"))
    recorded, current = state["config"], config_json
    knobs = state.get("strategy_params") if strategy_params is not None else None
    if knobs is not None:
        # The knobs are compared as resolved, so a config that names the run's value of a changed default (replay's
        # `seed: 0` against a bare `replay`) resumes; the stack's order still has to match.
        recorded = {**recorded, "strategies": list(knobs)}
        current = {**current, "strategies": list(strategy_params)}
    recorded_digests = state.get("data_digests")
    same = same_data_fields(recorded_digests, digests)
    differences = config_differences(without_paths(recorded, same), without_paths(current, same))
    if differences:
        raise ForgetlessError(f"--resume: the config differs from the one this run started with, at {differences}; "
                              "resume with the same config, or pass --overwrite to start again")
    if digests is not None and recorded_digests is not None:
        edited = sorted(field for field in set(recorded_digests) | set(digests)
                        if recorded_digests.get(field) != digests.get(field))
        unnamed = [field for field in edited if _field_value(config_json, field) is None]
        if unnamed:
            raise ForgetlessError(f"--resume: the saved state's data digests name {', '.join(unnamed)}, where the config "
                                  "names no file (a state edited by hand?); pass --overwrite to start again")
        missing = [_file_at(config_json, field) for field in edited if field not in digests]
        if missing:
            raise ForgetlessError(f"--resume: {', '.join(missing)} is missing since this run started; restore it, or "
                                  "pass --overwrite to start again")
        if edited:
            files = ", ".join(_file_at(config_json, field) for field in edited)
            raise ForgetlessError(f"--resume: {files} changed since this run started (its content, not its path); "
                                  "restore the file as it was, or pass --overwrite to start again on the new rows")
    if knobs is not None:
        # A knob that only one version has (added or removed since) cannot be named either way: not compared.
        before, now = _knob_values(knobs), _knob_values(strategy_params)
        changed = sorted(key for key in set(before) & set(now) if before[key] != now[key])
        if changed:
            was = {key: before[key] for key in changed}
            raise ForgetlessError(
                f"--resume: the strategies' knobs differ from the ones this run started with, at {changed} (the run "
                f"started with {was}), from the config or from defaults this version of forgetless resolves otherwise; "
                "name those values in the config's `strategies` to keep the run's settings, or pass --overwrite to "
                "start again"
            )
    return folder
