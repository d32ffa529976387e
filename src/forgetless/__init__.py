"""forgetless: fine-tune causal LMs on new data without forgetting, and measure the forgetting.

Public API for a user's own script: `default_model_path()`, `with_strategies(trainer_cls)` and
`ForgettingMonitor` (a TrainerCallback); `StrategyStack` carries strategy state between trainers.
"""

__version__ = "0.1.0"

_LAZY = {
    "default_model_path": ("forgetless.models", "default_model_path"),
    "with_strategies": ("forgetless.integrations", "with_strategies"),
    "ForgettingMonitor": ("forgetless.integrations", "ForgettingMonitor"),
    "StrategyStack": ("forgetless.strategies", "StrategyStack"),
}


def __getattr__(name: str):
    # Lazy: `import forgetless` (the CLI's start) stays fast and does not import torch or transformers.
    if name in _LAZY:
        import importlib

        module, attribute = _LAZY[name]
        return getattr(importlib.import_module(module), attribute)
    raise AttributeError(f"module 'forgetless' has no attribute {name!r}")


__all__ = ["ForgettingMonitor", "StrategyStack", "__version__", "default_model_path", "with_strategies"]
