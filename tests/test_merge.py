"""`forgetless merge`: comparisons run apart on one config, measured again as one."""

from __future__ import annotations

import json
import shutil

import pytest

from forgetless.cli import main
from forgetless.compare import ComparisonRow


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
    assert rows["l2sp"].change_saved_vs_frontier is not None or rows["l2sp"].gain_added_vs_frontier is not None
    table = json.loads((merged / "compare.json").read_text())
    assert table["commands"][-1].startswith("forgetless merge ") and len(table["commands"]) == 3
    assert (merged / "l2sp" / "evaluations.json").exists() and "l2sp" in (merged / "compare.md").read_text()
    # The merged folder's "before" evaluation is reused by a later compare into it, as in any comparison folder.
    assert main(["compare", config, "--strategies", "{name: l2sp, lam: 10}", "--out", str(merged), "--quiet"]) == 0
    assert "before" not in evaluated_stages and "l2sp(lam=10)" in _rows(merged)

    # Per-seed folders merge seed by seed; a seed only one of them ran is kept as it was.
    first, second, over = tmp_path / "s1", tmp_path / "s2", tmp_path / "over"
    shutil.copytree(naive_only, first / "seed-0")
    shutil.copytree(naive_only, first / "seed-1")
    shutil.copytree(l2sp_only, second / "seed-0")
    for folder in (first, second):
        (folder / "seeds.json").write_text("{}")
    assert main(["merge", str(first), str(second), "--out", str(over)]) == 0
    assert list(_rows(over / "seed-0")) == ["naive", "naive(lr=0.001,steps=1)", "l2sp"]
    assert list(_rows(over / "seed-1")) == ["naive", "naive(lr=0.001,steps=1)"]
    summary = json.loads((over / "seeds.json").read_text())
    assert summary["seeds"] == [0, 1] and summary["left_out"] == ["l2sp"]  # l2sp ran at seed 0 only
    assert [row["strategy"] for row in summary["rows"]] == ["naive", "naive(lr=0.001,steps=1)"]


def _fake(folder, setting, rows, log):
    folder.mkdir(parents=True)
    (folder / "compare.json").write_text(json.dumps({"setting": setting, "baseline": "naive", "rows": rows}))
    (folder / "before.json").write_text(json.dumps({"key": {}, "log": log}))
    return str(folder)


@pytest.mark.parametrize("case, message", [
    ("same label", "row 'naive' is in both"),
    ("other config", "differs in ['train']"),
    ("other start", "scored the start differently"),
    ("not empty", "is not empty"),
    ("no comparison", "holds no comparison"),
])
def test_merge_refuses_what_is_not_one_comparison(tmp_path, capsys, case, message):
    setting = {"model": "tiny", "train": {"lr": 0.001}}
    a = _fake(tmp_path / "a", setting, [{"strategy": "naive"}], {"general": [0.5]})
    b_setting = {**setting, "train": {"lr": 0.01}} if case == "other config" else setting
    b_rows = [{"strategy": "naive" if case == "same label" else "l2sp"}]
    b_log = {"general": [0.6]} if case == "other start" else {"general": [0.5]}
    b = _fake(tmp_path / "b", b_setting, b_rows, b_log)
    if case == "no comparison":
        (tmp_path / "b" / "compare.json").unlink()
    out = tmp_path / "out"
    if case == "not empty":
        out.mkdir()
        (out / "keep.txt").write_text("mine")
    assert main(["merge", a, b, "--out", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "mine" if case == "not empty" else not out.exists()
    assert not (tmp_path / ".out.partial").exists()
