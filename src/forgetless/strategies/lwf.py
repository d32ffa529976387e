"""`lwf`: Learning without Forgetting — distil the pre-task model's next-token distributions on the new inputs.

Each step adds

    weight * T^2 * mean_t KL( softmax(z_teacher_t / T) || softmax(z_student_t / T) )

over the batch's non-pad positions t (or only the trained ones), where the teacher is the model as it was
before the task. The student's logits are the training forward's own (`outputs.logits`): no second
student forward. Teacher: under LoRA (merge mode) the same model with its adapter disabled — the merged
base *is* the pre-task model — so no copy is held; under full fine-tuning a frozen copy of the model.

The KL and its gradient are computed together, a chunk of positions at a time, by `_ChunkedDistillation`,
so no full (positions x vocabulary) softmax or log-softmax tensor is ever materialised besides the one
gradient buffer the backward pass needs anyway.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F

from ..errors import ForgetlessError
from . import register_strategy
from ._common import frozen_copy
from .base import Strategy, TaskContext

Positions = Literal["all", "trained"]

# Rows of (positions, vocabulary) handled at once: 64 x 49152 fp32 = 12.6 MB per temporary.
_CHUNK_ROWS = 64


class _ChunkedDistillation(torch.autograd.Function):
    """T^2 * mean KL(teacher_T || student_T) over selected rows, with its gradient computed in the forward.

    d/dz [T^2 KL(q_T || softmax(z/T))] = T * (softmax(z/T) - q_T), so the gradient needs only the two
    softmaxes of a chunk; it is written into one buffer shaped like the student logits and the chunk's
    temporaries are freed at once.
    """

    @staticmethod
    def forward(fn_ctx, student: torch.Tensor, teacher: torch.Tensor, rows: torch.Tensor, temperature: float):
        # student, teacher (N_all, V) flattened logits; rows (N,) indices of the positions that count
        grad = torch.zeros_like(student, dtype=torch.float32)  # (N_all, V)
        total = torch.zeros((), dtype=torch.float32, device=student.device)
        scale = 1.0 / max(1, rows.numel())
        for start in range(0, rows.numel(), _CHUNK_ROWS):
            index = rows[start : start + _CHUNK_ROWS]
            # Advanced indexing, not index_select: for vocabulary-wide rows on CPU it measured ~2x faster
            # (64 rows of 49152), and index_select's parallel path slowed ~50x on oversubscribed cores.
            log_p = F.log_softmax(student[index].float() / temperature, dim=-1)  # (n, V)
            log_q = F.log_softmax(teacher[index].float() / temperature, dim=-1)
            q = log_q.exp()
            total += (q * (log_q - log_p)).sum()
            grad.index_copy_(0, index, (log_p.exp() - q) * (temperature * scale))
        fn_ctx.save_for_backward(grad)
        fn_ctx.student_dtype = student.dtype
        return total * (temperature**2 * scale)

    @staticmethod
    def backward(fn_ctx, grad_output: torch.Tensor):
        (grad,) = fn_ctx.saved_tensors
        return (grad * grad_output).to(fn_ctx.student_dtype), None, None, None


def distillation_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor, temperature: float
) -> torch.Tensor:
    """T^2 * KL(softmax(teacher/T) || softmax(student/T)) averaged over positions where `mask` is true.

    student_logits, teacher_logits (B, T, V); mask (B, T) bool. Differentiable in `student_logits` only.
    """
    vocab = student_logits.size(-1)
    rows = mask.reshape(-1).nonzero().squeeze(1)  # (N,)
    return _ChunkedDistillation.apply(
        student_logits.reshape(-1, vocab), teacher_logits.detach().reshape(-1, vocab), rows, float(temperature)
    )


def distilled_positions(inputs: dict[str, torch.Tensor], positions: Positions) -> torch.Tensor:
    """(B, T) bool: positions whose next-token distribution is distilled.

    all: every non-pad position (TRACE's choice). trained: positions whose logits are trained by the
    cross-entropy, i.e. position t where token t+1 has a label (logits at t predict token t+1).
    """
    if positions == "all":
        return inputs["attention_mask"].bool()
    mask = torch.zeros_like(inputs["labels"], dtype=torch.bool)
    mask[:, :-1] = inputs["labels"][:, 1:] != -100
    return mask


@register_strategy
class LearningWithoutForgetting(Strategy):
    """LwF (Li & Hoiem 2017) for causal LMs: KL to the pre-task model's outputs on the new task's inputs."""

    name = "lwf"
    needs_reference_model = True  # a frozen copy under full fine-tuning; none under LoRA (adapter disabled)

    def __init__(self, weight: float = 1.0, temperature: float = 2.0, positions: Positions = "all"):
        if weight < 0:
            raise ValueError(f"weight must be >= 0, got {weight}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if positions not in ("all", "trained"):
            raise ValueError(f"positions must be 'all' or 'trained', got {positions!r}")
        self.weight = float(weight)
        self.temperature = float(temperature)
        self.positions: Positions = positions
        self._teacher: torch.nn.Module | None = None  # full fine-tuning only
        self._kl_total, self._kl_steps = 0.0, 0  # for the per-task mean reported in results.json

    def check(self, config, stack, world_size: int = 1) -> None:
        super().check(config, stack, world_size)
        if config.adapter == "lora" and config.lora.between_tasks == "stack":
            # Disabling adapters in stack mode would also switch off earlier tasks' adapters: the teacher
            # would be the original base, not the model before this task.
            raise ForgetlessError("strategy 'lwf' needs lora.between_tasks: merge (its teacher is the base with adapters off)")

    def on_task_start(self, ctx: TaskContext) -> None:
        self._teacher = None if ctx.config.adapter == "lora" else frozen_copy(ctx.model)
        self._kl_total, self._kl_steps = 0.0, 0

    @torch.no_grad()
    def teacher_logits(self, ctx: TaskContext, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, T, V) logits of the model as it was before the task."""
        kwargs = {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"]}
        if self._teacher is not None:
            return self._teacher(**kwargs).logits
        model = ctx.model  # the PEFT model itself (not a DDP wrapper), which has disable_adapter
        was_training = model.training
        model.eval()  # the teacher is a fixed function: no dropout
        try:
            with model.disable_adapter():
                return model(**kwargs).logits
        finally:
            model.train(was_training)

    def extra_loss(self, ctx: TaskContext, model: torch.nn.Module, inputs: dict[str, torch.Tensor], outputs: Any):
        if self.weight == 0:
            return None
        mask = distilled_positions(inputs, self.positions)
        teacher = self.teacher_logits(ctx, inputs)
        distance = distillation_loss(outputs.logits, teacher, mask, self.temperature)
        self._kl_total += float(distance.detach())
        self._kl_steps += 1
        return self.weight * distance

    def consolidate(self, ctx: TaskContext) -> None:
        ctx.log["lwf_mean_scaled_kl"] = self._kl_total / max(1, self._kl_steps)  # T^2 * KL, before the weight
        self._teacher = None  # the next task's teacher is the model as it is then: nothing to keep
