"""`l2sp`: zero at the starting weights, exactly quadratic away from them, LoRA's update penalised,
saved state, and a tiny end-to-end run that stays closer to the start than naive."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from forgetless.config import parse_config
from forgetless.data.tasks import TrainingTask
from forgetless.errors import ForgetlessError
from forgetless.strategies import build_strategy
from forgetless.strategies.l2sp import DEFAULT_TARGET
from forgetless.training import context_for, run_continual

from .conftest import make_tiny_lm


def _context(model, tokenizer, adapter: str = "full"):
    config = parse_config(
        {
            "model": "tiny",
            "adapter": adapter,
            "lora": {"r": 2, "alpha": 4, "target_modules": ["q_proj", "v_proj"]},
            "tasks": [{"name": "a", "file": "a.jsonl"}],
        }
    )
    task = TrainingTask("a", "text", [{"text": "x y"}], [{"text": "x y"}])
    ctx = context_for(config, model, tokenizer, [task], 0)
    ctx.config = config  # the tests wrap the model in LoRA with prepare_for_task, as the runner does
    return ctx


def _lora_context(tokenizer):
    """A task context whose tiny model is wrapped in a fresh LoRA adapter, as the runner does at a task's start."""
    from forgetless.adapters import prepare_for_task

    ctx = _context(make_tiny_lm(len(tokenizer), hidden_size=16), tokenizer, adapter="lora")
    ctx.model = prepare_for_task(ctx.model, ctx.config, 0)
    return ctx, ctx.model


def test_penalty_is_zero_at_the_start_and_exactly_quadratic(tokenizer, tmp_path):
    model = make_tiny_lm(len(tokenizer), hidden_size=16)
    ctx = _context(model, tokenizer)
    l2sp = build_strategy({"name": "l2sp", "lam": 0.5})
    l2sp.on_task_start(ctx)
    assert l2sp.extra_loss(ctx, model, {}, None).item() == 0.0
    torch.manual_seed(0)
    parameters = dict(model.named_parameters())
    step = {n: 1e-2 * torch.randn_like(p) for n, p in parameters.items()}
    with torch.no_grad():
        for n, p in parameters.items():
            p.add_(step[n])
    penalty = l2sp.extra_loss(ctx, model, {}, None)
    direct = 0.5 / 2 * sum(s.square().sum() for s in step.values())
    assert penalty.item() == pytest.approx(direct.item(), rel=1e-4)
    penalty.backward()  # gradient lam * (theta - theta0)
    name = "model.layers.1.self_attn.o_proj.weight"
    assert torch.allclose(parameters[name].grad, 0.5 * step[name], rtol=1e-3, atol=1e-9)
    with torch.no_grad():
        for n, p in parameters.items():
            p.add_(step[n])
    assert l2sp.extra_loss(ctx, model, {}, None).item() == pytest.approx(4 * penalty.item(), rel=1e-4)
    # The anchor survives a save and load; a second task does not move it.
    save_file(l2sp.state_tensors(), tmp_path / "l2sp.safetensors")
    restored = build_strategy({"name": "l2sp", "lam": 0.5})
    restored.load_state_tensors(load_file(tmp_path / "l2sp.safetensors"))
    restored.on_task_start(ctx)
    assert restored.extra_loss(ctx, model, {}, None).item() == pytest.approx(4 * penalty.item(), rel=1e-6)


def test_under_lora_the_scaled_update_ba_is_penalised(tokenizer):
    ctx, model = _lora_context(tokenizer)
    l2sp = build_strategy({"name": "l2sp", "lam": 3.0})
    l2sp.on_task_start(ctx)
    assert l2sp.extra_loss(ctx, model, {}, None).item() == 0.0  # B = 0 at the start
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_()
    expected = 0.0
    for module in model.modules():
        if hasattr(module, "lora_B") and "task0" in module.lora_B:
            delta = module.scaling["task0"] * module.lora_B["task0"].weight @ module.lora_A["task0"].weight
            expected += delta.square().sum()
    penalty = l2sp.extra_loss(ctx, model, {}, None)
    assert penalty.item() == pytest.approx(1.5 * expected.item(), rel=1e-4)
    penalty.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for n, p in model.named_parameters() if "lora_" in n)
    assert l2sp.state_tensors() == {}  # nothing to save: the base is the anchor


