"""Scores the general suite and every training task at each evaluation point of a run, and keeps the log."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..metrics import ScoreSamples


@dataclass
class EvaluationLog:
    """Everything measured so far: the JSON-ready records and the per-item samples behind them."""

    general: list[dict[str, Any]] = field(default_factory=list)
    task_evals: list[dict[str, Any]] = field(default_factory=list)
    general_samples: list[dict[str, ScoreSamples]] = field(default_factory=list)
    task_samples: list[dict[str, ScoreSamples]] = field(default_factory=list)
    seconds: float = 0.0

    def first(self) -> "EvaluationLog":
        """A log of the first evaluation only (the "before training" one another run can adopt)."""
        return EvaluationLog(self.general[:1], self.task_evals[:1], self.general_samples[:1], self.task_samples[:1], 0.0)

    def to_json(self) -> dict[str, Any]:
        """Plain JSON (no pickle): the records and every per-item sample behind them."""
        def samples(entries):
            return [{name: asdict(s) for name, s in entry.items()} for entry in entries]

        return {"general": self.general, "task_evals": self.task_evals, "general_samples": samples(self.general_samples),
                "task_samples": samples(self.task_samples), "seconds": self.seconds}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "EvaluationLog":
        def samples(entries):
            return [{name: ScoreSamples(**s) for name, s in entry.items()} for entry in entries]

        return cls(data["general"], data["task_evals"], samples(data["general_samples"]), samples(data["task_samples"]),
                   data.get("seconds", 0.0))

    def write(self, path: str | Path) -> None:
        """evaluations.json: compact (the per-item samples are most of it), written whole or not at all."""
        from ..fileio import atomic_write_text

        atomic_write_text(path, json.dumps(self.to_json(), ensure_ascii=False) + "\n")

    @classmethod
    def read(cls, path: str | Path) -> "EvaluationLog":
        return cls.from_json(json.loads(Path(path).read_text(encoding="utf-8")))

    def held_out_after(self, tasks: list[str]) -> dict[str, ScoreSamples]:
        """Each task's held-out samples right after its own training, before later tasks move it: the items
        behind the score matrix's diagonal, so two runs' in-domain scores can be compared item by item."""
        found = {}
        for record, samples in zip(self.task_evals, self.task_samples):
            if record["stage"] == "after_task" and record["task"] in tasks and record["task"] not in found:
                found[record["task"]] = samples[record["task"]]
        missing = [t for t in tasks if t not in found]
        if missing:
            raise ValueError(f"no evaluation after training {missing}: the log has {sorted(found) or 'none'}")
        return {t: found[t] for t in tasks}

    def held_out_after_task(self, last: str, tasks: list[str]) -> dict[str, ScoreSamples]:
        """Each of `tasks`' held-out samples in the evaluation after training `last`: the items behind the in-domain
        gain at the end of a sequence (or of its first tasks), what later tasks took back included."""
        found = next((samples for record, samples in zip(self.task_evals, self.task_samples)
                      if record["stage"] == "after_task" and record["task"] == last), None)
        if found is None:
            raise ValueError(f"no evaluation after training {last!r}")
        return {t: found[t] for t in tasks}


class Evaluator:
    def __init__(self, general_tasks: list, training_tasks: list, tokenizer, limit: int | None = None, progress: bool = True):
        self.general_tasks = general_tasks
        self.training_tasks = training_tasks  # held-out evaluations, in training order
        self.tokenizer = tokenizer
        self.limit = limit
        self.progress = progress
        self.log = EvaluationLog()

    def adopt_before(self, other: EvaluationLog) -> None:
        """Reuse another run's "before training" evaluation of the same model, tasks and limit."""
        if self.log.general or not other.general or other.general[0]["stage"] != "before":
            raise ValueError("adopt_before needs a fresh evaluator and a log that starts with a 'before' evaluation")
        self.log.general.append(other.general[0])
        self.log.task_evals.append(other.task_evals[0])
        self.log.general_samples.append(other.general_samples[0])
        self.log.task_samples.append(other.task_samples[0])
        self._start_from(other.general_samples[0])

    def restore(self, log: EvaluationLog) -> None:
        """Continue a resumed run's evaluation log (it starts with the run's own "before" evaluation)."""
        self.log = log
        self._start_from(log.general_samples[0])

    def _start_from(self, before: dict[str, ScoreSamples]) -> None:
        # Tasks fixed by the starting model (the leakage signature) take it from the adopted evaluation.
        for task in self.general_tasks:
            if hasattr(task, "start_from"):
                task.start_from(before)

    def _score_all(self, model, tasks, label: str):
        summaries, samples = {}, {}
        for task in tasks:
            result = task.evaluate(model, self.tokenizer, self.limit, progress=f"{label} {task.name}" if self.progress else False)
            summaries[task.name] = result.summary
            samples[task.name] = result.samples
        return summaries, samples

    def evaluate(self, model, stage: str, task: str | None, step: int) -> dict[str, Any]:
        """Score everything now; `stage` is "before", "step" or "after_task"."""
        started = time.perf_counter()
        label = {"before": "eval before training", "step": f"eval step {step}", "after_task": f"eval after {task}"}[stage]
        general, general_samples = self._score_all(model, self.general_tasks, label)
        tasks, task_samples = self._score_all(model, self.training_tasks, label)
        header = {"stage": stage, "task": task, "step": step}
        mean = sum(s["score"] for s in general.values()) / len(general) if general else None
        self.log.general.append({**header, "scores": general, "mean": mean})
        self.log.task_evals.append({**header, "scores": tasks})
        self.log.general_samples.append(general_samples)
        self.log.task_samples.append(task_samples)
        self.log.seconds += time.perf_counter() - started
        return self.log.general[-1]
