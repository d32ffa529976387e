"""Automatic strength: `forgetless tune CONFIG --knob ewc.lam --budget 0.01 --out DIR`.

Finds the setting of one strategy knob with the largest in-domain gain whose general drop is within budget.
It assumes the trade-off is monotone in the knob (a stronger setting forgets less and learns less), so it
bisects over a grid ordered from weakest to strongest for the weakest setting within budget, instead of
running every point: about log2(grid) + 1 runs instead of the grid's size. Every point is one row of a
`forgetless compare` table in DIR (sharing one "before" evaluation), so the evidence is that table; the
choice is the point within budget with the largest mean in-domain gain among those run.

"Within budget" here is the point estimate: general change >= -budget (its s.e. is shown beside it). The
run-time budget (forgetless.budget) is lenient on purpose, acting only when the drop is beyond the limit by
the noise; a tuned setting should meet the limit itself.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable

from .compare import compare, label_of
from .comparison_rows import ComparisonRow
from .config import RunConfig
from .errors import ForgetlessError
from .fileio import atomic_write_json, atomic_write_text


def bisect_weakest(count: int, within: Callable[[int], bool]) -> tuple[int | None, list[int]]:
    """The smallest index i in [0, count) with within(i), for a `within` that is False up to some index and True
    after it; (None if none, the indices evaluated in order). Evaluates each index at most once."""
    low, high, seen = 0, count - 1, {}
    while low <= high:
        middle = (low + high) // 2
        seen[middle] = within(middle)
        if seen[middle]:
            high = middle - 1
        else:
            low = middle + 1
    found = low if low < count and seen.get(low, False) else None
    return found, list(seen)


def default_grid(strategy_cls, knob: str) -> list[float]:
    """Seven points around the knob's default (its Strength's centre if set), weakest first: x4 steps for an `up`
    knob, x2 for a `down` one (<= 1)."""
    strength = strategy_cls.strength_of(knob)
    default = strategy_cls.Params.model_fields[knob].default
    if strength is not None and strength.centre is not None:  # a mode off by default, or a default set by a validator
        default = strength.centre
    if not isinstance(default, (int, float)) or isinstance(default, bool) or default == 0:
        raise ForgetlessError(f"--knob {strategy_cls.name}.{knob}: no numeric non-zero default to build a grid around; "
                              "give --values")
    if strength is not None and strength.stronger == "down":
        return sorted({min(1.0, default * 2.0**k) for k in range(-3, 4)}, reverse=True)
    bound = strength.bound if strength is not None else float("inf")  # a mix ratio stays below its bound
    return sorted({min(default * 4.0**k, bound) for k in range(-3, 4)})


def _parse_knob(knob: str):
    from .strategies import _REGISTRY

    name, _, param = knob.partition(".")
    if name not in _REGISTRY:
        raise ForgetlessError(f"--knob {knob!r}: unknown strategy {name!r}; known: {sorted(_REGISTRY)}")
    cls = _REGISTRY[name]
    if param not in cls.Params.model_fields:
        raise ForgetlessError(f"--knob {knob!r}: {name} has no parameter {param!r}; it has {sorted(cls.Params.model_fields)}")
    return cls, param


def _spec_with(config: RunConfig, name: str, knob: str, value: float) -> list:
    """The config's strategies with `name`'s knob set to `value` (`name` added when the config lacks it)."""
    specs, found = [], False
    for spec in config.strategies:
        spec_name = spec if isinstance(spec, str) else spec["name"]
        if spec_name == name:
            spec = {**({"name": spec} if isinstance(spec, str) else spec), knob: value}
            found = True
        if spec_name != "naive":
            specs.append(spec)
    return specs if found else [*specs, {"name": name, knob: value}]


def tune(
    config: RunConfig,
    knob: str,
    budget: float,
    out_dir: str | Path,
    *,
    values: list[float] | None = None,
    run_factory=None,
    command: str | None = None,
    progress: bool = True,
    resume: bool = False,
) -> dict[str, Any]:
    """Bisect `knob` ("ewc.lam") over `values` (weakest first; default: `default_grid`) and write DIR/tune.{json,md}.

    `resume`: after a kill, the points already in DIR's table are kept and the one cut off continues from its state
    (forgetless.compare's `resume`); the bisection is deterministic, so it visits the same points as before."""
    if budget <= 0 or not math.isfinite(budget):
        raise ForgetlessError(f"--budget must be a positive number, got {budget}")
    cls, param = _parse_knob(knob)
    grid = list(values) if values else default_grid(cls, param)
    strength = cls.strength_of(param)
    if strength is not None:  # weakest first, whatever order they came in
        grid = sorted(set(grid), reverse=strength.stronger == "down")
    out = Path(out_dir)
    rows: dict[int, ComparisonRow] = {}

    def within(index: int) -> bool:
        spec = _spec_with(config, cls.name, param, grid[index])
        first = not rows
        [row] = [r for r in compare(config, [spec], out, run_factory=run_factory, command=command if first else None,
                                    progress=progress, resume=resume) if r.strategy == label_of(spec)]
        rows[index] = row
        return row.general_delta_abs is not None and row.general_delta_abs >= -budget

    found, evaluated = bisect_weakest(len(grid), within)
    passing = [i for i in evaluated if rows[i].general_delta_abs >= -budget]
    best = max(passing, key=lambda i: (_mean_gain(rows[i]), -i)) if passing else None
    seconds = [rows[i].wall_time_s for i in evaluated]
    summary = {
        "knob": knob, "budget": budget, "grid": grid, "command": command,
        "evaluated": [{"value": grid[i], "label": rows[i].strategy, "general_change": rows[i].general_delta_abs,
                       "se": rows[i].general_delta_se, "mean_in_domain_gain": _mean_gain(rows[i]),
                       "within_budget": i in passing, "wall_time_s": rows[i].wall_time_s,
                       "resumed": rows[i].resumed} for i in evaluated],
        "weakest_within_budget": None if found is None else grid[found],
        "chosen": None if best is None else grid[best],
        "runs": len(evaluated), "grid_runs": len(grid),
        "seconds": sum(seconds), "grid_seconds_estimate": sum(seconds) / len(seconds) * len(grid),
    }
    atomic_write_json(out / "tune.json", summary)
    atomic_write_text(out / "tune.md", tune_markdown(summary))
    return summary


def _mean_gain(row: ComparisonRow) -> float:
    gains = list(row.in_domain_gain.values())
    return sum(gains) / len(gains)


def tune_markdown(summary: dict[str, Any]) -> str:
    from .report import format_table

    rows = [[f"{e['value']:g}", f"{e['general_change']:+.4f} ± {e['se']:.4f}", f"{e['mean_in_domain_gain']:+.4f}",
             "yes" if e["within_budget"] else "no",
             f"{e['wall_time_s']:.0f} s" + (" (since the resume)" if e.get("resumed") else "")] for e in summary["evaluated"]]
    chosen = summary["chosen"]
    verdict = (f"Chosen: `{summary['knob']} = {chosen:g}` (the largest mean in-domain gain among the points within budget)."
               if chosen is not None else "No point of the grid kept the general drop within budget: try stronger values.")
    grid = ", ".join(f"{v:g}" for v in summary["grid"])
    return "\n".join([
        f"# Tuning {summary['knob']} for a general drop of at most {summary['budget']:g}",
        "",
        *([f"Command: `{summary['command']}`", ""] if summary.get("command") else []),
        f"Grid, weakest first: {grid}. Evaluated in bisection order:",
        "",
        format_table([summary["knob"], "general change ± s.e.", "mean in-domain gain", "within budget", "wall time"], rows),
        "",
        verdict,
        "",
        f"Cost: {summary['runs']} runs ({summary['seconds']:.0f} s) against {summary['grid_runs']} for the full grid "
        f"(about {summary['grid_seconds_estimate']:.0f} s at the same time per run). Every run is a row of compare.md."
        + (" A point continued after a kill (--resume) counts its last part only: the cost is understated."
           if any(e.get("resumed") for e in summary["evaluated"]) else ""),
        "",
    ])
