"""A real `forgetless run` process killed with SIGKILL, or stopped with Ctrl-C (SIGINT) or SIGTERM, continues with `--resume`
to the same results.json scores and final weights as a run that was never stopped.

Each case starts the CLI on a tiny model folder, waits until the run's resumable state reaches a given point,
signals the process, then resumes it: five cases of three short processes each (the whole run, the cut one, its resume).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from .test_resume import _assert_same_run

pytestmark = pytest.mark.slow


def _config_file(tmp_path, task_files, model_folder) -> str:
    config = {
        "model": str(model_folder),
        "tasks": [{"name": "chat", "file": task_files["chat"]}, {"name": "text", "file": task_files["text"]}],
        "strategies": [{"name": "ewc", "samples": 8}],
        "eval": {"suites": [], "tasks": [{"name": "mc", "file": task_files["mc"]}], "every_steps": 3},
        "train": {"steps": 8, "batch_size": 2, "lr": 1e-2, "max_length": 48, "seed": 0},
        "checkpoints": "every_task",
        "checkpoint_every_steps": 2,
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def _command(config, out, *extra):
    return [sys.executable, "-m", "forgetless", "run", config, "--out", str(out), "--quiet", *extra]


def _state(out):
    """(task index, mid-task?, step) of the newest resumable state, or None."""
    pointer = out / "resume" / "current.json"
    try:
        folder = out / "resume" / json.loads(pointer.read_text())["folder"]
        state = json.loads((folder / "state.json").read_text())
    except (OSError, ValueError):
        return None
    step = None
    if state["mid_task"]:
        step = json.loads((folder / "trainer" / "trainer_state.json").read_text())["global_step"]
    return state["task_index"], state["mid_task"], step


def _signal_when(config, out, reached, signum) -> subprocess.CompletedProcess:
    """Start a run, send `signum` once `reached(state)` holds, and wait for the process to end."""
    process = subprocess.Popen(_command(config, out), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        state = _state(out)
        if state is not None and reached(state):
            process.send_signal(signum)
            break
        time.sleep(0.05)
    stdout, stderr = process.communicate(timeout=300)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


@pytest.fixture
def whole_run(tmp_path, task_files, tiny_model_folder):
    config = _config_file(tmp_path, task_files, tiny_model_folder)
    done = subprocess.run(_command(config, tmp_path / "whole"), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return config, tmp_path / "whole"


@pytest.mark.parametrize(("where", "reached"), [
    ("inside the first task", lambda s: s[:2] == (0, True) and s[2] >= 2),
    ("at the second task's start", lambda s: s[:2] == (1, False)),
    ("inside the second task", lambda s: s[:2] == (1, True) and s[2] >= 4),
])
def test_sigkill_then_resume_gives_the_same_run(where, reached, whole_run, tmp_path):
    config, whole = whole_run
    out = tmp_path / "cut"
    killed = _signal_when(config, out, reached, signal.SIGKILL)
    assert killed.returncode == -signal.SIGKILL, f"the run ended before the kill {where}: {killed.stderr[-1500:]}"
    assert json.loads((out / "results.json").read_text())["complete"] is False
    resumed = subprocess.run(_command(config, out, "--resume"), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    _assert_same_run(whole, out)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_stop_signal_finishes_the_step_saves_and_exits_128_plus_its_number(signum, whole_run, tmp_path):
    """Ctrl-C, or SIGTERM as a scheduler sends before a kill (SLURM at preemption): exit 130 or 143, as a shell
    reports a process ended by that signal, after a state that resumes to the uninterrupted run."""
    config, whole = whole_run
    out = tmp_path / "cut"
    stopped = _signal_when(config, out, lambda s: s[:2] == (0, True), signum)
    assert stopped.returncode == 128 + signum, stopped.stderr[-2000:]
    last = stopped.stderr.strip().splitlines()[-1]
    assert last.startswith("forgetless: interrupted at step ") and f"({signal.Signals(signum).name})" in last
    assert "--resume" in last
    step = int(last.split("at step ")[1].split()[0])
    assert _state(out) == (0, True, step)  # the state written is the step the message names
    resumed = subprocess.run(_command(config, out, "--resume"), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    _assert_same_run(whole, out)
