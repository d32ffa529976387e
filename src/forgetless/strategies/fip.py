"""`fip`: Functionally Invariant Paths — keep the model's outputs on anchor inputs while it moves in weight space.

Raghavan et al. (Nat. Mach. Intell. 2024) treat weight space as a Riemannian manifold whose metric
g_w = E_x[J_w^T J_w] measures how far the *function* moves: ds^2 = dw^T g_w dw ~ ||f(x, w+dw) - f(x, w)||^2.
The released code follows such a path with a penalised loss and a standard optimiser, which is what this
strategy does: every step adds

    weight * mean over anchor positions of  D( p(. | x; w0) , p(. | x; w) )

where p are next-token distributions, the anchors x are general text on the first task, then half earlier
tasks' inputs and half general text (no labels needed; one random batch per step, filled to a quarter of
the training batch's tokens), and w0 a frozen reference:
the model at task start (`reference: origin`) or the model `refresh_steps` steps ago (`previous`, a trust region along the path).
D is the Bhattacharyya distance -log sum_k sqrt(p_k q_k) (default) or KL(q || p).

Reference model: a copy of the trained tensors (`TaskWeights.snapshot`: every weight under full fine-tuning,
the few adapter tensors under LoRA) swapped in with `torch.func.functional_call` for the reference forward,
so no second module tree is held (at task start a fresh adapter is the identity, so `origin` is exactly
the pre-task model, in merge and stack mode alike).
"""

from __future__ import annotations

import random
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch.utils.checkpoint import checkpoint

from ..data.encoding import PaddingCollator
from ..evaluation._scoring import model_device
from . import register_strategy
from ._common import ProtectionSource, protection_examples
from .base import Strategy, StrategyParams, Strength, TaskContext

Distance = Literal["bhattacharyya", "kl"]
Reference = Literal["origin", "previous"]
Smoothing = Literal["exact", "official"]

# Rows of (positions, vocabulary) per chunk: each chunk's temporaries are recomputed in backward
# (activation checkpointing), so the distance never holds more than a chunk of vocabulary-sized tensors.
_CHUNK_ROWS = 64


def row_distances(log_p: torch.Tensor, log_q: torch.Tensor, distance: Distance, smoothing: Smoothing) -> torch.Tensor:
    """(n,) distance between the student's log-probabilities log_p and the reference's log_q, both (n, V).

    bhattacharyya/exact: -log sum_k sqrt(p_k q_k), computed as -logsumexp((log p + log q) / 2): no square
      root of zero, so no epsilon is needed; exactly 0 at p = q and >= 0 everywhere (Cauchy-Schwarz).
    bhattacharyya/official: the released code's -log sum_k sqrt(p_k q_k + eps), eps = max(1e-10, 1e-3 min q),
      minus its value at p = q (a constant for the student, so the gradient is the code's) so that it is 0
      at the reference. Here `min q` is over the rows given, as the code takes it over its batch.
    kl: KL(q || p) = sum_k q_k (log q_k - log p_k).
    """
    if distance == "kl":
        return (log_q.exp() * (log_q - log_p)).sum(-1)
    if smoothing == "exact":
        return -torch.logsumexp((log_p + log_q) / 2, dim=-1)
    q = log_q.exp()
    eps = torch.clamp(q.min() * 1e-3, min=1e-10)
    at_reference = torch.sqrt(q * q + eps).sum(-1).log()
    return at_reference - torch.sqrt(log_p.exp() * q + eps).sum(-1).log()


def functional_distance(
    logits: torch.Tensor,
    reference_logits: torch.Tensor,
    mask: torch.Tensor,
    distance: Distance = "bhattacharyya",
    smoothing: Smoothing = "exact",
) -> torch.Tensor:
    """Mean over positions where `mask` is true of D(reference, student); differentiable in `logits`.

    logits, reference_logits (B, T, V); mask (B, T) bool.
    """
    vocab = logits.size(-1)
    rows = mask.reshape(-1).nonzero().squeeze(1)  # (N,)
    if smoothing == "official" and distance == "bhattacharyya":
        chunks = [rows]  # eps depends on the minimum over all rows: one chunk, as in the released code
    else:
        chunks = list(rows.split(_CHUNK_ROWS))
    flat = logits.reshape(-1, vocab)
    flat_reference = reference_logits.detach().reshape(-1, vocab)

    def chunk_sum(student_rows: torch.Tensor, reference_rows: torch.Tensor) -> torch.Tensor:
        log_p = F.log_softmax(student_rows.float(), dim=-1)
        log_q = F.log_softmax(reference_rows.float(), dim=-1)
        return row_distances(log_p, log_q, distance, smoothing).sum()

    total = logits.new_zeros((), dtype=torch.float32)
    for index in chunks:
        pair = (flat[index], flat_reference[index])  # indexing: ~2x faster than index_select for vocabulary-wide rows
        total = total + (checkpoint(chunk_sum, *pair, use_reentrant=False) if logits.requires_grad else chunk_sum(*pair))
    return total / max(1, rows.numel())


