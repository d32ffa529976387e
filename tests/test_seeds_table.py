"""benchmarks/seeds_table.py: the bundled benchmark over seeds, seed 0 from the committed table."""

import pytest

from .conftest import ROOT, load_script


def _script():
    return load_script("benchmarks", "seeds_table")


def _advice_script():
    return load_script("scripts", "build_advice_evidence")


def test_over_seeds_against_each_seeds_own_frontier_by_hand():
    table = _script()
    n15, n30 = "naive(lr=0.0002,steps=15)", "naive(lr=0.0002,steps=30)"
    points = {
        # Seed 0's frontier: (0, 0), (0.10, -0.01), (0.20, -0.03); the extra setting is not at seed 1: left out.
        0: {n15: (0.10, -0.01), n30: (0.20, -0.03), "naive(lr=0.0003,steps=15)": (0.15, 0.0), "s": (0.15, -0.01)},
        # Seed 1's frontier: (0, 0), (0.10, 0.00), (0.20, -0.04); "s" beyond its largest gain: above, undefined.
        1: {n15: (0.10, 0.0), n30: (0.20, -0.04), "s": (0.25, -0.03)},
    }
    rows = {row["label"]: row for row in table.over_seeds(points)}
    assert set(rows) == {n15, n30, "s"}
    s = rows["s"]
    # Seed 0: the frontier at gain 0.15 is halfway between -0.01 and -0.03, -0.02, so s saves +0.01.
    assert s["saved"][0] == pytest.approx(0.01) and s["saved"][1] is None
    assert s["gain"] == pytest.approx((0.20, 0.05)) and s["worst"] == -0.03  # s.e.: s.d. 0.0707 / sqrt 2
    assert s["change"][0] == pytest.approx(-0.02) and s["change"][1] == pytest.approx(0.01)
    assert rows[n30]["saved"] is None
    text = table.markdown([s])
    assert "| +0.0100 " in text and "| 2 of 2 " in text and "| 0 1 " in text  # one defined value: no s.e.


def test_seed0_points_read_the_committed_quality_table():
    points = _script().seed0_points(ROOT / "docs" / "results" / "quality.md")
    # docs/results/quality.md: wise +0.2561, +0.0422 at +0.0113; the stack is labelled as compare labels it;
    # naive at lr 2e-4 for 30 steps from the "naive setting" table.
    assert points["wise"] == pytest.approx(((0.2561 + 0.0422) / 2, 0.0113))
    assert points["replay+wise"][1] == pytest.approx(0.0034)
    assert points["naive(lr=0.0002,steps=30)"] == pytest.approx((0.1552, -0.0160))


def test_seed0_points_read_a_one_task_table():
    """quality-jargon.md has one "held-out `jargon` gain ± s.e." column and no "mean gain": its first number is the
    gain; "gain added vs frontier" and "gain kept vs naive" are not task gains."""
    points = _script().seed0_points(ROOT / "docs" / "results" / "quality-jargon.md")
    assert points["wise"] == pytest.approx((0.0465, 0.0030))
    assert points["replay+wise"] == pytest.approx((0.0460, 0.0240))
    assert points["naive"] == pytest.approx((0.0318, -0.0461))
    assert points["naive(lr=0.0002,steps=30)"] == pytest.approx((0.0504, -0.0132))


def test_seed0_points_read_the_legal_table_without_a_naive_settings_table():
    """quality-legal.md names its gain column "held-out `legal` score gain" (no s.e.) and ran naive at one setting
    only; rows with parameters keep their table label and never match a run folder's."""
    points = _script().seed0_points(ROOT / "docs" / "results" / "quality-legal.md")
    assert points["naive"] == pytest.approx((0.0021, -0.0578))
    assert points["lwf"] == pytest.approx((0.0194, -0.0108))
    assert points["fip"] == pytest.approx((0.0029, -0.0071))  # "**fip** (anchors: ...)"
    assert points["replay+wise"] == pytest.approx((0.0415, 0.0223))
    assert not any(label.startswith("naive(") for label in points)


