"""`forgetless compare`: one table over several strategies, sharing the "before" evaluation."""

from __future__ import annotations

import json
import signal
from datetime import datetime, timezone
from pathlib import Path

import pytest
import yaml

from forgetless.cli import main
from forgetless.compare import compare, parse_strategy
from forgetless.comparison_rows import ComparisonRow, against_baseline, fill_formats
from forgetless.config import load_config
from forgetless.errors import ForgetlessError

from .conftest import ctrl_c_when


def test_parse_strategy_reads_names_mappings_and_stacks():
    assert parse_strategy("ewc") == "ewc"
    assert parse_strategy("{name: ewc, lam: 3}") == {"name": "ewc", "lam": 3}
    assert parse_strategy('{"name": "ewc", "lam": 3}') == {"name": "ewc", "lam": 3}
    assert parse_strategy("[replay, wise]") == ["replay", "wise"]
    for bad in ("{lam: 3}", "3", "[replay, wise"):
        with pytest.raises(ForgetlessError, match="--strategies"):
            parse_strategy(bad)


def test_labels_show_a_mapping_knob_as_written_and_long_ones_get_a_short_folder():
    from forgetless.compare import label_of
    from forgetless.comparison_rows import run_folder

    spec = {"name": "l2sp", "target": 0.01, "target_scale": {r"layers\.[0-9]+\.self_attn\.(v|o)_proj": 0.5}}
    assert label_of(spec) == r"l2sp(target=0.01,target_scale={layers\.[0-9]+\.self_attn\.(v|o)_proj: 0.5})"
    assert label_of([spec, "wise"]) == label_of(spec) + "+wise"
    long = [label_of({"name": "l2sp", "target_scale": {"x" * 300 + end: 0.5}}) for end in "ab"]
    folders = [run_folder(label) for label in long]
    assert all(len(f.encode()) <= 200 for f in folders) and folders[0] != folders[1]
    assert run_folder("replay+wise") == "replay+wise" and run_folder("a/b") == "a_b"


def _row(label, delta, gains, seconds):
    return ComparisonRow(strategy=label, spec=label, in_domain_gain=gains, general_delta_abs=delta, seconds_per_step=seconds)


def test_against_baseline_by_hand():
    rows = [
        _row("naive", -0.08, {"a": 0.20, "b": 0.04, "c": -0.01}, 2.0),
        _row("x", -0.02, {"a": 0.18, "b": 0.01, "c": 0.05}, 3.0),
        _row("y", +0.01, {"a": 0.30, "b": 0.06, "c": 0.00}, 1.0),
    ]
    against_baseline(rows, "naive")
    naive, x, y = rows
    assert naive.general_drop_cut == pytest.approx(0.0) and naive.in_domain_gain_kept == pytest.approx(1.0)
    assert x.general_drop_cut == pytest.approx(0.75)  # 1 - 0.02 / 0.08
    assert x.in_domain_gain_kept == pytest.approx(0.25)  # the worst task: b, 0.01 / 0.04 (c: naive did not gain)
    assert x.step_time_ratio == pytest.approx(1.5)
    assert y.general_drop_cut == pytest.approx(1.125) and y.in_domain_gain_kept == pytest.approx(1.5)
    against_baseline(rows, "missing")
    assert x.general_drop_cut is None and x.step_time_ratio is None


def test_the_table_names_rows_measured_in_different_environments():
    from forgetless.comparison_table import markdown
    from forgetless.html_report import render_comparison_html

    def env(transformers, threads=2, platform="Linux-6.1"):
        return {"python": "3.12.3", "platform": platform, "device": "cpu", "torch_threads": threads,
                "packages": {"torch": "2.13.0", "transformers": transformers}}

    rows = [_row("naive", -0.05, {"a": 0.1}, 1.0), _row("ewc", -0.02, {"a": 0.1}, 1.0), _row("old", -0.03, {"a": 0.1}, 1.0)]
    for row in rows:
        row.general_delta_se = 0.008
    rows[0].environment, rows[1].environment = env("5.24.0"), env("5.25.0", threads=4, platform="Linux-6.2")
    table = {"rows": [r.model_dump(mode="json") for r in rows]}
    note = ("Rows measured in different or unrecorded environments (forgetless.environment): torch_threads 2 (naive), 4 (ewc); "
            "transformers 5.24.0 (naive), 5.25.0 (ewc); no record (old: measured before forgetless recorded it).")
    assert note in markdown(table)
    assert "torch_threads 2 (naive), 4 (ewc)" in render_comparison_html(table)
    # The same versions on another kernel, or no record at all: nothing to say.
    rows[1].environment = env("5.24.0", platform="Linux-6.2")
    same = {"rows": [r.model_dump(mode="json") for r in rows[:2]]}
    assert "Rows measured" not in markdown(same) and "Rows measured" not in render_comparison_html(same)
    assert "Rows measured" not in markdown({"rows": [rows[2].model_dump(mode="json")]})
    # A row measured across two environments (a resume, or a shared "before" scored elsewhere) is named on its own.
    rows[0].environment_changes = ["the 'before' evaluation's transformers 5.24.0 -> 5.25.0"]
    assert ("Rows measured across two environments: naive (the 'before' evaluation's transformers 5.24.0 -> 5.25.0)."
            in markdown({"rows": [r.model_dump(mode="json") for r in rows[:2]]}))


