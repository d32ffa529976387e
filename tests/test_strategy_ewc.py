"""`ewc`: the quadratic penalty, the per-sample Fisher against a one-backward-per-sample loop, online and
offline combination, EWC-LoRA's Fisher over the merged weight, saved state, and a tiny end-to-end run."""

import copy
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from forgetless.config import parse_config
from forgetless.data.encoding import encode_rows
from forgetless.data.tasks import TrainingTask
from forgetless.errors import ForgetlessError
from forgetless.strategies import OptimizerStep, build_strategy
from forgetless.strategies._common import batches, protection_examples
from forgetless.strategies.ewc import (
    combine_offline,
    combine_online,
    per_sample_fisher,
    sample_model_labels,
)
from forgetless.training import context_for, run_continual

from .conftest import make_tiny_lm, perturb


def _rows(prefix: str, count: int) -> list[dict]:
    return [{"prompt": f"{prefix} question {i}?", "response": f"{prefix} answer number {i} is fine."} for i in range(count)]


def _context(model, tokenizer, adapter: str = "full", index: int = 0, between_tasks: str = "merge"):
    config = parse_config(
        {
            "model": "tiny",
            "adapter": adapter,
            "lora": {"r": 2, "alpha": 4, "target_modules": ["q_proj", "v_proj"], "between_tasks": between_tasks},
            "tasks": [{"name": "a", "file": "a.jsonl"}, {"name": "b", "file": "b.jsonl"}],
            "train": {"max_length": 96},
        }
    )
    tasks = [TrainingTask(name, "chat", _rows(name, 6), _rows(name, 2)) for name in ("a", "b")]
    ctx = context_for(config, model, tokenizer, tasks, index)
    ctx.config = config  # the tests wrap the model in LoRA with prepare_for_task, as the runner does
    return ctx


def _examples(tokenizer, count: int = 5) -> list[dict]:
    rows = [{"text": "The cat sat on the mat " * (1 + i % 3)} for i in range(count)]  # different lengths: padding
    return encode_rows(tokenizer, rows, 24)[:count]


def _loop_fisher(model, examples, label_sets=None) -> dict[str, torch.Tensor]:
    """One backward per sample: mean of (grad of the sum of token log-likelihoods)^2 / tokens."""
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    fisher = {n: torch.zeros_like(p) for n, p in model.named_parameters() if n in names}
    label_sets = label_sets or [[torch.tensor(e["labels"]) for e in examples]]
    for labels_per_example in label_sets:
        for example, labels in zip(examples, labels_per_example):
            model.zero_grad()
            ids = torch.tensor([example["input_ids"]])
            labels = labels[: ids.size(1)]
            logits = model(input_ids=ids).logits[0, :-1]
            targets = labels[1:]
            trained = targets != -100
            log_probs = torch.log_softmax(logits, -1)[trained].gather(-1, targets[trained].unsqueeze(-1))
            log_probs.sum().backward()
            for n, p in model.named_parameters():
                if n in fisher:
                    fisher[n] += p.grad.square() / trained.sum()
    count = len(examples) * len(label_sets)
    return {n: f / count for n, f in fisher.items()}


def _assert_close(actual: dict, expected: dict, rtol: float = 1e-4):
    assert set(actual) == set(expected)
    for name in expected:
        scale = expected[name].abs().max().item()
        assert torch.allclose(actual[name], expected[name], rtol=rtol, atol=rtol * scale + 1e-12), name


def test_per_sample_fisher_equals_a_loop_of_single_backwards(tokenizer):
    model = make_tiny_lm(len(tokenizer), hidden_size=16)
    examples = _examples(tokenizer, 3)
    names = [n for n, _ in model.named_parameters()]
    # A tiny memory budget forces several parameter groups; batch 2 leaves a partial last batch.
    vectorised = per_sample_fisher(model, names, examples, tokenizer.pad_token_id, batch_size=2, max_gradient_mb=0.5)
    _assert_close(vectorised, _loop_fisher(model, examples))


