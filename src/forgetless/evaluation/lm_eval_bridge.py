"""Run lm-evaluation-harness on forgetless multiple-choice items, fully offline, for comparison.

The items are written to a JSONL file with a task YAML beside it (`output_type: multiple_choice`,
the question as context, the choices as continuations), and lm-eval's `simple_evaluate` scores
them with `HFLM` wrapped around an already loaded model. The agreement test and the speed
benchmark both go through here, so they compare against the same lm-eval setup.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ..errors import ForgetlessError
from .multiple_choice import MultipleChoiceItem

TASK_NAME = "forgetless_mc"


@dataclass
class LmEvalMultipleChoiceRun:
    """What lm-eval reported, in item order."""

    acc: float
    acc_norm: float
    acc_stderr: float
    acc_norm_stderr: float
    loglikelihoods: list[list[float]]  # [item][choice]
    correct: list[bool]
    correct_norm: list[bool]
    seconds: float  # the whole simple_evaluate call
    model_seconds: float  # inside HFLM.loglikelihood (tokenising and forwards)


def write_task(folder: Path, items: Sequence[MultipleChoiceItem], delimiter: str = " ") -> Path:
    """Write the items and a task YAML named TASK_NAME into `folder`; returns the YAML path."""
    folder.mkdir(parents=True, exist_ok=True)
    data_path = folder / "items.jsonl"
    with data_path.open("w", encoding="utf-8") as handle:
        for item in items:
            row = {"question": item.question, "choices": list(item.choices), "answer": item.answer}
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    yaml_path = folder / f"{TASK_NAME}.yaml"
    # JSON is valid YAML, and it quotes the delimiter and paths safely.
    config = {
        "task": TASK_NAME,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data_path)}},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": "{{question}}",
        "doc_to_choice": "{{choices}}",
        "doc_to_target": "{{answer}}",
        "target_delimiter": delimiter,
        "metric_list": [
            {"metric": "acc", "aggregation": "mean", "higher_is_better": True},
            {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True},
        ],
    }
    yaml_path.write_text(json.dumps(config, indent=2), encoding="utf-8")
    return yaml_path


def run_lm_eval_multiple_choice(
    model,
    tokenizer,
    items: Sequence[MultipleChoiceItem],
    *,
    batch_size: int = 16,
    delimiter: str = " ",
) -> LmEvalMultipleChoiceRun:
    """Score `items` with lm-eval's `simple_evaluate` on the given model object, without any network."""
    # Set before lm-eval (and through it `datasets`) is imported, so nothing tries the Hub.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    try:
        from lm_eval import simple_evaluate
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError as exc:
        raise ForgetlessError(f"lm-evaluation-harness is not installed (pip install lm-eval): {exc}") from exc

    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    model_seconds = 0.0
    original_loglikelihood = lm.loglikelihood

    def timed_loglikelihood(*args, **kwargs):
        nonlocal model_seconds
        start = time.perf_counter()
        try:
            return original_loglikelihood(*args, **kwargs)
        finally:
            model_seconds += time.perf_counter() - start

    lm.loglikelihood = timed_loglikelihood
    with tempfile.TemporaryDirectory(prefix="forgetless-lm-eval-") as folder:
        write_task(Path(folder), items, delimiter)
        start = time.perf_counter()
        # include_defaults=False: indexing lm-eval's thousands of built-in task files takes seconds.
        task_manager = TaskManager(include_path=folder, include_defaults=False)
        output = simple_evaluate(
            model=lm, tasks=[TASK_NAME], task_manager=task_manager, log_samples=True, num_fewshot=0, verbosity="ERROR"
        )
        seconds = time.perf_counter() - start

    metrics = output["results"][TASK_NAME]
    samples = sorted(output["samples"][TASK_NAME], key=lambda sample: sample["doc_id"])
    return LmEvalMultipleChoiceRun(
        acc=metrics["acc,none"],
        acc_norm=metrics["acc_norm,none"],
        acc_stderr=metrics["acc_stderr,none"],
        acc_norm_stderr=metrics["acc_norm_stderr,none"],
        # resps: one [[loglikelihood, is_greedy]] per choice.
        loglikelihoods=[[float(resp[0][0]) for resp in sample["resps"]] for sample in samples],
        correct=[sample["acc"] == 1.0 for sample in samples],
        correct_norm=[sample["acc_norm"] == 1.0 for sample in samples],
        seconds=seconds,
        model_seconds=model_seconds,
    )
