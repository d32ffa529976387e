"""`fip`: the functional distance to a frozen reference on anchor inputs, against direct computations."""

import math

import pytest
import torch
import torch.nn.functional as F

from forgetless.adapters import prepare_for_task
from forgetless.config import parse_config
from forgetless.data.tasks import TrainingTask
from forgetless.errors import ForgetlessError
from forgetless.strategies import build_strategy
from forgetless.strategies.fip import functional_distance
from forgetless.training import context_for

from .conftest import make_tiny_lm, perturb, train_tiny_on_tickets

ROWS = [{"prompt": f"Ticket {i}: my printer jams", "response": f"Open tray {i} and remove the paper."} for i in range(4)]


def _config(**overrides):
    data = {"model": "tiny", "tasks": [{"name": "t", "file": "unused.jsonl"}], "train": {"max_length": 32, "batch_size": 8}}
    data.update(overrides)
    return parse_config(data)


def _context(config, model, tokenizer):
    task = TrainingTask("t", "chat", ROWS, ROWS)
    return context_for(config, model, tokenizer, [task], 0)


def _direct(student_logits, reference_logits, mask, kind):
    """Mean over masked positions, in float64 probabilities, one position at a time."""
    p_all = F.softmax(student_logits.double(), -1)
    q_all = F.softmax(reference_logits.double(), -1)
    eps = max(1e-10, 1e-3 * q_all[mask].min().item())  # the released code's eps, min over the batch
    values = []
    for b in range(mask.size(0)):
        for t in range(mask.size(1)):
            if not mask[b, t]:
                continue
            p, q = p_all[b, t], q_all[b, t]
            if kind == "exact":
                values.append(-torch.log(torch.sqrt(p * q).sum()))
            elif kind == "official":
                values.append(-torch.log(torch.sqrt(p * q + eps).sum()) + torch.log(torch.sqrt(q * q + eps).sum()))
            else:
                values.append((q * (q.log() - p.log())).sum())
    return torch.stack(values).mean()


@pytest.mark.parametrize("kind", ["exact", "official", "kl"])
def test_distance_and_gradient_match_the_direct_formula(kind):
    torch.manual_seed(0)
    student = torch.randn(2, 70, 13, requires_grad=True)  # 140 rows: more than one chunk of 64
    reference = torch.randn(2, 70, 13)
    mask = torch.rand(2, 70) > 0.3
    distance = "kl" if kind == "kl" else "bhattacharyya"
    smoothing = "official" if kind == "official" else "exact"
    value = functional_distance(student, reference, mask, distance, smoothing)
    value.backward()
    ours = student.grad.clone()
    student.grad = None
    direct = _direct(student, reference, mask, kind)
    direct.backward()
    assert value.item() == pytest.approx(direct.item(), rel=1e-5)
    assert value.item() > 0.05  # random logits are far apart
    assert torch.allclose(ours, student.grad.float(), atol=1e-6)
    assert functional_distance(reference, reference, mask, distance, smoothing).item() == pytest.approx(0, abs=1e-6)


def test_official_smoothing_has_a_pull_at_the_reference_that_exact_does_not():
    # With a large vocabulary, eps = 1e-10 under the square root is not negligible: the official form has a
    # non-zero gradient at p = q (it sharpens the distribution); the exact form is stationary there.
    torch.manual_seed(0)
    reference = torch.randn(1, 4, 5000) * 6
    gradients = {}
    for smoothing in ("exact", "official"):
        student = reference.clone().requires_grad_(True)
        functional_distance(student, reference, torch.ones(1, 4, dtype=torch.bool), "bhattacharyya", smoothing).backward()
        gradients[smoothing] = student.grad.norm().item()
    assert gradients["exact"] < 1e-6  # float rounding only
    assert gradients["official"] > 50 * gradients["exact"] and gradients["official"] > 3e-5


def test_zero_at_the_reference_positive_away_and_equal_to_direct_on_anchor_inputs(tiny_lm, tokenizer):
    ctx = _context(_config(), tiny_lm, tokenizer)
    strategy = build_strategy({"name": "fip", "anchor_examples": 8})
    strategy.on_task_start(ctx)
    assert ctx.log["fip_anchor_examples"] == 8  # first task: general text anchors
    batch = strategy.anchor_batch(ctx)
    assert batch["input_ids"].numel() <= 8 * 32 // 4  # default anchor batch: a quarter of the batch's tokens
    assert strategy.penalty(ctx, tiny_lm, batch).item() == pytest.approx(0.0, abs=1e-6)

    with torch.no_grad():
        reference_logits = tiny_lm(**batch).logits
    perturb(tiny_lm)
    mask = batch["attention_mask"].bool()
    with torch.no_grad():
        logits = tiny_lm(**batch).logits
    value = strategy.penalty(ctx, tiny_lm, batch)
    assert value.item() > 1e-4
    assert value.item() == pytest.approx(_direct(logits, reference_logits, mask, "exact").item(), rel=1e-4)


