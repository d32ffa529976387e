"""The strategy interface: a few optional hooks through which every method against forgetting plugs in.

A `StrategyStack` (strategies/stack.py) is the only caller of these hooks: the runner, `with_strategies`
(a user's own Trainer), the benchmarks and the tests all go through it, so every hook sees the same
batch and one model handle. Hook order for every task (each hook runs for every strategy, in list order):

    on_task_start -> prepare_examples -> [every micro-batch: extra_loss; every optimizer step:
    after_backward, after_optimizer_step] -> transform_weights -> consolidate -> (evaluation, checkpoint)

What each hook may change:
- `on_task_start`: the strategy's own state (references, anchors, importance of the starting model).
  Must not change the model's weights.
- `prepare_examples`: returns the task's encoded examples (input_ids, labels); may drop examples, mask
  labels (-100) or add examples (replay, rehearsal). It may run the model without gradients.
- `extra_loss`: returns a scalar added to the training loss (or None). Gradients flow through it. With
  `loss_scope = "step"` it is called once per optimizer step (on the step's first micro-batch) and counts
  once; with `"batch"` it is called on every micro-batch and weighted by that micro-batch's share of the
  step's trained tokens, so gradient accumulation gives the same step as one large batch.
- `after_backward`: once per optimizer step, after the last micro-batch's backward, before gradient
  clipping and the optimizer step; `.grad` then holds the whole step's gradient (extra terms included).
  It may read gradients, and may add to them (EWC adds its penalty's gradient there); nothing else.
- `after_optimizer_step`: once per optimizer step, right after it; may move the trained weights back into
  a feasible set (EWC's trust region), nothing else.
- `transform_weights`: after training a task, edit the weights in place (FAPM pruning, WiSE-FT).
- `consolidate`: after `transform_weights`, record what later tasks must protect (Fisher, buffers).
- `state_tensors` / `load_state_tensors`: the strategy's state as named tensors (safetensors), saved
  with every checkpoint; a loaded state continues protecting what the saved one protected.
- `in_task_state`: the attributes that change during a task's steps (not recomputed by `on_task_start`);
  a run resumed mid-task restores them after `on_task_start` (`task_state` / `load_task_state`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict

from ..data.tasks import GeneralData, bundled_general
from ..errors import ForgetlessError
from ..task_weights import TaskWeights

Adapter = Literal["full", "lora"]
Precision = Literal["fp32", "bf16", "fp16"]


@dataclass(frozen=True)
class TrainingSetup:
    """How tasks are trained: the same facts whether forgetless's runner or a user's Trainer trains them."""

    adapter: Adapter = "full"  # all weights, or a PEFT LoRA adapter
    lora_between_tasks: Literal["merge", "stack"] = "merge"  # LoRA: fold each task's adapter in, or keep stacking
    max_length: int = 128  # tokens per training example (strategies encode their own data to this length)
    batch_size: int = 8  # examples per optimizer step, all micro-batches together
    seed: int = 0
    precision: Precision = "fp32"  # autocast precision of the training forward
    total_tasks: int | None = None  # tasks in the whole sequence, when known (None in a user's script)
    sharding: Literal["none", "fsdp", "deepspeed"] = "none"  # whether parameters/gradients are split across processes


@dataclass
class TaskData:
    """One training task as strategies see it."""

    name: str
    format: str  # "chat" (prompt/response, loss on the response) or "text"
    rows: list[dict[str, Any]] | None  # raw rows ({prompt, response} or {text}); None when only token ids exist
    examples: list[dict[str, list[int]]] = field(default_factory=list)  # encoded, before any strategy changed them


@dataclass
class Clock:
    """Optimizer steps: over the whole sequence, and within the task being trained."""

    global_step: int = 0  # steps of earlier tasks plus this one so far
    task_step: int = 0  # steps of this task so far
    task_steps: int | None = None  # steps this task will take (known once training starts)


@dataclass
class OptimizerStep:
    """Facts about the optimizer step whose gradients `after_backward` sees."""

    trained_tokens: int  # label tokens (targets) over all micro-batches of the step and all processes


@dataclass
class TaskContext:
    """What a strategy may look at during one task."""

    setup: TrainingSetup
    model: torch.nn.Module  # the model being trained (PEFT-wrapped under LoRA), never a DDP wrapper
    tokenizer: Any
    task: TaskData
    task_index: int  # 0-based position in the sequence
    earlier_tasks: list[TaskData] = field(default_factory=list)
    adapter: str | None = None  # under LoRA: the name of the adapter this task trains
    clock: Clock = field(default_factory=Clock)
    log: dict[str, Any] = field(default_factory=dict)  # per-task facts, keys prefixed by the strategy's name
    general: GeneralData | None = None  # a user's general rows (`general_data`); None: the bundled general English

    @property
    def general_data(self) -> GeneralData:
        """What to protect and rehearse as general ability: the user's `general_data`, else the bundled general
        English (disjoint from every evaluation item; read on first use, then cached)."""
        return self.general if self.general is not None else bundled_general()

    @property
    def general_rows(self) -> tuple[dict[str, Any], ...]:
        """The general rows, {text} or {prompt, response}: `encode_rows` and `sample_examples` take either."""
        return self.general_data.rows

    @property
    def general_texts(self) -> tuple[str, ...]:
        """The general rows as plain texts; only where they are text rows (chat rows: read `general_rows`)."""
        data = self.general_data
        if data.format != "text":
            raise ForgetlessError(f"{data.source} holds chat rows, not texts: read ctx.general_rows")
        return tuple(row["text"] for row in data.rows)

    @cached_property
    def weights(self) -> TaskWeights:
        """The weights this task trains, their start and change (one view per task, shared by the stack)."""
        return TaskWeights(self.model, self.adapter if self.setup.adapter == "lora" else None)

    @property
    def global_step(self) -> int:
        return self.clock.global_step

    @property
    def is_last_task(self) -> bool:
        """True only when the sequence's length is known and this is its last task."""
        return self.setup.total_tasks is not None and self.task_index + 1 >= self.setup.total_tasks


