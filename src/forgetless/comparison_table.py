"""A comparison's table as written: compare.json, compare.md, compare.html and pareto.png (the columns are
described in forgetless.compare)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .comparison_rows import GENERATION_CHECKS, ComparisonRow, naive_frontier
from .environment import environment_note
from .fileio import atomic_write_bytes, atomic_write_json, atomic_write_text


def markdown(table: dict[str, Any]) -> str:
    from .report import format_table

    rows = [ComparisonRow(**row) for row in table["rows"]]
    if not rows:
        return "# Comparison\n\nNo rows yet.\n"
    tasks = list(rows[0].in_domain_gain)
    baseline = table.get("baseline", "naive")

    def pct(value):
        return "—" if value is None else f"{100 * value:.0f} %"

    def signed(value, digits=4):  # BWT and forgetting need an earlier task: none in a one-task sequence
        return "—" if value is None else f"{value:+.{digits}f}"

    def general(row: ComparisonRow) -> str:
        if row.general_delta_abs is None:
            return "—"
        return f"{row.general_delta_abs:+.4f} ± {row.general_delta_se:.4f}"

    def worst(row: ComparisonRow) -> str:
        if row.general_worst_task is None:
            return "—"
        return (f"{row.general_worst_task} {row.general_worst_delta:+.4f} ± {row.general_worst_se:.4f} "
                f"({row.general_tasks_fell})")

    checks = [name for name in GENERATION_CHECKS if any(name in row.generation for row in rows)]
    # In a one-task sequence the only task end is the end: the column would repeat the general change.
    task_ends = ["lowest general change at a task end ± s.e."] if len(tasks) > 1 else []
    end_gain = ["mean gain at the end ± s.e."] if len(tasks) > 1 else []
    end_frontier = ["change saved vs frontier at the end ± s.e."] if len(tasks) > 1 else []

    def generation(row: ComparisonRow, name: str) -> str:
        if name not in row.generation:
            return "—"
        delta, se = row.generation[name]
        return f"{delta:+.4f} ± {se:.4f}"

    headers = [
        "strategy", *[f"gain {t} ± s.e." for t in tasks], *end_gain, *[f"general after {t}" for t in tasks],
        "general delta ± s.e.", *task_ends, "worst general task ± s.e. (fell)", *[f"{name} ± s.e." for name in checks],
        "relative", "BWT", "forgetting",
        f"drop cut vs {baseline}", f"gain kept vs {baseline}",
        "change saved vs frontier ± s.e.", "gain added vs frontier ± s.e.", *end_frontier,
        "s / step", f"step time vs {baseline}", "peak memory", "state", "stores raw data", "wall time",
    ]
    body = [
        [
            row.strategy,
            *[f"{row.in_domain_gain[t]:+.4f} ± {row.in_domain_gain_se.get(t, float('nan')):.4f}" for t in tasks],
            *[signed_with_se(row.in_domain_gain_at_end, row.in_domain_gain_at_end_se) for _ in end_gain],
            *[_number(row.general_after_each_task.get(t)) for t in tasks],
            general(row),
            *[task_end_text(row) for _ in task_ends],
            worst(row),
            *[generation(row, name) for name in checks],
            "—" if row.general_delta_rel is None else f"{100 * row.general_delta_rel:+.1f} %",
            signed(row.bwt),
            signed(row.forgetting),
            pct(row.general_drop_cut),
            pct(row.in_domain_gain_kept),
            signed_with_se(row.change_saved_vs_frontier, row.change_saved_vs_frontier_se),
            signed_with_se(row.gain_added_vs_frontier, row.gain_added_vs_frontier_se),
            *[signed_with_se(row.change_saved_vs_frontier_at_end, row.change_saved_vs_frontier_at_end_se)
              for _ in end_frontier],
            "—" if row.seconds_per_step is None else f"{row.seconds_per_step:.2f}",
            "—" if row.step_time_ratio is None else f"{row.step_time_ratio:.2f}x",
            "—" if row.peak_memory_mb is None else f"{row.peak_memory_mb:,.0f} MiB",
            f"{row.state_mb:,.1f} MiB",
            ", ".join(row.stores_raw_data) or "no",
            f"{row.wall_time_s:.0f} s" + (" (since the resume)" if row.resumed else ""),
        ]
        for row in rows
    ]
    commands = "\n".join(f"    {c}" for c in table.get("commands", []))
    lowest = [row.lowest_task_end_change() for row in rows] if task_ends else []
    without_se = any(found is not None and found[2] is None for found in lowest) or any(
        row.in_domain_gain_at_end is not None and row.in_domain_gain_at_end_se is None for row in rows if end_gain)
    old_rows_note = (" A value without an s.e. in the columns at the end or at a task end is from a row written before "
                     "they existed whose run kept no per-item scores or whose folder is gone: a difference of means."
                     if without_se else "")
    before = rows[0].general_before
    memory = rows[0].memory_measure or ""
    lines = [
        "# Comparison",
        "",
        *(["Commands:", "", commands, ""] if commands else []),
        *([f"General score before training: {before:.4f}.", ""] if before is not None else []),
        format_table(headers, body),
        "",
        f"s.e.: paired bootstrap over the same evaluation items. Peak memory: {memory} (see forgetless.compare). "
        "Frontier: naive's rows at every train setting and the untrained model; distances along it are explained in "
        "forgetless.frontier (positive beats what naive reaches by training less); their s.e. rescores every run on "
        "the same resampled items and rebuilds the frontier each time (forgetless.frontier_noise), none where a run "
        "kept no evaluations.json or the distance is undefined in some resample."
        + (" At the end: every row's and naive's points by the mean gain at the end instead of right after each task."
           if end_frontier else "")
        + (" formats: of the answers asked for a JSON object, a numbered list or bullets, the share holding it "
           "anywhere, text around it allowed (forgetless.evaluation.formats); instructions fails an answer that "
           "writes it and runs on." if "formats" in checks else "")
        + (" stops: the share of instructions answers that ended by themselves within the suite's budget of new tokens "
           "(forgetless.evaluation.stops); a fall means answers ran on until cut." if "stops" in checks else "")
        + (" No stops for a row whose start or end evaluation kept no answer lengths (scored before forgetless "
           "recorded them; a before.json of that age is reused by every new row: remove it to score the start anew)."
           if any("instructions" in row.generation and "stops" not in row.generation for row in rows) else "")
        + old_rows_note,
        "",
        SEED_NOISE,
        "",
        *([note, ""] if (note := rows_environment_note(rows)) else []),
    ]
    return "\n".join(lines)


def rows_environment_note(rows: list[ComparisonRow]) -> str:
    """forgetless.environment.environment_note over the rows, by label, the rows measured across two environments,
    and the rows continued from a killed invocation (whose wall time and memory are not the whole run's)."""
    note = environment_note({row.strategy: row.environment for row in rows})
    within = [f"{row.strategy} ({'; '.join(row.environment_changes)})" for row in rows if row.environment_changes]
    if within:
        note = (note + " " if note else "") + "Rows measured across two environments: " + ", ".join(within) + "."
    resumed = [row.strategy for row in rows if row.resumed]
    if resumed:
        note = (note + " " if note else "") + (
            f"Rows continued from a killed invocation's resumable state (--resume): {', '.join(resumed)}; their wall "
            "time and peak memory are the last invocation's only, and s / step counts the steps each part trained.")
    return note


# One table is one training seed, and its s.e. is over the evaluation items only. Measured on the default model:
# naive's general change at one setting moved with the seed by an s.d. of 0.0100 (`legal` at lr 5e-4, five seeds;
# quality-legal.md) to 0.022 (bundled at lr 3e-4 for 30 steps, seeds 0-5; quality.md, 0.0191 at lr 5e-4), and to
# 0.049 at lr 5e-4 once seed 6 was added (naive lost 0.187 there; its pydoc training was unstable), against one
# run's s.e. of about 0.009.
SEED_NOISE = ("One training seed: each s.e. is over the evaluation items of this run, not over training seeds. On "
              "forgetless's benchmark sequences naive's general change at one setting moved with the seed by an s.d. "
              "of 0.010 to 0.022 (0.049 with one seed whose training was unstable), more than one run's s.e. of "
              "about 0.009, so a difference within about twice its "
              "s.e. (or a frontier verdict) needs `--seeds 0 1 2` before it is a finding.")


def task_end_text(row: ComparisonRow) -> str:
    """"-0.0390 ± 0.0073 (after support)": the lowest general change at a task's end, and after which task."""
    lowest = row.lowest_task_end_change()
    if lowest is None:
        return "—"
    task, change, se = lowest
    return f"{signed_with_se(change, se)} (after {task})"


def signed_with_se(value: float | None, se: float | None) -> str:
    """"+0.0123 ± 0.0045", "+0.0123" without an s.e., "—" without a value."""
    if value is None:
        return "—"
    return f"{value:+.4f}" if se is None else f"{value:+.4f} ± {se:.4f}"


def _number(value) -> str:
    return "—" if value is None else f"{value:.4f}"


def pareto_png(table: dict[str, Any]) -> bytes | None:
    """The trade-off, one labelled point per row.

    Left: mean in-domain gain against general change, with 1.96 s.e. bars (needs no baseline). Right, when the
    baseline dropped and gained: share of its gain kept (worst task) against share of its drop cut.
    """
    from matplotlib.figure import Figure

    from .report import _png

    rows = [ComparisonRow(**row) for row in table["rows"]]
    rows = [r for r in rows if r.general_delta_abs is not None]
    if not rows:
        return None
    relative = [(r.strategy, r.general_drop_cut, r.in_domain_gain_kept) for r in rows]
    relative = [(label, x, y) for label, x, y in relative if x is not None and y is not None]
    figure = Figure(figsize=(13 if relative else 7, 5), layout="constrained")
    panels = figure.subplots(1, 2 if relative else 1, squeeze=False)[0]
    absolute = panels[0]
    for r in rows:
        gains = list(r.in_domain_gain.values())
        gain = sum(gains) / len(gains)
        gain_se = (sum(r.in_domain_gain_se.get(t, 0.0) ** 2 for t in r.in_domain_gain) ** 0.5) / len(gains)
        absolute.errorbar(r.general_delta_abs, gain, xerr=1.96 * (r.general_delta_se or 0.0), yerr=1.96 * gain_se,
                          fmt="o", capsize=3)
        absolute.annotate(r.strategy, (r.general_delta_abs, gain), xytext=(4, 4), textcoords="offset points",
                          fontsize="small")
    trade_off_frame(absolute, naive_frontier(rows), "naive's frontier (training less)",
                    "general change (after - before; bars 1.96 s.e.)", "Trade-off: up and right is better")
    if relative:
        axes = panels[1]
        for label, x, y in relative:
            axes.scatter(100 * x, 100 * y, s=30)
            axes.annotate(label, (100 * x, 100 * y), xytext=(4, 4), textcoords="offset points", fontsize="small")
        # The better corner: the baseline's whole drop cut with its whole gain kept.
        axes.axvline(100, color="grey", linewidth=0.8, linestyle="--")
        axes.axhline(100, color="grey", linewidth=0.8, linestyle="--")
        baseline = table.get("baseline", "naive")
        axes.set_xlabel(f"share of {baseline}'s general drop cut (%)")
        axes.set_ylabel(f"share of {baseline}'s in-domain gain kept (%, worst task)")
        axes.set_title(f"Against {baseline}")
        axes.grid(alpha=0.3)
    return _png(figure)


def trade_off_frame(axes, front: list[tuple[float, float]], front_label: str, xlabel: str, title: str) -> None:
    """Gain against general change: naive's frontier `front` ((gain, change) points) as a line, no change marked."""
    if len(front) > 1:
        axes.plot([c for _, c in front], [g for g, _ in front], color="black", linestyle="--", linewidth=1,
                  label=front_label)
        axes.legend(fontsize="small", loc="best")
    axes.axvline(0, color="grey", linewidth=0.8, linestyle="--")
    axes.set_xlabel(xlabel)
    axes.set_ylabel("mean in-domain gain over tasks")
    axes.set_title(title)
    axes.grid(alpha=0.3)


def write_table(table: dict[str, Any], out: Path) -> None:
    from .html_report import render_comparison_html

    atomic_write_json(out / "compare.json", table)
    atomic_write_text(out / "compare.md", markdown(table))
    atomic_write_text(out / "compare.html", render_comparison_html(table))
    image = pareto_png(table)
    if image is not None:
        atomic_write_bytes(out / "pareto.png", image)
