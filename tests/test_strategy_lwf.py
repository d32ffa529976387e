"""`lwf`: distillation to the pre-task model, checked against direct per-position computations."""


import pytest
import torch
import torch.nn.functional as F

from forgetless.adapters import prepare_for_task
from forgetless.config import parse_config
from forgetless.data.encoding import PaddingCollator, encode_rows
from forgetless.data.tasks import TrainingTask
from forgetless.errors import ForgetlessError
from forgetless.strategies import build_strategy
from forgetless.strategies import lwf as lwf_module
from forgetless.strategies.lwf import distillation_loss
from forgetless.training import context_for

from .conftest import TICKET_ROWS, make_tiny_lm, perturb, train_tiny_on_tickets

ROWS = [{"prompt": f"Ticket {i}: my printer jams", "response": f"Open tray {i} and remove the paper."} for i in range(4)]


def _config(**overrides):
    data = {"model": "tiny", "tasks": [{"name": "t", "file": "unused.jsonl"}], "train": {"max_length": 48}}
    data.update(overrides)
    return parse_config(data)


def _context(config, model, tokenizer):
    task = TrainingTask("t", "chat", ROWS, ROWS)
    return context_for(config, model, tokenizer, [task], 0)


def _batch(tokenizer):
    return PaddingCollator(tokenizer.pad_token_id)(encode_rows(tokenizer, ROWS, 48))


def _direct_lwf(student_logits, teacher_logits, mask, temperature):
    """T^2 * mean over masked positions of KL(q_T || p_T), one position at a time."""
    total, count = 0.0, 0
    for b in range(mask.size(0)):
        for t in range(mask.size(1)):
            if mask[b, t]:
                log_p = F.log_softmax(student_logits[b, t].double() / temperature, dim=-1)
                log_q = F.log_softmax(teacher_logits[b, t].double() / temperature, dim=-1)
                total += (log_q.exp() * (log_q - log_p)).sum()
                count += 1
    return temperature**2 * total / count


def test_chunked_loss_and_gradient_match_autograd_of_the_direct_formula():
    torch.manual_seed(0)
    student = torch.randn(2, 70, 11, requires_grad=True)  # 140 rows: more than one chunk of 64
    teacher = torch.randn(2, 70, 11)
    mask = torch.rand(2, 70) > 0.3
    student_before, teacher_before = student.detach().clone(), teacher.clone()
    loss = distillation_loss(student, teacher[mask], mask, 2.0)
    (3.0 * loss).backward()  # an upstream factor, as a weight or gradient accumulation applies
    assert torch.equal(student.detach(), student_before) and torch.equal(teacher, teacher_before)  # inputs untouched
    ours = student.grad.clone()
    student.grad = None
    direct = _direct_lwf(student, teacher, mask, 2.0)
    (3.0 * direct).backward()
    assert loss.item() == pytest.approx(direct.item(), rel=1e-5)
    assert torch.allclose(ours, student.grad.float(), atol=1e-6)
    assert ours[~mask].abs().max() == 0  # positions outside the mask get no gradient


