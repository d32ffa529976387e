"""The continual run: tasks trained in order through `transformers.Trainer`, scored before, during and after.

One run = model + adapter + ordered tasks + strategies + evaluation suites + schedule. Per task:

    prepare model (LoRA adapter or all weights) -> encode rows -> with_strategies(Trainer).train(), in
    which the StrategyStack runs on_task_start, prepare_examples, the loss terms and after_backward of
    every step, then transform_weights and consolidate (evaluation every `eval.every_steps`)
    -> evaluate -> checkpoint -> merge LoRA (merge mode)

The runner trains through the same `with_strategies` glue as a user's own script, so the two cannot drift.

The Trainer gives accelerate, DDP/FSDP/DeepSpeed, mixed precision and logger integrations for free.
"""

from __future__ import annotations

import copy
import errno
import json
import logging
import os
import shutil
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments, set_seed

from .adapters import adapter_name, finish_task, lora_config, prepare_for_task, trainable_parameter_count
from .budget import BudgetGuard
from .config import RunConfig
from .data.encoding import EncodingCounts, PaddingCollator, encode_rows_counted
from .data.tasks import (
    GeneralData,
    TrainingTask,
    check_general_encoding,
    general_overlapping_scored,
    load_general_data,
    load_task,
)
from .environment import RESUME_IGNORED, environment_changes, run_environment
from .errors import ForgetlessError
from .evaluation.evaluator import EvaluationLog, Evaluator
from .evaluation.instructions import with_leakage
from .evaluation.lm_eval_tasks import load_lm_eval_tasks
from .evaluation.probe import GeneralProbe
from .evaluation.suites import TextPerplexityTask, heldout_task, load_eval_file, load_suite
from .fileio import atomic_write_json, check_output_path
from .integrations.strategy_trainer import ListDataset, with_strategies
from .models import load_model, load_tokenizer, match_pad_token
from .results import RunResults, build_results
from .resume import ResumeStore, RunInterrupted, check_resumable, data_digests, load_rng_state, rng_state
from .stopping import catch_stop_signals, signal_name, signal_on_any_process, wait_for_every_process
from .strategies import Strategy, StrategyStack, TaskData

log = logging.getLogger(__name__)


class _StepCallback(TrainerCallback):
    """Runs the periodic evaluation."""

    def __init__(self, run: "ContinualRun", task_name: str, step_offset: int):
        self.run = run
        self.task_name = task_name
        self.step_offset = step_offset

    def on_step_end(self, args, state, control, model=None, **kwargs):
        every, budget = self.run.config.eval.every_steps, self.run.budget
        final = state.global_step >= state.max_steps
        step = self.step_offset + state.global_step
        # Modes that restore, or tighten a cap, decide on the task's final state before its weight edits: evaluate it too.
        full = bool(every) and (state.global_step % every == 0 and not final or final and budget and budget.checks_final_state)
        probe = self.run.probe
        if probe is not None and state.global_step % self.run.config.eval.probe.every_steps == 0:
            point = probe.step(model, self.run.tokenizer, step)
            before = self.run.evaluator.log.general[0]["mean"]
            # A full evaluation at the same step decides instead: it is the more precise of the two.
            if budget is not None and not full:
                stop = budget.check_probe(model, point, before, self.task_name, final, *_optimizer_and_scheduler(kwargs))
                self._forget_discarded_probe_scores(budget)
                if stop:
                    control.should_training_stop = True
                    return control
        if full:
            self.run.evaluator.evaluate(model, "step", self.task_name, step)
            if budget is not None and budget.check(model, self.run.evaluator.log, self.task_name, step, final,
                                                   *_optimizer_and_scheduler(kwargs)):
                control.should_training_stop = True
            if budget is not None:
                self._forget_discarded_probe_scores(budget)
            self.run.write_progress()
            model.train()
        return control

    def _forget_discarded_probe_scores(self, budget: BudgetGuard) -> None:
        """After the budget restored a kept state, the probe's scores taken since then describe discarded weights."""
        restored_to = budget.take_restored_step()
        if restored_to is not None and self.run.probe is not None:
            self.run.probe.forget_after(restored_to)