def test_the_table_shows_the_lowest_general_change_at_a_task_end(tmp_path):
    from forgetless.comparison_table import markdown, task_end_text

    # Ends within a point of where it started after a drop of 4 points at the first task's end (seed 6's naive at
    # lr 2e-4 for 30 steps, rounded): the final change alone would hide it.
    dipped = ComparisonRow(strategy="naive", spec="naive", in_domain_gain={"a": 0.2, "b": 0.1}, general_before=0.40,
                           general_delta_abs=0.0006, general_delta_se=0.0074,
                           general_change_after_each_task={"a": (-0.0390, 0.0073), "b": (0.0006, 0.0074)},
                           in_domain_gain_at_end=0.12, in_domain_gain_at_end_se=0.0021)
    assert task_end_text(dipped) == "-0.0390 ± 0.0073 (after a)"
    # A row written before the changes were kept: from the general means, without an s.e.
    old = ComparisonRow(strategy="x", spec="x", in_domain_gain={"a": 0.2, "b": 0.1}, general_before=0.40,
                        general_delta_abs=-0.01, general_delta_se=0.007,
                        general_after_each_task={"a": 0.405, "b": 0.39})
    assert task_end_text(old) == "-0.0100 (after b)"
    assert task_end_text(ComparisonRow(strategy="y", spec="y", in_domain_gain={"a": 0.2, "b": 0.1})) == "—"
    table = markdown({"rows": [dipped.model_dump(mode="json"), old.model_dump(mode="json")]})
    rows = [[cell.strip() for cell in line.split("|")[1:-1]] for line in table.splitlines() if line.startswith("|")]
    column = rows[0].index("lowest general change at a task end ± s.e.")
    assert [row[column] for row in rows[2:]] == ["-0.0390 ± 0.0073 (after a)", "-0.0100 (after b)"]
    ends = rows[0].index("mean gain at the end ± s.e.")
    assert [row[ends] for row in rows[2:]] == ["+0.1200 ± 0.0021", "—"]  # the older row kept none
    assert "a difference of means" in table
    one_task = dipped.model_copy(update={"in_domain_gain": {"a": 0.2}})
    assert "at a task end" not in markdown({"rows": [one_task.model_dump(mode="json")]})
    assert "at the end" not in markdown({"rows": [one_task.model_dump(mode="json")]})
    import re

    from forgetless.html_report import render_comparison_html

    page = render_comparison_html({"rows": [dipped.model_dump(mode="json")]})
    headers = re.findall(r"<th>(.*?)</th>", page)
    cells = re.findall(r"<td[^>]*>(.*?)</td>", page)
    assert cells[headers.index("lowest general change at a task end ± s.e.")] == "-0.0390 ± 0.0073 (after a)"
    assert cells[headers.index("mean gain at the end ± s.e.")] == "+0.1200 ± 0.0021"
    assert "at a task end" not in render_comparison_html({"rows": [one_task.model_dump(mode="json")]})
    assert "at the end" not in render_comparison_html({"rows": [one_task.model_dump(mode="json")]})

    # An older row whose run folder is still there gets the changes, with their s.e., from its results.json.
    from forgetless.comparison_rows import fill_task_end_changes

    folder = tmp_path / "x"
    folder.mkdir()
    curve = [{"stage": "before", "task": None, "step": 0, "delta": 0.0, "se": 0.0},
             {"stage": "step", "task": "a", "step": 5, "delta": -0.08, "se": 0.009},
             {"stage": "after_task", "task": "a", "step": 10, "delta": -0.03, "se": 0.006},
             {"stage": "after_task", "task": "b", "step": 20, "delta": -0.01, "se": 0.007}]
    # rows: before, after a, after b; without evaluations.json the gain at the end has no s.e.
    matrix = [[0.5, 0.4], [0.7, 0.42], [0.6, 0.55]]
    (folder / "results.json").write_text(json.dumps({"general_curve": curve, "matrix": matrix}))
    fill_task_end_changes([old], tmp_path)
    assert task_end_text(old) == "-0.0300 ± 0.0060 (after a)"  # a step's check is not a task's end
    assert old.in_domain_gain_at_end == pytest.approx((0.1 + 0.15) / 2) and old.in_domain_gain_at_end_se is None


