"""Build src/forgetless/data/assets/advice/evidence.json (what `forgetless advise` falls back on) from the docs.

Reads the committed result tables, keeps each registered strategy's row at its defaults (and the default stack
[replay, wise]), and writes one small JSON with the provenance of every number:

    .venv/bin/python scripts/build_advice_evidence.py        # --check: fail if the committed file differs

- docs/results/quality.md: `support` then `pydoc` (two tasks): general change ± s.e., drop cut, gain kept; its
  table of naive at other learning rates and step counts (naive's frontier): training less is a candidate; each
  row's change saved at equal gain against that frontier; and where a row was run at several seeds (a table
  "strategy over seeds", benchmarks/seeds_table.py; each row from the one over the most seeds that holds it), its
  general change, change saved and drop cut over those seeds (its gain kept stays seed 0's: the least kept task's;
  the points of later seeds hold only the mean gain).
- docs/results/quality-legal.md and docs/results/quality-jargon.md: `legal` alone and `jargon` alone (one task each).
  A strategy's one-task evidence is the worse general change of the two (a default must hold on both; each
  domain's is the mean over the seeds of its table "strategy over seeds" where that has the row, with its worst
  seed: the page's widest such table holding it, five seeds for every row on both), its drop cut, and the
  gain kept on `jargon` (on `legal` naive's own gain is within noise), over those seeds; naive's frontier was run
  on `jargon` only, so the change saved against it is `jargon`'s, over its seeds (beside `legal`'s change when
  that is the worse, with the seeds it is over: "frontier_seeds").
- docs/results/overhead.md: the full fine-tuning table's step ratio (a stack's: the sum of its members' extra).
- docs/results/generation-checks.md: instruction pass rate and leakage-free share, change ± s.e., after `support`
  (kept for every task count: it is the only generation evidence shipped).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from _generated import write_or_check  # scripts/, beside this file

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "src/forgetless/data/assets/advice/evidence.json"
STACK = "replay+wise"
DISTANCE = ("change_saved", "change_saved_se", "above")  # a row's distance from naive's frontier (seeds_rows)


def table_rows(path: Path, first_header: str, having: str | None = None, optional: bool = False) -> list[dict[str, str]]:
    """The rows of the first markdown table in `path` whose first header cell is `first_header` (and which has a
    column `having`, when given); none if `optional` and there is no such table."""
    tables = all_tables(path, first_header, having)
    if not tables:
        if optional:
            return []
        raise ValueError(f"{path}: no table whose first header is {first_header!r}"
                         + (f" with a column {having!r}" if having else ""))
    return tables[0]


def all_tables(path: Path, first_header: str, having: str | None = None) -> list[list[dict[str, str]]]:
    """Every markdown table in `path` whose first header cell is `first_header` (and has a column `having`), in order."""
    lines = path.read_text(encoding="utf-8").splitlines()
    tables = []
    for start, line in enumerate(lines):
        if not (line.startswith("|") and _cells(line)[0] == first_header and (having is None or having in _cells(line))):
            continue
        headers = _cells(line)
        rows = []
        for body in lines[start + 2:]:
            if not body.startswith("|"):
                break
            rows.append(dict(zip(headers, _cells(body))))
        tables.append(rows)
    return tables


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def _change(text: str) -> tuple[float, float]:
    delta, se = re.findall(r"[-+]?\d+\.\d+", text)[:2]
    return float(delta), float(se)


def _percent(text: str) -> float | None:
    found = re.search(r"-?\d+", text)
    return None if found is None or text.strip() in ("—", "") else int(found.group()) / 100


def _name(label: str) -> str:
    """A table label as a registry name, or '' for a row with explicit parameters."""
    label = re.sub(r"\*\*(\w+)\*\*.*", r"\1", label).strip()  # "**fip** (anchors: ...)" -> "fip"
    if label in ("[replay, wise]", "replay+wise"):
        return STACK
    return label if re.fullmatch(r"[a-z0-9]+", label) else ""


def quality_rows(path: Path, with_gain: bool) -> dict[str, dict]:
    """Each default row of a quality table: general change, its s.e., drop cut and (if asked) gain kept."""
    rows = {}
    for row in table_rows(path, "strategy"):
        name = _name(row["strategy"])
        if name and name not in rows:
            delta, se = _change(row["general delta ± s.e."])
            rows[name] = {"general_change": delta, "se": se, "drop_cut": _percent(row["drop cut vs naive"]),
                          "gain_kept": _percent(row["gain kept vs naive"]) if with_gain else None,
                          "gain_seeds": 1 if with_gain else None}
    return rows


def generation_rows(path: Path) -> dict[str, dict[str, list[float]]]:
    """Each row of the "after fine-tuning" table: instructions (change, s.e.) and leakage (change in the share of
    answers free of the signature, with the s.e. the cell gives after "±"; none: every prompt changed alike, s.e. 0)."""
    rows = {}
    for row in table_rows(path, "strategy"):
        _, change, se = (float(x) for x in re.findall(r"[-+]?\d+\.\d+", row["instructions: after (change ± s.e.)"]))
        after, before, leak_se = re.fullmatch(r"(\d+) % \(from (\d+) %\)(?: ± (\d+\.\d+))?",
                                              row["leakage: share of answers with the signature"]).groups()
        rows[_name(row["strategy"])] = {"instructions": [change, se],
                                        "leakage": [(int(before) - int(after)) / 100, float(leak_se or 0.0)]}
    return rows


def frontier_rows(path: Path) -> dict[str, dict]:
    """Naive at other train settings ("naive(lr=0.0002,steps=15)"), from the table whose first header is "naive
    setting"; the row at the table's own setting ("naive") is left out: it is the baseline."""
    rows = {}
    for row in table_rows(path, "naive setting"):
        if row["naive setting"] != "naive":
            delta, se = _change(row["general delta ± s.e."])
            rows[row["naive setting"]] = {"general_change": delta, "se": se, "drop_cut": None,
                                          "gain_kept": _percent(row["gain kept vs naive"]), "gain_seeds": 1}
    return rows


