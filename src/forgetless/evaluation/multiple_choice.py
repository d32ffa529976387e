"""Multiple-choice scoring by log-likelihood, defined exactly as lm-evaluation-harness defines it.

For each item, every choice is scored as the continuation `delimiter + choice` of the question:
its log-likelihood is the sum of the log-probabilities of its tokens. `acc` picks the choice with
the highest log-likelihood, `acc_norm` the highest log-likelihood per character of the choice
string (lm-eval's `len(choice)`, the choice without the delimiter). Tokenisation follows lm-eval's
`_encode_pair`: whitespace at the end of the question moves into the continuation, and the
continuation's tokens are those of `tokenize(question + continuation)` after the question's own.

Speed comes from running each item once, not once per choice: an item is packed into a single
row, its context followed by its choices (each without its last token, which predicts nothing),
with an attention mask that lets each choice see the context and itself, and position ids that
restart every choice at the end of the context. The LM head runs only at the positions that
predict a choice token. Items are batched by a budget of padded
tokens, longest first. The custom 4D mask needs the `sdpa` or `eager` attention implementation.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import torch

from ..errors import ForgetlessError
from ..metrics import accuracy_stderr
from ._scoring import (
    logits_at,
    model_device,
    model_max_length,
    progress_bar,
    scoring_mode,
    token_budget_batches,
    unwrap_model,
)

log = logging.getLogger(__name__)

# Attention implementations that apply a custom 4D additive mask as given (flash attention ignores it).
MASKABLE_ATTENTION = ("sdpa", "eager")


@dataclass(frozen=True)
class MultipleChoiceItem:
    """One question: the full context (scored exactly as given), its choices and the correct index."""

    question: str
    choices: tuple[str, ...]
    answer: int


@dataclass
class MultipleChoiceResult:
    """Accuracies with lm-eval's standard errors, plus per-item details for paired comparisons."""

    acc: float
    acc_norm: float
    acc_stderr: float
    acc_norm_stderr: float
    n: int
    correct: list[bool]
    correct_norm: list[bool]
    loglikelihoods: list[list[float]]  # [item][choice]
    truncated: int = 0  # items whose question was cut from the left to fit the model (lm-eval does the same, silently)
    max_length: int = 0  # the model's maximum input length those items were cut to


@dataclass
class _EncodedItem:
    """Token ids of an item's context and of each of its continuations."""

    context: list[int]
    continuations: list[list[int]]


def prefix_token_id(tokenizer) -> int:
    """The token lm-eval puts before an empty context: BOS, else EOS."""
    return tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id


def _encode_item(tokenizer, question: str, continuations: list[str]) -> _EncodedItem:
    """Token ids of the question and of each continuation, as lm-eval's `loglikelihood` makes them."""
    if not question.strip():
        # lm-eval scores a continuation of an empty context after the BOS (or EOS) token.
        continuations = [question + continuation for continuation in continuations]
        encoded = tokenizer(continuations, add_special_tokens=False)["input_ids"]
        return _EncodedItem([prefix_token_id(tokenizer)], [list(ids) for ids in encoded])
    # lm-eval moves trailing whitespace from the context into the continuation.
    context = question.rstrip()
    moved = question[len(context) :]
    continuations = [moved + continuation for continuation in continuations]
    # Like lm-eval's tok_encode: the tokenizer's own special tokens, unless the text already starts with BOS.
    prefix_text = tokenizer.decode([prefix_token_id(tokenizer)])
    special = {"add_special_tokens": False} if context.startswith(prefix_text) else {}
    encoded = tokenizer([context] + [context + continuation for continuation in continuations], **special)
    context_ids = list(encoded["input_ids"][0])
    return _EncodedItem(context_ids, [list(whole[len(context_ids) :]) for whole in encoded["input_ids"][1:]])