def test_compare_shares_the_before_evaluation_and_grows_over_invocations(tmp_path, compare_config, evaluated_stages, capsys):
    stages = evaluated_stages
    out = tmp_path / "cmp"
    started = datetime.now(timezone.utc).replace(microsecond=0)
    assert main(["compare", str(compare_config), "--strategies", "naive", "{name: l2sp, lam: 10}", "--out", str(out),
                 "--quiet"]) == 0
    # One "before" evaluation for both rows, then one per task per row.
    assert stages == ["before", "after_task", "after_task", "after_task", "after_task"]
    table = json.loads((out / "compare.json").read_text())
    naive, l2sp = (ComparisonRow(**row) for row in table["rows"])
    assert l2sp.strategy == "l2sp(lam=10)"
    # Each row against its own results.json: gains from the matrix, drop cut and gain kept from naive's.
    results = {r.strategy: json.loads((out / r.strategy / "results.json").read_text()) for r in (naive, l2sp)}
    for row in (naive, l2sp):
        matrix = results[row.strategy]["matrix"]
        assert row.in_domain_gain == pytest.approx({"chat": matrix[1][0] - matrix[0][0], "text": matrix[2][1] - matrix[0][1]})
        assert row.general_delta_abs == pytest.approx(results[row.strategy]["metrics"]["general_delta_abs"])
    assert results["naive"]["general"][0] == results["l2sp(lam=10)"]["general"][0]  # the same "before" record
    # The change at each task's end, straight from the run's evaluation samples: the drop a final change can hide.
    from forgetless.evaluation.evaluator import EvaluationLog
    from forgetless.metrics import general_change

    for row in (naive, l2sp):
        log = EvaluationLog.read(out / row.strategy / "evaluations.json")
        ends = [i for i, r in enumerate(log.general) if r["stage"] == "after_task"]
        direct = {log.general[i]["task"]: general_change(log.general_samples[0], log.general_samples[i]) for i in ends}
        assert list(row.general_change_after_each_task) == list(direct) == ["chat", "text"]
        for task, (change, se) in row.general_change_after_each_task.items():
            assert (change, se) == pytest.approx((direct[task]["delta_abs"], direct[task]["delta_se"]))
        assert direct["text"]["delta_abs"] == pytest.approx(row.general_delta_abs)  # the last task's end is the end
        # The mean in-domain gain at the end: both tasks scored after the last, from the matrix; its s.e. paired.
        matrix = results[row.strategy]["matrix"]
        assert row.in_domain_gain_at_end == pytest.approx((matrix[2][0] - matrix[0][0] + matrix[2][1] - matrix[0][1]) / 2)
    drop = -naive.general_delta_abs  # a random tiny model may gain on the general files: then no drop to cut
    assert l2sp.general_drop_cut == (pytest.approx(1 + l2sp.general_delta_abs / drop) if drop > 0 else None)
    assert l2sp.in_domain_gain_kept == pytest.approx(
        min(l2sp.in_domain_gain[t] / g for t, g in naive.in_domain_gain.items() if g > 0))
    # l2sp keeps one float32 anchor per trained weight: the tiny model's parameters, tied embedding once.
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(yaml.safe_load(compare_config.read_text())["model"])
    assert l2sp.state_mb == pytest.approx(4 * sum(p.numel() for p in model.parameters()) / 2**20)
    assert naive.state_mb == 0 and naive.stores_raw_data == [] and naive.peak_memory_mb > 0
    assert "l2sp(lam=10)" in (out / "compare.md").read_text() and (out / "pareto.png").stat().st_size > 1000
    # Each row carries what it was measured with, from its results.json: this process's versions, so no note.
    from forgetless.environment import run_environment

    for row in (naive, l2sp):
        assert row.environment == results[row.strategy]["environment"] == run_environment()
        assert row.environment_changes == []
    assert "Rows measured" not in (out / "compare.md").read_text()
    assert json.loads((out / "before.json").read_text())["environment"] == run_environment()

    # A second invocation adds a row and reuses the saved "before" evaluation: no "before" scoring at all. Had that
    # evaluation run under other versions, the new row's change spans two environments, and says so.
    saved = json.loads((out / "before.json").read_text())
    now = saved["environment"]
    saved["environment"] = {**now, "packages": {**now["packages"], "transformers": "4.0.0"}}
    (out / "before.json").write_text(json.dumps(saved))
    stages.clear()
    assert main(["compare", str(compare_config), "--strategies", "[replay, l2sp]", "--out", str(out), "--quiet"]) == 0
    assert stages == ["after_task", "after_task"]
    table = json.loads((out / "compare.json").read_text())
    change = f"the 'before' evaluation's transformers 4.0.0 -> {now['packages']['transformers']}"
    assert table["rows"][2]["environment_changes"] == [change] and table["rows"][0]["environment_changes"] == []
    assert f"Rows measured across two environments: replay+l2sp ({change})." in (out / "compare.md").read_text()
    assert [row["strategy"] for row in table["rows"]] == ["naive", "l2sp(lam=10)", "replay+l2sp"]
    assert table["rows"][2]["stores_raw_data"] == ["replay"] and len(table["commands"]) == 2
    assert table["rows"][2]["general_before"] == pytest.approx(naive.general_before)
    # Each row records when it ended, in order (benchmarks/seeds_table.py keeps the later of two measurements).
    ended = [datetime.fromisoformat(row["finished_at"]) for row in table["rows"]]
    assert ended == sorted(ended) and started <= ended[0] and ended[-1] <= datetime.now(timezone.utc)

    # Another config into the same folder is refused, naming what differs.
    changed = yaml.safe_load(compare_config.read_text())
    changed["train"]["lr"] = 1e-3
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump(changed))
    capsys.readouterr()
    assert main(["compare", str(other), "--strategies", "naive", "--out", str(out), "--quiet"]) == 2
    assert "differs in ['train']" in capsys.readouterr().err
    # So is the same config after a task file was edited under the same path: its rows were trained on other rows,
    # and the saved "before" evaluation scored other held-out rows, so it is not reused either.
    from forgetless.compare import load_before

    assert load_before(out, load_config(compare_config)) is not None
    chat = Path(yaml.safe_load(compare_config.read_text())["tasks"][0]["file"])
    chat.write_text(chat.read_text().replace("wait.", "wait a minute."))
    assert load_before(out, load_config(compare_config)) is None
    assert main(["compare", str(compare_config), "--strategies", "naive", "--out", str(out), "--quiet"]) == 2
    assert "differs in ['data_digests.tasks.0.file']: a data file under the same path" in capsys.readouterr().err


def test_a_file_edited_while_compare_runs_keeps_the_row_out_of_the_table(tmp_path, compare_config, monkeypatch):
    from forgetless.training import ContinualRun

    chat = Path(yaml.safe_load(compare_config.read_text())["tasks"][0]["file"])
    original, built = ContinualRun.__init__, []

    def editing(self, config, *args, **kwargs):
        if built:  # the second row reads the file after an edit
            chat.write_text(chat.read_text().replace("wait.", "wait a minute."))
        built.append(1)
        original(self, config, *args, **kwargs)

    monkeypatch.setattr(ContinualRun, "__init__", editing)
    out = tmp_path / "cmp"
    with pytest.raises(ForgetlessError, match=r"row l2sp: \['tasks.0.file'\] edited while compare ran"):
        compare(load_config(compare_config), ["naive", "l2sp"], out, progress=False)
    assert [row["strategy"] for row in json.loads((out / "compare.json").read_text())["rows"]] == ["naive"]


