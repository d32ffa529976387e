"""Strategies against forgetting, one file each, registered by name.

Add a strategy: write `strategies/<name>.py` with a `Strategy` subclass decorated by
`@register_strategy` (every module here is imported on start, which registers it), add a docs page
and a test row. See docs/strategies.md.
"""

from __future__ import annotations

import inspect
from typing import Any

from ..errors import ForgetlessError
from .base import Strategy, TaskContext

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


def build_strategy(spec: str | dict[str, Any]) -> Strategy:
    """`"naive"` or `{"name": "ewc", "lam": 100}` -> a Strategy instance; unknown names/params are errors."""
    if isinstance(spec, str):
        name, params = spec, {}
    else:
        params = dict(spec)
        name = params.pop("name", None)
        if not isinstance(name, str):
            raise ForgetlessError(f"a strategy given as a mapping needs a 'name': {spec}")
    if name not in _REGISTRY:
        raise ForgetlessError(f"unknown strategy {name!r}; known: {', '.join(known_strategies())}")
    cls = _REGISTRY[name]
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ForgetlessError(f"strategy {name!r} has no parameter(s) {unknown}; accepted: {accepted or 'none'}")
    try:
        return cls(**params)
    except (TypeError, ValueError) as exc:
        raise ForgetlessError(f"strategy {name!r}: {exc}") from None


def build_strategies(specs: list[str | dict[str, Any]], config=None, world_size: int = 1) -> list[Strategy]:
    stack = [build_strategy(spec) for spec in specs]
    names = [s.name for s in stack]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ForgetlessError(f"strategy listed more than once: {repeated}")
    if config is not None:
        for strategy in stack:
            strategy.check(config, stack, world_size)
    return stack


def _import_strategy_modules() -> None:
    """Import every module of this package so each file registers itself: no central list to edit."""
    import importlib
    import pkgutil

    for module in pkgutil.iter_modules(__path__):
        if not module.name.startswith("_") and module.name != "base":
            importlib.import_module(f"{__name__}.{module.name}")


_import_strategy_modules()

__all__ = ["Strategy", "TaskContext", "build_strategies", "build_strategy", "known_strategies", "register_strategy"]
