"""Budget runs against naive's frontier over several training seeds: each seed alone, then averaged over seeds.

    .venv/bin/python benchmarks/seed_frontier.py \\
        --seed-runs bench-out/budget-every2 bench-out/frontier-support \\
        --seed-runs bench-out/budget-every2-seed1 bench-out/frontier-support-seed1

Each `--seed-runs BUDGET FIXED [FIXED ...]` is one training seed: a benchmarks/budget_table.py folder and the
compare folders of its fixed naive settings (`forgetless compare ... --frontier-lr ... --frontier-steps ...`), all
run at that seed from one shared "before" evaluation. The training seed moves naive's general change by more than the test set's
s.e. (docs/results/budget.md), so one seed's distance from the frontier, and its paired bootstrap, say nothing
about the seed. This prints every budget run's distances from its own seed's frontier, their mean over seeds
± s.e. (the seeds' spread / sqrt(n): the training seed's noise; `support`'s held-out split and the general suite
are the same items at every seed, so not the test items'),
how many seeds put it above, and its distances from the frontier of the seed-averaged points (each naive setting's
and the budget run's mean gain and change over the seeds).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from budget_table import family, finished, fixed_rows, over_tasks  # benchmarks/, beside this script

from forgetless.fileio import atomic_write_text
from forgetless.frontier import distances, naive_front
from forgetless.report import format_table
from forgetless.seeds import KINDS, across_seeds, averaged_frontier, shown


def frontier_of(naive: list[dict]) -> list[tuple[float, float]]:
    """The Pareto frontier of the naive settings and the untrained model (0, 0)."""
    return naive_front([(r["gain"], r["change"]) for r in naive])


def budget_rows(folder: Path, tasks: list[str]) -> list[dict]:
    """The finished budget runs of a budget_table.py folder (one sub-folder per entry)."""
    runs = [run for run in sorted(folder.iterdir()) if run.is_dir() and finished(run)]
    if not runs:
        raise SystemExit(f"{folder}: no finished budget run (a sub-folder with a complete results.json)")
    return [{"label": run.name, **over_tasks(json.loads((run / "results.json").read_text(encoding="utf-8")), tasks, run)}
            for run in runs]


def mean_point(rows: list[dict]) -> tuple[float, float]:
    return statistics.fmean(r["gain"] for r in rows), statistics.fmean(r["change"] for r in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed-runs", nargs="+", action="append", type=Path, required=True, metavar="FOLDER",
                        help="one training seed: its budget_table folder, then the compare folders of its naive settings")
    parser.add_argument("--tasks", nargs="+", default=["support"])
    parser.add_argument("--out", type=Path, help="also write the table here (a file)")
    args = parser.parse_args()
    seeds = []
    for budget, *fixed in args.seed_runs:
        naive = [r for r in fixed_rows(fixed, args.tasks) if family(r["label"]) == "naive"]
        if not naive:
            raise SystemExit(f"--seed-runs {budget} {' '.join(map(str, fixed))}: no naive setting to build a frontier from")
        if len({r["label"] for r in naive}) != len(naive):
            raise SystemExit(f"--seed-runs {budget}: a naive setting appears in two of its compare folders")
        front = frontier_of(naive)
        runs = {run["label"]: {**run, "distances": distances(front, (run["gain"], run["change"]))}
                for run in budget_rows(budget, args.tasks)}
        seeds.append({"name": str(budget), "naive": {r["label"]: r for r in naive}, "runs": runs})
    # The averaged frontier needs the same settings at every seed: a setting missing at one seed would bias it.
    for seed in seeds[1:]:
        if seed["naive"].keys() != seeds[0]["naive"].keys() or seed["runs"].keys() != seeds[0]["runs"].keys():
            raise SystemExit(f"{seed['name']} holds other settings than {seeds[0]['name']}: "
                             "every seed must run the same naive settings and budget entries")

    rows = [[label, seed["name"], f"{run['gain']:+.4f}", f"{run['change']:+.4f} ± {run['se']:.4f}", *map(shown, run["distances"])]
            for seed in seeds for label, run in seed["runs"].items()]
    text = [format_table(["budget run", "folder", "gain", "general change ± s.e.", *KINDS], rows), ""]

    averaged_front = averaged_frontier({label: [(s["naive"][label]["gain"], s["naive"][label]["change"]) for s in seeds]
                                        for label in seeds[0]["naive"]})
    text.append(f"Over {len(seeds)} seeds. Frontier of the seed-averaged naive points (gain, change): "
                + ", ".join(f"({g:+.4f}, {c:+.4f})" for g, c in averaged_front))
    for label in sorted(seeds[0]["runs"]):
        point = mean_point([s["runs"][label] for s in seeds])
        saved, added = distances(averaged_front, point)
        text.append(f"- {label}: mean point ({point[0]:+.4f}, {point[1]:+.4f}); against the averaged frontier "
                    f"{KINDS[0]} {shown(saved)}, {KINDS[1]} {shown(added)}")
        for k, kind in enumerate(KINDS):
            values = [s["runs"][label]["distances"][k] for s in seeds]
            text.append(f"  - {kind}, each seed against its own frontier: {across_seeds(values)}")
    if args.out:
        atomic_write_text(args.out, "\n".join(text) + "\n")
    print("\n".join(text))


if __name__ == "__main__":
    main()
