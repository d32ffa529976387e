"""The HTML report: one self-contained file that headless Chromium renders without console errors."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from forgetless.html_report import render_comparison_html, render_run_html
from forgetless.training import run_continual

from .conftest import tiny_config

CHROMIUM = shutil.which("chromium")


def _render(page, out_png):
    """(console messages, screenshot) of `page` in headless Chromium."""
    done = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0",
         f"--screenshot={out_png}", "--window-size=1200,2400", "--hide-scrollbars", page.as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    console = [line for line in done.stderr.splitlines() if ":CONSOLE" in line]
    return console, out_png


def _ink(png) -> float:
    """The share of pixels that are not (near) white."""
    from matplotlib.image import imread

    pixels = imread(png)[..., :3]
    return float((pixels.min(axis=-1) < 0.9).mean())


@pytest.fixture
def run_folder(tmp_path, task_files, tiny_lm, tokenizer):
    config = tiny_config(
        task_files, eval={"suites": [], "tasks": [{"name": "mc", "file": task_files["mc"]}], "every_steps": 2},
        strategies=["l2sp"], budget={"max_general_drop": 0.01, "on_exceed": "strengthen"},
    )
    run_continual(config, tmp_path / "run", model=tiny_lm, tokenizer=tokenizer, progress=False)
    return tmp_path / "run"


def test_report_html_is_self_contained(run_folder):
    page = (run_folder / "report.html").read_text()
    assert not re.search(r"""(src|href)=["'](https?:)?//""", page)  # nothing fetched from a network
    assert "<script" not in page
    assert page.count("data:image/png;base64,") == 3  # change band, task scores, score matrix
    for section in ("Score matrix", "General ability over training", "Forgetting budget", "Config", "Environment"):
        assert section in page


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make test installs it as root)")
def test_chromium_renders_the_report_without_console_errors(run_folder, tmp_path):
    # The check itself can fail: a page with a script error is caught.
    broken = tmp_path / "broken.html"
    broken.write_text("<!DOCTYPE html><html><body><p>x</p><script>missingFunction();</script></body></html>")
    console, _ = _render(broken, tmp_path / "broken.png")
    assert any("missingFunction" in line for line in console)

    console, png = _render(run_folder / "report.html", tmp_path / "report.png")
    assert console == []
    assert _ink(png) > 0.03  # text, tables and three plots, not a blank page
    blank = tmp_path / "blank.html"
    blank.write_text("<!DOCTYPE html><html><body></body></html>")
    assert _ink(_render(blank, tmp_path / "blank.png")[1]) < 0.001


def test_run_html_renders_from_results_json_alone(run_folder):
    from forgetless.results import RunResults

    results = RunResults.read(run_folder / "results.json")
    assert render_run_html(results) == (run_folder / "report.html").read_text()
    assert [p.step for p in results.general_curve] == [r.step for r in results.general]
    assert results.general_curve[0].delta == 0 and results.general_curve[-1].delta == pytest.approx(
        results.metrics.general_delta_abs)


def _comparison_table() -> dict:
    """Three hand-made rows: naive at two settings (its frontier) and a strategy with generation checks."""
    def row(label, spec, gains, change, **extra):
        return {"strategy": label, "spec": spec, "in_domain_gain": gains, "in_domain_gain_se": {t: 0.003 for t in gains},
                "general_delta_abs": change, "general_delta_se": 0.007, "peak_memory_mb": 4488.07, "state_mb": 0.0,
                "seconds_per_step": 7.0, **extra}

    rows = [row("naive", "naive", {"a": 0.26, "b": 0.03}, -0.08),
            row("naive(lr=0.0002,steps=15)", "naive", {"a": 0.25, "b": 0.04}, -0.005, train_override={"lr": 2e-4, "steps": 15}),
            row("ewc", "ewc", {"a": 0.26, "b": 0.035}, -0.002, generation={"instructions": (-0.236, 0.049)})]
    return {"commands": ["forgetless compare c.yaml --strategies naive ewc --frontier-lr 2e-4 --frontier-steps 15"],
            "baseline": "naive", "rows": rows}


def test_comparison_html_is_self_contained_and_carries_the_frontier_and_generation_checks():
    from forgetless.comparison_rows import ComparisonRow, against_baseline

    table = _comparison_table()
    rows = [ComparisonRow(**r) for r in table["rows"]]
    against_baseline(rows)  # fills drop cut, gain kept and the distances from naive's frontier, as compare does
    table["rows"] = [r.model_dump(mode="json") for r in rows]
    ewc = rows[2]
    page = render_comparison_html(table)
    assert not re.search(r"""(src|href)=["'](https?:)?//""", page) and "<script" not in page
    assert page.count("data:image/png;base64,") == 1  # the Pareto plot
    # Naive's frontier: (0, 0) and (0.145, -0.005) (which dominates naive's own (0.145, -0.08)). ewc's mean gain
    # 0.1475 is beyond it: no change saved; at its change -0.002 naive gains 0.145 * 0.002 / 0.005 = 0.058, so ewc
    # adds 0.0895. Its instruction check and the memory are shown formatted.
    assert ewc.change_saved_vs_frontier is None and ewc.gain_added_vs_frontier == pytest.approx(0.0895)
    assert "+0.0895" in page
    assert "-0.236 ± 0.049" in page and "4,488 MiB" in page and "change saved vs naive" in page


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make test installs it as root)")
def test_chromium_renders_the_comparison_without_console_errors(tmp_path):
    from forgetless.comparison_table import write_table

    write_table(_comparison_table(), tmp_path)
    console, png = _render(tmp_path / "compare.html", tmp_path / "compare.png")
    assert console == []
    assert _ink(png) > 0.01  # a table and the Pareto plot on a page shorter than the window (blank: < 0.001)