def test_the_fisher_survives_input_grad_hooks_that_two_trainers_registered(tokenizer):
    # Gradient checkpointing (TRL's default) makes each trainer call enable_input_require_grads; the second
    # task's trainer registers a second hook that transformers' disable cannot reach, and its requires_grad_
    # is illegal inside vmap: the Fisher at that task's end failed in a user's two-task SFT script.
    model = make_tiny_lm(len(tokenizer), hidden_size=16)
    model.enable_input_require_grads()
    model.enable_input_require_grads()
    examples = _examples(tokenizer, 3)
    fisher = per_sample_fisher(model, [n for n, _ in model.named_parameters()], examples, tokenizer.pad_token_id)
    _assert_close(fisher, _loop_fisher(model, examples))
    hooks = [h for h in model.get_input_embeddings()._forward_hooks.values() if h.__name__ == "make_inputs_require_grads"]
    assert len(hooks) == 1  # the trainer's behaviour is back after the estimate


def test_true_fisher_with_a_fixed_seed_equals_the_loop_on_the_same_sampled_labels(tokenizer):
    model = make_tiny_lm(len(tokenizer), hidden_size=16)
    examples = _examples(tokenizer, 3)
    names = [n for n, _ in model.named_parameters()]
    vectorised = per_sample_fisher(model, names, examples, tokenizer.pad_token_id, "true", draws=2, batch_size=3, seed=3)
    batch = next(batches(examples, 3, tokenizer.pad_token_id))
    draws = sample_model_labels(model, batch, 2, torch.Generator().manual_seed(3))
    for drawn in draws:  # sampled exactly where the data trains, -100 elsewhere
        assert torch.equal(drawn == -100, batch["labels"] == -100)
    assert not torch.equal(draws[0], batch["labels"])  # labels come from the model, not the data
    # The same seed draws the same labels, so the vectorised result equals the loop on those labels.
    _assert_close(vectorised, _loop_fisher(model, examples, [list(d) for d in draws]))


def test_penalty_is_zero_at_the_anchor_and_exactly_quadratic(tokenizer):
    model = make_tiny_lm(len(tokenizer), hidden_size=16)
    ctx = _context(model, tokenizer)
    ewc = build_strategy({"name": "ewc", "lam": 3.0, "source": "current_task"})  # no estimate at task start
    ewc.on_task_start(ctx)
    torch.manual_seed(0)
    parameters = dict(model.named_parameters())
    ewc.anchor = {n: p.detach().clone() for n, p in parameters.items()}
    ewc.fisher = {n: torch.rand_like(p) for n, p in parameters.items()}
    assert ewc.penalty().item() == 0.0
    step = {n: 1e-2 * torch.randn_like(p) for n, p in parameters.items()}
    with torch.no_grad():
        for n, p in parameters.items():
            p.add_(step[n])
    penalty = ewc.penalty()
    direct = 3.0 / 2 * sum((ewc.fisher[n] * step[n].square()).sum() for n in parameters)
    assert penalty.item() == pytest.approx(direct.item(), rel=1e-4)
    penalty.backward()  # gradient lam * F * (theta - anchor)
    name = "model.layers.0.mlp.up_proj.weight"
    assert torch.allclose(parameters[name].grad, 3.0 * ewc.fisher[name] * step[name], rtol=1e-3, atol=1e-9)
    with torch.no_grad():
        for n, p in parameters.items():
            p.add_(step[n])  # now theta - anchor = 2 * step
    assert ewc.penalty().item() == pytest.approx(4 * penalty.item(), rel=1e-4)


