"""The continual run with every task trained through `with_strategies(trl.SFTTrainer)`, as a user's script would.

Same tasks, evaluation, seed and optimiser settings as `forgetless run`; only the trainer differs. Each
task's rows go to SFTTrainer in its own dataset formats: a chat row becomes a conversational
prompt-completion pair (SFTTrainer applies the chat template and trains on the completion only), a text
row stays `{"text"}` (SFTTrainer truncates it to max_length where the runner cuts it into windows).
Used by benchmarks/quality.py --trainer sft.
"""

from __future__ import annotations

from typing import Any

from forgetless.adapters import adapter_name
from forgetless.data.tasks import TrainingTask
from forgetless.integrations.strategy_trainer import with_strategies
from forgetless.training import ContinualRun


def sft_dataset(task: TrainingTask):
    """A task's training rows as a `datasets.Dataset` in one of TRL's formats."""
    from datasets import Dataset

    if task.format == "text":
        return Dataset.from_list([{"text": row["text"]} for row in task.train])
    return Dataset.from_list(
        [
            {
                "prompt": [{"role": "user", "content": row["prompt"]}],
                "completion": [{"role": "assistant", "content": row["response"]}],
            }
            for row in task.train
        ]
    )


def sft_config(kwargs: dict[str, Any], max_length: int):
    """SFTConfig with the runner's TrainingArguments, fp32 unless the run asks otherwise, no packing."""
    from trl import SFTConfig

    # SFTConfig's own defaults differ from TrainingArguments' (bf16 and gradient checkpointing on):
    # pass the runner's values explicitly so the two trainers run the same optimisation.
    # (`activation_checkpointing` is transformers 5's name; the old one warns on every explicit value.)
    checkpointing = kwargs.pop("gradient_checkpointing", False)
    kwargs = {"bf16": False, "fp16": False, "activation_checkpointing": checkpointing, **kwargs}
    return SFTConfig(**kwargs, max_length=max_length, packing=False, dataset_num_proc=None)


class SFTContinualRun(ContinualRun):
    """`ContinualRun` whose trainer is `with_strategies(SFTTrainer)` on the task's rows in TRL's formats."""

    def _trainer(self, task_index: int, task: TrainingTask, examples):
        from trl import SFTTrainer

        return with_strategies(SFTTrainer)(
            model=self.model,
            args=sft_config(self._training_kwargs(task_index), self.config.train.max_length),
            train_dataset=sft_dataset(task),
            processing_class=self.tokenizer,
            strategies=self.stack,
            forgetless_setup=self.config.training_setup(),
            forgetless_adapter=adapter_name(task_index) if self.config.adapter == "lora" else None,
            task_name=task.name,
            callbacks=self._callbacks(task),
        )
