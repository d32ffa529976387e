"""Continual-learning metrics against hand-computed matrices, and the noise machinery against direct formulas."""

from __future__ import annotations

import math

import pytest

from forgetless.metrics import ScoreSamples, accuracy_stderr, continual_metrics, general_change, paired_delta

# Rows: before training, after task 1, after task 2, after task 3. Columns: tasks 1..3.
FORGETFUL = [
    [0.10, 0.20, 0.30],
    [0.50, 0.25, 0.30],
    [0.40, 0.60, 0.35],
    [0.30, 0.50, 0.70],
]


def test_three_task_matrix_with_forgetting():
    metrics = continual_metrics(FORGETFUL)
    # ACC = mean(last row) = (0.30 + 0.50 + 0.70) / 3 = 0.50
    assert metrics["acc"] == pytest.approx(0.50)
    # BWT = ((R31 - R11) + (R32 - R22)) / 2 = ((0.30 - 0.50) + (0.50 - 0.60)) / 2 = -0.15
    assert metrics["bwt"] == pytest.approx(-0.15)
    # FWT = ((R12 - R02) + (R23 - R03)) / 2 = ((0.25 - 0.20) + (0.35 - 0.30)) / 2 = 0.05
    assert metrics["fwt"] == pytest.approx(0.05)
    # f1 = max(R11, R21) - R31 = 0.50 - 0.30 = 0.20; f2 = max(R12, R22) - R32 = 0.60 - 0.50 = 0.10
    # forgetting = (0.20 + 0.10) / 2 = 0.15
    assert metrics["forgetting"] == pytest.approx(0.15)


def test_task_that_keeps_improving_gives_positive_bwt_and_negative_forgetting():
    improving = [
        [0.10, 0.10, 0.10],
        [0.40, 0.10, 0.10],
        [0.50, 0.40, 0.10],
        [0.60, 0.45, 0.40],
    ]
    metrics = continual_metrics(improving)
    # BWT = ((0.60 - 0.40) + (0.45 - 0.40)) / 2 = 0.125
    assert metrics["bwt"] == pytest.approx(0.125)
    # f1 = max(0.40, 0.50) - 0.60 = -0.10; f2 = max(0.10, 0.40) - 0.45 = -0.05; mean = -0.075
    assert metrics["forgetting"] == pytest.approx(-0.075)
    # No transfer before training: FWT = ((0.10 - 0.10) + (0.10 - 0.10)) / 2 = 0
    assert metrics["fwt"] == pytest.approx(0.0)
    # ACC = (0.60 + 0.45 + 0.40) / 3
    assert metrics["acc"] == pytest.approx(1.45 / 3)


def test_forgetting_ignores_the_untrained_row():
    # Task 1 starts at 0.9, training task 1 lowers it to 0.5, then it ends at 0.4. Chaudhry's max runs
    # over rows 1..T-1 only, so f1 = 0.5 - 0.4 = 0.1 (0.5 would be 0.9 - 0.4 if row 0 counted).
    matrix = [[0.9, 0.2], [0.5, 0.2], [0.4, 0.6]]
    assert continual_metrics(matrix)["forgetting"] == pytest.approx(0.1)
    # BWT = R21 - R11 = 0.4 - 0.5 = -0.1; FWT = R12 - R02 = 0.2 - 0.2 = 0
    assert continual_metrics(matrix)["bwt"] == pytest.approx(-0.1)
    assert continual_metrics(matrix)["fwt"] == pytest.approx(0.0)


def test_fwt_measures_gain_before_a_task_is_trained():
    # Training task 1 lifts task 2 from 0.20 to 0.35 and task 3 from 0.10 to 0.12; training task 2
    # then lifts task 3 to 0.30. FWT = ((0.35 - 0.20) + (0.30 - 0.10)) / 2 = 0.175
    matrix = [[0.5, 0.20, 0.10], [0.8, 0.35, 0.12], [0.8, 0.70, 0.30], [0.8, 0.70, 0.90]]
    assert continual_metrics(matrix)["fwt"] == pytest.approx(0.175)


def test_one_task_leaves_transfer_and_forgetting_undefined():
    metrics = continual_metrics([[0.2], [0.7]])
    assert metrics == {"acc": pytest.approx(0.7), "bwt": None, "fwt": None, "forgetting": None}


