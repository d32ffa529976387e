"""The human-readable side of a run: report.md plus two plots, rendered from results.json.

`write_report` reads only the results (`RunResults`, or results.json's content), so a report can be rebuilt
from a finished run without the model. It renders what metrics.py computed and recomputes none of it.
`format_table` is the Markdown table used here and by the CLI.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any, Sequence

from .environment import environment_line
from .fileio import atomic_write_bytes, atomic_write_text
from .results import Evaluation, Metrics, RunResults

# What a column's score is, for table headers and the reading guide.
_METRIC_LABELS = {"perplexity": "1-log_V(ppl)", "mean": "accuracy", "acc": "accuracy", "acc_norm": "acc_norm"}

_NOT_APPLICABLE = "n/a (one task)"


def format_number(value: Any) -> str:
    """A cell's text: 3 decimals for ordinary scores, thousands separators for large numbers, n/a for None."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if value != 0 and abs(value) < 1e-3:
            return f"{value:.2e}"
        return f"{value:.3f}" if abs(value) < 1000 else f"{value:,.1f}"
    return str(value)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table with padded columns; numbers are formatted by `format_number` and right-aligned.

    A column is right-aligned when every non-empty cell in it is a number (bools excepted), so
    pre-formatted strings such as "+0.010 ± 0.004" stay left-aligned unless passed as numbers.
    """
    if any(len(row) != len(headers) for row in rows):
        raise ValueError(f"every row needs {len(headers)} cells: {[len(row) for row in rows]}")
    cells = [[format_number(value).replace("|", "\\|") for value in row] for row in rows]
    numeric = [
        all(_is_number(row[c]) for row in rows if row[c] is not None) and any(row[c] is not None for row in rows)
        for c in range(len(headers))
    ]
    widths = [max([len(h), 3] + [len(row[c]) for row in cells]) for c, h in enumerate(headers)]

    def line(texts: Sequence[str]) -> str:
        padded = [t.rjust(w) if right else t.ljust(w) for t, w, right in zip(texts, widths, numeric)]
        return "| " + " | ".join(padded) + " |"

    rule = "| " + " | ".join("-" * (w - 1) + ":" if right else "-" * w for w, right in zip(widths, numeric)) + " |"
    return "\n".join([line([h.replace("|", "\\|") for h in headers]), rule] + [line(row) for row in cells])


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def write_report(results: RunResults | dict, out_dir: str | Path) -> Path:
    """Write report.md, report.html, general_over_steps.png, score_matrix.png (and general_probe.png when the run
    has a per-step probe) into out_dir; return report.md's path."""
    from .html_report import render_run_html

    results = _typed(results)
    out_dir = Path(out_dir)
    atomic_write_text(out_dir / "report.html", render_run_html(results))
    atomic_write_bytes(out_dir / "general_over_steps.png", _png(_general_figure(results)))
    atomic_write_bytes(out_dir / "score_matrix.png", _png(_matrix_figure(results)))
    if getattr(results, "probe", None):
        from .probe_plot import probe_figure

        atomic_write_bytes(out_dir / "general_probe.png", _png(probe_figure(results)))
    report_path = out_dir / "report.md"
    atomic_write_text(report_path, render_markdown(results))
    return report_path


def _typed(results: RunResults | dict) -> RunResults:
    return results if isinstance(results, RunResults) else RunResults.model_validate(results)