def _optimizer_and_scheduler(callback_kwargs: dict) -> tuple:
    """The Trainer's optimizer and scheduler, which the budget's backoff slows down."""
    return callback_kwargs.get("optimizer"), callback_kwargs.get("lr_scheduler")


class _ResumeCallback(TrainerCallback):
    """Every `checkpoint_every_steps` steps, and at once on a stop signal (forgetless.stopping): transformers'
    checkpoint plus the run's state."""

    def __init__(self, run: "ContinualRun", task_index: int):
        self.run = run
        self.task_index = task_index
        self.stopping = False  # agreed at the step's end; a signal after it waits for the next step's agreement

    def on_step_end(self, args, state, control, **kwargs):
        every = self.run.config.checkpoint_every_steps
        final = state.global_step >= state.max_steps
        due = bool(every) and state.global_step % every == 0 and not final
        self.stopping = self.run.agree_on_stop()  # at every step, on every process, so all stop after the same one
        if (due or self.stopping) and not control.should_training_stop:
            control.should_save = True  # the Trainer writes its checkpoint, then calls on_save
            control.should_log = True  # every loss so far into the saved log history (a resumed task's mean loss)
        return control

    def on_save(self, args, state, control, **kwargs):
        staged = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        self.run.write_resume_state(self.task_index, trainer_checkpoint=staged)
        if self.stopping:  # agreed at this step's end, so every process is here (not the local flag: it may be newer)
            wait_for_every_process()  # until rank 0's state is written: a launcher stops the rest once one exits
            raise self.run.interruption(f"at step {state.global_step} of task {self.run.tasks[self.task_index].name!r}")
        return control


def _whole_task_loss(history: list[dict], resumed_at: int, steps: int, resumed_loss: float) -> float:
    """The mean loss over all of a resumed task's steps (transformers reports the steps since the resume only).

    Every checkpoint logs first, so the restored log history covers each step up to `resumed_at` exactly once.
    """
    before, last = 0.0, 0
    for entry in history:
        if "loss" in entry and last < entry["step"] <= resumed_at:
            before += entry["loss"] * (entry["step"] - last)
            last = entry["step"]
    return (before + resumed_loss * (steps - resumed_at)) / max(steps, 1)


def _write_checkpoint(model, tokenizer, config: RunConfig, strategies: list[Strategy], target: Path, adapter: str | None) -> None:
    """Safetensors only; written into a temporary folder and renamed, so no half checkpoint is ever visible.

    A write that fails (a full disk) leaves the earlier checkpoint at `target` as it was and removes the partial copy.
    """
    staging = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        _save_checkpoint(model, tokenizer, config, strategies, staging, adapter)
        _swap_in(staging, target)
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)  # ENOSPC: "No space left on device"
        kept = "the earlier checkpoint there is unchanged" if target.exists() else "no checkpoint was written there"
        hint = " (free some space, or write fewer: `checkpoints: last` or `none`)" if exc.errno == errno.ENOSPC else ""
        raise ForgetlessError(f"could not write checkpoint {target}: {reason[:1].lower() + reason[1:]}; {kept} and the "
                              f"partial copy was removed{hint}") from exc
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)


def _save_checkpoint(model, tokenizer, config: RunConfig, strategies: list[Strategy], staging: Path, adapter: str | None) -> None:
    from safetensors.torch import save_file

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


def _swap_in(staging: Path, target: Path) -> None:
    """Replace `target` by `staging` with renames only: the target path never holds half of either checkpoint
    (deleting the old one in place first would show a half-deleted folder to a kill in between)."""
    if not target.exists():
        os.replace(staging, target)
        return
    old = staging.with_name(staging.name + "-old")
    os.replace(target, old)
    try:
        os.replace(staging, target)
    except OSError:
        os.replace(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _check_lora_targets(config: RunConfig, model) -> None:
    """LoRA target modules that match no layer are refused before any evaluation (PEFT would fail later)."""
    targets = config.lora.target_modules
    if config.adapter != "lora" or targets == "all-linear":
        return
    if isinstance(targets, str):
        _check_lora_pattern(config, model)
        return
    linear = sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)})
    missing = [t for t in targets if t not in linear]
    if missing:
        raise ForgetlessError(f"lora.target_modules: {missing} match no linear layer of this model; it has {linear}")


