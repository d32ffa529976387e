"""Each row of a comparison against naive's frontier, with where its paired bootstrap resamples fall.

    .venv/bin/python benchmarks/frontier_resamples.py /tmp/seed6-end

compare's table gives a distance's s.e. only where the distance is defined in every resample of the evaluation
items (forgetless.frontier_noise); a row near the end of naive's frontier (more gain, or a higher general score,
than naive's best in some resamples) gets none, though that is where a verdict is most wanted. This prints, for
each row that is not naive, its change saved at equal gain and gain added at equal change (right after each task
and, over two or more tasks, at the end), each with the middle 95 % of its resamples and the share of resamples
in which the row is above the frontier (a positive distance, or beyond the frontier's range on the good side):
the same reading as benchmarks/budget_table.py's. It needs every row's evaluations.json (runs since 2026-12-03).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from forgetless.comparison_rows import ComparisonRow, against_frontier, fill_task_end_changes, run_folder
from forgetless.evaluation.evaluator import EvaluationLog
from forgetless.frontier_noise import RunItems, frontier_distance_replicates

sys.path.insert(0, str(Path(__file__).resolve().parent))
from budget_table import distance  # noqa: E402


def resample_lines(folder: Path) -> list[str]:
    rows = [ComparisonRow(**row) for row in json.loads((folder / "compare.json").read_text(encoding="utf-8"))["rows"]]
    rows = [row for row in rows if row.general_delta_abs is not None]
    # A table written before the gain at the end (or the distances by it) was kept: both measured again.
    fill_task_end_changes(rows, folder)
    against_frontier(rows)
    naive, others = [r for r in rows if r.is_naive], [r for r in rows if not r.is_naive]
    if not naive or not others:
        raise SystemExit(f"{folder}: needs naive rows (the frontier) and at least one other row")
    tasks = list(rows[0].in_domain_gain)
    logs = {}
    for row in rows:
        path = folder / run_folder(row.strategy) / "evaluations.json"
        if not path.exists():
            raise SystemExit(f"{path}: missing (a run from before 2026-12-03 kept no per-item scores)")
        logs[row.strategy] = EvaluationLog.read(path)
    lines = []
    for at_end in (False, True) if len(tasks) > 1 else (False,):
        items = [RunItems.from_log(logs[r.strategy], tasks, at_end=at_end) for r in naive + others]
        found = frontier_distance_replicates(items[: len(naive)], items[len(naive):])
        lines += ["", "At the end (every task scored after the last):" if at_end else "Right after each task:"]
        for i, row in enumerate(others):
            saved = row.change_saved_vs_frontier_at_end if at_end else row.change_saved_vs_frontier
            added = row.gain_added_vs_frontier_at_end if at_end else row.gain_added_vs_frontier
            lines.append(f"- {row.strategy}: change saved at equal gain {distance(saved, found[i, :, 0])}; "
                         f"gain added at equal change {distance(added, found[i, :, 1])}")
    return lines[1:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="a compare folder (compare.json and one run folder per row)")
    print("\n".join(resample_lines(parser.parse_args().folder)))


if __name__ == "__main__":
    main()
