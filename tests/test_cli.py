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
