"""The `formats` generation check: whether the instruction answers still hold the structure they were asked for,
anywhere in the answer, text around it allowed.

The `instructions` suite fails an answer that writes the asked JSON object and then runs on ("Here is the JSON:
{...} Your answer is ..."), as IFEval does: "output only" is part of the instruction. A fine-tuned model that
stopped writing JSON fails it too. This check tells the two apart. It reads the answers the suite already
generated (no generation of its own) on the prompts whose first check asks for a structure that text cannot hold
by accident: a JSON object with exactly the asked keys, a numbered list of exactly n items, a run of exactly n
bullet lines. Each such answer scores 1 when the structure is somewhere in it; an answer that passes the suite's
own check always does. Compare reports the change from the starting model's answers with its paired s.e., beside
the `instructions` pass rate (over all 110 prompts): where the pass rate fell and this did not, the structures
are still written and the losses are elsewhere (text around them, the other prompts' checks); where this fell,
they are no longer written as asked (or a list of another length, an object with other keys).
"""

from __future__ import annotations

import json
import re
from typing import Any

from ..metrics import ScoreSamples, paired_delta
from .instructions import CHECKS, _lines, instruction_suite, passes

_NUMBERED = re.compile(r"(\d+)[.)]\s")


def json_anywhere(answer: str, keys: list[str]) -> bool:
    """A JSON object with exactly `keys` starting at some "{" of the answer (nested values and braces inside
    strings allowed), or the whole answer as the suite's check reads it (a fenced block)."""
    decoder = json.JSONDecoder()
    for start in (m.start() for m in re.finditer(r"\{", answer)):
        try:
            value, _ = decoder.raw_decode(answer, start)
        except ValueError:
            continue
        if isinstance(value, dict) and sorted(value) == sorted(keys):
            return True
    return CHECKS["json_keys"](answer, keys=keys)


def numbered_anywhere(answer: str, n: int) -> bool:
    """Consecutive lines numbered 1 to `n` and no further (a list of 6 is not the asked 5), anywhere in the answer."""
    numbers = [int(m.group(1)) if (m := _NUMBERED.match(line)) else None for line in _lines(answer)]
    return any(numbers[i:i + n] == list(range(1, n + 1)) and numbers[i + n:i + n + 1] != [n + 1]
               for i in range(len(numbers)))


def bullets_anywhere(answer: str, n: int) -> bool:
    """A run of exactly `n` consecutive bullet lines ("- " or "* "), the lines around it not bullets."""
    runs, length = [], 0
    for line in _lines(answer) + [""]:
        if line.startswith(("- ", "* ")):
            length += 1
        else:
            runs.append(length)
            length = 0
    return n in runs


ANYWHERE = {"json_keys": json_anywhere, "numbered_count": numbered_anywhere, "bullet_count": bullets_anywhere}


def format_samples(answers: list[str], rows: list[dict[str, Any]]) -> ScoreSamples | None:
    """1.0 / 0.0 per answer whose prompt's first check asks for a structure (ANYWHERE), in suite order; None when no
    prompt does. `rows` are the suite's rows the answers were given to, in the same order."""
    values = []
    for answer, row in zip(answers, rows, strict=True):
        name, arguments = row["checks"][0]
        if name in ANYWHERE:
            values.append(float(ANYWHERE[name](answer, **arguments)))
    return ScoreSamples(kind="mean", values=values) if values else None


def format_change(before: ScoreSamples | None, after: ScoreSamples | None) -> tuple[float, float] | None:
    """The `formats` check's change from the `instructions` answers of two evaluations of the built-in suite
    (the first `len(answers)` prompts when the evaluation had a limit), with its paired bootstrap s.e.; None
    when either evaluation kept no answers, no prompt asks for a structure, or the answers are not of today's
    suite (the pass or fail each evaluation recorded differs from the suite's checks on its answers: a suite edited
    since, whose prompts would be paired with the wrong answers)."""
    if before is None or after is None or before.texts is None or after.texts is None:
        return None
    rows = instruction_suite()[0].rows[: len(before.texts)]
    if not len(before.texts) == len(after.texts) == len(rows):
        return None
    for samples in (before, after):
        if [float(passes(text, row["checks"])) for text, row in zip(samples.texts, rows)] != list(samples.values):
            return None
    start, end = format_samples(before.texts, rows), format_samples(after.texts, rows)
    return None if start is None else paired_delta(start, end)