def render_markdown(results: RunResults | dict) -> str:
    """The text of report.md (see `write_report`)."""
    results = _typed(results)
    tasks, metrics = results.tasks, results.metrics
    strategies = ", ".join(results.strategies) or "none (plain fine-tuning)"
    lines = [
        "# forgetless report",
        "",
        f"- model: `{results.model or '?'}`",
        f"- adaptation: `{results.adapter or '?'}`",
        f"- strategies: {strategies}",
        f"- tasks, in training order: {' → '.join(tasks)}",
    ]
    if results.wall_time_s is not None:
        lines.append(f"- wall time: {results.wall_time_s:.1f} s")
    if results.environment:
        lines.append(f"- measured with: {environment_line(results.environment)}")
    for change in getattr(results, "environment_changes", None) or []:
        lines.append(f"- resumed under another environment: {change}")
    lines += ["", _general_headline(metrics), "", "## Continual-learning metrics", "", _continual_table(metrics)]
    lines += ["", "## Score matrix", "",
              "Held-out score of each training task (columns) after each stage (rows); higher is better.", "",
              _matrix_table(results)]
    if metrics.general_tasks:
        lines += ["", "## General ability, per task", "",
                  "Tasks never trained on, scored before training and at the end.", "",
                  _general_table(results.general, metrics.general_tasks)]
    budget = getattr(results, "budget", None)
    if budget is not None:
        lines += ["", "## Forgetting budget", "", _budget_section(budget, results)]
    probe = getattr(results, "probe", None)
    if probe:
        first = getattr(results, "probe_first_beyond_noise", None)
        lines += ["", "## Per-step probe", "",
                  f"{len(probe)} probes ({getattr(results, 'probe_seconds', 0.0):.1f} s in all). "
                  + (f"The probed general change first left the 95 % noise band at step {first}."
                     if first is not None else "The probed general change never left the 95 % noise band.")
                  + " Its s.e. covers which items were sampled, not the model's change within the window "
                  "(forgetless/evaluation/probe.py).", "", "![per-step probe](general_probe.png)"]
    lines += ["", _READING_GUIDE]
    return "\n".join(lines) + "\n"


def _budget_section(checks: list[dict], results: RunResults) -> str:
    """Every check where the budget was exceeded or acted on, with the numbers that caused it."""
    setting = (getattr(results, "config", None) or {}).get("budget") or {}
    limit = setting.get("max_general_drop")
    head = (f"Limit: a general drop of {limit:g}{' of the starting score' if setting.get('relative') else ''}, "
            f"on exceeding: {setting.get('on_exceed')}. " if limit is not None else "")
    head += (f"Checked {len(checks)} times; exceeded means the change's upper 95 % bound (change + 1.96 s.e.) "
             "is below the limit.")
    acted = [c for c in checks if c["action"] != "within"]
    if not acted:
        return head + " Never exceeded."
    rows = [[c["step"], c["task"] or "", c["stage"], f"{c['general_change']:+.4f} ± {c['se']:.4f}",
             f"{c['upper_bound']:+.4f}", f"{c['limit']:+.4f}", "—" if c.get("in_domain") is None else f"{c['in_domain']:.4f}",
             c["action"] + (f": {c['detail']}" if c.get("detail") else "")] for c in acted]
    return head + "\n\n" + format_table(
        ["step", "task", "stage", "general change ± s.e.", "upper bound", "limit", "in-domain", "decision"], rows)


def _general_headline(metrics: Metrics) -> str:
    if not metrics.has_general:
        return "**No general suite was evaluated, so this run says nothing about general ability.**"
    before, after = metrics.general_before, metrics.general_after
    delta, relative, se = metrics.general_delta_abs, metrics.general_delta_rel, metrics.general_delta_se
    relative_text = f", {100 * relative:+.1f} %" if relative is not None else ""
    se_text = f"; ± {se:.3f} s.e." if se is not None and not math.isnan(se) else ""
    if metrics.general_within_noise:
        verdict = "within noise (|delta| < 1.96 s.e.), do not read it as forgetting or as a cure"
    else:
        verdict = "beyond noise (|delta| > 1.96 s.e.)"
    headline = f"**General score {before:.3f} -> {after:.3f} ({delta:+.3f}{relative_text}{se_text}): {verdict}.**"
    worst = worst_task_line(metrics)
    return headline + (f"\n\n{worst}" if worst else "")


def worst_task_line(metrics: Metrics) -> str:
    """One sentence: the worst general task's change and how many tasks fell (or rose) beyond noise."""
    if metrics.general_worst_task is None:
        return ""
    total = len(metrics.general_tasks)
    return (f"Worst general task: {metrics.general_worst_task} {metrics.general_worst_delta:+.3f} ± "
            f"{metrics.general_worst_se:.3f} s.e.; {metrics.general_tasks_fell} of {total} general tasks fell beyond noise, "
            f"{metrics.general_tasks_rose} rose beyond noise (a mean can hide a loss).")


