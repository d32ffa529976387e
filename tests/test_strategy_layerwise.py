"""`layerwise`: importance-weighted quadratic penalty with layer coefficients, checked against direct computations."""


import pytest
import torch

from forgetless.data.tasks import load_task
from forgetless.errors import ForgetlessError
from forgetless.strategies import OptimizerStep, build_strategy
from forgetless.strategies._common import block_index, protection_examples
from forgetless.strategies.layerwise import layer_coefficients, squared_gradient_importance, trained_tokens
from forgetless.task_weights import trained_parameters
from forgetless.training import context_for, run_continual

from .conftest import make_tiny_lm, mean_token_nll, tiny_config


def make_context(config, model, tokenizer, task_index=0):
    tasks = [load_task(t, seed=0) for t in config.tasks]
    return context_for(config, model, tokenizer, tasks, task_index)


def random_drift(model, scale=1e-2, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return {name: scale * torch.randn(p.shape, generator=generator) for name, p in trained_parameters(model).items()}


def add(model, drift, factor=1.0):
    with torch.no_grad():
        for name, p in trained_parameters(model).items():
            if name in drift:
                p.add_(drift[name], alpha=factor)


def direct_penalty(strategy, drift):
    """lam * sum_l alpha_l L_l with L_l = sum_{i in l} Omega_i d_i^2, alpha_l = n * L_l / sum L, from the raw state."""
    per_block: dict = {}
    for name, index in strategy.index.items():
        d = drift[name].reshape(-1)[index.long()]
        per_block[block_index(name)] = per_block.get(block_index(name), 0.0) + float(
            (strategy.importance[name].float() * d.square()).sum()
        )
    values = torch.tensor(list(per_block.values()), dtype=torch.float64)
    return strategy.lam * float((len(values) * values / values.sum() * values).sum())


@pytest.fixture
def prepared(tiny_lm, tokenizer, task_files):
    for p in tiny_lm.parameters():
        p.requires_grad_(True)
    ctx = make_context(tiny_config(task_files), tiny_lm, tokenizer)
    strategy = build_strategy({"name": "layerwise", "lam": 2.0, "steps": 2, "batch_size": 4})
    strategy.on_task_start(ctx)
    return ctx, strategy


def test_penalty_is_zero_at_the_anchor_and_quadratic_away_from_it(prepared):
    ctx, strategy = prepared
    assert strategy.penalty().item() == 0.0
    drift = random_drift(ctx.model)
    add(ctx.model, drift)
    once = strategy.penalty().item()
    assert once > 0
    assert once == pytest.approx(direct_penalty(strategy, drift), rel=1e-4)
    add(ctx.model, drift)  # twice the drift: four times the penalty (alpha depends only on the shape)
    assert strategy.penalty().item() == pytest.approx(4 * once, rel=1e-4)


def test_importance_is_non_negative_sparse_and_compact(prepared):
    ctx, strategy = prepared
    for name, p in trained_parameters(ctx.model).items():
        index, values = strategy.index[name], strategy.importance[name]
        assert index.dtype == torch.int32 and values.dtype == torch.bfloat16
        assert len(index) == max(1, round(0.1 * p.numel()))
        assert torch.all(values >= 0)
    assert 0 < ctx.log["layerwise_importance_mass_kept"] <= 1
    numel = sum(p.numel() for p in trained_parameters(ctx.model).values())
    assert strategy.state_bytes() == pytest.approx(0.1 * numel * 6, rel=0.01)  # int32 + bf16 per kept entry


def test_importance_is_token_count_times_squared_batch_gradient(tiny_lm, tokenizer, task_files):
    ctx = make_context(tiny_config(task_files), tiny_lm, tokenizer)
    features = protection_examples(ctx, 3, "general")
    weights = {"norm": tiny_lm.model.norm.weight, "q": tiny_lm.model.layers[1].self_attn.q_proj.weight}
    omega = squared_gradient_importance(tiny_lm, weights, features, 3, tokenizer.pad_token_id)
    from forgetless.strategies._common import batches

    batch = next(batches(features, 3, tokenizer.pad_token_id))
    tiny_lm.zero_grad()
    for w in weights.values():
        w.requires_grad_(True)
    logits = tiny_lm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    mean_token_nll(logits, batch["labels"]).backward()
    tokens = int((batch["labels"][:, 1:] != -100).sum())
    for name, w in weights.items():
        assert torch.allclose(omega[name], tokens * w.grad.square(), rtol=1e-4, atol=1e-12)


def test_importance_is_larger_for_weights_that_matter_on_the_data(tiny_lm, tokenizer, task_files):
    """Embedding rows of tokens in the data get input and target gradients; rows of absent tokens almost none."""
    ctx = make_context(tiny_config(task_files), tiny_lm, tokenizer)
    features = protection_examples(ctx, 8, "general")
    embedding = tiny_lm.get_input_embeddings().weight
    omega = squared_gradient_importance(tiny_lm, {"embed": embedding}, features, 4, tokenizer.pad_token_id)["embed"]
    seen = sorted({t for f in features for t in f["input_ids"]})
    unseen = sorted(set(range(1000, 2000)) - set(seen))
    assert torch.all(omega >= 0)
    assert omega[seen].mean() > 100 * omega[unseen].mean()


def test_the_importance_examples_follow_the_run_seed_unless_given(tiny_lm, tokenizer, task_files, monkeypatch):
    """The importance pass draws its examples at the run's training seed (plus the task index), or at `seed`."""
    seeds = []

    def spy(ctx, count, source="auto", seed=0):
        seeds.append(seed)
        return protection_examples(ctx, count, source, seed)

    monkeypatch.setattr("forgetless.strategies.layerwise.protection_examples", spy)
    for run_seed, spec in [(0, {}), (2, {}), (2, {"seed": 0})]:
        ctx = make_context(tiny_config(task_files, train={"steps": 4, "batch_size": 4, "lr": 1e-2, "max_length": 64,
                                                          "seed": run_seed}), tiny_lm, tokenizer)
        build_strategy({"name": "layerwise", "steps": 1, "batch_size": 2, **spec}).on_task_start(ctx)
    assert seeds == [0, 2, 0]


def test_layer_coefficients_follow_each_layers_share():
    assert torch.allclose(layer_coefficients(torch.tensor([1.0, 3.0]), "adaptive"), torch.tensor([0.5, 1.5]))
    assert torch.allclose(layer_coefficients(torch.tensor([1.0, 3.0]), "uniform"), torch.tensor([1.0, 1.0]))
    assert torch.allclose(layer_coefficients(torch.zeros(3), "adaptive"), torch.ones(3))  # at the anchor


def test_a_single_drifted_block_takes_all_the_weight(prepared):
    ctx, strategy = prepared
    drift = {name: d for name, d in random_drift(ctx.model).items() if block_index(name) == 0}
    add(ctx.model, drift)
    total = strategy.penalty().item()
    alpha = strategy.last_alpha
    groups = strategy._groups
    assert alpha.max().item() == pytest.approx(groups) and int((alpha > 0).sum()) == 1
    block0 = strategy.layer_penalties()[strategy._group[next(iter(drift))]].item()
    assert total == pytest.approx(strategy.lam * groups * block0, rel=1e-5)
    uniform = build_strategy({"name": "layerwise", "lam": 2.0, "layer_weighting": "uniform"})
    uniform.load_state_tensors(strategy.state_tensors())
    add(ctx.model, drift, -1.0)
    uniform.on_task_start(ctx)
    add(ctx.model, drift)
    assert uniform.penalty().item() == pytest.approx(total / groups, rel=1e-5)


def test_saved_and_loaded_state_gives_the_same_penalty(prepared, tmp_path, monkeypatch):
    from safetensors.torch import load_file, save_file

    ctx, strategy = prepared
    save_file({k: v.contiguous() for k, v in strategy.state_tensors().items()}, tmp_path / "state.safetensors")
    restored = build_strategy({"name": "layerwise", "lam": 2.0})
    restored.load_state_tensors(load_file(tmp_path / "state.safetensors"))

    def no_recording(*args, **kwargs):
        raise AssertionError("a loaded importance must not be recorded again")

    monkeypatch.setattr("forgetless.strategies.layerwise.squared_gradient_importance", no_recording)
    restored.on_task_start(ctx)  # the anchor is the model now, as for the original
    add(ctx.model, random_drift(ctx.model))
    assert restored.penalty().item() == pytest.approx(strategy.penalty().item(), rel=1e-6)


def test_lora_penalty_is_on_the_adapter_update(tokenizer, task_files):
    from forgetless.adapters import prepare_for_task

    config = tiny_config(task_files, adapter="lora", lora={"r": 2, "alpha": 4, "target_modules": ["q_proj", "v_proj"]})
    model = prepare_for_task(make_tiny_lm(len(tokenizer)), config, 0)
    ctx = make_context(config, model, tokenizer)
    strategy = build_strategy({"name": "layerwise", "lam": 1.0, "steps": 1, "layer_weighting": "uniform"})
    strategy.on_task_start(ctx)
    assert set(strategy.index) == {f"model.layers.{i}.self_attn.{m}.weight" for i in range(2) for m in ("q_proj", "v_proj")}
    assert strategy.penalty().item() == 0.0  # B = 0: no update yet
    expected = 0.0
    with torch.no_grad():
        for name, module in model.named_modules():
            if hasattr(module, "lora_B") and "task0" in module.lora_B:
                module.lora_B["task0"].weight.normal_(0, 0.1)
                delta = (module.lora_B["task0"].weight @ module.lora_A["task0"].weight * module.scaling["task0"]).reshape(-1)
                key = name.removeprefix("base_model.model.") + ".weight"
                expected += float((strategy.importance[key].float() * delta[strategy.index[key].long()] ** 2).sum())
    assert strategy.penalty().item() == pytest.approx(expected, rel=1e-4)


def _kept_ratios(model, start: dict[str, torch.Tensor], index: dict[str, torch.Tensor]) -> dict[str, float]:
    """||(theta - theta*)_kept|| / ||theta*_kept|| per tensor, straight from the weights (fp32)."""
    ratios = {}
    with torch.no_grad():
        for name, weight in trained_parameters(model).items():
            kept = index[name].long()
            anchor = start[name].reshape(-1)[kept].float()
            ratios[name] = float((weight.reshape(-1)[kept].float() - anchor).norm() / anchor.norm())
    return ratios


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_distance_cap_puts_each_tensors_kept_drift_back_on_its_sphere(tiny_lm, tokenizer, task_files, dtype):
    model = tiny_lm.to(dtype)
    for p in model.parameters():
        p.requires_grad_(True)
    ctx = make_context(tiny_config(task_files), model, tokenizer)
    strategy = build_strategy({"name": "layerwise", "lam": 0.0, "distance": 0.02, "steps": 2, "batch_size": 4})
    strategy.on_task_start(ctx)
    start = {n: p.detach().clone() for n, p in trained_parameters(model).items()}
    drift = random_drift(model, scale=1e-2)
    add(model, drift)
    moved = {n: p.detach().clone() for n, p in trained_parameters(model).items()}
    before = _kept_ratios(model, start, strategy.index)
    assert max(before.values()) > 0.021 and min(before.values()) < 0.019  # some tensors past the cap, some inside
    strategy.after_optimizer_step(ctx, model)
    after = _kept_ratios(model, start, strategy.index)
    for name, ratio in before.items():
        weight = dict(trained_parameters(model))[name].detach().reshape(-1)
        kept = strategy.index[name].long()
        if ratio > 0.02:  # scaled straight back toward the start, onto the sphere (bf16: rounded toward the start)
            assert after[name] <= 0.02 * (1 + 1e-5)
            # bf16 holds a weight to about 0.4 % of itself, a fifth of a 2 % drift: rounding toward the start ends inside.
            assert after[name] == pytest.approx(0.02, rel=1e-4 if dtype == torch.float32 else 0.15)
            anchor = start[name].reshape(-1)[kept].float()
            expected = anchor + (moved[name].reshape(-1)[kept].float() - anchor) * 0.02 / ratio
            if dtype == torch.float32:
                torch.testing.assert_close(weight[kept], expected, rtol=1e-5, atol=1e-7)
        else:
            assert torch.equal(weight[kept], moved[name].reshape(-1)[kept])  # inside: not touched
        others = torch.ones_like(weight, dtype=torch.bool)
        others[kept] = False
        assert torch.equal(weight[others], moved[name].reshape(-1)[others])  # entries it does not keep never move
    assert strategy._projected_steps == 1
    strategy.after_optimizer_step(ctx, model)  # already on or inside every sphere: not another move
    assert strategy._projected_steps == 1
    strategy.consolidate(ctx)
    assert ctx.log["layerwise_projected_steps"] == 1
    assert ctx.log["layerwise_largest_relative_distance_seen"] == pytest.approx(max(before.values()), rel=1e-4)
    assert strategy._projected_steps == 0 and strategy._largest_ratio == 0.0  # counted per task


def test_the_distance_cap_is_a_strength_and_refuses_to_protect_nothing():
    capped = build_strategy({"name": "layerwise", "lam": 0.0, "distance": 0.04})
    assert capped.strength_in_use.knob == "distance"
    assert capped.strengthen(2.0) == (0.04, 0.02) and capped.distance == 0.02
    with pytest.raises(ForgetlessError, match="protects nothing"):
        build_strategy({"name": "layerwise", "lam": 0.0})
    # Both caps: a budget tightens the rise (`target`, listed first); the distance stays as given.
    both = build_strategy({"name": "layerwise", "lam": 0.0, "target": 0.004, "distance": 0.04})
    assert both.strength_in_use.knob == "target"


def test_under_lora_the_distance_cap_scales_each_update_past_it(tokenizer, task_files):
    from forgetless.adapters import prepare_for_task

    config = tiny_config(task_files, adapter="lora", lora={"r": 2, "alpha": 4, "target_modules": ["q_proj", "v_proj"]})
    model = prepare_for_task(make_tiny_lm(len(tokenizer)), config, 0)
    ctx = make_context(config, model, tokenizer)
    strategy = build_strategy({"name": "layerwise", "lam": 0.0, "distance": 0.05, "steps": 1})
    strategy.on_task_start(ctx)
    layers = {name.removeprefix("base_model.model.") + ".weight": module for name, module in model.named_modules()
              if hasattr(module, "lora_B") and "task0" in module.lora_B}

    def ratios() -> dict[str, float]:  # ||(scaling B A)_kept|| / ||W_base,kept|| from the adapter's own matrices
        with torch.no_grad():
            out = {}
            for key, module in layers.items():
                kept = strategy.index[key].long()
                delta = (module.lora_B["task0"].weight @ module.lora_A["task0"].weight * module.scaling["task0"]).reshape(-1)
                out[key] = float(delta[kept].norm() / module.base_layer.weight.reshape(-1)[kept].norm())
            return out

    torch.manual_seed(0)
    with torch.no_grad():
        for key, module in layers.items():
            module.lora_B["task0"].weight.normal_(0, 0.5 if "q_proj" in key else 1e-4)
    before = ratios()
    assert all(r > 0.05 for n, r in before.items() if "q_proj" in n) and all(r < 0.05 for n, r in before.items() if "v_proj" in n)
    strategy.after_optimizer_step(ctx, model)
    after = ratios()
    for name, ratio in before.items():
        assert after[name] == pytest.approx(min(ratio, 0.05), rel=1e-4)


def _spy_first_index(monkeypatch):
    """Capture the indices layerwise protects during the first task (before later tasks add their own)."""
    from forgetless.strategies import StrategyStack

    captured: dict = {}
    real = StrategyStack.from_specs

    def spy(specs, **kwargs):
        stack = real(specs, **kwargs)
        for strategy in [s for s in stack.strategies if s.name == "layerwise"]:
            original = strategy.on_task_start

            def on_task_start(ctx, original=original, strategy=strategy):
                original(ctx)
                if ctx.task_index == 0:
                    captured.update({name: index.clone() for name, index in strategy.index.items()})

            strategy.on_task_start = on_task_start
        return stack

    monkeypatch.setattr(StrategyStack, "from_specs", staticmethod(spy))
    return captured


def test_end_to_end_keeps_important_weights_closer_than_naive(tmp_path, tokenizer, task_files, monkeypatch):
    initial = {n: p.detach().clone() for n, p in make_tiny_lm(len(tokenizer)).named_parameters()}
    first_index = _spy_first_index(monkeypatch)
    protected_model = make_tiny_lm(len(tokenizer))
    config = tiny_config(task_files, strategies=[{"name": "layerwise", "lam": 1e6, "steps": 2}])
    results = run_continual(config, tmp_path / "lw", model=protected_model, tokenizer=tokenizer, progress=False)
    naive_model = make_tiny_lm(len(tokenizer))
    run_continual(tiny_config(task_files), tmp_path / "naive", model=naive_model, tokenizer=tokenizer, progress=False)

    def protected_drift(model):  # squared drift from the start at the entries protected in the first task
        params = {name: p.detach() for name, p in model.named_parameters()}
        return sum(float((params[n] - initial[n]).reshape(-1)[i.long()].square().sum()) for n, i in first_index.items())

    assert protected_drift(protected_model) < 0.25 * protected_drift(naive_model)
    first = results.training[0]
    assert first["layerwise_importance_seconds"] > 0 and first["layerwise_state_bytes"] > 0
    assert first["layerwise_importance_training_steps"] == 2  # the task's importance came from its last 2 steps


def _train_by_hand(ctx, strategy, feature_batches):
    """Forward, CE + penalty, backward, after_backward; no optimiser step, so the weights stay where they are."""
    for batch in feature_batches:
        ctx.model.zero_grad()
        outputs = ctx.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        loss = mean_token_nll(outputs.logits, batch["labels"]) + strategy.extra_loss(ctx, ctx.model, batch, outputs)
        loss.backward()
        strategy.after_backward(ctx, ctx.model, OptimizerStep(trained_tokens(batch["labels"])))
    ctx.model.zero_grad()


@pytest.mark.parametrize("lam", [2.0, 1e6])
def test_task_importance_is_the_last_steps_cross_entropy_gradients(prepared, monkeypatch, lam):
    """Training-time Omega = mean over the last `steps` steps of n_b g_b^2, g_b of the CE alone (penalty removed),
    also where the penalty's gradient dwarfs the cross-entropy's (lam 1e6: no cancellation may eat the latter)."""
    from forgetless.strategies._common import batches

    ctx, strategy = prepared  # steps=2; the run config trains 4 steps per task
    strategy.set_knob("lam", lam)
    add(ctx.model, random_drift(ctx.model, scale=0.05))  # off the anchor: the penalty has a real gradient
    features = protection_examples(ctx, 16, "current_task", seed=3)
    feature_batches = list(batches(features, 4, ctx.tokenizer.pad_token_id))
    _train_by_hand(ctx, strategy, feature_batches)
    assert strategy._recorded_steps == 2
    weights = trained_parameters(ctx.model)
    expected = {name: torch.zeros_like(p) for name, p in weights.items()}
    for batch in feature_batches[2:]:  # the last two steps only
        ctx.model.zero_grad()
        logits = ctx.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        mean_token_nll(logits, batch["labels"]).backward()
        tokens = int((batch["labels"][:, 1:] != -100).sum())
        for name, p in weights.items():
            expected[name] += tokens * p.grad.square() / 2
    ctx.model.zero_grad()
    for name, p in weights.items():
        recorded = strategy._recorded[name] / strategy._recorded_steps
        if lam < 100:
            assert torch.allclose(recorded, expected[name], rtol=1e-3, atol=1e-6 * float(expected[name].abs().max())), name
        else:  # .grad holds g = CE + p in fp32, so where p dwarfs the CE the CE is known only to fp32's error of p:
            # entrywise a few % off, but never negative (n (g - p)^2, not n g^2 + n ((g - p)^2 - g^2)) and its mass right.
            assert float(recorded.min()) >= 0.0, name
            assert float(recorded.sum()) == pytest.approx(float(expected[name].sum()), rel=1e-2), name

    def no_pass(*args, **kwargs):
        raise AssertionError("full fine-tuning reads the task's importance off its training steps")

    monkeypatch.setattr("forgetless.strategies.layerwise.squared_gradient_importance", no_pass)
    before = {name: values.clone() for name, values in strategy.importance.items()}
    strategy.consolidate(ctx)
    assert ctx.log["layerwise_importance_training_steps"] == 2
    assert any(not torch.equal(before[name], strategy.importance[name]) for name in before)


def test_task_importance_pass_mode_takes_one_more_pass(tiny_lm, tokenizer, task_files, monkeypatch):
    import forgetless.strategies.layerwise as layerwise

    for p in tiny_lm.parameters():
        p.requires_grad_(True)
    ctx = make_context(tiny_config(task_files), tiny_lm, tokenizer)
    strategy = build_strategy({"name": "layerwise", "steps": 2, "task_importance": "pass"})
    calls = []
    real = layerwise.squared_gradient_importance
    monkeypatch.setattr(layerwise, "squared_gradient_importance", lambda *a, **k: calls.append(1) or real(*a, **k))
    strategy.on_task_start(ctx)
    from forgetless.strategies._common import batches

    _train_by_hand(ctx, strategy, list(batches(protection_examples(ctx, 16, "current_task"), 4, tokenizer.pad_token_id)))
    assert strategy._recorded_steps == 0
    strategy.consolidate(ctx)
    assert len(calls) == 2  # general text before the task, the task after it
    from forgetless.errors import ForgetlessError

    with pytest.raises(ForgetlessError, match="task_importance"):
        build_strategy({"name": "layerwise", "task_importance": "sometimes"})
