"""Every registered strategy under gradient accumulation and bf16, through the runner (with_strategies(Trainer)).

Tolerances, measured on this tiny model (2 tasks x 4 steps, lr 1e-2, AdamW) with accumulation 2 x 2 against
batch 4: train loss (CE plus strategy terms) equal to 1e-4 relative; strategy state (Fisher, importance,
buffers) and logged penalties to 1e-3 relative; final weights to 5e-3 absolute. The weights differ at all
only through float summation order, which AdamW turns into lr-sized moves on entries whose gradient is
near zero; counting a once-per-step penalty on every micro-batch moves them by 5e-2 to 8e-2 instead.
"""

from __future__ import annotations

import math

import pytest
import torch

from forgetless.errors import ForgetlessError
from forgetless.strategies import known_strategies
from forgetless.training import ContinualRun

from .conftest import make_tiny_lm, tiny_config

SPECS = {name: name for name in known_strategies() if not name.startswith("_")}  # every strategy at its defaults


def _run(tmp_path, tokenizer, task_files, spec, label, tasks=None, **train):
    settings = {"steps": 4, "batch_size": 4, "lr": 1e-2, "max_length": 64, "seed": 0, **train}
    overrides = {"strategies": [spec], "train": settings}
    if tasks is not None:
        overrides["tasks"] = tasks
    config = tiny_config(task_files, **overrides)
    model = make_tiny_lm(len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id
    run = ContinualRun(config, tmp_path / label, model=model, tokenizer=tokenizer, progress=False)
    return run, run.execute()


def _relative(a: float, b: float) -> float:
    return abs(a - b) / max(abs(a), 1e-12)


@pytest.mark.parametrize("name", sorted(SPECS))
def test_accumulation_two_by_two_equals_one_batch_of_four(name, tmp_path, tokenizer, task_files):
    big, big_results = _run(tmp_path, tokenizer, task_files, SPECS[name], "big")
    acc, acc_results = _run(tmp_path, tokenizer, task_files, SPECS[name], "acc", gradient_accumulation_steps=2)
    for one, two in zip(big_results.training, acc_results.training):
        assert _relative(one["train_loss"], two["train_loss"]) < 1e-4, (one["train_loss"], two["train_loss"])
        for key, value in one.items():  # the strategy's own logged numbers (penalties, fractions, counts)
            if key.startswith(name) and isinstance(value, (int, float)) and not key.endswith("seconds"):
                assert _relative(value, two[key]) < 1e-3, (key, value, two[key])
    big_state, acc_state = big.stack.state_tensors(), acc.stack.state_tensors()
    assert big_state.keys() == acc_state.keys()
    for strategy, tensors in big_state.items():
        assert tensors.keys() == acc_state[strategy].keys()
        for key, value in tensors.items():
            other = acc_state[strategy][key]
            assert value.shape == other.shape, key
            scale = float(value.float().abs().max()) or 1.0
            assert float((value.float() - other.float()).abs().max()) <= 1e-3 * scale, (strategy, key)
    acc_weights = dict(acc.model.named_parameters())
    worst = max(float((p - acc_weights[n]).abs().max()) for n, p in big.model.named_parameters())
    assert worst < 5e-3, worst


@pytest.mark.parametrize("name", sorted(set(SPECS) - {"naive"}))
def test_bf16_run_finishes_finite_with_the_strategy_active(name, tmp_path, tokenizer, task_files):
    one_task = [{"name": "chat", "file": task_files["chat"]}]
    naive, _ = _run(tmp_path, tokenizer, task_files, "naive", "naive", tasks=one_task, precision="bf16")
    run, results = _run(tmp_path, tokenizer, task_files, SPECS[name], "bf16", tasks=one_task, precision="bf16")
    assert math.isfinite(results.training[0]["train_loss"])
    weights = dict(run.model.named_parameters())
    assert all(torch.isfinite(p).all() for p in weights.values())
    # The strategy still acts under bf16: its run ends somewhere else than plain bf16 fine-tuning.
    moved = max(float((p - weights[n]).abs().max()) for n, p in naive.model.named_parameters())
    assert moved > 1e-4, f"{name} under bf16 ended where naive did"


@pytest.mark.parametrize("name", ["ewc", "layerwise"])
def test_fp16_is_refused_before_training_for_hooks_that_touch_gradients(name, tmp_path, tokenizer, task_files):
    with pytest.raises(ForgetlessError, match="fp16.*use precision bf16"):
        _run(tmp_path, tokenizer, task_files, name, "fp16", precision="fp16")


@pytest.mark.parametrize("spec", [{"name": "l2sp", "lam": 0.01}, "l2sp"], ids=["penalty", "cap"])
def test_fp16_runs_where_no_hook_touches_gradients(spec, tmp_path, tokenizer, task_files):
    _, results = _run(tmp_path, tokenizer, task_files, spec, "fp16", precision="fp16")
    assert all(math.isfinite(t["train_loss"]) for t in results.training)


def test_batch_size_must_split_into_the_micro_batches(task_files):
    with pytest.raises(ForgetlessError, match="train: .*multiple of gradient_accumulation_steps"):
        tiny_config(task_files, train={"batch_size": 5, "gradient_accumulation_steps": 2})
