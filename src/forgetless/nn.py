"""Tensor math shared by strategies, the trainer glue and the runner; it imports nothing above it."""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from .data.encoding import IGNORE_INDEX


def trained_tokens(labels: torch.Tensor) -> int:
    """Targets of the shifted next-token loss: labels after the first position that are not ignored."""
    return int((labels[..., 1:] != IGNORE_INDEX).sum())


def token_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy averaged over trained tokens; logits (B, T, V), labels (B, T) with -100 untrained.

    Zero (with a graph) when no token is trained.
    """
    logits, targets = logits[:, :-1, :], labels[:, 1:]  # position t predicts token t+1
    flat_logits, flat_targets = logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1)
    nll = F.cross_entropy(flat_logits, flat_targets, ignore_index=IGNORE_INDEX, reduction="sum")
    return nll / (targets != IGNORE_INDEX).sum().clamp(min=1)


@contextlib.contextmanager
def without_input_grad_hooks(model: torch.nn.Module):
    """Lift transformers' `enable_input_require_grads` hook for the duration (restored after).

    Trainers turn it on with gradient checkpointing (TRL's SFTConfig does by default); its in-place
    `requires_grad_` on the embeddings' output is illegal inside torch.func transforms (EWC's vmap).
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    hooked = bool(getattr(base, "_require_grads_hooks", None) or getattr(base, "_require_grads_hook", None))
    if hooked:
        base.disable_input_require_grads()
    # A second trainer on the same model (the next task) enables it again, and transformers then keeps only the
    # newest handles: earlier hooks stay registered where disable_input_require_grads cannot reach them.
    embeddings = base.get_input_embeddings() if hasattr(base, "get_input_embeddings") else None
    for key, hook in list(getattr(embeddings, "_forward_hooks", {}).items()):
        if getattr(hook, "__name__", "") == "make_inputs_require_grads":
            del embeddings._forward_hooks[key]
            hooked = True
    try:
        yield model
    finally:
        if hooked:
            base.enable_input_require_grads()
