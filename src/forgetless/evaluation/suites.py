"""Evaluation tasks and suites: what "general ability" and "in-domain skill" are measured on.

Every evaluation task returns a `TaskScore`: a summary for tables (`score` is the primary,
higher-is-better number) and the per-item `ScoreSamples` behind it, so two evaluations of the same
task can be compared with a paired standard error.

Primary scores: multiple choice -> `acc` (lm-evaluation-harness's definition);
perplexity -> `1 - log_V(perplexity)` (V = vocabulary size; 0 = uniform guessing, 1 = certain).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from ..data.encoding import chat_prompt_text, encode_chat
from ..data.tasks import TrainingTask, asset_path
from ..errors import ForgetlessError
from ..fileio import read_jsonl_numbered
from ..metrics import ScoreSamples
from .multiple_choice import MultipleChoiceItem, score_multiple_choice, warn_if_truncated
from .perplexity import PerplexityResult, score_sequences_nll, score_text_perplexity

# Evaluation sees longer sequences than training (128 by default) so held-out replies are scored whole.
EVAL_MAX_LENGTH = 512


@dataclass
class TaskScore:
    summary: dict[str, Any]
    samples: ScoreSamples


def _perplexity_score(result: PerplexityResult, vocab_size: int) -> TaskScore:
    samples = ScoreSamples(
        kind="perplexity", values=list(result.doc_nll), tokens=list(result.doc_tokens), vocab_size=vocab_size
    )
    summary = {"score": samples.score(), "perplexity": result.perplexity, "n_tokens": result.n_tokens, "n": len(result.doc_nll)}
    return TaskScore(summary, samples)


def _multiple_choice_summary(items, model, tokenizer, delimiter: str, progress, task: str,
                             warned: set[str]) -> tuple[dict[str, Any], list[bool]]:
    result = score_multiple_choice(model, tokenizer, items, delimiter=delimiter, progress=progress)
    warn_if_truncated(result, task, warned)
    summary = {
        "acc": result.acc,
        "acc_norm": result.acc_norm,
        "acc_stderr": result.acc_stderr,
        "acc_norm_stderr": result.acc_norm_stderr,
        "n": result.n,
    }
    return summary, list(result.correct)


@dataclass
class MultipleChoiceTask:
    """Context `question`, continuations `" " + choice`: the same file gives lm-eval's numbers."""

    name: str
    items: list[MultipleChoiceItem]
    # Tasks whose truncation was already warned about; a subset (the probe's) shares its task's.
    warned: set[str] = field(default_factory=set, repr=False, compare=False)
    metric = "acc"

    def __len__(self) -> int:
        return len(self.items)

    def subset(self, indices: list[int]) -> "MultipleChoiceTask":
        return MultipleChoiceTask(self.name, [self.items[i] for i in indices], self.warned)

    def evaluate(self, model, tokenizer, limit: int | None = None, progress=False) -> TaskScore:
        summary, correct = _multiple_choice_summary(self.items[:limit], model, tokenizer, " ", progress,
                                                    f"task {self.name!r}", self.warned)
        summary = {"score": summary["acc"], **summary}
        return TaskScore(summary, ScoreSamples(kind="mean", values=[float(c) for c in correct]))


@dataclass
class TextPerplexityTask:
    name: str
    texts: list[str]
    metric = "perplexity"

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, indices: list[int]) -> "TextPerplexityTask":
        return TextPerplexityTask(self.name, [self.texts[i] for i in indices])

    def evaluate(self, model, tokenizer, limit: int | None = None, progress=False) -> TaskScore:
        result = score_text_perplexity(model, tokenizer, self.texts[:limit], max_length=EVAL_MAX_LENGTH, progress=progress)
        return _perplexity_score(result, len(tokenizer))