def test_a_compare_stopped_in_a_row_resumes_it_to_the_uninterrupted_table(tmp_path, compare_config, evaluated_stages,
                                                                           monkeypatch, capsys):
    """Ctrl-C in the second row's second task: the first row stays in the table, and `--resume` trains only the rest of
    the cut-off row, from its state, to the rows an uninterrupted comparison writes; a second `--resume` trains nothing."""
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    args = ["compare", str(compare_config), "--strategies", "naive", "{name: l2sp, lam: 10}", "--quiet"]
    assert main([*args, "--out", str(whole)]) == 0
    with ctrl_c_when(lambda callback, state: callback.run.out_dir.name == "l2sp(lam=10)"  # task "text", step 2 of 3
                     and callback.task_index == 1 and state.global_step == 2):
        assert main([*args, "--out", str(cut)]) == 130
    message = capsys.readouterr().err
    assert "interrupted at step 2 of task 'text'" in message and "the same command with --resume" in message
    assert [row["strategy"] for row in json.loads((cut / "compare.json").read_text())["rows"]] == ["naive"]
    # A state that cannot be continued (here: written for another lr) is refused before anything trains.
    state = cut / "l2sp(lam=10)" / "resume" / json.loads((cut / "l2sp(lam=10)/resume/current.json").read_text())["folder"]
    original = (state / "state.json").read_text()
    edited = json.loads(original)
    edited["config"]["train"]["lr"] = 0.5
    (state / "state.json").write_text(json.dumps(edited))
    evaluated_stages.clear()
    assert main([*args, "--out", str(cut), "--resume"]) == 2
    assert "row l2sp(lam=10): --resume: the config differs from the one this run started with, at ['train.lr']" in (
        message := capsys.readouterr().err) and "resume to run that row again from its start)" in message
    assert evaluated_stages == []
    (state / "state.json").write_text(original)
    assert main([*args, "--out", str(cut), "--resume"]) == 0
    assert evaluated_stages == ["after_task"]  # naive kept, l2sp's first task and the "before" evaluation not redone

    def measured(out):
        skip = {"wall_time_s", "seconds_per_step", "step_time_ratio", "peak_memory_mb", "finished_at", "training",
                "resumed"}
        return [{k: v for k, v in row.items() if k not in skip} for row in json.loads((out / "compare.json").read_text())["rows"]]

    assert measured(cut) == measured(whole)
    rows = json.loads((cut / "compare.json").read_text())["rows"]
    assert [row["resumed"] for row in rows] == [False, True]
    # The resumed part timed task "text" from its step 2 of 3: one step, beside the first task's three.
    assert [entry["resumed_at_step"] for entry in rows[1]["training"]] == [0, 2]
    timed = sum(entry["train_seconds"] for entry in rows[1]["training"]) / (3 + 1)
    assert rows[1]["seconds_per_step"] == pytest.approx(timed)
    assert "(since the resume)" in (cut / "compare.md").read_text()
    assert "continued from a killed invocation's resumable state (--resume): l2sp(lam=10)" in (cut / "compare.md").read_text()
    # A row killed after it finished but before its state was removed (a complete results.json beside a state): kept,
    # the leftover state removed.
    from forgetless.resume import ResumeStore

    kept = cut / "l2sp(lam=10)"
    ResumeStore(tmp_path / "old").write({"config": {}}, None, {}, None)
    (tmp_path / "old" / "resume").rename(kept / "resume")
    evaluated_stages.clear()
    assert main([*args, "--out", str(cut), "--resume"]) == 0
    assert evaluated_stages == [] and measured(cut) == measured(whole) and not (kept / "resume").exists()

    # A plain invocation re-measuring both rows, stopped in the first: --resume continues naive and runs l2sp again
    # (the invocation was replacing it) rather than keeping the row it measured before.
    with ctrl_c_when(lambda callback, state: callback.run.out_dir.name == "naive" and callback.task_index == 1
                     and state.global_step == 1):
        assert main([*args, "--out", str(cut)]) == 130
    assert json.loads((cut / "compare.json").read_text())["pending"] == ["naive", "l2sp(lam=10)"]
    l2sp_before = json.loads((cut / "compare.json").read_text())["rows"][1]["finished_at"]
    evaluated_stages.clear()
    assert main([*args, "--out", str(cut), "--resume"]) == 0
    assert evaluated_stages == ["after_task"] * 3  # naive's last task, then both of l2sp's
    table = json.loads((cut / "compare.json").read_text())
    assert "pending" not in table and [row["resumed"] for row in table["rows"]] == [True, False]
    assert table["rows"][1]["finished_at"] >= l2sp_before and measured(cut) == measured(whole)

    # A Ctrl-C after a row's last step (in its last evaluation): the row is finished and written, then compare stops.
    from forgetless.training import ContinualRun

    progress = ContinualRun.write_progress

    def ctrl_c_at_the_end(self):
        if len(self.task_logs) == len(self.tasks) and self.stop_signal is None:
            self.stop_signal = signal.SIGINT
        progress(self)

    with monkeypatch.context() as patch:
        patch.setattr(ContinualRun, "write_progress", ctrl_c_at_the_end)
        assert main([*args, "--out", str(tmp_path / "late")]) == 130
    assert "interrupted after row naive finished; continue with the same command and --resume" in capsys.readouterr().err
    assert [row["strategy"] for row in json.loads((tmp_path / "late" / "compare.json").read_text())["rows"]] == ["naive"]


