"""`wise`: WiSE-FT weight interpolation after each task (Wortsman et al., CVPR 2022; repo mlfoundations/wise-ft).

theta = (1 - alpha) * theta_0 + alpha * theta_ft, with theta_0 the weights at the task's start. `alpha: auto`
picks the largest alpha of the grid 1.0, 0.9, ..., 0.0 whose drop of a held-out general-text score stays
within `budget`. The validation rows are the last `validation_texts` of `ctx.general_rows` (general
English disjoint from every evaluation item, or the run's `general_data`), scored as 1 - log_V(perplexity)
like the general suite (chat rows: the perplexity of their responses).
"""

from __future__ import annotations

import logging
import math
from typing import Annotated, Any, Literal, Sequence

import torch
from pydantic import Field

from ..errors import ForgetlessError
from . import register_strategy
from .base import Strategy, StrategyParams, Strength, TaskContext

ALPHA_GRID = tuple(round(1.0 - step / 10, 1) for step in range(11))  # 1.0, 0.9, ..., 0.0
VALIDATION_MAX_LENGTH = 512  # as the general suite's perplexity tasks
# Below this many times validation_texts rows, the rows other strategies draw (replay, ewc, ...) overlap wise's often
# (the bundled general English has 3,000 for 64).
SHARED_ROWS_WARNING = 10
log = logging.getLogger(__name__)


def validation_score(model: torch.nn.Module, tokenizer, rows: Sequence[dict[str, Any]]) -> float:
    """1 - log_V(perplexity) of general `rows` (V = vocabulary size): the general suite's perplexity score.

    Text rows through the suite's sliding window; chat rows on their response tokens, in the chat format the
    model trains in (truncated at the same length)."""
    from ..data.encoding import encode_rows
    from ..evaluation.perplexity import score_sequences_nll, score_text_perplexity

    if all("text" in row for row in rows):
        result = score_text_perplexity(model, tokenizer, [row["text"] for row in rows], max_length=VALIDATION_MAX_LENGTH)
    else:
        features = encode_rows(tokenizer, list(rows), VALIDATION_MAX_LENGTH)
        if not features:
            raise ForgetlessError(f"wise alpha auto: no general chat row keeps a response token within "
                                  f"{VALIDATION_MAX_LENGTH} tokens, so nothing can be scored")
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        result = score_sequences_nll(model, [(f["input_ids"], f["labels"]) for f in features], pad_token_id=pad)
    return 1.0 - result.nll_per_token / math.log(len(tokenizer))


@register_strategy
class WiSE(Strategy):
    """Interpolate between the task's starting and fine-tuned weights; alpha fixed or chosen on held-out general text."""

    name = "wise"
    strength = Strength("alpha", "down", bound=0.0, applies="task_end")

    class Params(StrategyParams):
        alpha: Annotated[float, Field(ge=0, le=1, strict=True)] | Literal["auto"] = Field(
            0.5,
            description="theta = theta0 + alpha (theta_ft - theta0); auto: the largest alpha within budget on the general rows.",
        )
        budget: float = Field(
            0.01, ge=0, description="alpha auto: the largest alpha whose general-row score drop is within this."
        )
        validation_texts: int = Field(64, ge=1, description="alpha auto: the general rows (the last ones) the choice is "
                                      "scored on.")

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
            rows = ctx.general_rows[-self.validation_texts:]
            if ctx.general is not None and len(ctx.general_rows) < SHARED_ROWS_WARNING * self.validation_texts:
                log.warning(f"wise alpha auto scores the last {len(rows)} of only {len(ctx.general_rows)} general_data rows, "
                            "which other strategies in the stack may also train on: that would understate the drop")
            set_alpha(0.0)
            base_score = validation_score(ctx.model, ctx.tokenizer, rows)
            chosen, drop = 0.0, 0.0
            for alpha in ALPHA_GRID[:-1]:
                set_alpha(alpha)
                drop = base_score - validation_score(ctx.model, ctx.tokenizer, rows)
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