def test_naive_at_one_setting_is_no_frontier():
    """Without naive at a second setting the distance columns are "—": a line through naive's one point would call
    a row that gains more than naive's noise "beyond the range" (above) at every seed."""
    table = _script()
    points = {0: {"naive": (0.002, -0.06), "s": (0.04, -0.01)}, 1: {"naive": (-0.001, -0.05), "s": (0.03, 0.0)}}
    rows = {row["label"]: row for row in table.over_seeds(points)}
    assert rows["s"]["saved"] is None and rows["s"]["worst"] == -0.01
    assert rows["s"]["change"][0] == pytest.approx(-0.005)
    line = next(line for line in table.markdown(list(rows.values())).splitlines() if line.startswith("| s "))
    assert [cell.strip() for cell in line.strip("| \n").split("|")][-2:] == ["—", "—"]


def test_the_advice_reads_each_distance_cell_the_table_can_print(tmp_path):
    """seeds_table's cells (mean ± s.e., one defined seed, none defined) as build_advice_evidence reads them: a row
    never keeps seed 0's one-seed distance beside "over N seeds"."""
    build = _advice_script()
    n15, n30 = "naive(lr=0.0002,steps=15)", "naive(lr=0.0002,steps=30)"
    # Both seeds' frontier: (0, 0), (0.10, -0.01), (0.20, -0.03).
    front = {n15: (0.10, -0.01), n30: (0.20, -0.03)}
    points = {
        0: {**front, "one": (0.15, -0.01), "none": (0.25, -0.02), "two": (0.15, -0.03)},
        # "one" beyond the largest gain at seed 1 only; "none" at both; "two" at neither: -0.01 and -0.005.
        1: {**front, "one": (0.25, -0.02), "none": (0.30, -0.02), "two": (0.15, -0.025)},
    }
    table = tmp_path / "quality.md"
    table.write_text(_script().markdown(_script().over_seeds(points)) + "\n")
    rows = build.seeds_rows(table)
    # "one": seed 0 saved -0.01 - (-0.02) = +0.01, undefined at seed 1: +0.0100 without an s.e., above at 2 of 2.
    assert (rows["one"]["change_saved"], rows["one"]["change_saved_se"], rows["one"]["above"]) == (0.01, None, 2)
    assert (rows["none"]["change_saved"], rows["none"]["change_saved_se"], rows["none"]["above"]) == (None, None, 2)
    # "two": -0.01 and -0.005 -> -0.0075 ± 0.0025 (s.d. 0.003536 / sqrt 2), above at 0 of 2.
    assert (rows["two"]["change_saved"], rows["two"]["change_saved_se"], rows["two"]["above"]) == (-0.0075, 0.0025, 0)
    assert rows[n30]["change_saved"] is None and rows[n30]["seeds"] == 2


def test_committed_points_with_a_run_folder_over_them_and_saved_back(tmp_path):
    """A label measured again in a run folder replaces its committed point; the rest stay; --save keeps both."""
    table = _script()
    points = tmp_path / "points.json"
    points.write_text('{"about": "kept", "seeds": {"1": {"a": {"gain": 0.1, "change": -0.01},'
                      ' "b": {"gain": 0.2, "change": -0.02}}}}')
    folder = ({1: {"b": (0.25, -0.03)}, 2: {"c": (0.3, 0.01)}}, {2: {"c": "2026-12-05T01:00:00+00:00"}})
    both = table.merged(table.committed_points(points), folder)
    assert both == ({1: {"a": (0.1, -0.01), "b": (0.25, -0.03)}, 2: {"c": (0.3, 0.01)}},
                    {1: {}, 2: {"c": "2026-12-05T01:00:00+00:00"}})
    table.save_points(points, *both)
    assert table.committed_points(points) == both
    assert '"about": "kept"' in points.read_text()
    assert table.committed_points(tmp_path / "absent.json") == ({}, {})
    assert '"about": "kept",\n' in points.read_text() and '"b": {"gain": 0.25, "change": -0.03}' in points.read_text()
    assert '"c": {"gain": 0.3, "change": 0.01, "measured": "2026-12-05T01:00:00+00:00"}' in points.read_text()


