"""The bundled benchmark over seeds: a `compare --seeds` folder's seeds with seed 0 read from the committed table.

    .venv/bin/python benchmarks/seeds_table.py bench-out/bundled-seeds docs/results/quality.md

Seed 0 of the bundled benchmark was measured before `compare --seeds` existed and its run folders are gone, so its
points are the committed quality table's: a strategy's gain per task and general delta from the first table, naive
at other learning rates and step counts from the table whose first header is "naive setting". Seeds 1, 2, ... are
DIR/seed-K/compare.json. A label enters only when it is at every seed. Each seed's rows are measured against that
seed's own frontier (forgetless.frontier) of the naive settings present at every seed, so seed 0's frontier leaves
out the settings the other seeds did not run.

The table printed (first header "strategy over seeds") is what scripts/build_advice_evidence.py reads for
`forgetless advise`: mean ± s.e. over seeds (their s.d. / sqrt(n); each seed draws its own held-out split, so this
holds the test set's noise too), the worst seed's general change, and the general change saved at equal gain
against each seed's own frontier with the number of seeds where the row is above it (beyond the frontier's largest
gain counts as above and is left out of the mean, as in forgetless.seeds).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from forgetless.frontier import Point, distances, naive_front
from forgetless.report import format_table
from forgetless.seeds import mean_se, read_tables, seeds_above

for _folder in ("scripts", "benchmarks"):  # the markdown table reader, and frontier_table beside this file
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / _folder))
from build_advice_evidence import _change, _name, table_rows  # noqa: E402
from frontier_table import table_points  # noqa: E402

HEADERS = ["strategy over seeds", "seeds", "mean gain ± s.e.", "general change ± s.e.", "worst seed's change",
           "change saved at equal gain ± s.e.", "above naive's frontier at"]


def seed0_points(table: Path) -> dict[str, Point]:
    """(mean gain, general change) of every row of the committed table, labelled as compare labels them."""
    points = {(_name(p["label"]) or p["label"]): (p["gain"], p["change"]) for p in table_points(table)}
    for row in table_rows(table, "naive setting"):
        points[row["naive setting"]] = (float(row["mean gain"]), _change(row["general delta ± s.e."])[0])
    return points


def folder_points(folder: Path) -> dict[int, dict[str, Point]]:
    return {seed: {r.strategy: (r.mean_gain, r.general_delta_abs) for r in rows if r.general_delta_abs is not None}
            for seed, rows in read_tables(folder).items()}


def over_seeds(points: dict[int, dict[str, Point]]) -> list[dict]:
    """Every label at every seed, over the seeds; naive's rows ("naive", "naive(lr=...)") trace each seed's frontier."""
    seeds = sorted(points)
    everywhere = [label for label in points[seeds[0]] if all(label in points[s] for s in seeds)]
    naive = [label for label in everywhere if label == "naive" or label.startswith("naive(")]
    fronts = {s: naive_front([points[s][label] for label in naive]) for s in seeds}
    rows = []
    for label in everywhere:
        per_seed = [points[s][label] for s in seeds]
        saved = None if label in naive else [distances(fronts[s], points[s][label])[0] for s in seeds]
        rows.append({"label": label, "seeds": seeds, "gain": mean_se([g for g, _ in per_seed]),
                     "change": mean_se([c for _, c in per_seed]), "worst": min(c for _, c in per_seed), "saved": saved})
    return rows


def _signed(value: float, se: float | None) -> str:
    return f"{value:+.4f}" + ("" if se is None else f" ± {se:.4f}")


def markdown(rows: list[dict]) -> str:
    body = []
    for row in rows:
        saved, above = "—", "—"
        if row["saved"] is not None:
            defined = [v for v in row["saved"] if v is not None]
            saved = _signed(*mean_se(defined)) if defined else "beyond the range"
            above = f"{seeds_above(row['saved'])} of {len(row['saved'])}"
        body.append([row["label"], " ".join(map(str, row["seeds"])), _signed(*row["gain"]), _signed(*row["change"]),
                     f"{row['worst']:+.4f}", saved, above])
    return format_table(HEADERS, body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="a `forgetless compare --seeds` folder (seed-1, seed-2, ...)")
    parser.add_argument("table", type=Path, help="the committed quality table holding seed 0")
    args = parser.parse_args()
    points = {0: seed0_points(args.table), **folder_points(args.folder)}
    print(markdown(over_seeds(points)))


if __name__ == "__main__":
    main()
