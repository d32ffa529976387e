"""The trust region of ewc and layerwise: the projection against its optimality conditions, and in runs (full, LoRA)."""

from __future__ import annotations

import pytest
import torch

from forgetless.config import parse_config
from forgetless.errors import ForgetlessError
from forgetless.strategies import StrategyStack, build_strategy
from forgetless.strategies._trust_region import RELATIVE_TOLERANCE, project
from forgetless.strategies.ewc import DEFAULT_TARGET
from forgetless.training import run_continual

from .conftest import make_tiny_lm
from .test_strategy_ewc import _write_jsonl


def _problem(seed: int = 0, spread: float = 4.0):
    """Two tensors, a Fisher spanning `spread` decades (zeros included) and a displacement from the anchor."""
    generator = torch.Generator().manual_seed(seed)
    anchor = {"a": torch.randn(40, 30, generator=generator), "b": torch.randn(500, generator=generator)}
    fisher = {n: 10 ** (spread * (torch.rand(v.shape, generator=generator) - 0.5)) for n, v in anchor.items()}
    fisher["b"][:50] = 0.0  # directions the protected data does not care about
    theta = {n: v + 0.3 * torch.randn(v.shape, generator=generator) for n, v in anchor.items()}
    return theta, anchor, fisher


def _rise(theta, anchor, fisher) -> float:
    return 0.5 * sum(float((fisher[n].double() * (theta[n].double() - anchor[n].double()).square()).sum()) for n in theta)


@pytest.mark.parametrize("spread", [0.0, 4.0, 12.0])
def test_the_projection_lands_on_the_boundary_and_is_the_euclidean_projection(spread):
    theta, anchor, fisher = _problem(spread=spread)
    outside = _rise(theta, anchor, fisher)
    target = outside / 20
    moved = {n: v.clone() for n, v in theta.items()}
    before, mu = project(moved, anchor, fisher, target)
    assert before == pytest.approx(outside, rel=1e-6)  # fp32 terms, float64 sums
    assert _rise(moved, anchor, fisher) == pytest.approx(target, rel=RELATIVE_TOLERANCE)
    # Optimality (KKT) of min |x - theta|^2 s.t. (1/2) sum F (x - a)^2 <= target: theta - x = mu F (x - a), mu > 0.
    assert mu > 0
    for n in theta:
        assert torch.allclose(theta[n] - moved[n], mu * fisher[n] * (moved[n] - anchor[n]), rtol=1e-4, atol=1e-5)
    assert torch.equal(moved["b"][:50], theta["b"][:50])  # F = 0: left alone
    # Any other point of the boundary is farther from theta (sampled: the anchor plus rescaled random directions).
    distance = sum(float((moved[n] - theta[n]).square().sum()) for n in theta)
    for seed in range(20):
        generator = torch.Generator().manual_seed(seed)
        direction = {n: torch.randn(v.shape, generator=generator) for n, v in theta.items()}
        scale = (target / _rise({n: anchor[n] + direction[n] for n in theta}, anchor, fisher)) ** 0.5
        other = {n: anchor[n] + scale * direction[n] for n in theta}
        assert sum(float((other[n] - theta[n]).square().sum()) for n in theta) > distance


def test_a_point_inside_the_region_is_not_touched():
    theta, anchor, fisher = _problem()
    moved = {n: v.clone() for n, v in theta.items()}
    before, mu = project(moved, anchor, fisher, target=2 * _rise(theta, anchor, fisher))
    assert mu == 0.0 and before == pytest.approx(_rise(theta, anchor, fisher))
    assert all(torch.equal(moved[n], theta[n]) for n in theta)


