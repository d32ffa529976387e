"""The forgetting budget on the bundled set-up: stop, rollback and strengthen against fixed settings.

    .venv/bin/python benchmarks/budget_table.py --out bench-out/budget --fixed bench-out/frontier bench-out/tune

Runs `--tasks` (default: the first task of the bundled benchmark, `support`; the set-up of benchmarks/quality.py)
once per budget entry, with the general suite every `--every` steps and `budget: {max_general_drop: 0.01, on_exceed: ...}`;
the entries share one "before" evaluation (DIR/before.json). Then it reads fixed settings from `--fixed`
compare folders (naive at other learning rates and step counts from `quality.py --frontier-...`, a strategy's
knob from `forgetless tune`), each read over the same tasks (a run of more tasks after the last of them), and
prints one table: in-domain gain (the mean over the tasks, each right after its training, as naive's frontier
reads it), in-domain gain at the end (the same tasks scored after the last of them, so an earlier task's score
lost while a later one trains counts), general change ± s.e. after the last task and, over two or more tasks, the
lowest at any of their ends and whether every end was within budget by the rule (a user may ship the model
between tasks), whether each run ends within
budget by the run's own rule (change + 1.96 s.e. >= -limit) and by the point estimate (change >= -limit), and the
decisions the budget took. Each budget run is set against the strongest fixed setting (largest gain within budget)
of its own strategy, by each of the two gains, and the strongest of all is named; where
both runs kept their per-item scores (evaluations.json), the gain difference has a paired bootstrap s.e. over the
held-out items (the noise of the test set, not of the training seed). Each budget run's distance from naive's
frontier (the fixed naive settings and the untrained model, forgetless.frontier) follows, with the spread of a
paired bootstrap that rescores every run on the same resampled items (forgetless.frontier_noise); over two or more
tasks again by the gain at the end, against naive's frontier traced from naive's own gains at the end.
`--lr`, `--every` and `--seed` set every budget run's learning rate, checks and seed (use a folder of its own: a
finished entry run with another config is refused, not reused).
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np
from quality import base_config  # benchmarks/, beside this script

from forgetless.compare import before_key, load_before
from forgetless.config import parse_config
from forgetless.evaluation.evaluator import EvaluationLog
from forgetless.fileio import atomic_write_json, atomic_write_text
from forgetless.frontier import distances, naive_front
from forgetless.frontier_noise import RunItems, frontier_distance_replicates
from forgetless.metrics import general_change
from forgetless.report import format_table
from forgetless.resume import config_differences
from forgetless.training import ContinualRun

# (label, strategies, on_exceed). ewc starts 16 times weaker than its lam 100 (the default until 2026-12-02) or
# than its default cap (target 0.004) so that strengthen has room to act. Lowering a cap pulls the weights back
# at the next step; raising a price only slows them down from where they are.
ENTRIES = (
    ("naive+stop", ["naive"], "stop"),
    ("naive+rollback", ["naive"], "rollback"),
    ("naive+backoff", ["naive"], "backoff"),
    ("ewc(lam=6.25)+strengthen", [{"name": "ewc", "lam": 6.25}], "strengthen"),
    ("ewc(lam=6.25)+strengthen+restore", [{"name": "ewc", "lam": 6.25}], {"on_exceed": "strengthen", "restore": True}),
    ("ewc(target=0.064)+strengthen", [{"name": "ewc", "target": 0.064}], "strengthen"),
)
_Z = 1.96


def budget_config(tasks: list[str], every: int, strategies: list, on_exceed: str | dict, limit: float,
                  lr: float | None = None, seed: int = 0):
    """`on_exceed`: the mode's name, or the budget's fields beside its limit."""
    data = base_config("full", False, tasks, lr).model_dump()
    data["eval"]["every_steps"] = every
    data["train"]["seed"] = seed  # and the held-out split of a `file` task without heldout_file (not a built-in's)
    fields = on_exceed if isinstance(on_exceed, dict) else {"on_exceed": on_exceed}
    return parse_config({**data, "strategies": strategies, "budget": {"max_general_drop": limit, **fields}}, "budget_table")


def over_tasks(results: dict, tasks: list[str], where: Path) -> dict:
    """In-domain gain (mean over `tasks`, each right after its training), the same at the end (each scored after the
    last of them) and the general change ± s.e. then, before any later task of the run moves it: a run's first task
    alone, or its whole sequence."""
    if results["tasks"][: len(tasks)] != tasks:
        raise SystemExit(f"{where}: a run over {results['tasks']} cannot be read over {tasks}: its tasks must begin with those")
    matrix = results["matrix"]
    gains = [matrix[i + 1][i] - matrix[0][i] for i in range(len(tasks))]
    at_end = [matrix[len(tasks)][i] - matrix[0][i] for i in range(len(tasks))]
    after = next((p for p in results["general_curve"] if p["stage"] == "after_task" and p["task"] == tasks[-1]), None)
    if after is None:
        raise SystemExit(f"{where}: no general change after {tasks[-1]!r} (a run without a general suite, or unfinished)")
    evaluations = where / "evaluations.json"  # runs before 2026-12-02 did not keep their per-item scores
    log = EvaluationLog.read(evaluations) if evaluations.exists() else None
    ends = [p for p in results["general_curve"] if p["stage"] == "after_task" and p["task"] in tasks]
    lowest = min(ends, key=lambda p: p["delta"])
    return {"gain": sum(gains) / len(gains), "end_gain": sum(at_end) / len(at_end), "change": after["delta"],
            "se": after["se"], "lowest_end": (lowest["task"], lowest["delta"], lowest["se"]),
            "ends": [(p["delta"], p["se"]) for p in ends],
            "items": None if log is None else RunItems.from_log(log, tasks),
            "end_items": None if log is None else RunItems.from_log(log, tasks, at_end=True)}


# Where a row keeps the per-item scores behind each gain: right after each task, and at the end.
ITEMS = {"gain": "items", "end_gain": "end_items"}


def gain_difference(run: dict, fixed: dict, gain: str = "gain") -> str:
    """run's mean in-domain gain (`gain`, or `end_gain`) minus fixed's, with the paired s.e. over held-out items
    where both kept them."""
    if run["items"] is None or fixed["items"] is None:
        return f"{run[gain] - fixed[gain]:+.4f} (no s.e.: a run without evaluations.json)"
    # Both start from the same "before" scores, so the gain difference is the difference of the after-scores.
    change = general_change(fixed[ITEMS[gain]].held_out_after, run[ITEMS[gain]].held_out_after)
    if abs(change["delta_abs"] - (run[gain] - fixed[gain])) > 1e-9:
        raise SystemExit(f"{run['label']} and {fixed['label']} did not start from the same scores: their gains cannot be paired")
    return f"{change['delta_abs']:+.4f} ± {change['delta_se']:.4f}"


def distance(value: float | None, replicates) -> str:
    """One distance from naive's frontier with its paired bootstrap spread (forgetless.frontier_noise)."""
    if value is None:
        return "none (beyond the frontier's range)"
    if replicates is None:
        return f"{value:+.4f} (no s.e.: a run without evaluations.json)"
    # Undefined in a resample means beyond the frontier's range on the good side: more gain than any naive run
    # (change at equal gain) or a higher general score than any (gain at equal change).
    defined = replicates[~np.isnan(replicates)]
    above = (np.isnan(replicates) | (replicates > 0)).mean()
    low, high = np.percentile(defined, [2.5, 97.5])
    spread = (f"± {np.std(defined, ddof=1):.4f}" if len(defined) == len(replicates)
              else f"(s.e. undefined: beyond the frontier's range in {len(replicates) - len(defined)} resamples)")
    return f"{value:+.4f} {spread}, 95 % of resamples in [{low:+.4f}, {high:+.4f}], above the frontier in {above:.0%}"