@pytest.mark.parametrize(
    "matrix, message",
    [
        ([], "T\\+1 rows"),
        ([[0.1, 0.2]], "T\\+1 rows"),
        ([[0.1, 0.2], [0.3, 0.4]], "row 0 has 2"),  # 2 rows means 1 task, so 1 column
        ([[0.1, 0.2], [0.3, 0.4], [0.5]], "row 2 has 1"),
        ([[0.1], [float("nan")]], "\\[1\\]\\[0\\]"),
        ([[0.1], ["0.3"]], "not a finite number"),
    ],
)
def test_shape_and_values_are_validated(matrix, message):
    with pytest.raises(ValueError, match=message):
        continual_metrics(matrix)


V = 1000  # vocabulary size of the perplexity samples below


def test_score_samples_scores():
    assert ScoreSamples("mean", [1, 0, 1, 1]).score() == pytest.approx(0.75)
    # Two documents: 6 nats over 3 tokens and 2 nats over 1 token -> 8 nats / 4 tokens = 2 nats per token,
    # perplexity e^2; with a vocabulary of V the score is 1 - ln(e^2) / ln(V) = 1 - 2 / ln(V).
    samples = ScoreSamples("perplexity", [6.0, 2.0], tokens=[3, 1], vocab_size=V)
    assert samples.score() == pytest.approx(1 - 2.0 / math.log(V))
    # Uniform guessing (perplexity = V) scores 0.
    assert ScoreSamples("perplexity", [math.log(V) * 4], tokens=[4], vocab_size=V).score() == pytest.approx(0.0)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"kind": "median", "values": [1.0]},
        {"kind": "mean", "values": []},
        {"kind": "mean", "values": [1.0], "tokens": [1]},
        {"kind": "perplexity", "values": [1.0, 2.0]},
        {"kind": "perplexity", "values": [1.0], "tokens": [1]},  # no vocabulary size
        {"kind": "perplexity", "values": [1.0, 2.0], "tokens": [3], "vocab_size": 10},
        {"kind": "perplexity", "values": [1.0], "tokens": [0], "vocab_size": 10},
    ],
)
def test_score_samples_are_validated(kwargs):
    with pytest.raises(ValueError):
        ScoreSamples(**kwargs)


def test_accuracy_stderr_matches_the_direct_formula():
    # mean 0.75; squared deviations 0.0625 * 3 + 0.5625 = 0.75; / (n-1) = 0.25; sqrt = 0.5; / sqrt(4) = 0.25
    assert accuracy_stderr([True, False, True, True]) == pytest.approx(0.25)
    values = [0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0]
    mean = sum(values) / len(values)
    direct = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) / math.sqrt(len(values))
    assert accuracy_stderr(values) == pytest.approx(direct)
    assert math.isnan(accuracy_stderr([1.0]))
    assert math.isnan(accuracy_stderr([]))


def test_accuracy_stderr_agrees_with_lm_eval():
    lm_eval_metrics = pytest.importorskip("lm_eval.api.metrics")
    values = [1, 0, 0, 1, 1, 0, 1, 1, 1, 0, 0]
    assert accuracy_stderr(values) == pytest.approx(lm_eval_metrics.mean_stderr(values))


def test_paired_delta_is_zero_with_zero_se_when_nothing_changed():
    samples = ScoreSamples("mean", [1.0, 0.0] * 50)
    assert paired_delta(samples, samples) == (0.0, 0.0)
    documents = ScoreSamples("perplexity", [3.0, 5.0, 1.0], tokens=[2, 4, 1], vocab_size=V)
    assert paired_delta(documents, documents) == (0.0, 0.0)


def test_paired_delta_sign_value_and_determinism():
    before = ScoreSamples("mean", [1.0] * 60 + [0.0] * 40)
    after = ScoreSamples("mean", [1.0] * 45 + [0.0] * 55)  # 15 of the 60 right answers turned wrong
    delta, se = paired_delta(before, after, n_boot=500, seed=3)
    assert delta == pytest.approx(-0.15)
    # Per-item deltas are -1 on 15 items, 0 elsewhere: the plug-in se is sqrt(0.15 * 0.85 / 100) = 0.0357.
    assert se == pytest.approx(math.sqrt(0.15 * 0.85 / 100), rel=0.15)
    assert paired_delta(before, after, n_boot=500, seed=3) == (delta, se)
    assert paired_delta(before, after, n_boot=500, seed=4)[1] != se
    assert paired_delta(after, before, n_boot=500, seed=3)[0] == pytest.approx(0.15)


