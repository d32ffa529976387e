"""Strategies against forgetting, one file each, registered by name.

Add a strategy: write `strategies/<name>.py` with a `Strategy` subclass decorated by
`@register_strategy` (every module here is imported on start, which registers it), add a docs page
and a test row. See docs/strategies.md.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError

from ..errors import ForgetlessError
from .base import Clock, OptimizerStep, Strategy, StrategyParams, Strength, TaskContext, TaskData, TrainingSetup

_REGISTRY: dict[str, type[Strategy]] = {}


def register_strategy(cls: type[Strategy]) -> type[Strategy]:
    if not cls.name:
        raise ValueError(f"{cls.__name__} needs a `name`")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"strategy name {cls.name!r} is already registered by {_REGISTRY[cls.name].__name__}")
    _REGISTRY[cls.name] = cls
    return cls


def known_strategies() -> list[str]:
    return sorted(_REGISTRY)


def build_strategy(spec: str | dict[str, Any], path: str = "strategy") -> Strategy:
    """`"naive"` or `{"name": "ewc", "lam": 100}` -> a Strategy instance; unknown names/params are errors.

    `path` names the spec in error messages (`strategies[1]`), so a bad value points at its config field.
    """
    if isinstance(spec, str):
        name, params = spec, {}
    else:
        params = dict(spec)
        name = params.pop("name", None)
        if not isinstance(name, str):
            raise ForgetlessError(f"{path}: a strategy given as a mapping needs a 'name': {spec}")
    if name not in _REGISTRY:
        raise ForgetlessError(f"{path}: unknown strategy {name!r}; known: {', '.join(known_strategies())}")
    cls = _REGISTRY[name]
    try:
        return cls(**params)
    except ValidationError as exc:
        raise ForgetlessError(_format_param_errors(exc, cls, path)) from None
    except (TypeError, ValueError) as exc:
        raise ForgetlessError(f"{path} ({name}): {exc}") from None


def _format_param_errors(exc: ValidationError, cls: type[Strategy], path: str) -> str:
    """One line per bad knob, named by its config path: `strategies[1].lam: Input should be greater than 0`."""
    messages: dict[str, list[str]] = {}
    for error in exc.errors():
        knob = str(error["loc"][0]) if error["loc"] else ""  # deeper parts only name a union's member
        if error["type"] == "extra_forbidden":
            message = f"strategy {cls.name!r} has no such parameter; accepted: {', '.join(cls.Params.model_fields) or 'none'}"
        else:
            message = error["msg"].removeprefix("Value error, ") + (f" (got {error['input']!r})" if knob else "")
        messages.setdefault(knob, []).append(message)
    return "\n".join(
        f"{f'{path}.{knob}' if knob else f'{path} ({cls.name})'}: {' or '.join(found)}" for knob, found in messages.items()
    )


def _type_name(annotation: Any) -> str:
    """`float`, `int | None`, `'auto' | 'general'`: a knob's type as a user writes its values."""
    import typing

    if typing.get_origin(annotation) is typing.Literal:
        return " | ".join(repr(value) for value in typing.get_args(annotation))
    if typing.get_origin(annotation) is typing.Annotated:
        return _type_name(typing.get_args(annotation)[0])
    if typing.get_origin(annotation) is dict:
        key, value = typing.get_args(annotation)
        return f"{{{_type_name(key)}: {_type_name(value)}}}"
    if typing.get_args(annotation):  # a union
        return " | ".join(_type_name(member) for member in typing.get_args(annotation))
    return "null" if annotation is type(None) else getattr(annotation, "__name__", str(annotation))


def parameter_table(name: str) -> list[tuple[str, str, str, str]]:
    """(knob, type, default, description) for each parameter of strategy `name`."""
    if name not in _REGISTRY:
        raise ForgetlessError(f"unknown strategy {name!r}; known: {', '.join(known_strategies())}")
    params = _REGISTRY[name].Params
    defaults = params().model_dump(mode="json")  # as built with no knobs: a validator may set one (ewc's target)
    return [(knob, _type_name(info.annotation), json.dumps(defaults[knob]), info.description or "")
            for knob, info in params.model_fields.items()]


def build_strategies(specs: list[str | dict[str, Any]], setup=None, world_size: int = 1) -> list[Strategy]:
    """Build a stack's strategies from config specs and, given a TrainingSetup, check them before training."""
    from .stack import StrategyStack

    stack = StrategyStack.from_specs(specs)
    if hasattr(setup, "training_setup"):  # a RunConfig
        setup = setup.training_setup()
    if setup is not None:
        stack.check(setup, world_size)
    return stack.strategies


def _import_strategy_modules() -> None:
    """Import every module of this package so each file registers itself: no central list to edit."""
    import importlib
    import pkgutil

    for module in pkgutil.iter_modules(__path__):
        if not module.name.startswith("_") and module.name not in ("base", "stack"):
            importlib.import_module(f"{__name__}.{module.name}")


_import_strategy_modules()

from .stack import MicroBatch, StrategyStack  # noqa: E402  (after the registry it imports from)

__all__ = [
    "Clock", "MicroBatch", "OptimizerStep", "Strategy", "StrategyParams", "StrategyStack", "Strength", "TaskContext", "TaskData",
    "TrainingSetup", "build_strategies", "build_strategy", "known_strategies", "parameter_table", "register_strategy",
]
