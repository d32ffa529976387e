"""Strategies against forgetting, one file each, registered by name.

Add a strategy: write `strategies/<name>.py` with a `Strategy` subclass decorated by
`@register_strategy` (every module here is imported on start, which registers it), add a docs page
and a test row. See docs/strategies.md.
"""

from __future__ import annotations

import inspect
from typing import Any

from ..errors import ForgetlessError
from .base import Clock, OptimizerStep, Strategy, TaskContext, TaskData, TrainingSetup

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
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ForgetlessError(f"{path}: strategy {name!r} has no parameter(s) {unknown}; accepted: {accepted or 'none'}")
    try:
        return cls(**params)
    except (TypeError, ValueError) as exc:
        raise ForgetlessError(f"{path} ({name}): {exc}") from None


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
    "Clock", "MicroBatch", "OptimizerStep", "Strategy", "StrategyStack", "TaskContext", "TaskData", "TrainingSetup",
    "build_strategies", "build_strategy", "known_strategies", "register_strategy",
]
