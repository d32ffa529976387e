"""`StrategyStack`: the one caller of strategy hooks, and the memory that carries over between tasks.

The runner, `with_strategies` (a user's own Trainer), the benchmarks and the tests all drive strategies
through a stack, so a training step is never rewritten by hand. A stack lives as long as the task
sequence: pass the same stack to successive trainers and consolidation carries over.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Iterable

import torch

from ..data.tasks import GeneralData, bundled_general
from ..errors import ForgetlessError
from .base import Clock, OptimizerStep, Strategy, TaskContext, TaskData, TrainingSetup


@dataclass(frozen=True)
class MicroBatch:
    """How one micro-batch's strategy terms count towards its optimizer step.

    `first_in_step`: "step"-scope terms are computed here only. `step_weight`: their multiplier, so that
    they count once after the trainer's own scaling for accumulation. `token_weight`: the multiplier of
    "batch"-scope terms (the micro-batch's share of the step's trained tokens, or 1 where the trainer
    divides every micro-batch's loss by the number of micro-batches itself).
    """

    first_in_step: bool = True
    step_weight: float = 1.0
    token_weight: float = 1.0


class StrategyStack:
    """Strategies in list order, the task being trained, and the tasks already finished."""

    def __init__(self, strategies: Iterable[Strategy], general: GeneralData | None = None):
        self.strategies: list[Strategy] = list(strategies)
        self.general = general  # a user's general rows; None: the bundled general English
        names = [s.name for s in self.strategies]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ForgetlessError(f"strategy listed more than once: {repeated}")
        self.finished: list[TaskData] = []
        self.global_step = 0
        self.context: TaskContext | None = None
        self.loss_parts: dict[str, float] = {}  # the latest micro-batch's terms, for logging
        self._pending_task_state: dict[str, Any] | None = None  # a mid-task resume's state, applied at start_task

    @classmethod
    def from_specs(cls, specs: Iterable[str | dict[str, Any]] | "StrategyStack", general: GeneralData | None = None
                   ) -> "StrategyStack":
        """Names or {name: ..., <params>} mappings as in a run config (or an existing stack, returned as is), protecting
        `general` as general ability (None: the bundled general English, or what an existing stack protects)."""
        if isinstance(specs, StrategyStack):
            specs.use_general(general)
            return specs
        from . import build_strategy

        if isinstance(specs, (str, dict)):
            specs = [specs]
        specs = list(specs)
        return cls((build_strategy(spec, path=f"strategies[{i}]") for i, spec in enumerate(specs)), general=general)

    def use_general(self, general: GeneralData | None) -> None:
        """Protect and rehearse `general` from now on (None: keep what the stack has). Only before the first task:
        what earlier tasks consolidated (a Fisher, a rehearsal pool) was measured on the general rows they saw."""
        if general is None or (self.general is not None and general.same_rows(self.general)):
            return
        if self.finished or self.context is not None:
            had = (self.general or bundled_general()).source
            raise ForgetlessError(
                f"this strategy stack has protected {had} since its first task; it cannot switch to "
                f"{general.source} in the middle of a sequence (pass the same general data, or none, to later trainers)"
            )
        self.general = general

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.strategies]

    def uses(self, hook: str) -> bool:
        return any(s.has_hook(hook) for s in self.strategies)

    @property
    def needs_logits(self) -> bool:
        return any(s.needs_logits for s in self.strategies)

    def check(self, setup: TrainingSetup, world_size: int = 1) -> None:
        for strategy in self.strategies:
            strategy.check(setup, self.strategies, world_size)

    def check_weight_names(self, names: list[str]) -> None:
        """Knobs that name weights by regex, against the model's parameter names, before any evaluation. (Under LoRA
        only the adapted layers' weights are trained: a regex matching only others is refused at the task's start.)"""
        for index, strategy in enumerate(self.strategies):
            try:
                strategy.check_weight_names(names)
            except ForgetlessError as exc:
                raise ForgetlessError(f"strategies[{index}]: {exc}") from None

    # -- one task ----------------------------------------------------------------------------------------

    def start_task(self, setup: TrainingSetup, model, tokenizer, task: TaskData, adapter: str | None = None) -> TaskContext:
        if self.context is not None:
            raise ForgetlessError(f"task {self.context.task.name!r} is still training; end it before starting another")
        self.check(setup, world_size=int(os.environ.get("WORLD_SIZE", "1")))
        ctx = TaskContext(
            setup=setup, model=model, tokenizer=tokenizer, task=task, task_index=len(self.finished),
            earlier_tasks=list(self.finished), adapter=adapter, clock=Clock(global_step=self.global_step),
            general=self.general,
        )
        self.context = ctx
        for strategy in self.strategies:
            strategy.on_task_start(ctx)
        if self._pending_task_state is not None:  # resumed mid-task: what the steps so far changed
            state, self._pending_task_state = self._pending_task_state, None
            for strategy in self.strategies:
                strategy.load_task_state(state["tensors"].get(strategy.name, {}), state["values"].get(strategy.name, {}))
            ctx.log.update(state["log"])
        return ctx

    def _active(self) -> TaskContext:
        if self.context is None:
            raise ForgetlessError("no task is training: call start_task first")
        return self.context

    def prepare_examples(self, examples: list[dict[str, Any]]) -> list[dict[str, Any]]:
        ctx = self._active()
        for strategy in self.strategies:
            examples = strategy.prepare_examples(ctx, examples)
        if not examples:
            raise ForgetlessError(f"task {ctx.task.name!r}: no training example has a token to learn from")
        return examples

    def extra_loss(self, model, inputs: dict[str, torch.Tensor], outputs: Any, micro: MicroBatch = MicroBatch()):
        """The sum of every strategy's term for this micro-batch, weighted by `micro` (None if there is none)."""
        ctx = self._active()
        total = None
        self.loss_parts = {}
        for strategy in self.strategies:
            if strategy.loss_scope == "step" and not micro.first_in_step:
                continue
            term = strategy.extra_loss(ctx, model, inputs, outputs)
            if term is None:
                continue
            self.loss_parts[strategy.name] = float(term.detach())
            term = term * (micro.step_weight if strategy.loss_scope == "step" else micro.token_weight)
            total = term if total is None else total + term
        return total

    def after_backward(self, model, step: OptimizerStep) -> None:
        ctx = self._active()
        for strategy in self.strategies:
            strategy.after_backward(ctx, model, step)

    def after_optimizer_step(self, model) -> None:
        ctx = self._active()
        for strategy in self.strategies:
            strategy.after_optimizer_step(ctx, model)

    def capped(self) -> list[Strategy]:
        """The strategies whose strength in use is a cap on the weights (Strength.cap)."""
        return [s for s in self.strategies if s.strength_in_use is not None and s.strength_in_use.cap]

    def apply_caps(self, model) -> list[str]:
        """Project the weights onto every strategy's cap now, as after a step (a cap just tightened); which did."""
        capped = self.capped()
        if capped:
            ctx = self._active()
            for strategy in capped:
                strategy.after_optimizer_step(ctx, model)
        return [s.name for s in capped]

    def step_done(self, task_step: int, task_steps: int | None = None) -> None:
        """The optimizer step was taken: `task_step` steps of this task are done."""
        ctx = self._active()
        ctx.clock.task_step = task_step
        ctx.clock.global_step = self.global_step + task_step
        if task_steps is not None:
            ctx.clock.task_steps = task_steps

    def end_task(self, model=None) -> dict[str, Any]:
        """Post-hoc weight edits, then consolidation; returns the task's strategy log."""
        ctx = self._active()
        if model is not None and model is not ctx.model:
            ctx.model = model
            if "weights" in vars(ctx):  # the task's view was built on the old object: keep its starts
                ctx.weights.rebind(model)
        for strategy in self.strategies:
            strategy.transform_weights(ctx)
        for strategy in self.strategies:
            strategy.consolidate(ctx)
        self.finished.append(ctx.task)
        self.global_step = ctx.clock.global_step
        self.context = None
        return ctx.log

    def abandon_task(self) -> None:
        """Training failed: forget the task in flight so the stack can start another (nothing is consolidated)."""
        self.context = None

    # -- state ---------------------------------------------------------------------------------------------

    def state_tensors(self) -> dict[str, dict[str, torch.Tensor]]:
        """Each strategy's state by strategy name (strategies without state are left out)."""
        return {s.name: tensors for s in self.strategies if (tensors := s.state_tensors())}

    def task_state(self) -> dict[str, Any]:
        """What the steps of the task in flight changed: each strategy's `in_task_state` and the task's log."""
        ctx = self._active()
        tensors, values = {}, {}
        for strategy in self.strategies:
            tensors[strategy.name], values[strategy.name] = strategy.task_state()
        return {"tensors": {k: v for k, v in tensors.items() if v}, "values": values, "log": dict(ctx.log)}

    def resume_task(self, state: dict[str, Any]) -> None:
        """The next `start_task` continues a task whose steps so far left `state` (from `task_state`)."""
        self._pending_task_state = state

    def strengths(self) -> dict[str, dict[str, float]]:
        """Each strength knob's value now, by strategy and knob (a forgetting budget's `strengthen` may have moved it)."""
        return {s.name: {s.strength_in_use.knob: getattr(s, s.strength_in_use.knob)} for s in self.strategies
                if s.strength_in_use}

    def load_strengths(self, values: dict[str, dict[str, float] | float]) -> None:
        """Restore `strengths()`. A bare number (states written before the knob was named, 2026-12-02) is taken
        as the strategy's only strength knob; where it has two (ewc, layerwise, l2sp) it is refused: an old bare `ewc`'s
        number was its lam, which today's bare `ewc` (a cap) would read as a target."""
        for strategy in self.strategies:
            if strategy.name not in values or not strategy.strength_in_use:
                continue
            saved = values[strategy.name]
            if not isinstance(saved, dict):
                if strategy.other_strengths:
                    raise ForgetlessError(
                        f"the saved run state gives {strategy.name}'s strength as a bare number ({saved}) without its "
                        f"knob ({', '.join(s.knob for s in (strategy.strength, *strategy.other_strengths))}); it was "
                        "written by an older forgetless whose defaults differ: start the run again from the beginning")
                saved = {strategy.strength.knob: saved}
            for knob, value in saved.items():
                if strategy.strength_of(knob) is None:
                    raise ForgetlessError(f"the saved run state moves {strategy.name}.{knob}, which is no strength knob")
                if knob != strategy.strength_in_use.knob:  # e.g. an l2sp penalty's lam, read into today's bare l2sp (a cap)
                    raise ForgetlessError(
                        f"the saved run state moves {strategy.name}.{knob}, but this run's {strategy.name} is set by "
                        f"{strategy.strength_in_use.knob}: it was started with other settings or an older forgetless's "
                        "defaults; start the run again from the beginning")
                if value != getattr(strategy, knob):
                    strategy.set_knob(knob, value)

    def load_state_tensors(self, states: dict[str, dict[str, torch.Tensor]]) -> None:
        unknown = sorted(set(states) - set(self.names))
        if unknown:
            raise ForgetlessError(f"saved state for strategies not in this stack: {unknown}")
        for strategy in self.strategies:
            strategy.load_state_tensors(states.get(strategy.name, {}))
