"""`forgetless merge`: comparisons run apart on one config, measured again as one."""

from __future__ import annotations

import json
import shutil

import pytest

from forgetless.cli import main
from forgetless.comparison_rows import ComparisonRow


def _rows(folder) -> dict[str, ComparisonRow]:
    return {row["strategy"]: ComparisonRow(**row) for row in json.loads((folder / "compare.json").read_text())["rows"]}


def test_a_merged_comparison_equals_one_run_in_one_folder(tmp_path, compare_config, evaluated_stages):
    config = str(compare_config)
    naive_only, l2sp_only, together, merged = (tmp_path / n for n in ("a", "b", "together", "merged"))
    frontier = ["--frontier-lr", "0.001", "--frontier-steps", "1"]
    assert main(["compare", config, "--strategies", "naive", *frontier, "--out", str(naive_only), "--quiet"]) == 0
    assert main(["compare", config, "--strategies", "l2sp", "--out", str(l2sp_only), "--quiet"]) == 0
    assert main(["compare", config, "--strategies", "naive", "l2sp", *frontier, "--out", str(together), "--quiet"]) == 0
    # Alone, l2sp's folder has no naive row: nothing to measure it against.
    alone = _rows(l2sp_only)["l2sp"]
    assert (alone.general_drop_cut, alone.change_saved_vs_frontier, alone.gain_added_vs_frontier) == (None, None, None)

    evaluated_stages.clear()
    assert main(["merge", str(naive_only), str(l2sp_only), "--out", str(merged)]) == 0
    assert evaluated_stages == []  # nothing is trained or scored again
    rows, reference = _rows(merged), _rows(together)
    assert list(rows) == ["naive", "naive(lr=0.001,steps=1)", "l2sp"]
    # The same runs (training is deterministic here) measured in one folder: every derived number agrees, the
    # distances' paired s.e. included, which needs the naive runs' and l2sp's item scores side by side.
    fields = ("general_drop_cut", "in_domain_gain_kept", "change_saved_vs_frontier", "gain_added_vs_frontier",
              "change_saved_vs_frontier_se", "gain_added_vs_frontier_se")
    assert {f: getattr(rows["l2sp"], f) for f in fields} == pytest.approx({f: getattr(reference["l2sp"], f) for f in fields})
    assert rows["l2sp"].gain_added_vs_frontier_se is not None  # as in test_compare: the pairing did take place
    table = json.loads((merged / "compare.json").read_text())
    assert table["commands"][-1].startswith("forgetless merge ") and len(table["commands"]) == 3
    assert (merged / "l2sp" / "evaluations.json").exists() and "l2sp" in (merged / "compare.md").read_text()
    # The merged folder's "before" evaluation is reused by a later compare into it, as in any comparison folder.
    assert main(["compare", config, "--strategies", "{name: l2sp, lam: 10}", "--out", str(merged), "--quiet"]) == 0
    assert "before" not in evaluated_stages and "l2sp(lam=10)" in _rows(merged)

    # Per-seed folders merge seed by seed; a seed only one of them ran is measured again on its own rows.
    first, second, over = tmp_path / "s1", tmp_path / "s2", tmp_path / "over"
    shutil.copytree(naive_only, first / "seed-0")
    shutil.copytree(naive_only, first / "seed-1")
    shutil.copytree(l2sp_only, second / "seed-0")
    for folder in (first, second):
        (folder / "seeds.json").write_text("{}")
    assert main(["merge", str(first), str(second), "--out", str(over)]) == 0
    seed0 = _rows(over / "seed-0")
    assert list(seed0) == ["naive", "naive(lr=0.001,steps=1)", "l2sp"]
    assert seed0["l2sp"].gain_added_vs_frontier == pytest.approx(rows["l2sp"].gain_added_vs_frontier)  # measured again
    assert list(_rows(over / "seed-1")) == ["naive", "naive(lr=0.001,steps=1)"]
    assert json.loads((over / "seed-1" / "compare.json").read_text())["commands"][-1].startswith("forgetless merge ")
    summary = json.loads((over / "seeds.json").read_text())
    assert summary["seeds"] == [0, 1] and summary["left_out"] == ["l2sp"]  # l2sp ran at seed 0 only
    assert [row["strategy"] for row in summary["rows"]] == ["naive", "naive(lr=0.001,steps=1)"]

    # One folder alone: a table written before the distances at the end existed gets them, as a new compare would
    # write them, and the folder given is left as it was.
    table = json.loads((together / "compare.json").read_text())
    for row in table["rows"]:
        for field in ("change_saved_vs_frontier_at_end", "change_saved_vs_frontier_at_end_se"):
            row.pop(field, None)
    (together / "compare.json").write_text(json.dumps(table))
    again = tmp_path / "again"
    assert main(["merge", str(together), "--out", str(again)]) == 0
    fields = ("change_saved_vs_frontier_at_end", "change_saved_vs_frontier_at_end_se")
    assert {f: getattr(_rows(again)["l2sp"], f) for f in fields} == pytest.approx(
        {f: getattr(reference["l2sp"], f) for f in fields})
    assert _rows(again)["l2sp"].change_saved_vs_frontier_at_end is not None
    assert "change_saved_vs_frontier_at_end" not in json.loads((together / "compare.json").read_text())["rows"][1]


