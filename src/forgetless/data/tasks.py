"""Tasks to learn: a name, training rows, held-out rows, and an optional in-domain multiple-choice set.

Rows are either chat (`{"prompt", "response"}`, loss on the response) or plain text (`{"text"}`).
Built-in tasks: `support` (generated customer-support tickets and replies), `legal` (US Constitution
and Declaration of Independence), `pydoc` (Python's own documentation), `jargon` (the Jargon File's hacker
slang lexicon). A user's task is a JSONL file.
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Callable

from ..errors import ForgetlessError
from ..fileio import read_jsonl, read_jsonl_numbered


@dataclass
class TrainingTask:
    name: str
    format: str  # "chat" or "text"
    train: list[dict[str, Any]]
    heldout: list[dict[str, Any]]
    # In-domain accuracy items: {"prompt", "choices", "answer"}; the prompt is rendered in chat format.
    multiple_choice: list[dict[str, Any]] = field(default_factory=list)


def asset_path(*parts: str):
    """A file shipped inside the package (data/assets/...)."""
    return resources.files("forgetless.data").joinpath("assets", *parts)


def _support_task(name: str) -> TrainingTask:
    from .support import support_multiple_choice, support_splits

    # 60 held-out replies (~8k scored tokens) and 40 reply-choice questions: about one minute per
    # evaluation of the default model on 2 CPU cores, enough to see in-domain gains far beyond noise.
    train, heldout = support_splits(n_train=800, n_heldout=60)
    as_rows = lambda tickets: [{"prompt": t.prompt, "response": t.response} for t in tickets]  # noqa: E731
    return TrainingTask(name, "chat", as_rows(train), as_rows(heldout), support_multiple_choice(heldout[:40]))


def _shipped_text_task(domain: str) -> Callable[[str], TrainingTask]:
    """A plain-text domain shipped as domains/<domain>_train.jsonl and <domain>_heldout.jsonl."""

    def load(name: str) -> TrainingTask:
        return TrainingTask(
            name,
            "text",
            read_jsonl(asset_path("domains", f"{domain}_train.jsonl")),
            read_jsonl(asset_path("domains", f"{domain}_heldout.jsonl")),
        )

    return load


def _pydoc_task(name: str) -> TrainingTask:
    from .pydoc_text import pydoc_passages

    # Several pydoc topics repeat the same paragraphs; deduplicate so no held-out text is also trained on.
    rows = [{"text": passage} for passage in dict.fromkeys(pydoc_passages())]
    # Every fifth passage is held out: deterministic, and spread over all topics.
    return TrainingTask(name, "text", [r for i, r in enumerate(rows) if i % 5], rows[::5])


BUILTIN_TASKS: dict[str, Callable[[str], TrainingTask]] = {
    "support": _support_task,
    "legal": _shipped_text_task("legal"),
    "pydoc": _pydoc_task,
    # Built from another Debian text package for issue 11's "defaults that travel": no setting was chosen on it.
    "jargon": _shipped_text_task("jargon"),
}


def load_builtin_task(builtin: str, name: str | None = None) -> TrainingTask:
    if builtin not in BUILTIN_TASKS:
        raise ForgetlessError(f"unknown builtin task {builtin!r}; known: {', '.join(sorted(BUILTIN_TASKS))}")
    return BUILTIN_TASKS[builtin](name or builtin)


def read_task_rows(path: str) -> tuple[str, list[dict[str, Any]]]:
    """Validate a user's training file: every row is chat or every row is text; report the bad line."""
    task_format, rows, _ = read_task_rows_numbered(path)
    return task_format, rows


def read_task_rows_numbered(path: str) -> tuple[str, list[dict[str, Any]], list[int]]:
    """`read_task_rows`, with each row's line number in the file (for later checks that name a line)."""
    numbered = read_jsonl_numbered(path)
    task_format, rows = validated_rows(numbered, lambda line: f"{path}:{line}")
    return task_format, rows, [line for line, _ in numbered]


def validated_rows(numbered: list[tuple[int, dict[str, Any]]], where: Callable[[int], str]) -> tuple[str, list[dict[str, Any]]]:
    """(format, rows) of numbered rows that are all chat or all text, else an error naming the row (`where(number)`)."""
    first_line, first = numbered[0]
    task_format = "text" if "text" in first else "chat"
    rows = []
    for line, row in numbered:
        if "text" in row and ("prompt" in row or "response" in row):
            raise ForgetlessError(f"{where(line)}: a row has 'text' and 'prompt'/'response'; give one format per row "
                                  "(it would silently train as text)")
        if task_format == "text":
            if not isinstance(row.get("text"), str) or not row["text"].strip():
                raise ForgetlessError(f"{where(line)}: expected a non-empty string field 'text' (as in {where(first_line)})")
            rows.append({"text": row["text"]})
        else:
            for key in ("prompt", "response"):
                if not isinstance(row.get(key), str) or not row[key].strip():
                    raise ForgetlessError(
                        f"{where(line)}: expected non-empty string fields 'prompt' and 'response' "
                        f"(or 'text' in every row); missing or empty: {key!r}"
                    )
            rows.append({"prompt": row["prompt"], "response": row["response"]})
    return task_format, rows