def frontier_lines(runs: list[dict], fixed: list[dict], gain: str = "gain") -> list[str]:
    """Each budget run's distance from naive's frontier (its fixed settings and the untrained model), by the gain
    right after each task (`gain`) or at the end (`end_gain`: every point, naive's too, read after the last task)."""
    naive = [r for r in fixed if family(r["label"]) == "naive"]
    if not naive or not runs:
        return []
    items = ITEMS[gain]
    front = naive_front([(r[gain], r["change"]) for r in naive])
    paired = all(r[items] is not None for r in naive + runs)
    found = frontier_distance_replicates([r[items] for r in naive], [r[items] for r in runs]) if paired else None
    text = ["", ("Naive's frontier" if gain == "gain" else "Naive's frontier by the gain at the end")
            + " (gain, change): " + ", ".join(f"({g:+.4f}, {c:+.4f})" for g, c in front)
            + "; distances with their paired bootstrap over the evaluation items (1000 resamples):"]
    for i, run in enumerate(runs):
        saved, added = distances(front, (run[gain], run["change"]))
        text.append(f"- {run['label']}: change saved at equal gain {distance(saved, None if found is None else found[i, :, 0])}; "
                    f"gain added at equal change {distance(added, None if found is None else found[i, :, 1])}")
    return text