def _truncate_context(item: _EncodedItem, max_length: int, item_number: int) -> _EncodedItem:
    """Drop context tokens from the left so that context + longest choice - 1 fits the model.

    lm-eval truncates each (context, choice) pair on its own; here all choices keep one shared,
    equally truncated context, which only differs when a question does not fit the model at all.
    """
    lengths = [len(continuation) for continuation in item.continuations]
    if min(lengths) == 0 or max(lengths) > max_length:
        raise ForgetlessError(
            f"item {item_number}: choices have {min(lengths)} to {max(lengths)} tokens; "
            f"each must have 1 to {max_length} (the model's maximum)"
        )
    longest = max(lengths)
    keep = max_length + 1 - longest
    if len(item.context) <= keep:
        return item
    return _EncodedItem(item.context[-keep:], item.continuations)


def _validate(items: Sequence[MultipleChoiceItem]) -> None:
    for number, item in enumerate(items, start=1):
        if len(item.choices) < 1:
            raise ForgetlessError(f"item {number}: no choices")
        if any(not choice for choice in item.choices):
            # acc_norm divides by the choice's length.
            raise ForgetlessError(f"item {number}: a choice is an empty string")
        if not 0 <= item.answer < len(item.choices):
            raise ForgetlessError(
                f"item {number}: answer {item.answer} is not an index into its {len(item.choices)} choices"
            )


def _packed_row(item: _EncodedItem) -> tuple[list[int], list[int], list[int]]:
    """One item as a single row: the context, then every choice but its last token.

    Returns token ids, position ids (each choice continues from the end of the context) and
    segment ids (0 for the context, j + 1 for choice j). A choice's last token predicts nothing,
    so it is never an input, and a one-token choice is scored from the context's last logits alone.
    """
    ids = list(item.context)
    positions = list(range(len(item.context)))
    segments = [0] * len(item.context)
    for choice_number, continuation in enumerate(item.continuations, start=1):
        ids += continuation[:-1]
        positions += range(len(item.context), len(item.context) + len(continuation) - 1)
        segments += [choice_number] * (len(continuation) - 1)
    return ids, positions, segments


