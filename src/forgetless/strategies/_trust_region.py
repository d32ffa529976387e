"""A trust region in the protected data's own units: the predicted loss rise (1/2) sum F d^2 stays under a target.

With F a per-token Fisher (`ewc`) or importance on its scale (`layerwise`) and d = theta - theta*, the
quadratic P = (1/2) sum_i F_i d_i^2 predicts how much the mean token loss on the protected data has risen
since the anchor. A penalty weight trades that rise against the task loss at a price whose effect depends
on how hard the task pulls; a target caps the rise itself, in nats per token, whatever the data.

The Euclidean projection of theta onto {P <= target} is the proximal step of an EWC penalty with a weight
mu chosen for this point: d_i <- d_i / (1 + mu F_i), with mu > 0 solving P(mu) = target. Directions the
protected data does not care about (F_i = 0) are left alone; stiff ones are pulled back most.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from pydantic import model_validator

from .base import StrategyParams

# Chunk of the passes: the fp32 operands of one chunk stay in cache between the operations.
CHUNK = 1 << 18
RELATIVE_TOLERANCE = 1e-3  # P ends within target * (1 +- this)
# A distance cap's tensor put on its sphere at the last step may read a hair outside it (rounding): not a new move.
SPHERE_TOLERANCE = 1e-5
MAX_ITERATIONS = 40


def _sums(parameters, anchor, fisher, mu: float) -> tuple[float, float]:
    """(P(mu), dP/dmu) with P(mu) = (1/2) sum F d^2 / (1 + mu F)^2, in float64, one pass over the weights."""
    value = slope = 0.0
    with torch.no_grad():
        for name, parameter in parameters.items():
            # Accumulate on the weights' device (a CPU accumulator cannot take a CUDA sum in place); one sync per tensor.
            tensor_value = torch.zeros((), dtype=torch.float64, device=parameter.device)
            tensor_slope = torch.zeros((), dtype=torch.float64, device=parameter.device)
            values, anchors, weights = parameter.reshape(-1), anchor[name].reshape(-1), fisher[name].reshape(-1)
            for start in range(0, values.numel(), CHUNK):
                stop = min(start + CHUNK, values.numel())
                f = weights[start:stop]
                d = values[start:stop].float() - anchors[start:stop]
                shrink = torch.reciprocal(f * mu + 1.0)  # 1 / (1 + mu F)
                term = f * (d * shrink).square_()  # F d^2 / (1 + mu F)^2
                tensor_value += term.sum(dtype=torch.float64)
                tensor_slope -= (term * f * shrink).sum(dtype=torch.float64)  # d/dmu of the term: -2 F^2 d^2 / (1+muF)^3
            value += float(tensor_value)
            slope += float(tensor_slope)
    return 0.5 * value, slope


def solve_multiplier(parameters, anchor, fisher, target: float) -> tuple[float, float]:
    """(mu, P before projection): the smallest mu >= 0 with P(mu) <= target (0 when already inside).

    Newton's method on P(mu)^(-1/2), which is exactly linear in mu for a single weight and nearly so for
    many, kept inside a bracket [inside-the-set, outside-the-set] and falling back to bisection.
    """
    before, slope = _sums(parameters, anchor, fisher, 0.0)
    if before <= target:
        return 0.0, before
    low, high = 0.0, math.inf  # P(low) > target, P(high) <= target
    mu, value = 0.0, before
    for _ in range(MAX_ITERATIONS):
        # h(mu) = P^-1/2 - target^-1/2; h' = -P^-3/2 P' / 2.
        h = value ** -0.5 - target ** -0.5
        h_slope = -0.5 * value ** -1.5 * slope
        step = mu - h / h_slope if h_slope > 0 else math.inf
        mu = step if low < step < high else (low + high) / 2 if math.isfinite(high) else max(2 * low, 1.0)
        value, slope = _sums(parameters, anchor, fisher, mu)
        if value > target:
            low = mu
        else:
            high = mu
        if abs(value / target - 1) <= RELATIVE_TOLERANCE or value == 0.0:
            break
    if value > target * (1 + RELATIVE_TOLERANCE) and math.isfinite(high):
        mu = high  # never end outside the set by more than the tolerance
    return mu, before


def project(parameters, anchor, fisher, target: float) -> tuple[float, float]:
    """Move `parameters` in place onto {(1/2) sum F (theta - anchor)^2 <= target}; returns (P before, mu).

    Only parameters with an entry in `fisher` take part. mu = 0 means the point was inside: nothing moved.
    A low-precision weight is rounded to its nearest value no farther from the anchor than the projected
    point, so rounding never takes it back out of the region (it may end a little inside).
    """
    fisher = {name: value for name, value in fisher.items() if name in parameters}
    parameters = {name: parameters[name] for name in fisher}
    mu, before = solve_multiplier(parameters, anchor, fisher, target)
    if mu == 0.0:
        return before, mu
    with torch.no_grad():
        for name, parameter in parameters.items():
            values, anchors, weights = parameter.view(-1), anchor[name].reshape(-1), fisher[name].reshape(-1)
            for start in range(0, values.numel(), CHUNK):
                stop = min(start + CHUNK, values.numel())
                a = anchors[start:stop]
                d = values[start:stop].float() - a
                x = d.div_(weights[start:stop] * mu + 1.0).add_(a)  # the projected point, fp32
                values[start:stop].copy_(round_toward(x, a, values.dtype))
    return before, mu


def scaled_toward(anchor: torch.Tensor, values: torch.Tensor, factor: float) -> torch.Tensor:
    """anchor + factor * (values - anchor), in `values`' dtype, rounded toward `anchor` (the distance caps' pull)."""
    return round_toward(torch.lerp(anchor, values.float(), factor), anchor, values.dtype)


def round_toward(x: torch.Tensor, anchor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """`x` (fp32) in `dtype`, each entry rounded to its nearest value no farther from `anchor` than x is.

    bf16/fp16: a rounding away from the anchor could take a projected weight back out of its region (at a 1 %
    relative cap, bf16's rounding error is a tenth of the room); rounding toward it may end a little inside.
    """
    rounded = x.to(dtype)
    if rounded.dtype != x.dtype:
        away = (rounded.float() - anchor).abs() > (x - anchor).abs()
        rounded = torch.where(away, torch.nextafter(rounded, anchor.to(dtype)), rounded)
    return rounded


class CapByDefault(StrategyParams):
    """Params of a strategy with a price (`lam`, default 0) and a cap (`target`, default None) whose bare form is
    the cap at `default_target`: naming `lam` alone asks for the penalty alone; lam 0 with no target is refused."""

    default_target: ClassVar[float]

    @model_validator(mode="before")
    @classmethod
    def _default_mode(cls, data: Any) -> Any:
        if isinstance(data, dict) and "lam" not in data and "target" not in data:
            return {**data, "target": cls.default_target}
        return data

    @model_validator(mode="after")
    def _protects_something(self):
        return require_protection(self)


def require_protection(params, caps: tuple[str, ...] = ("target",)):
    """A strategy with a price (`lam`) and caps (`target`, ...) must have one of them: lam 0 without a cap would
    estimate its importance and then protect nothing."""
    if params.lam == 0 and all(getattr(params, cap) is None for cap in caps):
        named = " or ".join(f"a {cap}" for cap in caps)
        raise ValueError(f"lam 0 without {named} protects nothing: give lam > 0, {named}, or (ewc, l2sp) neither for "
                         "the default cap")
    return params


# Nats per token of predicted protected-loss rise: the mean penalty ewc's lam 100 kept during the bundled `support`
# task (0.50, i.e. a predicted rise of 0.005), rounded down; not tuned (docs/results/defaults.md). ewc's default;
# the centre of a tuning grid for layerwise's target.
DEFAULT_TARGET = 0.004
