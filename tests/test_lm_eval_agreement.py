"""Our multiple-choice scorer and lm-evaluation-harness give the same numbers on the same model."""

from __future__ import annotations

import random

import pytest

from forgetless.evaluation.multiple_choice import MultipleChoiceItem, score_multiple_choice

from .conftest import make_tiny_lm

pytest.importorskip("lm_eval", reason="lm-evaluation-harness (pip install lm-eval) is needed to compare against it")

from forgetless.evaluation.lm_eval_bridge import run_lm_eval_multiple_choice  # noqa: E402


def capital_items(count: int) -> list[MultipleChoiceItem]:
    """A small capitals task: one-token and multi-token choices, one long reply, a question ending in a space."""
    capitals = {
        "France": "Paris", "Japan": "Tokyo", "Malaysia": "Kuala Lumpur", "Burkina Faso": "Ouagadougou",
        "Peru": "Lima", "Kenya": "Nairobi", "Canada": "Ottawa", "Bhutan": "Thimphu", "Chile": "Santiago",
        "Mongolia": "Ulaanbaatar", "Italy": "Rome", "Egypt": "Cairo",
    }  # fmt: skip
    rng = random.Random(0)
    items = []
    for index in range(count):
        country = rng.choice(sorted(capitals))
        wrong = rng.sample([c for c in capitals.values() if c != capitals[country]], 3)
        choices = wrong + [capitals[country]]
        rng.shuffle(choices)
        question = f"Question: What is the capital of {country}?\nAnswer:"
        if index == 0:
            choices[1] = "I am not sure, but I believe it is a large city with a long history. " * 6
        if index == 1:
            question += " "  # lm-eval moves this space into every continuation
        items.append(MultipleChoiceItem(question, tuple(choices), choices.index(capitals[country])))
    return items


def test_per_item_loglikelihoods_and_accuracies_match_lm_eval(tokenizer):
    model = make_tiny_lm(len(tokenizer), seed=3)
    model.config.pad_token_id = tokenizer.pad_token_id
    items = capital_items(20)

    ours = score_multiple_choice(model, tokenizer, items)
    theirs = run_lm_eval_multiple_choice(model, tokenizer, items, batch_size=8)

    for our_scores, their_scores in zip(ours.loglikelihoods, theirs.loglikelihoods, strict=True):
        assert our_scores == pytest.approx(their_scores, abs=2e-4)
    assert ours.correct == theirs.correct
    assert ours.correct_norm == theirs.correct_norm
    assert ours.acc == pytest.approx(theirs.acc)
    assert ours.acc_norm == pytest.approx(theirs.acc_norm)
    assert ours.acc_stderr == pytest.approx(theirs.acc_stderr)
    assert ours.acc_norm_stderr == pytest.approx(theirs.acc_norm_stderr)
