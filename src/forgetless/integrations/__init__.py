"""forgetless inside a user's own `transformers.Trainer` / `trl.SFTTrainer` script.

`with_strategies(trainer_cls)` adds strategies to any Trainer subclass; `ForgettingMonitor` is a
`TrainerCallback` that measures general ability and each task before, during and after training.
"""

from .monitor import ForgettingMonitor
from .strategy_trainer import rows_from_dataset, with_strategies

__all__ = ["ForgettingMonitor", "rows_from_dataset", "with_strategies"]