def frontier_distances(path: Path, column: str = "change saved") -> dict[str, dict]:
    """Each default row's general change saved at equal gain against naive's frontier, from the first table with
    that column (one seed, no s.e. of its own)."""
    rows = {}
    for row in table_rows(path, "strategy", having=column):
        name = _name(row["strategy"])
        if name and name not in rows and row[column] != "—":
            rows[name] = {"change_saved": float(row[column]), "change_saved_se": None, "seeds": 1}
    return rows


def seeds_rows(path: Path) -> dict[str, dict]:
    """Rows measured at several seeds (benchmarks/seeds_table.py: first header "strategy over seeds"): general
    change as mean ± s.e. over seeds, the worst seed's, the change saved against each seed's own frontier, and the
    drop cut and gain kept against naive's means over the same seeds (the gain kept of its mean gain over the
    tasks: the task with the least kept where there are several, as compare takes it, is not in these tables).

    Each row from the page's table over the most seeds that holds it (the first of those in a tie), against that
    table's naive row: a row rerun at more seeds (bundled: a few rows at a fourth seed) is read over all of them, as
    benchmarks/defaults_table.py takes every seed a default was measured at, while the rest keep their table."""
    tables = all_tables(path, "strategy over seeds")
    if not tables:
        raise ValueError(f"{path}: no table whose first header is 'strategy over seeds'")
    rows = {}
    for table in sorted(tables, key=lambda t: -len(t[0]["seeds"].split())):  # stable: the first of a width first
        for label, row in table_seeds_rows(table).items():
            rows.setdefault(label, row)
    return rows


