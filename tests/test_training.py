"""The runner end to end on a tiny random model: loss, schedule of evaluations, results, checkpoints."""

import json
from pathlib import Path

import pytest
import torch

from forgetless.evaluation.evaluator import EvaluationLog
from forgetless.metrics import general_change
from forgetless.strategies import Strategy, register_strategy
from forgetless.training import run_continual

from .conftest import make_tiny_lm, tiny_config


def training_config(task_files, **overrides):
    settings = {
        "eval": {"suites": [], "tasks": [{"name": "extra", "file": task_files["mc"]}], "every_steps": 3},
        "train": {"steps": 6, "batch_size": 4, "lr": 1e-2, "max_length": 64, "seed": 0},
        "checkpoints": "every_task",
    }
    return tiny_config(task_files, **{**settings, **overrides})


def test_full_run_learns_and_writes_everything(tmp_path, tokenizer, task_files):
    model = make_tiny_lm(len(tokenizer))
    results = run_continual(training_config(task_files), tmp_path / "out", model=model, tokenizer=tokenizer, progress=False)

    assert results.tasks == ["chat", "text"]
    assert len(results.matrix) == 3 and all(len(row) == 2 for row in results.matrix)
    # Training on a task raises its held-out perplexity score well above the random model's.
    assert results.matrix[1][0] > 1.5 * results.matrix[0][0]
    assert results.matrix[2][1] > 1.5 * results.matrix[0][1]
    stages = [(g.stage, g.step) for g in results.general]
    assert stages == [("before", 0), ("step", 3), ("after_task", 6), ("step", 9), ("after_task", 12)]
    assert set(results.general[0].scores) == {"extra"}
    # The metrics by hand from the 3 x 2 matrix and the general means.
    (r00, r01), (r10, r11), (r20, r21) = results.matrix
    m = results.metrics
    assert m.acc == pytest.approx((r20 + r21) / 2)
    assert m.bwt == pytest.approx(r20 - r10) and m.forgetting == pytest.approx(r10 - r20)
    assert m.fwt == pytest.approx(r11 - r01)
    first, last = results.general[0].mean, results.general[-1].mean
    assert m.general_delta_abs == pytest.approx(last - first) and m.general_delta_rel == pytest.approx((last - first) / first)

    out = tmp_path / "out"
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["matrix"] == results.matrix
    assert (out / "report.md").is_file() and (out / "general_over_steps.png").is_file()
    for name in ("after-1-chat", "after-2-text"):
        assert (out / "checkpoints" / name / "model.safetensors").is_file()
    assert not any(p.name.startswith(".") for p in (out / "checkpoints").iterdir())  # no staging leftovers

    # evaluations.json holds the items behind every score: they give back the matrix's diagonal and each point of
    # the general curve with its s.e., so another run can be compared with this one item by item.
    log = EvaluationLog.read(out / "evaluations.json")
    held_out = log.held_out_after(["chat", "text"])
    assert held_out["chat"].score() == pytest.approx(r10) and held_out["text"].score() == pytest.approx(r21)
    assert log.task_samples[0]["chat"].score() == pytest.approx(r00)
    for point, samples in zip(results.general_curve, log.general_samples):
        change = general_change(log.general_samples[0], samples)
        assert (change["delta_abs"], change["delta_se"]) == pytest.approx((point.delta, point.se))
    assert results.general_curve[-1].se > 0
    with pytest.raises(ValueError, match="no evaluation after training"):
        log.held_out_after(["chat", "code"])


