"""`forgetless compare --seeds`: one comparison per training seed, each row summarised over seeds."""

from __future__ import annotations

import json

import pytest
import yaml

from forgetless.cli import main
from forgetless.comparison_rows import ComparisonRow, against_frontier
from forgetless.config import load_config
from forgetless.errors import ForgetlessError
from forgetless.seeds import across_seeds, reuse_before, seeds_figure, summarise, with_seed, write_summary


def _row(label, gain, change, spec=None):
    return ComparisonRow(strategy=label, spec=spec or label, in_domain_gain={"t": gain}, general_delta_abs=change)


def test_summary_over_seeds_by_hand():
    seed0 = [_row("naive", 0.20, -0.04), _row("naive(lr=1)", 0.10, -0.01, "naive"), _row("x", 0.15, -0.01),
             _row("y", 0.30, 0.0)]
    seed1 = [_row("naive", 0.22, -0.02), _row("naive(lr=1)", 0.12, 0.0, "naive"), _row("x", 0.17, -0.03)]
    for rows in (seed0, seed1):
        against_frontier(rows)
    # Seed 0's frontier (0, 0), (0.10, -0.01), (0.20, -0.04): at gain 0.15 naive changes by -0.025, x saves +0.015;
    # at change -0.01 naive gains 0.10, x adds +0.05. Seed 1's (0.12, 0), (0.22, -0.02) (the untrained model is
    # dominated): at 0.17 naive changes by -0.01, x saves -0.02; below its lowest change it gains 0.22, x adds -0.05.
    summary = summarise({1: seed1, 0: seed0})
    assert summary["seeds"] == [0, 1] and summary["left_out"] == ["y"]
    rows = {row["strategy"]: row for row in summary["rows"]}
    assert list(rows) == ["naive", "naive(lr=1)", "x"] and "averaged" not in rows["naive"]
    x = rows["x"]
    assert x["saved_per_seed"] == pytest.approx([0.015, -0.02]) and x["added_per_seed"] == pytest.approx([0.05, -0.05])
    # s.e. over seeds: the s.d. of two values is |a - b| / sqrt 2, over sqrt 2 again.
    assert (x["gain"], x["gain_se"], x["change"], x["change_se"]) == pytest.approx((0.16, 0.01, -0.02, 0.01))
    # The averaged naive points (0.21, -0.03) and (0.11, -0.005) with (0, 0): at gain 0.16 naive changes by -0.0175,
    # at change -0.02 it gains 0.11 + 0.10 * 0.015 / 0.025 = 0.17.
    front = [value for point in summary["averaged_frontier"] for value in point]
    assert front == pytest.approx([0.0, 0.0, 0.11, -0.005, 0.21, -0.03])
    assert x["averaged"] == pytest.approx((-0.0025, -0.01))
    assert across_seeds(x["saved_per_seed"]) == "-0.0025 ± 0.0175; above in 1 of 2"
    # None is beyond the frontier's range on the good side: above, and out of the mean.
    assert across_seeds([None, 0.01, 0.03]) == "+0.0200 ± 0.0100 (1 seeds beyond the range); above in 3 of 3"
    assert across_seeds([-0.01]) == "-0.0100, 1 defined of 1 seeds: no s.e.; above in 0 of 1"
    with pytest.raises(ForgetlessError, match="no seed's comparison"):
        summarise({})

    # The plot: each row's mean with bars of one s.e. over seeds, and the averaged frontier as a line.
    axes = seeds_figure(summary).axes[0]
    frontier = next(line for line in axes.lines if line.get_label().startswith("naive's frontier"))
    assert frontier.get_xydata().ravel().tolist() == pytest.approx([0.0, 0.0, -0.005, 0.11, -0.03, 0.21])
    drawn = {}
    for bars in axes.containers:
        (change, gain), = bars.lines[0].get_xydata().tolist()
        across, up = (collection.get_segments()[0] for collection in bars.lines[2])
        drawn[(round(change, 6), round(gain, 6))] = (across[:, 0].tolist(), up[:, 1].tolist())
    assert len(drawn) == 3 and drawn[(-0.02, 0.16)] == (pytest.approx([-0.03, -0.01]), pytest.approx([0.15, 0.17]))
    assert seeds_figure({**summary, "rows": []}) is None


