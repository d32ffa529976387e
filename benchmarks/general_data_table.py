"""What protecting the user's own general rows (`general_data`) changes: two compare folders of one set-up, one
protecting the bundled general English and one the rows of `general_data`, read row by row.

    .venv/bin/python benchmarks/general_data_table.py bench-out/chat-general/bundled bench-out/chat-general/chat

For each row: the in-domain gain, the change of the six-task `general` suite (the quality table's number; compare's
own "general delta" averages every general task, instructions and leakage included), the instructions pass rate
after training and the share of answers free of the domain's signature, each with its paired s.e. over the same
items. Then, for each strategy in both folders, the second folder's row minus the first's, paired by item: both
folders must share one "before" evaluation (copy the first's before.json into the second before running it).
`--against LABEL` adds each other row of the second folder minus its row LABEL, paired by item.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from forgetless.comparison_rows import run_folder
from forgetless.evaluation.evaluator import EvaluationLog
from forgetless.metrics import general_change

GENERAL_SIX = ["capitals", "currencies", "elements", "fortunes", "glosses", "word_definitions"]
COLUMNS = {"general": GENERAL_SIX, "instructions": ["instructions"], "answers free of the domain": ["leakage"]}


def rows_of(folder: Path) -> dict[str, dict]:
    """strategy label -> the compare row, in table order."""
    return {row["strategy"]: row for row in json.loads((folder / "compare.json").read_text(encoding="utf-8"))["rows"]}


def shared_start(folders: list[Path]) -> dict:
    """The "before" evaluation log (before.json) the folders share; refused where one scored the start differently:
    pairing by item and the leakage signature both read the start's items and answers."""
    starts = [json.loads((folder / "before.json").read_text(encoding="utf-8"))["log"] for folder in folders]
    for folder, start in zip(folders[1:], starts[1:]):
        if start != starts[0]:
            raise SystemExit(f"{folders[0]} and {folder} scored the start differently (before.json): copy the first's "
                             "before.json into the second before running it")
    return starts[0]


def folder_names(folders: list[Path]) -> dict[Path, str]:
    """Each folder's name in a table. Seed folders of `compare --seeds` share their name (seed-1): then the parent
    says which is which."""
    names = [folder.name for folder in folders]
    return {folder: f"{folder.parent.name}/{folder.name}" if names.count(folder.name) > 1 else folder.name
            for folder in folders}


def samples(folder: Path, label: str, index: int):
    return EvaluationLog.read(folder / run_folder(label) / "evaluations.json").general_samples[index]


def changes(before, after) -> list[str]:
    cells = []
    for tasks in COLUMNS.values():
        change = general_change({t: before[t] for t in tasks}, {t: after[t] for t in tasks})
        cells.append(f"{change['after']:.3f} ({change['delta_abs']:+.4f} ± {change['delta_se']:.4f})")
    return cells


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("first", type=Path, help="compare folder protecting the bundled general English")
    parser.add_argument("second", type=Path, help="compare folder of the same set-up with general_data")
    parser.add_argument("--against", metavar="LABEL", help="also each other row of the second folder minus its row "
                        "LABEL, paired by item (e.g. replay at other general_ratio against replay's default)")
    args = parser.parse_args()
    first, second = rows_of(args.first), rows_of(args.second)
    if args.against and args.against not in second:
        raise SystemExit(f"--against {args.against!r}: no such row in {args.second} (rows: {list(second)})")
    shared_start([args.first, args.second])
    name = folder_names([args.first, args.second])
    header = " | ".join(f"{name}: after (change ± s.e.)" for name in COLUMNS)
    print(f"| folder | strategy | in-domain gain ± s.e. | {header} |")
    print("|---|---|---|" + "---|" * len(COLUMNS))
    for folder, rows in ((args.first, first), (args.second, second)):
        for label, row in rows.items():
            gain = next(iter(row["in_domain_gain"].values()))
            gain_se = next(iter((row.get("in_domain_gain_se") or {"": float("nan")}).values()))
            cells = changes(samples(folder, label, 0), samples(folder, label, -1))
            print(f"| {name[folder]} | {label} | {gain:+.4f} ± {gain_se:.4f} | " + " | ".join(cells) + " |")
    print_differences(f"{name[args.second]} minus {name[args.first]}",
                      [(label, (args.first, label), (args.second, label)) for label in second if label in first])
    if args.against:
        print_differences(f"{name[args.second]}: each row minus {args.against}",
                          [(label, (args.second, args.against), (args.second, label)) for label in second
                           if label != args.against])


def print_differences(title: str, pairs: list[tuple[str, tuple[Path, str], tuple[Path, str]]]) -> None:
    """One row per (label, (folder, row) subtracted, (folder, row) subtracted from): the latter's scores after
    training minus the former's, paired by item."""
    print(f"\n{title}, after training, paired by item:\n")
    print("| strategy | " + " | ".join(COLUMNS) + " |")
    print("|---|" + "---|" * len(COLUMNS))
    for label, (base_folder, base_label), (folder, row_label) in pairs:
        cells = changes(samples(base_folder, base_label, -1), samples(folder, row_label, -1))
        print(f"| {label} | " + " | ".join(cell.split(" ", 1)[1].strip("()") for cell in cells) + " |")


if __name__ == "__main__":
    main()
