import json

import pytest

from forgetless.cli import main


def test_eval_writes_the_documented_json(tmp_path, tiny_model_folder):
    mc = tmp_path / "quiz.jsonl"
    mc.write_text(
        "".join(
            json.dumps({"question": f"Question: {i}?\nAnswer:", "choices": ["yes", "no", "maybe"], "answer": i % 3}) + "\n"
            for i in range(9)
        )
    )
    text = tmp_path / "prose.jsonl"
    text.write_text('{"text": "A sentence of plain English."}\n{"text": "Another one."}\n')
    out = tmp_path / "scores.json"
    code = main(["eval", "--model", str(tiny_model_folder), "--task-file", str(mc), "--task-file", str(text), "--json", str(out)])
    assert code == 0
    scores = json.loads(out.read_text())["tasks"]
    # The same numbers as the library's own scoring of the same files with the same model.
    from forgetless.evaluation.suites import load_eval_file
    from forgetless.models import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(str(tiny_model_folder))
    for name, path in (("quiz", mc), ("prose", text)):
        direct = load_eval_file(name, path).evaluate(model, tokenizer).summary
        assert scores[name] == pytest.approx(direct), name
    assert scores["quiz"]["n"] == 9 and set(scores) == {"quiz", "prose"}


@pytest.mark.parametrize(
    "argv, message",
    [
        (["eval", "--model", "/nowhere/model", "--task-file", "x.jsonl"], "not found"),
        (["eval", "--model", "default"], "--task-file"),
        (["eval", "--model", "default", "--suite", "generel"], "unknown suite 'generel'; known: general"),
        (["run", "/nowhere/run.yaml", "--out", "o"], "config file not found"),
    ],
)
def test_bad_input_is_a_clear_error_not_a_traceback(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_run_with_a_wrong_type_names_the_field(tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text("tasks: [{name: s, builtin: support}]\ntrain: {steps: many}\n")
    assert main(["run", str(config), "--out", str(tmp_path / "o")]) == 2
    assert "train.steps" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # nothing was started


def test_unknown_strategy_in_a_run_lists_known_names(tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text("tasks: [{name: s, builtin: support}]\nstrategies: [ewc2]\n")
    assert main(["run", str(config), "--out", str(tmp_path / "o")]) == 2
    assert "unknown strategy 'ewc2'; known: " in capsys.readouterr().err


def test_strategies_command_lists_naive(capsys):
    assert main(["strategies"]) == 0
    assert "naive" in capsys.readouterr().out


def test_a_limit_below_one_is_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "--model", "default", "--suite", "general", "--limit", "-1"])
    assert exit_info.value.code == 2 and "--limit: must be at least 1, got -1" in capsys.readouterr().err


def test_an_unwritable_out_or_json_is_refused_before_the_model_loads(tmp_path, task_files, monkeypatch, capsys):
    import forgetless.models
    import forgetless.training

    # Tests run as root, whom chmod does not stop: a path under a file cannot be written by anyone.
    blocker = tmp_path / "somefile"
    blocker.write_text("not a folder\n")
    for module in (forgetless.models, forgetless.training):
        for name in ("load_model", "load_tokenizer", "load_model_and_tokenizer"):
            monkeypatch.setattr(module, name, lambda *a, **k: pytest.fail("the model loaded before the refusal"), raising=False)
    config = tmp_path / "run.yaml"
    config.write_text(json.dumps({"model": "tiny", "tasks": [{"name": "chat", "file": task_files["chat"]}],
                                  "eval": {"suites": []}}))
    cases = [
        (["run", str(config), "--out", str(blocker / "out")], f"--out {blocker / 'out'} cannot be written: {blocker} is a file"),
        (["compare", str(config), "--strategies", "naive", "--out", str(blocker / "out")], f"--out {blocker / 'out'} cannot"),
        (["eval", "--model", "tiny", "--task-file", task_files["mc"], "--json", str(blocker / "scores.json")],
         f"--json {blocker / 'scores.json'} cannot be written: {blocker} is a file, not a folder"),
        (["eval", "--model", "tiny", "--task-file", task_files["mc"], "--json", str(tmp_path)],
         f"--json {tmp_path} is a folder, not a file"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert f"forgetless: error: {message}" in err and len(err.strip().splitlines()) == 1, err
    # A folder that is there but not writable (a read-only mount; as root, simulated).
    monkeypatch.setattr("forgetless.fileio.os.access", lambda *a: False)
    assert main(["run", str(config), "--out", str(tmp_path / "new" / "out")]) == 2
    assert f"--out {tmp_path / 'new' / 'out'} cannot be written: {tmp_path} is not writable" in capsys.readouterr().err
