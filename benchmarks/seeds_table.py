"""A quality table over seeds: a `compare --seeds` folder's seeds with seed 0 read from the committed table.

    .venv/bin/python benchmarks/seeds_table.py bench-out/bundled-seeds docs/results/quality.md
    .venv/bin/python benchmarks/seeds_table.py bench-out/jargon-seeds docs/results/quality-jargon.md
    .venv/bin/python benchmarks/seeds_table.py bench-out/legal-seeds docs/results/quality-legal.md

Seed 0 of the bundled benchmark (and of the `jargon` and `legal` tables) was measured before `compare --seeds`
existed and its run folders are gone, so its points are the committed quality table's: a strategy's gain per task
(the bundled table's "gain support" columns, a one-task table's "held-out `jargon` gain" or "held-out `legal` score
gain" column) and general delta from the first table, naive at other learning rates and step counts from the table
whose first header is "naive setting" (where there is one). Seeds 1, 2, ... are the committed points file (--points;
by default the table's: DEFAULT_POINTS), overlaid by DIR/seed-K/compare.json where a run folder holds the same
label; --save writes the merged points back, so that a row measured once outlives its run folder (bench-out is not
committed, and a new checkout starts without it). Each point keeps when its run ended ("measured", from compare's
finished_at), and a folder's row never replaces a committed point measured later: a folder kept from before a
rerun (or a copy of it) cannot write the older run back. A point or row without that time (written before it was
recorded) counts as older than one with it; of two without one (every point committed before commit 12ad350,
fapm's and stm's of 2026-12-05 too; every row of an older folder) the folder's replaces the committed, as before,
so for those the order of --save still matters. A label enters only when it is at every seed of the table: all
the seeds there are, or those named by --seeds (e.g. `--seeds 0 1 2` keeps the three-seed table whole once a few
rows have seeds 3 and 4, and `--seeds 0 1 2 3 4` tables those rows alone). Each seed's rows are
measured against that seed's own frontier (forgetless.frontier) of the naive settings present at every seed, so seed
0's frontier leaves out the settings the other seeds did not run.

The table printed (first header "strategy over seeds") is what scripts/build_advice_evidence.py reads for
`forgetless advise` from quality.md, quality-jargon.md and quality-legal.md: mean ± s.e. over seeds (their s.d. /
sqrt(n): the training seed's noise; the built-in tasks' held-out splits and the general suite are the same items at
every seed, so not the test items'), the worst seed's general
change, and the general change saved at equal gain against each seed's own frontier with the number of seeds where
the row is above it (beyond the frontier's largest gain counts as above and is left out of the mean, as in
forgetless.seeds). With naive at its one setting only (`legal`: naive's own gain there is within noise, so no
frontier was run) there is no frontier and those two columns are "—".
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from datetime import datetime
from pathlib import Path

from forgetless.fileio import atomic_write_text
from forgetless.frontier import Point, distances, naive_front
from forgetless.report import format_table
from forgetless.seeds import mean_se, read_tables, seeds_above

for _folder in ("scripts", "benchmarks"):  # the markdown table reader, and frontier_table beside this file
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / _folder))
from build_advice_evidence import _change, _name, table_rows  # noqa: E402
from frontier_table import row_gains, table_points  # noqa: E402

DEFAULT_POINTS = {"quality.md": "bundled-seeds.json", "quality-jargon.md": "jargon-seeds.json",
                  "quality-legal.md": "legal-seeds.json"}
HEADERS = ["strategy over seeds", "seeds", "mean gain ± s.e.", "general change ± s.e.", "worst seed's change",
           "change saved at equal gain ± s.e.", "above naive's frontier at"]


def seed0_points(table: Path) -> dict[str, Point]:
    """(mean gain, general change) of every row of the committed table, labelled as compare labels them."""
    points = {(_name(p["label"]) or p["label"]): (p["gain"], p["change"]) for p in table_points(table)}
    for row in table_rows(table, "naive setting", optional=True):
        # A one-task table has no "mean gain" column: its one task's gain is the mean.
        gain = float(row["mean gain"]) if "mean gain" in row else statistics.mean(row_gains(row).values())
        points[row["naive setting"]] = (gain, _change(row["general delta ± s.e."])[0])
    return points


Points = dict[int, dict[str, Point]]
Measured = dict[int, dict[str, str]]  # seed -> label -> when its run ended (UTC, ISO 8601), where recorded


def folder_points(folder: Path) -> tuple[Points, Measured]:
    tables = read_tables(folder)
    points = {seed: {r.strategy: (r.mean_gain, r.general_delta_abs) for r in rows if r.general_delta_abs is not None}
              for seed, rows in tables.items()}
    measured = {seed: {r.strategy: r.finished_at for r in rows if r.finished_at and r.strategy in points[seed]}
                for seed, rows in tables.items()}
    return points, measured


def committed_points(path: Path) -> tuple[Points, Measured]:
    if not path.exists():
        return {}, {}
    seeds = json.loads(path.read_text(encoding="utf-8"))["seeds"]
    points = {int(seed): {label: (p["gain"], p["change"]) for label, p in rows.items()} for seed, rows in seeds.items()}
    measured = {int(seed): {label: p["measured"] for label, p in rows.items() if "measured" in p}
                for seed, rows in seeds.items()}
    return points, measured


def merged(committed: tuple[Points, Measured], folder: tuple[Points, Measured]) -> tuple[Points, Measured]:
    """The committed points with each run folder's rows over them (a label measured again replaces its point), but
    for a committed point measured later than the folder's row: that one is kept, with a note."""
    (kept, kept_at), (found, found_at) = committed, folder
    points, measured = {}, {}
    for seed in sorted({*kept, *found}):
        points[seed], measured[seed] = dict(kept.get(seed, {})), dict(kept_at.get(seed, {}))
        for label, point in found.get(seed, {}).items():
            old, new = kept_at.get(seed, {}).get(label), found_at.get(seed, {}).get(label)
            if label in points[seed] and old is not None and (new is None or _when(new) < _when(old)):
                print(f"note: seed {seed}, {label}: the committed point was measured later ({old}) than the folder's "
                      f"row ({new or 'no time recorded'}): the committed point is kept", file=sys.stderr)
                continue
            points[seed][label] = point
            measured[seed].pop(label, None)
            if new is not None:
                measured[seed][label] = new
    return points, measured


