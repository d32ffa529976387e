"""What a run was measured with: Python, the packages that compute its numbers, the device and the CPU threads.

Kept in results.json and in a resumable state, so that two measurements that should agree and do not can be traced
to a change of environment, or ruled out. Naive on the bundled benchmark at seed 3, run again on 2026-12-06 in a
virtual environment rebuilt from the unpinned requirements since its first run on 2026-12-05, ended at a general
change of -0.0500 instead of -0.0516 with the same config and code path; no file said what the first run had
installed (docs/results/quality.md, "Seed 3 again").
"""

from __future__ import annotations

import platform
from importlib import metadata
from typing import Any

# The libraries whose versions can move a number: the model's arithmetic (torch, numpy), its loading and training
# (transformers, peft, accelerate, trl), the data and its tokenisation, and forgetless itself.
PACKAGES = ("forgetless", "torch", "transformers", "peft", "accelerate", "trl", "datasets", "tokenizers", "safetensors",
            "numpy")


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def run_environment() -> dict[str, Any]:
    """This process's environment: {"python", "platform", "packages": {name: version or None}, "device", "torch_threads"}."""
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    return {"python": platform.python_version(), "platform": platform.platform(),
            "packages": {name: _version(name) for name in PACKAGES}, "device": device,
            "torch_threads": torch.get_num_threads()}


def _flat(environment: dict[str, Any]) -> dict[str, Any]:
    """{"python": ..., "transformers": ..., "device": ...}: packages by their own name."""
    flat = {key: value for key, value in environment.items() if key != "packages"}
    return {**flat, **environment.get("packages", {})}


def environment_changes(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """What differs between two recorded environments, as "transformers 5.24.0 -> 5.25.0" (platform strings left out:
    a kernel update alone changes them)."""
    one, other = _flat(before), _flat(after)
    keys = [k for k in dict.fromkeys([*one, *other]) if k != "platform" and one.get(k) != other.get(k)]
    return [f"{key} {one.get(key)} -> {other.get(key)}" for key in keys]


def environment_differences(environments: dict[str, dict[str, Any] | None]) -> list[str]:
    """Where labelled measurements (a comparison's rows) were taken under different environments: one line per
    differing key, each value with the labels measured under it ("transformers 5.24.0 (naive), 5.25.0 (ewc)"), and one
    naming the measurements with no record. Empty when every recorded one agrees (platform strings left out)."""
    recorded = {label: _flat(env) for label, env in environments.items() if env}
    lines = []
    keys = dict.fromkeys(key for env in recorded.values() for key in env if key != "platform")
    for key in keys:
        by_value: dict[str, list[str]] = {}
        for label, env in recorded.items():
            by_value.setdefault(str(env.get(key)), []).append(label)
        if len(by_value) > 1:
            lines.append(f"{key} " + ", ".join(f"{value} ({', '.join(labels)})" for value, labels in by_value.items()))
    missing = [label for label, env in environments.items() if not env]
    if missing and recorded:
        lines.append(f"no record ({', '.join(missing)}: measured before forgetless recorded it)")
    return lines
