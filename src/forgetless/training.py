"""The continual run: tasks trained in order through `transformers.Trainer`, scored before, during and after.

One run = model + adapter + ordered tasks + strategies + evaluation suites + schedule. Per task:

    prepare model (LoRA adapter or all weights) -> strategies.on_task_start -> encode rows
    -> strategies.prepare_examples -> Trainer.train (loss = token CE + sum of strategies' extra_loss,
       evaluation every `eval.every_steps`) -> strategies.transform_weights -> strategies.consolidate
    -> evaluate -> checkpoint -> merge LoRA (merge mode)

The Trainer gives accelerate, DDP/FSDP/DeepSpeed, mixed precision and logger integrations for free.
"""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from transformers import Trainer, TrainerCallback, TrainingArguments, set_seed

from . import __version__
from .adapters import adapter_name, finish_task, prepare_for_task, trainable_parameter_count
from .config import RunConfig
from .data.encoding import IGNORE_INDEX, PaddingCollator, encode_rows
from .data.tasks import TrainingTask, load_task
from .errors import ForgetlessError
from .evaluation.evaluator import EvaluationLog, Evaluator
from .evaluation.suites import heldout_task, load_eval_file, load_suite
from .fileio import atomic_write_json
from .metrics import continual_metrics, general_change
from .models import load_model_and_tokenizer
from .strategies import Strategy, TaskContext, build_strategies


def token_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Next-token cross-entropy averaged over trained tokens, each weighted by `weights` if given.

    logits (B, T, V), labels (B, T) with -100 where untrained, weights (B, T) or None.
    The average is over the weight mass, so weights rescale tokens relative to each other.
    """
    logits = logits[:, :-1, :]  # position t predicts token t+1
    targets = labels[:, 1:]
    nll = F.cross_entropy(
        logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1), ignore_index=IGNORE_INDEX, reduction="none"
    ).view_as(targets)  # (B, T-1)
    mass = (targets != IGNORE_INDEX).float()
    if weights is not None:
        mass = mass * weights[:, 1:]
    total = mass.sum()
    if total <= 0:
        return nll.sum() * 0.0  # nothing to learn in this batch; keep the graph for DDP
    return (nll * mass).sum() / total


class ForgetlessTrainer(Trainer):
    """Trainer whose loss is token-weighted cross-entropy plus every strategy's extra term."""

    def __init__(self, *args, strategies: list[Strategy], context: TaskContext, **kwargs):
        super().__init__(*args, **kwargs)
        self.strategies = strategies
        self.context = context
        self.loss_parts: dict[str, float] = {}

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = dict(inputs)
        labels = inputs.pop("labels")
        weights = inputs.pop("token_weights", None)
        outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        loss = token_cross_entropy(outputs.logits, labels, weights)
        self.loss_parts = {"ce": float(loss.detach())}
        batch = {"labels": labels, "token_weights": weights, **inputs}
        for strategy in self.strategies:
            extra = strategy.extra_loss(self.context, model, batch, outputs)
            if extra is not None:
                self.loss_parts[strategy.name] = float(extra.detach())
                loss = loss + extra
        return (loss, outputs) if return_outputs else loss

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        for strategy in self.strategies:  # gradients are in .grad until the optimiser step
            strategy.after_backward(self.context, model, inputs)
        return loss


class _ListDataset(torch.utils.data.Dataset):
    def __init__(self, rows: list[dict[str, Any]]):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.rows[index]


class _StepCallback(TrainerCallback):
    """Keeps the global step in the task context and runs the periodic evaluation."""

    def __init__(self, run: "ContinualRun", context: TaskContext, step_offset: int):
        self.run = run
        self.context = context
        self.step_offset = step_offset

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.context.global_step = self.step_offset + state.global_step
        every = self.run.config.eval.every_steps
        if every and state.global_step % every == 0 and state.global_step < state.max_steps:
            self.run.evaluator.evaluate(model, "step", self.context.task.name, self.context.global_step)
            model.train()
        return control