@dataclass(frozen=True)
class Strength:
    """The knob that sets how strongly a strategy protects, which a forgetting budget may raise (`strengthen`)."""

    knob: str  # a parameter of the strategy's Params
    stronger: Literal["up", "down"]  # which way protects more: a larger penalty weight, a smaller WiSE alpha
    bound: float  # never moved past this (a mix ratio stays below 1, an alpha above 0)
    applies: Literal["next_step", "task_end", "next_task"] = "next_step"  # when a change takes effect
    # What a tuning grid is built around when the knob's own default is 0 or None (a mode that is off unless named,
    # or a knob whose default lives in a validator, as ewc's target); None: the default itself.
    centre: float | None = None
    # A bound on the weights that after_optimizer_step projects them onto (a target or distance cap): a move can
    # take effect at once, with no training step, which matters at a task's last check (BudgetGuard).
    cap: bool = False


class StrategyParams(BaseModel):
    """A strategy's knobs: typed, validated, each with a default and a one-line `description`.

    A strategy declares `class Params(StrategyParams)` with pydantic `Field`s; `build_strategy` reports a
    bad value with its config path (`strategies[1].lam: ...`), `forgetless strategies --params NAME` prints them.
    """

    # An unknown knob is an error: a misspelt option silently ignored is a wrong experiment.
    model_config = ConfigDict(extra="forbid", frozen=True)


