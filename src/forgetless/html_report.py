"""One self-contained HTML page for a run (report.html) and for a comparison (compare.html).

No network and no script: styles are inline and plots are embedded PNGs, so the file opens anywhere, offline,
and can be mailed or attached to a ticket. It renders the same results as report.md (nothing recomputed):
the score matrix, the general change over steps with its 95 % noise band, the budget's decisions, each
task's training log and the config.
"""

from __future__ import annotations

import base64
import html
import json
from typing import Any, Sequence
from urllib.parse import quote

from .environment import environment_line
from .results import RunResults

_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 75rem;
       color: #1d2433; padding: 0 1rem; line-height: 1.45; }
h1 { font-size: 1.6rem; margin-bottom: .2rem; } h2 { font-size: 1.2rem; margin-top: 2rem; border-bottom: 1px solid #d8dde6; }
table { border-collapse: collapse; margin: .6rem 0; font-size: .9rem; }
th, td { border: 1px solid #d8dde6; padding: .25rem .6rem; text-align: left; vertical-align: top; }
th { background: #f2f4f8; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.headline { font-size: 1.1rem; padding: .8rem 1rem; border-radius: .4rem; background: #f2f4f8; }
.bad { background: #fde8e8; } .good { background: #e7f5ec; }
img { max-width: 100%; height: auto; } pre { background: #f6f8fa; padding: .8rem; overflow-x: auto; font-size: .85rem; }
.muted { color: #5b6578; font-size: .9rem; }
"""


def _page(title: str, body: list[str]) -> str:
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><style>{_STYLE}</style></head>"
            f"<body>\n{''.join(body)}\n</body></html>\n")


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f'<td class="num">{value:.4f}</td>'
        if isinstance(value, int) and not isinstance(value, bool):
            return f'<td class="num">{value:,}</td>'
        return f"<td>{html.escape('' if value is None else str(value))}</td>"

    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(cell(v) for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _image(png: bytes | None, alt: str) -> str:
    if not png:
        return ""
    return f'<p><img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}"></p>'


def _change_band_png(results: RunResults) -> bytes | None:
    """The general mean's change over steps with a 1.96 s.e. band, task ends and budget decisions marked."""
    from matplotlib.figure import Figure

    from .report import _mark_task_boundaries, _png

    curve = results.general_curve
    if len(curve) < 2:
        return None
    steps = [p.step for p in curve]
    delta = [p.delta for p in curve]
    low = [p.delta - 1.96 * p.se for p in curve]
    high = [p.delta + 1.96 * p.se for p in curve]
    figure = Figure(figsize=(10, 4), layout="constrained")
    axes = figure.subplots()
    axes.fill_between(steps, low, high, alpha=0.25, color="tab:blue", label="95 % band (paired bootstrap)")
    axes.plot(steps, delta, marker="o", color="tab:blue", label="general change (full suite)")
    probe = [p for p in getattr(results, "probe", None) or [] if p["delta"] is not None]
    if probe:
        axes.fill_between([p["step"] for p in probe], [p["delta"] - 1.96 * p["se"] for p in probe],
                          [p["delta"] + 1.96 * p["se"] for p in probe], alpha=0.15, color="tab:orange",
                          label="per-step probe, 95 % band")
        axes.plot([p["step"] for p in probe], [p["delta"] for p in probe], color="tab:orange", linewidth=1)
    axes.axhline(0, color="grey", linewidth=0.8)
    budget = getattr(results, "budget", None) or []
    limits = {c["limit"] for c in budget}
    for limit in limits:
        axes.axhline(limit, color="tab:red", linestyle=":", linewidth=1, label="budget limit")
    for check in budget:
        if check["action"] != "within":
            axes.scatter([check["step"]], [check["general_change"]], marker="x", color="tab:red", s=60, zorder=5)
    _mark_task_boundaries(axes, results.general)
    axes.set_xlabel("global optimizer step")
    axes.set_ylabel("general score change since the start")
    axes.legend(fontsize="small", loc="lower left")
    axes.grid(alpha=0.3)
    return _png(figure)


def render_run_html(results: RunResults) -> str:
    from .report import _general_figure, _matrix_figure, _png

    m = results.metrics
    body = [f"<h1>forgetless report</h1><p class=\"muted\">model <code>{html.escape(str(results.model))}</code> · "
            f"{html.escape(str(results.adapter))} · strategies: {html.escape(', '.join(results.strategies) or 'none')} · "
            f"tasks: {html.escape(' → '.join(results.tasks))}</p>"]
    if m.has_general:
        verdict = "within noise" if m.general_within_noise else "beyond noise"
        css = "good" if m.general_within_noise or m.general_delta_abs > 0 else "bad"
        body.append(f'<p class="headline {css}">General score {m.general_before:.4f} → {m.general_after:.4f}: '
                    f"<b>{m.general_delta_abs:+.4f} ± {m.general_delta_se:.4f}</b> s.e. ({verdict})</p>")
    body.append("<h2>General ability over training</h2>")
    body.append(_image(_change_band_png(results), "general change over steps with its noise band"))
    body.append(_image(_png(_general_figure(results)), "general task scores over steps"))
    body.append("<h2>Score matrix</h2><p class=\"muted\">Held-out score of each training task (columns) after each "
                "stage (rows); higher is better.</p>")
    body.append(_table(["", *results.tasks], [[name, *row] for name, row in zip(results.matrix_rows, results.matrix)]))
    body.append(_image(_png(_matrix_figure(results)), "score matrix heat map"))
    body.append(_table(["ACC", "BWT", "FWT", "forgetting"], [[m.acc, m.bwt, m.fwt, m.forgetting]]))
    if m.general_tasks:
        body.append("<h2>General tasks</h2>")
        body.append(_table(["task", "before", "after", "change", "s.e.", "within noise"],
                           [[n, t.before, t.after, t.delta, t.se, "yes" if t.within_noise else "no"]
                            for n, t in m.general_tasks.items()]))
    budget = getattr(results, "budget", None)
    if budget is not None:
        acted = [c for c in budget if c["action"] != "within"]
        body.append(f"<h2>Forgetting budget</h2><p>Checked {len(budget)} times; "
                    f"{len(acted)} decision{'s' if len(acted) != 1 else ''}.</p>")
        if acted:
            body.append(_table(["step", "task", "stage", "change", "s.e.", "upper bound", "limit", "decision"],
                               [[c["step"], c["task"], c["stage"], c["general_change"], c["se"], c["upper_bound"],
                                 c["limit"], c["action"] + (f": {c['detail']}" if c.get("detail") else "")]
                                for c in acted]))
    if results.training:
        keys = sorted({k for entry in results.training for k in entry if k != "task"})
        body.append("<h2>Training, per task</h2>")
        body.append(_table(["task", *keys], [[e.get("task"), *[e.get(k) for k in keys]] for e in results.training]))
    config = getattr(results, "config", None)
    if config:
        body.append("<h2>Config</h2><pre>" + html.escape(json.dumps(config, indent=2)) + "</pre>")
    if results.environment:
        changes = getattr(results, "environment_changes", None) or []
        body.append("<h2>Environment</h2><p>" + html.escape(environment_line(results.environment)) + "</p>"
                    + "".join(f"<p>Resumed under another environment: {html.escape(c)}</p>" for c in changes))
    return _page("forgetless report", body)


def render_comparison_html(table: dict[str, Any]) -> str:
    from .comparison_rows import GENERATION_CHECKS, ComparisonRow, run_folder
    from .comparison_table import SEED_NOISE, pareto_png, rows_environment_note, signed_with_se, task_end_text

    rows = [ComparisonRow(**row) for row in table["rows"]]
    baseline = table.get("baseline", "naive")
    body = ["<h1>forgetless comparison</h1>"]
    if table.get("commands"):
        body.append("<pre>" + html.escape("\n".join(table["commands"])) + "</pre>")
    if rows:
        tasks = list(rows[0].in_domain_gain)

        def pct(value):
            return "—" if value is None else f"{100 * value:.0f} %"

        def signed(value):
            return "—" if value is None else f"{value:+.4f}"
        checks = [name for name in GENERATION_CHECKS if any(name in r.generation for r in rows)]  # when scored
        task_ends = ["lowest general change at a task end ± s.e."] if len(tasks) > 1 else []  # one task: its end is the end
        end_gain = ["mean gain at the end ± s.e."] if len(tasks) > 1 else []
        end_frontier = ["change saved vs naive's frontier at the end"] if len(tasks) > 1 else []
        body.append(_table(
            ["strategy", *[f"gain {t}" for t in tasks], *end_gain,
             "general change ± s.e.", *task_ends, *checks, "BWT",
             f"drop cut vs {baseline}",
             f"gain kept vs {baseline}", "change saved vs naive's frontier", "gain added vs naive's frontier", *end_frontier,
             "step time",
             "peak memory", "state", "stores raw data"],
            [[r.strategy, *[f"{r.in_domain_gain[t]:+.4f} ± {r.in_domain_gain_se.get(t, float('nan')):.4f}" for t in tasks],
              *[signed_with_se(r.in_domain_gain_at_end, r.in_domain_gain_at_end_se) for _ in end_gain],
              "—" if r.general_delta_abs is None else f"{r.general_delta_abs:+.4f} ± {r.general_delta_se:.4f}",
              *[task_end_text(r) for _ in task_ends],
              *["—" if c not in r.generation else "{:+.3f} ± {:.3f}".format(*r.generation[c]) for c in checks],
              signed(r.bwt), pct(r.general_drop_cut), pct(r.in_domain_gain_kept),
              signed_with_se(r.change_saved_vs_frontier, r.change_saved_vs_frontier_se),
              signed_with_se(r.gain_added_vs_frontier, r.gain_added_vs_frontier_se),
              *[signed_with_se(r.change_saved_vs_frontier_at_end, r.change_saved_vs_frontier_at_end_se)
                for _ in end_frontier],
              "—" if r.step_time_ratio is None else f"{r.step_time_ratio:.2f}x",
              "—" if r.peak_memory_mb is None else f"{r.peak_memory_mb:,.0f} MiB", f"{r.state_mb:.1f} MiB",
              ", ".join(r.stores_raw_data) or "no"] for r in rows],
        ))
        body.append(f"<p>{html.escape(SEED_NOISE)}</p>")
        if note := rows_environment_note(rows):
            body.append(f"<p>{html.escape(note)}</p>")
        body.append(_image(pareto_png(table), "trade-off between in-domain gain and general change"))
        links = "".join(f'<li><a href="{quote(run_folder(r.strategy))}/report.html">{html.escape(r.strategy)}</a></li>'
                        for r in rows)
        body.append(f"<h2>Each run</h2><ul>{links}</ul>")
    return _page("forgetless comparison", body)