def test_compare_over_seeds_resumes_a_first_row_cut_off_before_the_start_was_saved(tmp_path, compare_config,
                                                                                 evaluated_stages, monkeypatch, capsys):
    """Ctrl-C in seed 0's first row, before before.json exists; resumed under other versions: the start keeps the
    environment that scored it, the row names the resume's change once, and seed 1 runs after it."""
    import forgetless.compare as compare_module
    import forgetless.training as training
    from forgetless.environment import run_environment

    out = tmp_path / "seeds"
    args = ["compare", str(compare_config), "--strategies", "naive", "--seeds", "0", "1", "--out", str(out), "--quiet"]
    with ctrl_c_when(lambda callback, state: callback.task_index == 1 and state.global_step == 2):
        assert main(args) == 130
    assert not (out / "seed-0" / "before.json").exists() and "--resume" in capsys.readouterr().err
    here = run_environment()
    later = {**here, "packages": {**here["packages"], "transformers": "9.9.9"}}
    for module in (training, compare_module):
        monkeypatch.setattr(module, "run_environment", lambda: later)
    evaluated_stages.clear()
    assert main([*args, "--resume"]) == 0
    assert evaluated_stages == ["after_task", "before", "after_task", "after_task"]  # seed 0's rest, then seed 1
    assert json.loads((out / "seed-0" / "before.json").read_text())["environment"] == here
    [row] = json.loads((out / "seed-0" / "compare.json").read_text())["rows"]
    assert row["resumed"] and row["environment_changes"] == [f"transformers {here['packages']['transformers']} -> 9.9.9"]
    assert sorted(json.loads((out / "seeds.json").read_text())["seeds"]) == [0, 1]


def test_table_settings_compare_data_files_where_both_record_them():
    """A table written before the digests were kept (none in its setting) still takes rows; two that both record
    them differ file by file, and a difference elsewhere is named as before."""
    from forgetless.compare import differences_note, setting_differences

    new = {"train": {"lr": 0.1}, "data_digests": {"tasks.0.file": "a", "general_data": "b"}}
    old = {"train": {"lr": 0.1}}
    assert setting_differences(new, old) == setting_differences(old, new) == []
    edited = {**new, "data_digests": {"tasks.0.file": "a", "general_data": "c"}}
    assert setting_differences(new, edited) == ["data_digests.general_data"]
    assert setting_differences({**old, "train": {"lr": 0.2}}, new) == ["train"]
    assert differences_note(["train"]) == "differs in ['train']"


def test_one_data_file_under_two_spellings_of_its_path_is_one_setting(tmp_path, monkeypatch):
    """A config passed by a relative path spells its files relative to where compare runs; passed by its absolute
    path (or run from another folder), the same files are spelled otherwise. Their content decides, so the table
    grows; other content under either spelling is still refused."""
    from forgetless.compare import setting_differences, table_setting

    (tmp_path / "data").mkdir()
    (tmp_path / "configs").mkdir()
    (tmp_path / "data" / "t.jsonl").write_text('{"text": "a row"}\n')
    (tmp_path / "data" / "g.jsonl").write_text('{"text": "general"}\n')
    (tmp_path / "configs" / "c.yaml").write_text(yaml.safe_dump({
        "model": "tiny", "tasks": [{"name": "t", "file": "../data/t.jsonl"}], "general_data": "../data/g.jsonl"}))
    monkeypatch.chdir(tmp_path)
    relative = table_setting(load_config("configs/c.yaml"))
    absolute = table_setting(load_config(tmp_path / "configs" / "c.yaml"))
    assert relative["general_data"] != absolute["general_data"]  # the spellings this test is about
    assert setting_differences(relative, absolute) == setting_differences(absolute, relative) == []
    (tmp_path / "data" / "g.jsonl").write_text('{"text": "other general"}\n')
    edited = table_setting(load_config(tmp_path / "configs" / "c.yaml"))
    assert setting_differences(relative, edited) == ["general_data", "data_digests.general_data"]
    older = {key: value for key, value in absolute.items() if key != "data_digests"}  # no digests: paths compared
    assert setting_differences(relative, older) == ["general_data", "tasks"]
    # The shared "before" evaluation is reused, not scored again, under either spelling; an edited task file is not.
    from forgetless.compare import before_key, same_before_key

    before = before_key(load_config("configs/c.yaml"))
    assert before["tasks"] != before_key(load_config(tmp_path / "configs" / "c.yaml"))["tasks"]
    assert same_before_key(before, before_key(load_config(tmp_path / "configs" / "c.yaml")))
    (tmp_path / "data" / "t.jsonl").write_text('{"text": "another row"}\n')
    assert not same_before_key(before, before_key(load_config(tmp_path / "configs" / "c.yaml")))
    assert not same_before_key({k: v for k, v in before.items() if k != "data_digests"}, before)


def test_compare_checks_every_entry_before_training(tmp_path, compare_config, capsys):
    out = tmp_path / "cmp"
    assert main(["compare", str(compare_config), "--strategies", "naive", "{name: ewc, lam: fast}", "--out", str(out)]) == 2
    assert "ewc(lam=fast)" in capsys.readouterr().err
    assert not (out / "naive").exists()  # nothing trained



@pytest.mark.parametrize("count", range(1, 10))
def test_bisection_finds_what_the_full_grid_finds_in_log_runs(count):
    import math

    from forgetless.tune import bisect_weakest

    for threshold in range(count + 1):  # indices >= threshold are within budget
        calls = []
        found, evaluated = bisect_weakest(count, lambda i: calls.append(i) or i >= threshold)
        assert found == (threshold if threshold < count else None)
        assert evaluated == calls and len(set(calls)) == len(calls)
        assert len(calls) <= math.ceil(math.log2(count + 1))


