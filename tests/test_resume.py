"""Resume: a run that dies at any point and is continued with `--resume` ends exactly as the uninterrupted run.

In process, "dies" is an exception raised right after a resumable state is written (at a task's start, or
at a step inside a task); tests/test_resume_kill.py kills a real process with SIGKILL, and stops one with SIGINT and SIGTERM.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from forgetless.errors import ForgetlessError
from forgetless.resume import without_paths
from forgetless.training import ContinualRun, run_continual

from .conftest import ctrl_c_when, make_tiny_lm, tiny_config
from .test_strategy_contract import MODES, SPECS


class _Killed(Exception):
    pass


def _die_after(monkeypatch, task_index: int, step: int | None):
    """The run raises _Killed right after writing the state of (task_index, step); step None: the task's start."""
    original = ContinualRun.write_resume_state

    def dying(self, index, task_start=False, trainer_checkpoint=None):
        original(self, index, task_start, trainer_checkpoint)
        at = None if task_start else int(trainer_checkpoint.name.rsplit("-", 1)[1])
        if index == task_index and at == step:
            raise _Killed

    monkeypatch.setattr(ContinualRun, "write_resume_state", dying)


def _config(task_files, strategy="naive", mode="full", **overrides):
    train = {"steps": 4, "batch_size": 2, "lr": 1e-2, "max_length": 48, "seed": 0}
    evaluation = {"suites": [], "tasks": [{"name": "mc", "file": task_files["mc"]}], "every_steps": 2,
                  "probe": {"items_per_step": 2, "window": 3}}
    return tiny_config(task_files, strategies=[SPECS.get(strategy, strategy)], train=train, eval=evaluation,
                       **{"checkpoints": "every_task", "checkpoint_every_steps": 1, **MODES[mode], **overrides})


