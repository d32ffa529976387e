"""Turning rows into token ids and labels, and batches of those into padded tensors.

A training feature is a dict with `input_ids` and `labels` (lists of ints, -100 where no loss is taken;
STM masks tokens that way). Chat rows
(prompt/response) take loss on the response only; plain text takes loss everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

IGNORE_INDEX = -100

# Used when a tokenizer has no chat template (base models): simple, and stable across tokenizers.
_FALLBACK_PROMPT = "User: {prompt}\nAssistant: "


def chat_prompt_text(tokenizer, prompt: str) -> str:
    """The text that precedes the assistant's reply, exactly as the model sees it in training."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
    return _FALLBACK_PROMPT.format(prompt=prompt)


def chat_token_ids(tokenizer, prompt: str, response: str) -> tuple[list[int], list[int]]:
    """(prompt ids, response ids) of a chat row in the model's chat format, untruncated."""
    prompt_text = chat_prompt_text(tokenizer, prompt)
    if getattr(tokenizer, "chat_template", None):
        full_text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}], tokenize=False
        )
    else:
        full_text = prompt_text + response + (tokenizer.eos_token or "")
    if not full_text.startswith(prompt_text):
        raise ValueError("the chat template does not render the prompt as a prefix of the full conversation")
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    response_ids = tokenizer(full_text[len(prompt_text) :], add_special_tokens=False)["input_ids"]
    return prompt_ids, response_ids


def encode_chat(tokenizer, prompt: str, response: str, max_length: int) -> dict[str, list[int]]:
    """Prompt + response in the model's chat format; labels cover the response (and its end marker)."""
    return _chat_feature(*chat_token_ids(tokenizer, prompt, response), max_length)


def _chat_feature(prompt_ids: list[int], response_ids: list[int], max_length: int) -> dict[str, list[int]]:
    input_ids = (prompt_ids + response_ids)[:max_length]
    labels = ([IGNORE_INDEX] * len(prompt_ids) + response_ids)[:max_length]
    return {"input_ids": input_ids, "labels": labels}


def encode_text(tokenizer, text: str, max_length: int) -> list[dict[str, list[int]]]:
    """Plain text split into consecutive windows of at most max_length tokens (no token is dropped)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is not None:
        ids = ids + [tokenizer.eos_token_id]  # teaches where a document ends, as in pretraining
    return [
        {"input_ids": ids[start : start + max_length], "labels": ids[start : start + max_length]}
        for start in range(0, len(ids), max_length)
        if len(ids[start : start + max_length]) > 1
    ]


@dataclass
class EncodingCounts:
    """What max_length did to a task's chat rows (text rows are split into windows instead: nothing is lost)."""

    rows: int = 0
    emptied: int = 0  # the prompt fills max_length: no response token is left, the row is dropped
    truncated: int = 0  # cut at max_length: trained, but the end of the response is not


def encode_rows_counted(
    tokenizer, rows: list[dict[str, Any]], max_length: int
) -> tuple[list[dict[str, list[int]]], EncodingCounts]:
    """Encode validated task rows, counting the chat rows max_length emptied (dropped) or truncated."""
    features: list[dict[str, list[int]]] = []
    counts = EncodingCounts(rows=len(rows))
    for row in rows:
        if "text" in row:
            features.extend(encode_text(tokenizer, row["text"], max_length))
            continue
        prompt_ids, response_ids = chat_token_ids(tokenizer, row["prompt"], row["response"])
        if len(prompt_ids) >= max_length or not response_ids:
            counts.emptied += 1
            continue
        features.append(_chat_feature(prompt_ids, response_ids, max_length))
        counts.truncated += len(prompt_ids) + len(response_ids) > max_length
    return features, counts


def encode_rows(tokenizer, rows: list[dict[str, Any]], max_length: int) -> list[dict[str, list[int]]]:
    """Encode validated task rows; examples left with no trained token (prompt too long) are dropped."""
    return encode_rows_counted(tokenizer, rows, max_length)[0]


class PaddingCollator:
    """Right-pads a list of features into tensors; padded positions get label -100."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        length = max(len(f["input_ids"]) for f in features)
        batch = len(features)
        input_ids = torch.full((batch, length), self.pad_token_id, dtype=torch.long)  # (B, T)
        attention_mask = torch.zeros((batch, length), dtype=torch.long)
        labels = torch.full((batch, length), IGNORE_INDEX, dtype=torch.long)
        for row, feature in enumerate(features):
            n = len(feature["input_ids"])
            input_ids[row, :n] = torch.tensor(feature["input_ids"], dtype=torch.long)
            attention_mask[row, :n] = 1
            labels[row, :n] = torch.tensor(feature["labels"], dtype=torch.long)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
