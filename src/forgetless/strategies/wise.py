"""`wise`: WiSE-FT weight interpolation after each task (Wortsman et al., CVPR 2022; repo mlfoundations/wise-ft).

theta = (1 - alpha) * theta_0 + alpha * theta_ft, with theta_0 the weights at the task's start. `alpha: auto`
picks the largest alpha of the grid 1.0, 0.9, ..., 0.0 whose drop of a held-out general-text score stays
within `budget`. The validation texts are the last `validation_texts` of `ctx.general_texts` (general
English disjoint from every evaluation item), scored as 1 - log_V(perplexity) like the general suite.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal, Sequence

import torch
from pydantic import Field

from ..errors import ForgetlessError
from . import register_strategy
from .base import Strategy, StrategyParams, Strength, TaskContext

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
    strength = Strength("alpha", "down", bound=0.0, applies="task_end")

    class Params(StrategyParams):
        alpha: Annotated[float, Field(ge=0, le=1, strict=True)] | Literal["auto"] = Field(
            0.5,
            description="theta = theta0 + alpha (theta_ft - theta0); auto: the largest alpha within budget on general text.",
        )
        budget: float = Field(
            0.01, ge=0, description="alpha auto: the largest alpha whose general-text score drop is within this."
        )
        validation_texts: int = Field(64, ge=1, description="alpha auto: held-out general texts the choice is scored on.")

    def check(self, setup, stack, world_size: int = 1) -> None:
        super().check(setup, stack, world_size)
        if self.alpha == "auto" and world_size > 1:
            raise ForgetlessError("strategy 'wise' with alpha 'auto' scores on one process; run it without DDP/FSDP")

    def on_task_start(self, ctx: TaskContext) -> None:
        # theta_0: a CPU copy under full fine-tuning; under LoRA the update scaling * B A is linear in B and
        # starts at zero, so theta_0 + alpha (theta_ft - theta_0) is B <- alpha * B_ft.
        ctx.weights.check_fresh_adapter("wise")
        ctx.weights.remember_start()

    @torch.no_grad()
    def transform_weights(self, ctx: TaskContext) -> None:
        # The search sets several alphas, so it holds theta_ft too (a second CPU copy, during the search only).
        set_alpha = ctx.weights.interpolator(repeatable=self.alpha == "auto")
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
