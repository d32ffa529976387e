"""The run config: typed, validated, every field documented in one line.

A YAML file maps one-to-one onto `RunConfig`. Validation errors name the bad field by its dotted path
(`train.steps: Input should be a valid integer`) so a typo never surfaces as a traceback mid-run.
"""

from __future__ import annotations

import types
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from .errors import ForgetlessError


class _Strict(BaseModel):
    # Unknown keys are errors: a misspelt option silently ignored is a wrong experiment. Non-finite numbers
    # (`lr: .inf`) are refused, and so is lax coercion (below): `steps: true` is not 1 step.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_lax_coercion(cls, value: Any, info: ValidationInfo) -> Any:
        kinds = _scalar_kinds(cls.model_fields[info.field_name].annotation)
        if bool in kinds and not isinstance(value, bool) and value is not None and kinds <= {bool, type(None)}:
            raise ValueError(f"expected true or false, got {value!r}")
        if isinstance(value, bool) and bool not in kinds and kinds & {int, float}:
            raise ValueError(f"expected a number, got {value!r}")
        if int in kinds and float not in kinds and not isinstance(value, bool):
            if isinstance(value, float) and not value.is_integer() or isinstance(value, str) and str not in kinds:
                raise ValueError(f"expected an integer (a whole number), got {value!r}")
        return value


def _scalar_kinds(annotation) -> set:
    """The plain types an annotation admits (int | None -> {int, NoneType}); Literal and containers add none."""
    import typing

    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return set().union(*map(_scalar_kinds, args))
    return {annotation} if annotation in (int, float, bool, str, type(None)) else set()


class LoraConfig(_Strict):
    r: int = Field(8, gt=0, description="Rank of the low-rank update.")
    alpha: float = Field(16.0, gt=0, description="LoRA scaling numerator (scale = alpha / r).")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the LoRA input.")
    target_modules: list[str] | str = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
        description="Module names to adapt, or 'all-linear'.",
    )
    between_tasks: Literal["merge", "stack"] = Field(
        "merge",
        description="merge: fold the adapter into the base after each task and start a fresh one; "
        "stack: keep earlier adapters active and frozen, train a fresh one on top.",
    )


class TaskConfig(_Strict):
    name: str = Field(description="Name used in tables and results.")
    builtin: str | None = Field(None, description="A built-in task (support, legal, pydoc or jargon).")
    file: str | None = Field(None, description="A JSONL file of {prompt, response} or {text} rows.")
    heldout_file: str | None = Field(None, description="Held-out rows for scoring; default: a split of `file`.")
    heldout_fraction: float = Field(0.1, gt=0, lt=1, description="Fraction held out when no heldout_file.")

    @model_validator(mode="after")
    def _one_source(self) -> "TaskConfig":
        if (self.builtin is None) == (self.file is None):
            raise ValueError("give exactly one of `builtin` or `file`")
        return self


class EvalTaskConfig(_Strict):
    name: str = Field(description="Name used in tables and results.")
    file: str = Field(description="JSONL: {question, choices, answer} rows (multiple choice) or {text} rows (perplexity).")


class ProbeConfig(_Strict):
    every_steps: int = Field(1, gt=0, description="Probe the general change every N optimizer steps.")
    items_per_step: int = Field(2, gt=0, description="General-suite items scored at each probe.")
    window: int = Field(20, gt=0, description="Steps whose probed items form the estimate.")


class EvalConfig(_Strict):
    suites: list[str] = Field(default_factory=lambda: ["general"], description="Built-in suites to score.")
    tasks: list[EvalTaskConfig] = Field(default_factory=list, description="A user's own held-out tasks.")
    every_steps: int = Field(0, ge=0, description="Also evaluate every N optimizer steps (0: only at task ends).")
    limit: int | None = Field(None, gt=0, description="Score at most this many items per task (quick runs).")
    task_choices: bool = Field(
        True, description="Also score a built-in task's multiple-choice questions (support's reply choice; slow-ish)."
    )
    lm_eval_tasks: list[str] = Field(
        default_factory=list, description="lm-evaluation-harness tasks scored with the general suite (data must be local)."
    )
    lm_eval_include: str | None = Field(None, description="A folder of lm-eval task YAMLs (only these are indexed then).")
    probe: ProbeConfig | None = Field(
        None, description="A cheap per-step estimate of the general change from a few suite items (evaluation/probe.py)."
    )