@pytest.mark.parametrize("drift", [1e-1, 1e-2, 1e-3])
def test_a_bf16_weight_never_rounds_back_out_of_the_region(drift):
    # Fine-tuning drifts are small next to the weights: rounding to bf16 can undo most of a projection's move.
    theta, anchor, fisher = _problem()
    anchor = {n: (10 * v).bfloat16().float() for n, v in anchor.items()}  # a bf16 model's start: representable
    half = {n: (a + drift * 10 * (theta[n] - a).sign()).bfloat16() for n, a in anchor.items()}
    target = _rise(half, anchor, fisher) / 4
    project(half, anchor, fisher, target)
    assert all(v.dtype == torch.bfloat16 for v in half.values())
    assert 0 < _rise(half, anchor, fisher) <= target * (1 + RELATIVE_TOLERANCE)


def _files(tmp_path):
    return {
        "law": _write_jsonl(tmp_path / "law.jsonl", [{"text": f"We the people number {i} ordain this."} for i in range(16)]),
        "pets": _write_jsonl(tmp_path / "pets.jsonl", [{"text": f"My dog number {i} runs in the park."} for i in range(16)]),
    }


def _run(tmp_path, tokenizer, spec, label, adapter="full"):
    files = _files(tmp_path)
    config = parse_config({
        "model": "tiny",
        "adapter": adapter,
        "lora": {"r": 4, "target_modules": ["q_proj", "v_proj"]},
        "tasks": [{"name": "law", "file": files["law"]}, {"name": "pets", "file": files["pets"]}],
        "strategies": [spec],
        "eval": {"suites": []},
        "train": {"steps": 4, "batch_size": 2, "lr": 1e-2, "max_length": 32, "seed": 0},
        "checkpoints": "none",
    })
    model = make_tiny_lm(len(tokenizer), hidden_size=16)
    results = run_continual(config, tmp_path / label, model=model, tokenizer=tokenizer, progress=False)
    return model, results


def _ewc_rise(strategy) -> float:
    return 0.5 * float(strategy.weighted_distance() - strategy.offset)


def _layerwise_rise(strategy) -> float:
    return 0.5 * float(sum((strategy._omega[n] * drift().square()).sum() for n, drift in strategy._drift.items()))


STRATEGIES = {
    "ewc": ({"name": "ewc", "lam": 0.0, "samples": 4}, _ewc_rise),
    "layerwise": ({"name": "layerwise", "lam": 0.0, "steps": 2}, _layerwise_rise),
}


@pytest.mark.parametrize("adapter", ["full", "lora"])
@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_in_a_run_every_step_ends_within_the_target_and_the_log_says_how_often_it_acted(
    tmp_path, tokenizer, adapter, name, monkeypatch
):
    from forgetless.strategies import _REGISTRY

    spec, rise_of = STRATEGIES[name]
    _, free = _run(tmp_path, tokenizer, {**spec, "target": 1e9}, "free", adapter)  # never binds: logs the rise only
    free_rise = free.training[0][f"{name}_largest_predicted_rise"]
    assert free.training[0][f"{name}_projected_steps"] == 0 and free_rise > 0
    target = free_rise / 10
    seen, ends = [], []
    cls = _REGISTRY[name]
    original_step, original_consolidate = cls.after_optimizer_step, cls.consolidate

    def watched(self, ctx, model):  # the predicted rise each step leaves behind
        original_step(self, ctx, model)
        with torch.no_grad():
            seen.append((ctx.task_index, rise_of(self)))

    def at_the_end(self, ctx):  # after the task's last optimizer step (a hook run before the step would fail here)
        with torch.no_grad():
            ends.append(rise_of(self))
        original_consolidate(self, ctx)

    monkeypatch.setattr(cls, "after_optimizer_step", watched)
    monkeypatch.setattr(cls, "consolidate", at_the_end)
    _, bound = _run(tmp_path, tokenizer, {**spec, "target": target}, "bound", adapter)
    first_task = [rise for task, rise in seen if task == 0]
    assert len(first_task) == 4 and len(seen) == 8
    assert max(first_task) == pytest.approx(target, rel=2 * RELATIVE_TOLERANCE)  # it bound, and never beyond
    # Both tasks end within the target: the second around ewc's folded anchor of both tasks (full fine-tuning).
    assert len(ends) == 2 and max(ends) <= target * (1 + 2 * RELATIVE_TOLERANCE)
    assert 1 <= bound.training[0][f"{name}_projected_steps"] <= 4
    assert bound.strategy_params[name]["target"] == target  # results.json records the knobs as resolved


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_a_budget_strengthens_the_target_by_lowering_it(name):
    strategy = build_strategy({"name": name, "target": 0.04})
    assert strategy.strength_in_use.knob == "target"
    assert strategy.strengthen(2.0) == (0.04, 0.02) and strategy.target == 0.02
    stack = StrategyStack.from_specs([{"name": name, "target": 0.04}])
    stack.strategies[0].strengthen(4.0)
    assert stack.strengths() == {name: {"target": 0.01}}  # what a resumed run restores: the moved target, not lam
    resumed = StrategyStack.from_specs([{"name": name, "target": 0.04}])
    resumed.load_strengths(stack.strengths())
    assert resumed.strategies[0].target == 0.01 and resumed.strategies[0].params.target == 0.01
    assert build_strategy({"name": name, "lam": 3.0}).strengthen(2.0) == (3.0, 6.0)  # without a target: lam, as before


