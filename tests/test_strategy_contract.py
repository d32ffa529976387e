"""The contract every registered strategy keeps, under full fine-tuning, LoRA merged after each task and LoRA stacked.

A new strategy adds itself here by registering (give it a spec in `SPECS` if its defaults cannot run on a
tiny random model). Each row checks, on a 2-task run through the runner:
- refusal is explicit: a set-up the strategy cannot serve is refused before training (the table `REFUSED`);
- deterministic: two runs with the same seed end with bit-identical weights, losses and strategy state;
- frozen means frozen: under LoRA, every weight outside the adapted layers ends exactly where it started;
- its state, from the runner's checkpoint file, loads into a freshly built strategy exactly;
- at the task's start (the anchor), its loss term is zero, its after-backward hook adds no gradient and its
  after-step hook moves no weight.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from forgetless.adapters import base_model_of, prepare_for_task
from forgetless.data.encoding import PaddingCollator, encode_rows
from forgetless.errors import ForgetlessError
from forgetless.strategies import OptimizerStep, StrategyStack, TaskData, known_strategies
from forgetless.training import ContinualRun

from .conftest import make_tiny_lm, tiny_config

SPECS = {name: name for name in known_strategies() if not name.startswith("_")}
# Smaller estimates than the defaults: the contract is about plumbing, and these dominate the tiny runs' time.
SPECS["ssr"] = {"name": "ssr", "per_task": 4, "max_new_tokens": 8}
SPECS["ewc"] = {"name": "ewc", "samples": 8}  # its default: the trust region at DEFAULT_TARGET
SPECS["ewc(lam)"] = {"name": "ewc", "samples": 8, "lam": 100.0}  # the penalty alone (lam named: no cap)
SPECS["l2sp(lam)"] = {"name": "l2sp", "lam": 0.01}  # the penalty alone (lam named: no cap); bare l2sp is its cap
SPECS["layerwise"] = {"name": "layerwise", "steps": 2}
# Modes with a hook of their own: the trust region projects after every optimizer step (tiny: it always binds).
SPECS["ewc(target)"] = {"name": "ewc", "samples": 8, "lam": 0.0, "target": 1e-6}
SPECS["layerwise(target)"] = {"name": "layerwise", "steps": 2, "lam": 0.0, "target": 1e-6}
SPECS["layerwise(distance)"] = {"name": "layerwise", "steps": 2, "lam": 0.0, "distance": 1e-4}

TARGETS = ["q_proj", "v_proj"]
MODES = {
    "full": {"adapter": "full"},
    "lora-merge": {"adapter": "lora", "lora": {"r": 4, "target_modules": TARGETS, "between_tasks": "merge"}},
    "lora-stack": {"adapter": "lora", "lora": {"r": 4, "target_modules": TARGETS, "between_tasks": "stack"}},
}
# (strategy, mode) -> the reason its refusal must name.
REFUSED: dict[tuple[str, str], str] = {}  # every registered strategy serves all three set-ups today
ROWS = [{"prompt": f"Ticket {i}: my printer jams", "response": f"Open tray {i} and remove the paper."} for i in range(4)]


def _config(task_files, name, mode):
    train = {"steps": 2, "batch_size": 2, "lr": 1e-2, "max_length": 48, "seed": 0}
    return tiny_config(task_files, strategies=[SPECS[name]], train=train, checkpoints="last", **MODES[mode])


def _run(config, tmp_path, tokenizer, label):
    model = make_tiny_lm(len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id
    start = {name: p.detach().clone() for name, p in model.named_parameters()}
    run = ContinualRun(config, tmp_path / label, model=model, tokenizer=tokenizer, progress=False)
    return start, run, run.execute()


def _weights(model) -> dict[str, torch.Tensor]:
    """Every weight by its plain transformers name (PEFT's wrapping removed), LoRA tensors included."""
    named = base_model_of(model).named_parameters()
    return {name.replace(".base_layer", ""): p.detach() for name, p in named}


CASES = [(name, mode) for name in sorted(SPECS) for mode in MODES]


@pytest.mark.parametrize(("name", "mode"), CASES)
def test_a_run_is_deterministic_keeps_frozen_weights_and_round_trips_its_state(name, mode, tmp_path, tokenizer, task_files):
    config = _config(task_files, name, mode)
    if (name, mode) in REFUSED:
        with pytest.raises(ForgetlessError, match=REFUSED[name, mode]):
            _run(config, tmp_path, tokenizer, "refused")
        return
    start, first, first_results = _run(config, tmp_path, tokenizer, "first")
    _, second, second_results = _run(config, tmp_path, tokenizer, "second")
    assert [t["train_loss"] for t in first_results.training] == [t["train_loss"] for t in second_results.training]
    ends, again = _weights(first.model), _weights(second.model)
    assert ends.keys() == again.keys()
    assert all(torch.equal(ends[n], again[n]) for n in ends), "same seed, different weights"
    state, state_again = first.stack.state_tensors(), second.stack.state_tensors()
    assert state.keys() == state_again.keys()
    for strategy, tensors in state.items():
        assert all(torch.equal(value, state_again[strategy][key]) for key, value in tensors.items()), strategy
    if mode != "full":
        frozen = [n for n in start if not any(f".{target}." in n for target in TARGETS)]
        assert frozen and all(torch.equal(ends[n], start[n]) for n in frozen), "a frozen weight moved under LoRA"
    else:
        assert any(not torch.equal(ends[n], start[n]) for n in start), "full fine-tuning changed nothing"
    # The runner's checkpoint holds the state; a freshly built strategy loads it back exactly.
    for strategy in first.stack.strategies:
        tensors = strategy.state_tensors()
        if not tensors:
            continue
        restored = StrategyStack.from_specs([SPECS[name]]).strategies[0]
        checkpoint = tmp_path / "first" / "checkpoints" / "final"
        restored.load_state_tensors(load_file(checkpoint / f"strategy-{strategy.name}.safetensors"))
        back = restored.state_tensors()
        assert back.keys() == tensors.keys()
        assert all(torch.equal(back[k].to(v.device), v) for k, v in tensors.items()), strategy.name


@pytest.mark.parametrize(("name", "mode"), [case for case in CASES if case not in REFUSED])
def test_at_the_task_start_the_term_is_zero_and_no_gradient_is_added(name, mode, tokenizer, task_files):
    config = _config(task_files, name, mode)
    model = make_tiny_lm(len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id
    model = prepare_for_task(model, config, 0)
    model.train()
    stack = StrategyStack.from_specs(config.strategies)
    features = encode_rows(tokenizer, ROWS, 48)
    task = TaskData(name="chat", format="chat", rows=ROWS, examples=features)
    stack.start_task(config.training_setup(), model, tokenizer, task, adapter="task0" if mode != "full" else None)
    batch = PaddingCollator(tokenizer.pad_token_id)(features)
    outputs = model(**batch)
    term = stack.extra_loss(model, batch, outputs)
    if term is not None:
        assert abs(float(term)) < 1e-6, f"{name}: term {float(term)} at the anchor"
    for p in model.parameters():
        p.grad = torch.zeros_like(p) if p.requires_grad else None
    stack.after_backward(model, OptimizerStep(trained_tokens=int((batch["labels"] != -100).sum())))
    added = max(float(p.grad.abs().max()) for p in model.parameters() if p.grad is not None)
    assert added == 0.0, f"{name}: after_backward added {added} at the anchor"
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    stack.after_optimizer_step(model)
    assert all(torch.equal(p, weights[n]) for n, p in model.named_parameters()), f"{name}: a weight moved at the anchor"
