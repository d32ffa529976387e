"""A comparison over several training seeds: `forgetless compare CONFIG ... --seeds 0 1 2 --out DIR`.

The training seed moves naive's general change by more than one run's test-set s.e.: on `support` at lr 2e-4 for
30 steps, -0.0361, -0.0149 and -0.0058 at seeds 0, 1 and 2 (s.d. 0.016 against an s.e. of about 0.006;
docs/results/budget.md). So a distance from naive's frontier measured at one seed, even with its bootstrap over
the evaluation items, says nothing about the seed. Each seed runs as a comparison of its own (DIR/seed-K). The
seed draws a task's held-out split only for a `file` task without `heldout_file`; where it draws none (built-in
tasks, given held-out files) every seed scores the same items from the same start, so a seed folder reuses an
earlier seed's "before" evaluation (its before.json) instead of repeating it. DIR/seeds.md (and .json) summarises
every row present at all seeds:

- in-domain gain and general change: mean ± s.e. over seeds (the seeds' s.d. / sqrt(n)): the training seed's
  noise. The general suite is the same items at every seed, as is a held-out split the seed does not draw, so the
  test items' own noise (one run's paired s.e., in each seed's compare.md) is not in it; where the seed draws the
  split, the gain's s.e. holds that split's noise too;
- over two or more tasks, the mean in-domain gain at the end and the lowest general change at a task's end
  (compare's columns), the same way, and the change saved at equal gain at the end against each seed's own
  frontier at the end (where every seed's naive rows have their gain at the end);
- each distance from naive's frontier, each seed's row against that seed's own frontier: mean ± s.e. over seeds
  and at how many seeds the row is above it (a positive distance, or beyond the frontier's range on the good side);
- the distances of the row's seed-averaged point from the frontier of the seed-averaged naive points.

DIR/seeds.png draws the rows' means with their spread over seeds, each seed's point, and that averaged frontier.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from .compare import before_key, compare, same_before_key
from .comparison_rows import ComparisonRow, against_frontier, fill_task_end_changes, naive_frontier
from .comparison_table import trade_off_frame
from .config import RunConfig, parse_config
from .environment import environment_note
from .errors import ForgetlessError
from .fileio import atomic_write_bytes, atomic_write_json, atomic_write_text, check_output_path
from .frontier import distances, naive_front

KINDS = ("change saved at equal gain", "gain added at equal change")
_PREFIX = "seed-"


def seed_folder(out: Path, seed: int) -> Path:
    return out / f"{_PREFIX}{seed}"


def with_seed(config: RunConfig, seed: int) -> RunConfig:
    data = config.model_dump()
    return parse_config({**data, "train": {**data["train"], "seed": seed}}, f"--seeds {seed}")


def mean_se(values: list[float]) -> tuple[float, float | None]:
    """The mean and its s.e. over seeds (None from one seed)."""
    spread = statistics.stdev(values) / len(values) ** 0.5 if len(values) > 1 else None
    return statistics.fmean(values), spread


def seeds_above(values: list[float | None]) -> int:
    """The seeds where a run is above naive's frontier: a positive distance, or none (beyond the frontier's range on
    the good side: more gain, or a higher general score, than any naive run)."""
    return sum(1 for v in values if v is None or v > 0)


def across_seeds(values: list[float | None]) -> str:
    """One distance over seeds: mean ± s.e. of the defined values, and at how many seeds the run is above.

    None is a distance beyond the frontier's range on the good side (more gain, or a higher general score, than
    any naive run): it counts as above and is left out of the mean.
    """
    defined = [v for v in values if v is not None]
    above = seeds_above(values)
    if len(defined) < 2:
        shown = f"{defined[0]:+.4f}, " if defined else ""
        return f"{shown}{len(defined)} defined of {len(values)} seeds: no s.e.; above in {above} of {len(values)}"
    mean, spread = mean_se(defined)
    note = "" if len(defined) == len(values) else f" ({len(values) - len(defined)} seeds beyond the range)"
    return f"{mean:+.4f} ± {spread:.4f}{note}; above in {above} of {len(values)}"


def shown(value: float | None) -> str:
    """A distance, or where it is undefined (beyond the frontier's range)."""
    return "beyond the range" if value is None else f"{value:+.4f}"


def averaged_frontier(naive: dict[str, list[tuple[float, float]]]) -> list[tuple[float, float]]:
    """The frontier of each naive setting's (gain, change) averaged over seeds, with the untrained model (0, 0).

    `naive`: each setting's points, one per seed; every setting must be at every seed, or the average is biased.
    """
    points = [(statistics.fmean(g for g, _ in found), statistics.fmean(c for _, c in found)) for found in naive.values()]
    return naive_front(points)


def summarise(tables: dict[int, list[ComparisonRow]]) -> dict[str, Any]:
    """Every row present (with a general change) at all seeds, over the seeds; each seed's rows as compare wrote them."""
    if not tables:
        raise ForgetlessError("no seed's comparison to summarise (no seed-<seed>/compare.json)")
    seeds = sorted(tables)
    by_seed = {seed: {r.strategy: r for r in tables[seed] if r.general_delta_abs is not None} for seed in seeds}
    everywhere = [label for label in by_seed[seeds[0]] if all(label in by_seed[s] for s in seeds)]
    left_out = sorted({r.strategy for rows in tables.values() for r in rows} - set(everywhere))
    points = {label: [(by_seed[s][label].mean_gain, by_seed[s][label].general_delta_abs) for s in seeds] for label in everywhere}
    naive = {label: found for label, found in points.items() if by_seed[seeds[0]][label].is_naive}
    front = averaged_frontier(naive) if naive else []
    fronts_at_end = all(naive_frontier(tables[s], at_end=True) for s in seeds)
    rows = []
    for label in everywhere:
        runs = [by_seed[s][label] for s in seeds]
        gain, gain_se = mean_se([g for g, _ in points[label]])
        change, change_se = mean_se([c for _, c in points[label]])
        row = {"strategy": label, "naive": runs[0].is_naive, "gain": gain, "gain_se": gain_se, "change": change,
               "change_se": change_se, "per_seed": points[label]}
        lowest = [r.lowest_task_end_change() for r in runs]
        if len(runs[0].in_domain_gain) > 1 and None not in lowest:  # one task: its end is the general change
            row["task_end"] = mean_se([change for _, change, _ in lowest])
            row["task_end_per_seed"] = [task for task, _, _ in lowest]
        at_end = [r.in_domain_gain_at_end for r in runs]
        if len(runs[0].in_domain_gain) > 1 and None not in at_end:
            row["gain_at_end"] = mean_se(at_end)
        if front and not runs[0].is_naive:
            row["saved_per_seed"] = [r.change_saved_vs_frontier for r in runs]
            row["added_per_seed"] = [r.gain_added_vs_frontier for r in runs]
            row["averaged"] = distances(front, (gain, change))
            if fronts_at_end and None not in at_end:
                row["saved_at_end_per_seed"] = [r.change_saved_vs_frontier_at_end for r in runs]
        rows.append(row)
    # Seeds are often run days apart (a table grown seed by seed): a change of versions between them is named.
    environments = {f"{label} at seed {s}": by_seed[s][label].environment for s in seeds for label in everywhere}
    return {"seeds": seeds, "rows": rows, "averaged_frontier": front, "left_out": left_out,
            "environment_note": environment_note(environments)}


def markdown(summary: dict[str, Any]) -> str:
    from .report import format_table

    def signed(value: float, se: float | None) -> str:
        return f"{value:+.4f}" + ("" if se is None else f" ± {se:.4f}")

    task_ends = any("task_end" in row for row in summary["rows"])
    ends_gain = any("gain_at_end" in row for row in summary["rows"])
    ends_saved = any("saved_at_end_per_seed" in row for row in summary["rows"])

    def task_end(row: dict[str, Any]) -> list[str]:
        if not task_ends:
            return []
        if "task_end" not in row:
            return ["—"]
        return [f"{signed(*row['task_end'])} (after {', '.join(row['task_end_per_seed'])})"]

    body = [[row["strategy"], signed(row["gain"], row["gain_se"]),
             *([signed(*row["gain_at_end"]) if "gain_at_end" in row else "—"] if ends_gain else []),
             signed(row["change"], row["change_se"]), *task_end(row),
             *([across_seeds(row["saved_per_seed"]), across_seeds(row["added_per_seed"]),
                f"{shown(row['averaged'][0])}, {shown(row['averaged'][1])}"] if "averaged" in row else ["—"] * 3),
             *([across_seeds(row["saved_at_end_per_seed"]) if "saved_at_end_per_seed" in row else "—"] if ends_saved else []),
             "; ".join(f"{g:+.4f}, {c:+.4f}" for g, c in row["per_seed"])]
            for row in summary["rows"]]
    headers = ["strategy", "gain ± s.e.", *(["gain at the end ± s.e."] if ends_gain else []), "general change ± s.e.",
               *(["lowest general change at a task end ± s.e. (after which task, per seed)"] if task_ends else []),
               f"{KINDS[0]} (own seed's frontier)",
               f"{KINDS[1]} (own seed's frontier)", "both against the averaged frontier",
               *([f"{KINDS[0]} at the end (own seed's frontier)"] if ends_saved else []), "per seed: gain, change"]
    seeds = ", ".join(map(str, summary["seeds"]))
    lines = [f"# Comparison over seeds {seeds}", "",
             f"One comparison per seed in {_PREFIX}<seed>/. ± is the s.e. over seeds (their s.d. / sqrt(n)): the "
             "training seed's noise. The general suite is the same items at every seed, as is a task's held-out split "
             "unless the seed draws it (a `file` task without `heldout_file`), so the test items' own noise is not in "
             "it: each seed's compare.md has one run's paired s.e. over them. "
             "Distances from naive's frontier are explained in forgetless.frontier (positive beats what naive reaches "
             "by training less); \"above\" counts the seeds where a row beats its own seed's frontier.", "",
             format_table(headers, body), ""]
    if summary["averaged_frontier"]:
        lines += ["Frontier of the seed-averaged naive points (gain, change): "
                  + ", ".join(f"({g:+.4f}, {c:+.4f})" for g, c in summary["averaged_frontier"]), ""]
    if summary["rows"]:
        lines += ["![Gain against general change over seeds](seeds.png)", ""]
    if summary["left_out"]:
        lines += [f"Left out (not at every seed, or without a general change): {', '.join(summary['left_out'])}", ""]
    if summary.get("environment_note"):
        lines += [summary["environment_note"], ""]
    return "\n".join(lines)


def seeds_figure(summary: dict[str, Any]):
    """Gain against general change: each row's mean over seeds (bars 1 s.e. over seeds), its per-seed points
    faint beside it, and the frontier of the seed-averaged naive points; None when no row has both."""
    from matplotlib.figure import Figure

    if not summary["rows"]:
        return None
    figure = Figure(figsize=(8, 5.5), layout="constrained")
    axes = figure.subplots()
    for row in summary["rows"]:
        # One s.e., not 1.96: with a handful of seeds a 95 % band would need Student's t (4.3 at 3 seeds).
        bars = axes.errorbar(row["change"], row["gain"], xerr=row["change_se"] or 0.0, yerr=row["gain_se"] or 0.0,
                             fmt="s" if row["naive"] else "o", capsize=3, color="grey" if row["naive"] else None)
        colour = bars.lines[0].get_color()
        axes.scatter([c for _, c in row["per_seed"]], [g for g, _ in row["per_seed"]], s=12, alpha=0.35, color=colour)
        axes.annotate(row["strategy"], (row["change"], row["gain"]), xytext=(4, 4), textcoords="offset points",
                      fontsize="small")
    seeds = ", ".join(map(str, summary["seeds"]))
    trade_off_frame(axes, summary["averaged_frontier"], "naive's frontier (seed-averaged points)",
                    "general change (after - before)", f"Seeds {seeds}: mean, bars 1 s.e. over seeds, faint: each seed")
    return figure


def seed_folders(out: Path) -> dict[int, Path]:
    """Each seed's comparison folder in `out` (seed-<seed>/ holding a compare.json), by seed."""
    return {int(folder.name[len(_PREFIX):]): folder for folder in sorted(out.glob(f"{_PREFIX}*"))
            if folder.name[len(_PREFIX):].lstrip("-").isdigit() and (folder / "compare.json").exists()}


def read_tables(out: Path) -> dict[int, list[ComparisonRow]]:
    """Each seed folder's rows, as compare wrote them (older rows given their changes at each task's end)."""
    tables = {}
    for seed, folder in seed_folders(out).items():
        tables[seed] = [ComparisonRow(**row) for row in json.loads((folder / "compare.json").read_text(encoding="utf-8"))["rows"]]
        fill_task_end_changes(tables[seed], folder)
        # Rows written before the distances at the end existed get them (the others get the same values again);
        # the distances right after each task and every s.e. stay as compare wrote them.
        against_frontier(tables[seed], readings=(True,))
    return tables


def write_summary(out: Path) -> dict[str, Any]:
    summary = summarise(read_tables(out))
    atomic_write_json(out / "seeds.json", summary)
    figure = seeds_figure(summary)
    if figure is not None:
        from .report import _png

        atomic_write_bytes(out / "seeds.png", _png(figure))
    atomic_write_text(out / "seeds.md", markdown(summary))
    return summary


def reuse_before(out: Path, config: RunConfig, folder: Path) -> Path | None:
    """Copy another seed folder's "before" evaluation into `folder` where its key matches `config`'s: the seed
    draws no held-out split here (forgetless.compare.split_depends_on_seed), so it would score the same items from
    the same start again. Returns the folder copied from, or None (a folder with its own before.json keeps it)."""
    if (folder / "before.json").exists():
        return None
    key = before_key(config)
    for other in sorted(out.glob(f"{_PREFIX}*/before.json")):
        text = other.read_text(encoding="utf-8")
        try:
            found = json.loads(text).get("key")
        except (json.JSONDecodeError, AttributeError):  # not a before.json compare wrote: that folder re-evaluates
            continue
        if same_before_key(found, key):
            folder.mkdir(parents=True, exist_ok=True)
            atomic_write_text(folder / "before.json", text)
            return other.parent
    return None


def compare_over_seeds(config: RunConfig, specs: list, out_dir: str | Path, seeds: list[int], *,
                       progress: bool = True, **options) -> dict[str, Any]:
    """`compare` once per seed (train.seed), each into its own folder, then the summary over every seed folder
    in `out_dir` (written after each seed, so a crash keeps the seeds already done; a later call can add seeds)."""
    out = Path(out_dir)
    check_output_path(out, "--out", folder=True)
    if len(set(seeds)) != len(seeds):
        raise ForgetlessError(f"--seeds {' '.join(map(str, seeds))}: a seed appears twice")
    if (out / "compare.json").exists():
        raise ForgetlessError(f"{out} holds a one-seed comparison (compare.json): choose another --out for --seeds")
    for seed in seeds:
        if progress:
            print(f"\n##### seed {seed} #####", flush=True)
        seeded = with_seed(config, seed)
        source = reuse_before(out, seeded, seed_folder(out, seed))
        if source is not None and progress:
            print(f"the seed draws no held-out split here: {source.name}'s \"before\" evaluation is reused", flush=True)
        compare(seeded, specs, seed_folder(out, seed), progress=progress, **options)
        summary = write_summary(out)
    return summary
