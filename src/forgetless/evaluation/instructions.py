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
    last_answers: list[str] | None = None  # of the latest evaluation, for the leakage task that follows it

    def evaluate(self, model, tokenizer, limit: int | None = None, progress=False):
        from .suites import TaskScore

        rows = self.rows[:limit]
        responses, lengths = generate_with_lengths(model, tokenizer, [row["prompt"] for row in rows], self.max_new_tokens,
                                              progress)
        self.last_answers = responses
        values = [float(passes(response, row["checks"])) for response, row in zip(responses, rows)]
        samples = ScoreSamples(kind="mean", values=values, texts=responses, lengths=lengths, budget=self.max_new_tokens)
        return TaskScore({"score": samples.score(), "pass_rate": samples.score(), "n": len(values)}, samples)


def _trigrams(text: str) -> set[tuple[str, str, str]]:
    words = re.findall(r"[a-z0-9']+", text.lower())
    return set(zip(words, words[1:], words[2:]))


@dataclass
class LeakageTask:
    """Domain leakage on general prompts: score = share of the instruction answers free of the domains' signature.

    The signature: word trigrams found in at least `min_rows` (and 1 %) of the trained domains' rows that
    occur neither in forgetless's general English (general_train.jsonl) nor in the starting model's answers
    to the same prompts, at most `size` of them, most frequent first. It is fixed at the first evaluation
    (before training), so the starting model's rate is 0 by construction and a later drop of the score is
    the share of general answers that took up the domain's phrasing (paired s.e. over prompts).
    """

    name: str
    instructions: InstructionTask
    domain_texts: list[str]
    min_rows: int = 3
    size: int = 500
    metric = "mean"
    signature: set | None = None

    def evaluate(self, model, tokenizer, limit: int | None = None, progress=False):
        from .suites import TaskScore

        answers = self.instructions.last_answers
        if answers is None or len(answers) != len(self.instructions.rows[:limit]):
            answers = generate(model, tokenizer, [row["prompt"] for row in self.instructions.rows[:limit]],
                               self.instructions.max_new_tokens, progress)
        if self.signature is None:  # the first evaluation of this run is "before": the starting model's answers
            self.signature = self._signature(answers)
        values = [0.0 if _trigrams(answer) & self.signature else 1.0 for answer in answers]
        samples = ScoreSamples(kind="mean", values=values)
        return TaskScore({"score": samples.score(), "leak_rate": 1 - samples.score(), "n": len(values),
                          "signature_size": len(self.signature)}, samples)

    def start_from(self, before: dict[str, ScoreSamples]) -> None:
        """Fix the signature from an adopted "before" evaluation (a shared or resumed one): the starting model's
        answers, not the first ones this run generates, which come from a trained model."""
        start = before.get(self.instructions.name)
        if start is None or start.texts is None:
            raise ForgetlessError(f"the {self.name!r} task needs the starting model's answers to "
                                  f"{self.instructions.name!r}, which this 'before' evaluation does not hold "
                                  "(written by an older forgetless): evaluate 'before' again")
        self.signature = self._signature(start.texts)

    def _signature(self, start_answers: list[str]) -> set:
        from collections import Counter

        from ..data.tasks import general_train_texts

        counts = Counter(gram for text in self.domain_texts for gram in _trigrams(text))
        floor = max(self.min_rows, 0.01 * len(self.domain_texts))
        excluded = set().union(*map(_trigrams, general_train_texts()), *map(_trigrams, start_answers))
        frequent = [gram for gram, count in counts.most_common() if count >= floor and gram not in excluded]
        return set(frequent[: self.size])


def generate(model, tokenizer, prompts: list[str], max_new_tokens: int, progress=False) -> list[str]:
    """Greedy answers to `prompts` through the chat template, batched with left padding."""
    return generate_with_lengths(model, tokenizer, prompts, max_new_tokens, progress)[0]


def generate_with_lengths(model, tokenizer, prompts: list[str], max_new_tokens: int,
                     progress=False) -> tuple[list[str], list[int]]:
    """generate's answers and each one's length in new tokens before its end-of-sequence token: `max_new_tokens`
    for an answer that never ended by itself (cut at the budget). Counted from the generated ids, not by
    re-tokenizing the decoded text, which can count fewer tokens than were generated."""
    if getattr(tokenizer, "chat_template", None) is None:
        raise ForgetlessError("the instructions suite needs a chat model (its tokenizer has no chat template)")
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
             for p in prompts]
    device = model_device(model)
    ends = end_tokens(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    answers: list[str] = []
    lengths: list[int] = []
    with scoring_mode(model), progress_bar(progress, len(texts), "generate") as bar:
        for start in range(0, len(texts), BATCH_SIZE):
            encoded = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts[start:start + BATCH_SIZE]]
            width = max(map(len, encoded))
            ids = torch.tensor([[pad] * (width - len(e)) + e for e in encoded], device=device)
            mask = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in encoded], device=device)
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=pad, eos_token_id=ends or None)
            answers += [tokenizer.decode(row[width:], skip_special_tokens=True).strip() for row in out]
            lengths += [_answer_length(row[width:].tolist(), ends) for row in out]
            bar.update(len(encoded))
    return answers, lengths


def end_tokens(model, tokenizer) -> list[int]:
    """The ids that end an answer: the tokenizer's end-of-sequence token and those of the model's generation config
    (a chat model whose turn ends with another token than the tokenizer's, as Llama 3's, lists it there)."""
    found = [tokenizer.eos_token_id]
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    found += configured if isinstance(configured, list) else [configured]
    return list(dict.fromkeys(i for i in found if i is not None))


def _answer_length(new_ids: list[int], ends: list[int]) -> int:
    """Tokens before the first end token (after it come only padding), all of them when there is none. A batch runs
    until every answer has ended or the budget is spent, so an answer without one filled the budget."""
    return next((i for i, token in enumerate(new_ids) if token in ends), len(new_ids))


def instruction_suite() -> list[InstructionTask]:
    path = asset_path("instructions", "instructions.jsonl")
    rows = []
    for line, row in read_jsonl_numbered(path):
        unknown = [name for name, _ in row["checks"] if name not in CHECKS]
        if unknown:
            raise ForgetlessError(f"{path}:{line}: unknown checks {unknown}")
        rows.append(row)
    return [InstructionTask("instructions", rows)]


def with_leakage(general_tasks: list, domain_rows: list[dict[str, Any]]) -> list:
    """`general_tasks` plus a `leakage` task right after the instruction task, when there is one."""
    for index, task in enumerate(general_tasks):
        if isinstance(task, InstructionTask):
            texts = [row.get("text") or f"{row.get('prompt', '')} {row.get('response', '')}" for row in domain_rows]
            return [*general_tasks[: index + 1], LeakageTask("leakage", task, texts), *general_tasks[index + 1:]]
    return general_tasks