def _check_lora_pattern(config: RunConfig, model) -> None:
    """A single string is a regular expression over full module names (PEFT's rule, checked with PEFT's own matcher):
    `target_modules: q_proj` matches nothing, which PEFT would only say after the evaluation before training."""
    import re

    from peft.tuners.tuners_utils import check_target_module_exists

    pattern, lora = config.lora.target_modules, lora_config(config)
    try:
        matched = [name for name, _ in model.named_modules() if name and check_target_module_exists(lora, name)]
    except re.error as exc:
        raise ForgetlessError(f"lora.target_modules: {pattern!r} is not a valid regular expression ({exc})") from None
    if not matched:
        example = next((name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)), "")
        raise ForgetlessError(
            f"lora.target_modules: {pattern!r} matches no module of this model: a single string is a regular expression "
            f"over full module names such as {example!r}; give a list (e.g. [q_proj, v_proj]) to match modules by name"
        )


def _world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    # The launcher's RANK (torchrun and accelerate launch set it for every process), not accelerate's PartialState:
    # built before the first Trainer, that state came up single-process on a CPU, every rank thought it was rank 0
    # and two wrote resume/ at once (seen in a full test run); transformers rebuilds it later for the Trainer.
    return int(os.environ.get("RANK", "0")) == 0


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
        resume_from: Path | None = None,
    ):
        self.config = config
        self.out_dir = Path(out_dir)
        self.progress = progress
        # Everything that can fail on bad input fails here, before any training.
        sharding = config.training_setup().sharding
        if sharding != "none":  # its checkpoints, resumable state and evaluations read whole tensors
            raise ForgetlessError(
                f"forgetless run does not support {sharding.upper()} yet: no sharded run has been verified (its checkpoints, "
                "resumable state and evaluations read whole parameter tensors, which a sharded model splits across "
                "processes); train with DDP instead (accelerate launch --multi_gpu --num_processes N), see docs/scale.md"
            )
        self.data_digests = data_digests(config.model_dump(mode="json"))  # of the files the rows are read from below
        self.stack = StrategyStack.from_specs(config.strategies, general=run_general_data(config))
        self.configured_knobs = strategy_knobs(self.stack.strategies)  # before a budget's strengthen moves any
        self.stack.check(config.training_setup(), world_size=_world_size())
        if config.train.batch_size % (config.train.gradient_accumulation_steps * _world_size()):
            raise ForgetlessError(
                f"train.batch_size ({config.train.batch_size}) must be a multiple of gradient_accumulation_steps x processes "
                f"({config.train.gradient_accumulation_steps} x {_world_size()}): it is the examples of one optimizer step"
            )
        self.strategies = self.stack.strategies
        self.budget = BudgetGuard(config.budget, self.stack) if config.budget else None
        self.probe: GeneralProbe | None = None
        self.tasks: list[TrainingTask] = [load_task(t, seed=config.train.seed) for t in config.tasks]
        for task in self.tasks:
            if config.train.max_train_examples:
                task.train = task.train[: config.train.max_train_examples]
            if not task.train or not task.heldout:
                raise ForgetlessError(f"task {task.name!r} has no training rows or no held-out rows")
        general = [t for suite in config.eval.suites for t in load_suite(suite)]
        general += [load_eval_file(t.name, t.file) for t in config.eval.tasks]
        general += load_lm_eval_tasks(config.eval.lm_eval_tasks, config.eval.lm_eval_include)
        if self.stack.general is not None:  # held-out rows and every perplexity text scored (suites, eval.tasks)
            scored = {task.name: task.heldout for task in self.tasks}
            scored |= {t.name: [{"text": text} for text in t.texts] for t in general if isinstance(t, TextPerplexityTask)}
            general_overlapping_scored(self.stack.general, scored)
        general = with_leakage(general, [row for task in self.tasks for row in task.train])
        if model is None:  # the tokenizer first: the training rows are checked before the (larger) model loads
            tokenizer = load_tokenizer(config.model, trust_remote_code=config.trust_remote_code)
        if self.stack.general is not None:
            emptied = check_general_encoding(self.stack.general, tokenizer, config.train.max_length)
            if emptied and is_main_process():
                log.warning(f"{self.stack.general.source}: {emptied} of {len(self.stack.general.rows)} rows "
                            f"have a prompt of train.max_length ({config.train.max_length}) tokens or more; strategies "
                            "leave them out")
        # encoded once: the check's examples are the ones trained on (and a resumed run's finished tasks)
        encoded = [self._check_encoding(config.tasks[i], task, tokenizer) for i, task in enumerate(self.tasks)]
        self.examples = [examples for examples, _ in encoded]
        self.encoding = [counts for _, counts in encoded]
        if model is None:
            model = load_model(config.model, dtype=getattr(torch, config.model_dtype), trust_remote_code=config.trust_remote_code)
            match_pad_token(model, tokenizer)
        self.model, self.tokenizer = model, tokenizer
        _check_lora_targets(config, model)
        self.stack.check_weight_names([name for name, _ in model.named_parameters()])
        held_out = [heldout_task(t, config.eval.task_choices) for t in self.tasks]
        self.evaluator = Evaluator(general, held_out, tokenizer, config.eval.limit, progress)
        self.before = before  # another run's evaluation of the same starting model, to skip a repeat
        self.global_step = 0
        self.task_logs: list[dict[str, Any]] = []
        self.resume_from = resume_from  # a state folder of OUT/resume to continue from (run --resume)
        self.environment, self.environment_changes = run_environment(), []
        # Where this run scored its "before" evaluation (resumed: the invocation that scored it), for compare's
        # before.json; a run given another run's `before` did not score one (compare keeps where that one was).
        self.before_environment = self.environment
        self.resume_store = ResumeStore(self.out_dir)
        self.stop_signal: int | None = None  # the first SIGINT or SIGTERM caught (forgetless.stopping)
        # What the Ctrl-C message tells the user to run next (forgetless compare names its own command).
        self.continue_with = "`forgetless run CONFIG --out DIR --resume`"

    def _check_encoding(self, task_config, task: TrainingTask, tokenizer) -> tuple[list[dict[str, list[int]]], EncodingCounts]:
        """A task's training examples, and what train.max_length did to its chat rows: nothing left of any row is
        refused, drops and cuts warned."""
        max_length = self.config.train.max_length
        examples, counts = encode_rows_counted(tokenizer, task.train, max_length)
        where = f"task {task.name!r} ({task_config.file or f'builtin {task_config.builtin}'})"
        if counts.emptied == counts.rows:
            raise ForgetlessError(
                f"{where}: all {counts.rows} training rows have a prompt (with the chat template) of train.max_length "
                f"({max_length}) tokens or more, so no response token is left to learn from; raise train.max_length or "
                "shorten the prompts"
            )
        if not is_main_process():  # every process checks; one warns
            return examples, counts
        if counts.emptied:
            log.warning(f"{where}: {counts.emptied} of {counts.rows} training rows have a prompt of train.max_length "
                        f"({max_length}) tokens or more and are left out (no response token to learn from)")
        if counts.truncated:
            log.warning(f"{where}: {counts.truncated} of {counts.rows} training rows are longer than train.max_length "
                        f"({max_length} tokens) and are cut there (the end of their response is not trained)")
        return examples, counts

    def _training_kwargs(self, task_index: int) -> dict[str, Any]:
        """The run config's train section as TrainingArguments keywords (a TRL config takes the same)."""
        train = self.config.train
        return dict(
            output_dir=str(self.out_dir / ".trainer"),
            max_steps=train.steps,
            # batch_size is examples per optimizer step over all processes: the same config gives the same steps.
            per_device_train_batch_size=train.batch_size // (train.gradient_accumulation_steps * _world_size()),
            gradient_accumulation_steps=train.gradient_accumulation_steps,
            # Passed only when on: transformers 5 warns on every explicit value of this renamed argument.
            **({"gradient_checkpointing": True} if train.gradient_checkpointing else {}),
            bf16=train.precision == "bf16",
            # Without it transformers refuses bf16 on a CPU (which autocasts to bf16 fine, AVX512-BF16 or not).
            use_cpu=not (torch.cuda.is_available() or torch.backends.mps.is_available()),
            fp16=train.precision == "fp16",
            learning_rate=train.lr,
            lr_scheduler_type="constant_with_warmup" if train.scheduler == "constant" else train.scheduler,
            warmup_steps=train.warmup_steps,
            weight_decay=train.weight_decay,
            seed=train.seed + task_index,
            logging_steps=max(1, train.steps // 10),
            save_strategy="no",  # checkpoints are ours: safetensors, atomic, with strategy state
            report_to=[],
            disable_tqdm=not self.progress,
            dataloader_num_workers=0,
            dataloader_pin_memory=False,
        )

    def _trainer(self, task_index: int, task: TrainingTask, examples: list[dict[str, list[int]]]) -> Trainer:
        """`with_strategies(Trainer)` on the encoded examples, driven by the run's one StrategyStack."""
        return with_strategies(Trainer)(
            model=self.model,
            args=TrainingArguments(**self._training_kwargs(task_index)),
            train_dataset=ListDataset(examples),
            data_collator=PaddingCollator(self.tokenizer.pad_token_id),
            processing_class=self.tokenizer,
            strategies=self.stack,
            forgetless_setup=self.config.training_setup(),
            forgetless_adapter=adapter_name(task_index) if self.config.adapter == "lora" else None,
            forgetless_task=TaskData(name=task.name, format=task.format, rows=task.train, examples=examples),
            callbacks=self._callbacks(task),
        )

    def _callbacks(self, task: TrainingTask) -> list[TrainerCallback]:
        """The run's own callbacks for a task's trainer: periodic evaluation, then resumable checkpoints."""
        return [_StepCallback(self, task.name, self.stack.global_step), _ResumeCallback(self, self.tasks.index(task))]

    def _train_task(self, task_index: int, task: TrainingTask, mid_task: tuple[Path, dict, dict] | None = None) -> None:
        """Train one task; `mid_task` = (transformers checkpoint, state.json, tensors) continues one from a step."""
        started = time.perf_counter()
        self.model = prepare_for_task(self.model, self.config, task_index)
        examples = self.examples[task_index]
        if not examples and not self.stack.uses("prepare_examples"):  # a data-side strategy may still add some
            raise ForgetlessError(f"task {task.name!r}: no training example has a token to learn from")
        trainer = self._trainer(task_index, task, examples)
        if self.budget is not None:
            self.budget.start_task(self.model, self.stack.global_step)
        resumed_at = 0
        if mid_task is None:
            output = trainer.train()
        else:
            checkpoint, state, tensors = mid_task
            if self.budget is not None:
                self.budget.load_state(tensors["task"].get("budget", {}), state["budget"])
            task_tensors = {name.removeprefix("strategy:"): group for name, group in tensors["task"].items()
                            if name.startswith("strategy:")}
            self.stack.resume_task({**state["task_state"], "tensors": task_tensors})
            resumed_at = json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))["global_step"]
            output = trainer.train(resume_from_checkpoint=str(checkpoint))
            output = output._replace(training_loss=_whole_task_loss(trainer.state.log_history, resumed_at,
                                                                    trainer.state.global_step, output.training_loss))
        self.global_step = self.stack.global_step
        trainable, total = trainable_parameter_count(self.model)
        task_log = trainer.forgetless_task_logs[-1] if trainer.forgetless_task_logs else {}
        self.task_logs.append(
            {
                "train_loss": output.training_loss,
                "train_seconds": time.perf_counter() - started,
                "trainable_parameters": trainable,
                "total_parameters": total,
                "task": task.name,
                # the step this invocation continued the task from (0: trained whole), so train_seconds covers
                # steps - resumed_at_step steps (forgetless compare's s / step)
                "resumed_at_step": resumed_at,
                # chat rows train.max_length left out or cut short (also warned when the run starts)
                "emptied_rows": self.encoding[task_index].emptied,
                "truncated_rows": self.encoding[task_index].truncated,
                **{k: v for k, v in task_log.items() if k != "task"},
            }
        )

    def _check_finite(self, task: TrainingTask) -> None:
        """A diverged model must never replace a good checkpoint or a finished run's files: stop here."""
        diverged = [name for name, p in self.model.named_parameters() if p.requires_grad and not torch.isfinite(p).all()]
        if diverged:
            raise ForgetlessError(
                f"training diverged on task {task.name!r}: {len(diverged)} trained tensors hold NaN or inf "
                f"(e.g. {diverged[0]}); nothing more was written (try a lower train.lr)"
            )

    def _checkpoint(self, task_index: int, task: TrainingTask) -> None:
        if not is_main_process():
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

    def execute(self) -> RunResults:
        started = time.perf_counter()
        set_seed(self.config.train.seed)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._started = started
        if is_main_process():  # a killed run leaves transformers' working folder, maybe half a state folder
            shutil.rmtree(self.out_dir / ".trainer", ignore_errors=True)
            self.resume_store.clean()
        restore_signal = catch_stop_signals(self._stop_asked)
        try:
            first_task, mid_task = self._start_or_resume()
            self.probe = self._probe() if self.probe is None else self.probe
            self.write_progress()
            for task_index in range(first_task, len(self.tasks)):
                task = self.tasks[task_index]
                if mid_task is None:  # cheap at the first task (no weights); then one copy of the model
                    self.write_resume_state(task_index, task_start=True)
                if self.agree_on_stop():
                    raise self.interruption(f"before task {task.name!r}")
                self._train_task(task_index, task, mid_task)
                mid_task = None
                self._check_finite(task)
                self.evaluator.evaluate(self.model, "after_task", task.name, self.global_step)
                if self.budget is not None:
                    self.budget.check(self.model, self.evaluator.log, task.name, self.global_step)
                self.write_progress()
                self._checkpoint(task_index, task)
                self.model = finish_task(self.model, self.config)
            self.agree_on_stop()  # a signal after the last step: the run completes; compare stops before its next row
        finally:
            restore_signal()
        results = self._results(time.perf_counter() - started)
        if is_main_process():  # under accelerate/torchrun every process trains; one writes
            shutil.rmtree(self.out_dir / ".trainer", ignore_errors=True)
            self.evaluator.log.write(self.out_dir / "evaluations.json")  # before results.json marks the run complete
            atomic_write_json(self.out_dir / "results.json", {**results.to_json(), "complete": True})
            from .report import write_report

            write_report(results, self.out_dir)
            self.resume_store.remove()  # the run is complete: its checkpoints are under checkpoints/
        return results

    # -- resumable state -------------------------------------------------------------------------------

    @property
    def interrupted(self) -> bool:
        return self.stop_signal is not None

    def _stop_asked(self, signum: int) -> None:
        if self.stop_signal is None:  # another process's signal, agreed on, may have come first
            self.stop_signal = signum

    def agree_on_stop(self) -> bool:
        """Whether this process or any other got a stop signal; every process calls it at the same points."""
        self.stop_signal = signal_on_any_process(self.stop_signal)
        return self.interrupted

    def interruption(self, where: str) -> RunInterrupted:
        signum = self.stop_signal or signal.SIGINT
        return RunInterrupted(f"interrupted {where} ({signal_name(signum)}); a resumable state is in "
                              f"{self.resume_store.root} (continue with {self.continue_with})", signum=signum)

    def write_resume_state(self, task_index: int, task_start: bool = False, trainer_checkpoint: Path | None = None) -> None:
        """A state folder under OUT/resume: at a task's start (`task_start`) or in the middle of it."""
        if not is_main_process():
            return
        rng_tensors, rng_values = rng_state()
        tensors: dict[str, dict[str, dict[str, torch.Tensor]]] = {"rng": {"rng": rng_tensors}}
        if task_start:  # in the middle of a task, the task start's copy is kept (ResumeStore.write)
            tensors["strategies"] = self.stack.state_tensors()
        state: dict[str, Any] = {
            "config": self.config.model_dump(mode="json"), "strategy_params": self.configured_knobs,
            "task_index": task_index, "mid_task": not task_start,
            "global_step": self.stack.global_step, "evaluations": self.evaluator.log.to_json(), "task_logs": self.task_logs,
            "strengths": self.stack.strengths(), "rng": rng_values,
            "probe": self.probe.state() if self.probe is not None else None,
            "environment": self.environment, "environment_changes": self.environment_changes,
            "before_environment": self.before_environment, "data_digests": self.data_digests,
        }
        task_tensors: dict[str, dict[str, torch.Tensor]] = {}
        if self.budget is not None:
            kept, state["budget"] = self.budget.state()
            task_tensors["budget"] = kept
        if not task_start:
            task_state = self.stack.task_state()
            task_tensors.update({f"strategy:{name}": group for name, group in task_state.pop("tensors").items()})
            state["task_state"] = task_state
        tensors["task"] = task_tensors
        model = self.model if task_start and task_index > 0 else None
        self.resume_store.write(state, model, tensors, trainer_checkpoint)

    def _note_environment(self, state: dict[str, Any]) -> None:
        """On resume: what changed since the state was written (states from before it was recorded: nothing known)."""
        self.environment_changes = list(state.get("environment_changes", []))
        # States written before it was recorded: the interrupted invocation's, which scored "before" unless resumed too.
        self.before_environment = state.get("before_environment") or state.get("environment") or self.environment
        if not state.get("environment"):
            return
        changes = environment_changes(state["environment"], self.environment, RESUME_IGNORED)
        if changes:
            self.environment_changes += changes
            if is_main_process():
                log.warning(f"--resume: the environment differs from the one the run was interrupted in ({'; '.join(changes)}); "
                            "its results will mix the two (results.json: environment_changes)")

    def _start_or_resume(self) -> tuple[int, tuple[Path, dict, dict] | None]:
        """(first task to train, the mid-task checkpoint to continue it from or None); evaluates "before" if new."""
        if self.resume_from is None:
            if self.before is not None:
                self.evaluator.adopt_before(self.before)
            else:
                self.evaluator.evaluate(self.model, "before", None, 0)
            return 0, None
        folder = self.resume_from
        device = next(self.model.parameters()).device
        state, tensors = ResumeStore.read(folder, device)
        task_index = state["task_index"]
        for earlier in range(task_index):  # the same module structure as the saved model (LoRA layouts)
            self.model = finish_task(prepare_for_task(self.model, self.config, earlier), self.config)
        ResumeStore.load_model(folder, self.model)
        self.stack.load_state_tensors(tensors["strategies"])
        self.stack.load_strengths(state["strengths"])
        self.stack.global_step = self.global_step = state["global_step"]
        finished = self.tasks[:task_index]
        self.stack.finished = [TaskData(t.name, t.format, t.train, self.examples[i]) for i, t in enumerate(finished)]
        self.evaluator.restore(EvaluationLog.from_json(state["evaluations"]))
        self.task_logs = state["task_logs"]
        if self.budget is not None and "budget" in state:
            self.budget.load_state(tensors["task"].get("budget", {}), state["budget"])
        if state["probe"] is not None:
            self.probe = self._probe()
            self.probe.load_state(state["probe"])
        load_rng_state(tensors["rng"]["rng"], state["rng"])
        self._note_environment(state)
        return task_index, (folder / "trainer", state, tensors) if state["mid_task"] else None

    def _probe(self) -> GeneralProbe | None:
        settings = self.config.eval.probe
        if settings is None:
            return None
        return GeneralProbe(self.evaluator.general_tasks, self.evaluator.log.general_samples[0], settings.items_per_step,
                            settings.window, seed=self.config.train.seed, limit=self.config.eval.limit)

    def write_progress(self) -> None:
        """results.json with every evaluation so far, marked `"complete": false`: a run that dies keeps them."""
        if is_main_process():
            results = self._results(time.perf_counter() - self._started)
            atomic_write_json(self.out_dir / "results.json", {**results.to_json(), "complete": False})

    def _results(self, wall_time: float) -> RunResults:
        return build_results(
            self.evaluator.log, [t.name for t in self.tasks], {t.name: heldout_task(t).metric for t in self.tasks},
            model=self.config.model, adapter=self.config.adapter, strategies=self.stack.names,
            stores_raw_data=[s.name for s in self.strategies if s.stores_raw_data],
            # Every knob as resolved (defaults change between versions: a bare `ewc` was lam 100, now a cap), as
            # it stands at the end (a budget's strengthen may have moved one).
            strategy_params=strategy_knobs(self.strategies),
            training=self.task_logs, wall_time_s=wall_time, config=self.config.model_dump(mode="json"),
            environment=self.environment,
            # A resume under other versions mixes two environments in one result: said, not refused.
            **({"environment_changes": self.environment_changes} if self.environment_changes else {}),
            **({"budget": self.budget.checks} if self.budget is not None else {}),
            **(self.probe.summary() if getattr(self, "probe", None) is not None else {}),
        )