def _continual_table(metrics: Metrics) -> str:
    rows = []
    for key, name, meaning in [
        ("acc", "ACC", "mean final score over all tasks"),
        ("bwt", "BWT", "mean change on earlier tasks since each was trained (< 0: forgetting)"),
        ("fwt", "FWT", "mean gain on a task from training earlier tasks, before it was trained"),
        ("forgetting", "Forgetting", "mean drop from each earlier task's best score to its final one (> 0: forgetting)"),
    ]:
        value = getattr(metrics, key)
        rows.append([name, _NOT_APPLICABLE if value is None else f"{value:+.3f}" if key != "acc" else f"{value:.3f}",
                     meaning])
    return format_table(["metric", "value", "meaning"], rows)


def _matrix_table(results: RunResults) -> str:
    headers = ["after stage"] + [_labelled(task, results.task_metric.get(task)) for task in results.tasks]
    rows = zip(results.matrix_rows, results.matrix)
    return format_table(headers, [[name] + [float(v) for v in row] for name, row in rows])


def _labelled(task: str, metric: str | None) -> str:
    return f"{task} ({_METRIC_LABELS.get(metric, metric)})" if metric else task


def _general_table(evaluations: list[Evaluation], general_tasks: dict) -> str:
    first = evaluations[0].scores if evaluations else {}
    last = evaluations[-1].scores if evaluations else {}
    rows = []
    for name, task in general_tasks.items():
        stderr_before, stderr_after = first.get(name, {}).get("acc_stderr"), last.get(name, {}).get("acc_stderr")
        stderr = "—" if stderr_before is None else f"{stderr_before:.3f} / {format_number(stderr_after)}"
        kind = "1-log_V(ppl)" if "perplexity" in first.get(name, {}) else "accuracy" if stderr_before is not None else "score"
        rel = "n/a" if task.rel is None else f"{100 * task.rel:+.1f} %"
        rows.append([name, kind, task.before, task.after, f"{task.delta:+.3f} ± {task.se:.3f}", rel,
                     "within noise" if task.within_noise else "BEYOND NOISE", stderr])
    headers = ["task", "score", "before", "after", "delta ± s.e.", "relative", "noise", "acc s.e. before / after"]
    return format_table(headers, rows)


_READING_GUIDE = """## How to read this

- **Score**: higher is better. An accuracy task scores the fraction answered right; a perplexity task
  scores 1 - log_V(perplexity) with V the vocabulary size: 1 = certain of every token, 0 = uniform guessing,
  below 0 = worse than that.
- **Score matrix** R[i][j]: score on task j after training through task i; row 0 is the untouched model.
- **ACC**: mean of the last row, how good the final model is on all tasks.
- **BWT** (backward transfer): mean of R[T][j] - R[j][j] over earlier tasks; BWT < 0 means forgetting.
- **FWT** (forward transfer): mean of R[j-1][j] - R[0][j]; > 0 means earlier tasks helped a later one.
- **Forgetting**: mean over earlier tasks of (best score after any training stage) - (final score); > 0 is forgetting.
- **General score**: mean score over general tasks that are never trained on (TRACE's general ability);
  the change is shown absolute and relative to the starting model.
- **s.e.**: paired bootstrap standard error of the change over the same test items. A change within
  1.96 s.e. is noise: it is evidence neither of forgetting nor of protection against it.
- **acc s.e.**: lm-evaluation-harness's standard error of an accuracy (sample sd / sqrt(n)).
- BWT, FWT and forgetting compare tasks with each other, so a one-task run has none of them."""


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    return buffer.getvalue()