def test_lora_merge_run_saves_adapters_only_and_keeps_base_frozen(tmp_path, tokenizer, task_files):
    model = make_tiny_lm(len(tokenizer))
    embed_before = model.get_input_embeddings().weight.detach().clone()
    config = training_config(
        task_files,
        adapter="lora",
        lora={"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]},
        eval={"suites": [], "every_steps": 0},
    )
    results = run_continual(config, tmp_path / "out", model=model, tokenizer=tokenizer, progress=False)
    checkpoint = tmp_path / "out" / "checkpoints" / "after-1-chat"
    assert (checkpoint / "adapter_model.safetensors").is_file()
    assert not (checkpoint / "model.safetensors").exists()
    assert results.training[0]["trainable_parameters"] < results.training[0]["total_parameters"] / 10
    # Only LoRA trained: the (untargeted) embeddings are exactly as before.
    assert torch.equal(model.get_input_embeddings().weight, embed_before)
    assert results.matrix[1][0] > results.matrix[0][0]


def test_lora_stack_trains_only_the_newest_adapter(tmp_path, tokenizer, task_files):
    from forgetless.adapters import prepare_for_task

    config = training_config(task_files, adapter="lora", lora={"r": 2, "between_tasks": "stack", "target_modules": ["q_proj"]})
    model = prepare_for_task(make_tiny_lm(len(tokenizer)), config, 0)
    model = prepare_for_task(model, config, 1)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".task1." in n for n in trainable)
    assert any(".task0." in n for n, _ in model.named_parameters())
    assert set(model.base_model.active_adapters) == {"task0", "task1"}


@register_strategy
class _Recorder(Strategy):
    """Records hook calls and adds a known extra loss, to check the runner's contract."""

    name = "_test_recorder"

    def __init__(self, extra: float = 0.0):
        self.extra = extra
        self.calls: list[str] = []
        self.extra_seen = 0

    def on_task_start(self, ctx):
        self.calls.append(f"start:{ctx.task.name}")

    def prepare_examples(self, ctx, examples):
        self.calls.append(f"prepare:{ctx.task.name}")
        return examples[:2]  # the data side may change what is trained on

    def extra_loss(self, ctx, model, inputs, outputs):
        self.extra_seen += 1
        return torch.tensor(self.extra)

    def after_backward(self, ctx, model, step):
        self.calls.append(f"backward:{ctx.task.name}:{step.trained_tokens}")

    def transform_weights(self, ctx):
        self.calls.append(f"transform:{ctx.task.name}")

    def consolidate(self, ctx):
        self.calls.append(f"consolidate:{ctx.task.name}")

    def state_tensors(self):
        return {"calls": torch.tensor([len(self.calls)])}


def test_strategy_hooks_run_in_order_and_their_loss_is_added(tmp_path, tokenizer, task_files, monkeypatch):
    from forgetless.strategies import StrategyStack

    created = []
    real_build = StrategyStack.from_specs

    def spy(specs, **kwargs):
        stack = real_build(specs, **kwargs)
        created.extend(stack.strategies)
        return stack

    monkeypatch.setattr(StrategyStack, "from_specs", staticmethod(spy))
    config = training_config(task_files, strategies=[{"name": "_test_recorder", "extra": 5.0}], eval={"suites": []})
    results = run_continual(config, tmp_path / "out", model=make_tiny_lm(len(tokenizer)), tokenizer=tokenizer, progress=False)
    recorder = created[0]
    backward = [c for c in recorder.calls if c.startswith("backward:")]
    assert [c for c in recorder.calls if not c.startswith("backward:")] == [
        "start:chat", "prepare:chat", "transform:chat", "consolidate:chat",
        "start:text", "prepare:text", "transform:text", "consolidate:text",
    ]
    # after_backward once per optimizer step, between prepare and transform, with the step's token count.
    assert recorder.calls.index("prepare:chat") < recorder.calls.index(backward[0]) < recorder.calls.index("transform:chat")
    assert len(backward) == 12 and all(int(c.split(":")[2]) > 0 for c in backward)
    assert recorder.extra_seen == 12  # one extra_loss per step, 6 steps x 2 tasks
    assert results.training[0]["examples"] == 2
    # Every step logged its gradient norm (6 steps, logging_steps 1), each task's own steps counted from 1.
    assert [(t["grad_norm_logs"], 1 <= t["grad_norm_max_step"] <= 6) for t in results.training] == [(6, True)] * 2
    assert all(t["grad_norm_max"] >= t["grad_norm_median"] > 0 for t in results.training)
    # The reported training loss includes the constant extra term.
    assert results.training[0]["train_loss"] > 5.0
    from safetensors.torch import load_file

    saved = load_file(tmp_path / "out" / "checkpoints" / "after-2-text" / "strategy-_test_recorder.safetensors")
    assert saved["calls"].item() == 20  # 8 task hooks and 12 after_backward calls


