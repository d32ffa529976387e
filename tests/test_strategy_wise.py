"""`wise`: WiSE-FT interpolation with a fixed alpha or one chosen on held-out general text."""

import math

import pytest
import torch

from forgetless.adapters import prepare_for_task
from forgetless.data.tasks import load_task
from forgetless.errors import ForgetlessError
from forgetless.strategies import build_strategy
from forgetless.strategies.wise import validation_score
from forgetless.task_weights import trained_parameters
from forgetless.training import context_for, run_continual

from .conftest import make_tiny_lm, tiny_config


def make_context(config, model, tokenizer):
    tasks = [load_task(t, seed=0) for t in config.tasks]
    return context_for(config, model, tokenizer, tasks, 0)


def finetune(model, seed=0):
    """Stand-in for training: a fixed random step on every trained weight; returns (theta_0, theta_ft)."""
    start = {n: p.detach().clone() for n, p in trained_parameters(model).items()}
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in trained_parameters(model).values():
            p.add_(0.05 * torch.randn(p.shape, generator=generator))
    return start, {n: p.detach().clone() for n, p in trained_parameters(model).items()}


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_fixed_alpha_interpolates_between_start_and_finetuned(tiny_lm, tokenizer, task_files, alpha):
    for p in tiny_lm.parameters():
        p.requires_grad_(True)
    ctx = make_context(tiny_config(task_files), tiny_lm, tokenizer)
    strategy = build_strategy({"name": "wise", "alpha": alpha})
    strategy.on_task_start(ctx)
    start, finetuned = finetune(tiny_lm)
    strategy.transform_weights(ctx)
    for name, p in trained_parameters(tiny_lm).items():
        assert torch.allclose(p, (1 - alpha) * start[name] + alpha * finetuned[name], atol=1e-6)
    assert ctx.log["wise_alpha"] == alpha


def test_lora_alpha_scales_the_adapter_update(tokenizer, task_files):
    config = tiny_config(task_files, adapter="lora", lora={"r": 2, "alpha": 4, "target_modules": ["q_proj"]})
    model = prepare_for_task(make_tiny_lm(len(tokenizer)), config, 0)
    ctx = make_context(config, model, tokenizer)
    strategy = build_strategy({"name": "wise", "alpha": 0.5})
    strategy.on_task_start(ctx)
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    with torch.no_grad():
        layer.lora_B["task0"].weight.normal_(0, 0.1)
    finetuned_delta = layer.get_delta_weight("task0").detach().clone()
    strategy.transform_weights(ctx)
    assert torch.allclose(layer.get_delta_weight("task0"), 0.5 * finetuned_delta, atol=1e-7)


def test_lora_refuses_an_adapter_that_does_not_start_at_zero(tokenizer, task_files):
    config = tiny_config(task_files, adapter="lora", lora={"r": 2, "target_modules": ["q_proj"]})
    model = prepare_for_task(make_tiny_lm(len(tokenizer)), config, 0)
    with torch.no_grad():
        model.base_model.model.model.layers[0].self_attn.q_proj.lora_B["task0"].weight.fill_(1.0)
    with pytest.raises(ForgetlessError, match="not zero"):
        build_strategy({"name": "wise"}).on_task_start(make_context(config, model, tokenizer))


def _fake_score(monkeypatch, drop_at, marker_name):
    """Scores that fall by drop_at(alpha), alpha read off one weight's position between theta_0 and theta_ft."""
    seen_texts = []

    def fake(model, tokenizer, rows):
        seen_texts.append(tuple(row["text"] for row in rows))
        p = dict(model.named_parameters())[marker_name].reshape(-1)[0].item()
        alpha = round((p - fake.start) / (fake.finetuned - fake.start), 3)
        return 0.7 - drop_at(alpha)

    monkeypatch.setattr("forgetless.strategies.wise.validation_score", fake)
    return fake, seen_texts


@pytest.mark.parametrize(("budget", "expected"), [(0.01, 0.8), (0.03, 0.9), (0.1, 1.0), (0.0, 0.0)])
def test_auto_picks_the_largest_alpha_within_the_budget(tiny_lm, tokenizer, task_files, monkeypatch, budget, expected):
    for p in tiny_lm.parameters():
        p.requires_grad_(True)
    marker = "model.norm.weight"
    fake, seen_texts = _fake_score(monkeypatch, lambda a: 0.05 * a**8, marker)  # drops: 1.0 .05, 0.9 .0215, 0.8 .0084
    ctx = make_context(tiny_config(task_files), tiny_lm, tokenizer)
    strategy = build_strategy({"name": "wise", "alpha": "auto", "budget": budget, "validation_texts": 5})
    strategy.on_task_start(ctx)
    start, finetuned = finetune(tiny_lm)
    fake.start, fake.finetuned = start[marker][0].item(), finetuned[marker][0].item()
    strategy.transform_weights(ctx)
    assert ctx.log["wise_alpha"] == expected
    assert ctx.log["wise_validation_drop"] == pytest.approx(0.05 * expected**8, abs=1e-3)
    for name, p in trained_parameters(tiny_lm).items():
        assert torch.allclose(p, (1 - expected) * start[name] + expected * finetuned[name], atol=1e-6)
    assert set(seen_texts) == {tuple(ctx.general_texts[-5:])}  # held-out general text, never the eval suite


def test_validation_score_is_one_minus_log_v_perplexity(tiny_lm, tokenizer):
    from forgetless.evaluation.perplexity import score_text_perplexity

    texts = ["The quick brown fox jumps over the lazy dog.", "A second, shorter text."]
    ppl = score_text_perplexity(tiny_lm, tokenizer, texts, max_length=512).perplexity
    expected = 1 - math.log(ppl) / math.log(len(tokenizer))
    assert validation_score(tiny_lm, tokenizer, [{"text": t} for t in texts]) == pytest.approx(expected)


def test_bad_knobs_are_refused():
    for bad in ({"alpha": 1.5}, {"alpha": "best"}, {"budget": -0.1}, {"validation_texts": 0}):
        with pytest.raises(ForgetlessError):
            build_strategy({"name": "wise", **bad})


def test_end_to_end_stays_closer_to_the_start_than_naive(tmp_path, tokenizer, task_files):
    initial = {n: p.detach().clone() for n, p in make_tiny_lm(len(tokenizer)).named_parameters()}

    def distance(model):
        return sum(float((p - initial[n]).square().sum()) for n, p in model.named_parameters()) ** 0.5

    interpolated = make_tiny_lm(len(tokenizer))
    results = run_continual(tiny_config(task_files, strategies=["wise"]), tmp_path / "wise", model=interpolated,
                            tokenizer=tokenizer, progress=False)
    naive = make_tiny_lm(len(tokenizer))
    run_continual(tiny_config(task_files), tmp_path / "naive", model=naive, tokenizer=tokenizer, progress=False)
    assert distance(interpolated) < 0.8 * distance(naive)
    assert [log["wise_alpha"] for log in results.training] == [0.5, 0.5]
