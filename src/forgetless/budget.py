"""The forgetting budget: at every evaluation, the general change is checked against a limit, and acted on.

A check counts as exceeded only when the whole 95 % band of the change lies below the limit: with d the change
of the general mean since before training and se its paired bootstrap s.e., exceeded <=> d + 1.96 se < -limit.
Noise alone then does not trigger it (a drop of the limit's size is not enough; it must be beyond it by the
noise). `limit` is `max_general_drop`, or that fraction of the starting score when `relative`.

Checks run at every full evaluation and, when the run has a per-step probe (`eval.probe`), at every probe
point, on its estimate and s.e. (forgetless.evaluation.probe): the budget then needs no full evaluations
inside a task.

What happens on exceeding (config `budget.on_exceed`):
- stop: the task ends at once, and the trained weights go back to the last evaluation within budget of this task
  (its start if none), before the task's weight edits and consolidation run on them.
- rollback: training goes on to the task's end; the final state is then evaluated, and if it exceeds the budget
  the weights go back to the evaluation within budget with the highest in-domain score (the task's own held-out
  score, ties to the later one).
- backoff: the weights go back to the last evaluation within budget of this task (as under stop), the learning
  rate is divided by `factor` from there on, and training goes on to the task's end with fresh optimizer moments
  (the old ones point along the path that overshot). A run whose step is too large for the budget (every state
  it passes through already beyond it) thus converges on a smaller one instead of keeping only its start. The
  task's final state, if beyond the budget, goes back as under stop.
- strengthen: every strategy of the stack that declares a strength knob moves it `factor` times the protecting
  way (a penalty weight up, WiSE's alpha down, ...; `Strategy.strength` says which and from when it applies),
  and training goes on. It may fire again at the next check while the weights are still moving back. At the
  task's final step no step is left to act on a moved knob; a cap (ewc's, l2sp's or layerwise's target,
  layerwise's distance) is then applied to the weights at once, as after a step, so the task ends within the
  tightened cap (a stack with a cap has its final state checked, as under stop, before the task's weight edits
  and consolidation re-anchor it); any other knob takes effect from the next task. With
  `restore: true` the weights also go back to the last evaluation within budget (fresh optimizer moments), as
  under backoff, so they need not find their way back under the stronger penalty; the task's final state, if
  beyond the budget, goes back as under stop.

Kept states are CPU copies of the trained tensors only (the adapter under LoRA); one is held at a time.
Every check is recorded (`checks`) with the numbers behind it and the action taken; the report shows them.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .config import BudgetConfig
from .errors import ForgetlessError
from .metrics import general_change

_Z = 1.96


class BudgetGuard:
    def __init__(self, budget: BudgetConfig, stack=None):
        self.budget = budget
        self.stack = stack
        if budget.on_exceed == "strengthen" and not any(s.strength for s in getattr(stack, "strategies", [])):
            names = getattr(stack, "names", []) or ["naive"]
            raise ForgetlessError(
                f"budget: on_exceed strengthen needs a strategy with a strength knob; {names} have none "
                "(use stop or rollback, or add e.g. ewc, l2sp, lwf, fip, replay or wise)"
            )
        self.checks: list[dict[str, Any]] = []
        self._kept: dict[str, torch.Tensor] | None = None
        self._kept_at: tuple[int, float] = (0, -math.inf)  # (step, in-domain score) of the kept state
        self._exceeded_in_task = False
        self._restored_to: int | None = None

    @property
    def restores(self) -> bool:
        """Whether an exceeded check sends the weights back to the last state within budget."""
        return self.budget.on_exceed in ("stop", "backoff") or (self.budget.on_exceed == "strengthen" and self.budget.restore)

    @property
    def acts_at_task_end(self) -> bool:
        """Modes that restore need the task's final state checked before the weight edits and consolidation."""
        return self.restores or self.budget.on_exceed == "rollback"

    @property
    def checks_final_state(self) -> bool:
        """Whether the task's final state is checked before its weight edits: to restore it, or to tighten a cap on it."""
        return self.acts_at_task_end or (self.budget.on_exceed == "strengthen" and bool(self.stack.capped()))

    def start_task(self, model: torch.nn.Module, step: int) -> None:
        self._exceeded_in_task = False
        if self.acts_at_task_end:
            self._keep(model, step, -math.inf)

    def assess(self, log) -> dict[str, Any]:
        """The latest evaluation's general change against the budget (numbers only, no action)."""
        change = general_change(log.general_samples[0], log.general_samples[-1])
        return self._numbers(change["delta_abs"], change["delta_se"], change["before"])

    def _numbers(self, delta: float, se: float, before: float) -> dict[str, Any]:
        limit = self.budget.max_general_drop * (before if self.budget.relative else 1.0)
        upper = delta + _Z * se
        return {"general_change": delta, "se": se, "upper_bound": upper, "limit": -limit, "exceeded": bool(upper < -limit)}

    def check_probe(self, model: torch.nn.Module, point, before: float, task: str | None, final: bool = False,
                    optimizer=None, scheduler=None) -> bool:
        """Act on a per-step probe point (evaluation/probe.py) as on a full evaluation; True: stop this task.

        A probe scores no held-out task, so rollback ranks probe states by recency alone (the later wins).
        """
        if point.delta is None:
            return False
        numbers = self._numbers(point.delta, point.se, before)
        return self._act(model, numbers, None, "probe", task, point.step, final, optimizer, scheduler)

    def check(self, model: torch.nn.Module, log, task: str | None, step: int, final: bool = False,
              optimizer=None, scheduler=None) -> bool:
        """Act on the latest evaluation (taken at `step` while training `task`); True: stop training this task.

        `final`: the evaluation of the task's last step (stop, rollback and backoff restore here if it exceeds).
        An evaluation after the task (its weight edits done) is only recorded under stop, rollback and backoff, and
        under strengthen moves the knobs for the next task. backoff needs the training's `optimizer` and `scheduler`,
        strengthen with restore its `optimizer`.
        """
        return self._act(model, self.assess(log), _in_domain_score(log, task), log.general[-1]["stage"], task, step, final,
                         optimizer, scheduler)

    def _act(self, model, numbers: dict[str, Any], in_domain: float | None, stage: str, task: str | None, step: int,
             final: bool, optimizer=None, scheduler=None) -> bool:
        record = {"step": step, "task": task, "stage": stage, **numbers, "in_domain": in_domain, "action": "within"}
        on_exceed = self.budget.on_exceed
        if stage == "after_task" and self.acts_at_task_end:
            if numbers["exceeded"] and on_exceed == "strengthen":  # too late to restore; the knobs move for the next task
                record.update(action="strengthen (after the task's weight edits)", detail=self._strengthen())
            elif numbers["exceeded"]:
                record["action"] = "exceeded after the task's weight edits (recorded)"
        elif not numbers["exceeded"]:
            score = -math.inf if in_domain is None else in_domain
            if self.restores or (on_exceed == "rollback" and score >= self._kept_at[1]):
                self._keep(model, step, score)
        elif on_exceed == "stop":
            record.update(action="stop", detail=self._restore(model))
        elif self.restores and final:
            moved = f"; {self._strengthen()}" if on_exceed == "strengthen" else ""
            record.update(action="restore at the task's end", detail=self._restore(model) + moved)
        elif on_exceed == "backoff":
            slowed = _slow_down(optimizer, scheduler, self.budget.factor)  # first: it refuses what it cannot slow down
            record.update(action="backoff", detail=f"{self._restore(model)}, {slowed}")
        elif on_exceed == "strengthen" and self.restores:
            fresh = _fresh_moments(optimizer)
            record.update(action="strengthen", detail=f"{self._strengthen()}; {self._restore(model)}, {fresh}")
        elif on_exceed == "strengthen":
            record.update(action="strengthen", detail=self._strengthen() + (self._apply_caps(model) if final else ""))
        else:
            self._exceeded_in_task = True
            record["action"] = "continue (rollback at the task's end)"
        if final and on_exceed == "rollback" and self._exceeded_in_task:
            if numbers["exceeded"]:
                record.update(action="rollback", detail=self._restore(model))
            else:
                record["action"] = "within at the end (kept)"
        self.checks.append(record)
        return record["action"] == "stop"

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """(the kept weights, everything else as JSON), for a resumable checkpoint."""
        step, score = self._kept_at
        return dict(self._kept or {}), {"checks": self.checks, "kept": self._kept is not None, "kept_at": step,
                                        "kept_score": None if score == -math.inf else score,
                                        "exceeded_in_task": self._exceeded_in_task}

    def load_state(self, tensors: dict[str, torch.Tensor], values: dict[str, Any]) -> None:
        self.checks = list(values["checks"])
        self._kept = dict(tensors) if values["kept"] else None
        score = values["kept_score"]
        self._kept_at = (values["kept_at"], -math.inf if score is None else score)
        self._exceeded_in_task = values["exceeded_in_task"]

    def take_restored_step(self) -> int | None:
        """The step whose state the last check restored (None if it restored nothing); asking clears it."""
        step, self._restored_to = self._restored_to, None
        return step

    def decisions(self) -> list[dict[str, Any]]:
        """The checks that did something (or found the budget exceeded)."""
        return [c for c in self.checks if c["action"] != "within"]

    def _keep(self, model: torch.nn.Module, step: int, score: float) -> None:
        self._kept = {n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters() if p.requires_grad}
        self._kept_at = (step, score)

    def _restore(self, model: torch.nn.Module) -> str:
        parameters = dict(model.named_parameters())
        with torch.no_grad():
            for name, value in self._kept.items():
                parameters[name].copy_(value)
        step, score = self._kept_at
        self._restored_to = step
        shown = "" if score == -math.inf else f", in-domain {score:.4f}"
        return f"weights restored to step {step}{shown}"

    def _strengthen(self) -> str:
        """Move every strength knob of the stack `factor` times the protecting way; what moved, as text."""
        moved = {s.name: s.strengthen(self.budget.factor) for s in self.stack.strategies if s.strength}
        return ", ".join(f"{name}.{_knob(self.stack, name)} {change[0]:g} -> {change[1]:g}"
                         for name, change in moved.items() if change is not None) or "every knob at its bound"

    def _apply_caps(self, model: torch.nn.Module) -> str:
        """At a task's last check no next step will project onto a tightened cap: project now, so the task ends within."""
        capped = self.stack.apply_caps(model)
        return f"; weights projected onto {', '.join(capped)}'s cap now (the task's last step)" if capped else ""


