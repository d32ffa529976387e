"""`replay`: rehearse a buffer of earlier tasks' examples (and general text) while training a new task.

This strategy STORES RAW TRAINING DATA: up to `per_task` encoded examples (token ids) of every finished
task are kept in memory and written into every checkpoint (`strategy-replay.safetensors`). Do not use
it where earlier data may not be kept; `ssr` rehearses self-generated examples instead.

Per task, a reservoir sample (algorithm R, seeded) of the task's encoded examples enters the buffer
once the task is done. While a later task trains, buffer examples make up `ratio` of its training
examples and general rows (`ctx.general_rows`: general English, or the run's `general_data`) make up
`general_ratio`; on the first task there is no buffer, and general rows alone protect the starting model.
"""

from __future__ import annotations

import random
from typing import Any

import torch
from pydantic import Field, model_validator

from ..data.encoding import IGNORE_INDEX
from . import register_strategy
from ._common import own_seed, sample_examples
from .base import Strategy, StrategyParams, Strength, TaskContext


def reservoir_sample(items: list[Any], k: int, rng: random.Random) -> list[Any]:
    """Algorithm R: k items, each item of the stream equally likely to be kept (all of them if fewer)."""
    reservoir: list[Any] = []
    for seen, item in enumerate(items):
        if seen < k:
            reservoir.append(item)
        else:
            slot = rng.randint(0, seen)  # item kept with probability k / (seen + 1)
            if slot < k:
                reservoir[slot] = item
    return reservoir


def mix_counts(n_current: int, fractions: list[float]) -> list[int]:
    """How many examples each extra source adds so that source i makes up fractions[i] of the mixture.

    With n current examples and sources of fractions r_i: m_i = n * r_i / (1 - sum r).
    """
    rest = 1.0 - sum(fractions)
    return [round(n_current * fraction / rest) for fraction in fractions]


def draw(pool: list[dict[str, Any]], count: int, rng: random.Random) -> list[dict[str, Any]]:
    """`count` examples from `pool`: a shuffled pass, repeated when the pool is smaller than `count`."""
    drawn: list[dict[str, Any]] = []
    while pool and len(drawn) < count:
        order = list(pool)
        rng.shuffle(order)
        drawn.extend(order[: count - len(drawn)])
    return drawn


def pack_examples(examples: list[dict[str, Any]], groups: list[int], prefix: str = "") -> dict[str, torch.Tensor]:
    """Token ids and labels as right-padded (N, T) int tensors, with lengths and a group id per example."""
    longest = max((len(e["input_ids"]) for e in examples), default=0)
    input_ids = torch.zeros((len(examples), longest), dtype=torch.long)
    labels = torch.full((len(examples), longest), IGNORE_INDEX, dtype=torch.long)
    for row, example in enumerate(examples):
        input_ids[row, : len(example["input_ids"])] = torch.tensor(example["input_ids"], dtype=torch.long)
        labels[row, : len(example["labels"])] = torch.tensor(example["labels"], dtype=torch.long)
    return {
        f"{prefix}input_ids": input_ids,
        f"{prefix}labels": labels,
        f"{prefix}lengths": torch.tensor([len(e["input_ids"]) for e in examples], dtype=torch.long),
        f"{prefix}group": torch.tensor(groups, dtype=torch.long),
    }


def unpack_examples(tensors: dict[str, torch.Tensor], prefix: str = "") -> list[tuple[int, dict[str, list[int]]]]:
    """(group, example) pairs back from `pack_examples`."""
    rows = zip(*(tensors[f"{prefix}{key}"] for key in ("input_ids", "labels", "lengths", "group")))
    return [
        (int(group), {"input_ids": ids[: int(n)].tolist(), "labels": labels[: int(n)].tolist()})
        for ids, labels, n, group in rows
    ]


@register_strategy
class Replay(Strategy):
    """Rehearsal buffer of earlier tasks' examples (reservoir sampled, `per_task` each) plus general text."""

    name = "replay"
    # data only (old examples mixed into the batches), likely to work sharded, but no such run is verified yet
    sharded_reason = "no run under {engine} has been verified yet"
    strength = Strength("ratio", "up", bound=0.5, applies="next_task")
    stores_raw_data = True

    class Params(StrategyParams):
        per_task: int = Field(200, ge=1, description="Buffer quota per finished task (reservoir sampled).")
        ratio: float = Field(0.1, ge=0, lt=1, description="Fraction of the training examples drawn from the buffer.")
        general_ratio: float | None = Field(
            None, ge=0, lt=1, description="Fraction drawn from the general rows (general English, or the run's "
            "general_data); null: ratio on the first task, ratio / 2 later."
        )
        seed: int | None = Field(None, description="Seed of the reservoir and the mixing; null: the run's training seed.")

        @model_validator(mode="after")
        def _some_task_data(self) -> "Replay.Params":
            if self.general_ratio is not None and self.ratio + self.general_ratio >= 1.0:
                total = self.ratio + self.general_ratio
                raise ValueError(f"ratio + general_ratio must stay below 1 (some current-task data), got {total}")
            return self

    def __init__(self, **params: Any):
        super().__init__(**params)
        self.buffer: dict[int, list[dict[str, list[int]]]] = {}  # task index -> its reservoir sample
        self._pending: list[dict[str, list[int]]] = []  # the current task's sample, added at consolidate

    def _general_ratio(self) -> float:
        if self.general_ratio is not None:
            return self.general_ratio
        return self.ratio if not self.buffer else self.ratio / 2

    def prepare_examples(self, ctx: TaskContext, examples: list[dict[str, Any]]) -> list[dict[str, Any]]:
        # Separate streams: the mixture does not depend on how much randomness the reservoir used.
        seed = own_seed(self.seed, ctx)
        rng = random.Random(f"replay-mix:{seed}:{ctx.task_index}")
        current = [{"input_ids": list(e["input_ids"]), "labels": list(e["labels"])} for e in examples]
        self._pending = reservoir_sample(current, self.per_task, random.Random(f"replay-reservoir:{seed}:{ctx.task_index}"))
        buffer_ratio = self.ratio if self.buffer else 0.0
        general_ratio = self._general_ratio()
        n_buffer, n_general = mix_counts(len(examples), [buffer_ratio, general_ratio])
        # Every earlier task contributes equally: draw from the union of equal-quota reservoirs.
        rehearsed = draw([e for index in sorted(self.buffer) for e in self.buffer[index]], n_buffer, rng)
        general = []
        if n_general:
            pool = sample_examples(ctx, list(ctx.general_rows), n_general, ctx.setup.max_length, seed=rng.randrange(2**31))
            general = draw(pool, n_general, rng)
        mixed = list(examples) + rehearsed + general  # the Trainer shuffles, so order does not matter
        ctx.log["replay_buffer_examples"] = len(rehearsed)
        ctx.log["replay_general_examples"] = len(general)
        ctx.log["replay_buffer_size"] = sum(len(v) for v in self.buffer.values())
        return mixed

    def consolidate(self, ctx: TaskContext) -> None:
        self.buffer[ctx.task_index] = self._pending
        self._pending = []

    def state_tensors(self) -> dict[str, torch.Tensor]:
        examples = [e for index in sorted(self.buffer) for e in self.buffer[index]]
        if not examples:
            return {}
        groups = [index for index in sorted(self.buffer) for _ in self.buffer[index]]
        return pack_examples(examples, groups)

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.buffer = {}
        if tensors:
            for group, example in unpack_examples(tensors):
                self.buffer.setdefault(group, []).append(example)