def finished(folder: Path) -> bool:
    """A run folder whose results are complete (a run in progress writes results.json with complete: false)."""
    path = folder / "results.json"
    return path.exists() and json.loads(path.read_text(encoding="utf-8")).get("complete", False)


def decisions(results: dict) -> str:
    acted = [c for c in results.get("budget", []) if c["action"] != "within"]
    return "; ".join(f"step {c['step']}: {c['action']}" + (f" ({c['detail']})" if c.get("detail") else "")
                     + f" at {c['general_change']:+.4f} ± {c['se']:.4f}" for c in acted) or "none"


def fixed_rows(folders: list[Path], tasks: list[str]) -> list[dict]:
    rows = []
    for folder in folders:
        for row in json.loads((folder / "compare.json").read_text(encoding="utf-8"))["rows"]:
            run = folder / row["strategy"].replace("/", "_")
            results = json.loads((run / "results.json").read_text(encoding="utf-8"))
            rows.append({"label": row["strategy"], "source": str(folder), **over_tasks(results, tasks, run)})
    return rows


def family(label: str) -> str:
    """The strategy a row runs: "naive" for "naive+backoff" and "naive(lr=0.0002,steps=15)", "ewc" for "ewc(lam=100.0)"."""
    return label.split("(")[0].split("+")[0]


def strongest(rows: list[dict], gain: str = "gain") -> dict | None:
    """The row with the largest in-domain gain (`gain`, or `end_gain`), or None."""
    return max(rows, key=lambda r: r[gain]) if rows else None