def test_tune_grids_and_specs():
    from forgetless.config import parse_config
    from forgetless.strategies import _REGISTRY
    from forgetless.tune import _spec_with, default_grid

    assert default_grid(_REGISTRY["ewc"], "lam") == [1.5625, 6.25, 25, 100, 400, 1600, 6400]  # around ewc's default, 100
    assert default_grid(_REGISTRY["wise"], "alpha") == [1.0, 0.5, 0.25, 0.125, 0.0625]  # weakest (largest) first
    assert default_grid(_REGISTRY["replay"], "ratio")[-2:] == [0.4, 0.5]  # not past the bound its check enforces
    assert default_grid(_REGISTRY["ewc"], "target") == [0.032, 0.016, 0.008, 0.004, 0.002, 0.001, 0.0005]  # its centre
    base = {"tasks": [{"name": "s", "builtin": "support"}]}
    assert _spec_with(parse_config(base), "ewc", "lam", 3.0) == [{"name": "ewc", "lam": 3.0}]
    stacked = parse_config({**base, "strategies": ["replay", {"name": "ewc", "samples": 8}]})
    assert _spec_with(stacked, "ewc", "lam", 3.0) == ["replay", {"name": "ewc", "samples": 8, "lam": 3.0}]


def test_tune_bisects_through_compare_and_picks_the_best_gain_within_budget(tmp_path, compare_config, capsys):
    out = tmp_path / "tune"
    # A budget no change of this tiny run reaches: every point is within it, so bisection walks to the weakest.
    assert main(["tune", str(compare_config), "--knob", "l2sp.lam", "--budget", "5", "--values", "100", "0.01", "1",
                 "--steps", "2", "--out", str(out), "--quiet"]) == 0
    summary = json.loads((out / "tune.json").read_text())
    assert summary["grid"] == [0.01, 1.0, 100.0] and [e["value"] for e in summary["evaluated"]] == [1.0, 0.01]
    assert summary["runs"] == 2 and summary["grid_runs"] == 3 and summary["weakest_within_budget"] == 0.01
    rows = {row["strategy"]: row for row in json.loads((out / "compare.json").read_text())["rows"]}
    assert sorted(rows) == ["l2sp(lam=0.01)", "l2sp(lam=1.0)"]
    gains = {label: sum(r["in_domain_gain"].values()) / 2 for label, r in rows.items()}
    assert summary["chosen"] == (0.01 if gains["l2sp(lam=0.01)"] >= gains["l2sp(lam=1.0)"] else 1.0)
    assert all(r["training"][0]["train_seconds"] > 0 for r in rows.values())
    assert "Cost: 2 runs" in (out / "tune.md").read_text()
    # Run again with --resume (as after a kill once both points were done): they are kept, nothing trains, same choice.
    first = summary
    assert main(["tune", str(compare_config), "--knob", "l2sp.lam", "--budget", "5", "--values", "100", "0.01", "1",
                 "--steps", "2", "--out", str(out), "--quiet", "--resume"]) == 0
    summary = json.loads((out / "tune.json").read_text())
    assert {k: v for k, v in summary.items() if k != "command"} == {k: v for k, v in first.items() if k != "command"}
    assert all(r["finished_at"] == rows[r["strategy"]]["finished_at"]
               for r in json.loads((out / "compare.json").read_text())["rows"])
    assert main(["tune", str(compare_config), "--knob", "l2sp.weight", "--budget", "0.01", "--out", str(out)]) == 2
    assert "has no parameter 'weight'" in capsys.readouterr().err


def test_frontier_by_hand():
    from forgetless.frontier import change_at, distances, gain_at, pareto

    # Naive at three schedules plus the untrained model; (0.10, -0.06) is dominated by (0.12, -0.05).
    front = pareto([(0.0, 0.0), (0.05, -0.01), (0.10, -0.06), (0.12, -0.05), (0.20, -0.08)])
    assert front == [(0.0, 0.0), (0.05, -0.01), (0.12, -0.05), (0.20, -0.08)]
    assert change_at(front, 0.16) == pytest.approx(-0.065)  # halfway between (0.12, -0.05) and (0.20, -0.08)
    assert gain_at(front, -0.03) == pytest.approx(0.085)  # halfway between (0.05, -0.01) and (0.12, -0.05)
    assert change_at(front, 0.25) is None and gain_at(front, 0.01) is None  # beyond naive's reach
    # A strategy at (0.16, -0.02): loses 0.045 less than naive at its gain, learns 0.16 - 0.0675 more at its change.
    saved, added = distances(front, (0.16, -0.02))
    assert saved == pytest.approx(0.045) and added == pytest.approx(0.16 - 0.0675)
    # A point on the frontier is at distance 0 both ways.
    assert distances(front, (0.12, -0.05)) == (pytest.approx(0.0), pytest.approx(0.0))
    # Below the frontier's range: a drop bigger than naive's largest is measured against naive's largest gain.
    assert gain_at(front, -0.10) == pytest.approx(0.20)
    # Training less cost nothing here: (0.14, +0.001) dominates the untrained model, so the frontier starts there and a
    # strategy with less gain and a drop, (0.12, -0.01), saved -0.011 at equal gain and added -0.02 at equal change.
    front = pareto([(0.0, 0.0), (0.14, 0.001), (0.155, -0.016), (0.145, -0.08)])
    assert front == [(0.14, 0.001), (0.155, -0.016)]
    assert distances(front, (0.12, -0.01)) == (pytest.approx(-0.011), pytest.approx(0.12 - (0.14 + 0.015 * 11 / 17)))


