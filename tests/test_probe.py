"""The per-step probe of the general change: its estimate and s.e. by hand, its window, and the runner wiring."""

from __future__ import annotations

import math

import pytest

from forgetless.evaluation.probe import GeneralProbe
from forgetless.metrics import ScoreSamples
from forgetless.training import run_continual

from .conftest import make_tiny_lm, tiny_config


class _Scripted:
    """A task whose items score `now[i]` (and `tokens[i]` for perplexity) whatever the model."""

    def __init__(self, name, now, kind="mean", tokens=None, vocab=100):
        self.name, self.now, self.kind, self.tokens, self.vocab = name, now, kind, tokens, vocab

    def __len__(self):
        return len(self.now)

    def subset(self, indices):
        from types import SimpleNamespace

        def evaluate(model, tokenizer):
            tokens = None if self.tokens is None else [self.tokens[i] for i in indices]
            return SimpleNamespace(samples=ScoreSamples(self.kind, [self.now[i] for i in indices], tokens,
                                                        self.vocab if self.tokens else None))

        return SimpleNamespace(evaluate=evaluate)


def test_estimate_and_se_by_hand():
    # Multiple choice, 8 items, all right before; 2 of the 4 probed are wrong now.
    mc = _Scripted("mc", [0.0, 1.0, 0.0, 1.0, 1, 1, 1, 1])
    before = {"mc": ScoreSamples("mean", [1.0] * 8)}
    probe = GeneralProbe([mc], before, items_per_step=4, window=5, seed=0)
    probe._order = {"mc": list(range(8))}  # a known order
    point = probe.step(None, None, step=1)
    # d = [-1, 0, -1, 0]: mean -0.5, sample variance 1/3, se = sqrt(1/3 / 4 * (1 - 4/8)).
    assert point.delta == pytest.approx(-0.5) and point.se == pytest.approx(math.sqrt(1 / 3 / 4 * 0.5))
    assert point.items == 4 and point.tasks == 1 and point.beyond_noise  # 0.5 > 1.96 * 0.204

    # Perplexity: 3 of 4 documents probed; NLL before [10, 20, 30], now [12, 20, 36] over [10, 10, 20] tokens, V = 100.
    ppl = _Scripted("ppl", [12.0, 20.0, 36.0, 1.0], "perplexity", [10, 10, 20, 5])
    before = {"ppl": ScoreSamples("perplexity", [10.0, 20.0, 30.0, 40.0], [10, 10, 20, 5], 100)}
    probe = GeneralProbe([ppl], before, items_per_step=3, window=5)
    probe._order = {"ppl": list(range(4))}
    point = probe.step(None, None, step=1)
    delta = (60 - 68) / 40 / math.log(100)
    residuals = [(b - a) / math.log(100) - delta * n for b, a, n in zip([10, 20, 30], [12, 20, 36], [10, 10, 20])]
    mean = sum(residuals) / 3
    variance = sum((r - mean) ** 2 for r in residuals) / 2
    se = math.sqrt(variance / 3) / (40 / 3) * math.sqrt(1 - 3 / 4)
    assert point.delta == pytest.approx(delta) and point.se == pytest.approx(se)


def test_items_leave_the_estimate_after_the_window_and_rotation_covers_every_item():
    mc = _Scripted("mc", [0.0] * 4 + [1.0] * 4)
    probe = GeneralProbe([mc], {"mc": ScoreSamples("mean", [1.0] * 8)}, items_per_step=2, window=2)
    probe._order = {"mc": list(range(8))}
    deltas = [probe.step(None, None, step).delta for step in range(1, 5)]
    # Steps 1-2 see items 0-3 (all wrong now), steps 3-4 items 4-7 (all right): the window of 2 steps forgets.
    assert deltas == [-1.0, -1.0, -0.5, 0.0]
    assert sorted(index for _, index in probe._scored) == list(range(8))