class TrainConfig(_Strict):
    steps: int = Field(60, gt=0, description="Optimizer steps per task.")
    batch_size: int = Field(8, gt=0, description="Examples per optimizer step.")
    lr: float = Field(1e-4, gt=0, description="Peak learning rate (AdamW).")
    warmup_steps: int = Field(0, ge=0, description="Linear warm-up steps per task.")
    scheduler: Literal["constant", "linear", "cosine"] = Field("constant", description="LR schedule after warm-up.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    max_length: int = Field(128, gt=8, description="Training examples are truncated to this many tokens.")
    seed: int = Field(0, description="Seed for data order, initialisation and sampling.")
    max_train_examples: int | None = Field(None, gt=0, description="Use at most this many training rows per task.")
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32", description="Autocast precision of the training forward (weights stay in model_dtype)."
    )
    gradient_accumulation_steps: int = Field(
        1, gt=0, description="Micro-batches per optimizer step; batch_size is split evenly across them."
    )
    gradient_checkpointing: bool = Field(False, description="Recompute activations in backward to save memory.")

    @model_validator(mode="after")
    def _batch_splits_evenly(self) -> "TrainConfig":
        if self.batch_size % self.gradient_accumulation_steps:
            raise ValueError(
                f"batch_size ({self.batch_size}) must be a multiple of gradient_accumulation_steps "
                f"({self.gradient_accumulation_steps}): it is the examples per optimizer step"
            )
        return self


class BudgetConfig(_Strict):
    max_general_drop: float = Field(
        gt=0, description="Largest general-score drop allowed (absolute, or a fraction of the starting score if relative)."
    )
    relative: bool = Field(False, description="max_general_drop is a fraction of the general score before training.")
    on_exceed: Literal["stop", "rollback", "backoff", "strengthen"] = Field(
        "stop",
        description="stop: end the task at the last state within budget; rollback: train on, then restore the best "
        "state within budget if the task ends beyond it; backoff: go back to the last state within budget and train on at a "
        "lower learning rate; strengthen: raise the strategies' strength and train on.",
    )
    factor: float = Field(2.0, gt=1, description="strengthen: each knob is multiplied (or divided) by this; backoff: the "
                          "learning rate is divided by this.")
    restore: bool = Field(False, description="strengthen: also go back to the last state within budget, as backoff does.")

    @model_validator(mode="after")
    def _restore_only_with_strengthen(self) -> "BudgetConfig":
        if self.restore and self.on_exceed != "strengthen":
            raise ValueError(f"restore: only for on_exceed strengthen ({self.on_exceed} already decides what to keep)")
        return self


def launched_sharding() -> str:
    """What `accelerate launch --use_fsdp / --use_deepspeed` asked for (through its environment), else "none"."""
    import os

    for engine in ("fsdp", "deepspeed"):
        if os.environ.get(f"ACCELERATE_USE_{engine.upper()}", "false").lower() == "true":
            return engine
    return "none"


