"""A user's own general rows (`general_data`) in place of the bundled general English, for every strategy that
protects or rehearses general ability: read with file-and-line errors, carried by the stack, refused where they
overlap a scored row, and actually used (protection data, replay's mix, ssr's demonstrations, wise's check)."""

from __future__ import annotations

import math

import pytest
import torch
import yaml

from forgetless.config import load_config
from forgetless.data.encoding import encode_rows
from forgetless.data.tasks import GeneralData, general_train_texts, load_general_data, load_task
from forgetless.errors import ForgetlessError
from forgetless.strategies import StrategyStack, TaskData, build_strategy
from forgetless.strategies._common import protection_examples
from forgetless.training import context_for, run_continual

from .conftest import make_tiny_lm, tiny_config, write_jsonl

CHAT = [{"prompt": f"Say something kind about the number {i}.", "response": f"{i} is a fine and friendly number."}
        for i in range(12)]
TEXT = [{"text": f"Zebrafish number {i} swims in the quiet lagoon under the pier."} for i in range(12)]


@pytest.fixture
def general_files(tmp_path):
    return {"chat": write_jsonl(tmp_path / "general_chat.jsonl", CHAT),
            "text": write_jsonl(tmp_path / "general_text.jsonl", TEXT)}


def _context(task_files, tokenizer, general: str | None, **overrides):
    config = tiny_config(task_files, general_data=general, **overrides)
    model = make_tiny_lm(len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id
    return context_for(config, model, tokenizer, [load_task(t, seed=0) for t in config.tasks], 0)


def _keys(examples):
    return {(tuple(e["input_ids"]), tuple(e["labels"])) for e in examples}


def test_a_bad_row_is_named_by_file_and_line(tmp_path):
    path = tmp_path / "general.jsonl"
    path.write_text('{"text": "fine"}\n\n{"text": ""}\n', encoding="utf-8")
    with pytest.raises(ForgetlessError, match=r"general\.jsonl:3: expected a non-empty string field 'text'"):
        load_general_data(str(path))
    path.write_text('{"prompt": "a", "response": "b"}\n{"prompt": "c"}\n', encoding="utf-8")
    with pytest.raises(ForgetlessError, match=r"general\.jsonl:2: .*missing or empty: 'response'"):
        load_general_data(str(path))


def test_a_config_finds_its_general_data_beside_it(tmp_path, task_files, general_files, monkeypatch):
    folder = tmp_path / "configs"
    folder.mkdir()
    write_jsonl(folder / "mine.jsonl", CHAT)
    (folder / "run.yaml").write_text(yaml.safe_dump(
        {"tasks": [{"name": "chat", "file": task_files["chat"]}], "general_data": "mine.jsonl"}))
    monkeypatch.chdir(tmp_path)  # not the config's folder: the path is resolved against the config's
    config = load_config(folder / "run.yaml")
    assert config.general_data == str(folder / "mine.jsonl")
    assert load_general_data(config.general_data).format == "chat"


def test_protection_data_comes_from_the_users_rows(task_files, tokenizer, general_files):
    ctx = _context(task_files, tokenizer, general_files["chat"])
    examples = protection_examples(ctx, 6, source="general")
    assert len(examples) == 6
    assert _keys(examples) <= _keys(encode_rows(tokenizer, CHAT, 64))
    # chat rows train on the response only: each example hides its prompt
    assert all(e["labels"][0] == -100 and e["labels"][-1] != -100 for e in examples)
    bundled = _context(task_files, tokenizer, None)  # no general_data: the bundled general English, as before
    english = encode_rows(tokenizer, [{"text": text} for text in general_train_texts()], 64)
    assert _keys(protection_examples(bundled, 6, source="general")) <= _keys(english)


def test_chat_rows_are_not_texts(task_files, tokenizer, general_files):
    ctx = _context(task_files, tokenizer, general_files["chat"])
    with pytest.raises(ForgetlessError, match="chat rows, not texts: read ctx.general_rows"):
        ctx.general_texts
    assert _context(task_files, tokenizer, general_files["text"]).general_texts == tuple(r["text"] for r in TEXT)
    assert _context(task_files, tokenizer, None).general_texts == general_train_texts()


def test_replay_mixes_in_the_users_rows(task_files, tokenizer, general_files):
    ctx = _context(task_files, tokenizer, general_files["text"])
    replay = build_strategy({"name": "replay", "general_ratio": 0.5})
    replay.on_task_start(ctx)
    own = [{"input_ids": [1, 2, 3, 4], "labels": [1, 2, 3, 4]}] * 8
    mixed = replay.prepare_examples(ctx, own)
    added = mixed[len(own):]
    assert len(added) == 8  # half of the mix: as many general examples as the task's own
    assert _keys(added) <= _keys(encode_rows(tokenizer, TEXT, 64))


def test_ssr_writes_its_general_pool_from_the_users_rows(task_files, tokenizer, general_files, monkeypatch):
    seen = []
    strategy = build_strategy("ssr")
    monkeypatch.setattr(type(strategy), "synthesize", lambda self, ctx, rows, fmt, pool: seen.append((rows, fmt)) or [])
    strategy.on_task_start(_context(task_files, tokenizer, general_files["chat"]))
    assert seen == [(CHAT, "chat")]


def test_wise_scores_chat_rows_on_their_responses(tiny_lm, tokenizer):
    from forgetless.strategies.wise import validation_score

    total, count = 0.0, 0
    with torch.no_grad():
        for feature in encode_rows(tokenizer, CHAT[:3], 512):
            ids, labels = torch.tensor([feature["input_ids"]]), torch.tensor([feature["labels"]])
            logits = tiny_lm(input_ids=ids).logits[0, :-1]
            targets = labels[0, 1:]
            scored = targets != -100
            total += float(torch.nn.functional.cross_entropy(logits[scored], targets[scored], reduction="sum"))
            count += int(scored.sum())
    expected = 1 - (total / count) / math.log(len(tokenizer))
    assert validation_score(tiny_lm, tokenizer, CHAT[:3]) == pytest.approx(expected, rel=1e-5)
    prompts_too = validation_score(tiny_lm, tokenizer, [{"text": r["prompt"] + " " + r["response"]} for r in CHAT[:3]])
    assert abs(prompts_too - expected) > 1e-3  # the prompt is context, not scored


def test_wise_auto_checks_the_users_last_rows(task_files, tokenizer, general_files, monkeypatch, caplog):
    seen = []
    monkeypatch.setattr("forgetless.strategies.wise.validation_score", lambda model, tok, rows: seen.append(tuple(rows)) or 0.5)
    ctx = _context(task_files, tokenizer, general_files["chat"])
    for p in ctx.model.parameters():
        p.requires_grad_(True)
    wise = build_strategy({"name": "wise", "alpha": "auto", "validation_texts": 4})
    wise.on_task_start(ctx)
    wise.transform_weights(ctx)
    assert seen and all(rows == tuple(CHAT[-4:]) for rows in seen)
    assert "scores the last 4 of only 12 general_data rows" in caplog.text  # 12 < 10 x 4: other draws overlap them


def test_the_stack_keeps_one_general_data_over_a_sequence(general_files):
    chat, text = load_general_data(general_files["chat"]), load_general_data(general_files["text"])
    stack = StrategyStack.from_specs(["replay"], general=chat)
    assert StrategyStack.from_specs(stack, general=None).general is chat  # a later trainer that names none keeps it
    again = GeneralData("chat", tuple(CHAT), "elsewhere")
    StrategyStack.from_specs(stack, general=again)  # the same rows from another place: not a switch
    stack.finished.append(TaskData(name="one", format="text", rows=None))
    with pytest.raises(ForgetlessError, match="protected general_data .*general_chat.jsonl since its first task; it "
                       "cannot switch to general_data .*general_text.jsonl"):
        StrategyStack.from_specs(stack, general=text)
    fresh = StrategyStack.from_specs(["replay"])
    fresh.use_general(text)  # before the first task it may still be given
    assert fresh.general is text


def test_a_general_row_that_is_scored_is_refused(tmp_path, task_files, tokenizer):
    heldout = [{"prompt": "Ticket 99: my modem hums", "response": "Unplug it for ten seconds."}]
    general = write_jsonl(tmp_path / "general.jsonl", CHAT[:2] + heldout)
    tasks = [{"name": "chat", "file": task_files["chat"], "heldout_file": write_jsonl(tmp_path / "held.jsonl", heldout)}]
    config = tiny_config(task_files, tasks=tasks, general_data=general)
    with pytest.raises(ForgetlessError, match=r"general\.jsonl:3: this row is also scored, in task 'chat'"):
        run_continual(config, tmp_path / "out", model=make_tiny_lm(len(tokenizer)), tokenizer=tokenizer, progress=False)
    prose = write_jsonl(tmp_path / "prose.jsonl", [{"text": "Rivers run to the sea."}])
    general = write_jsonl(tmp_path / "general.jsonl", TEXT[:3] + [{"text": "Rivers run to the sea."}])
    config = tiny_config(task_files, general_data=general, eval={"suites": [], "tasks": [{"name": "prose", "file": prose}]})
    with pytest.raises(ForgetlessError, match=r"general\.jsonl:4: this row is also scored, in task 'prose'"):
        run_continual(config, tmp_path / "out", model=make_tiny_lm(len(tokenizer)), tokenizer=tokenizer, progress=False)


def _record_replay_draws(monkeypatch) -> list:
    """The rows replay draws its general mix from, one entry per draw."""
    import forgetless.strategies.replay as replay_module

    sampled, original = [], replay_module.sample_examples

    def recording(ctx, rows, *args, **kwargs):
        sampled.append(rows)
        return original(ctx, rows, *args, **kwargs)

    monkeypatch.setattr(replay_module, "sample_examples", recording)
    return sampled


def test_chat_rows_that_max_length_empties_are_refused_before_training(tmp_path, task_files, tokenizer):
    long_prompts = write_jsonl(tmp_path / "long.jsonl", [{"prompt": "word " * 80, "response": "ok"}] * 3)
    config = tiny_config(task_files, general_data=long_prompts)
    with pytest.raises(ForgetlessError, match=r"general_data .*long\.jsonl: all 3 rows have a prompt .* of 64 tokens"):
        run_continual(config, tmp_path / "out", model=make_tiny_lm(len(tokenizer)), tokenizer=tokenizer, progress=False)


def test_with_strategies_reads_rows_as_a_run_config_does(general_files):
    from forgetless.integrations.strategy_trainer import general_data_from

    assert general_data_from(general_files["chat"]).rows == tuple(CHAT)  # a path: the file, checked line by line
    assert general_data_from(CHAT).format == "chat" and general_data_from(CHAT).rows == tuple(CHAT)  # a list of rows
    with pytest.raises(ForgetlessError, match="general_data row 2: expected non-empty string fields 'prompt' and 'response'"):
        general_data_from([CHAT[0], {"prompt": "hi", "response": " "}])
    turns = [{"messages": [{"role": "user", "content": "Hello?"}, {"role": "assistant", "content": reply}]}
             for reply in ("Hi there.", "", None)]
    assert general_data_from(turns).rows == ({"prompt": "Hello?", "response": "Hi there."},)  # empty replies left out


def test_the_runner_rehearses_the_users_rows(tmp_path, task_files, tokenizer, general_files, monkeypatch):
    sampled = _record_replay_draws(monkeypatch)
    config = tiny_config(task_files, strategies=[{"name": "replay", "general_ratio": 0.25}], general_data=general_files["text"])
    results = run_continual(config, tmp_path / "out", model=make_tiny_lm(len(tokenizer)), tokenizer=tokenizer, progress=False)
    assert sampled and all(rows == TEXT for rows in sampled)
    assert results.config["general_data"] == general_files["text"]


def test_with_strategies_takes_general_data_as_a_dataset(tmp_path, tokenizer, monkeypatch):
    from datasets import Dataset
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments

    import forgetless
    sampled = _record_replay_draws(monkeypatch)
    messages = [{"messages": [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["response"]}]}
                for r in CHAT]
    model = make_tiny_lm(len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id
    # A plain Trainer's examples set the length strategies encode their rows to (its longest example): long enough here
    # for the chat rows with their template.
    texts = [f"Ticket {i}: my router is broken. Please restart router {i}. " * 8 for i in range(8)]
    args = TrainingArguments(output_dir=str(tmp_path / "hf"), max_steps=2, per_device_train_batch_size=2, report_to=[],
                             save_strategy="no", use_cpu=True, disable_tqdm=True)
    trainer = forgetless.with_strategies(Trainer)(
        model=model, args=args, train_dataset=Dataset.from_list([{"input_ids": tokenizer(t)["input_ids"]} for t in texts]),
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False), processing_class=tokenizer,
        strategies=[{"name": "replay", "general_ratio": 0.25}], general_data=messages,
    )
    trainer.train()
    assert sampled == [CHAT]  # the last user turn and the reply after it, as a chat row
    with pytest.raises(ForgetlessError, match="general_data takes a JSONL file.s path, a list of .* or a map-style dataset"):
        forgetless.with_strategies(Trainer)(model=model, args=args, processing_class=tokenizer, general_data=42)


def test_a_table_written_before_general_data_still_takes_rows(task_files, general_files):
    from forgetless.compare import setting_differences, table_setting

    unset = table_setting(tiny_config(task_files))
    older = {key: value for key, value in tiny_config(task_files).model_dump(mode="json").items()
             if key not in ("strategies", "general_data")}  # what compare.json held before the field existed
    assert {key: value for key, value in unset.items() if key != "data_digests"} == older  # digests: since 2026-12-06
    assert setting_differences(unset, older) == []
    assert table_setting(tiny_config(task_files, general_data=general_files["chat"]))["general_data"] == general_files["chat"]
