"""Plumbing shared by the log-likelihood scorers: eval mode, devices, padding, batching, logits.

Only a few positions of a batch need logits (the choices of a question, a reply after its prompt,
a window's new tokens), and the LM head (vocabulary x hidden, the largest matrix of a small model)
is a large share of the cost. `logits_at` therefore hooks the model's output embedding so that it
runs only on the hidden states at those positions. Whatever the model does after its LM head
(softcapping, scaling) is elementwise, so it still applies unchanged.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
from tqdm.auto import tqdm

from ..errors import ForgetlessError

# lm-eval's fallback when neither the config nor the tokenizer states a context length.
FALLBACK_MAX_LENGTH = 2048


@contextmanager
def scoring_mode(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode and no autograd for the block; every submodule's own train/eval flag is restored after."""
    previous = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        for module, training in previous:
            module.training = training


def model_device(model: torch.nn.Module) -> torch.device:
    """Where inputs go: the device of the first parameter (the embeddings for a sharded model)."""
    return next(model.parameters()).device


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model inside a PEFT wrapper (LoRA layers live inside it), or the model itself."""
    get_base_model = getattr(model, "get_base_model", None)
    return get_base_model() if callable(get_base_model) else model


def logits_at(
    model: torch.nn.Module, rows: torch.Tensor, columns: torch.Tensor, parameters: dict[str, torch.Tensor] | None = None,
    **inputs,
) -> torch.Tensor:
    """Run `model(**inputs)` computing logits only at (rows[i], columns[i]); returns [len(rows), vocab].

    A forward pre-hook on the output embedding replaces its [batch, length, hidden] input by the
    selected [1, positions, hidden] states, so the model's own code after the head still sees 3D.
    `parameters` (name -> tensor) stand in for the model's own for this call (`torch.func.functional_call`).
    """
    head = unwrap_model(model).get_output_embeddings()
    if head is None:
        raise ForgetlessError(f"{type(unwrap_model(model)).__name__} has no output embedding (LM head) to score with")

    def select_positions(module, args):
        return (args[0][rows, columns].unsqueeze(0), *args[1:])

    handle = head.register_forward_pre_hook(select_positions)
    try:
        if parameters is None:
            logits = model(**inputs).logits
        else:
            logits = torch.func.functional_call(model, parameters, args=(), kwargs=inputs).logits
    finally:
        handle.remove()
    if logits.shape[:2] != (1, len(rows)):
        # A patched forward (TRL's fused LM head) used the head's weight without calling the module, so
        # the hook never ran: every position was computed; select them now.
        return logits[rows, columns]
    return logits[0]


def model_max_length(model: torch.nn.Module, tokenizer=None) -> int:
    """The longest input the model takes, resolved as lm-eval does (config, then tokenizer, then 2048)."""
    config = unwrap_model(model).config
    for attribute in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(config, attribute, None)
        if isinstance(value, int) and value > 0:
            return value
    tokenizer_max = getattr(tokenizer, "model_max_length", None)
    # Tokenizers without a stated limit report a huge sentinel (1e30).
    if isinstance(tokenizer_max, int) and 0 < tokenizer_max < 1_000_000:
        return tokenizer_max
    return FALLBACK_MAX_LENGTH


def left_pad(rows: Sequence[Sequence[int]], pad_id: int, device: torch.device):
    """Left-padded ids, attention mask and position ids (counting from each row's first real token).

    Returns three [batch, longest] long tensors.
    """
    longest = max(len(row) for row in rows)
    ids = torch.full((len(rows), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), longest), dtype=torch.long)
    for index, row in enumerate(rows):
        if row:
            ids[index, longest - len(row) :] = torch.tensor(row, dtype=torch.long)
            mask[index, longest - len(row) :] = 1
    # Padding positions get position 0; they are masked, so the value only has to be valid.
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
    return ids.to(device), mask.to(device), positions.to(device)


def token_budget_batches(lengths: Sequence[int], max_batch_tokens: int) -> list[list[int]]:
    """Group indices, longest first, so that rows x longest row stays within the budget.

    Sorting by length keeps padding small; a row longer than the budget gets a batch of its own.
    """
    order = sorted(range(len(lengths)), key=lambda index: -lengths[index])
    batches: list[list[int]] = []
    for index in order:
        # The first row of a batch is its longest, so the batch costs rows x that length.
        if batches and (len(batches[-1]) + 1) * lengths[batches[-1][0]] <= max_batch_tokens:
            batches[-1].append(index)
        else:
            batches.append([index])
    return batches


def progress_bar(progress: bool | str, total: int, default_description: str):
    """A tqdm bar counting items, or a silent one when `progress` is falsy."""
    description = progress if isinstance(progress, str) else default_description
    return tqdm(total=total, desc=description, disable=not progress, unit="item")