def test_seeds_measured_in_different_environments_are_named():
    from forgetless.seeds import markdown

    env = {"python": "3.11.7", "device": "cpu", "torch_threads": 2, "packages": {"transformers": "5.25.0"}}
    seed0 = [_row("naive", 0.20, -0.04), _row("x", 0.15, -0.01)]
    seed1 = [_row("naive", 0.22, -0.02), _row("x", 0.17, -0.03), _row("y", 0.3, 0.0)]
    for row in seed0 + seed1:
        row.environment = env
    assert summarise({0: seed0, 1: seed1})["environment_note"] == ""
    seed1[0].environment = {**env, "packages": {"transformers": "5.24.0"}}
    seed1[2].environment = {}  # y is at one seed only: left out of the table, so out of the note
    summary = summarise({0: seed0, 1: seed1})
    note = ("Rows measured in different or unrecorded environments (forgetless.environment): transformers 5.25.0 "
            "(naive at seed 0, x at seed 0, x at seed 1), 5.24.0 (naive at seed 1).")
    assert summary["environment_note"] == note and note in markdown(summary)


def test_over_seeds_the_lowest_change_at_a_task_end_is_averaged_where_there_are_two_tasks():
    from forgetless.seeds import markdown

    def two_tasks(label, ends):
        return ComparisonRow(strategy=label, spec=label, in_domain_gain={"a": 0.1, "b": 0.1}, general_delta_abs=ends[-1],
                             general_delta_se=0.007,
                             general_change_after_each_task={t: (c, 0.007) for t, c in zip("ab", ends)},
                             in_domain_gain_at_end=0.1 + ends[0])

    summary = summarise({0: [two_tasks("naive", (-0.04, 0.0))], 1: [two_tasks("naive", (-0.01, -0.03))]})
    [row] = summary["rows"]
    assert row["task_end"] == pytest.approx((-0.035, 0.005)) and row["task_end_per_seed"] == ["a", "b"]
    assert "-0.0350 ± 0.0050 (after a, b)" in markdown(summary)
    assert row["gain_at_end"] == pytest.approx((0.075, 0.015))  # 0.06 and 0.09: mean, s.d. / sqrt 2 over 2 seeds
    [line] = [line for line in markdown(summary).splitlines() if line.startswith("| naive")]
    assert "+0.0750 ± 0.0150" in [cell.strip() for cell in line.split("|")]
    one_task = summarise({0: [_row("naive", 0.2, -0.04)], 1: [_row("naive", 0.2, -0.02)]})
    assert "task_end" not in one_task["rows"][0] and "at a task end" not in markdown(one_task)


def test_over_seeds_the_change_saved_at_the_end_is_against_each_seeds_own_frontier_at_the_end(tmp_path):
    from forgetless.seeds import markdown

    def row(label, at_end, change, spec=None):
        return ComparisonRow(strategy=label, spec=spec or label, in_domain_gain={"a": 0.2, "b": 0.1},
                             in_domain_gain_at_end=at_end, general_delta_abs=change, general_delta_se=0.007)

    # Seed 0: naive at the end (0.10, -0.02), so at gain 0.08 it changes by -0.016 and x at -0.005 saves +0.011.
    # Seed 1: naive (0.12, -0.03), at 0.06 it changes by -0.015 and x at -0.02 saves -0.005.
    tables = {0: [row("naive", 0.10, -0.02), row("x", 0.08, -0.005)], 1: [row("naive", 0.12, -0.03), row("x", 0.06, -0.02)]}
    for rows in tables.values():
        against_frontier(rows)
    summary = summarise(tables)
    x = next(r for r in summary["rows"] if r["strategy"] == "x")
    assert x["saved_at_end_per_seed"] == pytest.approx([0.011, -0.005])
    [line] = [line for line in markdown(summary).splitlines() if line.startswith("| x")]
    assert "+0.0030 ± 0.0080; above in 1 of 2" in [cell.strip() for cell in line.split("|")]
    # Tables written before the distances at the end were kept: read from their folders, they get them.
    for seed, rows in tables.items():
        folder = tmp_path / f"seed-{seed}"
        folder.mkdir()
        old = [r.model_dump(mode="json", exclude={"change_saved_vs_frontier_at_end"}) for r in rows]
        (folder / "compare.json").write_text(json.dumps({"rows": old}))
    write_summary(tmp_path)
    assert "+0.0030 ± 0.0080; above in 1 of 2" in (tmp_path / "seeds.md").read_text()
    # A seed whose naive row has no gain at the end (written before it was kept): no column, not a partial one.
    tables[1][0].in_domain_gain_at_end = None
    against_frontier(tables[1])
    assert all("saved_at_end_per_seed" not in r for r in summarise(tables)["rows"])
    assert "at the end (own seed's frontier)" not in markdown(summarise(tables))


