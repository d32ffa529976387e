"""Every default on the three sequences over seeds: docs/results/defaults.md's verdicts on the means, not one seed.

    .venv/bin/python benchmarks/defaults_table.py            # defaults.md's table
    .venv/bin/python benchmarks/defaults_table.py --short    # the README's compact form of it

Reads the committed points only (each page's table for seed 0, its points file for seeds 1, 2, ...: the same
points benchmarks/seeds_table.py tables), so it needs no run folder. Each default is taken at every seed it was
measured at on a sequence (three, or five for the rows run again on `jargon` and `legal`), with naive at the same
seeds:

- drop cut = 1 - (its mean general change) / (naive's mean general change), the share of naive's mean drop;
  its ± is the s.e. over seeds of the paired margin over half, c_s - n_s / 2 (c_s the default's change at seed s,
  n_s naive's), as a share of naive's mean drop: the noise that decides whether the cut is at least half;
- gain kept = its mean in-domain gain / naive's (the mean over the tasks on the bundled sequence), none on `legal`
  where naive's own gain is within noise;
- change saved at equal gain against each seed's own frontier (forgetless.frontier, as seeds_table.py), with the
  seeds where the default is above it, on the two sequences with a frontier (bundled, `jargon`).

The seeds' s.e. is the training seed's noise; the general suite is the same items at every seed, so the test
items' own noise (about 0.006-0.009 of one run's general change) is not in it.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

from forgetless.report import format_table
from forgetless.seeds import mean_se, seeds_above

sys.path.insert(0, str(Path(__file__).resolve().parent))
from seeds_table import DEFAULT_POINTS, Points, chosen, committed_points, over_seeds, seed0_points  # noqa: E402

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results"
SEQUENCES = {"bundled": "quality.md", "`legal`": "quality-legal.md", "`jargon`": "quality-jargon.md"}
WITHOUT_GAIN = {"`legal`"}  # naive's own held-out gain there is within noise: nothing to keep, no frontier
DEFAULTS = ["ewc", "layerwise", "l2sp", "wise", "replay", "fip", "fapm", "lwf", "ssr", "stm", "replay+wise"]
HALF = 0.5


def page_points(page: str, results: Path = RESULTS) -> Points:
    """Seed 0 from the page's table, seeds 1, 2, ... from its committed points file."""
    later, _ = committed_points(results / DEFAULT_POINTS[page])
    return {0: seed0_points(results / page), **later}


def cell(points: Points, label: str, with_gain: bool) -> dict | None:
    """One default on one sequence at every seed it has (None where it was not run), against naive there."""
    seeds = [s for s in sorted(points) if label in points[s] and "naive" in points[s]]
    if not seeds:
        return None
    rows = {row["label"]: row for row in over_seeds(chosen(points, seeds))}
    row, naive = rows[label], rows["naive"]
    naive_change = naive["change"][0]
    margins = [points[s][label][1] - HALF * points[s]["naive"][1] for s in seeds]
    margin_se = mean_se(margins)[1]
    return {
        "seeds": seeds,
        "cut": 1 - row["change"][0] / naive_change if naive_change < 0 else None,
        "cut_se": margin_se / -naive_change if naive_change < 0 and margin_se is not None else None,
        "kept": row["gain"][0] / naive["gain"][0] if with_gain and naive["gain"][0] > 0 else None,
        "saved": row["saved"],
    }


def all_points(results: Path = RESULTS) -> dict[str, Points]:
    """Each sequence's points at every seed, by the sequence's name."""
    return {name: page_points(page, results) for name, page in SEQUENCES.items()}


def table(pages: dict[str, Points]) -> tuple[dict[str, dict[str, dict | None]], dict[str, dict[tuple, tuple]]]:
    """Each default's cell on each sequence, and naive's mean change over each set of seeds a cell used."""
    cells = {label: {name: cell(points, label, name not in WITHOUT_GAIN) for name, points in pages.items()}
             for label in DEFAULTS}
    naive = {name: {} for name in SEQUENCES}
    for label_cells in cells.values():
        for name, found in label_cells.items():
            if found is not None:
                seeds = tuple(found["seeds"])
                naive[name][seeds] = mean_se([pages[name][s]["naive"][1] for s in seeds])
    return cells, naive


def _seeds(seeds: list[int] | tuple[int, ...]) -> str:
    return f"{len(seeds)} seeds" if list(seeds) == list(range(len(seeds))) else "seeds " + " ".join(map(str, seeds))


