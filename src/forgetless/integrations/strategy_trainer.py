"""`with_strategies(trainer_cls)`: any Trainer subclass, with a `StrategyStack` driving its training step.

The subclass keeps the parent's loss (SFTTrainer's completion-only masking included) and adds, through
the stack: strategy loss terms in `compute_loss`, `after_backward` once per optimizer step, data-side
preparation of the task's examples before `train()`, and post-task edits and consolidation after it.
Each `train()` call is one task; pass `trainer.strategy_stack` to the next trainer to carry state over.

Gradient accumulation: the parent trainer normalises its loss over the accumulation window (by
`num_items_in_batch`) or divides each micro-batch's loss by the window's length. Strategy terms are
weighted to match (see `MicroBatch`), so 2 micro-batches of 2 give the same step as one batch of 4.
"""

from __future__ import annotations

import inspect
import math
import os
import statistics
from typing import Any

import torch
from transformers import TrainerCallback
from transformers.trainer_utils import IntervalStrategy

from ..data.encoding import IGNORE_INDEX, PaddingCollator
from ..data.tasks import GeneralData, check_general_encoding, load_general_data, validated_rows
from ..errors import ForgetlessError
from ..nn import trained_tokens
from ..strategies import MicroBatch, OptimizerStep, StrategyStack, TaskData, TrainingSetup


def _fuses_lm_head(model: torch.nn.Module) -> bool:
    """Whether TRL patched a forward that takes `fused_lm_head` onto a module of `model` (SFTTrainer does)."""
    for module in model.modules():
        forward = vars(module).get("forward")  # patched on the instance, not the class
        while forward is not None:  # accelerate wraps the patched forward again (fp32 outputs under autocast)
            if "fused_lm_head" in inspect.signature(forward, follow_wrapped=False).parameters:
                return True
            forward = getattr(forward, "__wrapped__", None)
    return False


def logged_gradient_norms(history: list[dict[str, Any]], every: int | None = None, first: bool = False) -> dict[str, Any]:
    """The gradient norms the Trainer logged over a task (before its clipping at max_grad_norm): the largest, at which
    step, and the median, so that unstable training shows in results.json and the HTML report, not only in the
    console (steps are the task's own). Naive on the bundled benchmark at seed 6 logged 22-107 at four of ten `pydoc`
    logs and lost 0.187 of general score, while runs at lower rates that logged one norm of 12-60 ended no lower than
    their settings had at other seeds (docs/results/quality.md), so these are reported, not judged. A resumed task's
    restored history covers its steps before the resume too. With `every` (the Trainer's logging interval in steps)
    only its regular logs count (and step 1 with `first`): a checkpoint or a Ctrl-C logs its step too, so without
    this a run that checkpoints off that grid, or is stopped and resumed, would count more logs than one that does not."""
    def regular(step: int) -> bool:
        return every is None or step % every == 0 or (first and step == 1)

    logged = [(entry["step"], float(entry["grad_norm"])) for entry in history
              if entry.get("grad_norm") is not None and "step" in entry and regular(entry["step"])]
    logged = [(step, norm) for step, norm in logged if math.isfinite(norm)]
    if not logged:
        return {}
    step, largest = max(logged, key=lambda pair: pair[1])
    return {"grad_norm_max": largest, "grad_norm_max_step": step,
            "grad_norm_median": statistics.median(norm for _, norm in logged), "grad_norm_logs": len(logged)}


class ListDataset(torch.utils.data.Dataset):
    """Encoded examples as a map-style dataset (the Trainer shuffles and batches them)."""

    def __init__(self, rows: list[dict[str, Any]]):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.rows[index]