def test_lam_is_validated():
    with pytest.raises(ForgetlessError, match="lam"):
        build_strategy({"name": "l2sp", "lam": -1})
    with pytest.raises(ForgetlessError, match="protects nothing"):
        build_strategy({"name": "l2sp", "lam": 0.0})
    specs = ("l2sp", {"name": "l2sp", "lam": 0.5}, {"name": "l2sp", "target": 0.05})
    bare, priced, capped = (build_strategy(spec) for spec in specs)
    assert (bare.lam, bare.target) == (0.0, DEFAULT_TARGET)  # the default: the cap alone
    assert (priced.lam, priced.target) == (0.5, None)  # lam named alone: the penalty alone
    assert (capped.lam, capped.target) == (0.0, 0.05)
    assert build_strategy({"name": "l2sp", "lam": 0.5, "target": 0.05}).lam == 0.5


def _pull_back_checks(before: dict, after: dict, anchors: dict, target: float) -> int:
    """Each tensor past target * ||W0|| ends on that sphere, in the direction it had; the others do not move."""
    moved = 0
    for name, anchor in anchors.items():
        change, norm = before[name] - anchor, anchor.norm()
        if change.norm() > target * norm:
            moved += 1
            expected = anchor + change * (target * norm / change.norm())
            assert torch.allclose(after[name], expected, rtol=1e-5, atol=1e-7), name
            assert (after[name] - anchor).norm().item() == pytest.approx(target * norm.item(), rel=1e-5)
        else:
            assert torch.equal(after[name], before[name]), name
    return moved


def test_the_cap_puts_each_tensor_past_it_back_on_its_sphere(tokenizer):
    model = make_tiny_lm(len(tokenizer), hidden_size=16)
    ctx = _context(model, tokenizer)
    l2sp = build_strategy({"name": "l2sp", "target": 0.05})
    l2sp.on_task_start(ctx)
    parameters = dict(model.named_parameters())
    anchors = {n: p.detach().clone() for n, p in parameters.items()}
    torch.manual_seed(0)
    with torch.no_grad():  # a tenth of the tensors move 3x farther than the cap, the rest a fifth of it
        for i, (n, p) in enumerate(parameters.items()):
            scale = 3 * 0.05 if i % 10 == 0 else 0.2 * 0.05
            direction = torch.randn_like(p)
            p.add_(direction * scale * p.norm() / direction.norm())
    before = {n: p.detach().clone() for n, p in parameters.items()}
    l2sp.after_optimizer_step(ctx, model)
    after = {n: p.detach().clone() for n, p in parameters.items()}
    assert _pull_back_checks(before, after, anchors, 0.05) == len(range(0, len(parameters), 10))
    assert l2sp._projected_steps == 1 and l2sp._largest_ratio == pytest.approx(0.15, rel=1e-4)
    l2sp.after_optimizer_step(ctx, model)  # inside the ball now: nothing moves
    assert all(torch.equal(p, after[n]) for n, p in parameters.items()) and l2sp._projected_steps == 1
    l2sp.consolidate(ctx)  # the task's counts go to the log, and the next task counts from zero
    assert (ctx.log["l2sp_projected_steps"], ctx.log["l2sp_largest_relative_distance_end"]) == (1, pytest.approx(0.05, rel=1e-4))
    assert (l2sp._projected_steps, l2sp._largest_ratio) == (0, 0.0)