def cut_text(found: dict | None, with_seeds: bool = True) -> str:
    if found is None:
        return "not run"
    if found["cut"] is None:
        return "no drop to cut"
    noise = "" if found["cut_se"] is None else f" ± {100 * found['cut_se']:.0f}"
    kept = "" if found["kept"] is None else f" ({100 * found['kept']:.0f} %)"
    return f"{100 * found['cut']:.0f} %{noise}{kept}" + (f", {_seeds(found['seeds'])}" if with_seeds else "")


def saved_text(found: dict | None) -> str:
    if found is None or found["saved"] is None:
        return "—"
    defined = [v for v in found["saved"] if v is not None]
    mean, se = mean_se(defined) if defined else (None, None)
    shown = "beyond the range" if mean is None else f"{mean:+.4f}" + ("" if se is None else f" ± {se:.4f}")
    return f"{shown} ({seeds_above(found['saved'])} of {len(found['saved'])} above)"


def cut_verdict(cells: dict[str, dict | None]) -> str:
    """At least half of naive's mean drop cut on every sequence's means; a cut within its s.e. of half is named."""
    missing = [name for name, found in cells.items() if found is None or found["cut"] is None]
    if missing:
        return "not on every sequence"
    short = [name for name, found in cells.items() if found["cut"] < HALF]
    close = [name for name, found in cells.items()
             if found["cut_se"] is not None and abs(found["cut"] - HALF) < found["cut_se"]]
    verdict = "**yes**" if not short else f"no ({', '.join(short)})"
    return verdict + (f"; within one s.e. of half on {', '.join(close)}" if close else "")


def frontier_verdict(cells: dict[str, dict | None]) -> str:
    """Above naive's frontier at every seed of every sequence that has one, below at every seed, or mixed."""
    saved = [found["saved"] for found in cells.values() if found is not None and found["saved"] is not None]
    if not saved:
        return "—"
    above = sum(seeds_above(values) for values in saved)
    total = sum(len(values) for values in saved)
    if above == total:
        return f"**above at all {total}**"
    return f"below at all {total}" if above == 0 else f"above at {above} of {total}"


HEADERS = ["default", *(f"{name}: drop cut ± s.e. (gain kept)" for name in SEQUENCES),
           "cut >= 50 % on every sequence's means?", "bundled: change saved at equal gain",
           "`jargon`: change saved at equal gain", "above naive's frontier at (seeds of both)"]


def _shown_label(label: str) -> str:
    """A points label as the docs write it: the stack as its config spelling."""
    return "`[replay, wise]`" if label == "replay+wise" else f"`{label}`"


def markdown(cells: dict[str, dict[str, dict | None]]) -> str:
    body = []
    for label, found in cells.items():
        body.append([_shown_label(label), *(cut_text(found[s]) for s in SEQUENCES), cut_verdict(found),
                     saved_text(found["bundled"]), saved_text(found["`jargon`"]), frontier_verdict(found)])
    return format_table(HEADERS, body)


def short_markdown(cells: dict[str, dict[str, dict | None]]) -> str:
    """The README's form: the cuts and both verdicts, each sequence's seeds said once in its header where every
    default has the same (in each cell otherwise)."""
    counts = {name: {tuple(found[name]["seeds"]) for found in cells.values() if found[name] is not None}
              for name in SEQUENCES}
    same = {name: len(seeds) == 1 for name, seeds in counts.items()}
    headers = ["default", *(f"{name} ({_seeds(next(iter(counts[name])))})" if same[name] else name for name in SEQUENCES),
               "cut >= 50 % everywhere?", "above naive's frontier at"]
    body = []
    for label, found in cells.items():
        body.append([_shown_label(label), *(cut_text(found[s], with_seeds=not same[s]) for s in SEQUENCES),
                     cut_verdict(found), frontier_verdict(found)])
    return format_table(headers, body)


def naive_lines(naive: dict[str, dict[tuple, tuple]]) -> str:
    parts = []
    for name, by_seeds in naive.items():
        shown = ", ".join(f"{mean:+.4f} ± {se:.4f} ({_seeds(seeds)})" for seeds, (mean, se) in sorted(by_seeds.items()))
        parts.append(f"{name} {shown}")
    return "Naive's mean general change at lr 5e-4: " + "; ".join(parts) + "."


def main() -> None:
    pages = all_points()
    cells, naive = table(pages)
    if "--short" in sys.argv[1:]:
        print(short_markdown(cells))
        return
    print(markdown(cells))
    print()
    print(naive_lines(naive))
    spreads = {name: statistics.stdev(points[s]["naive"][1] for s in points) for name, points in pages.items()}
    print("Naive's seed s.d. of its general change: " + "; ".join(f"{n} {v:.4f}" for n, v in spreads.items()) + ".")


if __name__ == "__main__":
    main()
