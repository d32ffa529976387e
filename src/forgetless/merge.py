"""`forgetless merge SRC SRC... --out DIR`: one comparison from several run apart on the same config.

A comparison split over two machines, or grown on another day into another folder, is measured against the naive
rows of its own folder only: a folder without naive rows has no drop cut and no distance from naive's frontier, and
distances taken across folders by hand lose the paired s.e. (forgetless.frontier_noise), which needs every run's
item scores against the same "before" evaluation. Merging copies every row's run folder into one comparison and
measures the rows again against the one baseline and frontier, as if one `compare` had run them all. It is refused
where the folders differ in config or in the "before" evaluation they scored against (then they are not one
comparison), or where two hold a row of the same label (keep one by hand). Folders of per-seed comparisons
(`compare --seeds`) merge seed by seed, and the summary over seeds is written again. One folder alone is measured
again into DIR the same way: a table written by an earlier forgetless gets the columns added since.

A step-time ratio is kept only for rows timed in the baseline's folder: another folder may have run on another
machine. The merged folder is built beside DIR and renamed into place at the end, so a merge that dies leaves no
half-written DIR (only a hidden `.DIR.*.partial` beside it, which a later merge does not reuse).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from .compare import differences_note, setting_differences
from .comparison_rows import (
    ComparisonRow,
    against_baseline,
    fill_formats,
    fill_task_end_changes,
    frontier_noise,
    run_folder,
)
from .comparison_table import write_table
from .errors import ForgetlessError
from .fileio import check_output_path

_TWO_MACHINES = ("to compare on a second machine, copy the first folder's before.json into that machine's --out "
                 "before its `compare` (compare reuses it)")


def _read_object(path: Path, needs: tuple[str, ...]) -> dict[str, Any]:
    try:
        found = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ForgetlessError(f"{path}: cannot be read ({exc})") from None
    missing = [key for key in needs if not isinstance(found, dict) or key not in found]
    if missing:
        raise ForgetlessError(f"{path}: not a file compare wrote (no {', '.join(missing)})")
    return found


def _rows(source: Path, table: dict[str, Any]) -> list[ComparisonRow]:
    try:
        rows = [ComparisonRow(**row) for row in table["rows"]]
    except (TypeError, ValidationError) as exc:  # TypeError: rows not a list of mappings
        raise ForgetlessError(f"{source / 'compare.json'}: a row is not one compare wrote ({exc})") from None
    fill_task_end_changes(rows, source)
    fill_formats(rows, source)
    return rows


# Per-item fields a later forgetless records beside the scores (the instruction answers' lengths, for `stops`): a
# start scored before them pairs item by item with one scored since.
_ADDED_SAMPLE_FIELDS = ("lengths", "budget")


def _scores_only(log: Any) -> Any:
    """A before.json log without the _ADDED_SAMPLE_FIELDS of its samples (anything malformed is left as it is)."""
    def strip(value: Any, depth: int) -> Any:
        # depth 2: a log's part (a list of evaluations), 1: an evaluation ({task: samples}), 0: one task's samples
        if depth == 0:
            return {k: v for k, v in value.items() if k not in _ADDED_SAMPLE_FIELDS} if isinstance(value, dict) else value
        if depth == 2:
            return [strip(entry, 1) for entry in value] if isinstance(value, list) else value
        return {name: strip(samples, 0) for name, samples in value.items()} if isinstance(value, dict) else value

    if not isinstance(log, dict):
        return log
    return {key: strip(value, 2) if key in ("general_samples", "task_samples") else value for key, value in log.items()}


def merge_tables(sources: list[Path], out: Path, command: str | None = None) -> list[ComparisonRow]:
    """Write one comparison in `out` (new, or empty) from the comparison folders `sources`."""
    tables = [_read_object(s / "compare.json", ("setting", "rows")) for s in sources]
    for source, table in zip(sources, tables):
        if not isinstance(table["setting"], dict) or not isinstance(table["rows"], list):
            raise ForgetlessError(f"{source / 'compare.json'}: not a file compare wrote (setting or rows malformed)")
    befores = [_read_object(s / "before.json", ("key", "log")) for s in sources]
    first = tables[0]
    for source, table, before in zip(sources[1:], tables[1:], befores[1:]):
        changed = setting_differences(table["setting"], first["setting"])
        if changed:
            raise ForgetlessError(f"{source} was run on another config than {sources[0]} ({differences_note(changed)}): "
                                  "not one comparison")
        if table.get("baseline", "naive") != first.get("baseline", "naive"):
            raise ForgetlessError(f"{source} compares with {table.get('baseline', 'naive')!r}, {sources[0]} with "
                                  f"{first.get('baseline', 'naive')!r}: not one comparison")
        if _scores_only(before["log"]) != _scores_only(befores[0]["log"]):
            # The key may differ by format (an older forgetless wrote the seed where the split ignores it); the
            # scores must be the same, item by item, for the rows' items to pair.
            older = {b["key"].get("format") for b in (before, befores[0]) if isinstance(b["key"], dict)}
            why = (f"written by forgetless versions that save it differently (formats {sorted(older, key=str)})"
                   if len(older) > 1 else "another model, tasks or evaluation settings, or another machine's numerics")
            raise ForgetlessError(f"{source} and {sources[0]} scored the start differently (before.json): {why}; "
                                  f"their rows cannot be paired ({_TWO_MACHINES})")
    owner: dict[str, Path] = {}
    for source, table in zip(sources, tables):
        for row in table["rows"]:
            label = row.get("strategy") if isinstance(row, dict) else None
            if not isinstance(label, str):
                raise ForgetlessError(f"{source / 'compare.json'}: a row without a label (strategy) is not one compare wrote")
            if run_folder(label) in owner:
                raise ForgetlessError(f"row {label!r} is in both {owner[run_folder(label)]} and {source} (run folder "
                                      f"{run_folder(label)!r}): keep one (remove it from one folder's compare.json) "
                                      "and merge again")
            owner[run_folder(label)] = source
    rows_of = [_rows(source, table) for source, table in zip(sources, tables)]

    out.mkdir(parents=True, exist_ok=True)
    for source, rows in zip(sources, rows_of):
        for row in rows:
            folder = source / run_folder(row.strategy)
            if folder.is_dir():  # rows from before 2026-12-03 kept no items: they get no s.e., as in compare
                shutil.copytree(folder, out / run_folder(row.strategy))
    shutil.copyfile(sources[0] / "before.json", out / "before.json")  # its key as written: a later compare checks it
    rows = [row for found in rows_of for row in found]
    baseline = first.get("baseline", "naive")
    against_baseline(rows, baseline)
    timed_with = owner.get(run_folder(baseline))
    for row in rows:
        if owner[run_folder(row.strategy)] != timed_with:
            row.step_time_ratio = None
    frontier_noise(rows, out)
    merged = {"setting": first["setting"], "baseline": baseline,
              "commands": [c for table in tables for c in table.get("commands", [])] + ([command] if command else []),
              "rows": [r.model_dump(mode="json") for r in rows]}
    write_table(merged, out)
    return rows


def _check_seeds_are_one_config(folders: list[Path]) -> None:
    """Every seed table of every source on one config, but for the training seed itself."""
    def setting(folder: Path) -> dict[str, Any]:
        found = _read_object(folder / "compare.json", ("setting", "rows"))["setting"]
        train = found.get("train") if isinstance(found, dict) else None
        return {**found, "train": {k: v for k, v in train.items() if k != "seed"}} if isinstance(train, dict) else found

    first = setting(folders[0])
    for folder in folders[1:]:
        changed = setting_differences(setting(folder), first)
        if changed:
            raise ForgetlessError(f"{folder} was run on another config than {folders[0]} ({differences_note(changed)}, "
                                  "the seed aside): not one comparison")


def _check_places(sources: list[Path], out: Path) -> None:
    resolved = [s.resolve() for s in sources]
    if len(set(resolved)) != len(resolved):
        raise ForgetlessError("merge: the same folder is given twice")
    target = out.resolve()
    for source, path in zip(sources, resolved):
        if target == path or path in target.parents or target in path.parents:
            raise ForgetlessError(f"--out {out} is {source} or holds or lies inside it: choose a folder apart")


def merge(sources: list[str | Path], out_dir: str | Path, command: str | None = None) -> Path:
    """Merge comparison folders (or folders of per-seed comparisons) into `out_dir`; returns the table written."""
    from .seeds import seed_folder, seed_folders, write_summary

    sources = [Path(s) for s in sources]
    out = Path(out_dir)
    if not sources:
        raise ForgetlessError("merge: give a comparison folder")
    for source in sources:
        if not source.is_dir():
            raise ForgetlessError(f"{source} is not a folder")
    if out.name in ("", ".", ".."):
        raise ForgetlessError(f"--out {out}: name a new folder (merge renames its result into place)")
    _check_places(sources, out)
    check_output_path(out, "--out", folder=True)
    if out.exists() and any(out.iterdir()):
        raise ForgetlessError(f"--out {out} is not empty: merge writes a new folder")
    over_seeds = [(s / "seeds.json").exists() for s in sources]
    if any(over_seeds) and not all(over_seeds):
        raise ForgetlessError("merge: some folders hold comparisons over seeds (seeds.json) and some do not")
    if not all(over_seeds):
        for source in sources:
            if not (source / "compare.json").is_file():
                raise ForgetlessError(f"{source} holds no comparison (compare.json)")
    seeds = [seed_folders(s) for s in sources] if all(over_seeds) else []
    if seeds:
        _check_seeds_are_one_config([folder for found in seeds for folder in found.values()])
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        if seeds:
            for seed in sorted({seed for found in seeds for seed in found}):
                # A seed only one folder ran is measured again too: its rows get this version's columns.
                merge_tables([found[seed] for found in seeds if seed in found], seed_folder(partial, seed), command)
            write_summary(partial)
            written = "seeds.md"
        else:
            merge_tables(sources, partial, command)
            written = "compare.md"
        if out.exists():
            out.rmdir()  # empty, checked above
        os.replace(partial, out)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return out / written