def describe(row: dict | None, gain: str = "gain") -> str:
    if row is None:
        return "none"
    name = "gain" if gain == "gain" else "gain at the end"
    # Within at the end only: a run that stopped (or shipped) after an earlier task would have been beyond.
    note = "" if row.get("every_end", True) else "; beyond budget at an earlier task's end"
    return f"{row['label']} ({name} {row[gain]:+.4f}, change {row['change']:+.4f} ± {row['se']:.4f}{note})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--fixed", type=Path, nargs="*", default=[], help="compare folders holding fixed settings")
    parser.add_argument("--tasks", nargs="+", default=["support"])
    parser.add_argument("--every", type=int, default=5, help="full evaluation (and budget check) every N steps")
    parser.add_argument("--lr", type=float, help="learning rate of every budget run (default: quality.py's)")
    parser.add_argument("--seed", type=int, default=0, help="train.seed of every budget run "
                        "(and the held-out split of a file task without heldout_file)")
    parser.add_argument("--limit", type=float, default=0.01, help="max_general_drop")
    parser.add_argument("--only", nargs="+", choices=[label for label, _, _ in ENTRIES], help="run only these entries")
    parser.add_argument("--table-only", action="store_true", help="run nothing: the table of the entries already finished")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    runs = []
    for label, strategies, on_exceed in ENTRIES:
        if args.only and label not in args.only:
            continue
        config = budget_config(args.tasks, args.every, strategies, on_exceed, args.limit, args.lr, args.seed)
        folder = args.out / label
        if args.table_only and not finished(folder):
            continue
        if not finished(folder):  # a finished entry is not run again, but only read at the settings asked for
            before = load_before(args.out, config)
            run = ContinualRun(config, folder, before=before)
            run.execute()
            if before is None:
                atomic_write_json(args.out / "before.json",
                                  {"key": before_key(config), "log": run.evaluator.log.first().to_json()})
        results = json.loads((folder / "results.json").read_text(encoding="utf-8"))
        differs = config_differences(results["config"], config.model_dump(mode="json"))
        if differs:
            raise SystemExit(f"{folder} ran with another config (differs in {differs}): give another --out")
        runs.append({"label": label, "decisions": decisions(results), **over_tasks(results, args.tasks, folder)})
    fixed = fixed_rows(args.fixed, args.tasks)
    several = len(args.tasks) > 1  # one task: its end is the end, and the gain at the end is the gain
    for row in runs + fixed:
        row["every_end"] = all(change + _Z * se >= -args.limit for change, se in row["ends"])

    def within(row: dict) -> tuple[bool, bool]:
        return row["change"] + _Z * row["se"] >= -args.limit, row["change"] >= -args.limit

    def line(row: dict, kind: str) -> list[str]:
        rule, point = within(row)
        task, change, se = row["lowest_end"]
        return [row["label"], kind, f"{row['gain']:+.4f}", *([f"{row['end_gain']:+.4f}"] if several else []),
                f"{row['change']:+.4f} ± {row['se']:.4f}",
                *([f"{change:+.4f} ± {se:.4f} (after {task})", "yes" if row["every_end"] else "no"] if several else []),
                "yes" if rule else "no", "yes" if point else "no", row.get("decisions", "")]

    text = [format_table(
        ["setting", "kind", "in-domain gain", *(["in-domain gain at the end"] if several else []), "general change ± s.e.",
         *(["lowest general change at a task end ± s.e.", "within (rule) at every task end"] if several else []),
         "within (rule)",
         "within (point)", "decisions"],
        [line(r, "budget") for r in runs] + [line(r, f"fixed ({r['source']})") for r in sorted(fixed, key=lambda r: r["gain"])],
    ), ""]
    gains = ("gain", "end_gain") if several else ("gain",)
    for (index, name), gain in itertools.product(((0, "the run's rule"), (1, "the point estimate")), gains):
        inside = [r for r in fixed if within(r)[index]]
        measure = "" if gain == "gain" else " at the end"
        text.append(f"By {name}, strongest fixed setting within budget by in-domain gain{measure}: "
                    f"{describe(strongest(inside, gain), gain)}")
        for run in runs:
            best = strongest([r for r in inside if family(r["label"]) == family(run["label"])], gain)
            if not within(run)[index]:
                text.append(f"- {run['label']}: ends beyond budget")
            elif best is None:
                text.append(f"- {run['label']}: no fixed {family(run['label'])} setting within budget to compare")
            else:
                text.append(f"- {run['label']}: gain{measure} {gain_difference(run, best, gain)} against the strongest "
                            f"fixed {family(run['label'])} setting within budget, {describe(best, gain)}")
    for gain in gains:
        text += frontier_lines(runs, fixed, gain)
    atomic_write_text(args.out / "budget.md", "\n".join(text) + "\n")
    print("\n".join(text))


if __name__ == "__main__":
    main()