def test_the_frontier_at_the_end_by_hand():
    from forgetless.comparison_rows import against_frontier
    from forgetless.comparison_table import markdown

    def row(label, gains, at_end, change, spec=None):
        return ComparisonRow(strategy=label, spec=spec or label, in_domain_gain=gains, in_domain_gain_at_end=at_end,
                             general_delta_abs=change, general_delta_se=0.007)

    # Naive gains a lot right after each task but the second task takes part of the first's back; the strategy keeps
    # it. At the end naive's frontier is (0, 0), (0.10, -0.01), (0.20, -0.05): at gain 0.15 naive changes by -0.03, so
    # the strategy at (0.15, -0.02) saves +0.01; at change -0.02 naive gains 0.10 + 0.10 * 0.01 / 0.04 = 0.125, so it
    # adds +0.025. Right after each task (naive at 0.15 and 0.27, the strategy at 0.16) it saves 0.16 on the segment
    # from (0.15, -0.01) to (0.27, -0.05): -0.02 - (-0.01 - 0.04 / 12) = -0.00667, below the frontier.
    rows = [row("naive", {"a": 0.30, "b": 0.24}, 0.20, -0.05), row("naive(lr=1)", {"a": 0.16, "b": 0.14}, 0.10, -0.01, "naive"),
            row("keeps", {"a": 0.18, "b": 0.14}, 0.15, -0.02)]
    against_frontier(rows)
    keeps = rows[2]
    assert keeps.change_saved_vs_frontier == pytest.approx(-0.02 + 0.01 + 0.04 / 12)
    assert (keeps.change_saved_vs_frontier_at_end, keeps.gain_added_vs_frontier_at_end) == (
        pytest.approx(0.01), pytest.approx(0.025))
    assert rows[0].change_saved_vs_frontier_at_end is None  # naive rows trace the frontier
    table = markdown({"rows": [r.model_dump(mode="json") for r in rows]})
    lines = [[cell.strip() for cell in line.split("|")[1:-1]] for line in table.splitlines() if line.startswith("|")]
    column = lines[0].index("change saved vs frontier at the end ± s.e.")
    assert [line[column] for line in lines[2:]] == ["—", "—", "+0.0100"]  # no evaluations.json here: no s.e.
    # A naive setting without its gain at the end (a row from before it was kept): no frontier at the end rather than
    # one missing a setting, which would flatter every other row.
    rows[1].in_domain_gain_at_end = None
    against_frontier(rows)
    assert keeps.change_saved_vs_frontier_at_end is None and keeps.change_saved_vs_frontier is not None
    # One task: its gain at the end is the gain right after it, so there is no second frontier.
    one = [r.model_copy(update={"in_domain_gain": {"a": r.in_domain_gain["a"]}}) for r in rows]
    one[1].in_domain_gain_at_end = 0.10
    against_frontier(one)
    assert one[2].change_saved_vs_frontier_at_end is None
    assert "frontier at the end" not in markdown({"rows": [r.model_dump(mode="json") for r in one]})


def test_compare_traces_naives_frontier_with_one_before_evaluation(tmp_path, compare_config, evaluated_stages):
    from forgetless.comparison_rows import frontier_noise, naive_frontier
    from forgetless.evaluation.evaluator import EvaluationLog
    from forgetless.frontier import distances, naive_front
    from forgetless.frontier_noise import RunItems, frontier_distance_se

    stages = evaluated_stages
    out = tmp_path / "front"
    assert main(["compare", str(compare_config), "--strategies", "naive", "l2sp", "--frontier-steps", "1",
                 "--frontier-lr", "0.001", "0.01", "--out", str(out), "--quiet"]) == 0
    assert stages.count("before") == 1
    rows = [ComparisonRow(**row) for row in json.loads((out / "compare.json").read_text())["rows"]]
    labels = [r.strategy for r in rows]
    assert labels == ["naive", "l2sp", "naive(lr=0.001,steps=1)", "naive(lr=0.01,steps=1)"]
    assert rows[2].train_override == {"lr": 0.001, "steps": 1} and len(rows[2].training) == 2
    l2sp = rows[1]
    front = naive_frontier(rows)
    naive_points = [(r.mean_gain, r.general_delta_abs) for r in rows if r.is_naive] + [(0.0, 0.0)]
    for g, c in naive_points:  # every naive point is on the frontier or below-left of one of its points
        assert any(fg >= g and fc >= c for fg, fc in front)
    assert (l2sp.change_saved_vs_frontier, l2sp.gain_added_vs_frontier) == distances(
        front, (l2sp.mean_gain, l2sp.general_delta_abs))
    assert rows[0].change_saved_vs_frontier is None  # naive rows are the frontier, not measured against it
    # The distances' s.e. come from the runs' own items, the naive rows' and l2sp's, read from their folders.
    items = {r.strategy: RunItems.from_log(EvaluationLog.read(out / r.strategy / "evaluations.json"), ["chat", "text"])
             for r in rows}
    saved_se, added_se = frontier_distance_se([items[r.strategy] for r in rows if r.is_naive], [items["l2sp"]])[0]
    assert (l2sp.change_saved_vs_frontier_se, l2sp.gain_added_vs_frontier_se) == (
        None if l2sp.change_saved_vs_frontier is None else saved_se, None if l2sp.gain_added_vs_frontier is None else added_se)
    assert l2sp.gain_added_vs_frontier_se is not None
    assert f"{l2sp.gain_added_vs_frontier:+.4f} ± {l2sp.gain_added_vs_frontier_se:.4f}" in (out / "compare.md").read_text()
    # By the gain at the end: the points and the items after the last task, not right after each task. The gain at
    # the end is the score matrix's last row less its first (results.json), and the items' own point agrees.
    assert l2sp.in_domain_gain_at_end != pytest.approx(l2sp.mean_gain)
    matrix = json.loads((out / "l2sp" / "results.json").read_text())["matrix"]
    assert l2sp.in_domain_gain_at_end == pytest.approx(sum(matrix[-1][j] - matrix[0][j] for j in range(2)) / 2)
    front_end = naive_frontier(rows, at_end=True)
    assert front_end == naive_front([(r.in_domain_gain_at_end, r.general_delta_abs) for r in rows if r.is_naive])
    assert (l2sp.change_saved_vs_frontier_at_end, l2sp.gain_added_vs_frontier_at_end) == distances(
        front_end, (l2sp.in_domain_gain_at_end, l2sp.general_delta_abs))
    at_end = {r.strategy: RunItems.from_log(EvaluationLog.read(out / r.strategy / "evaluations.json"), ["chat", "text"],
                                            at_end=True) for r in rows}
    assert l2sp.in_domain_gain_at_end == pytest.approx(sum(
        at_end["l2sp"].held_out_after[t].score() - at_end["l2sp"].held_out_before[t].score() for t in ("chat", "text")) / 2)
    saved_se, added_se = frontier_distance_se([at_end[r.strategy] for r in rows if r.is_naive], [at_end["l2sp"]])[0]
    assert (l2sp.change_saved_vs_frontier_at_end_se, l2sp.gain_added_vs_frontier_at_end_se) == (
        None if l2sp.change_saved_vs_frontier_at_end is None else saved_se,
        None if l2sp.gain_added_vs_frontier_at_end is None else added_se)
    assert (l2sp.change_saved_vs_frontier_at_end_se, l2sp.gain_added_vs_frontier_at_end_se) != (None, None)
    # A naive row without its items (a run from before they were kept): no s.e., rather than one from fewer runs.
    (out / "naive(lr=0.001,steps=1)" / "evaluations.json").unlink()
    frontier_noise(rows, out)
    assert l2sp.gain_added_vs_frontier_se is None and l2sp.gain_added_vs_frontier is not None
    assert (l2sp.change_saved_vs_frontier_at_end_se, l2sp.gain_added_vs_frontier_at_end_se) == (None, None)

    # Frontier points alone can join the table (no --strategies): no "before" scoring, the earlier rows kept and
    # measured again against the frontier that now includes the new point.
    stages.clear()
    assert main(["compare", str(compare_config), "--frontier-lr", "0.001", "--frontier-steps", "2", "--out", str(out),
                 "--quiet"]) == 0
    assert stages == ["after_task", "after_task"]
    table = json.loads((out / "compare.json").read_text())
    rows = [ComparisonRow(**row) for row in table["rows"]]
    assert [r.strategy for r in rows] == [*labels, "naive(lr=0.001,steps=2)"]
    assert "--strategies" not in table["commands"][-1] and "--frontier-steps 2" in table["commands"][-1]
    l2sp = rows[1]
    assert (l2sp.change_saved_vs_frontier, l2sp.gain_added_vs_frontier) == distances(
        naive_frontier(rows), (l2sp.mean_gain, l2sp.general_delta_abs))


