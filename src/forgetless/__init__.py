"""forgetless: fine-tune causal LMs on new data without forgetting, and measure the forgetting.

Public API for a user's own script: `default_model_path()`, `with_strategies(trainer_cls)` and
`ForgettingMonitor` (a TrainerCallback); `StrategyStack` carries strategy state between trainers;
`RunResults` is what a run or a monitor returns (and reads results.json back).
"""

__version__ = "0.1.0"

_LAZY = {
    "default_model_path": ("forgetless.models", "default_model_path"),
    "with_strategies": ("forgetless.integrations", "with_strategies"),
    "ForgettingMonitor": ("forgetless.integrations", "ForgettingMonitor"),
    "StrategyStack": ("forgetless.strategies", "StrategyStack"),
    "RunResults": ("forgetless.results", "RunResults"),
}


def __getattr__(name: str):
    # Lazy: `import forgetless` (the CLI's start) stays fast and does not import torch or transformers.
    if name in _LAZY:
        import importlib

        module, attribute = _LAZY[name]
        return getattr(importlib.import_module(module), attribute)
    raise AttributeError(f"module 'forgetless' has no attribute {name!r}")


__all__ = ["ForgettingMonitor", "RunResults", "StrategyStack", "__version__", "default_model_path", "with_strategies"]
