"""Building blocks several strategies share: the data to protect, batching, block indices.

"What to protect" has one answer across strategies: the general rows (`ctx.general_rows`: the bundled general
English, disjoint from every evaluation item, or the run's `general_data`) on the first task, and from the second
task on half earlier tasks' training data, half general rows (`protection_examples`). Strategies take a `source`
knob to override it.
"""

from __future__ import annotations

import random
import re
from typing import Any, Iterator, Literal

import torch

from ..data.encoding import PaddingCollator, encode_rows
from .base import TaskContext, TaskData

ProtectionSource = Literal["auto", "general", "earlier_tasks", "current_task"]


def own_seed(seed: int | None, ctx: TaskContext) -> int:
    """A strategy's own `seed` knob, or (None, the default) the run's training seed: a run at another seed (`compare
    --seeds`) then draws the strategy's data anew too, as `ewc`'s and `fip`'s protection data always did, so its
    spread over seeds holds that noise. At training seed 0 both are 0: runs measured before the knob followed the
    training seed reproduce at seed 0, and at other seeds with `seed: 0`."""
    return ctx.setup.seed if seed is None else seed


def protection_rows(ctx: TaskContext, source: ProtectionSource = "auto") -> list[dict[str, Any]]:
    """Raw rows of ONE kind: earlier tasks' training rows, else (first task, or 'general') the general rows.

    `protection_examples` is the entry point: for `auto` after the first task it mixes both kinds.
    """
    if source == "current_task":
        return task_rows(ctx.task)
    if source == "earlier_tasks" or (source == "auto" and ctx.earlier_tasks):
        return [row for task in ctx.earlier_tasks for row in task_rows(task)]
    return list(ctx.general_rows)


def task_rows(task: TaskData) -> list[dict[str, Any]]:
    """A task's raw rows, or its encoded examples where only token ids are known (a user's tokenized data).

    `sample_examples` takes either kind: rows are encoded, examples are used as they are.
    """
    return list(task.rows) if task.rows is not None else list(task.examples)


def sample_examples(ctx: TaskContext, rows: list[dict[str, Any]], count: int, max_length: int, seed: int = 0):
    """`count` encoded examples drawn from `rows` without replacement (deterministic for a seed)."""
    rows = list(rows)
    random.Random(seed).shuffle(rows)
    picked = rows[: count * 2]  # text rows may split in windows
    encoded = [row for row in picked if "input_ids" in row]  # already encoded (a user's tokenized task)
    features = encoded + encode_rows(ctx.tokenizer, [row for row in picked if "input_ids" not in row], max_length)
    return features[:count]


def protection_examples(ctx: TaskContext, count: int, source: ProtectionSource = "auto", seed: int = 0):
    """Encoded examples of what to protect, at the run's training max_length.

    `auto` after the first task: half earlier tasks' data, half general rows. The starting model's
    general ability needs protecting on every task, not only the first: a strategy whose reference
    moves to each task's start (fip) would otherwise hold nothing of it from the second task on.
    """
    max_length = ctx.setup.max_length
    if source == "auto" and ctx.earlier_tasks:
        general = sample_examples(ctx, protection_rows(ctx, "general"), count // 2, max_length, seed)
        earlier = sample_examples(ctx, protection_rows(ctx, "earlier_tasks"), count - len(general), max_length, seed)
        return earlier + general
    return sample_examples(ctx, protection_rows(ctx, source), count, max_length, seed)


def batches(features: list[dict[str, Any]], batch_size: int, pad_token_id: int, device=None) -> Iterator[dict[str, torch.Tensor]]:
    """Padded tensor batches (input_ids, attention_mask, labels) in order."""
    collate = PaddingCollator(pad_token_id)
    for start in range(0, len(features), batch_size):
        batch = collate(features[start : start + batch_size])
        yield {key: value.to(device) if device is not None else value for key, value in batch.items()}


def runs_bfloat16_natively(device: torch.device) -> bool:
    """Whether `device` has bfloat16 matrix units, so a bfloat16 forward is faster than a float32 one.

    CUDA: Ampere or newer. CPU: AVX512-BF16 or AMX; elsewhere bfloat16 is emulated and slower.
    """
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":  # torch.cpu's probes are private; a torch without them reports no support
        probes = (getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))
        return any(probe() for probe in probes if probe is not None)
    return False


# Transformer blocks are numbered containers: Llama/Qwen/Mistral "layers.3", GPT-2/GPT-J "h.3", others "blocks.3".
_BLOCK = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks|block)\.(\d+)\.")


def block_index(parameter_name: str) -> int | None:
    """The transformer block a parameter belongs to, or None (embeddings, final norm, head)."""
    match = _BLOCK.search(parameter_name)
    return int(match.group(1)) if match else None
