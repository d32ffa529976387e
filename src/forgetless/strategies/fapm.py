"""`fapm`: forgetting-aware pruning of the task vector, post hoc (Huang, Cheng, Wang, EMNLP 2025, arXiv 2509.08255).

After a task, per weight matrix: tau = W_ft - W_pre; score S = |tau| - mean(|W_pre|) * |tau| / |W_pre|;
keep the top `keep` fraction of S, reset the rest to the pre-task weight: W = W_pre + mask * tau.
A change is kept when it is large in absolute terms but small relative to the weight it changes.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field

from ..errors import ForgetlessError
from . import register_strategy
from ._common import block_index, lora_linear_layers_by_weight, trained_parameters
from .base import Strategy, StrategyParams, TaskContext

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
    supports_multiprocess = False  # FSDP shards would be pruned per shard, not per tensor
    changes_base_weights = True  # under LoRA the pruned update is written into the base weights

    class Params(StrategyParams):
        keep: float = Field(
            0.1, gt=0, le=1, description="Fraction of each matrix's task-vector entries kept; the rest reset to pre-task."
        )
        tensors: TensorSelection = Field(
            "blocks", description="blocks: the transformer blocks' matrices; matrices: every 2-D weight."
        )

    def __init__(self, **params: Any):
        super().__init__(**params)
        self._pre: dict[str, torch.Tensor] = {}  # full fine-tuning: pre-task weights (CPU)

    def _selected(self, name: str, tensor: torch.Tensor) -> bool:
        """2-D weights; with tensors='blocks' only those inside transformer blocks (not embeddings/head)."""
        return tensor.dim() == 2 and (self.tensors == "matrices" or block_index(name) is not None)

    def on_task_start(self, ctx: TaskContext) -> None:
        self._pre = {}
        if ctx.setup.adapter == "lora":
            return  # the adapter is the whole task vector; the base weights are W_pre
        for name, parameter in trained_parameters(ctx.model).items():
            if self._selected(name, parameter):
                self._pre[name] = parameter.detach().to("cpu", copy=True)

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
        self._pre = {}

    def _task_vectors(self, ctx: TaskContext):
        """(W_pre, tau, write(mask)) per selected tensor; `write` sets W = W_pre + mask * tau in the model."""
        if ctx.setup.adapter == "lora":
            adapter = ctx.adapter
            for name, layer in lora_linear_layers_by_weight(ctx.model, adapter).items():
                weight = layer.base_layer.weight
                if not self._selected(name, weight):
                    continue
                tau = layer.get_delta_weight(adapter).to(weight.dtype)  # scaling * B @ A, shaped like W

                def write(mask, weight=weight, tau=tau, layer=layer):
                    # Fold the pruned update into the base and zero the adapter: a sparse update has no rank-r form.
                    weight.add_(torch.where(mask, tau, torch.zeros_like(tau)))
                    layer.lora_B[adapter].weight.zero_()

                yield weight, tau, write
            return
        parameters = trained_parameters(ctx.model)
        for name, pre_cpu in self._pre.items():
            parameter = parameters[name]
            pre = pre_cpu.to(parameter.device)

            def write(mask, parameter=parameter, pre=pre):
                # torch.where keeps both sides bit-exact: pruned entries are exactly W_pre, kept exactly W_ft.
                parameter.copy_(torch.where(mask, parameter, pre))

            yield pre, parameter.detach() - pre, write