def _fake(folder, setting, rows, log, baseline="naive"):
    folder.mkdir(parents=True)
    (folder / "compare.json").write_text(json.dumps({"setting": setting, "baseline": baseline, "rows": rows}))
    (folder / "before.json").write_text(json.dumps({"key": {"format": 2}, "log": log}))
    return str(folder)


@pytest.mark.parametrize("case, message", [
    ("same label", "row 'naive' is in both"),
    ("same run folder", "is in both"),
    ("other config", "differs in ['train']"),
    ("other baseline", "compares with 'ewc'"),
    ("other start", "scored the start differently"),
    ("not empty", "is not empty"),
    ("no comparison", "holds no comparison"),
    ("same folder twice", "the same folder is given twice"),
    ("out inside a source", "holds or lies inside it"),
    ("seeds and not", "some folders hold comparisons over seeds"),
    ("seeds on two configs", "differs in ['train'], the seed aside"),
    ("malformed", "not a file compare wrote (no rows)"),
])
def test_merge_refuses_what_is_not_one_comparison(tmp_path, capsys, case, message):
    setting = {"model": "tiny", "train": {"lr": 0.001, "seed": 0}}
    labels = {"same label": ("naive", "naive"), "same run folder": ("a/b", "a_b")}.get(case, ("naive", "l2sp"))
    a = _fake(tmp_path / "a", setting, [{"strategy": labels[0]}], {"general": [0.5]})
    other = {**setting, "train": {"lr": 0.01, "seed": 0}} if case in ("other config", "seeds on two configs") else setting
    b = _fake(tmp_path / "b", other, [{"strategy": labels[1]}], {"general": [0.6 if case == "other start" else 0.5]},
              baseline="ewc" if case == "other baseline" else "naive")
    if case == "no comparison":
        (tmp_path / "b" / "compare.json").unlink()
    if case == "malformed":
        (tmp_path / "b" / "compare.json").write_text(json.dumps({"setting": setting}))
    if case in ("seeds and not", "seeds on two configs"):
        for name in ("a", "b")[: 1 if case == "seeds and not" else 2]:
            shutil.copytree(tmp_path / name, tmp_path / "s" / name / ("seed-0" if name == "a" else "seed-1"))
            (tmp_path / "s" / name / "seeds.json").write_text("{}")
        a = str(tmp_path / "s" / "a")
        b = str(tmp_path / "s" / "b") if case == "seeds on two configs" else b
    out = tmp_path / "out"
    if case == "not empty":
        out.mkdir()
        (out / "keep.txt").write_text("mine")
    if case == "same folder twice":
        b = a
    if case == "out inside a source":
        out = tmp_path / "a" / "merged"
    assert main(["merge", a, b, "--out", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "mine" if case == "not empty" else not out.exists()
    assert not list(tmp_path.glob(".out.*"))  # no partial folder left behind


def test_a_merge_that_fails_midway_leaves_nothing(tmp_path, capsys):
    """Seed 0 merges, seed 1's folders then conflict: the partial folder (seed 0 written) goes, --out is never made."""
    setting = {"model": "tiny", "train": {"lr": 0.001, "seed": 0}}
    for name, seed, label in (("a", 0, "naive"), ("b", 0, "l2sp"), ("a", 1, "naive"), ("b", 1, "naive")):
        _fake(tmp_path / name / f"seed-{seed}", setting, [{"strategy": label, "spec": label,
                                                          "in_domain_gain": {"t": 0.1}}], {"general": [0.5]})
    for name in ("a", "b"):
        (tmp_path / name / "seeds.json").write_text("{}")
    out = tmp_path / "out"
    assert main(["merge", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(out)]) == 2
    assert "row 'naive' is in both" in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.glob(".out.*"))


def test_a_start_scored_before_answer_lengths_were_kept_pairs_with_one_scored_since(tmp_path, capsys):
    setting = {"model": "tiny", "train": {"lr": 0.001, "seed": 0}}
    old = {"general_samples": [{"instructions": {"kind": "mean", "values": [1.0, 0.0], "texts": ["a", "b"]}}]}
    new = {"general_samples": [{"instructions": {**old["general_samples"][0]["instructions"], "lengths": [3, 96],
                                                 "budget": 96}}]}
    row = {"spec": "x", "in_domain_gain": {"t": 0.1}}
    a = _fake(tmp_path / "a", setting, [{**row, "strategy": "naive"}], old)
    b = _fake(tmp_path / "b", setting, [{**row, "strategy": "l2sp"}], new)
    assert main(["merge", a, b, "--out", str(tmp_path / "out")]) == 0
    assert list(_rows(tmp_path / "out")) == ["naive", "l2sp"]
    # Another score for the same item is still another start.
    new["general_samples"][0]["instructions"]["values"] = [1.0, 1.0]
    c = _fake(tmp_path / "c", setting, [{**row, "strategy": "ewc"}], new)
    assert main(["merge", a, c, "--out", str(tmp_path / "out2")]) == 2
    assert "scored the start differently" in capsys.readouterr().err
