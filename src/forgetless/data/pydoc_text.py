"""Python's own documentation as a plain-text training domain, and the paragraph chunker it uses.

`pydoc_data.topics` ships with CPython (it is what `help("assert")` prints), so this domain needs no
download and no install. Its text follows the running Python version, so passages are deterministic
for one Python version, not across versions.

`split_into_passages` is shared with `scripts/build_assets.py`, which chunks the legal domain the same way.
"""

from __future__ import annotations

import re

# Where an over-long paragraph may be cut, coarsest first: after a line break, after a sentence
# (the whitespace stays with the sentence it ends, so the next piece keeps its own indentation),
# after any whitespace. Each split keeps every character: the pieces concatenate back to the text.
_CUT_POINTS = (
    re.compile(r"(?<=\n)"),
    re.compile(r"(?<=[.!?;:]\s)"),
    re.compile(r"(?<=\s)"),
)
_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n")


def _cut(text: str, max_chars: int, level: int = 0) -> list[str]:
    """`text` cut into pieces of at most `max_chars`, at the coarsest cut points that suffice."""
    if len(text) <= max_chars:
        return [text]
    if level == len(_CUT_POINTS):  # a single word longer than max_chars: cut it blindly
        return [text[start : start + max_chars] for start in range(0, len(text), max_chars)]
    pieces: list[str] = []
    for part in _CUT_POINTS[level].split(text):
        if part:
            pieces.extend(_cut(part, max_chars, level + 1))
    return pieces


def split_into_passages(text: str, max_chars: int, min_chars: int | None = None) -> list[str]:
    """Pack the paragraphs of `text` (blank-line separated) into passages of at most `max_chars`.

    Whole paragraphs are packed while they fit. A passage closes at a paragraph boundary once it
    holds at least `min_chars` (default: half of `max_chars`); otherwise the next paragraph is cut
    at line, then sentence, then word boundaries to fill it, so passages stay close to `max_chars`.
    Leading indentation is kept (code examples), trailing whitespace is dropped.
    """
    if max_chars < 1:
        raise ValueError(f"max_chars must be positive, got {max_chars}")
    min_chars = max_chars // 2 if min_chars is None else min_chars
    passages: list[str] = []
    current = ""

    def close() -> None:
        nonlocal current
        if current.strip():
            passages.append(current.rstrip())
        current = ""

    for paragraph in _PARAGRAPH_BREAK.split(text):
        paragraph = paragraph.strip("\n").rstrip()
        if not paragraph.strip():
            continue
        separator = "\n\n" if current else ""
        if len(current) + len(separator) + len(paragraph) <= max_chars:
            current += separator + paragraph
            continue
        if len(current) >= min_chars:
            close()
        separator = "\n\n" if current else ""
        for piece in _cut(paragraph, max_chars):
            if len(current) + len(separator) + len(piece.rstrip()) > max_chars:
                close()
                separator = ""
            current += separator + piece
            separator = ""
    close()
    return passages


def pydoc_passages(max_chars: int = 800) -> list[str]:
    """Python's reference documentation topics as passages of at most `max_chars` characters.

    Topics are taken in sorted name order and each is chunked on its own (a passage never spans two
    topics), so the result is the same on every call for a given Python version.
    """
    from pydoc_data.topics import topics

    passages: list[str] = []
    for name in sorted(topics):
        passages.extend(split_into_passages(topics[name], max_chars))
    return passages