@dataclass
class ChatHeldoutTask:
    """Held-out chat rows: perplexity of the reply given the prompt, plus in-domain accuracy if any."""

    name: str
    rows: list[dict[str, Any]]
    multiple_choice: list[dict[str, Any]] = field(default_factory=list)
    warned: set[str] = field(default_factory=set, repr=False, compare=False)  # as MultipleChoiceTask's
    metric = "perplexity"

    def evaluate(self, model, tokenizer, limit: int | None = None, progress=False) -> TaskScore:
        sequences = []
        for row in self.rows[:limit]:
            feature = encode_chat(tokenizer, row["prompt"], row["response"], EVAL_MAX_LENGTH)
            sequences.append((feature["input_ids"], feature["labels"]))
        score = _perplexity_score(
            score_sequences_nll(model, sequences, pad_token_id=tokenizer.pad_token_id, progress=progress), len(tokenizer)
        )
        if self.multiple_choice:
            # The context ends with the assistant header, so the reply follows with no delimiter.
            items = [
                MultipleChoiceItem(chat_prompt_text(tokenizer, q["prompt"]), tuple(q["choices"]), q["answer"])
                for q in self.multiple_choice[:limit]
            ]
            mc_summary, _ = _multiple_choice_summary(items, model, tokenizer, "", progress,
                                                     f"task {self.name!r} (reply choices)", self.warned)
            score.summary.update({f"mc_{key}": value for key, value in mc_summary.items()})
        return score


def heldout_task(task: TrainingTask, choices: bool = True):
    """The evaluation of a training task on its held-out rows (and its multiple-choice questions if `choices`)."""
    if task.format == "chat":
        return ChatHeldoutTask(task.name, task.heldout, task.multiple_choice if choices else [])
    return TextPerplexityTask(task.name, [row["text"] for row in task.heldout])


def load_eval_file(name: str, path) -> MultipleChoiceTask | TextPerplexityTask:
    """A JSONL of {question, choices, answer} rows (multiple choice) or {text} rows (perplexity)."""
    numbered = read_jsonl_numbered(path)
    if "text" in numbered[0][1]:
        texts = []
        for line, row in numbered:
            if not isinstance(row.get("text"), str) or not row["text"].strip():
                raise ForgetlessError(f"{path}:{line}: expected a non-empty string field 'text'")
            texts.append(row["text"])
        return TextPerplexityTask(name, texts)
    items = []
    for line, row in numbered:
        question, choices, answer = row.get("question"), row.get("choices"), row.get("answer")
        if not isinstance(question, str):
            raise ForgetlessError(f"{path}:{line}: expected a string field 'question' (or 'text' for perplexity)")
        if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) for c in choices):
            raise ForgetlessError(f"{path}:{line}: expected 'choices', a list of at least 2 strings")
        if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < len(choices):
            raise ForgetlessError(f"{path}:{line}: expected 'answer', an index into choices (0..{len(choices) - 1}), "
                                  f"got {json.dumps(answer)}")
        if any(not choice.strip() for choice in choices):
            raise ForgetlessError(f"{path}:{line}: choice {[c.strip() for c in choices].index('')} is empty")
        if len(set(choices)) != len(choices):
            raise ForgetlessError(f"{path}:{line}: choices repeat ({sorted({c for c in choices if choices.count(c) > 1})}); "
                                  "an item with two equal choices can never be scored right")
        items.append(MultipleChoiceItem(question, tuple(choices), answer))
    return MultipleChoiceTask(name, items)


def general_suite() -> list:
    """Built-in held-out general ability: fact multiple choice and general-English perplexity."""
    folder = asset_path("general")
    files = sorted(p for p in folder.iterdir() if p.name.endswith(".jsonl") and p.name != "general_train.jsonl")
    with resources.as_file(folder):
        return [load_eval_file(p.name.removesuffix(".jsonl"), p) for p in files]


def instructions_suite() -> list:
    """Built-in instruction following: greedy answers to prompts with programmatic checks (IFEval-style)."""
    from .instructions import instruction_suite

    return instruction_suite()


SUITES = {"general": general_suite, "instructions": instructions_suite}


def load_suite(name: str) -> list:
    if name not in SUITES:
        raise ForgetlessError(f"unknown suite {name!r}; known: {', '.join(sorted(SUITES))}")
    return SUITES[name]()
