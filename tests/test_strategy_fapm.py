"""`fapm`: forgetting-aware pruning of the task vector, checked against hand and direct computations."""


import pytest
import torch

from forgetless.adapters import prepare_for_task
from forgetless.data.tasks import load_task
from forgetless.strategies import build_strategy
from forgetless.strategies._common import block_index
from forgetless.strategies.fapm import fapm_scores, keep_mask
from forgetless.task_weights import trained_parameters
from forgetless.training import context_for, run_continual

from .conftest import make_tiny_lm, tiny_config


def make_context(config, model, tokenizer):
    tasks = [load_task(t, seed=0) for t in config.tasks]
    return context_for(config, model, tokenizer, tasks, 0)


def test_score_matches_a_hand_computation():
    pre = torch.tensor([[1.0, -2.0], [0.5, 0.0]])
    tau = torch.tensor([[0.1, 0.1], [-0.2, 0.3]])
    mean = 3.5 / 4  # mean |W_pre|
    expected = torch.tensor([
        [0.1 - mean * 0.1 / 1.0, 0.1 - mean * 0.1 / 2.0],
        [0.2 - mean * 0.2 / 0.5, 0.3 - mean * 0.3 / (mean * 1e-6)],  # zero weight: |W_pre| floored
    ])
    assert torch.allclose(fapm_scores(pre, tau), expected, rtol=1e-5)
    assert fapm_scores(pre, tau)[1, 1] < fapm_scores(pre, tau).flatten()[:3].min()  # pruned first
    # An all-zero tensor has no relative term: the score is |tau|.
    assert torch.allclose(fapm_scores(torch.zeros(3), torch.tensor([1.0, -2.0, 0.5])), torch.tensor([1.0, 2.0, 0.5]))


def test_keep_mask_selects_exactly_the_top_fraction():
    scores = torch.tensor([0.3, -1.0, 2.0, 0.1, 5.0, 0.0, -0.5, 1.0])
    mask = keep_mask(scores, 0.25)
    assert mask.tolist() == [False, False, True, False, True, False, False, False]


def test_pruning_keeps_the_fraction_and_restores_pruned_entries(tiny_lm, tokenizer, task_files):
    for p in tiny_lm.parameters():
        p.requires_grad_(True)
    ctx = make_context(tiny_config(task_files), tiny_lm, tokenizer)
    strategy = build_strategy({"name": "fapm", "keep": 0.25})
    strategy.on_task_start(ctx)
    pre = {n: p.detach().clone() for n, p in trained_parameters(tiny_lm).items()}
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in tiny_lm.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=generator))
    finetuned = {n: p.detach().clone() for n, p in trained_parameters(tiny_lm).items()}
    strategy.transform_weights(ctx)
    pruned_tensors = 0
    for name, p in trained_parameters(tiny_lm).items():
        if p.dim() == 2 and block_index(name) is not None:
            pruned_tensors += 1
            kept = p == finetuned[name]
            assert int(kept.sum()) == round(0.25 * p.numel())
            assert torch.equal(p[~kept], pre[name][~kept])  # pruned entries are exactly the pretrained value
            direct = keep_mask(fapm_scores(pre[name], finetuned[name] - pre[name]), 0.25)
            assert torch.equal(kept, direct)
        else:  # embeddings (tied head) and norms keep their whole update by default
            assert torch.equal(p, finetuned[name])
    assert pruned_tensors == 14  # 2 blocks x (q, k, v, o, gate, up, down)
    assert ctx.log["fapm_kept_fraction"] == pytest.approx(0.25, abs=1e-3)
    assert ctx.log["fapm_tensors"] == 14
    assert 0.25 < ctx.log["fapm_kept_update_norm_fraction"] < 1


def test_lora_prunes_the_merged_update_and_zeroes_the_adapter(tokenizer, task_files):
    config = tiny_config(task_files, adapter="lora", lora={"r": 2, "alpha": 4, "target_modules": ["q_proj", "v_proj"]})
    model = prepare_for_task(make_tiny_lm(len(tokenizer)), config, 0)
    ctx = make_context(config, model, tokenizer)
    strategy = build_strategy({"name": "fapm", "keep": 0.5})
    strategy.on_task_start(ctx)
    expected = {}
    with torch.no_grad():
        for name, module in model.named_modules():
            if hasattr(module, "lora_B") and "task0" in module.lora_B:
                module.lora_B["task0"].weight.normal_(0, 0.1)
                pre = module.base_layer.weight.detach().clone()
                delta = module.lora_B["task0"].weight @ module.lora_A["task0"].weight * module.scaling["task0"]
                expected[name] = torch.where(keep_mask(fapm_scores(pre, delta), 0.5), pre + delta, pre)
    strategy.transform_weights(ctx)
    for name, module in model.named_modules():
        if name in expected:
            assert torch.allclose(module.base_layer.weight, expected[name], atol=1e-7)
            assert not module.lora_B["task0"].weight.any()
    assert ctx.log["fapm_kept_fraction"] == pytest.approx(0.5)


def test_end_to_end_changes_only_the_kept_fraction(tmp_path, tokenizer, task_files):
    initial = {n: p.detach().clone() for n, p in make_tiny_lm(len(tokenizer)).named_parameters()}

    def changed_fraction(model):
        changed = total = 0
        for name, p in model.named_parameters():
            if p.dim() == 2 and block_index(name) is not None:
                changed += int((p != initial[name]).sum())
                total += p.numel()
        return changed / total

    pruned = make_tiny_lm(len(tokenizer))
    results = run_continual(tiny_config(task_files, strategies=["fapm"]), tmp_path / "fapm", model=pruned,
                            tokenizer=tokenizer, progress=False)
    naive = make_tiny_lm(len(tokenizer))
    run_continual(tiny_config(task_files), tmp_path / "naive", model=naive, tokenizer=tokenizer, progress=False)
    assert changed_fraction(naive) > 0.9
    assert changed_fraction(pruned) <= 0.2 + 1e-6  # at most 10% per task, two tasks
    assert [log["fapm_kept_fraction"] for log in results.training] == pytest.approx([0.1, 0.1], abs=1e-3)


def test_lora_checkpoint_holds_the_full_pruned_weights(tmp_path, tokenizer, task_files):
    from safetensors.torch import load_file

    config = tiny_config(
        task_files,
        adapter="lora",
        lora={"r": 2, "alpha": 4, "target_modules": ["q_proj", "v_proj"]},
        strategies=["fapm"],
        checkpoints="every_task",
    )
    model = make_tiny_lm(len(tokenizer))
    run_continual(config, tmp_path / "out", model=model, tokenizer=tokenizer, progress=False)
    folder = tmp_path / "out" / "checkpoints" / "after-1-chat"
    # The adapter alone would miss the pruned update that FAPM wrote into the base weights.
    assert (folder / "model.safetensors").is_file() and not (folder / "adapter_model.safetensors").exists()
    saved = load_file(folder / "model.safetensors")
    assert any("lora" in key for key in saved) is False
    assert "model.layers.0.self_attn.q_proj.weight" in saved