def rows_from_dataset(dataset) -> tuple[str, list[dict[str, Any]]] | None:
    """(format, rows) in forgetless's row formats from a dataset in one of TRL's formats, or None.

    text -> {"text"}; prompt/completion strings -> {"prompt", "response"}; messages (or conversational
    prompt/completion) -> the last user turn as prompt and the assistant turn after it as response.
    Strategies that write text from demonstrations (ssr) need these rows; the others use token ids.
    """
    try:
        columns = set(dataset.column_names)
    except (AttributeError, TypeError):  # not a dataset, or an IterableDataset (column_names None)
        return None
    if "text" in columns:
        return "text", [{"text": row["text"]} for row in dataset if _filled(row["text"])]
    if {"prompt", "completion"} <= columns:
        rows = []
        for row in dataset:
            prompt, completion = row["prompt"], row["completion"]
            if isinstance(prompt, list):  # conversational prompt-completion
                prompt, completion = _last_turn(prompt), _last_turn(completion, "assistant")
            if _filled(prompt) and _filled(completion):
                rows.append({"prompt": prompt, "response": completion})
        return "chat", rows
    if "messages" in columns:
        rows = []
        for row in dataset:
            messages = row["messages"]
            replies = [i for i, m in enumerate(messages) if m.get("role") == "assistant"]
            reply = messages[replies[-1]].get("content") if replies else None
            if _filled(reply) and (prompt := _last_turn(messages[: replies[-1]])):
                rows.append({"prompt": prompt, "response": reply})
        return "chat", rows
    return None


def general_data_from(source: Any) -> GeneralData | None:
    """`with_strategies(...)(general_data=...)`: a JSONL file's path (as a run config's `general_data`), or a dataset (or
    a list of row dicts) in one of TRL's formats (text, prompt-completion, messages), as rows strategies protect."""
    if source is None or isinstance(source, GeneralData):
        return source
    if isinstance(source, (str, os.PathLike)):
        return load_general_data(os.fspath(source))
    if isinstance(source, list) and source and all(isinstance(row, dict) for row in source):
        if not any("messages" in row or "completion" in row for row in source):  # forgetless's own row formats
            task_format, rows = validated_rows(list(enumerate(source, start=1)), lambda n: f"general_data row {n}")
            return GeneralData(task_format, tuple(rows), "general_data (a list)")
        from datasets import Dataset

        source = Dataset.from_list(source)
    found = rows_from_dataset(source)
    if found is None:
        raise ForgetlessError(
            "with_strategies: general_data takes a JSONL file's path, a list of {text} or {prompt, response} rows, or a "
            f"map-style dataset with a 'text', 'prompt'/'completion' or 'messages' column, not {type(source).__name__}"
        )
    task_format, rows = found
    if not rows:
        raise ForgetlessError("with_strategies: general_data has no usable row (empty texts, or no assistant reply)")
    return GeneralData(task_format, tuple(rows), "general_data (a dataset)")


def _last_turn(messages: list[dict[str, Any]], role: str = "user") -> str | None:
    turns = [m["content"] for m in messages if m.get("role") == role and _filled(m.get("content"))]
    return turns[-1] if turns else None


def _filled(value: Any) -> bool:
    """A non-empty string (a row whose text or turn is empty, None or a list of parts gives nothing to train on)."""
    return isinstance(value, str) and bool(value.strip())


def examples_from_dataset(dataset) -> list[dict[str, list[int]]]:
    """Encoded (input_ids, labels) examples from a tokenized dataset, as the parent trainer would train them.

    `labels` is taken as given (TRL builds it from completion/assistant masks); without it every token is
    a target, as with transformers' DataCollatorForLanguageModeling. Padding (attention_mask 0) is cut off.
    """
    examples = []
    for row in dataset:
        if "input_ids" not in row:
            raise ForgetlessError("with_strategies: the training dataset has no input_ids column after the trainer's preparation")
        ids = list(row["input_ids"])
        labels = list(row["labels"]) if row.get("labels") is not None else list(ids)
        if row.get("attention_mask") is not None:
            keep = [i for i, bit in enumerate(row["attention_mask"]) if bit]
            ids, labels = [ids[i] for i in keep], [labels[i] for i in keep]
        examples.append({"input_ids": ids, "labels": labels})
    return examples