def _run(config, out, tokenizer, resume=False):
    model = make_tiny_lm(len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id
    return run_continual(config, out, model=model, tokenizer=tokenizer, progress=False, resume=resume)


def _scores(out) -> dict:
    """results.json without seconds, and the training logs' floats rounded to 12 digits: a resumed task's mean loss
    is re-assembled from the logged windows, and a diagnostic such as ewc's largest predicted rise is summed over
    tensors loaded from the state, which on some CPUs changes the last bit (the weights must still be equal)."""
    results = json.loads((out / "results.json").read_text())
    for key in ("wall_time_s", "eval_seconds", "probe_seconds"):
        results.pop(key, None)
    for entry in results["training"]:
        for key in [k for k in entry if k.endswith("seconds") or k == "resumed_at_step"]:  # where this part began
            entry.pop(key)
        entry.update({k: round(v, 12) for k, v in entry.items() if isinstance(v, float)})
    return results


def _final_tensors(out) -> dict[str, torch.Tensor]:
    folders = sorted((out / "checkpoints").iterdir())
    return {f"{folder.name}/{file.name}/{key}": tensor for folder in folders for file in sorted(folder.glob("*.safetensors"))
            for key, tensor in load_file(file).items()}


def _assert_same_run(a, b):
    assert _scores(a) == _scores(b)
    _assert_same_weights(a, b)


def _assert_same_weights(a, b):
    ta, tb = _final_tensors(a), _final_tensors(b)
    assert sorted(ta) == sorted(tb)
    different = [key for key in ta if not torch.equal(ta[key], tb[key])]
    assert not different, different[:5]


@pytest.mark.parametrize("strategy", sorted(SPECS))
def test_every_strategy_resumes_mid_task_to_the_same_run(strategy, task_files, tmp_path, tokenizer, monkeypatch):
    config = _config(task_files, strategy)
    _run(config, tmp_path / "whole", tokenizer)
    _die_after(monkeypatch, task_index=1, step=2)  # the second task, after 2 of its 4 steps
    with pytest.raises(_Killed):
        _run(config, tmp_path / "cut", tokenizer)
    partial = json.loads((tmp_path / "cut" / "results.json").read_text())
    assert partial["complete"] is False and (tmp_path / "cut" / "resume" / "current.json").exists()
    monkeypatch.undo()
    _run(config, tmp_path / "cut", tokenizer, resume=True)
    _assert_same_run(tmp_path / "whole", tmp_path / "cut")
    assert not (tmp_path / "cut" / "resume").exists() and not (tmp_path / "cut" / ".trainer").exists()


@pytest.mark.parametrize(("strategy", "mode", "task_index", "step"), [
    ("ewc", "full", 1, None),  # between tasks: at the second task's start
    ("naive", "full", 0, 1),  # inside the first task (no saved model: the start is the loaded model)
    ("ewc", "lora-merge", 1, 2),
    ("replay", "lora-stack", 1, 1),
    ("lwf", "lora-stack", 1, None),
])
def test_resume_at_task_starts_and_under_lora(strategy, mode, task_index, step, task_files, tmp_path, tokenizer, monkeypatch):
    config = _config(task_files, strategy, mode)
    _run(config, tmp_path / "whole", tokenizer)
    _die_after(monkeypatch, task_index, step)
    with pytest.raises(_Killed):
        _run(config, tmp_path / "cut", tokenizer)
    monkeypatch.undo()
    _run(config, tmp_path / "cut", tokenizer, resume=True)
    _assert_same_run(tmp_path / "whole", tmp_path / "cut")


def test_checkpoints_and_ctrl_c_off_the_logging_grid_leave_the_gradient_norms(task_files, tmp_path, tokenizer):
    # 20 steps log every 2 (training.py: steps // 10). A checkpoint (every 3 steps) and a Ctrl-C (here after the second
    # task's step 7) make the Trainer log their step too, off that grid; the gradient-norm summary must count the ten
    # regular logs only, so a run checkpointed, stopped and resumed reports what a run without either reports.
    def configured(every):
        config = _config(task_files, "naive", checkpoint_every_steps=every)
        return config.model_copy(update={"train": config.train.model_copy(update={"steps": 20, "lr": 5e-3}),
                                         "eval": config.eval.model_copy(update={"every_steps": 10, "probe": None})})

    _run(configured(None), tmp_path / "plain", tokenizer)
    cut = configured(3)
    with ctrl_c_when(lambda callback, state: callback.task_index == 1 and state.global_step == 7):
        with pytest.raises(ForgetlessError, match="interrupted at step 7"):
            _run(cut, tmp_path / "cut", tokenizer)
    _run(cut, tmp_path / "cut", tokenizer, resume=True)
    keys = ("grad_norm_max", "grad_norm_max_step", "grad_norm_median", "grad_norm_logs")
    plain, resumed = ([{key: entry[key] for key in keys} for entry in _scores(out)["training"]]
                      for out in (tmp_path / "plain", tmp_path / "cut"))
    assert [entry["grad_norm_logs"] for entry in plain] == [10, 10]
    assert resumed == plain
    _assert_same_weights(tmp_path / "plain", tmp_path / "cut")


def test_a_budget_that_strengthens_resumes_with_its_knob_and_decisions(task_files, tmp_path, tokenizer, monkeypatch):
    from forgetless.budget import BudgetGuard

    # Every check counts as exceeded (the tiny model does not forget on cue): l2sp's target (its default cap) halves
    # at each, and the moved value and the decisions so far must survive the kill.
    numbers = BudgetGuard._numbers
    monkeypatch.setattr(BudgetGuard, "_numbers", lambda self, *a: {**numbers(self, *a), "exceeded": True})
    config = _config(task_files, "l2sp", budget={"max_general_drop": 0.01, "on_exceed": "strengthen", "factor": 2.0})
    _run(config, tmp_path / "whole", tokenizer)
    whole = json.loads((tmp_path / "whole" / "results.json").read_text())
    assert any(check["action"] == "strengthen" for check in whole["budget"])  # else the test shows nothing
    with monkeypatch.context() as patch:
        _die_after(patch, task_index=1, step=3)
        with pytest.raises(_Killed):
            _run(config, tmp_path / "cut", tokenizer)
    _run(config, tmp_path / "cut", tokenizer, resume=True)
    _assert_same_run(tmp_path / "whole", tmp_path / "cut")


def test_a_budget_that_backs_off_resumes_at_the_lower_rate(task_files, tmp_path, tokenizer, monkeypatch):
    from forgetless.budget import BudgetGuard

    # Full checks every step, no probe; exceeded at global steps 6 and 8 (the second task's 2nd and last). Step 6
    # goes back to step 5 and halves the rate; the kill comes after step 7, which is kept; step 8 goes back to it.
    # The run ends the same only if the lowered rate, the fresh moments and the kept step-7 state all come back.
    act = BudgetGuard._act

    def scripted(self, model, numbers, in_domain, stage, task, step, *rest):
        exceeded = stage == "step" and step in (6, 8)
        return act(self, model, {**numbers, "exceeded": exceeded}, in_domain, stage, task, step, *rest)

    monkeypatch.setattr(BudgetGuard, "_act", scripted)
    config = _config(task_files, "naive", budget={"max_general_drop": 0.01, "on_exceed": "backoff"})
    config = config.model_copy(update={"eval": config.eval.model_copy(update={"every_steps": 1, "probe": None})})
    _run(config, tmp_path / "whole", tokenizer)
    whole = json.loads((tmp_path / "whole" / "results.json").read_text())
    acted = [(c["step"], c["action"], c["detail"][:26]) for c in whole["budget"] if c["action"] != "within"]
    assert acted == [(6, "backoff", "weights restored to step 5"), (8, "restore at the task's end", "weights restored to step 7")]
    with monkeypatch.context() as patch:
        _die_after(patch, task_index=1, step=3)
        with pytest.raises(_Killed):
            _run(config, tmp_path / "cut", tokenizer)
    _run(config, tmp_path / "cut", tokenizer, resume=True)
    _assert_same_run(tmp_path / "whole", tmp_path / "cut")


def test_resume_refuses_a_changed_config_and_a_folder_without_state(task_files, tmp_path, tokenizer, monkeypatch):
    config = _config(task_files)
    _die_after(monkeypatch, task_index=1, step=None)
    with pytest.raises(_Killed):
        _run(config, tmp_path / "cut", tokenizer)
    monkeypatch.undo()
    changed = config.model_copy(update={"train": config.train.model_copy(update={"steps": 5, "lr": 2e-2})})
    with pytest.raises(ForgetlessError, match=r"\['train.lr', 'train.steps'\]"):
        _run(changed, tmp_path / "cut", tokenizer, resume=True)
    with pytest.raises(ForgetlessError, match="--resume to continue it, or --overwrite"):
        _run(config, tmp_path / "cut", tokenizer)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ForgetlessError, match="holds no resumable state"):
        _run(config, tmp_path / "empty", tokenizer, resume=True)
    _run(config, tmp_path / "cut", tokenizer, resume=True)
    with pytest.raises(ForgetlessError, match="complete run: nothing to resume"):
        _run(config, tmp_path / "cut", tokenizer, resume=True)