def test_zero_at_task_start_and_equal_to_direct_computation_after_a_change(tiny_lm, tokenizer):
    ctx = _context(_config(), tiny_lm, tokenizer)
    inputs = _batch(tokenizer)
    kwargs = {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"]}
    strategies = {
        positions: build_strategy(
            {"name": "lwf", "weight": 0.5, "temperature": 3.0, "positions": positions, "teacher_precision": "float32"}
        )
        for positions in ("all", "trained")
    }
    for strategy in strategies.values():
        strategy.on_task_start(ctx)  # the teacher: a frozen copy of the model as it is now
    outputs = tiny_lm(**kwargs)
    assert strategies["all"].extra_loss(ctx, tiny_lm, inputs, outputs).item() == pytest.approx(0.0, abs=1e-6)

    teacher_logits = outputs.logits.detach()
    perturb(tiny_lm)
    outputs = tiny_lm(**kwargs)
    trained = torch.zeros_like(inputs["attention_mask"], dtype=torch.bool)
    trained[:, :-1] = inputs["labels"][:, 1:] != -100  # logits at t predict token t+1
    masks = {"all": inputs["attention_mask"].bool(), "trained": trained}
    assert 0 < trained.sum() < masks["all"].sum()
    for positions, strategy in strategies.items():
        expected = 0.5 * _direct_lwf(outputs.logits.detach(), teacher_logits, masks[positions], 3.0)
        loss = strategy.extra_loss(ctx, tiny_lm, inputs, outputs)
        assert expected > 1e-3
        assert loss.item() == pytest.approx(expected.item(), rel=1e-4)
    # After the task: the copy is freed, the mean is reported, and nothing needs saving for later tasks.
    strategy.consolidate(ctx)
    assert strategy._teacher == {} and strategy.state_tensors() == {}
    assert ctx.log["lwf_mean_scaled_kl"] == pytest.approx(loss.item() / 0.5, rel=1e-5)


@pytest.mark.parametrize("between_tasks", ["merge", "stack"])
def test_under_lora_the_teacher_is_the_model_before_the_task_and_only_the_adapter_is_copied(tokenizer, between_tasks):
    lora = {"r": 4, "target_modules": ["q_proj", "v_proj"], "between_tasks": between_tasks}
    config = _config(adapter="lora", lora=lora)
    model = make_tiny_lm(len(tokenizer))
    task_index = 0
    if between_tasks == "stack":  # an earlier task's adapter stays on: the teacher must keep it, not switch it off
        model = prepare_for_task(model, config, 0)
        perturb(model, scale=0.2, seed=3)
        task_index = 1
    inputs = _batch(tokenizer)
    with torch.no_grad():
        before = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
    model = prepare_for_task(model, config, task_index)
    model.train()
    task = TrainingTask("t", "chat", ROWS, ROWS)
    ctx = context_for(config, model, tokenizer, [task] * (task_index + 1), task_index)
    strategy = build_strategy({"name": "lwf", "teacher_precision": "float32"})
    strategy.on_task_start(ctx)
    perturb(model, scale=0.2)  # this task's LoRA tensors only (the rest is frozen): training has moved it
    mask = inputs["attention_mask"].bool()
    teacher = strategy.teacher_logits(ctx, inputs, mask)
    student = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
    assert torch.allclose(teacher, before[mask], atol=1e-5)
    assert not torch.allclose(student.logits, before, atol=1e-3)
    assert model.training  # the teacher pass put the model back in training mode
    held = sum(t.numel() for t in strategy._teacher.values())
    adapter = sum(p.numel() for n, p in model.named_parameters() if f".{ctx.adapter}." in n)
    assert held == adapter  # a copy of this task's adapter, not of the model
    loss = strategy.extra_loss(ctx, model, inputs, student)
    loss.backward()
    trained = [p for p in model.parameters() if p.requires_grad]
    assert loss.item() > 0 and any(p.grad is not None and p.grad.abs().sum() > 0 for p in trained)


@pytest.mark.parametrize("native", [True, False])
def test_teacher_precision_auto_follows_the_hardware_and_bfloat16_stays_close(tiny_lm, tokenizer, monkeypatch, native):
    monkeypatch.setattr(lwf_module, "runs_bfloat16_natively", lambda device: native)
    ctx = _context(_config(), tiny_lm, tokenizer)
    inputs = _batch(tokenizer)
    mask = inputs["attention_mask"].bool()
    teachers = {}
    for precision in ("auto", "float32", "bfloat16"):
        strategy = build_strategy({"name": "lwf", "teacher_precision": precision})
        strategy.on_task_start(ctx)
        teachers[precision] = strategy.teacher_logits(ctx, inputs, mask)
        strategy.consolidate(ctx)
        expected = "bfloat16" if precision == "bfloat16" or (precision == "auto" and native) else "float32"
        assert ctx.log["lwf_teacher_precision"] == expected
    assert teachers["float32"].dtype == torch.float32 and teachers["bfloat16"].dtype == torch.bfloat16
    assert torch.equal(teachers["auto"], teachers["bfloat16" if native else "float32"])
    # bfloat16 keeps 8 bits of mantissa: close to the float32 teacher, but really computed at lower precision.
    difference = (teachers["bfloat16"].float() - teachers["float32"]).abs().max().item()
    assert 0 < difference < 0.05
    # Distilling onto the float32 teacher's own logits, the bfloat16 teacher's KL is a tiny floor.
    every_row = torch.ones(1, len(teachers["float32"]), dtype=torch.bool)
    floor = distillation_loss(teachers["float32"].unsqueeze(0), teachers["bfloat16"], every_row, 2.0)
    assert 0 < floor.item() < 1e-3


def test_refuses_bad_knobs():
    with pytest.raises(ForgetlessError, match="temperature"):
        build_strategy({"name": "lwf", "temperature": 0})
    with pytest.raises(ForgetlessError, match="positions"):
        build_strategy({"name": "lwf", "positions": "some"})
    with pytest.raises(ForgetlessError, match="teacher_precision"):
        build_strategy({"name": "lwf", "teacher_precision": "float16"})


def _output_drift(model, reference, tokenizer, rows):
    """Mean KL(reference || model) of next-token distributions over the non-pad positions of `rows`."""
    batch = PaddingCollator(tokenizer.pad_token_id)(encode_rows(tokenizer, rows, 48))
    with torch.no_grad():
        kwargs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        log_p = F.log_softmax(model(**kwargs).logits, -1)
        log_q = F.log_softmax(reference(**kwargs).logits, -1)
    kl = (log_q.exp() * (log_q - log_p)).sum(-1)
    mask = batch["attention_mask"].bool()
    return kl[mask].mean().item()


def test_end_to_end_lwf_keeps_outputs_on_the_task_inputs_closer_than_naive(tmp_path, tokenizer):
    drift = {}
    for label, strategy in (("naive", "naive"), ("lwf", {"name": "lwf", "weight": 100.0})):
        start, model, results = train_tiny_on_tickets(tmp_path, tokenizer, strategy, label)
        drift[label] = _output_drift(model, start, tokenizer, TICKET_ROWS[:8])
    lwf_drift, naive_drift = drift["lwf"], drift["naive"]
    # A large weight because the random tiny model's outputs are near-uniform: the KL and its gradient are
    # tiny next to the cross-entropy's. (Measured: lwf 0.0014 vs naive 0.0053.)
    assert lwf_drift < 0.5 * naive_drift
    assert results.training[0]["lwf_mean_scaled_kl"] > 0
