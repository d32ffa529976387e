"""lm-evaluation-harness tasks as general tasks of a run (`eval.lm_eval_tasks`, `eval.lm_eval_include`).

A `multiple_choice` task is scored by forgetless's own scorer on the requests lm-eval itself builds (its
context, description and few-shot setting, its target delimiter and choices), so the numbers are lm-eval's
`acc` (the agreement test shows the scorer matches lm-eval item for item) and it is faster. Every other
output type except rolling log-likelihood (`generate_until`, `loglikelihood`) runs through lm-eval's own
`simple_evaluate` on the loaded model, and its first metric per document is the item's score. Either way the
per-item values join the paired standard error like the built-in tasks.

Nothing is downloaded: the Hub is switched off before lm-eval is imported, so a task whose data is not local
fails with lm-eval's own error. A local task YAML is found through `eval.lm_eval_include` (a folder).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from ..errors import ForgetlessError
from ..metrics import ScoreSamples
from .multiple_choice import MultipleChoiceItem, score_multiple_choice, warn_if_truncated


def _offline_lm_eval():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    try:
        from lm_eval.tasks import TaskManager
    except ImportError as exc:
        raise ForgetlessError(f"eval.lm_eval_tasks needs lm-evaluation-harness (pip install lm-eval): {exc}") from None
    return TaskManager


def load_lm_eval_tasks(names: list[str], include: str | None = None) -> list["LmEvalTask"]:
    """The named lm-eval tasks (from `include` and, when it is not given, lm-eval's own task files)."""
    if not names:
        return []
    task_manager_cls = _offline_lm_eval()
    # Indexing lm-eval's thousands of built-in task files takes seconds: only when no include folder is given.
    manager = task_manager_cls(include_path=include, include_defaults=include is None)
    unknown = [name for name in names if name not in manager.all_tasks]
    if unknown:
        where = f"in {include}" if include else "among lm-eval's tasks"
        raise ForgetlessError(f"eval.lm_eval_tasks: {unknown} not found {where}")
    tasks = []
    for name in names:
        loaded = manager.load([name])["tasks"]
        if set(loaded) != {name}:
            raise ForgetlessError(f"eval.lm_eval_tasks: {name} is a group of {sorted(loaded)}; list its tasks instead")
        task = loaded[name]
        if task.OUTPUT_TYPE == "loglikelihood_rolling":
            raise ForgetlessError(f"eval.lm_eval_tasks: {name} is a rolling log-likelihood (perplexity) task; its "
                                  "corpus metrics have no per-item score; use an eval file of {text} rows instead")
        tasks.append(LmEvalTask(name, task, manager))
    return tasks


@dataclass
class LmEvalTask:
    name: str
    task: Any  # lm_eval.api.task.ConfigurableTask
    manager: Any = field(repr=False)
    warned: set[str] = field(default_factory=set, repr=False, compare=False)  # truncation warned once per task
    metric = "mean"

    def evaluate(self, model, tokenizer, limit: int | None = None, progress=False):
        from .suites import TaskScore

        if self.task.OUTPUT_TYPE == "multiple_choice":
            values, summary = self._multiple_choice(model, tokenizer, limit, progress)
        else:
            values, summary = self._through_lm_eval(model, tokenizer, limit)
        samples = ScoreSamples(kind="mean", values=values)
        return TaskScore({"score": samples.score(), **summary, "n": len(values)}, samples)

    def _multiple_choice(self, model, tokenizer, limit, progress):
        task = self.task
        if getattr(task, "multiple_input", False):
            raise ForgetlessError(f"lm-eval task {self.name}: multiple-input tasks (choices in the context) are not supported")
        task.build_all_requests(limit=limit, rank=0, world_size=1)
        delimiter = task.config.target_delimiter
        by_doc: dict[int, list] = {}
        for instance in task.instances:
            by_doc.setdefault(instance.doc_id, []).append(instance)
        items = []
        for doc_id in sorted(by_doc):
            doc = by_doc[doc_id][0].doc
            choices = list(task.doc_to_choice(doc))
            contexts = {instance.arguments[0] for instance in by_doc[doc_id]}
            continuations = [instance.arguments[1] for instance in sorted(by_doc[doc_id], key=lambda i: i.idx)]
            if len(contexts) != 1 or continuations[: len(choices)] != [delimiter + c for c in choices]:
                raise ForgetlessError(f"lm-eval task {self.name}: unexpected requests for document {doc_id} "
                                      "(e.g. acc_mutual_info); not supported")
            target = task.doc_to_target(doc)
            answer = choices.index(target) if isinstance(target, str) else int(target)
            items.append(MultipleChoiceItem(contexts.pop(), tuple(choices), answer))
        result = score_multiple_choice(model, tokenizer, items, delimiter=delimiter, progress=progress)
        warn_if_truncated(result, f"lm-eval task {self.name!r}", self.warned)
        summary = {"acc": result.acc, "acc_norm": result.acc_norm, "acc_stderr": result.acc_stderr}
        return [float(c) for c in result.correct], summary

    def _through_lm_eval(self, model, tokenizer, limit):
        from lm_eval import simple_evaluate
        from lm_eval.models.huggingface import HFLM

        was_training = model.training
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=8)
        output = simple_evaluate(model=lm, tasks=[self.name], task_manager=self.manager, limit=limit, log_samples=True,
                                 verbosity="ERROR")
        model.train(was_training)
        metric = self.task.config.metric_list[0]["metric"]
        samples = sorted(output["samples"][self.name], key=lambda sample: sample["doc_id"])
        values = [float(sample[metric]) for sample in samples]
        return values, {metric: sum(values) / len(values)}
