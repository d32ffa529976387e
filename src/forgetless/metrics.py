"""Continual-learning metrics from the score matrix, and honest error bars on general-ability change.

Two kinds of numbers live here:

* `continual_metrics` turns the score matrix R (rows: before training, after task 1, ..., after task T;
  columns: tasks in training order) into ACC, BWT, FWT and forgetting, with the formulas of
  shared/reference/methods.md section 9.
* `ScoreSamples`, `paired_delta` and `general_change` keep the per-item evidence behind a score so that
  "the general score dropped by 0.01" can be checked against the noise of a few hundred test items. The
  same items are scored before and after training, so the standard error of the change is a *paired*
  bootstrap: one resample of item indices is applied to both evaluations, which cancels the item-to-item
  variance that the two evaluations share.

All scores are higher-is-better. A perplexity task becomes a score 1 - log_V(perplexity) (V = vocabulary
size): 1 is certainty, 0 is uniform guessing (perplexity V), and it is negative for a model worse than
uniform guessing (perplexity above V; a random model can be there); see `ScoreSamples`.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from typing import Literal, Mapping, Sequence

import numpy as np

# Replicates resampled at once: bounds the (replicates x items) index array to ~16 MB of int64.
_BOOTSTRAP_CELLS_PER_CHUNK = 2_000_000

# Two-sided 95 % normal quantile: a change smaller than this many standard errors is called noise.
_NOISE_Z = 1.96


def continual_metrics(matrix: Sequence[Sequence[float]]) -> dict[str, float | None]:
    """ACC, BWT, FWT and forgetting of a score matrix with T+1 rows and T columns.

    With 1-based task indices j = 1..T, R[i][j] is the score on task j after training through task i,
    and row 0 is the model before any training:

    * ``acc``        = (1/T) sum_{j=1..T} R[T][j]                          (average final score)
    * ``bwt``        = (1/(T-1)) sum_{j=1..T-1} (R[T][j] - R[j][j])         (GEM, Lopez-Paz & Ranzato 2017;
      negative = later tasks erased earlier ones)
    * ``fwt``        = (1/(T-1)) sum_{j=2..T} (R[j-1][j] - R[0][j])         (GEM; positive = earlier tasks
      helped task j before it was trained)
    * ``forgetting`` = (1/(T-1)) sum_{j=1..T-1} f_j,  f_j = max_{l=1..T-1} R[l][j] - R[T][j]
      (Chaudhry et al. 2018, "Riemannian Walk"). As in the paper the max runs over the rows *after*
      training steps only: row 0 (the untrained model) is excluded, so a task that never rose above
      its starting score is not counted as forgotten. Negative when the task kept improving.

    With T = 1 nothing can be forgotten or transferred yet, so ``bwt``, ``fwt`` and ``forgetting`` are
    None (undefined, deliberately not 0). Raises ValueError for a matrix of the wrong shape or with
    non-finite entries.
    """
    rows = _validated_matrix(matrix)
    tasks = len(rows) - 1
    # 0-based from here on: column c is task j = c + 1, and R[j][j] is rows[c + 1][c].
    acc = sum(rows[tasks]) / tasks
    if tasks == 1:
        return {"acc": acc, "bwt": None, "fwt": None, "forgetting": None}
    earlier = range(tasks - 1)  # tasks 1..T-1
    bwt = sum(rows[tasks][c] - rows[c + 1][c] for c in earlier) / (tasks - 1)
    # Task j's score just before it was trained is row j-1, i.e. rows[c] for column c.
    fwt = sum(rows[c][c] - rows[0][c] for c in range(1, tasks)) / (tasks - 1)
    forgetting = sum(max(rows[row][c] for row in range(1, tasks)) - rows[tasks][c] for c in earlier) / (tasks - 1)
    return {"acc": acc, "bwt": bwt, "fwt": fwt, "forgetting": forgetting}


def _validated_matrix(matrix: Sequence[Sequence[float]]) -> list[list[float]]:
    rows = [list(row) for row in matrix]
    if len(rows) < 2:
        raise ValueError(
            f"score matrix needs T+1 rows (before training, then one per task) for T >= 1 tasks; got {len(rows)} row(s)"
        )
    tasks = len(rows) - 1
    for index, row in enumerate(rows):
        if len(row) != tasks:
            raise ValueError(
                f"score matrix has {len(rows)} rows, so it must have {tasks} columns (one per task); "
                f"row {index} has {len(row)}"
            )
        for column, value in enumerate(row):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"score matrix entry [{index}][{column}] is not a finite number: {value!r}")
    return [[float(value) for value in row] for row in rows]


@dataclass
class ScoreSamples:
    """The per-item evidence behind one task's score, kept so two evaluations can be compared item by item.

    kind "mean":       ``values`` holds one number per question (0/1 correctness for acc or acc_norm);
                       score = mean(values).
    kind "perplexity": ``values`` holds the summed negative log-likelihood (nats) of each document,
                       ``tokens`` its number of scored tokens, ``vocab_size`` the model's vocabulary size;
                       score = 1 - (sum(values) / sum(tokens)) / ln(vocab_size) = 1 - log_V(perplexity).
                       This is how a perplexity task becomes a higher-is-better score: 0 means no better
                       than guessing uniformly over the vocabulary (perplexity = V), 1 means certain of
                       every token (perplexity = 1), below 0 means worse than uniform guessing. Unlike
                       1/perplexity (about 0.01 for general text), it moves on the same scale as an
                       accuracy, so averaging it with accuracies in the general mean does not silently drop
                       the most sensitive measure of forgetting.
    """

    kind: Literal["mean", "perplexity"]
    values: list[float]
    tokens: list[int] | None = None
    vocab_size: int | None = None
    texts: list[str] | None = None  # a generation task's answers behind `values` (the leakage signature needs the start's)
    # ... and their lengths in new tokens with the budget they were generated within: an answer of `budget` tokens
    # never ended by itself (forgetless.evaluation.stops). Evaluations written before they were kept have none.
    lengths: list[int] | None = None
    budget: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("mean", "perplexity"):
            raise ValueError(f"ScoreSamples kind must be 'mean' or 'perplexity', got {self.kind!r}")
        if len(self.values) == 0:
            raise ValueError("ScoreSamples needs at least one item")
        if self.lengths is not None and (len(self.lengths) != len(self.values) or self.budget is None):
            raise ValueError(f"ScoreSamples needs one answer length per item and the budget: {len(self.values)} items, "
                             f"{len(self.lengths)} lengths, budget {self.budget}")
        if self.kind == "mean":
            if self.tokens is not None:
                raise ValueError("ScoreSamples of kind 'mean' takes no token counts")
            return
        if self.tokens is None or len(self.tokens) != len(self.values):
            got = "none" if self.tokens is None else len(self.tokens)
            raise ValueError(f"ScoreSamples of kind 'perplexity' needs one token count per document: "
                             f"{len(self.values)} documents, {got} counts")
        if self.vocab_size is None or self.vocab_size < 2:
            raise ValueError("ScoreSamples of kind 'perplexity' needs the vocabulary size (>= 2)")
        if any(count < 0 for count in self.tokens) or sum(self.tokens) == 0:
            raise ValueError("ScoreSamples token counts must be >= 0 with a positive total")

    def score(self) -> float:
        """The task's score: mean correctness, or 1 - (total NLL / total tokens) / ln(vocab_size)."""
        if self.kind == "mean":
            return float(np.mean(self.values))
        return 1.0 - math.fsum(self.values) / sum(self.tokens) / math.log(self.vocab_size)