class StrategyTrainerMixin:
    """The glue between a Trainer's step and a StrategyStack (see the module docstring)."""

    def __init__(self, *args, strategies: Any = (), total_tasks: int | None = None, task_name: str | None = None,
                 general_data: Any = None, forgetless_setup: TrainingSetup | None = None,
                 forgetless_task: TaskData | None = None, forgetless_adapter: str | None = None, **kwargs):
        # forgetless_*: the runner's own facts (its config's setup, its task rows, its adapter's name).
        bound = inspect.signature(super().__init__).bind_partial(*args, **kwargs).arguments
        raw_dataset = bound.get("train_dataset")
        self.strategy_stack = StrategyStack.from_specs(strategies, general=general_data_from(general_data))
        self.forgetless_task_logs: list[dict[str, Any]] = []
        self._raw_rows = rows_from_dataset(raw_dataset) if raw_dataset is not None and forgetless_task is None else None
        self._total_tasks, self._task_name = total_tasks, task_name
        self._setup_override, self._task_override, self._adapter_override = forgetless_setup, forgetless_task, forgetless_adapter
        self._in_training_step, self._micro_index, self._step_tokens = False, 0, 0
        super().__init__(*args, **kwargs)
        if self.strategy_stack.strategies:
            self._refuse_unsupported()
        # First in line at on_train_end: post-task edits and consolidation happen before any other callback
        # (a ForgettingMonitor) scores the task's final model.
        self.callback_handler.callbacks.insert(0, _StackCallback(self))

    # -- before training -------------------------------------------------------------------------------

    def _refuse_unsupported(self) -> None:
        args = self.args
        if getattr(args, "packing", False) or getattr(args, "padding_free", False):
            raise ForgetlessError(
                "with_strategies: packing / padding_free joins several examples into one row, but strategies score, mask "
                "and mix whole examples (STM, replay, LwF, FIP, the Fisher); set packing=False and padding_free=False"
            )
        if self.strategy_stack.needs_logits and getattr(args, "loss_type", "nll") != "nll":
            needing = [s.name for s in self.strategy_stack.strategies if s.needs_logits]
            raise ForgetlessError(
                f"with_strategies: {needing} need the training forward's logits, so forgetless computes SFTTrainer's "
                f"'nll' loss itself; loss_type {args.loss_type!r} is not supported"
            )

    def _training_setup(self, model, examples: list[dict[str, Any]]) -> TrainingSetup:
        if self._setup_override is not None:
            return self._setup_override
        from peft import PeftModel

        args = self.args
        max_length = getattr(args, "max_length", None) or max([len(e["input_ids"]) for e in examples] + [16])
        precision = "bf16" if args.bf16 else "fp16" if args.fp16 else "fp32"
        return TrainingSetup(
            adapter="lora" if isinstance(model, PeftModel) else "full", lora_between_tasks="merge", max_length=int(max_length),
            batch_size=args.per_device_train_batch_size * args.gradient_accumulation_steps * max(1, args.world_size),
            seed=args.seed, precision=precision, total_tasks=self._total_tasks,
            sharding="fsdp" if self.is_fsdp_enabled else "deepspeed" if self.is_deepspeed_enabled else "none",
        )

    def _task_data(self) -> TaskData:
        if self._task_override is not None:
            return self._task_override
        if not hasattr(self.train_dataset, "__len__"):
            raise ForgetlessError("with_strategies needs a map-style training dataset (strategies read the task's examples)")
        fmt, rows = self._raw_rows if self._raw_rows is not None else ("text", None)
        name = self._task_name or f"task{len(self.strategy_stack.finished) + 1}"
        return TaskData(name=name, format=fmt, rows=rows, examples=examples_from_dataset(self.train_dataset))

    def train(self, *args, **kwargs):
        stack = self.strategy_stack
        if not stack.strategies:
            return super().train(*args, **kwargs)
        model = self.model
        task = self._task_data()
        setup = self._training_setup(model, task.examples)
        if setup.adapter == "lora" and stack.finished and getattr(self, "_forgetless_trained_adapter", None) is not None:
            raise ForgetlessError(
                "with_strategies under LoRA: a second train() on the same unmerged adapter is not a new task (the base "
                "with adapters off is not the model before it); merge the adapter and build a new trainer with the same stack"
            )
        adapter = self._adapter_override or (getattr(model, "active_adapter", None) if setup.adapter == "lora" else None)
        tokenizer = self.processing_class
        if tokenizer is None or not hasattr(tokenizer, "pad_token_id"):
            raise ForgetlessError("with_strategies needs the tokenizer: pass processing_class=tokenizer to the trainer")
        if stack.general is not None and not stack.finished and self._setup_override is None:  # the runner checked it
            check_general_encoding(stack.general, tokenizer, setup.max_length)
        stack.start_task(setup, model, tokenizer, task, adapter=adapter)
        if kwargs.get("resume_from_checkpoint") or (args and args[0]):
            # transformers reloads PEFT adapters on resume and activates only the first one (wrong for a stack of
            # adapters, where the newest trains): the layout of now is put back before the optimizer is built.
            self._forgetless_layout = _adapter_layout(model)
        original = (self.train_dataset, self.data_collator)
        self._task_in_flight = (task, adapter, setup)
        try:
            if stack.uses("prepare_examples"):
                # The prepared examples replace the dataset for this task only; labels are already final.
                self.train_dataset = ListDataset(stack.prepare_examples(list(task.examples)))
                self.data_collator = PaddingCollator(tokenizer.pad_token_id)
            self._trained_examples = len(self.train_dataset)
            self._micro_index, self._step_tokens = 0, 0
            output = super().train(*args, **kwargs)
            if stack.context is not None:  # a Trainer that never reached on_train_end
                self.finish_task()
        except BaseException:
            stack.abandon_task()
            raise
        finally:
            self.train_dataset, self.data_collator = original
        return output

    def finish_task(self) -> None:
        """Post-task weight edits and consolidation (called at on_train_end, before other callbacks)."""
        stack = self.strategy_stack
        task, adapter, setup = self._task_in_flight
        stack.step_done(self.state.global_step, self.state.max_steps)
        log = stack.end_task(self.model)
        self.forgetless_task_logs.append({"task": task.name, "examples": self._trained_examples,
                                          **logged_gradient_norms(self.state.log_history, **self._regular_logs()), **log})
        if setup.adapter == "lora":
            self._forgetless_trained_adapter = adapter

    def _regular_logs(self) -> dict[str, Any]:
        """Which steps the Trainer logs by itself: every `logging_steps` under the steps strategy (else all logs)."""
        if self.args.logging_strategy != IntervalStrategy.STEPS:
            return {}
        return {"every": self.state.logging_steps, "first": bool(self.args.logging_first_step)}

    def create_optimizer(self, *args, **kwargs):
        layout = getattr(self, "_forgetless_layout", None)
        if layout is not None:
            _restore_adapter_layout(self.model, layout)
            self._forgetless_layout = None
        return super().create_optimizer(*args, **kwargs)

    # -- every step ------------------------------------------------------------------------------------

    def _loss_scaled_for_accumulation(self, num_items_in_batch) -> bool:
        """Mirrors Trainer.training_step: whether it leaves the loss as is (True) or divides it by the window."""
        if self.loss_is_scaled_for_ga is not None:
            return self.loss_is_scaled_for_ga
        return (self.model_accepts_loss_kwargs and num_items_in_batch is not None) or self.compute_loss_func is not None

    def _micro_batch(self, labels: torch.Tensor, num_items_in_batch) -> MicroBatch:
        tokens = trained_tokens(labels)
        self._step_tokens += tokens
        first = self._micro_index == 0
        window = self.current_gradient_accumulation_steps
        if not self._loss_scaled_for_accumulation(num_items_in_batch):
            return MicroBatch(first, step_weight=float(window), token_weight=1.0)  # the trainer divides by the window
        if num_items_in_batch is None:
            return MicroBatch(first, step_weight=1.0, token_weight=1.0 / window)
        share = tokens / max(float(num_items_in_batch), 1.0)
        if self.args.average_tokens_across_devices and self.accelerator.num_processes > 1:
            share *= self.accelerator.num_processes  # num_items counts every process; DDP then averages
        return MicroBatch(first, step_weight=1.0, token_weight=share)

    def _nll_loss(self, model, inputs, num_items_in_batch):
        """Mean next-token NLL over the labels (normalised by num_items_in_batch when given), with the logits."""
        outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs.get("attention_mask"), use_cache=False)
        logits, labels = outputs.logits[:, :-1], inputs["labels"][:, 1:]
        nll = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.size(-1)).float(), labels.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum"
        )
        count = num_items_in_batch if num_items_in_batch is not None else (labels != IGNORE_INDEX).sum()
        loss = nll / torch.as_tensor(count, device=nll.device).clamp(min=1)
        if num_items_in_batch is not None and self.args.average_tokens_across_devices:
            loss = loss * self.accelerator.num_processes
        return loss, outputs

    def _parent_fuses_lm_head(self, model) -> bool:
        """`_fuses_lm_head(model)`, walked once per model object rather than on every step."""
        if getattr(self, "_fused_checked", (None, False))[0] is not model:
            self._fused_checked = (model, _fuses_lm_head(model))
        return self._fused_checked[1]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        stack = self.strategy_stack
        if not self._in_training_step or stack.context is None:
            return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
        batch = {k: inputs[k] for k in ("input_ids", "attention_mask", "labels") if k in inputs}
        if not stack.needs_logits:
            # No strategy reads the outputs: ask the parent for the loss alone. (TRL's fused LM head builds no
            # logits, and asking it for outputs costs a second forward pass to recompute them.)
            result = super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
            loss, outputs = result if return_outputs else (result, None)
        elif self._parent_fuses_lm_head(model):
            # TRL's fused LM head builds no logits; asked for outputs it recomputes them in a second forward,
            # without gradient, so a strategy distilling through them would train nothing. Compute the same
            # loss with the logits in one forward instead.
            loss, outputs = self._nll_loss(model, inputs, num_items_in_batch)
        else:
            loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        extra = stack.extra_loss(stack.context.model, batch, outputs, self._micro_batch(batch["labels"], num_items_in_batch))
        if extra is not None:
            loss = loss + extra.to(loss.dtype)
        return (loss, outputs) if return_outputs else loss

    def training_step(self, model, inputs, num_items_in_batch=None):
        stack = self.strategy_stack
        if stack.context is None:
            return super().training_step(model, inputs, num_items_in_batch)
        if self._micro_index == 0:
            stack.step_done(self.state.global_step, self.state.max_steps)
        self._in_training_step = True
        try:
            loss = super().training_step(model, inputs, num_items_in_batch)
        finally:
            self._in_training_step = False
        if self.accelerator.sync_gradients:  # the window's last micro-batch: the step's gradient is complete
            tokens = self._step_tokens
            if self.accelerator.num_processes > 1:  # .grad is then the average over processes: count all their tokens
                tokens = int(self.accelerator.reduce(torch.tensor(tokens, device=self.accelerator.device), reduction="sum"))
            stack.after_backward(stack.context.model, OptimizerStep(trained_tokens=tokens))
            self._micro_index, self._step_tokens = 0, 0
        else:
            self._micro_index += 1
        return loss