def _killed_state(config, out, tokenizer, monkeypatch):
    """Run `config` into `out` until its second task's start state is written; that state.json and its content."""
    _die_after(monkeypatch, task_index=1, step=None)
    with pytest.raises(_Killed):
        _run(config, out, tokenizer)
    monkeypatch.undo()
    [state_file] = (out / "resume").glob("*/state.json")
    return state_file, json.loads(state_file.read_text())


def test_resume_refuses_a_state_whose_strategy_defaults_resolved_otherwise(task_files, tmp_path, tokenizer, monkeypatch):
    """The same config under another version's defaults (here: the state as a version whose replay drew at seed 0
    would have written it, at training seed 1) must not resume with other settings half-way; naming the run's value
    resumes; a state written before the knobs were recorded resumes as before."""
    config = _config(task_files, strategy="replay")
    config = config.model_copy(update={"train": config.train.model_copy(update={"seed": 1})})
    state_file, state = _killed_state(config, tmp_path / "cut", tokenizer, monkeypatch)
    assert state["strategy_params"]["replay"]["seed"] is None  # None: the run's training seed
    state["strategy_params"]["replay"]["seed"] = 0
    state_file.write_text(json.dumps(state))
    with pytest.raises(ForgetlessError, match=r"at \['replay.seed'\] \(the run started with \{'replay.seed': 0\}\)"):
        _run(config, tmp_path / "cut", tokenizer, resume=True)
    named = config.model_copy(update={"strategies": [{"name": "replay", "seed": 0}]})
    _run(named, tmp_path / "cut", tokenizer, resume=True)
    results = json.loads((tmp_path / "cut" / "results.json").read_text())
    assert results.get("complete", True) and results["strategy_params"]["replay"]["seed"] == 0
    # A state written before the knobs were recorded: the config alone is compared.
    state_file, state = _killed_state(config, tmp_path / "old", tokenizer, monkeypatch)
    del state["strategy_params"]
    state_file.write_text(json.dumps(state))
    _run(config, tmp_path / "old", tokenizer, resume=True)


def test_resume_refuses_a_reordered_or_changed_mapping_knob(task_files, tmp_path, tokenizer, monkeypatch):
    """l2sp's target_scale is compared whole and in order (its first matching regex wins), not regex by regex."""
    scale = {r"layers\.0\.": 0.5, "o_proj": 2.0}
    config = _config(task_files).model_copy(update={"strategies": [{"name": "l2sp", "target_scale": scale}]})
    _killed_state(config, tmp_path / "cut", tokenizer, monkeypatch)
    for other in ({"o_proj": 2.0, r"layers\.0\.": 0.5}, {**scale, "v_proj": 0.5}):
        changed = config.model_copy(update={"strategies": [{"name": "l2sp", "target_scale": other}]})
        with pytest.raises(ForgetlessError, match=r"at \['l2sp.target_scale'\]"):
            _run(changed, tmp_path / "cut", tokenizer, resume=True)
    _run(config, tmp_path / "cut", tokenizer, resume=True)


