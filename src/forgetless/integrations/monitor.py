"""`ForgettingMonitor`: a TrainerCallback that measures forgetting inside any Trainer, SFTTrainer included.

It scores the starting model at `on_train_begin` (once: successive `train()` calls are successive
tasks), every `every_steps` optimizer steps and at `on_train_end`, with the same evaluator and paired
standard errors as `forgetless run`. Numbers go out through the trainer's own `log`, so they land in
`trainer.state.log_history` and reach TensorBoard, MLflow or W&B through `report_to`. With `out_dir`
it writes results.json (the runner's keys), report.md and the plots after every task. With `budget` it
checks the general change against a forgetting budget at every evaluation and acts on it as `forgetless run`
does (forgetless.budget): `stop` ends the `train()` call, `rollback` restores at its end, `backoff` restores and
trains on at a lower rate, `strengthen` moves the knobs of the trainer's strategies (a `with_strategies` trainer).
Modes that restore weights are refused under DeepSpeed and FSDP, whose sharded or master copies they cannot reach.
"""

from __future__ import annotations

import inspect
import time
from pathlib import Path
from typing import Any, Iterable

from transformers import TrainerCallback

from ..budget import BudgetGuard
from ..config import BudgetConfig
from ..environment import run_environment
from ..errors import ForgetlessError
from ..evaluation.evaluator import Evaluator
from ..evaluation.lm_eval_tasks import load_lm_eval_tasks
from ..evaluation.suites import load_eval_file, load_suite
from ..fileio import atomic_write_json
from ..metrics import general_change
from ..results import RunResults, build_results, worst_task_fields

PREFIX = "forgetless"


def _eval_tasks(tasks: Iterable[str | Path | dict[str, str]]) -> list:
    loaded = []
    for task in tasks:
        if isinstance(task, dict):
            if set(task) != {"name", "file"}:
                raise ForgetlessError(f"ForgettingMonitor tasks: a mapping needs exactly 'name' and 'file', got {sorted(task)}")
            loaded.append(load_eval_file(task["name"], task["file"]))
        else:
            loaded.append(load_eval_file(Path(task).stem, task))
    names = [t.name for t in loaded]
    if len(set(names)) != len(names):
        raise ForgetlessError(f"ForgettingMonitor tasks: names must be unique, got {names}")
    return loaded


def _budget_config(budget, every_steps: int, has_general: bool) -> BudgetConfig | None:
    if budget is None or isinstance(budget, BudgetConfig):
        config = budget
    else:
        from pydantic import ValidationError

        try:
            config = BudgetConfig.model_validate(budget)
        except ValidationError as exc:
            fields = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise ForgetlessError(f"ForgettingMonitor budget: {fields}") from None
    if config is not None and not has_general:
        raise ForgetlessError("ForgettingMonitor budget: needs a general suite to check (suites=['general'])")
    if config is not None and (config.on_exceed != "strengthen" or config.restore) and not every_steps:
        raise ForgetlessError(f"ForgettingMonitor budget: on_exceed {config.on_exceed} acts within training, so it "
                              "needs every_steps > 0")
    return config


