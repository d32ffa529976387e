"""The run configs under benchmarks/configs are benchmarks/quality.py's set-up (the bundled benchmark, or its
`--tasks jargon` or `--tasks legal`), so that a result read from one (a `compare --seeds` run, a budget run) can be set beside the
quality table's rows."""

import importlib.util
from pathlib import Path

import pytest

from forgetless.compare import table_setting
from forgetless.config import load_config

ROOT = Path(__file__).parent.parent
SEEDS = {"support_only.yaml": 0, "support_only_seed1.yaml": 1, "support_only_seed2.yaml": 2, "bundled.yaml": 0,
         "jargon.yaml": 0, "legal.yaml": 0}
# quality.py --tasks for each (jargon.yaml and legal.yaml are quality-jargon.md's and quality-legal.md's set-ups)
TASKS = {"bundled.yaml": ["support", "pydoc"], "jargon.yaml": ["jargon"], "legal.yaml": ["legal"]}


def quality_setting(tasks: list[str], seed: int) -> dict:
    spec = importlib.util.spec_from_file_location("quality", ROOT / "benchmarks" / "quality.py")
    quality = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(quality)
    setting = table_setting(quality.base_config("full", False, tasks))
    setting["train"]["seed"] = seed
    return setting


def test_every_benchmark_config_is_listed_here():
    assert sorted(p.name for p in (ROOT / "benchmarks" / "configs").glob("*.yaml")) == sorted(SEEDS)


@pytest.mark.parametrize("name", sorted(SEEDS))
def test_benchmark_config_is_quality_py_setup_at_its_seed(name):
    config = load_config(ROOT / "benchmarks" / "configs" / name)
    tasks = [task.builtin for task in config.tasks]
    assert tasks == TASKS.get(name, ["support"])
    assert table_setting(config) == quality_setting(tasks, SEEDS[name])
