"""`l2sp`: L2-SP (Li et al. 2018), a plain quadratic pull toward the starting point.

    penalty = (lam / 2) * sum_i (theta_i - theta0_i)^2

theta0 = the weights at the start of the run (full fine-tuning). Under LoRA the trained parameters are
the adapter's, and the distance to the base is its update: penalty = (lam / 2) * sum (scaling * B A)^2
per adapted weight (in merge mode the base is the model merged after the previous task). Every weight
counts the same: this is the baseline every importance-weighted method (EWC, ...) must beat.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field

from ..task_weights import TaskWeights
from . import register_strategy
from .base import Strategy, StrategyParams, Strength, TaskContext
from .ewc import squared_distance


@register_strategy
class L2SP(Strategy):
    """Quadratic distance to the starting weights (full) or size of the LoRA update (lora)."""

    name = "l2sp"
    strength = Strength("lam", "up", bound=1e12)
    # Penalties are keyed by parameter name: right under DDP (replicated weights), wrong under FSDP (sharded).

    class Params(StrategyParams):
        lam: float = Field(0.01, ge=0, description="Penalty weight on the squared distance to the starting weights.")

    def __init__(self, **params: Any):
        super().__init__(**params)
        self.anchor: dict[str, torch.Tensor] = {}  # theta0 by weight name (full fine-tuning only)
        self._weights: TaskWeights | None = None

    def on_task_start(self, ctx: TaskContext) -> None:
        self._weights = ctx.weights
        if self._weights.change_is_stored and not self.anchor:  # the run's start (unless restored from a state)
            self.anchor = {name: w.detach().float().clone() for name, w in self._weights.weights().items()}

    def extra_loss(self, ctx: TaskContext, model: torch.nn.Module, inputs: dict[str, torch.Tensor], outputs: Any):
        if self.lam == 0:
            return None
        return self.lam / 2 * self.squared_distance()

    def squared_distance(self) -> torch.Tensor:
        """sum (theta - theta0)^2 over the trained weights, or sum (scaling B A)^2 under LoRA."""
        weights = self._weights
        if weights.change_is_stored:  # (theta, theta0) rather than their difference: no temporary per weight
            weights_now = weights.weights().items()
            terms = [squared_distance(w, self._anchor_on(name, w)) for name, w in weights_now if name in self.anchor]
        else:
            terms = [squared_distance(weights.change(name)) for name in weights.names()]
        return torch.stack(terms).sum()

    def _anchor_on(self, name: str, like: torch.Tensor) -> torch.Tensor:
        if self.anchor[name].device != like.device:  # a loaded state arrives on the CPU
            self.anchor[name] = self.anchor[name].to(like.device)
        return self.anchor[name]

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {f"anchor.{name}": value for name, value in self.anchor.items()}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.anchor = {key.partition(".")[2]: value for key, value in tensors.items() if key.startswith("anchor.")}