def test_a_folder_row_older_than_the_committed_point_does_not_replace_it(tmp_path, capsys):
    """A folder kept from before a rerun (or a copy of it) must not write the older run back over the newer one:
    an older time, or none (a row written before times were recorded), keeps the committed point; a later replaces."""
    table = _script()
    committed = ({1: {"a": (0.1, -0.01), "b": (0.2, -0.02), "c": (0.3, -0.03)}},
                 {1: {"a": "2026-12-05T01:00:00+00:00", "b": "2026-12-05T01:00:00+00:00", "c": "2026-12-05T01:00:00+00:00"}})
    folder = ({1: {"a": (0.5, -0.05), "b": (0.6, -0.06), "c": (0.7, -0.07)}},
              {1: {"a": "2026-12-04T23:00:00+00:00", "c": "2026-12-05T02:00:00+00:00"}})
    points, measured = table.merged(committed, folder)
    assert points == {1: {"a": (0.1, -0.01), "b": (0.2, -0.02), "c": (0.7, -0.07)}}
    assert measured == {1: {"a": "2026-12-05T01:00:00+00:00", "b": "2026-12-05T01:00:00+00:00",
                            "c": "2026-12-05T02:00:00+00:00"}}
    notes = capsys.readouterr().err
    assert "seed 1, a: the committed point was measured later" in notes and "seed 1, b:" in notes
    assert "seed 1, c:" not in notes
    # Compared as times, not text: 01:30 at +01:00 is 00:30 UTC, before 01:00 UTC written with a "Z".
    points, _ = table.merged(({1: {"a": (0.1, -0.01)}}, {1: {"a": "2026-12-05T01:00:00Z"}}),
                             ({1: {"a": (0.5, -0.05)}}, {1: {"a": "2026-12-05T01:30:00+01:00"}}))
    assert points == {1: {"a": (0.1, -0.01)}}


def test_a_folder_may_not_hold_seed_0(tmp_path):
    """Seed 0 is the committed quality table's: a folder's seed-0 would replace it, and --save would keep it."""
    (tmp_path / "seed-0").mkdir()
    (tmp_path / "seed-0" / "compare.json").write_text('{"rows": []}')
    with pytest.raises(SystemExit, match="seed-0"):
        _script().later_seeds(tmp_path)
    assert _script().later_seeds(tmp_path / "missing") == ({}, {})


@pytest.mark.parametrize("page, points, seeds", [
    ("quality.md", "bundled-seeds.json", [0, 1, 2]), ("quality.md", "bundled-seeds.json", [0, 1, 2, 3]),
    ("quality.md", "bundled-seeds.json", [0, 1, 2, 3, 4]), ("quality.md", "bundled-seeds.json", [0, 1, 2, 3, 4, 5]),
    ("quality.md", "bundled-seeds.json", [0, 1, 2, 3, 4, 5, 6]),
    ("quality-jargon.md", "jargon-seeds.json", [0, 1, 2]),
    ("quality-jargon.md", "jargon-seeds.json", [0, 1, 2, 3, 4]), ("quality-legal.md", "legal-seeds.json", [0, 1, 2]),
    ("quality-legal.md", "legal-seeds.json", [0, 1, 2, 3, 4])])
def test_the_committed_seeds_table_is_what_the_committed_points_give(page, points, seeds):
    """Each page's "strategy over seeds" tables reprint from committed data alone: seed 0 from the page's own first
    tables, later seeds from the points file, no run folder. The three-seed table is the one whose rows are all at
    seeds 0, 1, 2; `jargon` and `legal` also have a five-seed table of every row (seeds 3 and 4 run for each), the
    bundled page four- to seven-seed ones of the rows run at seeds 3 to 6. `forgetless advise` reads each row
    from the widest."""
    table = _script()
    quality = ROOT / "docs" / "results" / page
    points = {0: table.seed0_points(quality), **table.committed_points(ROOT / "docs" / "results" / points)[0]}
    rows = table.over_seeds(table.chosen(points, seeds))
    assert table.markdown(rows) in quality.read_text(encoding="utf-8")
    if seeds == [0, 1, 2]:
        first = _advice_script().table_rows(quality, "strategy over seeds")
        assert [row["strategy over seeds"] for row in first] == [row["label"] for row in rows]