def test_a_finished_run_is_not_replaced_and_a_diverged_one_writes_nothing(tmp_path, tokenizer, task_files):
    from forgetless.errors import ForgetlessError

    config = training_config(task_files, eval={"suites": [], "every_steps": 0})
    out = tmp_path / "out"
    run_continual(config, out, model=make_tiny_lm(len(tokenizer)), tokenizer=tokenizer, progress=False)
    good = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(ForgetlessError, match="already holds a run's results.*--overwrite"):
        run_continual(config, out, model=make_tiny_lm(len(tokenizer)), tokenizer=tokenizer, progress=False)
    # lr 1e30 overflows the weights on the first step: stopped before any later evaluation or checkpoint.
    diverging = training_config(task_files, eval={"suites": [], "every_steps": 0},
                                train={"steps": 2, "batch_size": 4, "lr": 1e30, "max_length": 64, "seed": 0})
    with pytest.raises(ForgetlessError, match="training diverged on task 'chat'"):
        run_continual(diverging, out, model=make_tiny_lm(len(tokenizer)), tokenizer=tokenizer, progress=False,
                      overwrite=True)
    # The good checkpoints survive; results.json now holds the failed run's evaluations so far, marked incomplete.
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert {k: v for k, v in after.items() if "checkpoints" in k.parts} == {
        k: v for k, v in good.items() if "checkpoints" in k.parts}
    partial = json.loads((out / "results.json").read_text())
    assert partial["complete"] is False and [g["stage"] for g in partial["general"]] == ["before"]
    assert json.loads(good[Path("results.json")])["complete"] is True
    with pytest.raises(ForgetlessError, match="is a file"):
        run_continual(config, out / "results.json", progress=False)


def test_a_run_that_dies_keeps_its_evaluations(tmp_path, tokenizer, task_files, monkeypatch):
    from forgetless.training import ContinualRun

    real = ContinualRun._train_task

    def dies_on_the_second_task(self, task_index, task, mid_task=None):
        if task_index == 1:
            raise KeyboardInterrupt
        return real(self, task_index, task, mid_task)

    monkeypatch.setattr(ContinualRun, "_train_task", dies_on_the_second_task)
    with pytest.raises(KeyboardInterrupt):
        run_continual(training_config(task_files), tmp_path / "out", model=make_tiny_lm(len(tokenizer)), tokenizer=tokenizer,
                      progress=False)
    partial = json.loads((tmp_path / "out" / "results.json").read_text())
    assert partial["complete"] is False
    assert [(g["stage"], g["step"]) for g in partial["general"]] == [("before", 0), ("step", 3), ("after_task", 6)]
    assert partial["matrix_rows"] == ["before training", "after chat"]


def test_lora_targets_that_match_nothing_are_refused_before_any_evaluation(tmp_path, tokenizer, task_files, monkeypatch):
    from forgetless.errors import ForgetlessError
    from forgetless.evaluation.evaluator import Evaluator

    monkeypatch.setattr(Evaluator, "evaluate", lambda *a, **k: pytest.fail("evaluated before the refusal"))
    config = training_config(task_files, adapter="lora", lora={"target_modules": ["q_proj", "qkv"]})
    with pytest.raises(ForgetlessError, match=r"lora\.target_modules: \['qkv'\] match no linear layer.*'q_proj'"):
        run_continual(config, tmp_path / "out", model=make_tiny_lm(len(tokenizer)), tokenizer=tokenizer, progress=False)