def test_previous_mode_refreshes_the_reference_every_refresh_steps(tiny_lm, tokenizer):
    ctx = _context(_config(), tiny_lm, tokenizer)
    strategy = build_strategy({"name": "fip", "reference": "previous", "refresh_steps": 2, "anchor_examples": 4})
    strategy.on_task_start(ctx)
    batch = strategy.anchor_batch(ctx)
    perturb(tiny_lm)
    ctx.clock.global_step = 1  # not yet due: still measured against the weights at task start
    assert strategy.extra_loss(ctx, tiny_lm, {}, None).item() > 1e-4
    assert strategy._refreshed_at == 0
    ctx.clock.global_step = 2  # due: the reference moves to the current weights
    assert strategy.extra_loss(ctx, tiny_lm, {}, None).item() == pytest.approx(0.0, abs=1e-6)
    assert strategy._refreshed_at == 2
    perturb(tiny_lm, seed=2)
    ctx.clock.global_step = 3
    assert strategy.penalty(ctx, tiny_lm, batch).item() > 1e-4
    # After the task: the copy is freed, the mean is reported, and nothing needs saving for later tasks.
    strategy.consolidate(ctx)
    assert strategy._reference == {} and strategy.state_tensors() == {}
    assert ctx.log["fip_mean_distance"] > 0


def test_under_lora_the_origin_is_the_base_and_only_adapter_tensors_are_held(tokenizer):
    base = make_tiny_lm(len(tokenizer))
    config = _config(adapter="lora", lora={"r": 4, "target_modules": ["q_proj", "v_proj"]})
    strategy = build_strategy({"name": "fip", "anchor_examples": 4})
    model = prepare_for_task(base, config, 0)
    ctx = _context(config, model, tokenizer)
    strategy.on_task_start(ctx)
    batch = strategy.anchor_batch(ctx)
    with torch.no_grad(), model.disable_adapter():
        base_logits = model(**batch).logits
    model.train()
    perturb(model, scale=0.2)  # only the LoRA tensors are trainable
    assert torch.allclose(strategy.reference_logits(ctx, batch), base_logits, atol=1e-5)
    assert model.training
    value = strategy.extra_loss(ctx, model, {}, None)
    value.backward()
    assert value.item() > 1e-4
    assert all(p.grad is not None for n, p in model.named_parameters() if "lora_B" in n)
    # No model copy: the strategy holds only the adapter-sized reference tensors.
    assert not any(isinstance(v, torch.nn.Module) for v in vars(strategy).values())
    held = sum(t.numel() for t in strategy._reference.values())
    assert held == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert held < sum(p.numel() for p in model.parameters()) / 20

    # previous mode under LoRA: refreshing swaps in the adapter's current values.
    strategy.reference = "previous"
    strategy.refresh(ctx)
    assert strategy.penalty(ctx, model, batch).item() == pytest.approx(0.0, abs=1e-6)


def test_bad_knobs_are_refused_with_clear_messages():
    for knob, value in (("distance", "l2"), ("smoothing", "soft"), ("reference", "start"), ("refresh_steps", 0)):
        with pytest.raises(ForgetlessError, match=knob):
            build_strategy({"name": "fip", knob: value})


def _bhattacharyya_drift(model, reference, tokenizer, texts):
    batch = tokenizer(texts, return_tensors="pt", padding=True, truncation=True, max_length=32)
    kwargs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    with torch.no_grad():
        return functional_distance(model(**kwargs).logits, reference(**kwargs).logits, batch["attention_mask"].bool()).item()


def test_end_to_end_fip_keeps_anchor_outputs_closer_than_naive(tmp_path, tokenizer):
    from forgetless.data.tasks import general_train_texts

    anchors = list(general_train_texts()[:6])  # first task: the anchors are general text
    drift = {}
    fip = {"name": "fip", "weight": 1000.0, "anchor_examples": 16, "anchor_batch_size": 2}
    for label, strategy in (("naive", "naive"), ("fip", fip)):
        start, model, results = train_tiny_on_tickets(tmp_path, tokenizer, strategy, label)
        drift[label] = _bhattacharyya_drift(model, start, tokenizer, anchors)
    # A large weight because the random tiny model's outputs are near-uniform, so distances and their
    # gradients are tiny next to the cross-entropy's. (Measured: fip 0.00031 vs naive 0.00109.)
    assert drift["fip"] < 0.5 * drift["naive"]
    assert math.isfinite(results.training[0]["fip_mean_distance"]) and results.training[0]["fip_mean_distance"] > 0


def test_default_anchor_batch_is_a_quarter_of_the_training_batch_in_tokens(tiny_lm, tokenizer):
    ctx = _context(_config(), tiny_lm, tokenizer)  # batch 8 x 32 tokens: 64 anchor tokens per step
    strategy = build_strategy({"name": "fip"})
    strategy.on_task_start(ctx)

    def anchors(*lengths):
        return [{"input_ids": [5] * n, "labels": [5] * n} for n in lengths]

    strategy._anchors = anchors(*[10] * 20)
    assert strategy.anchor_batch(ctx)["input_ids"].shape == (6, 10)  # 7 x 10 would exceed 64
    strategy._anchors = anchors(*[40] * 5)
    assert strategy.anchor_batch(ctx)["input_ids"].shape == (1, 40)
    strategy._anchors = anchors(100)  # longer than the budget: still one anchor, never none
    assert strategy.anchor_batch(ctx)["input_ids"].shape == (1, 100)
    strategy._anchors = anchors(*[4, 8, 16, 30] * 5)
    for _ in range(20):  # padded size within budget whatever the draw
        assert strategy.anchor_batch(ctx)["input_ids"].numel() <= 64
    fixed = build_strategy({"name": "fip", "anchor_batch_size": 3})
    fixed.on_task_start(ctx)
    fixed._anchors = anchors(*[10] * 20)
    assert fixed.anchor_batch(ctx)["input_ids"].size(0) == 3