class ForgettingMonitor(TrainerCallback):
    """Measures general ability (`suites`) and held-out tasks (`tasks`: JSONL files) over training.

    `tasks` are your own evaluation files (multiple choice or text), never trained on by the monitor:
    typically the held-out split of what you fine-tune on. `limit` scores at most that many items per task.
    The tokenizer is the trainer's `processing_class` unless given. `budget` is a run config's `budget`
    mapping (`{max_general_drop: 0.01, on_exceed: stop}`); its in-domain score, which rollback prefers, is
    the score of `budget_task` (default: the first of `tasks`). `lm_eval_tasks` (found in `lm_eval_include`, a
    folder of task YAMLs, or among lm-eval's own) are scored with the general suite (forgetless.evaluation.lm_eval_tasks).
    """

    def __init__(self, suites: Iterable[str] = ("general",), tasks: Iterable[str | Path | dict[str, str]] = (),
                 every_steps: int = 0, out_dir: str | Path | None = None, limit: int | None = None, progress: bool = True,
                 tokenizer=None, budget: dict[str, Any] | BudgetConfig | None = None, budget_task: str | None = None,
                 lm_eval_tasks: Iterable[str] = (), lm_eval_include: str | Path | None = None):
        if every_steps < 0:
            raise ForgetlessError(f"ForgettingMonitor every_steps must be >= 0, got {every_steps}")
        if limit is not None and limit <= 0:
            raise ForgetlessError(f"ForgettingMonitor limit must be > 0, got {limit}")
        self.general_tasks = [t for suite in suites for t in load_suite(suite)]
        self.general_tasks += load_lm_eval_tasks(list(lm_eval_tasks), None if lm_eval_include is None else str(lm_eval_include))
        self.tasks = _eval_tasks(tasks)
        if not self.general_tasks and not self.tasks:
            raise ForgetlessError("ForgettingMonitor has nothing to score: give suites or tasks")
        self.every_steps, self.limit, self.progress, self.tokenizer = every_steps, limit, progress, tokenizer
        self.budget_config = _budget_config(budget, every_steps, bool(self.general_tasks))
        self.budget_task = budget_task or (self.tasks[0].name if self.tasks else None)
        self.budget: BudgetGuard | None = None
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.evaluator: Evaluator | None = None
        self.trainer = None
        self.step_offset = 0  # optimizer steps of earlier train() calls
        self.trained: list[str] = []
        self.started = time.perf_counter()
        self.environment = run_environment()  # once: results() is written at every evaluation

    # -- wiring ------------------------------------------------------------------------------------------

    def bind(self, trainer) -> "ForgettingMonitor":
        """Log through `trainer.log`. Found automatically at train start when not called."""
        self.trainer = trainer
        return self

    def _find_trainer(self):
        # The callback API passes no trainer; the callback runs inside one of its methods, so look up the stack.
        from transformers import Trainer

        frame = inspect.currentframe()
        while frame is not None:
            candidate = frame.f_locals.get("self")
            if isinstance(candidate, Trainer):
                return candidate
            frame = frame.f_back
        raise ForgetlessError("ForgettingMonitor: no Trainer found; call monitor.bind(trainer)")

    # -- callback events ---------------------------------------------------------------------------------

    def on_train_begin(self, args, state, control, model=None, processing_class=None, **kwargs):
        if self.trainer is None:
            self.trainer = self._find_trainer()
        tokenizer = self.tokenizer or processing_class or getattr(self.trainer, "processing_class", None)
        if tokenizer is None or not hasattr(tokenizer, "decode"):
            raise ForgetlessError("ForgettingMonitor needs the tokenizer: pass processing_class= to the trainer, "
                                  "or ForgettingMonitor(tokenizer=...)")
        if self.budget_config is not None and self.budget is None:
            self.budget = BudgetGuard(self.budget_config, getattr(self.trainer, "strategy_stack", None))
            sharded = getattr(self.trainer, "is_deepspeed_enabled", False) or getattr(self.trainer, "is_fsdp_enabled", False)
            if sharded and self.budget.acts_at_task_end:
                raise ForgetlessError(f"ForgettingMonitor budget: on_exceed {self.budget_config.on_exceed} restores weights, "
                                      "which DeepSpeed and FSDP keep sharded or in master copies it cannot reach; use "
                                      "strengthen (without restore) or train without sharding")
        if self.evaluator is None:
            self.evaluator = Evaluator(self.general_tasks, self.tasks, tokenizer, self.limit, self.progress)
            self._evaluate(model, "before", None, 0)
        if self.budget is not None:
            self.budget.start_task(model, self.step_offset)
        return control

    def on_step_end(self, args, state, control, model=None, **kwargs):
        final = state.global_step >= state.max_steps
        due = self.every_steps and state.global_step % self.every_steps == 0 and not final
        # stop, rollback, backoff and a cap's strengthen decide on the final state before the strategies' post-task
        # edits (on_train_end).
        if due or (self.every_steps and final and self.budget is not None and self.budget.checks_final_state):
            step = self.step_offset + state.global_step
            self._evaluate(model, "step", self._task_name(), step)
            if self.budget is not None and self.budget.check(model, self.evaluator.log, self.budget_task, step, final,
                                                             kwargs.get("optimizer"), kwargs.get("lr_scheduler")):
                control.should_training_stop = True
        return control

    def on_train_end(self, args, state, control, model=None, **kwargs):
        name = self._task_name()
        self.step_offset += state.global_step
        self._evaluate(model, "after_task", name, self.step_offset)
        if self.budget is not None:
            self.budget.check(model, self.evaluator.log, self.budget_task, self.step_offset)
        self.trained.append(name)
        if self.out_dir is not None and state.is_world_process_zero:
            self.write(self.out_dir)
        return control

    def _task_name(self) -> str:
        return getattr(self.trainer, "_task_name", None) or f"task{len(self.trained) + 1}"

    # -- measuring ---------------------------------------------------------------------------------------

    def _evaluate(self, model, stage: str, task: str | None, step: int) -> None:
        was_training = model.training
        record = self.evaluator.evaluate(model, stage, task, step)
        model.train(was_training)
        self.trainer.log(self.metrics(record))

    def metrics(self, record: dict[str, Any]) -> dict[str, float]:
        """The numbers logged at one evaluation: general mean, its change and s.e., each task's score."""
        log = self.evaluator.log
        out: dict[str, float] = {}
        if record["mean"] is not None:
            out[f"{PREFIX}/general"] = record["mean"]
            for name, score in record["scores"].items():
                out[f"{PREFIX}/general/{name}"] = score["score"]
            if len(log.general) > 1:
                change = general_change(log.general_samples[0], log.general_samples[-1])
                out[f"{PREFIX}/general_change"] = change["delta_abs"]
                out[f"{PREFIX}/general_change_se"] = change["delta_se"]
                worst = worst_task_fields(change["tasks"])
                out[f"{PREFIX}/general_worst_change"] = worst["general_worst_delta"]
                out[f"{PREFIX}/general_worst_change_se"] = worst["general_worst_se"]
                out[f"{PREFIX}/general_tasks_fell"] = worst["general_tasks_fell"]
        for name, score in log.task_evals[-1]["scores"].items():
            out[f"{PREFIX}/task/{name}"] = score["score"]
        return out

    def results(self) -> RunResults:
        """The results so far: results.json's content (the runner's keys where they apply) as `RunResults`."""
        model = getattr(self.trainer, "model", None)
        name_or_path = getattr(getattr(model, "config", None), "_name_or_path", None)
        stack = getattr(self.trainer, "strategy_stack", None)
        return build_results(
            self.evaluator.log, [t.name for t in self.tasks], {t.name: t.metric for t in self.tasks},
            model=name_or_path, adapter="lora" if hasattr(model, "peft_config") else "full",
            strategies=stack.names if stack is not None else [], trained_tasks=list(self.trained),
            training=list(getattr(self.trainer, "forgetless_task_logs", [])),
            wall_time_s=time.perf_counter() - self.started, environment=self.environment,
            **({"budget": self.budget.checks,
                "config": {"budget": self.budget_config.model_dump()}} if self.budget is not None else {}),
        )

    def write(self, out_dir: str | Path) -> None:
        from ..report import write_report

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        results = self.results()
        self.evaluator.log.write(out_dir / "evaluations.json")
        atomic_write_json(out_dir / "results.json", results.to_json())
        write_report(results, out_dir)