def accuracy_stderr(correct: Sequence[bool | float]) -> float:
    """Standard error of a mean of per-item scores, exactly as lm-evaluation-harness's ``mean_stderr``.

    sqrt(sum((x - mean)^2) / (n - 1)) / sqrt(n): the sample standard deviation (n-1 denominator) over
    sqrt(n). For n < 2 the sample deviation is undefined (lm-eval reports "N/A"; its formula would divide
    by zero) and this returns nan.
    """
    values = [float(x) for x in correct]
    n = len(values)
    if n < 2:
        return math.nan
    mean = math.fsum(values) / n
    return math.sqrt(math.fsum((x - mean) ** 2 for x in values) / (n - 1)) / math.sqrt(n)


def paired_delta(before: ScoreSamples, after: ScoreSamples, n_boot: int = 1000, seed: int = 0) -> tuple[float, float]:
    """(after.score() - before.score(), its paired bootstrap standard error).

    Each bootstrap replicate draws n item indices with replacement and rescores *both* evaluations on
    those same items, so the error bar reflects how the change varies over test sets, not how the
    scores do. The same seed gives the same answer. The evaluations must be of the same kind and of
    the same items in the same order.
    """
    _check_paired(before, after)
    deltas = _bootstrap_deltas(before, after, n_boot, np.random.default_rng(seed))
    return after.score() - before.score(), float(np.std(deltas, ddof=1))


