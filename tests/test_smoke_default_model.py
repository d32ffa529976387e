"""Smoke test on the real bundled model (SmolLM2-135M-Instruct): loads, scores above chance, trains."""

import pytest

from forgetless.config import parse_config
from forgetless.evaluation.suites import load_suite
from forgetless.models import load_model_and_tokenizer
from forgetless.training import run_continual


@pytest.mark.smoke
def test_default_model_scores_above_chance_and_a_short_run_completes(tmp_path):
    model, tokenizer = load_model_and_tokenizer("default")
    assert sum(p.numel() for p in model.parameters()) > 100_000_000
    capitals = next(task for task in load_suite("general") if task.name == "capitals")
    score = capitals.evaluate(model, tokenizer, limit=60).summary
    assert score["acc"] > 0.45, score  # chance is 0.25

    config = parse_config(
        {
            "tasks": [{"name": "support", "builtin": "support"}],
            "eval": {"suites": ["general"], "limit": 10},
            "train": {"steps": 2, "batch_size": 2, "lr": 1e-4, "max_length": 64},
            "checkpoints": "none",
        }
    )
    results = run_continual(config, tmp_path / "run", model=model, tokenizer=tokenizer, progress=False)
    assert len(results.matrix) == 2
    assert results.metrics.general_delta_se > 0  # two real steps move the paired scores
    first, last = results.general[0], results.general[-1]
    assert results.metrics.general_delta_abs == pytest.approx(last.mean - first.mean)
    per_task = [last.scores[t]["score"] - first.scores[t]["score"] for t in first.scores]
    assert results.metrics.general_delta_abs == pytest.approx(sum(per_task) / len(per_task))
    assert (tmp_path / "run" / "report.md").is_file()
