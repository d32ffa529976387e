"""The HTML report: one self-contained file that headless Chromium renders without console errors."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from forgetless.html_report import render_run_html
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
    for section in ("Score matrix", "General ability over training", "Forgetting budget", "Config"):
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