def test_a_half_written_state_folder_is_ignored_and_removed(task_files, tmp_path, tokenizer, monkeypatch):
    config = _config(task_files)
    _run(config, tmp_path / "whole", tokenizer)
    _die_after(monkeypatch, task_index=1, step=1)
    with pytest.raises(_Killed):
        _run(config, tmp_path / "cut", tokenizer)
    monkeypatch.undo()
    root = tmp_path / "cut" / "resume"
    half = root / "99"  # a kill while the next folder was written: current.json does not name it
    half.mkdir()
    (half / "state.json").write_text("{")
    (tmp_path / "cut" / ".trainer" / "checkpoint-3").mkdir(parents=True)
    _run(config, tmp_path / "cut", tokenizer, resume=True)
    _assert_same_run(tmp_path / "whole", tmp_path / "cut")


def test_a_resume_under_other_versions_is_said_in_the_log_and_in_results(task_files, tmp_path, tokenizer, monkeypatch,
                                                                          caplog):
    """A run continued under other package versions mixes two environments: warned and recorded, not refused (an
    upgrade between a kill and its resume should not cost the run); a state from before it was recorded: nothing said."""
    from forgetless.environment import run_environment

    config = _config(task_files)
    state_file, state = _killed_state(config, tmp_path / "cut", tokenizer, monkeypatch)
    now = run_environment()
    assert state["environment"] == now and state["environment_changes"] == []
    state["environment"] = {**now, "packages": {**now["packages"], "transformers": "4.0.0"}}
    state_file.write_text(json.dumps(state))
    with caplog.at_level("WARNING", logger="forgetless.training"):
        _run(config, tmp_path / "cut", tokenizer, resume=True)
    change = f"transformers 4.0.0 -> {now['packages']['transformers']}"
    assert any(change in record.getMessage() and "--resume" in record.getMessage() for record in caplog.records)
    results = json.loads((tmp_path / "cut" / "results.json").read_text())
    assert results["environment"] == now and results["environment_changes"] == [change]
    # A state written before the environment was recorded resumes silently, with no changes claimed.
    state_file, state = _killed_state(config, tmp_path / "old", tokenizer, monkeypatch)
    del state["environment"], state["environment_changes"]
    state_file.write_text(json.dumps(state))
    caplog.clear()
    _run(config, tmp_path / "old", tokenizer, resume=True)
    assert "environment_changes" not in json.loads((tmp_path / "old" / "results.json").read_text())
    assert not [r for r in caplog.records if "environment" in r.getMessage()]


def test_a_field_added_since_a_state_was_written_counts_at_its_default(task_files):
    from forgetless.resume import config_differences

    current = tiny_config(task_files).model_dump(mode="json")
    older = {key: value for key, value in current.items() if key != "general_data"}  # written before the field existed
    assert config_differences(older, current) == []
    assert config_differences(older, {**current, "general_data": "general.jsonl"}) == ["general_data"]
    assert config_differences(current, {**current, "train": {**current["train"], "lr": 0.5}}) == ["train.lr"]


