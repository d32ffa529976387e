"""Naive fine-tuning's trade-off frontier, and each strategy's distance from it.

A strategy earns credit only for what plain fine-tuning cannot reach by training less. Plain fine-tuning at a
few learning rates and step counts (sharing one "before" evaluation) gives points (g, c): g the mean in-domain
gain over the tasks, c the general change. The untrained model, (0, 0), is always one of them (zero steps).
The frontier is the Pareto set of those points (none has both more gain and a higher general score), joined by
straight lines; along it the general change falls as the gain rises. A strategy at (g, c) is reported by:

- change saved at equal gain = c - c_frontier(g): how much less general score it lost than naive did for the
  same in-domain gain (None when g is beyond every naive point's gain);
- gain added at equal change = g - g_frontier(c): how much more it learned than naive did for the same general
  change (None when c is above every naive point's change, e.g. above 0).

Below the frontier's smallest gain, c_frontier is that first point's change (naive reaches at least the gain
with it); below its lowest change, g_frontier is its largest gain. This matters when training less does not
cost general score at all (the untrained model itself is then dominated: a naive point has more gain and a
change >= 0), and a strategy with less gain and a drop must be measured against that point, not ignored.

Positive numbers beat the frontier; a strategy within the noise of 0 did nothing naive's schedule could not.

The lines join the Pareto points as they are, not their concave hull, so adding a naive run can lower the line:
a new Pareto point below the segment between its neighbours bends the frontier down there. On `support` at
seed 0, adding naive at lr 3e-4 for 15 steps (+0.2530 at -0.0308) between lr 2e-4 for 15 and for 30 steps moved
`backoff`'s gain added at equal change from +0.0063 to +0.0078 (docs/results/budget.md). A larger set of naive runs
can move the line either way; compare distances only against the same set of naive runs.
"""

from __future__ import annotations

Point = tuple[float, float]  # (mean in-domain gain, general change)


def pareto(points: list[Point]) -> list[Point]:
    """The non-dominated points, by gain ascending (so by general change descending)."""
    unique = sorted(set(points))
    front = [p for p in unique if not any(q != p and q[0] >= p[0] and q[1] >= p[1] for q in unique)]
    return sorted(front)


def naive_front(points: list[Point]) -> list[Point]:
    """Naive's frontier: the Pareto set of its runs' points and the untrained model's (0, 0), zero steps."""
    return pareto(list(points) + [(0.0, 0.0)])


def change_at(front: list[Point], gain: float) -> float | None:
    """The frontier's general change at `gain` (linear between its points), or None beyond its largest gain."""
    if not front or gain > front[-1][0]:
        return None
    if gain <= front[0][0]:
        return front[0][1]
    for (g0, c0), (g1, c1) in zip(front, front[1:]):
        if g0 <= gain <= g1:
            return c0 if g1 == g0 else c0 + (c1 - c0) * (gain - g0) / (g1 - g0)
    return front[0][1]  # a one-point frontier at exactly that gain


def gain_at(front: list[Point], change: float) -> float | None:
    """The frontier's gain at general change `change`, or None above its highest change."""
    if not front:
        return None
    changes = [c for _, c in front]
    if change > max(changes):
        return None
    if change <= min(changes):
        return front[-1][0]
    for (g0, c0), (g1, c1) in zip(front, front[1:]):
        if c1 <= change <= c0:
            return g0 if c0 == c1 else g0 + (g1 - g0) * (c0 - change) / (c0 - c1)
    return front[0][0]


def distances(front: list[Point], point: Point) -> tuple[float | None, float | None]:
    """(change saved at equal gain, gain added at equal change) of `point` against `front`."""
    gain, change = point
    at_gain, at_change = change_at(front, gain), gain_at(front, change)
    return (None if at_gain is None else change - at_gain, None if at_change is None else gain - at_change)