def _when(text: str) -> datetime:
    """A recorded time, compared as a time (not as text: another offset or a "Z" would misorder)."""
    when = datetime.fromisoformat(text)
    if when.tzinfo is None:
        raise SystemExit(f"measured time {text!r} has no time zone: compare writes UTC (+00:00)")
    return when


def save_points(path: Path, points: Points, measured: Measured) -> None:
    """Write the points back, one line per row so that a new row is a one-line diff."""
    document = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    seeds = []
    for seed, rows in sorted(points.items()):
        when = measured.get(seed, {})
        lines = [f'      {json.dumps(label)}: {{"gain": {g!r}, "change": {c!r}'
                 + (f', "measured": {json.dumps(when[label])}' if label in when else "") + "}"
                 for label, (g, c) in sorted(rows.items())]
        seeds.append(f'    "{seed}": {{\n' + ",\n".join(lines) + "\n    }")
    head = "".join(f"  {json.dumps(k)}: {json.dumps(v)},\n" for k, v in document.items() if k != "seeds")
    atomic_write_text(path, "{\n" + head + '  "seeds": {\n' + ",\n".join(seeds) + "\n  }\n}\n")


def later_seeds(folder: Path) -> tuple[Points, Measured]:
    """A compare --seeds folder's points; seed 0 is the committed quality table's and may not come from a folder."""
    if not folder.exists():
        print(f"note: {folder} does not exist: the table is the committed points alone", file=sys.stderr)
        return {}, {}
    points, measured = folder_points(folder)
    if 0 in points:
        raise SystemExit(f"{folder}/seed-0: seed 0 is read from the committed quality table, not a run folder")
    return points, measured


def over_seeds(points: Points) -> list[dict]:
    """Every label at every seed, over the seeds; naive's rows ("naive", "naive(lr=...)") trace each seed's frontier."""
    seeds = sorted(points)
    everywhere = [label for label in points[seeds[0]] if all(label in points[s] for s in seeds)]
    naive = [label for label in everywhere if label == "naive" or label.startswith("naive(")]
    # Naive at one setting is one point, not a trade-off: a line through it would judge rows by its noise.
    fronts = {s: naive_front([points[s][label] for label in naive]) for s in seeds} if len(naive) > 1 else None
    rows = []
    for label in everywhere:
        per_seed = [points[s][label] for s in seeds]
        saved = None if label in naive or fronts is None else [distances(fronts[s], points[s][label])[0] for s in seeds]
        rows.append({"label": label, "seeds": seeds, "gain": mean_se([g for g, _ in per_seed]),
                     "change": mean_se([c for _, c in per_seed]), "worst": min(c for _, c in per_seed), "saved": saved})
    return rows


def chosen(points: Points, seeds: list[int] | None) -> Points:
    """The table's seeds: every seed there is, or `seeds` (each must have points; --save keeps every seed anyway)."""
    if seeds is None:
        return points
    missing = sorted(set(seeds) - set(points))
    if missing:
        raise SystemExit(f"--seeds: no points at seed {', '.join(map(str, missing))} (there are: "
                         f"{' '.join(map(str, sorted(points)))})")
    return {seed: points[seed] for seed in sorted(set(seeds))}


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
    parser.add_argument("--points", type=Path, help="committed points of seeds 1, 2, ... (default: bundled-seeds.json "
                        "beside quality.md, jargon-seeds.json and legal-seeds.json beside the one-task tables)")
    parser.add_argument("--save", action="store_true", help="write the folder's points into --points")
    parser.add_argument("--seeds", type=int, nargs="+", help="table these seeds only (default: every seed there is); "
                        "a row enters when it is at each of them")
    args = parser.parse_args()
    if args.points is None:
        # Another table's points must never land in (or be read from) the bundled benchmark's file.
        if args.table.name not in DEFAULT_POINTS:
            parser.error(f"--points is needed for {args.table} (defaults exist for {', '.join(DEFAULT_POINTS)})")
        args.points = args.table.with_name(DEFAULT_POINTS[args.table.name])
    later, measured = merged(committed_points(args.points), later_seeds(args.folder))
    if args.save:
        save_points(args.points, later, measured)
    points = chosen({0: seed0_points(args.table), **later}, args.seeds)
    print(markdown(over_seeds(points)))


if __name__ == "__main__":
    main()