def test_resume_refuses_a_data_file_edited_under_the_same_path(task_files, tmp_path, tokenizer, monkeypatch):
    """A task file edited between the kill and --resume would give the second half other rows (another held-out
    split): refused, naming the file and its field, under its path or another spelling of it; restored (and named by
    another spelling of its path), it resumes to the uninterrupted run. A state written before the digests were kept
    resumes unchecked."""
    config = _config(task_files)
    state_file, state = _killed_state(config, tmp_path / "cut", tokenizer, monkeypatch)
    assert set(state["data_digests"]) == {"tasks.0.file", "tasks.1.file", "eval.tasks.0.file"}
    chat = Path(task_files["chat"])
    original = chat.read_bytes()
    chat.write_bytes(original.replace(b"wait.", b"wait a minute."))
    with pytest.raises(ForgetlessError, match=rf"--resume: {re.escape(str(chat))} \(tasks\.0\.file\) changed since"):
        _run(config, tmp_path / "cut", tokenizer, resume=True)
    # Another spelling of an edited file's path: its digest differs, so the path is compared and refused.
    respelled = str(chat.parent / ".." / chat.parent.name / chat.name)
    moved = config.model_copy(update={"tasks": [config.tasks[0].model_copy(update={"file": respelled}), *config.tasks[1:]]})
    with pytest.raises(ForgetlessError, match=r"--resume: the config differs .* at \['tasks'\]"):
        _run(moved, tmp_path / "cut", tokenizer, resume=True)
    chat.unlink()
    with pytest.raises(ForgetlessError, match=rf"--resume: {re.escape(str(chat))} \(tasks\.0\.file\) is missing since"):
        _run(config, tmp_path / "cut", tokenizer, resume=True)
    chat.write_bytes(original)
    # A digest map edited by hand names a field the config has no file at: refused, saying so (not "None").
    state_file.write_text(json.dumps({**state, "data_digests": {**state["data_digests"], "tasks.x.file": "0" * 64}}))
    with pytest.raises(ForgetlessError, match=r"digests name tasks\.x\.file, where the config names no file \(a state"):
        _run(config, tmp_path / "cut", tokenizer, resume=True)
    state_file.write_text(json.dumps(state))
    # Restored, and spelled from another folder (a config passed by a relative path elsewhere): the same data resumes.
    _run(moved, tmp_path / "cut", tokenizer, resume=True)
    _run(config, tmp_path / "whole", tokenizer)
    cut, whole = _scores(tmp_path / "cut"), _scores(tmp_path / "whole")
    assert cut.pop("config") == {**whole.pop("config"), "tasks": moved.model_dump(mode="json")["tasks"]}  # as resumed
    assert cut == whole
    _assert_same_weights(tmp_path / "cut", tmp_path / "whole")
    # An older state (no digests) with the file edited: the config alone is compared, as before.
    state_file, state = _killed_state(config, tmp_path / "old", tokenizer, monkeypatch)
    del state["data_digests"]
    state_file.write_text(json.dumps(state))
    chat.write_bytes(original.replace(b"wait.", b"wait a minute."))
    _run(config, tmp_path / "old", tokenizer, resume=True)


def test_data_digests_cover_every_file_a_config_reads_and_an_lm_eval_folder(task_files, tmp_path):
    from forgetless.resume import data_digests

    folder = tmp_path / "lm_eval"
    folder.mkdir()
    (folder / "task.yaml").write_text("task: mine\n")
    config = tiny_config(task_files, general_data=task_files["text"]).model_dump(mode="json")
    config["eval"] |= {"tasks": [{"name": "mc", "file": task_files["mc"]}], "lm_eval_include": str(folder)}
    config["tasks"][0]["heldout_file"] = task_files["mc"]
    digests = data_digests(config)
    assert set(digests) == {"tasks.0.file", "tasks.0.heldout_file", "tasks.1.file", "eval.tasks.0.file",
                            "eval.lm_eval_include", "general_data"}
    assert digests["tasks.1.file"] == digests["general_data"] != digests["tasks.0.file"]  # by content, not by field
    (folder / "task.yaml").rename(folder / "other.yaml")  # the same bytes under another name: another task set
    renamed = data_digests(config)
    assert renamed["eval.lm_eval_include"] != digests["eval.lm_eval_include"]
    (folder / "__pycache__").mkdir()  # written by Python when lm-eval imports a task's `!function` module
    (folder / "__pycache__" / "utils.cpython-311.pyc").write_bytes(b"bytecode")
    assert data_digests(config)["eval.lm_eval_include"] == renamed["eval.lm_eval_include"]
    assert {k: v for k, v in renamed.items() if k != "eval.lm_eval_include"} == {
        k: v for k, v in digests.items() if k != "eval.lm_eval_include"}


def test_without_paths_replaces_only_fields_that_exist_and_skips_malformed_names():
    """Digest maps come from files a user can edit (compare.json, state.json): a field naming no index into a list
    ("tasks.x.file"), one past its end, or one below a string must leave the config as it is, not raise."""
    config = {"tasks": [{"name": "a", "file": "a.jsonl"}], "general_data": "g.jsonl"}
    # "²" is a digit to str.isdigit() but no int() literal
    assert without_paths(config, {"tasks.x.file", "tasks.\u00b2.file", "tasks.3.file", "general_data.y"}) == config
    assert without_paths(config, {"tasks.0.file", "general_data"}) == {
        "tasks": [{"name": "a", "file": "<same data>"}], "general_data": "<same data>"}
    assert config["tasks"][0]["file"] == "a.jsonl"  # a copy: the caller's config is untouched
