"""`stm`: Selective Token Masking — do not train on the tokens the starting model finds surprising.

Wu et al., "Mitigating Forgetting in LLM Fine-Tuning via Low-Perplexity Token Learning" (NeurIPS 2025).
The model at task start, frozen, scores every training token once: l_t = -log p_theta0(x_t | x_<t),
PPL_t = exp(l_t). The trained tokens (label != -100) with the highest PPL_t, a `percentile` share of the
task's (default), or those with PPL_t > tau (mode threshold, the paper's), get label -100; the loss is the
ordinary cross-entropy over the tokens left. Prompt tokens are never trained, so never touched.

The reference code (appier-research/robust-llm-finetunes, generate_stm_training_data.py) gives the
sequence's first token a placeholder perplexity of 10, so it is "always masked"; nothing predicts that
token and the loss is shifted, so it is never a training target and masking it changes nothing. Every
response token, the first one included, is judged by its own perplexity here.

Scores are cached on disk under FORGETLESS_HOME/stm-cache, keyed by a fingerprint of the model's weights
and the encoded examples, so a repeated run (another strategy stack, another seed) does not score again.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from array import array
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field, model_validator

from ..data.encoding import IGNORE_INDEX
from ..errors import ForgetlessError
from ..evaluation._scoring import left_pad, logits_at, model_device, scoring_mode, token_budget_batches, unwrap_model
from ..fileio import atomic_write_bytes
from ..models import forgetless_home
from . import register_strategy
from ._common import own_seed
from .base import Strategy, StrategyParams, TaskContext

# Rows x longest row per scoring batch. The logits of one batch's scored positions take about
# (0.6 x budget) x vocabulary x 4 bytes: 2048 tokens -> ~250 MB for a 49k vocabulary.
SCORE_BATCH_TOKENS = 2048


def stm_cache_dir() -> Path:
    return forgetless_home() / "stm-cache"


def model_fingerprint(model: torch.nn.Module, skip_trainable: bool) -> str:
    """A hash of the model's config and of every parameter's name, shape, dtype, sum and sum of squares.

    Sums over every tensor (not a sample of them) so that a LoRA merge, which changes only a few
    projections, changes the fingerprint. `skip_trainable` leaves out a fresh LoRA adapter: its B is 0,
    so it does not change the function, while its random A would change the hash on every run.
    """
    digest = hashlib.sha256()
    config = unwrap_model(model).config.to_dict()
    digest.update(json.dumps(config, sort_keys=True, default=str).encode())
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if skip_trainable and parameter.requires_grad:
                continue
            sums = torch.stack([parameter.sum(dtype=torch.float64), parameter.float().pow(2).sum(dtype=torch.float64)])
            digest.update(f"{name}|{tuple(parameter.shape)}|{parameter.dtype}|".encode())
            digest.update(sums.cpu().numpy().tobytes())
    return digest.hexdigest()


def examples_fingerprint(examples: list[dict[str, Any]]) -> str:
    """A hash of every example's input ids and labels (the labels say which positions are scored)."""
    digest = hashlib.sha256()
    for example in examples:
        digest.update(array("q", [len(example["input_ids"])]).tobytes())
        digest.update(array("q", example["input_ids"]).tobytes())
        digest.update(array("q", example["labels"]).tobytes())
    return digest.hexdigest()


