"""TaskWeights: the same question (start, change, edits) gives the same answer under full fine-tuning and LoRA."""

from __future__ import annotations

import copy

import pytest
import torch

from forgetless.adapters import prepare_for_task
from forgetless.config import parse_config
from forgetless.errors import ForgetlessError
from forgetless.task_weights import TaskWeights

from .conftest import make_tiny_lm, perturb

TARGETS = ["q_proj", "v_proj"]


def _pair(tokenizer, between_tasks="merge"):
    """(full model, its TaskWeights, LoRA model, its TaskWeights): both start at W0 and end at the same W."""
    config = parse_config({"model": "tiny", "adapter": "lora", "tasks": [{"name": "t", "file": "t.jsonl"}],
                           "lora": {"r": 2, "alpha": 4, "target_modules": TARGETS, "between_tasks": between_tasks}})
    base = make_tiny_lm(len(tokenizer))
    full = copy.deepcopy(base)
    lora = prepare_for_task(base, config, 0)
    full_weights = TaskWeights(full)
    full_weights.remember_start()
    lora_weights = TaskWeights(lora, "task0")
    lora_weights.check_fresh_adapter("test")
    perturb(lora, scale=0.3)  # "training" moves the adapter only
    merged = dict(copy.deepcopy(lora).merge_and_unload().named_parameters())
    with torch.no_grad():  # full fine-tuning that ended at the same weights
        for name, parameter in full.named_parameters():
            parameter.copy_(merged[name])
    return full, full_weights, lora, lora_weights


def _effective(model) -> dict[str, torch.Tensor]:
    """The weights the model computes with (LoRA updates folded in), by plain transformers name."""
    plain = copy.deepcopy(model).merge_and_unload() if hasattr(model, "merge_and_unload") else model
    return {name: p.detach() for name, p in plain.named_parameters()}


def test_names_are_the_full_fine_tuning_names_of_the_adapted_weights(tokenizer):
    _, full_weights, lora, lora_weights = _pair(tokenizer)
    assert set(lora_weights.names()) == {f"model.layers.{i}.self_attn.{m}.weight" for i in range(2) for m in TARGETS}
    assert set(lora_weights.names()) < set(full_weights.names())
    parameters = dict(lora.named_parameters())
    for name, gradient_name in lora_weights.gradient_names().items():
        assert parameters[gradient_name] is lora_weights.weight(name)  # the base weight the adapter adds to


def test_change_and_edits_agree_between_full_fine_tuning_and_lora(tokenizer):
    full, full_weights, lora, lora_weights = _pair(tokenizer)
    for name in lora_weights.names():
        assert torch.allclose(full_weights.change(name), lora_weights.change(name), atol=1e-6)
        assert torch.equal(full_weights.start(name), lora_weights.start(name))
    generator = torch.Generator().manual_seed(0)
    masks = {name: torch.rand(full_weights.weight(name).shape, generator=generator) > 0.5 for name in lora_weights.names()}
    full_weights.interpolator()(0.3)
    lora_weights.interpolator()(0.3)
    for name, mask in masks.items():
        full_weights.keep_change_where(name, mask)
        lora_weights.keep_change_where(name, mask)
    ours, theirs = _effective(full), _effective(lora)
    for name in lora_weights.names():  # W0 + mask * 0.3 * (W_end - W0) in both set-ups
        assert torch.allclose(ours[name], theirs[name], atol=1e-6), name
        moved = ours[name] != full_weights.start(name)
        assert not (moved & ~masks[name]).any(), "an entry outside the mask moved"
    assert all(not (p.count_nonzero()) for n, p in lora.named_parameters() if "lora_B" in n)  # folded into W


def test_repeatable_interpolation_returns_to_the_end_and_the_start(tokenizer):
    full, full_weights, _, _ = _pair(tokenizer)
    end = {name: p.detach().clone() for name, p in full.named_parameters()}
    set_alpha = full_weights.interpolator(repeatable=True)
    set_alpha(0.0)
    assert all(torch.equal(full_weights.weight(n), full_weights.start(n)) for n in full_weights.names())
    set_alpha(1.0)
    assert all(torch.equal(p, end[n]) for n, p in full.named_parameters())


def test_snapshot_runs_the_starting_function_in_stack_mode(tokenizer):
    config = parse_config({"model": "tiny", "adapter": "lora", "tasks": [{"name": "t", "file": "t.jsonl"}],
                           "lora": {"r": 2, "target_modules": TARGETS, "between_tasks": "stack"}})
    model = prepare_for_task(make_tiny_lm(len(tokenizer)), config, 0)
    perturb(model, scale=0.3, seed=4)  # task 0 trained
    model = prepare_for_task(model, config, 1)
    inputs = torch.tensor([[1, 5, 9, 2]])
    before = model(input_ids=inputs).logits.detach()
    weights = TaskWeights(model, "task1")
    snapshot = weights.snapshot()
    assert all(".task1." in name for name in snapshot)  # only this task's adapter is copied
    perturb(model, scale=0.3)  # task 1 trains
    assert not torch.allclose(model(input_ids=inputs).logits, before, atol=1e-4)
    reference = torch.func.functional_call(model, snapshot, args=(), kwargs={"input_ids": inputs}).logits
    assert torch.allclose(reference, before, atol=1e-6)


def test_a_start_not_remembered_and_a_used_adapter_are_refused(tokenizer):
    model = make_tiny_lm(len(tokenizer))
    weights = TaskWeights(model)
    name = weights.names()[0]
    with pytest.raises(ForgetlessError, match="remember_start"):
        weights.change(name)
    _, _, _, lora_weights = _pair(tokenizer)
    with pytest.raises(ForgetlessError, match="freshly initialised"):
        lora_weights.check_fresh_adapter("wise")