def test_target_scale_caps_the_matching_tensors_at_their_multiple_and_strengthen_keeps_the_ratio(tokenizer):
    model = make_tiny_lm(len(tokenizer), hidden_size=16)
    ctx = _context(model, tokenizer)
    # layer 0's v and o at a fifth of the cap; the first pattern that matches wins, so layer 0's o is not at 3x.
    scale = {r"layers\.0\.self_attn\.(v|o)_proj": 0.2, r"o_proj": 3.0}
    l2sp = build_strategy({"name": "l2sp", "target": 0.05, "target_scale": scale})
    l2sp.on_task_start(ctx)
    parameters = dict(model.named_parameters())
    anchors = {n: p.detach().clone() for n, p in parameters.items()}
    caps = {n: 0.05 * (0.2 if "layers.0.self_attn.v_proj" in n or "layers.0.self_attn.o_proj" in n
                       else 3.0 if "o_proj" in n else 1.0) for n in parameters}
    assert sorted(set(caps.values())) == [pytest.approx(0.01), 0.05, pytest.approx(0.15)]
    torch.manual_seed(0)
    with torch.no_grad():  # every tensor at 2x its default cap: past 0.01 and 0.05, inside 0.15
        for p in parameters.values():
            direction = torch.randn_like(p)
            p.add_(direction * 0.1 * p.norm() / direction.norm())
    before = {n: p.detach().clone() for n, p in parameters.items()}
    l2sp.after_optimizer_step(ctx, model)
    after = {n: p.detach().clone() for n, p in parameters.items()}
    for cap in set(caps.values()):
        group = {n: a for n, a in anchors.items() if caps[n] == cap and a.norm() > 0}
        moved = _pull_back_checks({n: before[n] for n in group}, {n: after[n] for n in group}, group, cap)
        assert moved == (0 if cap > 0.1 else len(group)) and group, cap
    assert l2sp.strengthen(2.0) == (0.05, 0.025)  # the budget's move: every cap halves, the ratios stay
    l2sp.after_optimizer_step(ctx, model)
    for name, anchor in anchors.items():  # all on the halved spheres: 0.075 is inside the 0.1 the 3x group was at
        if anchor.norm() > 0:
            ratio = ((parameters[name] - anchor).norm() / anchor.norm()).item()
            assert ratio == pytest.approx(caps[name] / 2, rel=1e-4), name


def test_under_lora_target_scale_names_the_base_weights_of_adapted_layers(tokenizer):
    ctx, model = _lora_context(tokenizer)  # q_proj and v_proj adapted
    with pytest.raises(ForgetlessError, match="'embed' matches no trained weight"):
        build_strategy({"name": "l2sp", "target_scale": {"embed": 0.5}}).on_task_start(ctx)
    l2sp = build_strategy({"name": "l2sp", "target": 0.05, "target_scale": {r"v_proj\.weight$": 0.2}})
    l2sp.on_task_start(ctx)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=10.0)  # every update far past both caps
    l2sp.after_optimizer_step(ctx, model)
    layers = {n: m for n, m in model.named_modules() if hasattr(m, "lora_B") and "task0" in m.lora_B}
    assert {n.rsplit(".", 1)[-1] for n in layers} == {"q_proj", "v_proj"}
    for name, module in layers.items():
        ratio = (module.get_delta_weight("task0").norm() / module.base_layer.weight.norm()).item()
        assert ratio == pytest.approx(0.01 if name.endswith("v_proj") else 0.05, rel=1e-4), name


def test_target_scale_is_validated():
    with pytest.raises(ForgetlessError, match="target_scale.*not a regular expression"):
        build_strategy({"name": "l2sp", "target_scale": {"layers\\.(": 0.5}})
    with pytest.raises(ForgetlessError, match="target_scale.*must be > 0"):
        build_strategy({"name": "l2sp", "target_scale": {"v_proj": 0.0}})
    with pytest.raises(ForgetlessError, match="give a target too"):
        build_strategy({"name": "l2sp", "lam": 0.5, "target_scale": {"v_proj": 0.5}})
    assert build_strategy({"name": "l2sp", "target_scale": {"v_proj": 0.5}}).target == DEFAULT_TARGET


def test_a_target_scale_pattern_matching_no_weight_is_refused_at_the_start(tokenizer):
    ctx = _context(make_tiny_lm(len(tokenizer), hidden_size=16), tokenizer)
    l2sp = build_strategy({"name": "l2sp", "target_scale": {"v_proj": 0.5, "vproj": 0.5}})
    with pytest.raises(ForgetlessError, match="'vproj' matches no trained weight"):
        l2sp.on_task_start(ctx)


