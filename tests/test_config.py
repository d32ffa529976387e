import pytest

from forgetless.config import load_config, parse_config
from forgetless.errors import ForgetlessError

MINIMAL = {"tasks": [{"name": "support", "builtin": "support"}]}


def test_defaults_fill_in():
    config = parse_config(MINIMAL)
    assert config.model == "default"
    assert config.adapter == "full"
    assert config.strategies == ["naive"]
    assert config.eval.suites == ["general"]
    assert config.train.steps == 60 and config.train.batch_size == 8


def test_wrong_type_names_the_field():
    with pytest.raises(ForgetlessError, match=r"train\.steps: .*integer"):
        parse_config({**MINIMAL, "train": {"steps": "sixty"}})


def test_unknown_field_is_an_error():
    with pytest.raises(ForgetlessError, match=r"train\.learning_rate: unknown field"):
        parse_config({**MINIMAL, "train": {"learning_rate": 1e-4}})


def test_task_needs_exactly_one_source():
    with pytest.raises(ForgetlessError, match=r"tasks\.0.*exactly one of"):
        parse_config({"tasks": [{"name": "x"}]})
    with pytest.raises(ForgetlessError, match=r"tasks\.0.*exactly one of"):
        parse_config({"tasks": [{"name": "x", "builtin": "support", "file": "a.jsonl"}]})


def test_adapter_choice_is_checked():
    with pytest.raises(ForgetlessError, match=r"adapter"):
        parse_config({**MINIMAL, "adapter": "qlora"})


def test_duplicate_task_names_rejected():
    with pytest.raises(ForgetlessError, match="repeated"):
        parse_config({"tasks": [{"name": "a", "builtin": "support"}, {"name": "a", "builtin": "legal"}]})


def test_load_config_resolves_files_next_to_the_config(tmp_path):
    (tmp_path / "mine.jsonl").write_text('{"text": "hello"}\n')
    path = tmp_path / "run.yaml"
    path.write_text("tasks:\n  - {name: mine, file: mine.jsonl}\neval: {tasks: [{name: x, file: mine.jsonl}]}\n")
    config = load_config(path)
    assert config.tasks[0].file == str(tmp_path / "mine.jsonl")
    assert config.eval.tasks[0].file == str(tmp_path / "mine.jsonl")


def test_load_config_errors(tmp_path):
    with pytest.raises(ForgetlessError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("tasks: [unclosed\n")
    with pytest.raises(ForgetlessError, match="not valid YAML"):
        load_config(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- a\n- b\n")
    with pytest.raises(ForgetlessError, match="mapping"):
        load_config(listy)


@pytest.mark.parametrize("train, message", [
    ({"lr": float("inf")}, r"train\.lr: Input should be a finite number"),
    ({"lr": float("nan")}, r"train\.lr: Input should be a finite number"),
    ({"steps": True}, r"train\.steps: expected a number, got True"),
    ({"steps": 2.5}, r"train\.steps: expected an integer \(a whole number\), got 2\.5"),
    ({"steps": "3"}, r"train\.steps: expected an integer"),
    ({"gradient_checkpointing": 1}, r"train\.gradient_checkpointing: expected true or false, got 1"),
    ({"lr": True}, r"train\.lr: expected a number"),
])
def test_no_silent_coercion_or_non_finite_numbers(train, message):
    with pytest.raises(ForgetlessError, match=message):
        parse_config({**MINIMAL, "train": train})
    # What YAML writers mean stays accepted: 1e-4 (a string to YAML 1.1), 2.0 steps.
    config = parse_config({**MINIMAL, "train": {"lr": "1e-4", "steps": 2.0}})
    assert (config.train.lr, config.train.steps) == (1e-4, 2)


def test_a_key_given_twice_and_non_utf8_bytes_name_the_line(tmp_path):
    twice = tmp_path / "twice.yaml"
    twice.write_text("tasks:\n  - {name: s, builtin: support}\ntrain:\n  steps: 10\n  lr: 0.001\n  steps: 20\n")
    with pytest.raises(ForgetlessError, match=r"twice\.yaml:6: key 'steps' appears twice"):
        load_config(twice)
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("tasks:\n  - {name: s, builtin: support}\nmodel: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ForgetlessError, match=r"latin\.yaml:3: not UTF-8"):
        load_config(latin)