def run_continual(config: RunConfig, out_dir: str | Path, model=None, tokenizer=None, progress: bool = True,
                  overwrite: bool = False, resume: bool = False) -> RunResults:
    """Train `config.tasks` in order and write results.json, report.md and plots into `out_dir`.

    A folder that already holds a run's results is refused unless `overwrite` (a finished run is not
    silently replaced by a new one's partial files) or `resume` (continue the run from its latest state in
    OUT/resume, with the same config; see forgetless.resume).
    """
    out = Path(out_dir)
    check_output_path(out, "--out", folder=True)  # before the model loads, not when the first file is written
    if resume and overwrite:
        raise ForgetlessError("--resume continues the run in --out and --overwrite replaces it: pass one of them")
    config_json = config.model_dump(mode="json")
    resume_from = (check_resumable(out, config_json, resolved_strategy_params(config), data_digests(config_json))
                   if resume else None)
    # Only the process that writes checks and cleans the folder: on several processes another rank can get here
    # after rank 0 has written its first results.json (seen: 1 launch in 3 under load refused its own run).
    writer = is_main_process()
    if writer and resume_from is None and (out / "results.json").exists() and not overwrite:
        raise ForgetlessError(f"{out} already holds a run's results (results.json); choose another --out, pass "
                              "--resume to continue it, or --overwrite to replace it")
    if writer and overwrite:
        ResumeStore(out).remove()
    return ContinualRun(config, out, model=model, tokenizer=tokenizer, progress=progress, resume_from=resume_from).execute()