def table_seeds_rows(table: list[dict[str, str]]) -> dict[str, dict]:
    """seeds_rows of one table."""
    naive = next((row for row in table if row["strategy over seeds"] == "naive"), None)
    naive_gain = _change(naive["mean gain ± s.e."])[0] if naive else None
    naive_change = _change(naive["general change ± s.e."])[0] if naive else None
    rows = {}
    for row in table:
        change, se = _change(row["general change ± s.e."])
        gain = _change(row["mean gain ± s.e."])[0]
        # Always set, so that seed 0's one-seed distance never stands beside "over 3 seeds": "beyond the range" (at
        # every seed) has no mean, one defined seed no s.e., naive's own rows ("—") no distance.
        saved = [float(v) for v in re.findall(r"[-+]?\d+\.\d+", row["change saved at equal gain ± s.e."])]
        above = re.fullmatch(r"(\d+) of \d+", row["above naive's frontier at"])
        seeds = len(row["seeds"].split())
        kept = round(gain / naive_gain, 2) if naive_gain is not None and naive_gain > 0 else None
        rows[_name(row["strategy over seeds"]) or row["strategy over seeds"]] = {
            "general_change": change, "se": se, "worst_change": float(row["worst seed's change"]),
            "drop_cut": round(1 - change / naive_change, 2) if naive_change is not None and naive_change < 0 else None,
            "gain_kept": kept, "gain_seeds": seeds if kept is not None else None,
            "seeds": seeds, "change_saved": saved[0] if saved else None,
            "change_saved_se": saved[1] if len(saved) > 1 else None, "above": int(above.group(1)) if above else None,
        }
    return rows


def overlay(rows: dict[str, dict], found: dict[str, dict], drop: tuple[str, ...] = ()) -> None:
    """Each row of `found` over the same-named row of `rows` (a later measurement replaces the table's number), less
    the keys in `drop`; names `rows` lacks are left out."""
    for name, values in found.items():
        if name in rows:
            rows[name] = {**rows[name], **{k: v for k, v in values.items() if k not in drop}}


def _has_distance(row: dict) -> bool:
    """A frontier distance was measured: a mean, or (beyond the frontier's range at every seed) only the count above."""
    return row.get("change_saved") is not None or row.get("above") is not None


def worse_domain(rows: dict[str, dict | None]) -> dict:
    """The row of the domain where the general change is lowest (named in "domain"), with the lowest gain kept of
    the domains that judge it (named in "gain_domain"; on `legal` naive's own gain is noise, so none there). Its
    worst seed is that domain's: the other domain may have a worse single seed behind a better mean."""
    measured = {domain: row for domain, row in rows.items() if row is not None}
    domain, worst = min(measured.items(), key=lambda item: item[1]["general_change"])
    gains = {name: row["gain_kept"] for name, row in measured.items() if row["gain_kept"] is not None}
    gain_domain = min(gains, key=gains.get) if gains else None
    return {**worst, "gain_kept": gains.get(gain_domain), "domain": domain, "gain_domain": gain_domain,
            "gain_seeds": measured[gain_domain]["gain_seeds"] if gain_domain else None}


