"""`fapm`: forgetting-aware pruning of the task vector, post hoc (Huang, Cheng, Wang, EMNLP 2025, arXiv 2509.08255).

After a task, per weight matrix: tau = W_ft - W_pre; score S = |tau| - mean(|W_pre|) * |tau| / |W_pre|;
keep the top `keep` fraction of S, reset the rest to the pre-task weight: W = W_pre + mask * tau.
A change is kept when it is large in absolute terms but small relative to the weight it changes.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from ..errors import ForgetlessError
from . import register_strategy
from ._common import block_index
from .base import Strategy, StrategyParams, Strength, TaskContext

TensorSelection = Literal["blocks", "matrices"]


def fapm_scores(pre: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    """S = |tau| - mean(|W_pre|) * |tau| / |W_pre| (fp32, same shape).

    |W_pre| is floored at 1e-6 * mean(|W_pre|) so a change to an exactly-zero weight gets a very negative
    (finite) score, i.e. is pruned first; an all-zero tensor scores |tau| (no relative term to apply).
    """
    pre, tau = pre.float(), tau.float()
    magnitude = pre.abs()
    mean = magnitude.mean()
    floor = torch.clamp(mean * 1e-6, min=torch.finfo(torch.float32).tiny)
    return tau.abs() - mean * tau.abs() / magnitude.clamp_min(floor)


def keep_mask(scores: torch.Tensor, keep: float) -> torch.Tensor:
    """Boolean mask of the round(keep * numel) highest scores (exactly that many, ties broken by topk)."""
    count = round(keep * scores.numel())
    mask = torch.zeros(scores.numel(), dtype=torch.bool, device=scores.device)
    if count > 0:
        mask[torch.topk(scores.reshape(-1), count, sorted=False).indices] = True
    return mask.view_as(scores)


@register_strategy
class FAPM(Strategy):
    """Prune the task vector of each weight matrix to the `keep` fraction with the best forgetting-aware score."""

    name = "fapm"
    strength = Strength("keep", "down", bound=0.01, applies="task_end")
    changes_base_weights = True  # under LoRA the pruned update is written into the base weights

    class Params(StrategyParams):
        keep: float = Field(
            0.1, gt=0, le=1, description="Fraction of each matrix's task-vector entries kept; the rest reset to pre-task."
        )
        tensors: TensorSelection = Field(
            "blocks", description="blocks: the transformer blocks' matrices; matrices: every 2-D weight."
        )

    def _selected(self, name: str, tensor: torch.Tensor) -> bool:
        """2-D weights; with tensors='blocks' only those inside transformer blocks (not embeddings/head)."""
        return tensor.dim() == 2 and (self.tensors == "matrices" or block_index(name) is not None)

    def on_task_start(self, ctx: TaskContext) -> None:
        ctx.weights.remember_start(self._selected)  # full fine-tuning: W_pre on the CPU; LoRA: the base is W_pre

    @torch.no_grad()
    def transform_weights(self, ctx: TaskContext) -> None:
        kept = total = tensors = 0
        norm_kept = norm_total = 0.0
        for pre, tau, write in self._task_vectors(ctx):
            mask = keep_mask(fapm_scores(pre, tau), self.keep)
            write(mask)
            tensors += 1
            kept += int(mask.sum())
            total += mask.numel()
            norm_kept += float((tau.float()[mask] ** 2).sum())
            norm_total += float((tau.float() ** 2).sum())
        if total == 0:
            raise ForgetlessError("fapm: no weight matrix to prune (check the `tensors` knob and the adapter targets)")
        ctx.log["fapm_kept_fraction"] = kept / total
        ctx.log["fapm_kept_update_norm_fraction"] = (norm_kept / norm_total) ** 0.5 if norm_total > 0 else 1.0
        ctx.log["fapm_tensors"] = tensors

    def _task_vectors(self, ctx: TaskContext):
        """(W_pre, tau, write(mask)) per selected weight; `write` sets W = W_pre + mask * tau in the model."""
        weights = ctx.weights
        for name in weights.remembered():
            if not self._selected(name, weights.weight(name)):
                continue
            pre = weights.start(name)
            tau = weights.change(name).detach().to(pre.dtype)  # W - W_pre, or scaling * B A under LoRA

            def write(mask, name=name):
                weights.keep_change_where(name, mask)

            yield pre, tau, write
