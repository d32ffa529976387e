"""forgetless inside a user's own Trainer: with_strategies (Trainer, SFTTrainer) and ForgettingMonitor."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers
from datasets import Dataset
from transformers import Trainer, TrainingArguments

import forgetless
from forgetless.data.encoding import IGNORE_INDEX
from forgetless.errors import ForgetlessError
from forgetless.evaluation.evaluator import EvaluationLog
from forgetless.metrics import general_change
from forgetless.results import RunResults

from .conftest import make_tiny_lm

trl = pytest.importorskip("trl")

PAIRS = [(f"Ticket {i}: my router is broken.", f"Please restart router {i} and wait.") for i in range(8)]
DATASETS = {
    "text": [{"text": f"{p} {c}"} for p, c in PAIRS],
    "prompt-completion": [{"prompt": p, "completion": c} for p, c in PAIRS],
    "messages": [{"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": c}]} for p, c in PAIRS],
}


def _model(tokenizer, seed=0):
    model = make_tiny_lm(len(tokenizer), seed=seed)
    model.config.pad_token_id = tokenizer.pad_token_id
    return model


def _sft(tmp_path, tokenizer, rows, strategies, model=None, **config):
    settings = dict(output_dir=str(tmp_path / "sft"), max_steps=2, per_device_train_batch_size=2, learning_rate=1e-2,
                    max_length=64, report_to=[], save_strategy="no", use_cpu=True, gradient_checkpointing=False,
                    logging_steps=1, disable_tqdm=True, lr_scheduler_type="constant", warmup_steps=0)
    settings.update(config)
    callbacks = settings.pop("callbacks", None)
    return forgetless.with_strategies(trl.SFTTrainer)(
        model=model if model is not None else _model(tokenizer), args=trl.SFTConfig(**settings),
        train_dataset=Dataset.from_list(rows), processing_class=tokenizer, strategies=strategies, callbacks=callbacks,
    )


@pytest.mark.parametrize("fmt", sorted(DATASETS))
def test_sft_formats_give_strategies_rows_and_the_labels_sft_trains(fmt, tmp_path, tokenizer):
    trainer = _sft(tmp_path, tokenizer, DATASETS[fmt], [{"name": "ewc", "samples": 4}])
    trainer.train()
    (task,) = trainer.strategy_stack.finished
    if fmt == "text":
        assert task.format == "text" and task.rows == DATASETS["text"]
        assert all(e["labels"] == e["input_ids"] for e in task.examples)
    else:
        assert task.format == "chat" and task.rows == [{"prompt": p, "response": c} for p, c in PAIRS]
    if fmt == "prompt-completion":  # SFTTrainer's completion-only loss: the prompt is not a target
        for example in task.examples:
            assert example["labels"][0] == IGNORE_INDEX and any(label != IGNORE_INDEX for label in example["labels"])
    ewc = trainer.strategy_stack.strategies[0]
    assert ewc.fisher and all(torch.isfinite(f).all() for f in ewc.fisher.values())
    assert trainer.forgetless_task_logs[0]["ewc_fisher_examples"] == 4


def test_packing_is_refused_before_training(tmp_path, tokenizer):
    with pytest.raises(ForgetlessError, match="set packing=False"):
        _sft(tmp_path, tokenizer, DATASETS["text"], ["ewc"], packing=True)


def test_data_side_replaces_the_dataset_for_the_task_only(tmp_path, tokenizer):
    trainer = _sft(tmp_path, tokenizer, DATASETS["prompt-completion"], [{"name": "replay", "ratio": 0.2}])
    original = trainer.train_dataset
    trainer.train()
    assert trainer.train_dataset is original
    log = trainer.forgetless_task_logs[0]
    assert log["replay_general_examples"] > 0 and log["examples"] == len(original) + log["replay_general_examples"]


def test_lwf_under_sft_trains_through_the_logits_even_where_trl_fuses_the_lm_head(tmp_path, tokenizer):
    trainer = _sft(tmp_path, tokenizer, DATASETS["prompt-completion"], ["lwf"])
    trainer.train()
    assert trainer.forgetless_task_logs[0]["lwf_mean_scaled_kl"] > 0  # the student moved away from its teacher
    # The term has a gradient: TRL's logits recomputed for return_outputs have none, and with them lwf ended
    # bit-identical to naive fine-tuning.
    naive = _sft(tmp_path, tokenizer, DATASETS["prompt-completion"], [])
    naive.train()
    moved = dict(naive.model.named_parameters())
    assert any(not torch.equal(p, moved[n]) for n, p in trainer.model.named_parameters())


@pytest.mark.parametrize("strategies", [[], ["l2sp"], ["lwf"]])
def test_one_training_forward_per_micro_batch_under_sft(strategies, tmp_path, tokenizer):
    # TRL's fused LM head computes no logits: asking it for outputs made it run a second forward per step.
    model = _model(tokenizer)
    trainer = _sft(tmp_path, tokenizer, DATASETS["prompt-completion"], strategies, model=model, max_steps=3)
    calls = []
    handle = model.model.register_forward_hook(lambda module, args, output: calls.append(module.training))
    try:
        trainer.train()
    finally:
        handle.remove()
    # Each step is one forward in train mode; lwf's teacher runs the same modules once per step in eval mode.
    assert calls.count(True) == 3, calls
    assert calls.count(False) == (3 if strategies == ["lwf"] else 0), calls


def test_successive_trainers_with_one_stack_are_successive_tasks(tmp_path, tokenizer):
    model = _model(tokenizer)
    first = _sft(tmp_path, tokenizer, DATASETS["text"], [{"name": "ewc", "samples": 4, "lam": 100.0}], model=model)
    first.train()
    ewc = first.strategy_stack.strategies[0]
    mass_after_first = sum(float(f.sum()) for f in ewc.fisher.values())
    second = _sft(tmp_path, tokenizer, DATASETS["prompt-completion"], first.strategy_stack, model=model)
    second.train()
    assert [t.name for t in second.strategy_stack.finished] == ["task1", "task2"]
    assert second.strategy_stack.strategies[0] is ewc
    # Offline EWC adds each task's Fisher: the second task's consolidation grew what the first left.
    assert sum(float(f.sum()) for f in ewc.fisher.values()) > mass_after_first
    assert second.forgetless_task_logs[0]["ewc_mean_penalty"] > 0  # task 1 and the start were protected


def test_monitor_logs_through_the_trainer_and_writes_results(tmp_path, tokenizer, task_files):
    model = _model(tokenizer)
    monitor = forgetless.ForgettingMonitor(suites=["general"], tasks=[task_files["mc"]], every_steps=1, out_dir=tmp_path / "mon",
                                           limit=3, progress=False)
    encoded = [tokenizer(row["text"])["input_ids"] for row in DATASETS["text"]]
    args = TrainingArguments(output_dir=str(tmp_path / "hf"), max_steps=2, per_device_train_batch_size=2, learning_rate=1e-2,
                             report_to=[], save_strategy="no", use_cpu=True, disable_tqdm=True, logging_steps=1)
    from transformers import DataCollatorForLanguageModeling

    trainer = Trainer(model=model, args=args, train_dataset=Dataset.from_list([{"input_ids": ids} for ids in encoded]),
                      data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False), callbacks=[monitor],
                      processing_class=tokenizer)
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "forgetless/task/mc" in entry]
    assert [entry["step"] for entry in logged] == [0, 1, 2]  # before, step 1 (step 2 is the end), after
    results = RunResults.read(tmp_path / "mon" / "results.json")
    assert results.matrix_rows == ["before training", "after task1"]
    assert [row[0] for row in results.matrix] == [logged[0]["forgetless/task/mc"], logged[-1]["forgetless/task/mc"]]
    last = logged[-1]
    assert last["forgetless/general_change"] == pytest.approx(last["forgetless/general"] - logged[0]["forgetless/general"])
    assert last["forgetless/general_change"] == pytest.approx(results.metrics.general_delta_abs)
    assert last["forgetless/general_change_se"] == pytest.approx(results.metrics.general_delta_se)
    worst = results.metrics.general_tasks[results.metrics.general_worst_task]
    assert worst.delta == min(t.delta for t in results.metrics.general_tasks.values())
    assert last["forgetless/general_worst_change"] == pytest.approx(worst.delta)
    assert last["forgetless/general_tasks_fell"] == sum(
        not t.within_noise and t.delta < 0 for t in results.metrics.general_tasks.values())
    assert (tmp_path / "mon" / "report.md").is_file()
    assert results.environment["packages"]["transformers"] == transformers.__version__  # the user's process's
    # The items behind the scores, for comparing this run with another item by item.
    log = EvaluationLog.read(tmp_path / "mon" / "evaluations.json")
    assert log.task_samples[-1]["mc"].score() == pytest.approx(last["forgetless/task/mc"])
    change = general_change(log.general_samples[0], log.general_samples[-1])
    assert (change["delta_abs"], change["delta_se"]) == pytest.approx((last["forgetless/general_change"],
                                                                       last["forgetless/general_change_se"]))


def test_with_strategies_takes_only_trainer_classes():
    with pytest.raises(ForgetlessError, match="Trainer subclass"):
        forgetless.with_strategies(dict)
    assert forgetless.with_strategies(Trainer) is forgetless.with_strategies(Trainer)


def test_default_model_path_is_a_plain_transformers_folder():
    from transformers import AutoConfig

    path = Path(forgetless.default_model_path())
    assert (path / "model.safetensors").is_file()
    assert AutoConfig.from_pretrained(path).model_type == "llama"


@pytest.mark.smoke
def test_example_sft_script_runs_on_the_default_model(tmp_path):
    script = Path(__file__).parents[1] / "examples" / "sft_with_forgetless.py"
    out = tmp_path / "out"
    # ewc's Fisher on 8 sequences, not 64: at the default its two estimates took 187 s of the script's 224 s
    # (cProfile, 2 cores), and the test ran past 900 s beside other work.
    done = subprocess.run([sys.executable, str(script), "--out", str(out), "--max-steps", "2", "--limit", "2",
                           "--strategies", '[{"name": "ewc", "samples": 8}]'],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    results = RunResults.read(out / "results.json")
    assert results.strategies == ["ewc"] and len(results.matrix) == 2
    assert "general change:" in done.stdout


def test_monitor_scores_the_task_after_post_task_edits(tmp_path, tokenizer, task_files):
    """WiSE at alpha 0 puts the starting weights back at the task's end: the monitor must see that model."""
    # A perplexity task: its score moves with any weight change (an accuracy on 6 items may not).
    monitor = forgetless.ForgettingMonitor(suites=[], tasks=[task_files["text"]], every_steps=1, progress=False)
    trainer = _sft(tmp_path, tokenizer, DATASETS["text"], [{"name": "wise", "alpha": 0.0}], callbacks=[monitor])
    trainer.train()
    scores = [(r["stage"], r["scores"]["text"]["score"]) for r in monitor.evaluator.log.task_evals]
    assert [stage for stage, _ in scores] == ["before", "step", "after_task"]
    assert scores[1][1] != pytest.approx(scores[0][1], abs=1e-4)  # training moved the model ...
    assert scores[2][1] == pytest.approx(scores[0][1], abs=1e-6)  # ... and WiSE put it back before the end score
    assert monitor.results().training[0]["wise_alpha"] == 0.0