def token_nlls(
    model: torch.nn.Module, examples: list[dict[str, Any]], pad_token_id: int, max_batch_tokens: int = SCORE_BATCH_TOKENS
) -> list[torch.Tensor]:
    """Per example, a float32 tensor (len(input_ids),): -log p(x_t | x_<t) at trained positions t >= 1, NaN elsewhere.

    One forward per batch, with the LM head run only at the positions that predict a trained token.
    """
    results = [torch.full((len(e["input_ids"]),), math.nan) for e in examples]
    scored = [i for i, e in enumerate(examples) if any(label != IGNORE_INDEX for label in e["labels"][1:])]
    device = model_device(model)
    with scoring_mode(model):
        for batch in token_budget_batches([len(examples[i]["input_ids"]) for i in scored], max_batch_tokens):
            indices = [scored[position] for position in batch]
            ids, mask, positions = left_pad([examples[i]["input_ids"] for i in indices], pad_token_id, device)  # (B, T)
            # Position 0 is never a target (nothing predicts it); after left padding it would look like one.
            targets = [[IGNORE_INDEX] + list(examples[i]["labels"][1:]) for i in indices]
            labels, _, _ = left_pad(targets, IGNORE_INDEX, device)  # (B, T)
            rows, columns = (labels[:, 1:] != IGNORE_INDEX).nonzero(as_tuple=True)
            columns = columns + 1  # the label at column c is predicted by the logits at column c - 1
            logits = logits_at(model, rows, columns - 1, input_ids=ids, attention_mask=mask, position_ids=positions)
            nll = torch.nn.functional.cross_entropy(logits.float(), labels[rows, columns], reduction="none").cpu()  # (N,)
            offsets = torch.tensor([ids.size(1) - len(examples[i]["input_ids"]) for i in indices])  # left padding
            for row, column, value in zip(rows.tolist(), (columns.cpu() - offsets[rows.cpu()]).tolist(), nll.tolist()):
                results[indices[row]][column] = value
    return results


