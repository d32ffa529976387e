"""The noise of a strategy's distance from naive's frontier: a paired bootstrap over the evaluation items.

Every run of a comparison is scored on the same items (the general suite and each task's held-out set) from one
shared "before" evaluation, so a test set that happens to favour one run tends to favour the others too, and
resampling each run on its own would overstate the noise of their difference. One replicate resamples each task's
items once, rescores every run on that same resample, rebuilds naive's frontier from the rescored naive runs and
measures each other run's distance from it (forgetless.frontier); the s.e. is the spread over replicates. It
covers the noise of the test set, not that of the training seed (each setting ran once).
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import numpy as np

from .frontier import distances, naive_front
from .metrics import ScoreSamples


@dataclass(frozen=True)
class RunItems:
    """The items behind one run's point on the trade-off: general change and mean in-domain gain."""

    general_before: dict[str, ScoreSamples]
    general_after: dict[str, ScoreSamples]
    held_out_before: dict[str, ScoreSamples]
    held_out_after: dict[str, ScoreSamples]  # each task right after its own training, or after the last task

    @classmethod
    def from_log(cls, log, tasks: list[str], at_end: bool = False) -> "RunItems":
        """From an EvaluationLog (evaluations.json), read over `tasks`: the general change after the last of them,
        the in-domain gain right after each task or (`at_end`) after the last."""
        after = next((samples for record, samples in zip(log.general, log.general_samples)
                      if record["stage"] == "after_task" and record["task"] == tasks[-1]), None)
        if after is None:
            raise ValueError(f"no general evaluation after training {tasks[-1]!r}")
        held_out = log.held_out_after_task(tasks[-1], tasks) if at_end else log.held_out_after(tasks)
        return cls(log.general_samples[0], after, {t: log.task_samples[0][t] for t in tasks}, held_out)


def resampled_scores(samples: ScoreSamples, index: np.ndarray) -> np.ndarray:
    """The task's score on each row of `index` (replicates x items), as ScoreSamples.score computes it."""
    values = np.asarray(samples.values, dtype=np.float64)[index].sum(axis=1)
    if samples.kind == "mean":
        return values / index.shape[1]
    tokens = np.asarray(samples.tokens, dtype=np.float64)[index].sum(axis=1)
    return 1.0 - values / tokens / math.log(samples.vocab_size)


def replicate_points(runs: list[RunItems], n_boot: int = 1000, seed: int = 0) -> np.ndarray:
    """(len(runs), n_boot, 2): each run's (mean in-domain gain, general change) on shared resamples of the items."""
    if n_boot < 2:
        raise ValueError(f"n_boot must be at least 2 to estimate a standard error, got {n_boot}")
    points = np.zeros((len(runs), n_boot, 2))
    for column, part in ((0, "held_out"), (1, "general")):
        names = sorted(getattr(runs[0], f"{part}_before"))
        for name in names:
            pairs = [(getattr(run, f"{part}_before")[name], getattr(run, f"{part}_after")[name]) for run in runs]
            sizes = {len(s.values) for pair in pairs for s in pair}
            if len(sizes) != 1:
                raise ValueError(f"{part} task {name!r} was not scored on the same items in every run (sizes {sorted(sizes)})")
            items = np.arange(sizes.pop())
            if pairs[0][0].kind == "perplexity":  # zero-token documents carry no evidence and could empty a resample
                items = items[np.all([np.asarray(s.tokens) > 0 for pair in pairs for s in pair], axis=0)]
            # One stream per task (as metrics.general_change), shared by every run: the pairing.
            rng = np.random.default_rng([seed, zlib.crc32(f"{part}/{name}".encode("utf-8"))])
            index = items[rng.integers(0, len(items), size=(n_boot, len(items)))]
            for i, (before, after) in enumerate(pairs):
                points[i, :, column] += (resampled_scores(after, index) - resampled_scores(before, index)) / len(names)
    return points


def frontier_distance_replicates(naive: list[RunItems], others: list[RunItems], n_boot: int = 1000,
                                 seed: int = 0) -> np.ndarray:
    """(len(others), n_boot, 2): each of `others`' (change saved at equal gain, gain added at equal change) against
    naive's frontier in every replicate; nan where the rescored point falls beyond the frontier's range."""
    points = replicate_points(naive + others, n_boot, seed)
    fronts = [naive_front([(float(g), float(c)) for g, c in points[: len(naive), b]]) for b in range(n_boot)]
    found = np.full((len(others), n_boot, 2), np.nan)
    for i in range(len(others)):
        for b in range(n_boot):
            saved, added = distances(fronts[b], (float(points[len(naive) + i, b, 0]), float(points[len(naive) + i, b, 1])))
            found[i, b] = (np.nan if saved is None else saved, np.nan if added is None else added)
    return found


def frontier_distance_se(naive: list[RunItems], others: list[RunItems], n_boot: int = 1000,
                         seed: int = 0) -> list[tuple[float | None, float | None]]:
    """Each of `others`' (change saved at equal gain, gain added at equal change) s.e. against naive's frontier.

    A distance undefined in some replicate gets no s.e. (None): its spread over the replicates where it is
    defined would understate the noise. Near the frontier's first segment, from the untrained model (0, 0) to
    naive's first point, a small change moves the gain at equal change a lot, so that distance's replicates can
    be heavy-tailed: forgetless.frontier_noise.frontier_distance_replicates gives them for an interval.
    """
    found = frontier_distance_replicates(naive, others, n_boot, seed)
    return [tuple(None if np.isnan(row[:, k]).any() else float(np.std(row[:, k], ddof=1)) for k in (0, 1)) for row in found]