def build() -> dict:
    from forgetless.strategies import _REGISTRY

    overhead = {}
    for row in table_rows(ROOT / "docs/results/overhead.md", "strategy"):
        name = row["strategy"].split(",")[0].strip()
        if name in _REGISTRY and name not in overhead:  # the first table is full fine-tuning
            overhead[name] = float(re.search(r"\d+\.\d+", row["step ratio"]).group())
    overhead["naive"] = 1.0
    overhead[STACK] = round(1 + sum(overhead[n] - 1 for n in STACK.split("+")), 2)

    quality = ROOT / "docs/results/quality.md"
    sequence = quality_rows(quality, with_gain=True)
    training_less = frontier_rows(quality)
    sequence.update(training_less)
    # Where a row was measured at several seeds its general change, distance from naive's frontier and drop cut are
    # over the seeds. Its gain kept stays seed 0's: compare's is the task with the least kept (replay keeps 83 % of one
    # task's gain at seed 0, 97 % of the mean), and the points kept for later seeds hold the mean gain alone.
    overlay(sequence, frontier_distances(quality))
    overlay(sequence, seeds_rows(quality), drop=("gain_kept", "gain_seeds"))
    # Naive's own gain on legal is within noise (the doc's reading): no gain kept there, and no frontier.
    legal_table = ROOT / "docs/results/quality-legal.md"
    legal = quality_rows(legal_table, with_gain=False)
    # Its change over the seeds of its widest table (five for every row since 2026-12-05, as jargon's).
    overlay(legal, seeds_rows(legal_table), drop=(*DISTANCE, "gain_kept", "gain_seeds"))
    jargon_table = ROOT / "docs/results/quality-jargon.md"
    jargon = quality_rows(jargon_table, with_gain=True)
    jargon_less = frontier_rows(jargon_table)
    jargon.update(jargon_less)
    training_less = {**training_less, **jargon_less}
    overhead.update({name: 1.0 for name in training_less})
    # Naive's frontier was run on jargon only, so a strategy's one-task distance from it is jargon's: seed 0's, or
    # over the seeds of its widest table (five for every row since 2026-12-05), with its general change over them.
    overlay(jargon, frontier_distances(jargon_table, "change saved vs frontier"))
    overlay(jargon, seeds_rows(jargon_table))
    jargon = {name: {**row, "frontier_domain": "jargon"} if _has_distance(row) else row for name, row in jargon.items()}
    single = {name: worse_domain({"legal": legal.get(name), "jargon": jargon.get(name)}) for name in set(legal) | set(jargon)}
    for name, row in single.items():
        found = jargon.get(name) or {}
        if row["domain"] != "legal" or not _has_distance(found):
            continue  # jargon's own row (its distance in it), or no distance (naive's own rows)
        # legal's change beside jargon's distance, which may be over other seeds: say so apart.
        distance = {k: found.get(k) for k in (*DISTANCE, "frontier_domain")}
        single[name] = {**row, **distance, "frontier_seeds": found.get("seeds", 1)}
    generation = generation_rows(ROOT / "docs/results/generation-checks.md")
    names = sorted(set(sequence) | set(single))
    strategies = {
        name: {
            "members": ["naive"] if name in training_less else name.split("+"),
            "stores_raw_data": name not in training_less and any(_REGISTRY[m].stores_raw_data for m in name.split("+")),
            "step_ratio": overhead.get(name),
            "several_tasks": sequence.get(name),
            "one_task": single.get(name),
            **({"generation": generation[name]} if name in generation else {}),
        }
        for name in names
    }
    return {
        "provenance": {
            "several_tasks": "docs/results/quality.md: default model, full fine-tuning, support then pydoc, "
                             "30 steps x batch 4 x 256 tokens at lr 5e-4, seed 0; the rows measured at several seeds "
                             "(its tables \"strategy over seeds\": every row at seeds 0 to 2, some at 0 to 6; each "
                             "row from the widest holding it) give their general change and distance from naive's "
                             "frontier and drop cut over those seeds, their gain kept at seed 0",
            "one_task": "docs/results/quality-legal.md and quality-jargon.md: the same set-up on legal alone and on "
                        "jargon alone, each strategy's worse general change of the two (naive's frontier: jargon "
                        "only, so it faces one domain where a strategy faces two; the defaults switched after these "
                        "runs: ewc's and l2sp's caps, stm's percentile); the rows run at seeds 0 to 4 on legal "
                        "and on jargon (each row from the page's widest table \"strategy over seeds\" "
                        "holding it) give that domain's change over the seeds, and jargon's distance and gain "
                        "kept over them",
            "step_ratio": "docs/results/overhead.md, full fine-tuning table (a stack: 1 + the sum of its members' extra)",
            "generation": "docs/results/generation-checks.md: support alone, 30 steps at lr 5e-4",
            "built_by": "scripts/build_advice_evidence.py",
        },
        "strategies": strategies,
    }


def main() -> int:
    return write_or_check(__doc__.splitlines()[0], OUT, lambda: json.dumps(build(), indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    sys.exit(main())