class RunConfig(_Strict):
    model: str = Field("default", description="'default', a Hugging Face id, or a local model folder.")
    adapter: Literal["full", "lora"] = Field("full", description="Train all weights, or a PEFT LoRA adapter.")
    lora: LoraConfig = Field(default_factory=LoraConfig, description="LoRA settings (adapter: lora).")
    tasks: list[TaskConfig] = Field(min_length=1, description="Tasks trained in this order.")
    strategies: list[str | dict[str, Any]] = Field(
        default_factory=lambda: ["naive"], description="Strategy names, or {name: ..., <params>}."
    )
    general_data: str | None = Field(
        None, description="A JSONL file of {text} or {prompt, response} rows that strategies protect and rehearse as the "
        "model's general ability, in place of the bundled general English (keep them apart from what is evaluated)."
    )
    eval: EvalConfig = Field(default_factory=EvalConfig, description="What to score and when.")
    train: TrainConfig = Field(default_factory=TrainConfig, description="Optimisation settings.")
    checkpoints: Literal["none", "last", "every_task"] = Field(
        "last", description="Which safetensors checkpoints to write (adapters only under LoRA)."
    )
    checkpoint_every_steps: int | None = Field(
        None, gt=0, description="Keep a resumable state every N optimizer steps inside a task too, not only at each "
        "task's start (run --resume)."
    )
    budget: BudgetConfig | None = Field(None, description="A forgetting budget checked at every evaluation.")
    trust_remote_code: bool = Field(False, description="Allow model code from the model folder (off: safe).")
    model_dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="dtype the weights load in.")

    def training_setup(self):
        """The facts strategies see about how tasks train (strategies never read the config itself)."""
        from .strategies.base import TrainingSetup

        return TrainingSetup(
            adapter=self.adapter, lora_between_tasks=self.lora.between_tasks, max_length=self.train.max_length,
            batch_size=self.train.batch_size, seed=self.train.seed, precision=self.train.precision,
            total_tasks=len(self.tasks), sharding=launched_sharding(),
        )

    @model_validator(mode="after")
    def _budget_can_be_checked(self) -> "RunConfig":
        budget = self.budget
        if budget is None:
            return self
        if not self.eval.suites and not self.eval.tasks and not self.eval.lm_eval_tasks:
            raise ValueError("budget: needs a general evaluation to check (eval.suites, eval.tasks or eval.lm_eval_tasks)")
        if (budget.on_exceed != "strengthen" or budget.restore) and not self.eval.every_steps and self.eval.probe is None:
            raise ValueError(
                f"budget: on_exceed {budget.on_exceed}{' with restore' if budget.restore else ''} acts within a task, "
                "so it needs eval.every_steps > 0 or "
                "eval.probe (only task-end evaluations leave nothing earlier to keep)"
            )
        return self

    @model_validator(mode="after")
    def _unique_task_names(self) -> "RunConfig":
        names = [t.name for t in self.tasks] + [t.name for t in self.eval.tasks]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"task names must be unique; repeated: {duplicates}")
        return self


def _format_validation_error(exc: ValidationError, source: str) -> str:
    lines = [f"invalid config {source}:"]
    for error in exc.errors():
        path = ".".join(str(part) for part in error["loc"]) or "(top level)"
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown field"
        lines.append(f"  {path}: {message}")
    return "\n".join(lines)


def parse_config(data: Any, source: str = "") -> RunConfig:
    """Validate a dict (from YAML or code) into a RunConfig, or raise ForgetlessError naming bad fields."""
    if not isinstance(data, dict):
        raise ForgetlessError(f"invalid config {source}: expected a mapping at the top level")
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        raise ForgetlessError(_format_validation_error(exc, source)) from None


def load_config(path: str | Path) -> RunConfig:
    """Read a YAML config; relative task files are resolved against the config file's folder."""
    path = Path(path)
    if not path.is_file():
        raise ForgetlessError(f"config file not found: {path}")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as exc:
        raise ForgetlessError(f"{path}: not valid YAML ({exc})") from None
    except _DuplicateKey as exc:
        raise ForgetlessError(f"{path}:{exc.line}: key {exc.key!r} appears twice in one mapping (the last would "
                              "silently win)") from None
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise ForgetlessError(f"{path}:{line}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    config = parse_config(data, source=str(path))
    return _resolve_relative_files(config, path.parent)


class _DuplicateKey(Exception):
    def __init__(self, key, line: int):
        self.key, self.line = key, line


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.safe_load, except that a key given twice in one mapping is an error, not "the last one wins"."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise _DuplicateKey(key, key_node.start_mark.line + 1)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _resolve_relative_files(config: RunConfig, base: Path) -> RunConfig:
    def resolve(value: str | None) -> str | None:
        if value is None or Path(value).is_absolute():
            return value
        candidate = base / value
        # Prefer the config's folder; fall back to the working directory, where users often run from.
        return str(candidate) if candidate.exists() or not Path(value).exists() else value

    tasks = [t.model_copy(update={"file": resolve(t.file), "heldout_file": resolve(t.heldout_file)}) for t in config.tasks]
    eval_tasks = [t.model_copy(update={"file": resolve(t.file)}) for t in config.eval.tasks]
    evaluation = config.eval.model_copy(update={"tasks": eval_tasks, "lm_eval_include": resolve(config.eval.lm_eval_include)})
    return config.model_copy(update={"tasks": tasks, "eval": evaluation, "general_data": resolve(config.general_data)})