def test_full_fine_tuning_adds_the_penalty_gradient_after_backward(tokenizer, monkeypatch):
    """The training path: no autograd term, .grad += lam F (theta - anchor) in chunks, same as the penalty's gradient."""
    import forgetless.strategies.ewc as ewc_module

    monkeypatch.setattr(ewc_module, "PULL_CHUNK", 7)  # many chunks, a ragged last one, on a tiny model
    model = make_tiny_lm(len(tokenizer), hidden_size=16)
    ctx = _context(model, tokenizer)
    ewc = build_strategy({"name": "ewc", "lam": 3.0, "source": "current_task"})
    ewc.on_task_start(ctx)
    torch.manual_seed(0)
    parameters = dict(model.named_parameters())
    ewc.anchor = {n: p.detach().clone() for n, p in parameters.items()}
    ewc.fisher = {n: torch.rand_like(p) for n, p in parameters.items()}
    with torch.no_grad():
        for p in parameters.values():
            p.add_(1e-2 * torch.randn_like(p))
    assert ewc.extra_loss(ctx, model, {}, None) is None  # nothing through autograd under full fine-tuning
    model.zero_grad()
    ewc.penalty().backward()
    expected = {n: p.grad.clone() for n, p in parameters.items()}
    model.zero_grad()
    existing = {n: torch.randn_like(p) for n, p in parameters.items()}  # the loss's own gradient is kept
    for n, p in parameters.items():
        p.grad = existing[n].clone()
    ewc.after_backward(ctx, model, OptimizerStep(trained_tokens=1))
    for n, p in parameters.items():
        assert torch.allclose(p.grad, existing[n] + expected[n], rtol=1e-4, atol=1e-7), n
    value = ewc.penalty().item()  # one step so far: its mean is this step's value
    assert value > 0
    ewc.consolidate(ctx)
    assert ctx.log["ewc_mean_penalty"] == pytest.approx(value, rel=1e-5)


def test_online_combination_decays_the_previous_fisher():
    previous = {"w": torch.tensor([1.0, 2.0, 0.0])}
    new = {"w": torch.tensor([0.5, 0.0, 3.0])}
    assert torch.allclose(combine_online(previous, new, 0.9)["w"], torch.tensor([1.4, 1.8, 3.0]))
    assert torch.equal(combine_online({}, new, 0.9)["w"], new["w"])


def test_offline_combination_keeps_the_sum_of_both_penalties_in_one_quadratic():
    torch.manual_seed(0)
    f1, f2 = {"w": torch.rand(50)}, {"w": torch.rand(50)}
    f2["w"][:5] = 0  # no new information there: the old anchor stays
    a, b = {"w": torch.randn(50)}, {"w": torch.randn(50)}
    fisher, anchor, constant = combine_offline(f1, a, f2, b)
    for _ in range(3):
        theta = torch.randn(50)
        separate = (f1["w"] * (theta - a["w"]).square()).sum() + (f2["w"] * (theta - b["w"]).square()).sum()
        combined = (fisher["w"] * (theta - anchor["w"]).square()).sum() + constant
        assert combined.item() == pytest.approx(separate.item(), rel=1e-5)
    assert torch.equal(anchor["w"][:5], a["w"][:5])


def test_first_task_is_protected_on_general_text_and_state_round_trips(tokenizer, tmp_path):
    model = make_tiny_lm(len(tokenizer), hidden_size=16)
    ctx = _context(model, tokenizer)
    ewc = build_strategy({"name": "ewc", "samples": 4, "lam": 1.0})  # a price: penalty() is the state's fingerprint
    ewc.on_task_start(ctx)
    assert ctx.log["ewc_start_fisher_examples"] == 4 and ctx.log["ewc_start_fisher_mean"] > 0
    assert ewc.penalty().item() == 0.0  # the anchor is the starting model
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    ewc.consolidate(ctx)  # offline: a second (F, anchor) folded in, with a constant
    assert ewc.offset > 0
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    penalty = ewc.penalty().item()
    save_file(ewc.state_tensors(), tmp_path / "ewc.safetensors")
    assert penalty > 0
    restored = build_strategy({"name": "ewc", "samples": 4, "lam": 1.0})
    restored.load_state_tensors(load_file(tmp_path / "ewc.safetensors"))
    next_ctx = _context(model, tokenizer, index=1)
    restored.on_task_start(next_ctx)  # a loaded state is not re-estimated
    assert "ewc_start_fisher_examples" not in next_ctx.log
    assert restored.penalty().item() == pytest.approx(penalty, rel=1e-6)


def _lora_model(tokenizer):
    from forgetless.adapters import prepare_for_task

    ctx = _context(make_tiny_lm(len(tokenizer), hidden_size=16), tokenizer, adapter="lora")
    model = prepare_for_task(ctx.model, ctx.config, 0)
    ctx.model = model
    return ctx, model


