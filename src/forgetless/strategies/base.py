"""The strategy interface: a few optional hooks through which every method against forgetting plugs in.

A run holds a list of strategies; the runner calls each hook of each strategy in list order, so stacking
(STM + replay, LwF + FIP) is the normal case. Hook order for every task:

    on_task_start -> prepare_examples -> [training: extra_loss every step] -> transform_weights
    -> consolidate -> (evaluation, checkpoint)

Data side: `prepare_examples` changes the task's encoded examples or their token weights (STM masks,
replay mixing). Loss side: `extra_loss` returns a term added to the cross-entropy (EWC, LwF, FIP).
After a task: `transform_weights` edits weights post hoc (FAPM pruning, WiSE-FT interpolation) and
`consolidate` records what the next task must protect (Fisher, importance, anchors, buffers).
Capabilities are declared as class attributes and checked by `check` before anything trains.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from ..errors import ForgetlessError

if TYPE_CHECKING:  # imported for annotations only: keeps strategies importable without the runner
    from ..config import RunConfig
    from ..data.tasks import TrainingTask


@dataclass
class TaskContext:
    """What a strategy may look at during one task of a run."""

    config: "RunConfig"
    model: torch.nn.Module  # the model being trained (PEFT-wrapped under LoRA)
    tokenizer: Any
    task: "TrainingTask"
    task_index: int  # 0-based position in the run
    tasks: list["TrainingTask"]
    global_step: int = 0  # optimizer steps taken in earlier tasks plus this one so far
    log: dict[str, Any] = field(default_factory=dict)  # per-task facts a strategy reports (e.g. fraction masked)

    @property
    def general_texts(self) -> tuple[str, ...]:
        """General English, disjoint from every evaluation item (read on first use, then cached)."""
        from ..data.tasks import general_train_texts

        return general_train_texts()

    @property
    def earlier_tasks(self) -> list["TrainingTask"]:
        return self.tasks[: self.task_index]


class Strategy:
    """Base class: every hook does nothing, so a strategy overrides only what it needs."""

    name: ClassVar[str] = ""
    adapters: ClassVar[tuple[str, ...]] = ("full", "lora")  # adapters it works with
    needs_reference_model: ClassVar[bool] = False  # holds a frozen copy of the model from before the task
    stores_raw_data: ClassVar[bool] = False  # keeps earlier tasks' examples (privacy-relevant)
    supports_multiprocess: ClassVar[bool] = True  # correct under DDP/FSDP (several processes)
    exclusive_with: ClassVar[tuple[str, ...]] = ()  # strategies it cannot be stacked with
    # Edits the base weights under LoRA (not only the adapter), so a checkpoint must hold full weights.
    changes_base_weights: ClassVar[bool] = False

    def check(self, config: "RunConfig", stack: list["Strategy"], world_size: int = 1) -> None:
        """Refuse an impossible run before training starts."""
        if config.adapter not in self.adapters:
            raise ForgetlessError(f"strategy {self.name!r} does not work with adapter {config.adapter!r}")
        if world_size > 1 and not self.supports_multiprocess:
            raise ForgetlessError(f"strategy {self.name!r} does not support several processes (world size {world_size})")
        clash = [other.name for other in stack if other is not self and other.name in self.exclusive_with]
        if clash:
            raise ForgetlessError(f"strategy {self.name!r} cannot be stacked with {clash}")

    def on_task_start(self, ctx: TaskContext) -> None:
        """Before a task's examples are prepared and training starts."""

    def prepare_examples(self, ctx: TaskContext, examples: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Data side: return the (possibly changed) encoded training examples of the task."""
        return examples

    def extra_loss(self, ctx: TaskContext, model: torch.nn.Module, inputs: dict[str, torch.Tensor], outputs: Any):
        """Loss side: a scalar tensor added to the training loss, or None."""
        return None

    def after_backward(self, ctx: TaskContext, model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> None:
        """After a training step's backward, before gradient clipping and the optimiser step: the step's
        gradients (of the whole loss, extra terms included) are in each parameter's `.grad`. Read-only."""

    def transform_weights(self, ctx: TaskContext) -> None:
        """After training a task: edit the weights post hoc (in place on ctx.model)."""

    def consolidate(self, ctx: TaskContext) -> None:
        """After training a task: record what the next task must protect."""

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Tensors saved with a checkpoint (as safetensors) so a run can be resumed or inspected."""
        return {}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Restore what `state_tensors` returned."""
