"""Token-weighted perplexity: of labelled token sequences (chat replies), and of plain text.

Perplexity here is exp(total NLL / total scored tokens) over the whole set, so a long document
weighs as much as its tokens; averaging per-document perplexities would let short documents
dominate. Plain text longer than the model's window is scored with a sliding window (the Hugging
Face perplexity guide): windows of `max_length` tokens start every `stride` tokens, and each
window scores only the tokens no earlier window scored, so every token is scored exactly once
with up to `max_length - 1` tokens of context.

Like lm-eval's rolling log-likelihood, a text is preceded by the BOS token (EOS when there is no
BOS) unless the tokenizer already starts it with that token, so its first token is scored too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

from ..errors import ForgetlessError
from ._scoring import (
    left_pad,
    logits_at,
    model_device,
    progress_bar,
    scoring_mode,
    token_budget_batches,
)
from .multiple_choice import prefix_token_id

IGNORE_INDEX = -100


@dataclass
class PerplexityResult:
    """Corpus perplexity (token-weighted) and the per-document sums it is made of."""

    perplexity: float
    nll_per_token: float
    n_tokens: int
    doc_nll: list[float]  # per document: summed NLL of its scored tokens (nats)
    doc_tokens: list[int]  # per document: number of scored tokens


def _result(doc_nll: list[float], doc_tokens: list[int]) -> PerplexityResult:
    total_tokens = sum(doc_tokens)
    if total_tokens == 0:
        raise ForgetlessError("nothing to score: no document has a scored token")
    nll_per_token = sum(doc_nll) / total_tokens
    return PerplexityResult(math.exp(nll_per_token), nll_per_token, total_tokens, doc_nll, doc_tokens)


def _has_scored_token(labels: Sequence[int]) -> bool:
    """Whether any label is scored; position 0 never is (nothing predicts it)."""
    return any(label != IGNORE_INDEX for label in labels[1:])


def _batch_nll(model, batch: list[tuple[list[int], list[int]]], pad_token_id: int, device):
    """Summed NLL and scored-token count of each sequence of one batch."""
    ids, mask, positions = left_pad([input_ids for input_ids, _ in batch], pad_token_id, device)
    # A sequence's first label is never scored (nothing predicts it): left padding would otherwise score
    # it from a pad position's logits in every row shorter than the batch's longest.
    labels, _, _ = left_pad([[IGNORE_INDEX, *labels[1:]] for _, labels in batch], IGNORE_INDEX, device)
    # The logits at column c predict the label at column c + 1; only scored labels need logits.
    rows, label_columns = (labels[:, 1:] != IGNORE_INDEX).nonzero(as_tuple=True)
    label_columns = label_columns + 1
    logits = logits_at(
        model, rows, label_columns - 1, input_ids=ids, attention_mask=mask, position_ids=positions
    ).float()  # [scored tokens, vocab]
    token_nll = torch.nn.functional.cross_entropy(logits, labels[rows, label_columns], reduction="none")
    sums = torch.zeros(len(batch), dtype=torch.float64, device=device).index_add_(0, rows, token_nll.double())
    return sums.tolist(), torch.bincount(rows, minlength=len(batch)).tolist()


def _sequence_nlls(model, sequences, pad_token_id: int, max_batch_tokens: int, progress: bool | str, description: str):
    """Per sequence: summed NLL and number of scored tokens; sequences with none never reach the model."""
    for number, (input_ids, labels) in enumerate(sequences, start=1):
        if len(input_ids) != len(labels):
            raise ForgetlessError(
                f"sequence {number}: {len(input_ids)} input ids but {len(labels)} labels; they must match"
            )
    nll = [0.0] * len(sequences)
    counts = [0] * len(sequences)
    scored = [index for index, (_, labels) in enumerate(sequences) if _has_scored_token(labels)]
    device = model_device(model)
    with scoring_mode(model), progress_bar(progress, len(sequences), description) as bar:
        bar.update(len(sequences) - len(scored))
        for batch in token_budget_batches([len(sequences[index][0]) for index in scored], max_batch_tokens):
            indices = [scored[position] for position in batch]
            sums, batch_counts = _batch_nll(model, [sequences[i] for i in indices], pad_token_id, device)
            for index, total, count in zip(indices, sums, batch_counts):
                nll[index], counts[index] = total, count
            bar.update(len(indices))
    return nll, counts


def score_sequences_nll(
    model,
    sequences: Sequence[tuple[list[int], list[int]]],
    *,
    pad_token_id: int,
    max_batch_tokens: int = 1024,
    progress: bool | str = False,
) -> PerplexityResult:
    """Perplexity of (input_ids, labels) pairs; labels are -100 where not scored (e.g. a chat prompt).

    As in transformers, the label at position t is the token predicted from positions < t.
    """
    nll, counts = _sequence_nlls(model, sequences, pad_token_id, max_batch_tokens, progress, "perplexity")
    return _result(nll, counts)


def sliding_windows(token_ids: list[int], max_length: int, stride: int) -> list[tuple[list[int], list[int]]]:
    """(input_ids, labels) windows that score every token after the first exactly once.

    Window k covers tokens [k * stride, k * stride + max_length); its labels hide the tokens that
    earlier windows already scored, which become context.
    """
    windows: list[tuple[list[int], list[int]]] = []
    scored_until = 1  # token 0 has no context and is never scored
    for begin in range(0, max(len(token_ids) - 1, 1), stride):
        end = min(begin + max_length, len(token_ids))
        window = token_ids[begin:end]
        labels = [IGNORE_INDEX if begin + offset < scored_until else token for offset, token in enumerate(window)]
        windows.append((window, labels))
        scored_until = end
        if end == len(token_ids):
            break
    return windows


def score_text_perplexity(
    model,
    tokenizer,
    texts: Sequence[str],
    *,
    max_length: int = 512,
    stride: int = 256,
    max_batch_tokens: int = 1024,
    progress: bool | str = False,
) -> PerplexityResult:
    """Token-weighted perplexity of plain texts, long ones through a sliding window (see module doc)."""
    if max_length < 2:
        raise ForgetlessError(f"max_length must be at least 2 tokens, got {max_length}")
    if not 0 < stride <= max_length - 1:
        # A stride of max_length or more would leave tokens without a window that scores them in context.
        raise ForgetlessError(f"stride must be between 1 and max_length - 1 = {max_length - 1}, got {stride}")
    if not texts:
        raise ForgetlessError("no texts to score")
    prefix = prefix_token_id(tokenizer)
    windows: list[tuple[list[int], list[int]]] = []
    owner: list[int] = []  # document index of each window
    for doc_index, ids in enumerate(tokenizer(list(texts))["input_ids"]):
        ids = list(ids)
        if not ids or ids[0] != prefix:
            ids = [prefix] + ids
        for window in sliding_windows(ids, max_length, stride):
            windows.append(window)
            owner.append(doc_index)
    pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else prefix
    nll, counts = _sequence_nlls(model, windows, pad_token_id, max_batch_tokens, progress, "perplexity (windows)")
    doc_nll = [0.0] * len(texts)
    doc_tokens = [0] * len(texts)
    for doc_index, window_nll, window_count in zip(owner, nll, counts):
        doc_nll[doc_index] += window_nll
        doc_tokens[doc_index] += window_count
    return _result(doc_nll, doc_tokens)