def _slow_down(optimizer, scheduler, factor: float) -> str:
    """Divide the learning rate by `factor` for the rest of training and start the optimizer's moments afresh."""
    inner = getattr(scheduler, "scheduler", scheduler)  # accelerate's wrapper holds the torch scheduler as .scheduler
    if optimizer is None or not isinstance(inner, torch.optim.lr_scheduler.LambdaLR):
        raise ForgetlessError(
            "budget: on_exceed backoff divides the rate of a LambdaLR schedule (transformers' constant, linear, cosine, "
            f"...); this training has {type(inner).__name__} (use stop, rollback or strengthen, or another "
            "lr_scheduler_type)")
    # LambdaLR derives every step's rate from base_lrs, so scaling the groups' lr alone would last one step. The
    # groups' initial_lr stays: a later train() of the same Trainer builds its schedule from it at the full rate.
    inner.base_lrs = [lr / factor for lr in inner.base_lrs]
    for group in getattr(optimizer, "optimizer", optimizer).param_groups:
        group["lr"] /= factor
    return f"lr now {inner.base_lrs[0]:.3g} (/{factor:g}), {_fresh_moments(optimizer)}"


def _fresh_moments(optimizer) -> str:
    """Forget the optimizer's moments: after the weights go back they point along the path that overshot."""
    if optimizer is None:
        raise ForgetlessError("budget: going back to a kept state needs the training's optimizer")
    getattr(optimizer, "optimizer", optimizer).state.clear()  # accelerate wraps the torch optimizer
    return "optimizer moments reset"


def _in_domain_score(log, task: str | None) -> float | None:
    scores = log.task_evals[-1]["scores"] if log.task_evals else {}
    return scores[task]["score"] if task in scores else None


def _knob(stack, name: str) -> str:
    return next(s.strength_in_use.knob for s in stack.strategies if s.name == name)