def _general_figure(results: RunResults):
    # matplotlib.figure.Figure renders through Agg without pyplot, so no global backend is touched
    # and no window can open; imported here so format_table users don't pay for matplotlib.
    from matplotlib.figure import Figure

    evaluations = results.general
    figure = Figure(figsize=(11, 4.2), layout="constrained")
    score_axes, change_axes = figure.subplots(1, 2)
    if not evaluations:
        for axes in (score_axes, change_axes):
            axes.text(0.5, 0.5, "no general evaluations", ha="center", va="center", transform=axes.transAxes)
            axes.set_axis_off()
        return figure
    steps = [entry.step for entry in evaluations]
    means = [entry.mean for entry in evaluations]
    names = list(evaluations[0].scores)
    changes = results.metrics.general_tasks
    for name in names:
        scores = [entry.scores.get(name, {}).get("score", math.nan) for entry in evaluations]
        fell = name in changes and not changes[name].within_noise and changes[name].delta < 0
        worst = name == results.metrics.general_worst_task
        label = f"{name} (fell beyond noise)" if fell else name
        line, = score_axes.plot(steps, scores, linewidth=2.2 if worst else 1, alpha=0.8, marker=".", label=label)
        if fell:  # the loss a mean can hide: marked where the run ends
            score_axes.scatter([steps[-1]], [scores[-1]], marker="v", s=70, color=line.get_color(), zorder=5)
        # Tasks live on different scales (accuracy ~0.5, perplexity score ~0.6): the change panel puts them on one.
        change_axes.plot(steps, [_percent_change(s, scores[0]) for s in scores], linewidth=1, alpha=0.8,
                         marker=".", color=line.get_color(), label=name)
    score_axes.plot(steps, means, color="black", linewidth=2.5, marker="o", label="general mean")
    change_axes.plot(steps, [_percent_change(m, means[0]) for m in means], color="black", linewidth=2.5,
                     marker="o", label="general mean")
    change_axes.axhline(0, color="grey", linewidth=0.8)
    for axes in (score_axes, change_axes):
        _mark_task_boundaries(axes, evaluations)
        axes.set_xlabel("global optimizer step")
        axes.grid(alpha=0.3)
    score_axes.set_ylabel("score (higher is better)")
    score_axes.set_title("General tasks: score")
    change_axes.set_ylabel("change vs before training (%)")
    change_axes.set_title("General tasks: relative change")
    score_axes.legend(fontsize="small", loc="best")
    return figure


def _percent_change(value: float, base: float) -> float:
    return 100 * (value - base) / base if base else math.nan


def _mark_task_boundaries(axes, evaluations: list[Evaluation]) -> None:
    """A dashed vertical line, labelled with the task's name, where each training task ended."""
    for entry in evaluations:
        if entry.stage == "after_task":
            axes.axvline(entry.step, color="grey", linestyle="--", linewidth=1)
            axes.annotate(f"end of {entry.task}", xy=(entry.step, 1), xycoords=("data", "axes fraction"),
                          xytext=(-3, -3), textcoords="offset points", rotation=90, ha="right", va="top",
                          fontsize="small", color="dimgrey",
                          bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.7, "pad": 1})


def _matrix_figure(results: RunResults):
    from matplotlib.colors import TwoSlopeNorm
    from matplotlib.figure import Figure

    tasks, matrix, row_names, task_metric = results.tasks, results.matrix, results.matrix_rows, results.task_metric
    # Colour is the change against row 0 in percent, so columns on different scales (accuracy vs
    # perplexity scores) compare fairly and red/blue reads as worse/better than the untouched model.
    change = [[_percent_change(value, matrix[0][c]) for c, value in enumerate(row)] for row in matrix]
    finite = [abs(v) for row in change for v in row if not math.isnan(v)]
    limit = max(finite + [1.0])
    figure = Figure(figsize=(max(6.0, 1.9 * len(tasks) + 3.2), 0.6 * len(matrix) + 1.8), layout="constrained")
    axes = figure.subplots()
    image = axes.imshow(change, cmap="RdBu", norm=TwoSlopeNorm(vcenter=0, vmin=-limit, vmax=limit), aspect="auto")
    for r, row in enumerate(matrix):
        for c, value in enumerate(row):
            strong = not math.isnan(change[r][c]) and abs(change[r][c]) > 0.6 * limit
            text = f"{value:.3f}" if r == 0 else f"{value:.3f}\n{change[r][c]:+.0f} %"
            axes.text(c, r, text, ha="center", va="center", fontsize="small",
                      color="white" if strong else "black", fontweight="bold" if r == c + 1 else "normal")
    axes.set_xticks(range(len(tasks)), [_labelled(task, task_metric.get(task)) for task in tasks])
    axes.set_yticks(range(len(matrix)), row_names)
    axes.xaxis.tick_top()
    figure.suptitle("Score matrix: held-out score per task (bold: just after training that task)", fontsize="medium")
    figure.colorbar(image, ax=axes, label="change vs before training (%)", shrink=0.9)
    return figure
