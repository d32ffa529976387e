"""Does the per-step probe track the full general suite? Both on one run, compared at every full evaluation.

    .venv/bin/python benchmarks/probe_validation.py --tasks support pydoc --out bench-out/probe/sp    # ~15 min
    .venv/bin/python benchmarks/probe_validation.py --tasks support legal --out bench-out/probe/sl
    .venv/bin/python benchmarks/probe_validation.py --out bench-out/probe/sp --plot-only             # redraw

The bundled set-up of benchmarks/quality.py (default model, full fine-tuning, naive, 30 steps a task at lr 5e-4),
with the full general suite every `--every-steps` steps and the probe (eval.probe, its defaults unless given)
after every step. At each full evaluation inside or at the end of a task the probe's estimate at the same step
is set against the full suite's change: agreement means |probe - full| <= 2 x the probe's s.e. (the s.e.
covers which items the probe sampled; the full suite's own s.e. is about the item population, which both
share, so it is not added). Prints a markdown table and writes DIR/probe-validation.png (probe band, full points).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from quality import base_config  # benchmarks/, beside this script

from forgetless.config import parse_config
from forgetless.probe_plot import probe_figure
from forgetless.training import run_continual


def agreement(results: dict) -> list[dict]:
    """One row per full evaluation after training started: the full change and the probe's estimate there."""
    probe = {p["step"]: p for p in results["probe"]}
    rows = []
    for point in results["general_curve"]:
        if point["stage"] == "before" or point["step"] not in probe or probe[point["step"]]["delta"] is None:
            continue
        estimate = probe[point["step"]]
        gap = abs(estimate["delta"] - point["delta"])
        rows.append({"step": point["step"], "stage": point["stage"], "task": point["task"],
                     "full": point["delta"], "full_se": point["se"], "probe": estimate["delta"],
                     "probe_se": estimate["se"], "gap_in_se": gap / estimate["se"] if estimate["se"] else float("inf")})
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| step | evaluation | full suite change ± s.e. | probe estimate ± s.e. | gap / probe s.e. | within 2 s.e. |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['step']} | {r['stage']} ({r['task']}) | {r['full']:+.4f} ± {r['full_se']:.4f} | "
                     f"{r['probe']:+.4f} ± {r['probe_se']:.4f} | {r['gap_in_se']:.2f} | "
                     f"{'yes' if r['gap_in_se'] <= 2 else 'NO'} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["support", "pydoc"])
    parser.add_argument("--every-steps", type=int, default=10)
    parser.add_argument("--items", type=int, help="probe items per step (default: eval.probe's default)")
    parser.add_argument("--window", type=int, help="probe window in steps (default: eval.probe's default)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--plot-only", action="store_true", help="redraw from DIR/results.json")
    parser.add_argument("--quick", action="store_true", help="2 steps a task, 10 items per task: a set-up check")
    args = parser.parse_args()
    out = Path(args.out)
    if not args.plot_only:
        config = base_config("full", args.quick, args.tasks).model_dump(mode="json", exclude_defaults=True)
        probe = {**({"items_per_step": args.items} if args.items else {}), **({"window": args.window} if args.window else {})}
        config["eval"] = {**config.get("eval", {}), "every_steps": args.every_steps, "probe": probe}
        run_continual(parse_config(config, "probe-validation"), out, progress=False, overwrite=True)
    results = json.loads((out / "results.json").read_text())
    rows = agreement(results)
    figure = probe_figure(results, " -> ".join(results["tasks"]) + f" (naive, every {args.every_steps} steps)")
    figure.savefig(out / "probe-validation.png", dpi=110)
    print(table(rows))
    held = sum(r["gap_in_se"] <= 2 for r in rows)
    print(f"\n{held} of {len(rows)} full evaluations within 2 probe s.e.; first step beyond noise "
          f"(probe): {results.get('probe_first_beyond_noise')}; probe {results.get('probe_seconds', 0):.1f} s in all")


if __name__ == "__main__":
    main()