def strategy_knobs(strategies: list[Strategy]) -> dict[str, dict[str, Any]]:
    """Every knob of each strategy as it stands (a strategy whose __init__ skips the base class's has no `params`:
    recorded as none)."""
    return {s.name: s.params.model_dump(mode="json") if hasattr(s, "params") else {} for s in strategies}


def resolved_strategy_params(config: RunConfig) -> dict[str, dict[str, Any]]:
    """Every knob of the config's strategies as this version resolves them, before a budget moves any."""
    return strategy_knobs(StrategyStack.from_specs(config.strategies).strategies)


def run_general_data(config: RunConfig) -> GeneralData | None:
    """The config's `general_data` rows, read and checked (None: strategies protect the bundled general English)."""
    return load_general_data(config.general_data) if config.general_data is not None else None


def context_for(config: RunConfig, model, tokenizer, tasks: list[TrainingTask], task_index: int = 0):
    """The TaskContext the runner gives strategies for task `task_index` (tests and benchmarks use it)."""
    from .strategies import Clock, TaskContext

    def data(task: TrainingTask) -> TaskData:
        return TaskData(name=task.name, format=task.format, rows=task.train)

    return TaskContext(
        setup=config.training_setup(), model=model, tokenizer=tokenizer, task=data(tasks[task_index]), task_index=task_index,
        earlier_tasks=[data(t) for t in tasks[:task_index]],
        adapter=adapter_name(task_index) if config.adapter == "lora" else None, clock=Clock(task_steps=config.train.steps),
        general=run_general_data(config),
    )
