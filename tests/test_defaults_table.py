"""benchmarks/defaults_table.py: every default's verdicts on the three sequences' means over seeds."""

import pytest

from .conftest import ROOT, load_script

N15 = "naive(lr=0.0002,steps=15)"


def _script():
    return load_script("benchmarks", "defaults_table")


def test_a_cell_by_hand():
    """naive's mean change -0.05, the default's -0.02: 60 % cut. Paired margins over half: -0.01 + 0.02 = 0.01 and
    -0.03 + 0.03 = 0, mean 0.005 (the cut's 10 points above half), s.e. 0.005, 10 points of naive's mean drop."""
    points = {0: {"naive": (0.10, -0.04), N15: (0.05, -0.005), "s": (0.08, -0.01)},
              1: {"naive": (0.12, -0.06), N15: (0.05, -0.005), "s": (0.10, -0.03)}}
    found = _script().cell(points, "s", with_gain=True)
    assert found["seeds"] == [0, 1]
    assert found["cut"] == pytest.approx(0.6) and found["cut_se"] == pytest.approx(0.1)
    assert found["kept"] == pytest.approx(0.09 / 0.11)
    # Seed 0's frontier at gain 0.08: -0.005 + 0.6 x (-0.035) = -0.026, so +0.016 saved; seed 1's at 0.10:
    # -0.005 + (0.05 / 0.07) x (-0.055) = -0.04429, so +0.01429.
    assert found["saved"] == pytest.approx([0.016, -0.03 - (-0.005 - 0.05 / 0.07 * 0.055)])
    assert _script().cell(points, "s", with_gain=False)["kept"] is None
    assert _script().cell(points, "missing", with_gain=True) is None


def test_a_cell_takes_naive_at_its_own_seeds():
    """A default run at seeds 0-2 is set against naive's mean at 0-2, one rerun at 3 and 4 against 0-4."""
    table = _script()
    points = {s: {"naive": (0.1, -0.02 * (s + 1)), "a": (0.1, -0.01 * (s + 1)), "b": (0.1, -0.02)} for s in range(3)}
    points.update({s: {"naive": (0.1, -0.02 * (s + 1)), "a": (0.1, -0.01 * (s + 1))} for s in (3, 4)})
    a, b = table.cell(points, "a", True), table.cell(points, "b", True)
    assert a["seeds"] == [0, 1, 2, 3, 4] and a["cut"] == pytest.approx(0.5)
    assert b["seeds"] == [0, 1, 2] and b["cut"] == pytest.approx(1 - 0.02 / 0.04)
    assert a["saved"] is None  # naive at one setting: no frontier
    assert table.cut_text(a) == "50 % ± 0 (100 %), 5 seeds"
    # Naive without a drop: nothing to cut.
    assert table.cell({0: {"naive": (0.1, 0.01), "a": (0.1, -0.01)}}, "a", True)["cut"] is None


def _cell(cut, cut_se=0.05, saved=None):
    return {"seeds": [0, 1, 2], "cut": cut, "cut_se": cut_se, "kept": None, "saved": saved}


def test_the_cut_verdict_needs_half_on_every_sequence_and_names_the_close_ones():
    verdict = _script().cut_verdict
    assert verdict({"a": _cell(0.9), "b": _cell(0.6)}) == "**yes**"
    assert verdict({"a": _cell(0.9), "b": _cell(0.47)}) == "no (b); within one s.e. of half on b"
    assert verdict({"a": _cell(0.52), "b": _cell(0.3)}) == "no (b); within one s.e. of half on a"
    assert verdict({"a": _cell(0.9), "b": None}) == "not on every sequence"


def test_the_frontier_verdict_counts_seeds_over_the_sequences_with_a_frontier():
    verdict = _script().frontier_verdict
    assert verdict({"a": _cell(1, saved=[0.01, None]), "b": _cell(1, saved=[0.02, 0.01, 0.03])}) == "**above at all 5**"
    assert verdict({"a": _cell(1, saved=[-0.01, 0.02]), "b": _cell(1)}) == "above at 1 of 2"
    assert verdict({"a": _cell(1, saved=[-0.01, -0.02])}) == "below at all 2"
    assert verdict({"a": _cell(1), "b": None}) == "—"


def test_the_short_table_says_a_sequences_seeds_once_where_every_default_has_the_same():
    """The README's form: bundled and `legal` have the same seeds in every default's cell, so their headers say them;
    on `jargon` one default has five, so each cell says its own."""
    table = _script()
    five = {**_cell(0.7), "seeds": [0, 1, 2, 3, 4]}
    cells = {"ewc": {"bundled": _cell(0.6), "`legal`": _cell(0.8), "`jargon`": _cell(0.7)},
             "replay+wise": {"bundled": _cell(0.9), "`legal`": _cell(0.4), "`jargon`": five}}
    header, _, ewc, stack = table.short_markdown(cells).splitlines()
    assert [c.strip() for c in header.strip("|").split("|")][:4] == [
        "default", "bundled (3 seeds)", "`legal` (3 seeds)", "`jargon`"]
    assert [c.strip() for c in ewc.strip("|").split("|")][1:4] == ["60 % ± 5", "80 % ± 5", "70 % ± 5, 3 seeds"]
    assert [c.strip() for c in stack.strip("|").split("|")] == [
        "`[replay, wise]`", "90 % ± 5", "40 % ± 5", "70 % ± 5, 5 seeds", "no (`legal`)", "—"]


def test_one_committed_cell_by_hand():
    """`layerwise` on `jargon` over seeds 0-4: seed 0 from quality-jargon.md's first table (-0.0395 against naive's
    -0.0461), seeds 1-4 from jargon-seeds.json. Changes -0.0395, -0.01198, -0.01161, +0.01570, -0.01769 (mean
    -0.013015) against naive's -0.0461, -0.05069, -0.02121, -0.03116, -0.05976 (mean -0.041782): 1 - 0.31150."""
    table = _script()
    found = table.cell(table.page_points("quality-jargon.md"), "layerwise", with_gain=True)
    assert found["seeds"] == [0, 1, 2, 3, 4]
    assert found["cut"] == pytest.approx(0.6885, abs=2e-4)
    assert found["cut_se"] == pytest.approx(0.1905, abs=2e-4)
    assert table.cell(table.page_points("quality.md"), "layerwise", with_gain=True)["seeds"] == [0, 1, 2]


def test_the_committed_defaults_table_is_what_the_committed_points_give():
    """defaults.md's over-seeds table and naive's line reprint from the committed pages and points files alone."""
    table = _script()
    cells, naive = table.table(table.all_points())
    page = (ROOT / "docs" / "results" / "defaults.md").read_text(encoding="utf-8")
    assert table.markdown(cells) in page
    assert table.naive_lines(naive) in page.replace("\n", " ")


def test_the_readme_holds_the_short_table_the_committed_points_give():
    table = _script()
    cells, _ = table.table(table.all_points())
    assert table.short_markdown(cells) in (ROOT / "README.md").read_text(encoding="utf-8")
