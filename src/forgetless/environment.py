"""What a run was measured with: Python, the packages that compute its numbers, the device and the CPU threads.

Kept in results.json and in a resumable state, so that two measurements that should agree and do not can be traced
to a change of environment, or ruled out. Naive on the bundled benchmark at seed 3, run again on 2026-12-06 with the
same config and code path as on 2026-12-05, ended at a general change of -0.0500 instead of -0.0516; in between the
machine had restarted and the virtual environment had been rebuilt from the unpinned requirements, and no file said
what the first run had run on (docs/results/quality.md, "Seed 3 again").
"""

from __future__ import annotations

import functools
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

# The libraries whose versions can move a number: the model's arithmetic (torch, numpy), its loading and training
# (transformers, peft, accelerate, trl), the data and its tokenisation, and forgetless itself.
PACKAGES = ("forgetless", "torch", "transformers", "peft", "accelerate", "trl", "datasets", "tokenizers", "safetensors",
            "numpy")


# Recorded but not compared between a table's rows: a kernel update alone changes the platform string, and a table
# grown over days spans commits that mostly touch docs; either can be read in results.json where a difference needs
# explaining. A resume compares the commit too (RESUME_IGNORED): one run should not switch code half-way unnoticed.
IGNORED = ("platform", "forgetless_commit")
RESUME_IGNORED = ("platform",)


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str | None:
    """The CPU's model name (Linux), else what platform knows: kernels, and so the last bits of a sum, follow the CPU."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


@functools.cache  # one lookup per process: a run records its environment at every start, on every rank
def _source_commit() -> str | None:
    """The git commit of forgetless's source when it runs from its own checkout ("+changes" when src/forgetless differs
    from it), else None: an installed wheel, no git, or a checkout git will not read (the package version alone stays
    0.1.0 across every commit)."""
    source = Path(__file__).resolve().parent

    def git(*args: str) -> str:
        # --no-optional-locks: reading the status must not take the index lock from a user's concurrent commit.
        return subprocess.run(["git", "--no-optional-locks", "-C", str(source), *args], capture_output=True, text=True,
                              errors="replace", timeout=10, check=True).stdout.strip()

    try:
        top = git("rev-parse", "--show-toplevel")
        if not top or Path(top).resolve() / "src" / "forgetless" != source:  # a wheel inside someone else's repository
            return None
        commit, changed = git("rev-parse", "HEAD"), git("status", "--porcelain", "--", ".")
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+changes" if changed else "")


def _device() -> str:
    """What trains: this process's CUDA device by name (each rank its own), else "mps" where the runner would use it,
    else "cpu"."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.cuda.current_device())
    return "mps" if torch.backends.mps.is_available() else "cpu"


def run_environment() -> dict[str, Any]:
    """This process's environment: {"python", "platform", "packages": {name: version or None (not installed)},
    "forgetless_commit", "device", "cuda" (torch's CUDA version, None on a CPU build), "processes" (accelerate's
    WORLD_SIZE), "cpu", "cpu_capability" (the vector instructions torch's CPU kernels use), "torch_threads"}."""
    import torch

    return {"python": platform.python_version(), "platform": platform.platform(),
            "packages": {name: _version(name) for name in PACKAGES}, "forgetless_commit": _source_commit(),
            "device": _device(), "cuda": torch.version.cuda, "processes": int(os.environ.get("WORLD_SIZE", "1")),
            "cpu": _cpu_model(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "torch_threads": torch.get_num_threads()}


def _flat(environment: dict[str, Any]) -> dict[str, Any]:
    """{"python": ..., "transformers": ..., "device": ...}: packages by their own name."""
    flat = {key: value for key, value in environment.items() if key != "packages"}
    return {**flat, **environment.get("packages", {})}


def environment_changes(before: dict[str, Any], after: dict[str, Any], ignored: tuple[str, ...] = IGNORED) -> list[str]:
    """What differs between two recorded environments, as "transformers 5.24.0 -> 5.25.0", over the keys both records
    have (an older record lacks the keys added since: not a change) but `ignored`."""
    one, other = _flat(before), _flat(after)
    keys = [k for k in one if k in other and k not in ignored and one[k] != other[k]]
    return [f"{key} {one[key]} -> {other[key]}" for key in keys]


def environment_differences(environments: dict[str, dict[str, Any] | None]) -> list[str]:
    """Where labelled measurements (a comparison's rows) were taken under different environments: one line per
    differing key, each value with the labels measured under it ("transformers 5.24.0 (naive), 5.25.0 (ewc)"), among the
    records that have the key, and one naming the measurements with no record. Empty when every recorded one agrees
    (IGNORED keys left out)."""
    recorded = {label: _flat(env) for label, env in environments.items() if env}
    lines = []
    keys = dict.fromkeys(key for env in recorded.values() for key in env if key not in IGNORED)
    for key in keys:
        by_value: dict[str, list[str]] = {}
        for label, env in recorded.items():
            if key in env:  # a record from before the key was kept says nothing about it
                by_value.setdefault(str(env[key]), []).append(label)
        if len(by_value) > 1:
            lines.append(f"{key} " + ", ".join(f"{value} ({', '.join(labels)})" for value, labels in by_value.items()))
    missing = [label for label, env in environments.items() if not env]
    if missing and recorded:
        lines.append(f"no record ({', '.join(missing)}: measured before forgetless recorded it)")
    return lines


def environment_line(environment: dict[str, Any]) -> str:
    """One line for a report: "Python 3.11.7; torch 2.13.0+cpu, transformers 5.25.0, ...; cpu (AMD EPYC, AVX512, 2
    threads)"; empty for a run written before it was kept."""
    if not environment:
        return ""
    packages = ", ".join(f"{name} {version}" for name, version in environment.get("packages", {}).items() if version)
    cpu = ", ".join(str(part) for part in (environment.get("cpu"), environment.get("cpu_capability")) if part)
    threads, processes = environment.get("torch_threads"), environment.get("processes")
    where = ", ".join(part for part in (cpu, f"{threads} threads" if threads else "",
                                        f"{processes} processes" if processes and processes > 1 else "") if part)
    commit = environment.get("forgetless_commit")
    parts = [f"Python {environment.get('python')}", packages, f"forgetless commit {commit}" if commit else "",
             f"{environment.get('device')}" + (f" ({where})" if where else "")]
    return "; ".join(part for part in parts if part)


def environment_note(environments: dict[str, dict[str, Any] | None]) -> str:
    """The sentence a table prints under itself where its labelled measurements were taken in different environments
    (empty where they agree): a difference between rows may then be the versions' as much as the strategies'."""
    differences = environment_differences(environments)
    return ("Rows measured in different or unrecorded environments (forgetless.environment): " + "; ".join(differences) + "."
            if differences else "")