def test_a_weight_pattern_that_matches_nothing_is_refused_before_any_evaluation(tmp_path, tokenizer, task_files,
                                                                                monkeypatch):
    from forgetless.errors import ForgetlessError
    from forgetless.evaluation.evaluator import Evaluator

    monkeypatch.setattr(Evaluator, "evaluate", lambda *a, **k: pytest.fail("evaluated before the refusal"))
    config = training_config(task_files).model_copy(
        update={"strategies": ["naive", {"name": "l2sp", "target_scale": {"v_proj": 0.5, "vproj": 0.5}}]})
    with pytest.raises(ForgetlessError, match=r"^strategies\[1\]: l2sp target_scale: 'vproj' matches no trained weight "
                       r"\(names look like 'model\.embed_tokens\.weight'\)"):
        run_continual(config, tmp_path / "out", model=make_tiny_lm(len(tokenizer)), tokenizer=tokenizer, progress=False)


def test_a_lora_pattern_that_matches_nothing_and_a_module_peft_rejects_are_one_line(tmp_path, tokenizer, task_files,
                                                                                     monkeypatch):
    from forgetless.adapters import prepare_for_task
    from forgetless.errors import ForgetlessError
    from forgetless.evaluation.evaluator import Evaluator

    monkeypatch.setattr(Evaluator, "evaluate", lambda *a, **k: pytest.fail("evaluated before the refusal"))
    # One string is a regular expression over full module names for PEFT: `q_proj` alone matches nothing.
    config = training_config(task_files, adapter="lora", lora={"target_modules": "q_proj"})
    with pytest.raises(ForgetlessError, match=r"^lora\.target_modules: 'q_proj' matches no module of this model: a single "
                       r"string is a regular expression over full module names such as 'model\.layers\.0\.self_attn\.q_proj'"):
        run_continual(config, tmp_path / "out", model=make_tiny_lm(len(tokenizer)), tokenizer=tokenizer, progress=False)
    # A pattern that matches a layer PEFT cannot adapt: PEFT's own refusal, on one line, naming the field.
    config = training_config(task_files, adapter="lora", lora={"target_modules": r".*\.norm"})
    with pytest.raises(ForgetlessError) as info:
        prepare_for_task(make_tiny_lm(len(tokenizer)), config, 0)
    message = str(info.value)
    assert message.startswith("lora.target_modules: PEFT refused this LoRA set-up: Target module LlamaRMSNorm")
    assert "\n" not in message