def test_the_logged_gradient_norms_are_the_largest_its_step_and_the_median_of_the_finite_logs():
    """From a Trainer's log history: entries without a gradient norm (the end-of-training summary, evaluations) and a
    non-finite norm (an overflowed step) are not logs of it; the median of 2, 3, 9 is 3."""
    from forgetless.integrations.strategy_trainer import logged_gradient_norms

    history = [{"loss": 2.1, "grad_norm": 2.0, "step": 1}, {"loss": 2.0, "grad_norm": float("nan"), "step": 2},
               {"loss": 1.9, "grad_norm": 9.0, "step": 3}, {"eval_loss": 1.5, "step": 3},
               {"loss": 1.8, "grad_norm": 3.0, "step": 4}, {"train_runtime": 1.0, "train_loss": 2.0, "step": 4}]
    assert logged_gradient_norms(history) == {"grad_norm_max": 9.0, "grad_norm_max_step": 3, "grad_norm_median": 3.0,
                                              "grad_norm_logs": 3}
    assert logged_gradient_norms([{"train_runtime": 1.0, "step": 4}, {"loss": 2.0, "grad_norm": None, "step": 5}]) == {}
    # Logging every 2 steps, a checkpoint's (or a Ctrl-C's) own log at step 3 is not one of the regular logs, and
    # step 1 counts only when the Trainer logs the first step.
    regular = logged_gradient_norms(history, every=2)
    assert (regular["grad_norm_logs"], regular["grad_norm_max"], regular["grad_norm_median"]) == (1, 3.0, 3.0)
    assert logged_gradient_norms(history, every=2, first=True)["grad_norm_logs"] == 2