def test_paired_delta_of_perplexity_scores():
    before = ScoreSamples("perplexity", [10.0, 20.0, 30.0], tokens=[5, 10, 15], vocab_size=V)  # 60 / 30 = 2 nats per token
    after = ScoreSamples("perplexity", [13.0, 20.0, 30.0], tokens=[5, 10, 15], vocab_size=V)  # 63 / 30 = 2.1 nats per token
    delta, se = paired_delta(before, after, n_boot=200)
    assert delta == pytest.approx((2.0 - 2.1) / math.log(V))
    assert delta < 0 and se > 0


def test_paired_delta_rejects_unpaired_evaluations():
    with pytest.raises(ValueError, match="same items"):
        paired_delta(ScoreSamples("mean", [1.0, 0.0]), ScoreSamples("mean", [1.0]))
    with pytest.raises(ValueError, match="cannot pair"):
        paired_delta(ScoreSamples("mean", [1.0]), ScoreSamples("perplexity", [1.0], tokens=[1], vocab_size=V))


def test_general_change_big_shift_is_beyond_noise():
    before = {"quiz": ScoreSamples("mean", [1.0] * 500 + [0.0] * 500)}
    after = {"quiz": ScoreSamples("mean", [1.0] * 300 + [0.0] * 700)}
    change = general_change(before, after)
    assert change["before"] == pytest.approx(0.5) and change["after"] == pytest.approx(0.3)
    assert change["delta_abs"] == pytest.approx(-0.2)
    assert change["delta_rel"] == pytest.approx(-0.4)  # -0.2 / 0.5
    assert change["within_noise"] is False
    assert change["tasks"]["quiz"]["within_noise"] is False


def test_general_change_one_flip_in_200_is_within_noise():
    before = {"quiz": ScoreSamples("mean", [1.0] * 100 + [0.0] * 100)}
    after = {"quiz": ScoreSamples("mean", [1.0] * 99 + [0.0] * 101)}
    change = general_change(before, after)
    assert change["delta_abs"] == pytest.approx(-0.005)
    # The one changed item appears Poisson(1) times per resample: se ~ 1/200 = 0.005 > 0.005 / 1.96.
    assert change["delta_se"] == pytest.approx(0.005, rel=0.2)
    assert change["within_noise"] is True


def test_general_change_averages_tasks_and_their_relative_change():
    before = {
        "quiz": ScoreSamples("mean", [1.0] * 80 + [0.0] * 20),  # 0.80
        "text": ScoreSamples("perplexity", [20.0, 20.0], tokens=[10, 10], vocab_size=V),  # 1 - 2 / ln(V)
    }
    after = {
        "quiz": ScoreSamples("mean", [1.0] * 60 + [0.0] * 40),  # 0.60
        "text": ScoreSamples("perplexity", [20.0, 20.0], tokens=[10, 10], vocab_size=V),  # unchanged
    }
    change = general_change(before, after, n_boot=300, seed=1)
    mean_before = (0.80 + 1 - 2 / math.log(V)) / 2
    assert change["before"] == pytest.approx(mean_before)
    assert change["delta_abs"] == pytest.approx(-0.10)  # (-0.20 + 0) / 2
    assert change["delta_rel"] == pytest.approx(-0.10 / mean_before)
    assert change["tasks"]["quiz"]["rel"] == pytest.approx(-0.25)  # -0.20 / 0.80
    assert change["tasks"]["text"] == {"before": pytest.approx(1 - 2 / math.log(V)), "after": pytest.approx(1 - 2 / math.log(V)),
                                       "delta": 0.0, "rel": 0.0, "se": 0.0, "within_noise": True}
    # With one task constant, the mean's se is half the quiz's se (the same replicates, averaged with 0).
    assert change["delta_se"] == pytest.approx(change["tasks"]["quiz"]["se"] / 2)
    assert general_change(before, after, n_boot=300, seed=1) == change


def test_general_change_needs_matching_task_sets():
    samples = ScoreSamples("mean", [1.0, 0.0])
    with pytest.raises(ValueError, match="same tasks"):
        general_change({"a": samples}, {"b": samples})
    with pytest.raises(ValueError, match="at least one"):
        general_change({}, {})
