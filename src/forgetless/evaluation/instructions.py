"""Instruction following, checked by program: the built-in suite `instructions` (IFEval-style, prompts of our own).

Each prompt (data/assets/instructions/instructions.jsonl, built by scripts/build_instructions.py) goes through
the model's chat template and is answered by greedy decoding within a token budget; a prompt passes when every
check on it holds. The per-prompt pass/fail values are the task's items, so the paired standard error applies
as for any multiple-choice task. What fine-tuning on a narrow domain breaks first is often this (answering a
request for a poem in support-ticket style), which fact questions and perplexity do not see.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Callable

import torch

from ..data.tasks import asset_path
from ..errors import ForgetlessError
from ..fileio import read_jsonl_numbered
from ..metrics import ScoreSamples
from ._scoring import model_device, progress_bar, scoring_mode

MAX_NEW_TOKENS = 96  # enough for every prompt's answer (a 4-line poem, 5 list items, a JSON object)
BATCH_SIZE = 16


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.strip().splitlines() if line.strip()]


def _json_object(text: str):
    text = re.sub(r"^```(?:json)?\s*|\s*```$", "", text.strip())  # a fenced block is still JSON
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _has_letters(text: str) -> bool:
    return any(c.isalpha() for c in text)


CHECKS: dict[str, Callable[..., bool]] = {
    "line_count": lambda r, n: len(_lines(r)) == n,
    "bullet_count": lambda r, n: len(_lines(r)) == n and all(line.startswith(("- ", "* ")) for line in _lines(r)),
    "numbered_count": lambda r, n: [re.match(r"(\d+)[.)]\s", line) and int(re.match(r"(\d+)", line).group(1))
                                    for line in _lines(r)] == list(range(1, n + 1)),
    "lowercase": lambda r: _has_letters(r) and r == r.lower(),
    "uppercase": lambda r: _has_letters(r) and r == r.upper(),
    "include_word": lambda r, word: re.search(rf"\b{re.escape(word)}\b", r, re.IGNORECASE) is not None,
    "max_words": lambda r, n: 0 < len(r.split()) <= n,
    "end_with": lambda r, phrase: r.strip().endswith(phrase),
    "start_with": lambda r, phrase: r.strip().startswith(phrase),
    "no_commas": lambda r: _has_letters(r) and "," not in r,
    "json_keys": lambda r, keys: (obj := _json_object(r)) is not None and sorted(obj) == sorted(keys),
}


def passes(response: str, checks: list[list[Any]]) -> bool:
    """Whether `response` satisfies every [name, arguments] check."""
    return all(CHECKS[name](response, **arguments) for name, arguments in checks)


@dataclass
class InstructionTask:
    name: str
    rows: list[dict[str, Any]]  # {id, prompt, checks}
    max_new_tokens: int = MAX_NEW_TOKENS
    metric = "mean"

    def evaluate(self, model, tokenizer, limit: int | None = None, progress=False):
        from .suites import TaskScore

        rows = self.rows[:limit]
        responses = generate(model, tokenizer, [row["prompt"] for row in rows], self.max_new_tokens, progress)
        values = [float(passes(response, row["checks"])) for response, row in zip(responses, rows)]
        samples = ScoreSamples(kind="mean", values=values)
        return TaskScore({"score": samples.score(), "pass_rate": samples.score(), "n": len(values)}, samples)


def generate(model, tokenizer, prompts: list[str], max_new_tokens: int, progress=False) -> list[str]:
    """Greedy answers to `prompts` through the chat template, batched with left padding."""
    if getattr(tokenizer, "chat_template", None) is None:
        raise ForgetlessError("the instructions suite needs a chat model (its tokenizer has no chat template)")
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
             for p in prompts]
    device = model_device(model)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    answers: list[str] = []
    with scoring_mode(model), progress_bar(progress, len(texts), "generate") as bar:
        for start in range(0, len(texts), BATCH_SIZE):
            encoded = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts[start:start + BATCH_SIZE]]
            width = max(map(len, encoded))
            ids = torch.tensor([[pad] * (width - len(e)) + e for e in encoded], device=device)
            mask = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in encoded], device=device)
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=pad, eos_token_id=tokenizer.eos_token_id)
            answers += [tokenizer.decode(row[width:], skip_special_tokens=True).strip() for row in out]
            bar.update(len(encoded))
    return answers


def instruction_suite() -> list[InstructionTask]:
    path = asset_path("instructions", "instructions.jsonl")
    rows = []
    for line, row in read_jsonl_numbered(path):
        unknown = [name for name, _ in row["checks"] if name not in CHECKS]
        if unknown:
            raise ForgetlessError(f"{path}:{line}: unknown checks {unknown}")
        rows.append(row)
    return [InstructionTask("instructions", rows)]