def test_compare_over_seeds_runs_one_comparison_per_seed(tmp_path, compare_config, evaluated_stages, capsys):
    stages = evaluated_stages
    out = tmp_path / "seeds"
    assert main(["compare", str(compare_config), "--strategies", "naive", "l2sp", "--frontier-steps", "1",
                 "--seeds", "0", "1", "--out", str(out), "--quiet"]) == 0
    assert stages.count("before") == 2  # the seed draws each file task's held-out split, so each scores its own start
    tables = {}
    for seed in (0, 1):
        table = json.loads((out / f"seed-{seed}" / "compare.json").read_text())
        assert table["setting"]["train"]["seed"] == seed and "--seeds 0 1" in table["commands"][0]
        tables[seed] = {row["strategy"]: ComparisonRow(**row) for row in table["rows"]}
    assert tables[0]["naive"].general_after != tables[1]["naive"].general_after  # trained on other batches
    summary = json.loads((out / "seeds.json").read_text())
    l2sp = next(row for row in summary["rows"] if row["strategy"] == "l2sp")
    assert l2sp["gain"] == pytest.approx((tables[0]["l2sp"].mean_gain + tables[1]["l2sp"].mean_gain) / 2)
    assert l2sp["saved_per_seed"] == [tables[s]["l2sp"].change_saved_vs_frontier for s in (0, 1)]
    assert l2sp["added_per_seed"] == [tables[s]["l2sp"].gain_added_vs_frontier for s in (0, 1)]
    assert "# Comparison over seeds 0, 1" in capsys.readouterr().out
    assert "](seeds.png)" in (out / "seeds.md").read_text() and (out / "seeds.png").read_bytes()[:4] == b"\x89PNG"

    # A later call adds a seed; rows it did not run are left out of the summary rather than averaged over fewer seeds.
    assert main(["compare", str(compare_config), "--strategies", "naive", "--seeds", "2", "--out", str(out), "--quiet"]) == 0
    summary = json.loads((out / "seeds.json").read_text())
    assert summary["seeds"] == [0, 1, 2] and [row["strategy"] for row in summary["rows"]] == ["naive"]
    assert summary["left_out"] == ["l2sp", "naive(lr=0.01,steps=1)"]


def test_a_seed_that_draws_no_split_reuses_the_before_evaluation(tmp_path, compare_config, evaluated_stages, capsys):
    """With every task's held-out rows given, seed 1 scores the same items from the same start as seed 0: it reuses
    seed 0's before.json, and that equals what seed 1 evaluates on its own."""
    config = yaml.safe_load(compare_config.read_text())
    for task in config["tasks"]:
        task["heldout_file"] = task["file"]
    given = tmp_path / "given.yaml"
    given.write_text(yaml.safe_dump(config))
    out = tmp_path / "seeds"
    assert main(["compare", str(given), "--strategies", "naive", "--seeds", "0", "1", "--out", str(out)]) == 0
    assert evaluated_stages.count("before") == 1
    assert "seed-0's \"before\" evaluation is reused" in capsys.readouterr().out
    alone = tmp_path / "alone"
    assert main(["compare", str(given), "--strategies", "naive", "--seeds", "1", "--out", str(alone), "--quiet"]) == 0
    assert evaluated_stages.count("before") == 2
    reused, own = (json.loads((d / "seed-1" / "before.json").read_text()) for d in (out, alone))
    assert reused == own
    # A seed that draws the split (the file tasks without held-out files) never takes another seed's start.
    assert reuse_before(out, with_seed(load_config(compare_config), 2), out / "seed-2") is None
    # Nor does a folder that has its own, or where another seed's file is not compare's.
    assert reuse_before(out, with_seed(load_config(given), 1), out / "seed-1") is None
    (out / "seed-0" / "before.json").write_text("[]")
    (out / "seed-1" / "before.json").unlink()
    assert reuse_before(out, with_seed(load_config(given), 1), out / "seed-1") is None


def test_seeds_and_one_seed_tables_do_not_mix(tmp_path, compare_config, capsys):
    out = tmp_path / "seeds"
    (out / "seed-0").mkdir(parents=True)
    (out / "seeds.json").write_text("{}")
    assert main(["compare", str(compare_config), "--strategies", "naive", "--out", str(out)]) == 2
    assert "holds a comparison over seeds" in capsys.readouterr().err
    single = tmp_path / "single"
    single.mkdir()
    (single / "compare.json").write_text("{}")
    assert main(["compare", str(compare_config), "--strategies", "naive", "--seeds", "0", "--out", str(single)]) == 2
    assert "holds a one-seed comparison" in capsys.readouterr().err
    assert main(["compare", str(compare_config), "--strategies", "naive", "--seeds", "3", "3", "--out", str(out)]) == 2
    assert "a seed appears twice" in capsys.readouterr().err