def test_ewc_lora_fisher_is_over_the_merged_weight_and_penalises_scaled_ba(tokenizer, tmp_path):
    ctx, model = _lora_model(tokenizer)
    ewc = build_strategy({"name": "ewc", "lam": 2.0, "samples": 4, "online": True, "gamma": 0.5})
    ewc.on_task_start(ctx)  # B = 0: Omega of the base weights on general text
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.5)  # a non-zero update, so merged W differs from the base
    start_omega = {k: v.clone() for k, v in ewc.omega.items()}
    ewc.consolidate(ctx)
    # Direct: a plain model holding W + scaling * B A, its per-sample Fisher over those weights.
    merged = copy.deepcopy(model).merge_and_unload()
    examples = _examples(tokenizer, 4)
    names = [f"model.layers.{i}.self_attn.{m}.weight" for i in range(2) for m in ("q_proj", "v_proj")]
    direct = per_sample_fisher(merged, names, examples, tokenizer.pad_token_id)
    base_weights = [f"base_model.model.{n.removesuffix('.weight')}.base_layer.weight" for n in names]
    ours = per_sample_fisher(model, base_weights, examples, tokenizer.pad_token_id)
    _assert_close({n.removeprefix("base_model.model.").replace(".base_layer", ""): v for n, v in ours.items()}, direct)
    # Omega = gamma * Omega_start + F_W (F_W estimated on the task's data at the merged weights).
    layer = "base_model.model.model.layers.0.self_attn.q_proj"
    weight = "model.layers.0.self_attn.q_proj.weight"  # Omega is keyed as the weight is under full fine-tuning
    fresh = per_sample_fisher(model, [f"{layer}.base_layer.weight"], _task_examples(ctx, ewc), tokenizer.pad_token_id, seed=0)
    assert torch.allclose(ewc.omega[weight], 0.5 * start_omega[weight] + fresh[f"{layer}.base_layer.weight"], rtol=1e-4)
    # Penalty = lam/2 * sum Omega * (scaling B A)^2, through A and B only.
    penalty = ewc.extra_loss(ctx, model, {}, None)
    assert penalty.item() == pytest.approx(_direct_lora_penalty(model, ewc.omega, "task0", lam=2.0), rel=1e-4)
    penalty.backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if "lora_" in n)
    save_file(ewc.state_tensors(), tmp_path / "ewc.safetensors")
    restored = build_strategy({"name": "ewc", "lam": 2.0})
    restored.load_state_tensors(load_file(tmp_path / "ewc.safetensors"))
    restored.on_task_start(ctx)
    assert restored.extra_loss(ctx, model, {}, None).item() == pytest.approx(penalty.item(), rel=1e-6)


def test_ewc_lora_stack_mode_takes_the_fisher_at_the_stacked_weights_and_penalises_only_the_new_adapter(tokenizer):
    from forgetless.adapters import prepare_for_task

    first = _context(make_tiny_lm(len(tokenizer), hidden_size=16), tokenizer, adapter="lora", between_tasks="stack")
    model = prepare_for_task(first.model, first.config, 0)
    perturb(model, scale=0.3)  # task 0's adapter, trained: W = W0 + its update from here on
    ctx = _context(model, tokenizer, adapter="lora", index=1, between_tasks="stack")
    model = prepare_for_task(model, ctx.config, 1)  # task 1: a fresh adapter on top, task 0's stays on
    ctx.model = model
    ewc = build_strategy({"name": "ewc", "lam": 2.0, "samples": 4, "source": "general"})
    ewc.on_task_start(ctx)
    merged = copy.deepcopy(model).merge_and_unload()  # a plain model holding W0 + task 0's update (task 1's is 0)
    examples = protection_examples(ctx, 4, "general", seed=ctx.setup.seed)
    direct = per_sample_fisher(merged, list(ewc.omega), examples, tokenizer.pad_token_id, seed=ctx.setup.seed + 1)
    _assert_close(ewc.omega, direct)
    assert ewc.extra_loss(ctx, model, {}, None).item() == 0.0  # task 1's update is zero at its start
    perturb(model, scale=0.3, seed=2)  # moves only task 1's adapter (the only trainable tensors)
    expected = _direct_lora_penalty(model, ewc.omega, "task1", lam=2.0)
    assert ewc.extra_loss(ctx, model, {}, None).item() == pytest.approx(expected, rel=1e-4)