class Strategy:
    """Base class: every hook does nothing, so a strategy overrides only what it needs."""

    name: ClassVar[str] = ""
    Params: ClassVar[type[StrategyParams]] = StrategyParams
    adapters: ClassVar[tuple[str, ...]] = ("full", "lora")  # adapters it works with
    # Several processes with whole parameters on each (DDP) work for every strategy (tests/test_multiprocess.py).
    # Under FSDP or DeepSpeed ZeRO a process holds only shards of the parameters, gradients or optimizer state:
    # a strategy is refused there with this reason ({engine}: FSDP or DEEPSPEED) unless a sharded run shows it
    # works (None). No strategy has such a run yet (docs/scale.md).
    sharded_reason: ClassVar[str | None] = ("it reads or edits whole parameter tensors by name, and {engine} splits them "
                                            "across processes")
    stores_raw_data: ClassVar[bool] = False  # keeps earlier tasks' examples (privacy-relevant); reported
    # Edits the base weights under LoRA (not only the adapter), so a checkpoint must hold full weights.
    changes_base_weights: ClassVar[bool] = False
    # "step": extra_loss does not depend on the training batch (a penalty on weights or on anchors): once
    # per optimizer step. "batch": it does (distillation on the batch): every micro-batch, token-weighted.
    loss_scope: ClassVar[Literal["step", "batch"]] = "step"
    needs_logits: ClassVar[bool] = False  # extra_loss reads outputs.logits of the training forward
    strength: ClassVar[Strength | None] = None  # the knob a forgetting budget's `strengthen` moves (None: none)
    other_strengths: ClassVar[tuple[Strength, ...]] = ()  # knobs of another mode (ewc's target): see strength_in_use
    # Attributes that change during a task's steps: tensors, dicts of tensors, numbers, random.Random.
    in_task_state: ClassVar[tuple[str, ...]] = ()

    def __init__(self, **params: Any):
        """Validate the knobs (pydantic.ValidationError, a ValueError, on a bad one) and expose each as an attribute."""
        self.params = self.Params(**params)
        for knob in type(self.params).model_fields:
            setattr(self, knob, getattr(self.params, knob))

    def check(self, setup: TrainingSetup, stack: list["Strategy"], world_size: int = 1) -> None:
        """Refuse an impossible run before training starts."""
        if setup.adapter not in self.adapters:
            raise ForgetlessError(f"strategy {self.name!r} does not work with adapter {setup.adapter!r}")
        if setup.sharding != "none" and self.sharded_reason:
            raise ForgetlessError(
                f"strategy {self.name!r} does not work under {setup.sharding.upper()}: "
                f"{self.sharded_reason.format(engine=setup.sharding.upper())}; train with DDP instead (accelerate launch "
                "--multi_gpu --num_processes N), where every strategy works"
            )
        if setup.precision == "fp16" and type(self).after_backward is not Strategy.after_backward:
            # Under fp16 the gradients in .grad are multiplied by the GradScaler's loss scale until the
            # optimizer step: a hook that reads or adds to them would be off by that unknown factor.
            raise ForgetlessError(
                f"strategy {self.name!r} reads or writes gradients after backward, which fp16's loss scaling makes "
                "wrong; use precision bf16 (or fp32)"
            )

    @classmethod
    def strength_of(cls, knob: str) -> Strength | None:
        """The Strength declared for parameter `knob`, or None if it is no strength knob."""
        return next((s for s in (cls.strength, *cls.other_strengths) if s is not None and s.knob == knob), None)

    @property
    def strength_in_use(self) -> Strength | None:
        """The knob that sets this instance's strength: another mode's knob once it is set (ewc's target), else `strength`."""
        return next((s for s in self.other_strengths if getattr(self, s.knob, None) is not None), self.strength)

    def set_knob(self, knob: str, value: Any) -> None:
        """Move one knob after construction: the attribute and the saved parameters together."""
        setattr(self, knob, value)
        self.params = self.params.model_copy(update={knob: value})

    def strengthen(self, factor: float) -> tuple[float, float] | None:
        """Move the strength knob `factor` times the protecting way (within its bound): (old, new), or None if it can't."""
        strength = self.strength_in_use
        old = getattr(self, strength.knob) if strength else None
        if isinstance(old, bool) or not isinstance(old, (int, float)) or old == 0:  # no knob, "auto", or 0 (x factor = 0)
            return None
        new = min(old * factor, strength.bound) if strength.stronger == "up" else max(old / factor, strength.bound)
        if new == old:
            return None
        self.set_knob(strength.knob, new)
        return float(old), float(new)

    def check_weight_names(self, names: list[str]) -> None:
        """Knobs that name weights (l2sp's target_scale) checked against the model's parameter names once it is loaded,
        before any evaluation; raise ForgetlessError on a name that matches nothing. Nothing to check by default."""

    def on_task_start(self, ctx: TaskContext) -> None:
        """Before a task's examples are prepared and training starts."""

    def prepare_examples(self, ctx: TaskContext, examples: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Data side: return the (possibly changed) encoded training examples of the task."""
        return examples

    def extra_loss(self, ctx: TaskContext, model: torch.nn.Module, inputs: dict[str, torch.Tensor], outputs: Any):
        """Loss side: a scalar tensor added to the training loss, or None (see `loss_scope`).

        `outputs` is the training forward's output when some strategy of the stack sets `needs_logits`, else
        None (a trainer may not build logits at all: TRL's fused LM head).
        """
        return None

    def after_backward(self, ctx: TaskContext, model: torch.nn.Module, step: OptimizerStep) -> None:
        """Once per optimizer step, the step's whole gradient in `.grad`; may read it or add to it."""

    def after_optimizer_step(self, ctx: TaskContext, model: torch.nn.Module) -> None:
        """Once per optimizer step, right after it: may move the trained weights back into a feasible set."""

    def transform_weights(self, ctx: TaskContext) -> None:
        """After training a task: edit the weights post hoc (in place on ctx.model)."""

    def consolidate(self, ctx: TaskContext) -> None:
        """After training a task: record what the next task must protect."""

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Tensors saved with a checkpoint (as safetensors) so a run can be resumed or inspected."""
        return {}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Restore what `state_tensors` returned."""

    def task_state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """The `in_task_state` attributes as (tensors, JSON values), for a checkpoint in the middle of a task."""
        import random

        tensors, values = {}, {}
        for name in self.in_task_state:
            value = getattr(self, name)
            if isinstance(value, torch.Tensor):
                tensors[name] = value
            elif isinstance(value, dict) and all(isinstance(v, torch.Tensor) for v in value.values()):
                tensors.update({f"{name}/{key}": tensor for key, tensor in value.items()})
                values[name] = {"dict_of_tensors": sorted(value)}
            elif isinstance(value, random.Random):
                version, internal, gauss = value.getstate()
                values[name] = {"random_state": [version, list(internal), gauss]}
            elif value is None or isinstance(value, (bool, int, float, str)):
                values[name] = {"value": value}
            else:
                raise TypeError(f"{self.name}.{name}: {type(value).__name__} is not a resumable in-task state")
        return tensors, values

    def load_task_state(self, tensors: dict[str, torch.Tensor], values: dict[str, Any]) -> None:
        """Restore what `task_state` returned (after `on_task_start` has rebuilt everything else)."""
        import random

        for name in self.in_task_state:
            saved = values.get(name)
            if name in tensors:
                current = getattr(self, name, None)
                setattr(self, name, tensors[name].to(current.device) if isinstance(current, torch.Tensor) else tensors[name])
            elif saved is None:
                continue
            elif "dict_of_tensors" in saved:
                setattr(self, name, {key: tensors[f"{name}/{key}"] for key in saved["dict_of_tensors"]})
            elif "random_state" in saved:
                version, internal, gauss = saved["random_state"]
                generator = random.Random()
                generator.setstate((version, tuple(internal), gauss))
                setattr(self, name, generator)
            else:
                setattr(self, name, saved["value"])

    def has_hook(self, hook: str) -> bool:
        """Whether this strategy overrides `hook` (so callers can skip work no strategy needs)."""
        return getattr(type(self), hook) is not getattr(Strategy, hook)
