"""The run configs under benchmarks/configs are benchmarks/quality.py's set-up (the bundled benchmark, or its
`--tasks jargon` or `--tasks legal`), so that a result read from one (a `compare --seeds` run, a budget run) can be set beside the
quality table's rows."""

import importlib.util
from pathlib import Path

import pytest

from forgetless.compare import table_setting
from forgetless.config import load_config
from forgetless.resume import data_digests

ROOT = Path(__file__).parent.parent
SEEDS = {"support_only.yaml": 0, "support_only_seed1.yaml": 1, "support_only_seed2.yaml": 2, "bundled.yaml": 0,
         "jargon.yaml": 0, "legal.yaml": 0, "support_instructions.yaml": 0, "support_chat_general.yaml": 0,
         "support_format_general.yaml": 0, "support_short_general.yaml": 0,
         "legal_short_general.yaml": 0, "jargon_short_general.yaml": 0}
# quality.py --suites for each (default: general): docs/results/generation-checks.md's set-ups
SUITES = {"support_instructions.yaml": ["general", "instructions"], "support_chat_general.yaml": ["general", "instructions"],
          "support_format_general.yaml": ["general", "instructions"], "support_short_general.yaml": ["general", "instructions"],
          "legal_short_general.yaml": ["general", "instructions"], "jargon_short_general.yaml": ["general", "instructions"]}
# general_data for each (default: none), beside the configs
GENERAL_DATA = {"support_chat_general.yaml": ROOT / "benchmarks" / "data" / "chat_general.jsonl",
                "support_format_general.yaml": ROOT / "benchmarks" / "data" / "format_general.jsonl",
                "support_short_general.yaml": ROOT / "benchmarks" / "data" / "short_general.jsonl",
                "legal_short_general.yaml": ROOT / "benchmarks" / "data" / "short_general.jsonl",
                "jargon_short_general.yaml": ROOT / "benchmarks" / "data" / "short_general.jsonl"}
# quality.py --tasks for each (jargon.yaml and legal.yaml are quality-jargon.md's and quality-legal.md's set-ups;
# legal_short_general.yaml and jargon_short_general.yaml are theirs with the instructions suite and general_data)
TASKS = {"bundled.yaml": ["support", "pydoc"], "jargon.yaml": ["jargon"], "legal.yaml": ["legal"],
         "legal_short_general.yaml": ["legal"], "jargon_short_general.yaml": ["jargon"]}


def quality_setting(tasks: list[str], seed: int, suites: list[str] = ("general",)) -> dict:
    spec = importlib.util.spec_from_file_location("quality", ROOT / "benchmarks" / "quality.py")
    quality = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(quality)
    setting = table_setting(quality.base_config("full", False, tasks, suites=suites))
    setting["train"]["seed"] = seed
    return setting


def test_every_benchmark_config_is_listed_here():
    assert sorted(p.name for p in (ROOT / "benchmarks" / "configs").glob("*.yaml")) == sorted(SEEDS)


@pytest.mark.parametrize("name", sorted(SEEDS))
def test_benchmark_config_is_quality_py_setup_at_its_seed(name):
    config = load_config(ROOT / "benchmarks" / "configs" / name)
    tasks = [task.builtin for task in config.tasks]
    assert tasks == TASKS.get(name, ["support"])
    expected = quality_setting(tasks, SEEDS[name], SUITES.get(name, ["general"]))
    if name in GENERAL_DATA:
        path = GENERAL_DATA[name].resolve()
        assert Path(config.general_data).resolve() == path and path.is_file()
        expected |= {"general_data": config.general_data,
                     "data_digests": {"general_data": data_digests({"general_data": str(path)})["general_data"]}}
    assert table_setting(config) == expected