def _direct_lora_penalty(model, omega, adapter: str, lam: float) -> float:
    """lam/2 * sum Omega * (scaling B A)^2 over `adapter`'s layers, written out from the LoRA tensors."""
    total = 0.0
    for name, module in model.named_modules():
        weight = name.removeprefix("base_model.model.") + ".weight"  # Omega is keyed as under full fine-tuning
        if weight in omega:
            delta = module.scaling[adapter] * module.lora_B[adapter].weight @ module.lora_A[adapter].weight
            total += float((omega[weight] * delta.square()).sum())
    return lam / 2 * total


def _task_examples(ctx, ewc):
    """The examples `consolidate` estimates on under source auto: the task just trained."""
    from forgetless.strategies._common import protection_examples

    return protection_examples(ctx, ewc.samples, "current_task", seed=ctx.setup.seed)


def test_knobs_are_validated():
    with pytest.raises(ForgetlessError, match="fisher"):
        build_strategy({"name": "ewc", "fisher": "exact"})
    with pytest.raises(ForgetlessError, match="gamma"):
        build_strategy({"name": "ewc", "gamma": 1.5})
    with pytest.raises(ForgetlessError, match="source"):
        build_strategy({"name": "ewc", "source": "everything"})


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def test_end_to_end_ewc_keeps_the_weights_closer_to_the_start_than_naive(tmp_path, tokenizer):
    files = {
        "law": _write_jsonl(tmp_path / "law.jsonl", [{"text": f"We the people number {i} ordain this."} for i in range(16)]),
        "pets": _write_jsonl(tmp_path / "pets.jsonl", [{"text": f"My dog number {i} runs in the park."} for i in range(16)]),
    }
    finals, start = {}, None
    for label, spec in (("naive", "naive"), ("ewc", {"name": "ewc", "lam": 1e3, "samples": 4})):
        config = parse_config(
            {
                "model": "tiny",
                "tasks": [{"name": "law", "file": files["law"]}, {"name": "pets", "file": files["pets"]}],
                "strategies": [spec],
                "eval": {"suites": []},
                "train": {"steps": 3, "batch_size": 2, "lr": 1e-2, "max_length": 32, "seed": 0},
                "checkpoints": "last",
            }
        )
        model = make_tiny_lm(len(tokenizer), hidden_size=16)
        start = {n: p.detach().clone() for n, p in model.named_parameters()}
        results = run_continual(config, tmp_path / label, model=model, tokenizer=tokenizer, progress=False)
        finals[label] = (model, results)
    ewc_model, ewc_results = finals["ewc"]
    naive_model, _ = finals["naive"]
    # Distance from the start, weighted by the starting model's Fisher on general text (what ewc protects).
    starting_model = make_tiny_lm(len(tokenizer), hidden_size=16)
    fisher = per_sample_fisher(starting_model, list(start), _general(tokenizer), tokenizer.pad_token_id)

    def distance(model):
        return sum((fisher[n] * (p.detach() - start[n]).square()).sum().item() for n, p in model.named_parameters())

    assert distance(ewc_model) < 0.5 * distance(naive_model)
    assert ewc_results.training[0]["ewc_start_fisher_examples"] == 4
    assert ewc_results.training[1]["ewc_fisher_examples"] == 4
    saved = load_file(tmp_path / "ewc" / "checkpoints" / "final" / "strategy-ewc.safetensors")
    assert "fisher.model.embed_tokens.weight" in saved and "anchor.model.embed_tokens.weight" in saved


def _general(tokenizer):
    from forgetless.data.tasks import general_train_texts
    from forgetless.strategies._common import sample_examples

    ctx = _context(None, tokenizer)
    return sample_examples(ctx, [{"text": t} for t in general_train_texts()], 4, 32, seed=0)
