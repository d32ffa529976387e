"""A per-step estimate of the general change: a few suite items scored after every step, paired with "before".

The full general suite costs about twenty training steps, so it cannot run after every step. The probe scores
`items_per_step` items of the suite after each optimizer step and pairs each with the same item's score before
training (the run's "before" evaluation, computed once). Items are taken task by task in turn (stratified:
every multiple-choice and perplexity task gets the same share), each task's items in one seeded shuffle.

Estimate at step s (`ProbePoint`): the items scored in the last `window` steps (each item's latest score). It
exists once every probed task has at least two items there (the suite's mean is over all its tasks; a mean
over the covered ones alone would be another quantity, a bias no s.e. covers). Per task t:
- multiple choice: d_t = mean_i (a_i - b_i) (correctness now minus before);
- perplexity: d_t = (sum_i b_i - sum_i a_i) / (sum_i n_i) / ln V (summed NLL before and now over the items'
  tokens: the change of 1 - log_V(perplexity) on those documents).
The general change is the mean of d_t over the covered tasks, as the suite's mean is over its tasks.

Its standard error covers which items were sampled, nothing else: per task, the sample standard deviation of
the paired differences over sqrt(n) (a linearised ratio estimator for perplexity), with the finite-population
correction sqrt(1 - n/N) for drawing n of a task's N items without replacement; tasks combined as
sqrt(sum se_t^2) / T. It does not cover the model's change inside the window: the estimate lags a moving model
by about half a window, equally weighted over it.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field

import numpy as np

from ..metrics import ScoreSamples

_Z = 1.96


@dataclass
class ProbePoint:
    step: int
    delta: float | None  # None until every probed task has two items in the window
    se: float | None
    items: int  # items in the window
    tasks: int  # tasks covered

    @property
    def beyond_noise(self) -> bool:
        return self.delta is not None and self.se is not None and abs(self.delta) > _Z * self.se


@dataclass
class GeneralProbe:
    tasks: list  # general tasks with `subset` and `len` (multiple choice, perplexity); others are left out
    before: dict[str, ScoreSamples]  # the "before" evaluation's per-item samples, by task name
    items_per_step: int = 2
    window: int = 20
    seed: int = 0
    limit: int | None = None  # the evaluation's per-task item limit: the probe pairs only items "before" scored
    points: list[ProbePoint] = field(default_factory=list)
    seconds: float = 0.0

    def __post_init__(self) -> None:
        self.tasks = [t for t in self.tasks if hasattr(t, "subset") and t.name in self.before]
        self._sizes = {t.name: min(len(t), len(self.before[t.name].values)) for t in self.tasks}
        self._order = {}  # task -> its items in one seeded shuffle, probed in that order, round and round
        for t in self.tasks:
            self._order[t.name] = list(range(self._sizes[t.name]))
            random.Random(f"{self.seed}:{t.name}").shuffle(self._order[t.name])
        self._cursor = {name: 0 for name in self._order}
        self._turn = 0  # the task whose turn is next
        self._scored: dict[tuple[str, int], tuple[int, float]] = {}  # (task, item) -> (step, value now)

    def step(self, model, tokenizer, step: int) -> ProbePoint:
        """Score the next items with `model` and return the estimate at `step`."""
        started = time.perf_counter()
        by_task = self._next_items()
        tasks = {t.name: t for t in self.tasks}
        for name, indices in by_task.items():
            samples = tasks[name].subset(indices).evaluate(model, tokenizer).samples
            for index, value in zip(indices, samples.values):
                self._scored[(name, index)] = (step, float(value))
        self.seconds += time.perf_counter() - started
        point = self.estimate(step)
        self.points.append(point)
        return point

    def forget_after(self, step: int) -> None:
        """Drop the scores taken after `step` (the weights they measured were discarded by a restore)."""
        self._scored = {key: (when, value) for key, (when, value) in self._scored.items() if when <= step}

    def _next_items(self) -> dict[str, list[int]]:
        """`items_per_step` items, one task after another (a task gives at most all its items in one step)."""
        names = list(self._order)
        want = min(self.items_per_step, sum(len(order) for order in self._order.values()))
        by_task: dict[str, list[int]] = {}
        while sum(len(v) for v in by_task.values()) < want:
            name = names[self._turn % len(names)]
            self._turn += 1
            order = self._order[name]
            if len(by_task.get(name, [])) < len(order):
                by_task.setdefault(name, []).append(order[self._cursor[name] % len(order)])
                self._cursor[name] += 1
        return by_task

    def estimate(self, step: int) -> ProbePoint:
        recent: dict[str, list[tuple[int, float]]] = {}
        for (name, index), (when, value) in self._scored.items():
            if when > step - self.window:
                recent.setdefault(name, []).append((index, value))
        deltas, variances = [], []
        for name, items in recent.items():
            if len(items) < 2:
                continue
            delta, variance = self._task_change(name, items)
            deltas.append(delta)
            variances.append(variance)
        count = sum(len(items) for items in recent.values())
        if not deltas or len(deltas) < sum(size >= 2 for size in self._sizes.values()):
            return ProbePoint(step, None, None, count, len(deltas))
        return ProbePoint(step, float(np.mean(deltas)), math.sqrt(sum(variances)) / len(deltas), count, len(deltas))

    def _task_change(self, name: str, items: list[tuple[int, float]]) -> tuple[float, float]:
        """(change, its variance) of one task from its items (index, value now), paired with "before"."""
        before = self.before[name]
        n, population = len(items), self._sizes[name]
        correction = max(0.0, 1 - n / population)
        now = np.array([value for _, value in items])
        then = np.array([before.values[index] for index, _ in items])
        if before.kind == "mean":
            differences = now - then
            return float(differences.mean()), float(differences.var(ddof=1)) / n * correction
        tokens = np.array([before.tokens[index] for index, _ in items], dtype=float)
        log_v = math.log(before.vocab_size)
        delta = float((then.sum() - now.sum()) / tokens.sum() / log_v)
        residuals = (then - now) / log_v - delta * tokens  # linearised ratio estimator
        return delta, float(residuals.var(ddof=1)) / n / tokens.mean() ** 2 * correction

    def state(self) -> dict:
        """Everything scored so far and where the rotation stands (JSON), for a resumable checkpoint."""
        return {"scored": [[name, index, when, value] for (name, index), (when, value) in self._scored.items()],
                "cursor": self._cursor, "turn": self._turn, "seconds": self.seconds,
                "points": [vars(p) for p in self.points]}

    def load_state(self, state: dict) -> None:
        self._scored = {(name, index): (when, value) for name, index, when, value in state["scored"]}
        self._cursor, self._turn, self.seconds = dict(state["cursor"]), state["turn"], state["seconds"]
        self.points = [ProbePoint(**p) for p in state["points"]]

    def first_beyond_noise(self) -> int | None:
        """The first step at which the estimate left the 95 % noise band (either way), or None."""
        return next((p.step for p in self.points if p.beyond_noise), None)

    def summary(self) -> dict:
        """results.json's probe fields: every point, the seconds spent, the first step beyond noise."""
        return {"probe": [{"step": p.step, "delta": p.delta, "se": p.se, "items": p.items, "tasks": p.tasks}
                          for p in self.points],
                "probe_seconds": self.seconds, "probe_first_beyond_noise": self.first_beyond_noise()}