def test_the_advice_reads_drop_cut_and_gain_kept_against_naives_means(tmp_path):
    """build_advice_evidence's drop cut and gain kept of a seeds table: against naive's means over the same seeds,
    none where naive has no drop to cut or no gain to keep."""
    build = _advice_script()
    table = tmp_path / "quality.md"

    def rows(points):
        table.write_text(_script().markdown(_script().over_seeds(points)) + "\n")
        return build.seeds_rows(table)

    # naive: gain 0.11, change -0.05 on the means; s: 0.09, -0.015 -> 1 - 0.015 / 0.05 = 70 % cut, 0.09 / 0.11 kept.
    found = rows({0: {"naive": (0.10, -0.04), "s": (0.08, -0.01)}, 1: {"naive": (0.12, -0.06), "s": (0.10, -0.02)}})
    assert (found["s"]["drop_cut"], found["s"]["gain_kept"], found["s"]["gain_seeds"]) == (0.7, 0.82, 2)
    assert (found["naive"]["drop_cut"], found["naive"]["gain_kept"]) == (0.0, 1.0)
    # Naive gained general score and lost in-domain score: nothing to cut or keep.
    found = rows({0: {"naive": (-0.01, 0.01), "s": (0.08, -0.01)}, 1: {"naive": (-0.02, 0.02), "s": (0.10, -0.02)}})
    assert (found["s"]["drop_cut"], found["s"]["gain_kept"], found["s"]["gain_seeds"]) == (None, None, None)
    # No naive row at all (a table of other rows): none either.
    found = rows({0: {"s": (0.08, -0.01)}, 1: {"s": (0.10, -0.02)}})
    assert (found["s"]["drop_cut"], found["s"]["gain_kept"]) == (None, None)


def test_seeds_choose_the_table_so_rows_at_more_seeds_do_not_empty_it():
    """Seeds 3 and 4 of one row and naive's settings: by default every other row drops out (not at every seed);
    --seeds 0 1 2 keeps the three-seed table, --seeds 0 1 2 3 4 tables the five-seed rows; a seed without points
    is refused."""
    table = _script()
    n15, n30 = "naive(lr=0.0002,steps=15)", "naive(lr=0.0002,steps=30)"
    front = {n15: (0.10, -0.01), n30: (0.20, -0.03)}
    points = {seed: {**front, "a": (0.15, -0.02), "b": (0.15, -0.01)} for seed in (0, 1, 2)}
    points.update({seed: {**front, "a": (0.15, -0.02)} for seed in (3, 4)})

    def labels(chosen):
        return sorted(row["label"] for row in table.over_seeds(chosen))

    assert labels(table.chosen(points, None)) == ["a", n15, n30]
    assert labels(table.chosen(points, [0, 1, 2])) == ["a", "b", n15, n30]
    five = {row["label"]: row for row in table.over_seeds(table.chosen(points, [0, 1, 2, 3, 4]))}
    assert five["a"]["seeds"] == [0, 1, 2, 3, 4] and "b" not in five
    with pytest.raises(SystemExit, match="no points at seed 5"):
        table.chosen(points, [0, 5])


def test_the_advice_reads_each_row_from_the_widest_seeds_table_that_holds_it(tmp_path):
    """Each row from the table over the most seeds that holds it, against that table's naive: a row rerun at more
    seeds is read over all of them, one that was not keeps its table; of two tables as wide, the first."""
    table, build = _script(), _advice_script()
    points = {seed: {"naive": (0.10, -0.04 - 0.01 * seed), "a": (0.08, -0.01), "b": (0.09, -0.02 * seed)}
              for seed in range(5)}
    three = table.markdown(table.over_seeds(table.chosen(points, [0, 1, 2])))
    without_b = {s: {k: v for k, v in p.items() if k != "b"} for s, p in points.items()}
    few = table.markdown(table.over_seeds(table.chosen(without_b, None)))
    page = tmp_path / "quality-jargon.md"
    page.write_text(f"{three}\n\ntext\n\n{few}\n", encoding="utf-8")
    found = build.seeds_rows(page)
    assert (found["a"]["seeds"], found["b"]["seeds"], found["naive"]["seeds"]) == (5, 3, 5)
    # a's cut against naive's mean over the five seeds (-0.06): 1 - 0.01 / 0.06 = 83 %; over three (-0.05) 80 %.
    assert found["a"]["drop_cut"] == 0.83
    assert (found["b"]["general_change"], found["b"]["drop_cut"]) == (-0.02, 0.6)  # 1 - 0.02 / 0.05
    # The same five seeds twice: the first table's row.
    shifted = {s: {**p, "a": (0.08, -0.02)} for s, p in without_b.items()}
    later = table.markdown(table.over_seeds(table.chosen(shifted, None)))
    page.write_text(f"{three}\n\n{few}\n\n{later}\n", encoding="utf-8")
    assert build.seeds_rows(page)["a"]["general_change"] == -0.01
