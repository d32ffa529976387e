"""Every shipped config parses, names only existing files, and says in its header how to run it."""

from pathlib import Path

import pytest

from forgetless.config import load_config
from forgetless.data.tasks import BUILTIN_TASKS
from forgetless.strategies import build_strategies

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_config_is_valid_and_runnable_as_documented(path):
    assert "forgetless run configs/" + path.name in path.read_text().split("\n\n")[0]
    config = load_config(path)
    build_strategies(config.strategies, config)
    for task in config.tasks:
        assert task.builtin in BUILTIN_TASKS if task.builtin else Path(task.file).is_file()
    for task in config.eval.tasks:
        assert Path(task.file).is_file()