def _write_checkpoint(model, tokenizer, config: RunConfig, strategies: list[Strategy], target: Path, adapter: str | None) -> None:
    """Safetensors only; written into a temporary folder and renamed, so no half checkpoint is ever visible."""
    from safetensors.torch import save_file

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        if config.adapter == "lora" and any(s.changes_base_weights for s in strategies):
            # A strategy moved the update into the base weights: an adapter alone would not reproduce the model.
            copy.deepcopy(model).merge_and_unload().save_pretrained(staging, safe_serialization=True)
            tokenizer.save_pretrained(staging)
        elif config.adapter == "lora":
            model.save_pretrained(staging, selected_adapters=[adapter] if adapter else None)  # adapter weights only
            # PEFT puts a non-"default" adapter in a sub-folder named after it; one adapter per checkpoint here.
            for sub in [p for p in staging.iterdir() if p.is_dir()]:
                for item in sub.iterdir():
                    os.replace(item, staging / item.name)
                sub.rmdir()
        else:
            model.save_pretrained(staging, safe_serialization=True)
            tokenizer.save_pretrained(staging)
        for strategy in strategies:
            tensors = strategy.state_tensors()
            if tensors:
                tensors = {key: value.detach().contiguous().cpu() for key, value in tensors.items()}
                save_file(tensors, staging / f"strategy-{strategy.name}.safetensors")
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _is_main_process() -> bool:
    from accelerate import PartialState

    return PartialState().is_main_process


