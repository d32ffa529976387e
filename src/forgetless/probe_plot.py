"""The per-step probe's curve with its 95 % band, and the full suite's evaluations on the same axes."""

from __future__ import annotations


def probe_figure(results, title: str = "General change: per-step probe and full evaluations"):
    """A matplotlib Figure (Agg, no pyplot) from results.json's `probe` and `general_curve` (dicts or models)."""
    from matplotlib.figure import Figure

    def get(entry, key):
        return entry[key] if isinstance(entry, dict) else getattr(entry, key)

    probe = results["probe"] if isinstance(results, dict) else getattr(results, "probe", None) or []
    curve = results["general_curve"] if isinstance(results, dict) else results.general_curve
    points = [p for p in probe if get(p, "delta") is not None]
    steps, delta, se = [get(p, "step") for p in points], [get(p, "delta") for p in points], [get(p, "se") for p in points]
    figure = Figure(figsize=(7, 4))
    axes = figure.add_subplot()
    axes.plot(steps, delta, color="tab:blue", label="probe estimate")
    axes.fill_between(steps, [d - 1.96 * s for d, s in zip(delta, se)], [d + 1.96 * s for d, s in zip(delta, se)],
                      color="tab:blue", alpha=0.2, label="probe 95 % band")
    axes.errorbar([get(p, "step") for p in curve], [get(p, "delta") for p in curve],
                  yerr=[1.96 * get(p, "se") for p in curve], fmt="o", color="black", capsize=3,
                  label="full suite ± 1.96 s.e.")
    axes.axhline(0, color="grey", linewidth=0.8)
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("general change since before training")
    axes.set_title(title)
    axes.legend(loc="lower left")
    figure.tight_layout()
    return figure