@register_strategy
class FunctionallyInvariantPaths(Strategy):
    """FIP: penalise the functional distance to a frozen reference on anchor inputs of what to protect."""

    name = "fip"
    strength = Strength("weight", "up", bound=1e6)
    # The reference moves during a task (reference "previous"), and the anchors are drawn with _rng each step.
    in_task_state = ("_reference", "_refreshed_at", "_rng", "_distance_total", "_distance_steps")
    stores_raw_data = True  # anchors are earlier tasks' training inputs

    class Params(StrategyParams):
        weight: float = Field(1.0, ge=0, description="Weight of the functional distance added to the task loss.")
        distance: Distance = Field(
            "bhattacharyya", description="bhattacharyya: -log sum sqrt(p q); kl: KL(reference || student)."
        )
        smoothing: Smoothing = Field(
            "exact", description="exact: the distance as written; official: the released code's eps smoothing."
        )
        reference: Reference = Field(
            "origin", description="origin: the model at task start; previous: the model refresh_steps steps ago."
        )
        refresh_steps: int = Field(10, ge=1, description="reference: previous - steps between reference refreshes.")
        anchor_examples: int = Field(256, ge=1, description="Anchor inputs drawn per task (one random batch of them per step).")
        anchor_batch_size: int | None = Field(
            None, ge=1, description="Anchors per step; null: filled to a quarter of the training batch's tokens."
        )
        source: ProtectionSource = Field(
            "auto",
            description="What anchors come from: auto (general, then half earlier tasks), general, earlier_tasks, "
            "current_task.",
        )

    def __init__(self, **params: Any):
        super().__init__(**params)
        self._anchors: list[dict[str, Any]] = []
        self._rng = random.Random(0)
        self._reference: dict[str, torch.Tensor] = {}  # the trained tensors' values at the reference point
        self._refreshed_at = 0  # global step of the last refresh (reference: previous)
        self._distance_total, self._distance_steps = 0.0, 0

    # ---------------------------------------------------------------- reference
    def on_task_start(self, ctx: TaskContext) -> None:
        seed = ctx.setup.seed + ctx.task_index
        self._anchors = protection_examples(ctx, self.anchor_examples, self.source, seed=seed)
        self._rng = random.Random(seed)
        self._reference = ctx.weights.snapshot()  # every weight (full) or this task's adapter (LoRA)
        self._refreshed_at = ctx.global_step
        self._distance_total, self._distance_steps = 0.0, 0
        ctx.log["fip_anchor_examples"] = len(self._anchors)

    @torch.no_grad()
    def refresh(self, ctx: TaskContext) -> None:
        """Move the reference to the current weights (the previous point of the path)."""
        current = dict(ctx.model.named_parameters())
        for name, tensor in self._reference.items():
            tensor.copy_(current[name])
        self._refreshed_at = ctx.global_step

    @torch.no_grad()
    def reference_logits(self, ctx: TaskContext, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, T, V) logits of the reference point w0 on `batch`."""
        model = ctx.model  # the PEFT model itself, not a DDP wrapper
        was_training = model.training
        model.eval()  # the reference is a fixed function: no dropout
        try:
            # Swaps the trained tensors for the saved ones for this call only; the live ones are untouched.
            return torch.func.functional_call(model, self._reference, args=(), kwargs=batch).logits
        finally:
            model.train(was_training)

    # ---------------------------------------------------------------- anchors and loss
    def anchor_batch(self, ctx: TaskContext) -> dict[str, torch.Tensor]:
        """One random batch of anchor inputs (input_ids, attention_mask) on the model's device."""
        if self.anchor_batch_size:
            picked = self._rng.sample(self._anchors, min(self.anchor_batch_size, len(self._anchors)))
        else:
            picked = self._within_token_budget(ctx.setup.batch_size * ctx.setup.max_length // 4)
        batch = PaddingCollator(ctx.tokenizer.pad_token_id)(picked)
        device = model_device(ctx.model)
        return {"input_ids": batch["input_ids"].to(device), "attention_mask": batch["attention_mask"].to(device)}

    def _within_token_budget(self, budget: int) -> list[dict[str, Any]]:
        """Random anchors, at least one, while the padded batch (count x longest) stays within `budget` tokens.

        Anchors differ in length by an order of magnitude (general passages ~20 tokens, task examples up
        to max_length), so a fixed count either starves the penalty of contexts or blows up the step.
        """
        picked: list[dict[str, Any]] = []
        longest = 0
        for example in self._rng.sample(self._anchors, len(self._anchors)):
            length = max(longest, len(example["input_ids"]))
            if picked and (len(picked) + 1) * length > budget:
                break
            picked.append(example)
            longest = length
        return picked

    def penalty(self, ctx: TaskContext, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean functional distance between `model` and the reference on the anchor `batch`."""
        reference = self.reference_logits(ctx, batch)
        logits = model(**batch).logits
        return functional_distance(logits, reference, batch["attention_mask"].bool(), self.distance, self.smoothing)

    def extra_loss(self, ctx: TaskContext, model: torch.nn.Module, inputs: dict[str, torch.Tensor], outputs: Any):
        if self.weight == 0 or not self._anchors:
            return None
        if self.reference == "previous" and ctx.global_step - self._refreshed_at >= self.refresh_steps:
            self.refresh(ctx)
        value = self.penalty(ctx, model, self.anchor_batch(ctx))
        self._distance_total += float(value.detach())
        self._distance_steps += 1
        return self.weight * value

    def consolidate(self, ctx: TaskContext) -> None:
        ctx.log["fip_mean_distance"] = self._distance_total / max(1, self._distance_steps)
        # Nothing crosses tasks: the next reference is the model at the next task's start, and anchors are
        # drawn again from the data. Free the copy before evaluation and checkpointing.
        self._reference = {}
