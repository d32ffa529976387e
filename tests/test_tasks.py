import json

import pytest

from forgetless.data.tasks import BUILTIN_TASKS, load_builtin_task, load_file_task, read_task_rows
from forgetless.errors import ForgetlessError


def write_lines(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def test_chat_file_split_is_disjoint_and_deterministic(tmp_path):
    rows = [json.dumps({"prompt": f"q{i}", "response": f"a{i}"}) for i in range(20)]
    path = write_lines(tmp_path / "t.jsonl", rows)
    first = load_file_task("t", path, None, 0.25, seed=3)
    again = load_file_task("t", path, None, 0.25, seed=3)
    assert first.format == "chat"
    assert len(first.heldout) == 5 and len(first.train) == 15
    assert not {r["prompt"] for r in first.train} & {r["prompt"] for r in first.heldout}
    assert first.heldout == again.heldout


def test_text_file_with_heldout_file(tmp_path):
    train = write_lines(tmp_path / "a.jsonl", ['{"text": "one"}', "", '{"text": "two"}'])
    heldout = write_lines(tmp_path / "b.jsonl", ['{"text": "three"}'])
    task = load_file_task("t", train, heldout, 0.1, seed=0)
    assert task.format == "text"
    assert [r["text"] for r in task.train] == ["one", "two"]
    assert task.heldout == [{"text": "three"}]


def test_malformed_line_reports_file_and_line(tmp_path):
    path = write_lines(tmp_path / "bad.jsonl", ['{"text": "ok"}', '{"text": "ok"}', '{"text": oops}'])
    with pytest.raises(ForgetlessError, match=r"bad\.jsonl:3: not valid JSON"):
        read_task_rows(path)


def test_missing_field_reports_line(tmp_path):
    path = write_lines(tmp_path / "t.jsonl", ['{"prompt": "a", "response": "b"}', '{"prompt": "a"}'])
    with pytest.raises(ForgetlessError, match=r"t\.jsonl:2: .*'response'"):
        read_task_rows(path)


def test_mixed_formats_rejected(tmp_path):
    path = write_lines(tmp_path / "t.jsonl", ['{"text": "a"}', '{"prompt": "a", "response": "b"}'])
    with pytest.raises(ForgetlessError, match=r"t\.jsonl:2: .*'text'"):
        read_task_rows(path)


def test_empty_and_missing_files(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(ForgetlessError, match="empty"):
        read_task_rows(str(empty))
    with pytest.raises(ForgetlessError, match="file not found"):
        read_task_rows(str(tmp_path / "nope.jsonl"))
    one = write_lines(tmp_path / "one.jsonl", ['{"text": "a"}'])
    with pytest.raises(ForgetlessError, match="at least 2 rows"):
        load_file_task("one", one, None, 0.1, seed=0)


def test_unknown_builtin_lists_known_names():
    with pytest.raises(ForgetlessError) as info:
        load_builtin_task("nope")
    for name in BUILTIN_TASKS:
        assert name in str(info.value)


@pytest.mark.parametrize("name", sorted(BUILTIN_TASKS))
def test_builtin_tasks_have_disjoint_train_and_heldout(name):
    task = load_builtin_task(name)
    assert task.train and task.heldout
    key = (lambda r: r["prompt"]) if task.format == "chat" else (lambda r: r["text"])
    assert not {key(r) for r in task.train} & {key(r) for r in task.heldout}


def test_heldout_task_scores_choices_only_when_asked(tiny_lm, tokenizer):
    """eval.task_choices: false drops support's reply-choice questions, never its held-out perplexity."""
    from forgetless.evaluation.suites import heldout_task

    task = load_builtin_task("support")
    task.heldout, task.multiple_choice = task.heldout[:2], task.multiple_choice[:2]
    with_choices = heldout_task(task).evaluate(tiny_lm, tokenizer, None, progress=False).summary
    without = heldout_task(task, choices=False).evaluate(tiny_lm, tokenizer, None, progress=False).summary
    assert with_choices["mc_n"] == 2 and "mc_acc" not in without
    assert without["perplexity"] == with_choices["perplexity"] and without["n"] == 2


def test_bad_bytes_and_mixed_rows_name_the_line(tmp_path):
    from forgetless.data.tasks import read_task_rows
    from forgetless.errors import ForgetlessError

    latin = tmp_path / "latin.jsonl"
    latin.write_bytes('{"text": "fine"}\n{"text": "caf\xe9"}\n'.encode("latin-1"))
    with pytest.raises(ForgetlessError, match=r"latin\.jsonl:2: not UTF-8"):
        read_task_rows(str(latin))
    both = tmp_path / "both.jsonl"
    both.write_text('{"text": "a"}\n{"text": "b", "prompt": "p", "response": "r"}\n')
    with pytest.raises(ForgetlessError, match=r"both\.jsonl:2: a row has 'text' and 'prompt'"):
        read_task_rows(str(both))