def test_a_bare_ewc_is_the_cap_and_naming_lam_is_the_penalty_alone():
    bare = build_strategy("ewc")
    assert (bare.lam, bare.target) == (0.0, DEFAULT_TARGET)
    assert bare.strengthen(2.0) == (DEFAULT_TARGET, DEFAULT_TARGET / 2)  # a budget tightens the default cap
    priced = build_strategy({"name": "ewc", "lam": 100.0})
    assert (priced.lam, priced.target) == (100.0, None)  # ewc as it was before the cap became the default
    both = build_strategy({"name": "ewc", "lam": 5.0, "target": 0.01})
    assert (both.lam, both.target) == (5.0, 0.01)
    # The saved parameters rebuild the same strategy (resume, stack state): the default is not applied twice.
    assert build_strategy({"name": "ewc", **priced.params.model_dump()}).target is None
    # layerwise keeps its penalty default: a bare one has no cap.
    assert build_strategy("layerwise").target is None
    # Neither a price nor a cap: refused, not a run that estimates a Fisher and protects nothing.
    for spec in ({"name": "ewc", "target": None}, {"name": "ewc", "lam": 0.0}, {"name": "layerwise", "lam": 0.0}):
        with pytest.raises(ForgetlessError, match="protects nothing"):
            build_strategy(spec)


def test_a_saved_strength_names_its_knob_and_an_old_bare_number_is_refused_where_it_is_ambiguous():
    stack = StrategyStack.from_specs(["ewc", "wise"])
    # A state written before 2026-12-02 gave a bare number: for a bare ewc that was lam 100, which today's bare
    # ewc would have read as a target of 100 (no protection at all).
    with pytest.raises(ForgetlessError, match="bare number"):
        stack.load_strengths({"ewc": 100.0})
    stack.load_strengths({"wise": 0.25})  # one strength knob only: unambiguous
    assert stack.strategies[1].alpha == 0.25
    stack.load_strengths({"ewc": {"target": 0.002}})
    assert (stack.strategies[0].lam, stack.strategies[0].target) == (0.0, 0.002)
    # A saved price read into today's bare ewc or l2sp (caps) would add a penalty the run never had: refused.
    for name, saved in (("ewc", {"lam": 3.0}), ("l2sp", {"lam": 0.01})):
        with pytest.raises(ForgetlessError, match=f"this run's {name} is set by target"):
            StrategyStack.from_specs([name]).load_strengths({name: saved})
    with pytest.raises(ForgetlessError, match="no strength knob"):
        stack.load_strengths({"ewc": {"samples": 8}})
