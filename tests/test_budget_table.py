"""benchmarks/budget_table.py reads a run over the first tasks of its sequence: the gains right after each task and
at the end of those tasks, and the general change at each of their ends."""

import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).parent.parent / "benchmarks"


@pytest.fixture
def budget_table(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # budget_table imports quality.py beside it
    import budget_table

    yield budget_table
    sys.modules.pop("budget_table", None)


def _point(stage, task, step, delta, se):
    return {"stage": stage, "task": task, "step": step, "delta": delta, "se": se}


RESULTS = {
    "tasks": ["a", "b", "c"],
    # rows: before, after a, after b, after c; columns: a, b, c
    "matrix": [[0.50, 0.40, 0.30],
               [0.70, 0.42, 0.31],
               [0.60, 0.55, 0.33],
               [0.55, 0.50, 0.45]],
    "general_curve": [_point("before", None, 0, 0.0, 0.0), _point("step", "a", 5, -0.09, 0.010),
                      _point("after_task", "a", 10, -0.04, 0.006), _point("after_task", "b", 20, -0.01, 0.007),
                      _point("after_task", "c", 30, -0.08, 0.008)],
}


def test_a_run_is_read_over_its_first_tasks(budget_table, tmp_path):
    found = budget_table.over_tasks(RESULTS, ["a", "b"], tmp_path)
    assert found["gain"] == pytest.approx((0.20 + 0.15) / 2)  # each right after its own training
    assert found["end_gain"] == pytest.approx((0.10 + 0.15) / 2)  # both after b: a lost 0.10 while b trained
    assert (found["change"], found["se"]) == (-0.01, 0.007)  # after b, before c moves it
    # The lowest end of a and b (a step's check is no task's end; c is not read).
    assert found["lowest_end"] == ("a", -0.04, 0.006) and found["ends"] == [(-0.04, 0.006), (-0.01, 0.007)]
    assert found["items"] is None and found["end_items"] is None  # no evaluations.json: no paired s.e.
    one = budget_table.over_tasks(RESULTS, ["a"], tmp_path)
    assert one["gain"] == one["end_gain"] == pytest.approx(0.20) and one["ends"] == [(-0.04, 0.006)]


def test_a_run_that_cannot_be_read_so_is_refused(budget_table, tmp_path):
    with pytest.raises(SystemExit, match="must begin with those"):
        budget_table.over_tasks(RESULTS, ["b"], tmp_path)
    with pytest.raises(SystemExit, match="no general change after 'a'"):
        budget_table.over_tasks({**RESULTS, "general_curve": []}, ["a"], tmp_path)


def test_the_strongest_fixed_setting_names_a_drop_at_an_earlier_end(budget_table):
    row = {"label": "naive", "gain": 0.15, "end_gain": 0.14, "change": 0.0006, "se": 0.0074, "every_end": False}
    assert budget_table.describe(row).endswith("; beyond budget at an earlier task's end)")
    assert budget_table.describe({**row, "every_end": True}) == "naive (gain +0.1500, change +0.0006 ± 0.0074)"
    assert budget_table.describe(row, "end_gain").startswith("naive (gain at the end +0.1400")


def test_the_frontier_is_read_right_after_each_task_and_at_the_end(budget_table):
    # Naive gained 0.15 right after each task, 0.12 at the end; the run 0.10 and 0.11 (its later task gave the earlier
    # one back some). Right after: at gain 0.10 naive's line from (0, 0) to (0.15, -0.02) is at -0.01333, so the run at
    # -0.005 saves +0.00833. At the end: at 0.11 the line to (0.12, -0.02) is at -0.01833, so it saves +0.01333.
    naive = {"label": "naive(lr=0.0002,steps=30)", "gain": 0.15, "end_gain": 0.12, "change": -0.02,
             "items": None, "end_items": None}
    run = {"label": "naive+stop", "gain": 0.10, "end_gain": 0.11, "change": -0.005, "items": None, "end_items": None}
    right_after = budget_table.frontier_lines([run], [naive])
    at_end = budget_table.frontier_lines([run], [naive], "end_gain")
    assert "(+0.1500, -0.0200)" in right_after[1] and "by the gain at the end" not in right_after[1]
    assert "by the gain at the end (gain, change): (+0.0000, +0.0000), (+0.1200, -0.0200)" in at_end[1]
    assert right_after[2].startswith("- naive+stop: change saved at equal gain +0.0083 (no s.e.")
    assert at_end[2].startswith("- naive+stop: change saved at equal gain +0.0133 (no s.e.")