def test_a_restore_forgets_the_scores_taken_on_the_discarded_weights():
    mc = _Scripted("mc", [1.0] * 8)
    probe = GeneralProbe([mc], {"mc": ScoreSamples("mean", [1.0] * 8)}, items_per_step=2, window=10)
    probe._order = {"mc": list(range(8))}
    probe.step(None, None, 1)  # items 0-1 right
    mc.now = [0.0] * 8  # the weights overshoot: items 2-5 come out wrong at steps 2-3
    probe.step(None, None, 2)
    assert probe.step(None, None, 3).delta == pytest.approx(-4 / 6)
    probe.forget_after(1)  # the budget went back to step 1's weights
    mc.now = [1.0] * 8
    # Step 4 sees items 6-7 (right) beside steps 1's 0-1: steps 2-3 no longer weigh on the estimate.
    assert probe.step(None, None, 4).delta == 0.0
    assert sorted(index for _, index in probe._scored) == [0, 1, 6, 7]


def test_tasks_take_turns_and_the_estimate_waits_for_every_task():
    # Two tasks, 2 items a step: one from each. 'a' fell by 1 on every item, 'b' did not move.
    a, b = _Scripted("a", [0.0] * 6), _Scripted("b", [1.0] * 6)
    before = {"a": ScoreSamples("mean", [1.0] * 6), "b": ScoreSamples("mean", [1.0] * 6)}
    probe = GeneralProbe([a, b], before, items_per_step=2, window=10)
    first = probe.step(None, None, 1)
    assert (first.delta, first.tasks, first.items) == (None, 0, 2)  # one item per task: no task has two yet
    second = probe.step(None, None, 2)
    # Both tasks covered with 2 items: the suite's mean over tasks, (-1 + 0) / 2, not the item mean.
    assert (second.delta, second.tasks, second.items) == (-0.5, 2, 4)
    assert sorted(i for name, i in probe._scored if name == "a") == sorted(probe._order["a"][:2])
    # An uneven split (3 items a step) alternates which task gets the extra one.
    probe = GeneralProbe([a, b], before, items_per_step=3, window=10)
    probe.step(None, None, 1)
    probe.step(None, None, 2)
    assert sum(name == "a" for name, _ in probe._scored) == 3 and sum(name == "b" for name, _ in probe._scored) == 3


def test_the_probe_over_every_item_equals_the_full_suite(tmp_path, task_files, tokenizer):
    config = tiny_config(
        task_files, tasks=[{"name": "chat", "file": task_files["chat"]}],
        eval={"suites": [], "tasks": [{"name": "mc", "file": task_files["mc"]}, {"name": "text", "file": task_files["text"]}],
              "every_steps": 2, "probe": {"items_per_step": 6 + 24, "window": 1}},
    )
    model = make_tiny_lm(len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id
    results = run_continual(config, tmp_path / "run", model=model, tokenizer=tokenizer, progress=False)
    probe = {p["step"]: p for p in results.probe}
    assert sorted(probe) == [1, 2, 3, 4]
    full = {p.step: p.delta for p in results.general_curve if p.stage == "step"}
    # Every item scored at step 2, paired with "before": the full suite's change exactly (no sampling error).
    assert probe[2]["delta"] == pytest.approx(full[2], abs=1e-9) and probe[2]["se"] == pytest.approx(0.0, abs=1e-12)
    assert results.probe_seconds > 0


def test_the_report_says_when_the_probe_left_the_noise_band(tmp_path, task_files, tokenizer):
    config = tiny_config(task_files, eval={"suites": [], "tasks": [{"name": "mc", "file": task_files["mc"]}],
                                           "probe": {"items_per_step": 3, "window": 4}})
    model = make_tiny_lm(len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id
    results = run_continual(config, tmp_path / "run", model=model, tokenizer=tokenizer, progress=False)
    first = next((p["step"] for p in results.probe if p["delta"] is not None and abs(p["delta"]) > 1.96 * p["se"]), None)
    assert results.probe_first_beyond_noise == first
    report = (tmp_path / "run" / "report.md").read_text()
    assert "## Per-step probe" in report and f"{len(results.probe)} probes" in report
    assert "![per-step probe](general_probe.png)" in report
    assert (tmp_path / "run" / "general_probe.png").read_bytes().startswith(b"\x89PNG")
    assert (f"first left the 95 % noise band at step {first}" if first else "never left") in report
