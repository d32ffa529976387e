"""`lwf`: Learning without Forgetting — distil the pre-task model's next-token distributions on the new inputs.

Each step adds

    weight * T^2 * mean_t KL( softmax(z_teacher_t / T) || softmax(z_student_t / T) )

over the batch's non-pad positions t (or only the trained ones), where the teacher is the model as it was
before the task. The student's logits are the training forward's own (`outputs.logits`): no second
student forward. Teacher: the live model run with the trained tensors' values at the task's start swapped
in (`TaskWeights.snapshot` and `torch.func.functional_call`): a copy of every weight under full fine-tuning,
of this task's few adapter tensors under LoRA (merge and stack mode alike: earlier adapters stay on).
The teacher's forward is most of the strategy's cost; where the hardware has bfloat16 matrix units it
runs under bfloat16 autocast by default (`teacher_precision: auto`), about 2.7x faster on such a CPU, at a
KL floor ~0.2 % of the KL being trained against.

The KL and its gradient are computed together, a chunk of positions at a time, by `_ChunkedDistillation`,
so no full (positions x vocabulary) softmax or log-softmax tensor is ever materialised besides the one
gradient buffer the backward pass needs anyway.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field

from ..data.encoding import IGNORE_INDEX
from ..evaluation._scoring import logits_at, model_device, scoring_mode
from . import register_strategy
from ._common import runs_bfloat16_natively
from .base import Strategy, StrategyParams, Strength, TaskContext

Positions = Literal["all", "trained"]
TeacherPrecision = Literal["auto", "float32", "bfloat16"]

# Rows of (positions, vocabulary) handled at once: 16 x 49152 fp32 = 3 MB per temporary, small enough
# to stay in cache across a chunk's dozen elementwise passes (64 rows measured no faster).
_CHUNK_ROWS = 16


def _normalise_(scaled_logits: torch.Tensor) -> torch.Tensor:
    """Turn `scaled_logits` (n, V) into log-softmax in place and return the softmax: one exp per element."""
    scaled_logits.sub_(scaled_logits.amax(dim=-1, keepdim=True))
    probabilities = scaled_logits.exp()
    normaliser = probabilities.sum(dim=-1, keepdim=True)
    scaled_logits.sub_(normaliser.log())
    return probabilities.div_(normaliser)


class _ChunkedDistillation(torch.autograd.Function):
    """T^2 * mean KL(teacher_T || student_T) over selected rows, with its gradient computed in the forward.

    d/dz [T^2 KL(q_T || softmax(z/T))] = T * (softmax(z/T) - q_T), so the gradient needs only the two
    softmaxes of a chunk; it is written into one buffer shaped like the student logits and the chunk's
    temporaries are freed at once. Only the (positions x vocabulary) tensors that must exist are ever
    read or written whole: the student's logits once, the teacher's once, the gradient buffer once.
    """

    @staticmethod
    def forward(fn_ctx, student, teacher_rows, rows, other_rows, temperature: float):
        # student (N_all, V) flattened logits; teacher_rows (N, V) the teacher's logits at `rows`, the (N,)
        # indices of the positions that count; other_rows the rest, whose gradient is zero.
        grad = torch.empty_like(student, dtype=torch.float32)
        grad.index_fill_(0, other_rows, 0.0)
        total = torch.zeros((), dtype=torch.float32, device=student.device)
        scale, inverse = 1.0 / max(1, rows.numel()), 1.0 / temperature
        for start in range(0, rows.numel(), _CHUNK_ROWS):
            index = rows[start : start + _CHUNK_ROWS]
            # Advanced indexing copies the rows, so the in-place steps below never touch the logits.
            log_p = student[index].float().mul_(inverse)
            p = _normalise_(log_p)
            log_q = teacher_rows[start : start + _CHUNK_ROWS].float() * inverse
            q = _normalise_(log_q)
            total += torch.vdot(q.view(-1), log_q.sub_(log_p).view(-1))  # sum q (log q - log p)
            grad.index_copy_(0, index, p.sub_(q).mul_(temperature * scale))
        fn_ctx.save_for_backward(grad)
        fn_ctx.student_dtype = student.dtype
        return total * (temperature**2 * scale)

    @staticmethod
    def backward(fn_ctx, grad_output: torch.Tensor):
        (grad,) = fn_ctx.saved_tensors
        # In place: the buffer is this step's alone, and a second backward through the same graph fails
        # loudly on the saved tensor's version counter instead of reading a scaled buffer.
        return grad.mul_(grad_output).to(fn_ctx.student_dtype), None, None, None, None


def distillation_loss(
    student_logits: torch.Tensor, teacher_rows: torch.Tensor, mask: torch.Tensor, temperature: float
) -> torch.Tensor:
    """T^2 * KL(softmax(teacher/T) || softmax(student/T)) averaged over positions where `mask` is true.

    student_logits (B, T, V); teacher_rows (N, V), the teacher's logits at the N true positions of the
    (B, T) bool `mask` in row-major order (`logits[mask]`). Differentiable in `student_logits` only.
    """
    vocab, flat = student_logits.size(-1), mask.reshape(-1)
    rows, other_rows = flat.nonzero().squeeze(1), (~flat).nonzero().squeeze(1)
    if teacher_rows.shape != (rows.numel(), vocab):
        expected = (rows.numel(), vocab)
        raise ValueError(f"teacher_rows must be {expected}, one row per masked position; got {tuple(teacher_rows.shape)}")
    return _ChunkedDistillation.apply(
        student_logits.reshape(-1, vocab), teacher_rows.detach(), rows, other_rows, float(temperature)
    )


def distilled_positions(inputs: dict[str, torch.Tensor], positions: Positions) -> torch.Tensor:
    """(B, T) bool: positions whose next-token distribution is distilled.

    all: every non-pad position (TRACE's choice). trained: positions whose logits are trained by the
    cross-entropy, i.e. position t where token t+1 has a label (logits at t predict token t+1).
    """
    if positions == "all":
        return inputs["attention_mask"].bool()
    mask = torch.zeros_like(inputs["labels"], dtype=torch.bool)
    mask[:, :-1] = inputs["labels"][:, 1:] != IGNORE_INDEX
    return mask


@register_strategy
class LearningWithoutForgetting(Strategy):
    """LwF (Li & Hoiem 2017) for causal LMs: KL to the pre-task model's outputs on the new task's inputs."""

    name = "lwf"
    strength = Strength("weight", "up", bound=1e6)
    in_task_state = ("_kl_total", "_kl_steps")
    loss_scope = "batch"  # distils on the training batch: weighted by each micro-batch's share of tokens
    needs_logits = True

    class Params(StrategyParams):
        weight: float = Field(1.0, ge=0, description="Weight of the distillation term (KL to the pre-task teacher).")
        temperature: float = Field(2.0, gt=0, description="Softmax temperature of teacher and student.")
        positions: Positions = Field("all", description="all: every non-padding position; trained: only positions with a label.")
        teacher_precision: TeacherPrecision = Field(
            "auto", description="Teacher forward dtype; auto: bfloat16 where the device runs it natively."
        )

    def __init__(self, **params: Any):
        super().__init__(**params)
        self._teacher_bfloat16 = False  # resolved at task start from teacher_precision and the device
        self._teacher: dict[str, torch.Tensor] = {}  # the trained tensors at the task's start
        self._kl_total, self._kl_steps = 0.0, 0  # for the per-task mean reported in results.json

    def on_task_start(self, ctx: TaskContext) -> None:
        self._teacher = ctx.weights.snapshot()  # every weight (full) or this task's fresh adapter (LoRA)
        auto = self.teacher_precision == "auto" and runs_bfloat16_natively(model_device(ctx.model))
        self._teacher_bfloat16 = self.teacher_precision == "bfloat16" or auto
        self._kl_total, self._kl_steps = 0.0, 0

    def teacher_logits(self, ctx: TaskContext, inputs: dict[str, torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
        """(N, V) logits of the model as it was before the task, at the N true positions of `mask` (B, T).

        The LM head runs only at those positions (`logits_at`): padding, and under `positions: trained`
        the prompt, cost the teacher no vocabulary-wide matmul.
        """
        rows, columns = mask.nonzero(as_tuple=True)
        kwargs = {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"]}
        model = ctx.model  # the live model, run with the task's starting tensors swapped in
        precision = torch.autocast(model_device(model).type, dtype=torch.bfloat16, enabled=self._teacher_bfloat16)
        # Eval mode (the teacher is a fixed function: no dropout), no autograd; flags restored after.
        with scoring_mode(model), precision:
            return logits_at(model, rows, columns, parameters=self._teacher, **kwargs)

    def extra_loss(self, ctx: TaskContext, model: torch.nn.Module, inputs: dict[str, torch.Tensor], outputs: Any):
        if self.weight == 0:
            return None
        mask = distilled_positions(inputs, self.positions)
        teacher = self.teacher_logits(ctx, inputs, mask)
        distance = distillation_loss(outputs.logits, teacher, mask, self.temperature)
        self._kl_total += float(distance.detach())
        self._kl_steps += 1
        return self.weight * distance

    def consolidate(self, ctx: TaskContext) -> None:
        ctx.log["lwf_mean_scaled_kl"] = self._kl_total / max(1, self._kl_steps)  # T^2 * KL, before the weight
        ctx.log["lwf_teacher_precision"] = "bfloat16" if self._teacher_bfloat16 else "float32"
        self._teacher = {}  # the next task's teacher is the model as it is then: nothing to keep
