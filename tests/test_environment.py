"""forgetless.environment: what differs between recorded environments, by hand."""

from __future__ import annotations

import platform

import torch

from forgetless.environment import environment_changes, environment_differences, run_environment


def _env(**changes):
    env = {"python": "3.12.3", "platform": "Linux-6.1-x86_64", "device": "cpu", "torch_threads": 2,
           "packages": {"torch": "2.13.0", "transformers": "5.25.0", "trl": None}}
    packages = {k: changes.pop(k) for k in list(changes) if k in env["packages"]}
    return {**env, **changes, "packages": {**env["packages"], **packages}}


def test_this_process_is_recorded():
    env = run_environment()
    assert env["packages"]["torch"] == torch.__version__ and env["torch_threads"] == torch.get_num_threads()
    assert env["python"] == platform.python_version() and env["device"] == "cpu"  # CI has no GPU


def test_changes_between_two_records():
    assert environment_changes(_env(), _env(platform="Linux-6.2-x86_64")) == []  # a kernel update alone
    assert environment_changes(_env(), _env(transformers="5.24.0", trl="1.16.0", device="NVIDIA H200")) == [
        "device cpu -> NVIDIA H200", "transformers 5.25.0 -> 5.24.0", "trl None -> 1.16.0"]


def test_differences_name_each_value_with_its_measurements():
    environments = {"a": _env(), "b": _env(transformers="5.24.0"), "c": _env(), "d": {}}
    assert environment_differences(environments) == [
        "transformers 5.25.0 (a, c), 5.24.0 (b)", "no record (d: measured before forgetless recorded it)"]
    assert environment_differences({"a": _env(), "c": _env(platform="other")}) == []
    assert environment_differences({"d": {}, "e": None}) == []  # nothing recorded: nothing to compare