def load_file_task(name: str, path: str, heldout_path: str | None, heldout_fraction: float, seed: int) -> TrainingTask:
    task_format, rows = read_task_rows(path)
    if heldout_path is not None:
        heldout_format, heldout = read_task_rows(heldout_path)
        if heldout_format != task_format:
            raise ForgetlessError(f"{heldout_path}: rows are {heldout_format} but {path} has {task_format} rows")
        return TrainingTask(name, task_format, rows, heldout)
    if len(rows) < 2:
        raise ForgetlessError(f"{path}: need at least 2 rows to hold some out (or give heldout_file)")
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_heldout = max(1, round(len(rows) * heldout_fraction))
    heldout_ids = set(order[:n_heldout])
    return TrainingTask(
        name,
        task_format,
        [r for i, r in enumerate(rows) if i not in heldout_ids],
        [r for i, r in enumerate(rows) if i in heldout_ids],
    )


def load_task(task_config, seed: int = 0) -> TrainingTask:
    """Build a TrainingTask from a `TaskConfig` (config.py)."""
    if task_config.builtin is not None:
        return load_builtin_task(task_config.builtin, task_config.name)
    return load_file_task(task_config.name, task_config.file, task_config.heldout_file, task_config.heldout_fraction, seed)


@functools.cache
def general_train_texts() -> tuple[str, ...]:
    """General English that is never evaluated: for Fisher estimation, replay mixing, anchor inputs."""
    return tuple(row["text"] for row in read_jsonl(asset_path("general", "general_train.jsonl")))


@dataclass(frozen=True, eq=False)
class GeneralData:
    """What strategies protect and rehearse as the model's general ability (`ctx.general_rows`).

    By default the bundled general English, disjoint from every evaluation item; a user whose model's general
    ability is something else (chat, code, another language) gives their own rows (`general_data`).
    """

    format: str  # "text" or "chat", one for all rows
    rows: tuple[dict[str, Any], ...]
    source: str  # where the rows came from, for messages ("general_data PATH", "the bundled general English")
    lines: tuple[int, ...] | None = None  # each row's line in `source`, when it is a file

    def same_rows(self, other: "GeneralData") -> bool:
        return self.format == other.format and self.rows == other.rows

    def where(self, index: int) -> str:
        """Row `index` as a user finds it: file and line, or its position."""
        return f"{self.source}:{self.lines[index]}" if self.lines else f"{self.source}, row {index + 1}"


@functools.cache
def bundled_general() -> GeneralData:
    """The bundled general English as `GeneralData` (read once)."""
    return GeneralData("text", tuple({"text": text} for text in general_train_texts()), "the bundled general English")


def load_general_data(path: str) -> GeneralData:
    """A user's general rows from a JSONL file of {text} or {prompt, response} rows, checked as a task file is."""
    task_format, rows, lines = read_task_rows_numbered(path)
    return GeneralData(task_format, tuple(rows), f"general_data {path}", tuple(lines))


def check_general_encoding(general: GeneralData, tokenizer, max_length: int) -> int:
    """How many general chat rows `max_length` empties (the prompt, with the chat template, fills it: nothing of the row
    is protected); refused when that is every row, as for a task's rows. Text rows are split in windows, never emptied."""
    if general.format != "chat":
        return 0
    from .encoding import encode_rows_counted

    _, counts = encode_rows_counted(tokenizer, list(general.rows), max_length)
    if counts.emptied == counts.rows:
        raise ForgetlessError(
            f"{general.source}: all {counts.rows} rows have a prompt (with the chat template) of {max_length} "
            "tokens (the training max_length) or more, so strategies would protect and rehearse nothing of them; raise "
            "train.max_length or shorten the prompts"
        )
    return counts.emptied


def general_overlapping_scored(general: GeneralData, scored: dict[str, list[dict[str, Any]]]) -> None:
    """Refuse general rows that are also rows a task scores (`scored`: a training task's held-out rows, an evaluation
    file's text rows, by task name): rehearsing or protecting a scored row would raise its score without any learning.
    Only exact rows are caught, not near-duplicates."""
    general_keys = [tuple(sorted(row.items())) for row in general.rows]  # once, not once per scored task
    for name, rows in scored.items():
        keys = {tuple(sorted(row.items())) for row in rows}
        for index, key in enumerate(general_keys):
            if key in keys:
                raise ForgetlessError(
                    f"{general.where(index)}: this row is also scored, in task {name!r}; strategies rehearse "
                    "and protect general rows, so it would score what it trained on. Remove it from one of the two files"
                )