def _flatten(per_example: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat(per_example) if per_example else torch.zeros(0)


def _split(flat: torch.Tensor, examples: list[dict[str, Any]]) -> list[torch.Tensor]:
    return list(torch.split(flat, [len(e["input_ids"]) for e in examples]))


@register_strategy
class SelectiveTokenMasking(Strategy):
    """Mask (label -100) the trained tokens the model at task start finds high-perplexity.

    Knobs: `mode` ("percentile", the default since 2026-12-02: mask the top `percentile` fraction of trained
    tokens by perplexity; "threshold": mask above the absolute perplexity `tau`, 2.5 as in the paper),
    `control` ("none" or "random": mask as many tokens, per example, chosen at random — the paper's
    control), `seed` (for the random control), `cache` (reuse scores on disk).
    """

    name = "stm"

    class Params(StrategyParams):
        tau: float = Field(
            2.5, gt=1, description="mode threshold: mask label tokens whose starting-model perplexity exceeds tau."
        )
        # A share of the tokens means the same on any data; a perplexity threshold depends on how sure the model is of
        # them (2.5 masked 21 % of the paper's data, 64-81 % of this benchmark's: docs/results/defaults.md).
        mode: Literal["threshold", "percentile"] = Field(
            "percentile", description="percentile: mask a fixed fraction; threshold: mask above tau (the default "
            "until 2026-12-02). Naming tau alone selects threshold.",
        )
        percentile: float = Field(
            0.2, ge=0, lt=1, description="mode percentile: fraction of label tokens to mask (the least likely)."
        )
        control: Literal["none", "random"] = Field(
            "none", description="random: mask the same number of tokens at random (an ablation)."
        )
        seed: int | None = Field(
            None, description="Seed of the random control: the run's training seed when unset (until 2026-12-04 it "
            "was 0 at every training seed).",
        )
        cache: bool = Field(True, description="Cache the starting model's token scores on disk (FORGETLESS_HOME).")

        @model_validator(mode="before")
        @classmethod
        def _mode_from_knob(cls, data: Any) -> Any:
            """`tau` named without a mode asks for the threshold (the knob of the other mode is then kept, unused, as
            results.json records every knob); `tau` and `percentile` both named with no mode is ambiguous."""
            if isinstance(data, dict) and "tau" in data and "mode" not in data:
                if "percentile" in data:
                    raise ValueError("tau and percentile both given: say which applies with mode: threshold or percentile")
                return {**data, "mode": "threshold"}
            return data

    # -- scoring ---------------------------------------------------------------------------------------

    def _cache_path(self, ctx: TaskContext, examples: list[dict[str, Any]]) -> Path:
        # A fresh LoRA adapter (B = 0) does not change the function: its random A must not change the key.
        skip_trainable = not ctx.weights.change_is_stored
        key = hashlib.sha256((model_fingerprint(ctx.model, skip_trainable) + examples_fingerprint(examples)).encode())
        return stm_cache_dir() / f"{key.hexdigest()[:32]}.safetensors"

    def score(self, ctx: TaskContext, examples: list[dict[str, Any]]) -> list[torch.Tensor]:
        """Per-token NLL under the model as it is now (the task's start), from the cache when possible.

        Under LoRA the fresh adapter's B is zero, so the wrapped model computes the pre-task function;
        in stack mode the earlier adapters stay on, as they should.
        """
        from safetensors.torch import load, save

        path = self._cache_path(ctx, examples) if self.cache else None
        if path is not None and path.is_file():
            flat = load(path.read_bytes())["nll"]
            if flat.numel() == sum(len(e["input_ids"]) for e in examples):
                return _split(flat, examples)
        scores = token_nlls(ctx.model, examples, ctx.tokenizer.pad_token_id)
        if path is not None:
            atomic_write_bytes(path, save({"nll": _flatten(scores).contiguous()}))
        return scores

    # -- masking ---------------------------------------------------------------------------------------

    def masked_positions(
        self, examples: list[dict[str, Any]], nlls: list[torch.Tensor], seed: int
    ) -> list[list[int]]:
        """Per example, the positions to mask, by the configured rule (`seed`: the random control's draw)."""
        if self.mode == "threshold":
            log_tau = math.log(self.tau)  # PPL_t > tau  <=>  l_t > log(tau)
            chosen = [torch.nonzero(nll > log_tau).flatten().tolist() for nll in nlls]  # NaN compares False
        else:
            chosen = self._top_fraction(nlls)
        if self.control == "random":
            rng = random.Random(seed)
            chosen = [sorted(rng.sample(self._trained(e), len(c))) for e, c in zip(examples, chosen)]
        return chosen

    @staticmethod
    def _trained(example: dict[str, Any]) -> list[int]:
        """Positions that are training targets (label set, and not position 0, which nothing predicts)."""
        return [t for t, label in enumerate(example["labels"]) if t > 0 and label != IGNORE_INDEX]

    def _top_fraction(self, nlls: list[torch.Tensor]) -> list[list[int]]:
        """The `percentile` fraction of all trained tokens (over the whole task) with the highest perplexity."""
        flat = _flatten(nlls)
        valid = torch.nonzero(~torch.isnan(flat)).flatten()
        count = round(self.percentile * len(valid))
        chosen = [[] for _ in nlls]
        if count == 0:
            return chosen
        # Stable sort so that ties are broken by position, deterministically.
        order = torch.sort(flat[valid], descending=True, stable=True).indices[:count]
        starts = torch.cumsum(torch.tensor([0] + [len(n) for n in nlls]), 0)
        for flat_index in sorted(valid[order].tolist()):
            example = int(torch.searchsorted(starts, flat_index, right=True)) - 1
            chosen[example].append(flat_index - int(starts[example]))
        return chosen

    def prepare_examples(self, ctx: TaskContext, examples: list[dict[str, Any]]) -> list[dict[str, Any]]:
        nlls = self.score(ctx, examples)
        chosen = self.masked_positions(examples, nlls, own_seed(self.seed, ctx))
        trained = sum(len(self._trained(e)) for e in examples)
        masked = sum(len(c) for c in chosen)
        kept: list[dict[str, Any]] = []
        for example, positions in zip(examples, chosen):
            labels = list(example["labels"])
            for t in positions:
                labels[t] = IGNORE_INDEX
            if any(label != IGNORE_INDEX for label in labels[1:]):  # an example left with nothing to learn is dropped
                kept.append({**example, "labels": labels})
        ctx.log["stm_masked_fraction"] = masked / trained if trained else 0.0
        ctx.log["stm_dropped_examples"] = len(examples) - len(kept)
        if examples and not kept:
            raise ForgetlessError(
                f"stm masked every trained token of task {ctx.task.name!r} (tau={self.tau}); raise tau or use mode: percentile"
            )
        return kept
