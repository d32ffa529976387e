"""`naive`: plain fine-tuning with nothing against forgetting — the baseline every strategy must beat."""

from __future__ import annotations

from . import register_strategy
from .base import Strategy


@register_strategy
class Naive(Strategy):
    """Cross-entropy on the task only. Full fine-tuning or LoRA depending on the run's `adapter`."""

    name = "naive"
    sharded_reason = "no run under {engine} has been verified yet"