def test_compare_with_nothing_to_run_is_refused(tmp_path, compare_config, capsys):
    out = tmp_path / "cmp"
    # The config's own lr and steps are not a frontier point: that run is the naive row itself.
    assert main(["compare", str(compare_config), "--frontier-lr", "0.01", "--frontier-steps", "3", "--out", str(out)]) == 2
    assert "nothing to run: give --strategies" in capsys.readouterr().err
    assert not out.exists()


def test_compare_shows_generation_checks_when_the_run_scores_them(tmp_path, compare_config, monkeypatch):
    import forgetless.evaluation.instructions as instructions

    # The tiny model writes no structure: the start answers the second prompt (3 bullets) in prose, and every later
    # evaluation with the bullets inside more text, so `formats` moves by +1 (one such prompt of the first 4). The
    # start's answers end by themselves, every later one runs to the budget: `stops` moves by -1.
    calls = []

    def answers(model, tokenizer, prompts, max_new_tokens, progress=False):
        calls.append(len(prompts))
        texts = ["Three facts." if len(calls) == 1 else "Facts:\n- a\n- b\n- c\nMore." for _ in prompts]
        return texts, [3 if len(calls) == 1 else max_new_tokens for _ in prompts]

    monkeypatch.setattr(instructions, "generate_with_lengths", answers)
    data = yaml.safe_load(compare_config.read_text())
    data["eval"] = {"suites": ["instructions"], "limit": 4}
    data["train"]["steps"] = 1
    config = tmp_path / "gen.yaml"
    config.write_text(yaml.safe_dump(data))
    out = tmp_path / "gen"
    assert main(["compare", str(config), "--strategies", "naive", "--out", str(out), "--quiet"]) == 0
    [row] = json.loads((out / "compare.json").read_text())["rows"]
    results = json.loads((out / "naive" / "results.json").read_text())
    for name in ("instructions", "leakage"):
        task = results["metrics"]["general_tasks"][name]
        assert row["generation"][name] == [pytest.approx(task["delta"]), pytest.approx(task["se"])]
    assert row["generation"]["formats"] == [1.0, 0.0]  # one prompt: no spread over resamples
    assert row["generation"]["instructions"][0] == 0.0  # the bullets with more text fail the strict check
    table = (out / "compare.md").read_text()
    assert row["generation"]["stops"] == [-1.0, 0.0]  # every answer now cut at the budget; all alike, no spread
    assert (table.index("| instructions ± s.e.") < table.index("| formats ± s.e.") < table.index("| stops ± s.e.")
            < table.index("| leakage ± s.e."))
    assert "formats: of the answers asked for a JSON object" in table and "stops: the share of" in table
    assert "No stops for a row" not in table
    # A row written before `formats` existed gets it from its run folder.
    data = json.loads((out / "compare.json").read_text())
    del data["rows"][0]["generation"]["formats"]
    (out / "compare.json").write_text(json.dumps(data))
    rows = [ComparisonRow(**r) for r in data["rows"]]
    fill_formats(rows, out)
    assert list(rows[0].generation["formats"]) == row["generation"]["formats"]
    # A row whose start kept no answer lengths (an older before.json) has no stops, and the table says why.
    from forgetless.comparison_table import markdown

    del data["rows"][0]["generation"]["stops"]
    assert "No stops for a row whose start or end evaluation kept no answer lengths" in markdown(data)
