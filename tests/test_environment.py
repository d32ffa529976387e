"""forgetless.environment: what differs between recorded environments, by hand."""

from __future__ import annotations

import platform
import shutil
import subprocess

import pytest
import torch

from forgetless.environment import RESUME_IGNORED, environment_changes, environment_differences, run_environment


def _env(**changes):
    env = {"python": "3.12.3", "platform": "Linux-6.1-x86_64", "device": "cpu", "torch_threads": 2,
           "packages": {"torch": "2.13.0", "transformers": "5.25.0", "trl": None}}
    packages = {k: changes.pop(k) for k in list(changes) if k in env["packages"]}
    return {**env, **changes, "packages": {**env["packages"], **packages}}


def test_this_process_is_recorded(monkeypatch):
    env = run_environment()
    assert env["packages"]["torch"] == torch.__version__ and env["torch_threads"] == torch.get_num_threads()
    assert env["python"] == platform.python_version() and env["processes"] == 1
    monkeypatch.setenv("WORLD_SIZE", "2")  # what accelerate sets in each of two processes
    assert run_environment()["processes"] == 2


def test_changes_between_two_records():
    assert environment_changes(_env(), _env(platform="Linux-6.2-x86_64")) == []  # a kernel update alone
    assert environment_changes(_env(), _env(transformers="5.24.0", trl="1.16.0", device="NVIDIA H200")) == [
        "device cpu -> NVIDIA H200", "transformers 5.25.0 -> 5.24.0", "trl None -> 1.16.0"]  # None: not installed
    # A record from before a key was kept does not claim it changed; a resume compares forgetless's commit too.
    older = _env()
    del older["device"], older["packages"]["trl"]
    assert environment_changes(older, _env(trl="1.16.0", device="NVIDIA H200", cpu="AMD EPYC")) == []
    moved = (_env(forgetless_commit="abc"), _env(forgetless_commit="def"))
    assert environment_changes(*moved) == [] and environment_changes(*moved, ignored=RESUME_IGNORED) == [
        "forgetless_commit abc -> def"]


def test_differences_name_each_value_with_its_measurements():
    environments = {"a": _env(), "b": _env(transformers="5.24.0"), "c": _env(), "d": {}}
    assert environment_differences(environments) == [
        "transformers 5.25.0 (a, c), 5.24.0 (b)", "no record (d: measured before forgetless recorded it)"]
    assert environment_differences({"a": _env(), "c": _env(platform="other", forgetless_commit="abc")}) == []
    assert environment_differences({"d": {}, "e": None}) == []  # nothing recorded: nothing to compare
    older = _env()
    del older["device"]  # kept since: compared among the records that have it
    assert environment_differences({"a": older, "b": _env(), "c": _env(device="mps")}) == ["device cpu (b), mps (c)"]


def _module_at(path):
    """forgetless/environment.py loaded from a copy at `path`: its _source_commit looks where the copy is."""
    import importlib.util

    import forgetless.environment

    path.parent.mkdir(parents=True)
    shutil.copy(forgetless.environment.__file__, path)
    spec = importlib.util.spec_from_file_location(f"copy_{abs(hash(str(path)))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_the_commit_is_forgetless_own_checkouts_only(tmp_path):
    def git(repo, *args):
        return subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args],
                              capture_output=True, text=True, check=True).stdout.strip()

    for repo in (tmp_path / "checkout", tmp_path / "project"):
        repo.mkdir()
        git(repo, "init", "-q")
    checkout = _module_at(tmp_path / "checkout" / "src" / "forgetless" / "environment.py")
    installed = _module_at(tmp_path / "project" / "venv" / "site-packages" / "forgetless" / "environment.py")
    for repo in (tmp_path / "checkout", tmp_path / "project"):
        git(repo, "add", "-A")
        git(repo, "commit", "-q", "-m", "x")
    assert checkout._source_commit() == git(tmp_path / "checkout", "rev-parse", "HEAD")
    (tmp_path / "checkout" / "src" / "forgetless" / "new.py").write_text("")
    checkout._source_commit.cache_clear()  # once per process otherwise
    assert checkout._source_commit() == git(tmp_path / "checkout", "rev-parse", "HEAD") + "+changes"
    assert installed._source_commit() is None  # a wheel inside a user's repository is not that repository's commit


def test_no_git_or_a_hung_git_records_no_commit(tmp_path, monkeypatch):
    module = _module_at(tmp_path / "checkout" / "src" / "forgetless" / "environment.py")
    for failure in (FileNotFoundError("git"), subprocess.TimeoutExpired("git", 10)):
        def failing(*args, failure=failure, **kwargs):
            raise failure

        monkeypatch.setattr(module.subprocess, "run", failing)
        module._source_commit.cache_clear()
        assert module._source_commit() is None