class ContinualRun:
    """Holds everything one run needs; `execute()` trains all tasks and returns the results dict."""

    def __init__(
        self,
        config: RunConfig,
        out_dir: str | Path,
        model=None,
        tokenizer=None,
        progress: bool = True,
        before: EvaluationLog | None = None,
    ):
        self.config = config
        self.out_dir = Path(out_dir)
        self.progress = progress
        # Everything that can fail on bad input fails here, before any training.
        self.strategies = build_strategies(config.strategies, config, world_size=int(os.environ.get("WORLD_SIZE", "1")))
        self.tasks: list[TrainingTask] = [load_task(t, seed=config.train.seed) for t in config.tasks]
        for task in self.tasks:
            if config.train.max_train_examples:
                task.train = task.train[: config.train.max_train_examples]
            if not task.train or not task.heldout:
                raise ForgetlessError(f"task {task.name!r} has no training rows or no held-out rows")
        general = [t for suite in config.eval.suites for t in load_suite(suite)]
        general += [load_eval_file(t.name, t.file) for t in config.eval.tasks]
        if model is None:
            model, tokenizer = load_model_and_tokenizer(config.model, trust_remote_code=config.trust_remote_code)
        self.model, self.tokenizer = model, tokenizer
        held_out = [heldout_task(t, config.eval.task_choices) for t in self.tasks]
        self.evaluator = Evaluator(general, held_out, tokenizer, config.eval.limit, progress)
        self.before = before  # another run's evaluation of the same starting model, to skip a repeat
        self.global_step = 0
        self.task_logs: list[dict[str, Any]] = []

    def _training_arguments(self, task_index: int) -> TrainingArguments:
        train = self.config.train
        return TrainingArguments(
            output_dir=str(self.out_dir / ".trainer"),
            max_steps=train.steps,
            per_device_train_batch_size=train.batch_size,
            learning_rate=train.lr,
            lr_scheduler_type="constant_with_warmup" if train.scheduler == "constant" else train.scheduler,
            warmup_steps=train.warmup_steps,
            weight_decay=train.weight_decay,
            seed=train.seed + task_index,
            logging_steps=max(1, train.steps // 10),
            save_strategy="no",  # checkpoints are ours: safetensors, atomic, with strategy state
            report_to=[],
            remove_unused_columns=False,  # keeps token_weights
            disable_tqdm=not self.progress,
            dataloader_num_workers=0,
            dataloader_pin_memory=False,
        )

    def _train_task(self, task_index: int, task: TrainingTask) -> None:
        started = time.perf_counter()
        self.model = prepare_for_task(self.model, self.config, task_index)
        context = TaskContext(
            config=self.config,
            model=self.model,
            tokenizer=self.tokenizer,
            task=task,
            task_index=task_index,
            tasks=self.tasks,
            global_step=self.global_step,
        )
        for strategy in self.strategies:
            strategy.on_task_start(context)
        examples = encode_rows(self.tokenizer, task.train, self.config.train.max_length)
        for strategy in self.strategies:
            examples = strategy.prepare_examples(context, examples)
        if not examples:
            raise ForgetlessError(f"task {task.name!r}: no training example has a token to learn from")
        trainer = ForgetlessTrainer(
            model=self.model,
            args=self._training_arguments(task_index),
            train_dataset=_ListDataset(examples),
            data_collator=PaddingCollator(self.tokenizer.pad_token_id),
            strategies=self.strategies,
            context=context,
            callbacks=[_StepCallback(self, context, self.global_step)],
        )
        output = trainer.train()
        self.global_step += self.config.train.steps
        context.global_step = self.global_step
        context.model = self.model
        for strategy in self.strategies:
            strategy.transform_weights(context)
        for strategy in self.strategies:
            strategy.consolidate(context)
        trainable, total = trainable_parameter_count(self.model)
        self.task_logs.append(
            {
                "task": task.name,
                "examples": len(examples),
                "train_loss": output.training_loss,
                "train_seconds": time.perf_counter() - started,
                "trainable_parameters": trainable,
                "total_parameters": total,
                **context.log,
            }
        )

    def _checkpoint(self, task_index: int, task: TrainingTask) -> None:
        if not _is_main_process():
            return
        last = task_index == len(self.tasks) - 1
        mode = self.config.checkpoints
        if mode == "every_task" or (mode == "last" and last):
            name = "final" if mode == "last" else f"after-{task_index + 1}-{task.name}"
            stacked = self.config.adapter == "lora" and self.config.lora.between_tasks == "stack"
            _write_checkpoint(
                self.model, self.tokenizer, self.config, self.strategies, self.out_dir / "checkpoints" / name,
                adapter=adapter_name(task_index) if stacked else None,
            )

    def execute(self) -> dict[str, Any]:
        started = time.perf_counter()
        set_seed(self.config.train.seed)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if self.before is not None:
            self.evaluator.adopt_before(self.before)
        else:
            self.evaluator.evaluate(self.model, "before", None, 0)
        for task_index, task in enumerate(self.tasks):
            self._train_task(task_index, task)
            self.evaluator.evaluate(self.model, "after_task", task.name, self.global_step)
            self._checkpoint(task_index, task)
            self.model = finish_task(self.model, self.config)
        shutil.rmtree(self.out_dir / ".trainer", ignore_errors=True)
        results = self._results(time.perf_counter() - started)
        if _is_main_process():  # under accelerate/torchrun every process trains; one writes
            atomic_write_json(self.out_dir / "results.json", results)
            from .report import write_report

            write_report(results, self.out_dir)
        return results

    def _results(self, wall_time: float) -> dict[str, Any]:
        log = self.evaluator.log
        task_names = [t.name for t in self.tasks]
        matrix_records = [r for r in log.task_evals if r["stage"] in ("before", "after_task")]
        matrix = [[record["scores"][name]["score"] for name in task_names] for record in matrix_records]
        metrics: dict[str, Any] = dict(continual_metrics(matrix))
        if log.general and log.general[0]["scores"]:
            change = general_change(log.general_samples[0], log.general_samples[-1])
            metrics.update(
                general_before=change["before"],
                general_after=change["after"],
                general_delta_abs=change["delta_abs"],
                general_delta_rel=change["delta_rel"],
                general_delta_se=change["delta_se"],
                general_within_noise=change["within_noise"],
                general_tasks=change["tasks"],
            )
        return {
            "forgetless_version": __version__,
            "model": self.config.model,
            "adapter": self.config.adapter,
            "strategies": [s.name for s in self.strategies],
            "tasks": task_names,
            "matrix": matrix,
            "matrix_rows": ["before training"] + [f"after {name}" for name in task_names],
            "task_metric": {t.name: heldout_task(t).metric for t in self.tasks},
            "general": log.general,
            "task_evals": log.task_evals,
            "metrics": metrics,
            "training": self.task_logs,
            "eval_seconds": log.seconds,
            "wall_time_s": wall_time,
            "config": self.config.model_dump(mode="json"),
        }


def run_continual(config: RunConfig, out_dir: str | Path, model=None, tokenizer=None, progress: bool = True) -> dict[str, Any]:
    """Train `config.tasks` in order and write results.json, report.md and plots into `out_dir`."""
    return ContinualRun(config, out_dir, model=model, tokenizer=tokenizer, progress=progress).execute()
