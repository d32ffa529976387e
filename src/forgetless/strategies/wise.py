"""`wise`: WiSE-FT weight interpolation after each task (Wortsman et al., CVPR 2022; repo mlfoundations/wise-ft).

theta = (1 - alpha) * theta_0 + alpha * theta_ft, with theta_0 the weights at the task's start. `alpha: auto`
picks the largest alpha of the grid 1.0, 0.9, ..., 0.0 whose drop of a held-out general-text score stays
within `budget`. The validation texts are the last `validation_texts` of `ctx.general_texts` (general
English disjoint from every evaluation item), scored as 1 - log_V(perplexity) like the general suite.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal, Sequence

import torch
from pydantic import Field

from ..errors import ForgetlessError
from . import register_strategy
from ._common import trained_parameters
from .base import Strategy, StrategyParams, TaskContext

ALPHA_GRID = tuple(round(1.0 - step / 10, 1) for step in range(11))  # 1.0, 0.9, ..., 0.0
VALIDATION_MAX_LENGTH = 512  # as the general suite's perplexity tasks


def validation_score(model: torch.nn.Module, tokenizer, texts: Sequence[str]) -> float:
    """1 - log_V(perplexity) of `texts` (V = vocabulary size): the general suite's perplexity score."""
    from ..evaluation.perplexity import score_text_perplexity

    result = score_text_perplexity(model, tokenizer, list(texts), max_length=VALIDATION_MAX_LENGTH)
    return 1.0 - result.nll_per_token / math.log(len(tokenizer))


@register_strategy
class WiSE(Strategy):
    """Interpolate between the task's starting and fine-tuned weights; alpha fixed or chosen on held-out general text."""

    name = "wise"

    class Params(StrategyParams):
        alpha: Annotated[float, Field(ge=0, le=1, strict=True)] | Literal["auto"] = Field(
            0.5,
            description="theta = theta0 + alpha (theta_ft - theta0); auto: the largest alpha within budget on general text.",
        )
        budget: float = Field(
            0.01, ge=0, description="alpha auto: the largest alpha whose general-text score drop is within this."
        )
        validation_texts: int = Field(64, ge=1, description="alpha auto: held-out general texts the choice is scored on.")

    def __init__(self, **params: Any):
        super().__init__(**params)
        self._start: dict[str, torch.Tensor] = {}  # full fine-tuning: theta_0 of the trained tensors (CPU)

    def check(self, setup, stack, world_size: int = 1) -> None:
        super().check(setup, stack, world_size)
        if self.alpha == "auto" and world_size > 1:
            raise ForgetlessError("strategy 'wise' with alpha 'auto' scores on one process; run it without DDP/FSDP")

    def on_task_start(self, ctx: TaskContext) -> None:
        if ctx.setup.adapter == "lora":
            # A fresh LoRA adapter starts at B = 0, so theta_ft - theta_0 = scaling * B @ A, linear in B.
            self._start = {}
            for name, parameter in self._lora_b(ctx).items():
                if parameter.count_nonzero():
                    raise ForgetlessError(f"wise: LoRA parameter {name} is not zero at the task's start; "
                                          "WiSE-FT under LoRA needs freshly initialised adapters (B = 0)")
            return
        self._start = {name: p.detach().to("cpu", copy=True) for name, p in trained_parameters(ctx.model).items()}

    @staticmethod
    def _lora_b(ctx: TaskContext) -> dict[str, torch.nn.Parameter]:
        adapter = ctx.adapter
        return {name: p for name, p in trained_parameters(ctx.model).items()
                if f".{adapter}." in name and (".lora_B." in name or ".lora_embedding_B." in name)}

    @torch.no_grad()
    def transform_weights(self, ctx: TaskContext) -> None:
        set_alpha = self._interpolator(ctx)
        if self.alpha == "auto":
            texts = ctx.general_texts[-self.validation_texts:]
            set_alpha(0.0)
            base_score = validation_score(ctx.model, ctx.tokenizer, texts)
            chosen, drop = 0.0, 0.0
            for alpha in ALPHA_GRID[:-1]:
                set_alpha(alpha)
                drop = base_score - validation_score(ctx.model, ctx.tokenizer, texts)
                if drop <= self.budget:
                    chosen = alpha
                    break
            else:
                drop = 0.0  # no alpha > 0 stays within the budget: keep the task's starting weights
            ctx.log["wise_validation_drop"] = drop
        else:
            chosen = float(self.alpha)
        set_alpha(chosen)
        ctx.log["wise_alpha"] = chosen
        self._start = {}

    def _interpolator(self, ctx: TaskContext):
        """A function alpha -> sets the model to theta_0 + alpha * (theta_ft - theta_0), callable repeatedly."""
        if ctx.setup.adapter == "lora":
            finetuned_b = {name: p.detach().clone() for name, p in self._lora_b(ctx).items()}
            parameters = self._lora_b(ctx)

            def set_lora(alpha: float) -> None:
                for name, b in finetuned_b.items():
                    parameters[name].copy_(b * alpha)

            return set_lora
        parameters = trained_parameters(ctx.model)
        if self.alpha != "auto":

            def set_once(alpha: float) -> None:  # one interpolation in place: no copy of theta_ft needed
                for name, start in self._start.items():
                    parameter = parameters[name]
                    parameter.copy_(torch.lerp(start.to(parameter.device), parameter, alpha))

            return set_once
        # The search sets several alphas, so it holds theta_ft too (a second CPU copy, during the search only).
        finetuned = {name: parameters[name].detach().to("cpu", copy=True) for name in self._start}

        def set_full(alpha: float) -> None:
            for name, start in self._start.items():
                parameter = parameters[name]
                parameter.copy_(torch.lerp(start.to(parameter.device), finetuned[name].to(parameter.device), alpha))

        return set_full
