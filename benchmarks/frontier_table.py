"""A committed quality table's rows against naive's trade-off frontier, measured in a compare folder.

    .venv/bin/python benchmarks/frontier_table.py bench-out/frontier docs/results/quality.md

The folder holds naive at several learning rates and step counts (`benchmarks/quality.py --frontier-lr ...
--frontier-steps ...`, same set-up as the table). Its frontier (forgetless.frontier: the Pareto set of those
points and the untrained model) is what plain fine-tuning reaches by training less; each row of the table is
then reported by the general change it saves at equal mean in-domain gain and the gain it adds at equal change.
The table's rows are read from its markdown (gain per task, general delta ± s.e.), so the old runs need not be
kept; the script first checks that the folder's naive row at the table's own setting reproduces the table's
naive row, which is what makes the two comparable.

Noise: a row "beats the frontier" when the change it saves exceeds 1.96 x sqrt(se_row^2 + se_front^2), with
se_front the larger s.e. of the two frontier points it is read between. The paired items are shared, so the
true s.e. of the difference is smaller; this errs towards "within noise".
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path

from forgetless.frontier import change_at, distances, gain_at, naive_front
from forgetless.report import format_table

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from build_advice_evidence import _change, table_rows  # noqa: E402  (the markdown table reader)

_Z = 1.96


def frontier_points(folder: Path) -> tuple[list[dict], dict]:
    """The naive rows of `folder`/compare.json as {gain, change, se, label}, and the table's setting."""
    table = json.loads((folder / "compare.json").read_text(encoding="utf-8"))
    points = []
    for row in table["rows"]:
        if row["spec"] in ("naive", ["naive"]) and row.get("general_delta_abs") is not None:
            gains = list(row["in_domain_gain"].values())
            points.append({"label": row["strategy"], "gain": sum(gains) / len(gains), "gains": row["in_domain_gain"],
                           "change": row["general_delta_abs"], "se": row["general_delta_se"]})
    return points, table["setting"]


def row_gains(row: dict[str, str]) -> dict[str, float]:
    """A table row's in-domain gain per task: the bundled table's "gain support" columns, or a one-task table's
    "held-out `jargon` gain ± s.e." column (its first number; `legal`'s is "held-out `legal` score gain")."""
    gains = {}
    for key, value in row.items():
        # not "gain kept vs naive"
        column = re.fullmatch(r"gain (\w+)|held-out `(\w+)` (?:score )?gain(?: ± s\.e\.)?", key)
        if column:
            gains[column.group(1) or column.group(2)] = float(re.findall(r"[-+]?\d+\.\d+", value)[0])
    return gains


def table_points(path: Path) -> list[dict]:
    points = []
    for row in table_rows(path, "strategy"):
        gains = row_gains(row)
        change, se = _change(row["general delta ± s.e."])
        points.append({"label": row["strategy"], "gain": sum(gains.values()) / len(gains), "gains": gains,
                       "change": change, "se": se})
    return points


def check_reproduced(naive: list[dict], rows: list[dict]) -> str:
    """The folder's naive row at the table's setting against the table's naive row (4 decimals, as printed)."""
    [ours] = [p for p in naive if p["label"] == "naive"]
    [theirs] = [p for p in rows if p["label"] == "naive"]
    same = all(round(ours["gains"][t], 4) == theirs["gains"][t] for t in theirs["gains"]) and round(
        ours["change"], 4) == theirs["change"]
    if not same:
        raise SystemExit(f"the folder's naive row {ours} does not reproduce the table's {theirs}: not comparable")
    return f"naive reproduced: general {ours['change']:+.4f}, gains " + ", ".join(
        f"{t} {g:+.4f}" for t, g in ours["gains"].items())


def _bracketing_se(front: list[dict], key: str, value: float) -> float:
    """The larger s.e. of the two frontier points between which `value` (a gain or a change) falls."""
    ordered = sorted(front, key=lambda p: p[key])
    for low, high in zip(ordered, ordered[1:]):
        if low[key] <= value <= high[key]:
            return max(low["se"], high["se"])
    return max(p["se"] for p in front)


def verdict(row: dict, front: list[dict], saved: float | None, added: float | None) -> str:
    top = max(front, key=lambda p: p["gain"])
    if row["gain"] < 0:
        return "no: its in-domain score fell"
    if saved is None:
        if row["gain"] > top["gain"] and row["change"] >= top["change"]:
            return "yes: more gain than every naive point, and a smaller drop than the one with the most"
        return "n/a: gain outside naive's range"
    noise = _Z * math.hypot(row["se"], _bracketing_se(front, "gain", row["gain"]))
    if saved > noise:
        return f"yes ({saved / noise * _Z:.1f} s.e.)"
    if saved < -noise:
        return "no: below the frontier"
    return "within noise"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="a compare folder with naive's frontier rows")
    parser.add_argument("table", type=Path, help="a committed quality table (markdown)")
    args = parser.parse_args()
    naive, setting = frontier_points(args.folder)
    rows = table_points(args.table)
    print(check_reproduced(naive, rows) + "\n")
    points = naive_front([(p["gain"], p["change"]) for p in naive])
    front = [next(p for p in naive + [{"gain": 0.0, "change": 0.0, "se": 0.0, "label": "untrained"}]
                  if (p["gain"], p["change"]) == point) for point in points]
    base = next(p for p in naive if p["label"] == "naive")
    tasks = list(base["gains"])
    print(format_table(  # scripts/build_advice_evidence.py reads this table (first header "naive setting")
        ["naive setting", *(f"gain {t}" for t in tasks), "mean gain", "general delta ± s.e.", "gain kept vs naive",
         "on the frontier"],
        [[p["label"], *(f"{p['gains'][t]:+.4f}" for t in tasks), f"{p['gain']:+.4f}", f"{p['change']:+.4f} ± {p['se']:.4f}",
          f"{100 * min(p['gains'][t] / base['gains'][t] for t in tasks if base['gains'][t] > 0):.0f} %",
          "yes" if (p["gain"], p["change"]) in points else "no"] for p in sorted(naive, key=lambda p: p["gain"])],
    ) + "\n")
    table = []
    for row in rows:
        if row["label"] == "naive":
            continue
        saved, added = distances(points, (row["gain"], row["change"]))
        at_gain, at_change = change_at(points, row["gain"]), gain_at(points, row["change"])
        table.append([
            row["label"], f"{row['gain']:+.4f}", f"{row['change']:+.4f} ± {row['se']:.4f}",
            "—" if at_gain is None else f"{at_gain:+.4f}", "—" if saved is None else f"{saved:+.4f}",
            "—" if at_change is None else f"{at_change:+.4f}", "—" if added is None else f"{added:+.4f}",
            verdict(row, front, saved, added),
        ])
    print(format_table(["strategy", "mean gain", "general change ± s.e.", "naive's change at that gain",
                        "change saved", "naive's gain at that change", "gain added", "beats the frontier"], table))


if __name__ == "__main__":
    main()