def general_change(
    before: Mapping[str, ScoreSamples],
    after: Mapping[str, ScoreSamples],
    n_boot: int = 1000,
    seed: int = 0,
) -> dict:
    """TRACE's general-ability change: mean score over general tasks before and after training.

    Returns ``before`` and ``after`` (unweighted means of the task scores), ``delta_abs`` (after -
    before), ``delta_rel`` ((after - before) / before; None when before is 0), ``delta_se`` (bootstrap
    standard error of the mean delta: each task is resampled independently, paired within the task,
    and the per-task deltas of one replicate are averaged), ``within_noise`` and ``tasks``, a dict
    name -> {before, after, delta, rel, se, within_noise} whose se comes from the same replicates.

    ``within_noise`` is ``not |delta| > 1.96 se``: a change inside the 95 % band is not evidence of
    forgetting (or of its cure). A zero change with zero se, and a change whose se is nan (one item),
    count as within noise, the conservative reading.
    """
    if set(before) != set(after):
        raise ValueError(f"general_change needs the same tasks before and after: before has {sorted(before)}, "
                         f"after has {sorted(after)}")
    if not before:
        raise ValueError("general_change needs at least one general task")
    names = sorted(before)
    tasks: dict[str, dict] = {}
    replicate_deltas = []  # one (n_boot,) array per task
    for name in names:
        _check_paired(before[name], after[name], name)
        # A stream per task name keeps the tasks' resamples independent and each task's se
        # unchanged when other tasks are added to the suite.
        rng = np.random.default_rng([seed, zlib.crc32(name.encode("utf-8"))])
        deltas = _bootstrap_deltas(before[name], after[name], n_boot, rng)
        replicate_deltas.append(deltas)
        score_before, score_after = before[name].score(), after[name].score()
        delta, se = score_after - score_before, float(np.std(deltas, ddof=1))
        tasks[name] = {"before": score_before, "after": score_after, "delta": delta,
                       "rel": _relative(delta, score_before), "se": se, "within_noise": _within_noise(delta, se)}
    mean_before = sum(task["before"] for task in tasks.values()) / len(tasks)
    mean_after = sum(task["after"] for task in tasks.values()) / len(tasks)
    delta = mean_after - mean_before
    se = float(np.std(np.mean(replicate_deltas, axis=0), ddof=1))
    return {"before": mean_before, "after": mean_after, "delta_abs": delta,
            "delta_rel": _relative(delta, mean_before), "delta_se": se,
            "within_noise": _within_noise(delta, se), "tasks": tasks}


def _relative(delta: float, base: float) -> float | None:
    return delta / base if base != 0 else None


def _within_noise(delta: float, se: float) -> bool:
    # Written as "not beyond" so that a nan se (too few items to tell) reads as within noise.
    return not abs(delta) > _NOISE_Z * se


def _check_paired(before: ScoreSamples, after: ScoreSamples, name: str = "") -> None:
    label = f"task {name!r}: " if name else ""
    if before.kind != after.kind or before.vocab_size != after.vocab_size:
        raise ValueError(f"{label}cannot pair a {before.kind!r} evaluation with a {after.kind!r} one")
    if len(before.values) != len(after.values):
        raise ValueError(f"{label}paired evaluations must score the same items: "
                         f"{len(before.values)} before, {len(after.values)} after")


def _bootstrap_deltas(before: ScoreSamples, after: ScoreSamples, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(n_boot,) replicate deltas after - before, both rescored on the same resampled item indices."""
    if n_boot < 2:
        raise ValueError(f"n_boot must be at least 2 to estimate a standard error, got {n_boot}")
    columns = [np.asarray(before.values, dtype=np.float64), np.asarray(after.values, dtype=np.float64)]
    if before.kind == "perplexity":
        columns += [np.asarray(before.tokens, dtype=np.float64), np.asarray(after.tokens, dtype=np.float64)]
        # Zero-token documents carry no evidence (they add nothing to either sum); leaving them out
        # keeps every replicate's token total positive, so its token probability is defined.
        informative = (columns[2] > 0) & (columns[3] > 0)
        columns = [column[informative] for column in columns]
    n = len(columns[0])
    chunk = max(1, _BOOTSTRAP_CELLS_PER_CHUNK // n)
    deltas = []
    for start in range(0, n_boot, chunk):
        index = rng.integers(0, n, size=(min(chunk, n_boot - start), n))  # (replicates, n)
        sums = [column[index].sum(axis=1) for column in columns]  # each (replicates,)
        if before.kind == "mean":
            deltas.append((sums[1] - sums[0]) / n)
        else:
            deltas.append((sums[0] / sums[2] - sums[1] / sums[3]) / math.log(before.vocab_size))
    return np.concatenate(deltas)