def _choice_attention_mask(segments: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Additive [batch, 1, length, length] mask: causal, and a choice sees the context and itself only.

    `segments` is [batch, length] with -1 on padding. Fully masked rows (padding queries) get a
    finite minimum everywhere, so their softmax stays finite; their outputs are never read.
    """
    order = torch.arange(segments.shape[1], device=segments.device)
    causal = order[:, None] >= order[None, :]  # [query, key]
    query, key = segments[:, :, None], segments[:, None, :]  # [batch, length, 1], [batch, 1, length]
    allowed = causal & (key >= 0) & ((key == 0) | (key == query))
    mask = torch.zeros(allowed.shape, dtype=dtype, device=segments.device)
    return mask.masked_fill_(~allowed, torch.finfo(dtype).min).unsqueeze(1)


def _score_batch(model, items: list[_EncodedItem], pad_id: int, device: torch.device) -> list[list[float]]:
    """Log-likelihood of every continuation of every item, in one forward; [item][choice]."""
    rows = [_packed_row(item) for item in items]
    width = max(len(ids) for ids, _, _ in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    segments = torch.full((len(rows), width), -1, dtype=torch.long)
    for row, (row_ids, row_positions, row_segments) in enumerate(rows):
        # Left padding; the mask and position ids, not the column, say where a token belongs.
        ids[row, width - len(row_ids) :] = torch.tensor(row_ids)
        positions[row, width - len(row_ids) :] = torch.tensor(row_positions)
        segments[row, width - len(row_ids) :] = torch.tensor(row_segments)
    dtype = next(model.parameters()).dtype
    mask = _choice_attention_mask(segments.to(device), dtype if dtype.is_floating_point else torch.float32)

    # Which logits score which token: (row, column, target token, choice number), in padded coordinates.
    gather_row, gather_column, gather_target, gather_choice = [], [], [], []
    n_choices = 0
    for row, item in enumerate(items):
        context_last = width - len(rows[row][0]) + len(item.context) - 1
        column = context_last + 1  # where this row's next choice starts
        for continuation in item.continuations:
            # Token 0 is predicted at the context's last column, token t at the column of token t - 1.
            gather_row += [row] * len(continuation)
            gather_column += [context_last, *range(column, column + len(continuation) - 1)]
            gather_target += continuation
            gather_choice += [n_choices] * len(continuation)
            n_choices += 1
            column += len(continuation) - 1

    logits = logits_at(
        model,
        torch.tensor(gather_row, device=device),
        torch.tensor(gather_column, device=device),
        input_ids=ids.to(device),
        attention_mask=mask,
        position_ids=positions.to(device),
    ).float()  # [scored tokens, vocab]
    target = torch.tensor(gather_target, device=device)
    token_logprobs = -torch.nn.functional.cross_entropy(logits, target, reduction="none")
    choice_scores = torch.zeros(n_choices, dtype=torch.float64, device=device)
    choice_scores.index_add_(0, torch.tensor(gather_choice, device=device), token_logprobs.double())
    flat = choice_scores.tolist()
    scores, start = [], 0
    for item in items:
        scores.append(flat[start : start + len(item.continuations)])
        start += len(item.continuations)
    return scores


def warn_if_truncated(result: MultipleChoiceResult, task: str, warned: set[str]) -> None:
    """Say how many questions were cut to fit the model, once per task (a run scores the same items many times)."""
    if result.truncated and task not in warned:
        warned.add(task)
        log.warning(f"{task}: {result.truncated} of {result.n} multiple-choice items do not fit the model's "
                    f"{result.max_length} tokens (question and choice); their questions are cut from the left to fit, "
                    "which can change their scores")


def score_multiple_choice(
    model,
    tokenizer,
    items: Sequence[MultipleChoiceItem],
    *,
    delimiter: str = " ",
    max_batch_tokens: int = 1024,
    progress: bool | str = False,
) -> MultipleChoiceResult:
    """Score `items` with lm-eval's multiple-choice definitions (acc, acc_norm and their stderr).

    `max_batch_tokens` bounds one forward's padded tokens (items x longest packed item); an item
    larger than the budget still runs, alone. The default suits a CPU, where smaller batches waste
    less padding; raise it on a GPU. A truthy `progress` shows a bar (a string names it).
    """
    if not items:
        raise ForgetlessError("no multiple-choice items to score")
    _validate(items)
    attention = getattr(unwrap_model(model).config, "_attn_implementation", None)
    if attention not in MASKABLE_ATTENTION:
        raise ForgetlessError(
            f"multiple-choice scoring packs the choices of a question behind a custom attention mask, which needs "
            f"attn_implementation 'sdpa' or 'eager'; this model uses {attention!r}"
        )
    max_length = model_max_length(model, tokenizer)
    whole = [_encode_item(tokenizer, item.question, [delimiter + c for c in item.choices]) for item in items]
    encoded = [_truncate_context(item, max_length, n) for n, item in enumerate(whole, start=1)]
    truncated = sum(len(cut.context) < len(item.context) for cut, item in zip(encoded, whole))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else prefix_token_id(tokenizer)
    device = model_device(model)
    loglikelihoods: list[list[float]] = [[] for _ in items]
    row_lengths = [len(item.context) + sum(len(c) - 1 for c in item.continuations) for item in encoded]
    with scoring_mode(model), progress_bar(progress, len(items), "multiple choice") as bar:
        for batch in token_budget_batches(row_lengths, max_batch_tokens):
            batch_items = [encoded[i] for i in batch]
            for index, scores in zip(batch, _score_batch(model, batch_items, pad_id, device)):
                loglikelihoods[index] = scores
            bar.update(len(batch))

    correct, correct_norm = [], []
    for item, scores in zip(items, loglikelihoods):
        # max() keeps the first of equal values, as numpy's argmax does in lm-eval.
        predicted = max(range(len(scores)), key=lambda i: scores[i])
        predicted_norm = max(range(len(scores)), key=lambda i: scores[i] / len(item.choices[i]))
        correct.append(predicted == item.answer)
        correct_norm.append(predicted_norm == item.answer)
    acc_values = [float(value) for value in correct]
    acc_norm_values = [float(value) for value in correct_norm]
    return MultipleChoiceResult(
        acc=sum(acc_values) / len(items),
        acc_norm=sum(acc_norm_values) / len(items),
        acc_stderr=accuracy_stderr(acc_values),
        acc_norm_stderr=accuracy_stderr(acc_norm_values),
        n=len(items),
        correct=correct,
        correct_norm=correct_norm,
        loglikelihoods=loglikelihoods,
        truncated=truncated,
        max_length=max_length,
    )
