"""benchmarks/frontier_resamples.py: a comparison's distances from naive's frontier with their resamples, right after
each task and at the end, read from a compare folder (an older table's distances at the end measured again)."""

import json
import sys
from pathlib import Path

import pytest

from forgetless.cli import main
from forgetless.comparison_rows import ComparisonRow

BENCHMARKS = Path(__file__).parent.parent / "benchmarks"


@pytest.fixture
def frontier_resamples(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import frontier_resamples

    yield frontier_resamples
    sys.modules.pop("frontier_resamples", None)


def test_both_readings_are_printed_and_an_older_table_is_measured_again(frontier_resamples, tmp_path, compare_config):
    out = tmp_path / "cmp"
    assert main(["compare", str(compare_config), "--strategies", "naive", "l2sp", "--frontier-lr", "0.001",
                 "--frontier-steps", "1", "--out", str(out), "--quiet"]) == 0
    table = json.loads((out / "compare.json").read_text())
    l2sp = ComparisonRow(**table["rows"][1])
    assert l2sp.in_domain_gain_at_end != pytest.approx(l2sp.mean_gain)  # the two readings differ here
    assert (l2sp.change_saved_vs_frontier_at_end, l2sp.gain_added_vs_frontier_at_end) != (None, None)
    # A table written before the distances at the end were kept: the script measures them again.
    for row in table["rows"]:
        row["change_saved_vs_frontier_at_end"] = row["gain_added_vs_frontier_at_end"] = None
    (out / "compare.json").write_text(json.dumps(table))
    lines = frontier_resamples.resample_lines(out)
    right_after, at_end = lines[: lines.index("")], lines[lines.index("") + 1:]
    assert right_after[0] == "Right after each task:" and at_end[0].startswith("At the end")
    expected = [(right_after, l2sp.change_saved_vs_frontier, l2sp.gain_added_vs_frontier),
                (at_end, l2sp.change_saved_vs_frontier_at_end, l2sp.gain_added_vs_frontier_at_end)]
    for found, saved, added in expected:
        [line] = [line for line in found if line.startswith("- l2sp:")]
        for value in (saved, added):
            assert "none (beyond" in line if value is None else f"{value:+.4f}" in line
        assert line.count("above the frontier in") == 2
    assert not any(line.startswith("- naive") for line in lines)  # naive rows are the frontier
    (out / "l2sp" / "evaluations.json").unlink()
    with pytest.raises(SystemExit, match="kept no per-item scores"):
        frontier_resamples.resample_lines(out)