def test_chat_rows_cut_or_emptied_by_max_length_are_refused_warned_and_counted(tmp_path, tokenizer, task_files, monkeypatch,
                                                                               caplog, tiny_model_folder):
    import forgetless.training
    from forgetless.errors import ForgetlessError
    from forgetless.evaluation.evaluator import Evaluator

    from .conftest import write_jsonl

    # Every prompt (with SmolLM2's chat template, about 40 tokens) fills max_length 24: refused before the model loads.
    monkeypatch.setattr(forgetless.training, "load_model", lambda *a, **k: pytest.fail("the model loaded before the refusal"))
    monkeypatch.setattr(Evaluator, "evaluate", lambda *a, **k: pytest.fail("evaluated before the refusal"))
    emptied = tiny_config(task_files, model=str(tiny_model_folder), train={"steps": 2, "batch_size": 2, "max_length": 24})
    with pytest.raises(ForgetlessError) as info:
        run_continual(emptied, tmp_path / "out", progress=False)
    assert str(info.value) == (
        f"task 'chat' ({task_files['chat']}): all 22 training rows have a prompt (with the chat template) of "
        "train.max_length (24) tokens or more, so no response token is left to learn from; raise train.max_length or "
        "shorten the prompts")
    monkeypatch.undo()

    # Some rows emptied, some cut: both warned with their counts when the run starts, and counted in results.json.
    short = {"prompt": "My router is broken", "response": "Please restart the router and wait."}
    rows = [short] * 6 + [{**short, "prompt": "word " * 80}] * 2 + [{**short, "response": "wait " * 80}] * 3
    train = write_jsonl(tmp_path / "mixed.jsonl", rows)
    heldout = write_jsonl(tmp_path / "mixed-heldout.jsonl", [short])
    config = tiny_config(task_files, tasks=[{"name": "mixed", "file": train, "heldout_file": heldout}],
                         train={"steps": 2, "batch_size": 2, "max_length": 64})
    with caplog.at_level("WARNING", logger="forgetless"):
        results = run_continual(config, tmp_path / "run", model=make_tiny_lm(len(tokenizer)), tokenizer=tokenizer,
                                progress=False)
    warnings = [r.getMessage() for r in caplog.records if r.name.startswith("forgetless")]
    assert warnings == [
        f"task 'mixed' ({train}): 2 of 11 training rows have a prompt of train.max_length (64) tokens or more and are "
        "left out (no response token to learn from)",
        f"task 'mixed' ({train}): 3 of 11 training rows are longer than train.max_length (64 tokens) and are cut there "
        "(the end of their response is not trained)",
    ]
    logged = json.loads((tmp_path / "run" / "results.json").read_text())["training"][0]
    assert (logged["emptied_rows"], logged["truncated_rows"]) == (2, 3) == (results.training[0]["emptied_rows"],
                                                                            results.training[0]["truncated_rows"])


def test_a_full_disk_while_writing_a_checkpoint_keeps_the_earlier_one(tmp_path, tokenizer, task_files, monkeypatch):
    import errno

    from forgetless.errors import ForgetlessError
    from forgetless.training import _write_checkpoint

    config = training_config(task_files)
    target = tmp_path / "out" / "checkpoints" / "after-1-chat"
    _write_checkpoint(make_tiny_lm(len(tokenizer), seed=1), tokenizer, config, [], target, adapter=None)
    earlier = {p.relative_to(target): p.read_bytes() for p in target.rglob("*") if p.is_file()}
    model = make_tiny_lm(len(tokenizer), seed=2)

    def save_half_then_fill_the_disk(folder, **kwargs):
        (folder / "model.safetensors").write_bytes(b"\0" * 1000)  # half a file, as a full disk leaves it
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(model, "save_pretrained", save_half_then_fill_the_disk)
    with pytest.raises(ForgetlessError) as info:
        _write_checkpoint(model, tokenizer, config, [], target, adapter=None)
    assert str(info.value) == (
        f"could not write checkpoint {target}: no space left on device; the earlier checkpoint there is unchanged and the "
        "partial copy was removed (free some space, or write fewer: `checkpoints: last` or `none`)")
    assert {p.relative_to(target): p.read_bytes() for p in target.rglob("*") if p.is_file()} == earlier
    assert [p.name for p in target.parent.iterdir()] == ["after-1-chat"]  # no staging folder left


def test_another_process_of_a_launch_does_not_refuse_the_folder_rank_0_is_writing(tmp_path, tokenizer, task_files, monkeypatch):
    """On several processes rank 1 can start after rank 0 wrote its first results.json; only rank 0 checks the
    folder (before this, 1 launch in 3 under load failed: rank 1 refused the run as an existing one)."""
    config = training_config(task_files, eval={"suites": [], "every_steps": 0})
    out = tmp_path / "out"
    run_continual(config, out, model=make_tiny_lm(len(tokenizer)), tokenizer=tokenizer, progress=False)
    written = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    monkeypatch.setenv("RANK", "1")  # what the launcher sets for the second process
    run_continual(config, out, model=make_tiny_lm(len(tokenizer)), tokenizer=tokenizer, progress=False)
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == written  # rank 1 writes nothing
