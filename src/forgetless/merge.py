"""`forgetless merge SRC SRC... --out DIR`: one comparison from several run apart on the same config.

A comparison split over two machines, or grown on another day into another folder, is measured against the naive
rows of its own folder only: a folder without naive rows has no drop cut and no distance from naive's frontier, and
distances taken across folders by hand lose the paired s.e. (forgetless.frontier_noise), which needs every run's
item scores against the same "before" evaluation. Merging copies every row's run folder into one comparison and
measures the rows again against the one baseline and frontier, as if one `compare` had run them all. It is refused
where the folders differ in config or in the "before" evaluation they scored against (then they are not one
comparison), or where two hold a row of the same label (keep one by hand). Folders of per-seed comparisons
(`compare --seeds`) merge seed by seed, and the summary over seeds is written again.

The merged folder is built beside DIR and renamed into place at the end: a merge that dies leaves no half-written
DIR.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from .compare import ComparisonRow, against_baseline, before_key, frontier_noise, write_table
from .config import parse_config
from .errors import ForgetlessError
from .fileio import atomic_write_json, check_output_path


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ForgetlessError(f"{path}: cannot be read as a comparison's file ({exc})") from None


def _run_folder(label: str) -> str:
    return label.replace("/", "_")  # as compare names it


def merge_tables(sources: list[Path], out: Path, command: str | None = None) -> list[ComparisonRow]:
    """Write one comparison in `out` (which must not exist) from the comparison folders `sources`."""
    tables = []
    for source in sources:
        if not (source / "compare.json").is_file():
            raise ForgetlessError(f"{source} holds no comparison (compare.json)")
        tables.append(_read_json(source / "compare.json"))
    first = tables[0]
    for source, table in zip(sources[1:], tables[1:]):
        if table.get("setting") != first.get("setting"):
            changed = sorted(k for k in set(table.get("setting", {})) | set(first.get("setting", {}))
                             if table["setting"].get(k) != first["setting"].get(k))
            raise ForgetlessError(f"{source} was run on another config than {sources[0]} (differs in {changed}): "
                                  "not one comparison")
        if table.get("baseline", "naive") != first.get("baseline", "naive"):
            raise ForgetlessError(f"{source} compares with {table.get('baseline')!r}, {sources[0]} with "
                                  f"{first.get('baseline')!r}")
    befores = [_read_json(s / "before.json") if (s / "before.json").is_file() else None for s in sources]
    for source, before in zip(sources, befores):
        if before is None:
            raise ForgetlessError(f"{source} has no before.json: its rows cannot be paired with the others'")
        if before.get("log") != befores[0].get("log"):
            # The key may differ by format only (an older forgetless wrote the seed where the split ignores it);
            # the scores themselves must be the same, item by item.
            raise ForgetlessError(f"{source} and {sources[0]} scored the start differently (before.json): "
                                  "another model, tasks or evaluation settings; not one comparison")
    owner: dict[str, Path] = {}
    for source, table in zip(sources, tables):
        for row in table["rows"]:
            if row["strategy"] in owner:
                raise ForgetlessError(f"row {row['strategy']!r} is in both {owner[row['strategy']]} and {source}: "
                                      "keep one (remove it from one folder's compare.json) and merge again")
            owner[row["strategy"]] = source

    config = parse_config({**first["setting"], "strategies": []}, str(sources[0] / "compare.json"))
    out.mkdir(parents=True)
    for source, table in zip(sources, tables):
        for row in table["rows"]:
            folder = source / _run_folder(row["strategy"])
            if folder.is_dir():  # rows from before 2026-12-03 kept no run folder worth pairing; copy what is there
                shutil.copytree(folder, out / _run_folder(row["strategy"]))
    atomic_write_json(out / "before.json", {"key": before_key(config), "log": befores[0]["log"]})
    rows = [ComparisonRow(**row) for table in tables for row in table["rows"]]
    baseline = first.get("baseline", "naive")
    against_baseline(rows, baseline)
    frontier_noise(rows, out)
    merged = {"setting": first["setting"], "baseline": baseline,
              "commands": [c for table in tables for c in table.get("commands", [])] + ([command] if command else []),
              "rows": [r.model_dump(mode="json") for r in rows]}
    write_table(merged, out)
    return rows


def merge(sources: list[str | Path], out_dir: str | Path, command: str | None = None) -> Path:
    """Merge comparison folders (or folders of per-seed comparisons) into `out_dir`; returns the table written."""
    from .seeds import seed_folder, write_summary

    sources = [Path(s) for s in sources]
    out = Path(out_dir)
    if len(sources) < 2:
        raise ForgetlessError("merge: give at least two comparison folders")
    if len({s.resolve() for s in sources}) != len(sources):
        raise ForgetlessError("merge: the same folder is given twice")
    check_output_path(out, "--out", folder=True)
    if out.exists() and any(out.iterdir()):
        raise ForgetlessError(f"--out {out} is not empty: merge writes a new folder")
    for source in sources:
        if not source.is_dir():
            raise ForgetlessError(f"{source} is not a folder")
    over_seeds = [(s / "seeds.json").exists() for s in sources]
    if any(over_seeds) and not all(over_seeds):
        raise ForgetlessError("merge: some folders hold comparisons over seeds (seeds.json) and some do not")
    partial = out.with_name(f".{out.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)  # what a merge that died left
    try:
        if all(over_seeds):
            seeds = sorted({int(f.name.split("-", 1)[1]) for s in sources for f in s.glob("seed-*")
                            if (f / "compare.json").is_file() and f.name.split("-", 1)[1].lstrip("-").isdigit()})
            for seed in seeds:
                having = [seed_folder(s, seed) for s in sources if (seed_folder(s, seed) / "compare.json").is_file()]
                if len(having) == 1:  # a seed only one folder ran: its table as it was
                    shutil.copytree(having[0], seed_folder(partial, seed))
                else:
                    merge_tables(having, seed_folder(partial, seed), command)
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
