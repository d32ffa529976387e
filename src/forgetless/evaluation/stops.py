"""The `stops` generation check: the share of the `instructions` answers that ended by themselves within the
suite's budget of new tokens, rather than running on until cut.

A fine-tune on long documents can make a chat model forget to stop: on `support` 92 % of naive's answers ran to
the budget, against 13 % at the start (docs/results/generation-checks.md), and such answers fail "output only",
word limits and line counts even where the asked format is written. Rehearsing the model's own short replies
(`general_data` with `replay`) brought stopping back there; on `legal`, where far fewer answers ran on, the same rows
cost instruction following. This check tells the two cases apart. It reads the lengths the suite recorded as it
generated (no generation of its own); compare reports the change from the starting model's answers with its
paired s.e. Evaluations written before the lengths were kept give none.
"""

from __future__ import annotations

from ..metrics import ScoreSamples, paired_delta


def stop_samples(answers: ScoreSamples | None) -> ScoreSamples | None:
    """1.0 per answer that ended before the budget, 0.0 per answer cut at it; None without recorded lengths."""
    if answers is None or answers.lengths is None:
        return None
    return ScoreSamples(kind="mean", values=[float(length < answers.budget) for length in answers.lengths])


def stop_change(before: ScoreSamples | None, after: ScoreSamples | None) -> tuple[float, float] | None:
    """The share of answers that ended by themselves, after minus before, with its paired bootstrap s.e.; None when
    either evaluation kept no lengths or the two answered different numbers of prompts or within other budgets."""
    start, end = stop_samples(before), stop_samples(after)
    if start is None or end is None or len(start.values) != len(end.values) or before.budget != after.budget:
        return None
    return paired_delta(start, end)