def _adapter_layout(model) -> tuple[list[str] | None, set[str]]:
    """(the active PEFT adapters or None, the names of the trainable parameters)."""
    from peft import PeftModel

    active = list(model.active_adapters) if isinstance(model, PeftModel) else None  # transformers has a method of that name
    return active, {n for n, p in model.named_parameters() if p.requires_grad}


def _restore_adapter_layout(model, layout: tuple[list[str] | None, set[str]]) -> None:
    active, trainable = layout
    if active:
        model.base_model.set_adapter(active if len(active) > 1 else active[0])
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name in trainable)


class _StackCallback(TrainerCallback):
    """The stack's hooks that follow the Trainer's loop: after each optimizer step, and at the task's end."""

    def __init__(self, trainer):
        self.trainer = trainer

    def on_optimizer_step(self, args, state, control, **kwargs):
        stack = self.trainer.strategy_stack
        if stack.context is not None:
            stack.after_optimizer_step(stack.context.model)
        return control

    def on_train_end(self, args, state, control, **kwargs):
        if self.trainer.strategy_stack.context is not None:
            self.trainer.finish_task()
        return control


_CACHE: dict[type, type] = {}


def with_strategies(trainer_cls: type) -> type:
    """A subclass of `trainer_cls` whose constructor also takes `strategies=[...]` (names or {name: ..., params}).

    Extra keyword arguments: `strategies` (specs, or a StrategyStack to continue), `total_tasks` (the
    sequence's length, if known), `task_name` (for logs), `general_data` (rows to protect and rehearse as general
    ability in place of the bundled general English: a JSONL file's path or a dataset; see `general_data_from`).
    Each `train()` call trains one task.
    """
    from transformers import Trainer

    if not (isinstance(trainer_cls, type) and issubclass(trainer_cls, Trainer)):
        raise ForgetlessError(f"with_strategies takes a transformers.Trainer subclass, not {trainer_cls!r}")
    if trainer_cls not in _CACHE:
        _CACHE[trainer_cls] = type(f"{trainer_cls.__name__}WithStrategies", (StrategyTrainerMixin, trainer_cls), {})
    return _CACHE[trainer_cls]
