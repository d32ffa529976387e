"""Full fine-tuning or PEFT LoRA, and what happens to a LoRA adapter between tasks.

`merge` (default): after each task the adapter is folded into the base weights and the next task trains
a fresh adapter on the merged model (sequential LoRA, as in EWC-LoRA). `stack`: earlier tasks' adapters
stay active but frozen and a fresh adapter trains on top (the O-LoRA layout).
"""

from __future__ import annotations

import torch

from .config import RunConfig
from .errors import ForgetlessError


def adapter_name(task_index: int) -> str:
    return f"task{task_index}"


def prepare_for_task(model: torch.nn.Module, config: RunConfig, task_index: int) -> torch.nn.Module:
    """Return the model to train for this task, with exactly the intended parameters trainable."""
    if config.adapter == "full":
        for parameter in model.parameters():
            parameter.requires_grad_(True)
        return model
    from peft import PeftModel, get_peft_model

    lora = lora_config(config)
    name = adapter_name(task_index)
    try:
        if not isinstance(model, PeftModel):
            return get_peft_model(model, lora, adapter_name=name)
        # Stack mode: add a fresh adapter, keep all active, train only the new one.
        model.add_adapter(name, lora)
    except PEFT_REFUSALS as exc:
        raise peft_error(exc) from exc
    names = [adapter_name(i) for i in range(task_index + 1)]
    model.base_model.set_adapter(names)
    for parameter_name, parameter in model.named_parameters():
        parameter.requires_grad_(f".{name}." in parameter_name)
    return model


# What PEFT raises for a LoRA set-up it rejects (a target module it cannot adapt, a bad value), not for a bug.
PEFT_REFUSALS = (ValueError, TypeError, NotImplementedError)


def lora_config(config: RunConfig):
    """The run's `lora` section as PEFT's LoraConfig (a value PEFT rejects is a one-line error naming the field)."""
    from peft import LoraConfig

    try:
        return LoraConfig(
            r=config.lora.r,
            lora_alpha=config.lora.alpha,
            lora_dropout=config.lora.dropout,
            target_modules=config.lora.target_modules,
            task_type="CAUSAL_LM",
        )
    except PEFT_REFUSALS as exc:
        raise peft_error(exc) from exc


def peft_error(exc: Exception) -> ForgetlessError:
    """PEFT's refusal on one line, naming the `lora.*` field it is about when its words say which."""
    reason = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
    words = reason.lower()
    field = next((f"lora.{name}" for key, name in (("target", "target_modules"), ("dropout", "dropout"),
                                                    ("alpha", "alpha"), ("rank", "r")) if key in words),
                 "lora (r, alpha, dropout, target_modules)")
    return ForgetlessError(f"{field}: PEFT refused this LoRA set-up: {reason}")


def finish_task(model: torch.nn.Module, config: RunConfig) -> torch.nn.Module:
    """After a task's checkpoint is written: merge the adapter into the base in merge mode."""
    if config.adapter == "lora" and config.lora.between_tasks == "merge":
        return model.merge_and_unload()
    return model


def base_model_of(model: torch.nn.Module) -> torch.nn.Module:
    """The underlying transformers model (unwraps PEFT), e.g. to save full weights."""
    from peft import PeftModel

    if isinstance(model, PeftModel):
        return model.get_base_model()
    return model


def trainable_parameter_count(model: torch.nn.Module) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