def test_a_bf16_tensor_put_back_stays_inside_and_a_zero_start_is_left_free(tokenizer):
    # bf16's rounding error is about a tenth of a 1 % cap: rounding away from the start could leave the ball.
    model = make_tiny_lm(len(tokenizer), hidden_size=16).to(torch.bfloat16)
    parameters = dict(model.named_parameters())
    zero = "model.layers.0.self_attn.o_proj.weight"
    with torch.no_grad():
        parameters[zero].zero_()
    ctx = _context(model, tokenizer)
    l2sp = build_strategy("l2sp")  # the default cap, 0.01
    l2sp.on_task_start(ctx)
    anchors = {n: p.detach().float().clone() for n, p in parameters.items()}
    torch.manual_seed(0)
    with torch.no_grad():
        for p in parameters.values():
            p.add_(0.05 * torch.randn_like(p))  # far past 1 % of every norm
    l2sp.after_optimizer_step(ctx, model)
    ratios = {n: float((p.float() - anchors[n]).norm() / anchors[n].norm()) for n, p in parameters.items() if n != zero}
    # Inside the ball, short of its sphere by at most a bf16 step per entry (a change of 1 % is a few such steps).
    assert max(ratios.values()) <= 0.01 * (1 + 1e-5) and min(ratios.values()) > 0.005
    assert parameters[zero].abs().max() > 0.01  # no norm to be relative to: not capped
    before = {n: p.detach().clone() for n, p in parameters.items()}
    l2sp.after_optimizer_step(ctx, model)  # everything already inside: nothing moves, no step counted
    assert all(torch.equal(p, before[n]) for n, p in parameters.items()) and l2sp._projected_steps == 1


def test_under_lora_the_cap_scales_each_update_past_it(tokenizer):
    ctx, model = _lora_context(tokenizer)
    l2sp = build_strategy({"name": "l2sp", "target": 0.05})
    l2sp.on_task_start(ctx)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=1e-4 if "q_proj" in name else 10.0)  # q's update stays inside, v's goes far outside
    layers = {n: m for n, m in model.named_modules() if hasattr(m, "lora_B") and "task0" in m.lora_B}

    def updates():
        return {n: m.get_delta_weight("task0").detach().clone() for n, m in layers.items()}

    norms = {n: m.base_layer.weight.norm() for n, m in layers.items()}
    before = updates()
    assert any(before[n].norm() < 0.05 * norms[n] for n in layers) and any(before[n].norm() > 0.05 * norms[n] for n in layers)
    l2sp.after_optimizer_step(ctx, model)
    after = updates()
    for name in layers:  # as the full-weight check, with the base weight's norm as ||W0||
        if before[name].norm() > 0.05 * norms[name]:
            assert after[name].norm().item() == pytest.approx(0.05 * norms[name].item(), rel=1e-4)
            assert torch.allclose(after[name], before[name] * (after[name].norm() / before[name].norm()), rtol=1e-4, atol=1e-7)
        else:
            assert torch.equal(after[name], before[name])


def test_end_to_end_l2sp_stays_closer_to_the_start_than_naive(tmp_path, tokenizer):
    files = []
    for name, text in (("law", "We the people number {} ordain this."), ("pets", "My dog number {} runs in the park.")):
        path = tmp_path / f"{name}.jsonl"
        path.write_text("".join(json.dumps({"text": text.format(i)}) + "\n" for i in range(16)), encoding="utf-8")
        files.append({"name": name, "file": str(path)})
    distances = {}
    for spec in ("naive", {"name": "l2sp", "lam": 10.0}):
        config = parse_config(
            {
                "model": "tiny",
                "tasks": files,
                "strategies": [spec],
                "eval": {"suites": []},
                "train": {"steps": 3, "batch_size": 2, "lr": 1e-2, "max_length": 32, "seed": 0},
                "checkpoints": "none",
            }
        )
        model = make_tiny_lm(len(tokenizer), hidden_size=16)
        start = {n: p.detach().clone() for n, p in model.named_parameters()}
        run_continual(config, tmp_path / str(len(distances)), model=model, tokenizer=tokenizer, progress=False)
        distances[str(spec)] = sum((p.detach() - start[n]).square().sum().item() for n, p in model.named_parameters())
    assert distances[str({"name": "l2sp", "lam": 10.0})] < 0.7 * distances["naive"]
