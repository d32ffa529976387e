"""`layerwise`: hierarchical layer-wise and element-wise importance regularisation (Song et al. 2025, arXiv 2501.13669).

Element level: an importance Omega_i per weight, recorded cheaply before the first task on general text
(then, after each task, on the task just trained, and added). Layer level: per transformer block l,

    L_reg^(l) = sum_{i in l} Omega_i * (theta_i - theta*_i)^2        (theta* = weights at the task's start)
    L = CE + lam * sum_l alpha_l * L_reg^(l),   alpha_l = n_layers * L_reg^(l) / sum_k L_reg^(k)   (detached)

so blocks that drifted most in directions that matter are pulled back hardest (see docs/strategies/layerwise.md).

Trust region (`target`, as `ewc`'s): after every optimizer step the kept entries are projected back onto
{(1/2) sum_i Omega_i (theta_i - theta*_i)^2 <= target}, a cap on the predicted loss rise on what Omega
protects, in nats per token (Omega is on the per-token Fisher scale), whatever the data.

Distance cap (`distance`, as `l2sp`'s `target`): after every optimizer step, each tensor's kept entries are
kept within `distance` times their norm at the task's start, ||d_kept|| <= distance * ||theta*_kept||, by
scaling d_kept back onto that sphere (under LoRA, by scaling the layer's update). A share of the weights' own
size, it does not depend on how large Omega came out on the data; Omega only chooses which entries it holds.

Importance: Synaptic Intelligence along a plain-SGD pass is omega_i = lr * sum_t g_i(t)^2; we take the
small-step limit at the anchor (no weight moves, no optimiser state) and scale it by the batch's token
count, which puts Omega on the per-token Fisher scale (see `squared_gradient_importance`). Before the
first task that takes a short pass over general text. For each task trained (full fine-tuning) it costs
no extra pass: the same sum is read off the task's own last `steps` training steps, whose gradients the
optimiser needs anyway (the path integral proper), less this penalty's own gradient. It is stored
sparsely: the top `keep` fraction of each tensor as int32 index + bf16 value. The anchor is not stored:
it is the model at the task's start. Under LoRA the protected tensors are the adapted base weights and
their drift is the adapter's scaling * B @ A.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Literal

import torch
from pydantic import Field, model_validator

from ..errors import ForgetlessError
from ..evaluation._scoring import model_device
from ..nn import token_cross_entropy, trained_tokens
from . import register_strategy
from ._common import batches, block_index, own_seed, protection_examples
from ._trust_region import DEFAULT_TARGET, SPHERE_TOLERANCE, project, require_protection, scaled_toward
from .base import OptimizerStep, Strategy, StrategyParams, Strength, TaskContext

LayerWeighting = Literal["adaptive", "uniform"]
# The distance cap's centre for a tuning grid: l2sp's default, a share of the weights' norm (not tuned here).
DISTANCE_CENTRE = 0.01
ImportanceSource = Literal["auto", "general"]
TaskImportance = Literal["training", "pass"]


def squared_gradient_importance(
    model: torch.nn.Module, weights: dict[str, torch.Tensor], features: list[dict], batch_size: int, pad_token_id: int
) -> dict[str, torch.Tensor]:
    """Omega = mean over mini-batches b of n_b * g_b^2 for each tensor in `weights` (fp32, same shapes).

    g_b is the gradient of batch b's mean token cross-entropy and n_b its number of trained tokens. For
    tokens whose gradients are independent with mean zero, E[n_b * g_b^2] is the per-token empirical
    Fisher, so Omega is on the scale of the Hessian of the mean token loss (as `ewc`'s Fisher) at the
    price of one backward per batch instead of one per sequence. The weights must be leaves of the
    model's graph; they get requires_grad for the pass only, and are never changed.
    """
    totals = {name: torch.zeros_like(w, dtype=torch.float32) for name, w in weights.items()}
    flags = {name: w.requires_grad for name, w in weights.items()}
    was_training = model.training
    model.eval()  # no dropout: the importance of the model as it is
    count = 0
    try:
        for w in weights.values():
            w.requires_grad_(True)
        with torch.enable_grad():
            for batch in batches(features, batch_size, pad_token_id, model_device(model)):
                logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
                loss = token_cross_entropy(logits, batch["labels"])  # (B, T, V) -> scalar
                tokens = trained_tokens(batch["labels"])
                grads = torch.autograd.grad(loss, list(weights.values()), allow_unused=True)
                for name, grad in zip(weights, grads):
                    if grad is not None:
                        totals[name].add_(grad.float().square(), alpha=tokens)
                count += 1
    finally:
        for name, w in weights.items():
            w.requires_grad_(flags[name])
        model.train(was_training)
    return {name: total / max(count, 1) for name, total in totals.items()}


def layer_coefficients(per_layer: torch.Tensor, weighting: LayerWeighting) -> torch.Tensor:
    """alpha_l (mean 1): proportional to each layer's share of the regulariser ('adaptive') or all 1 ('uniform')."""
    per_layer = per_layer.detach()
    total = per_layer.sum()
    if weighting == "uniform" or total <= 0:
        return torch.ones_like(per_layer)
    return per_layer.numel() * per_layer / total


@register_strategy
class Layerwise(Strategy):
    """Importance-weighted quadratic penalty to the task's starting weights, balanced across transformer blocks."""

    name = "layerwise"
    strength = Strength("lam", "up", bound=1e12)
    other_strengths = (Strength("target", "down", bound=1e-6, centre=DEFAULT_TARGET, cap=True),
                       Strength("distance", "down", bound=1e-6, centre=DISTANCE_CENTRE, cap=True))
    # The task's own importance is recorded from its training gradients, step by step.
    in_task_state = ("_recorded", "_recorded_steps", "_task_steps", "_recording_seconds", "last_alpha",
                     "_projected_steps", "_largest_rise", "_largest_ratio")

    class Params(StrategyParams):
        lam: float = Field(50.0, ge=0, description="Weight of the layer-weighted importance penalty.")
        target: float | None = Field(
            None, gt=0, description="Trust region: after each step, project the kept entries so that (1/2) sum Omega "
            "(theta - theta*)^2, the predicted loss rise, is at most this many nats per token (None: off).",
        )
        distance: float | None = Field(
            None, gt=0, description="Cap on each tensor's kept entries: after each step, their distance from the task's "
            "start at most this share of their norm there (None: off).",
        )
        steps: int = Field(
            8, ge=1, description="Batches the importance is read from (a general-text pass, or the task's last training steps)."
        )
        batch_size: int = Field(4, ge=1, description="Sequences per batch of the importance pass.")
        keep: float = Field(
            0.1, gt=0, le=1, description="Fraction of each tensor's most important entries kept (int32 index + bf16 value)."
        )
        layer_weighting: LayerWeighting = Field(
            "adaptive", description="adaptive: alpha_l from each block's share of the penalty; uniform: alpha_l = 1."
        )
        source: ImportanceSource = Field(
            "auto", description="auto: the general rows, then each task trained; general: the general rows only."
        )
        task_importance: TaskImportance = Field(
            "training", description="training: read off the task's last training steps; pass: one more pass over the task."
        )
        seed: int | None = Field(None, description="Seed of the importance pass's examples; null: the run's training seed.")

        @model_validator(mode="after")
        def _protects_something(self):
            return require_protection(self, caps=("target", "distance"))

    def __init__(self, **params: Any):
        super().__init__(**params)
        # The saved state: per protected weight (by its full-fine-tuning name), the kept flat indices and Omega.
        self.index: dict[str, torch.Tensor] = {}  # int32 (k,)
        self.importance: dict[str, torch.Tensor] = {}  # bf16 (k,): Omega at those indices
        # Per task: how to read the drift at the kept indices, Omega in fp32 on the device, the layer groups.
        self._drift: dict[str, Callable[[], torch.Tensor]] = {}
        self._omega: dict[str, torch.Tensor] = {}
        self._group: dict[str, int] = {}
        self._anchor: dict[str, torch.Tensor] = {}  # full fine-tuning: the kept entries at the task's start (k,)
        self._long_index: dict[str, torch.Tensor] = {}  # caps: the kept indices as int64 on the weight's device
        self._start_norms: dict[str, float] = {}  # distance cap: ||theta*_kept|| per tensor
        self._weights = None
        self._groups = 0
        self._group_index: torch.Tensor | None = None  # (tensors,) group of each entry of _drift, in order
        self.last_alpha: torch.Tensor | None = None
        # Training-time recording (full fine-tuning): sum of n_b * g_b^2 over the task's last `steps` steps.
        self._recorded: dict[str, torch.Tensor] = {}
        self._recorded_steps = 0
        self._task_steps = 0
        self._recording_seconds = 0.0
        self._projected_steps, self._largest_rise = 0, 0.0  # per task: steps a cap acted on, largest predicted rise
        self._largest_ratio = 0.0  # per task: largest ||d_kept|| / ||theta*_kept|| a step reached (distance cap)

    # ---- which weights are protected, and how far they have moved ----

    def _bind(self, ctx: TaskContext) -> None:
        """Anchor = the model now; set up the per-step drift readers and fp32 copies of Omega."""
        self._drift, self._omega, self._group, self._anchor, self._long_index = {}, {}, {}, {}, {}
        self._start_norms = {}
        weights = ctx.weights
        self._weights = weights
        blocks: dict[int | None, int] = {}
        # In the model's order, not the stored one (a loaded state comes back sorted by name): the per-layer sums
        # then add up in one order, so a resumed run is bit-identical. Protected weights not trainable now (other
        # LoRA targets) cannot drift and are left out.
        for name in [n for n in weights.names() if n in self.index]:
            index = self.index[name]
            weight = weights.weight(name)
            index = index.to(weight.device)
            if self.target is not None or self.distance is not None:
                self._long_index[name] = index.long()  # index_copy_ takes int64
            if weights.change_is_stored:
                # Only the kept entries' start is stored: (k,) values, not a copy of the weight.
                anchor = weight.detach().reshape(-1).index_select(0, index).float().clone()  # (k,)
                self._anchor[name] = anchor
                self._drift[name] = lambda weight=weight, index=index, anchor=anchor: (
                    weight.reshape(-1).index_select(0, index).float() - anchor
                )
            else:
                self._drift[name] = lambda name=name, index=index: (
                    weights.change(name).reshape(-1).index_select(0, index).float()
                )  # scaling * B @ A at the kept entries: the drift from the task's start
            self._omega[name] = self.importance[name].to(weight.device, torch.float32)
            if self.distance is not None:  # under LoRA the base weight is the task's start
                self._start_norms[name] = float(weight.detach().reshape(-1).index_select(0, index).float().norm())
            self._group[name] = blocks.setdefault(block_index(name), len(blocks))
        self._groups = len(blocks)
        if self._drift:
            device = next(iter(self._omega.values())).device
            self._group_index = torch.tensor([self._group[name] for name in self._drift], device=device)

    # ---- importance ----

    def _record_importance(self, ctx: TaskContext, source: Literal["general", "current_task"]) -> None:
        """Record Omega on `source` data, add the stored Omega, keep the top `keep` fraction of each tensor."""
        started = time.perf_counter()
        seed = own_seed(self.seed, ctx) + ctx.task_index
        features = protection_examples(ctx, self.steps * self.batch_size, source=source, seed=seed)
        if not features:
            raise ForgetlessError(f"layerwise: no {source} examples to record the importance on")
        weights = ctx.weights.weights()  # under LoRA the adapted base weights: what the adapter's update adds to
        dense = squared_gradient_importance(ctx.model, weights, features, self.batch_size, ctx.tokenizer.pad_token_id)
        self._absorb(ctx, dense, time.perf_counter() - started)

    def _absorb(self, ctx: TaskContext, dense: dict[str, torch.Tensor], seconds: float) -> None:
        """Add the stored Omega to a new dense recording and keep the top `keep` fraction of each tensor."""
        for name, values in self.importance.items():  # earlier recordings add up (as online EWC's Fisher)
            if name in dense:
                index = self.index[name].to(dense[name].device).long()
                dense[name].reshape(-1).index_add_(0, index, values.to(dense[name].device, torch.float32))
        total_mass = kept_mass = 0.0
        for name, values in dense.items():
            flat = values.reshape(-1)
            count = max(1, round(self.keep * flat.numel()))
            top = torch.topk(flat, count, sorted=False)
            order = torch.argsort(top.indices)  # ascending indices: sequential gathers
            self.index[name] = top.indices[order].to("cpu", torch.int32)
            self.importance[name] = top.values[order].to("cpu", torch.bfloat16)
            kept_mass += float(top.values.sum())
            total_mass += float(flat.sum())
        if not total_mass > 0:
            raise ForgetlessError("layerwise: every recorded gradient is zero; nothing to protect")
        ctx.log["layerwise_importance_seconds"] = ctx.log.get("layerwise_importance_seconds", 0.0) + seconds
        ctx.log["layerwise_importance_mass_kept"] = kept_mass / total_mass
        ctx.log["layerwise_state_bytes"] = self.state_bytes()

    def state_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.index.values(), *self.importance.values()))

    # ---- hooks ----

    def on_task_start(self, ctx: TaskContext) -> None:
        if not self.importance:
            self._record_importance(ctx, "general")
        self._bind(ctx)
        self._recorded, self._recorded_steps, self._task_steps, self._recording_seconds = {}, 0, 0, 0.0
        self._projected_steps, self._largest_rise, self._largest_ratio = 0, 0.0, 0.0  # (a resumed task restores them)

    def _records_during_training(self, ctx: TaskContext) -> bool:
        # Under LoRA the protected base weights get no gradient, so the task needs its own pass.
        return self.source == "auto" and self.task_importance == "training" and ctx.weights.weights_receive_gradients

    def after_backward(self, ctx: TaskContext, model: torch.nn.Module, step: OptimizerStep) -> None:
        """In the task's last `steps` steps: add n_b * g_b^2 of the cross-entropy part of the gradient."""
        if not self._records_during_training(ctx):
            return
        self._task_steps += 1
        if ctx.clock.task_steps is not None and self._task_steps <= ctx.clock.task_steps - self.steps:
            return
        started = time.perf_counter()
        tokens = step.trained_tokens
        own = self._own_gradient_at_kept_entries()
        with torch.no_grad():
            for name, parameter in ctx.weights.weights().items():
                if parameter.grad is None:
                    continue
                grad = parameter.grad.detach()
                if name not in self._recorded:
                    self._recorded[name] = torch.zeros_like(grad, dtype=torch.float32)
                total = self._recorded[name]
                if name in own:
                    # The cross-entropy's gradient is g - p at the kept entries (p: the penalty's own gradient).
                    # Their totals are set aside and rewritten with n (g - p)^2 after the dense pass: adding
                    # n (g - p)^2 - n g^2 instead cancels catastrophically when p dominates g (a large lam).
                    index, penalty_gradient = own[name]
                    index = index.long()  # index_copy_ takes int64 only
                    cross_entropy = grad.reshape(-1).index_select(0, index).float().sub_(penalty_gradient)
                    kept_total = total.view(-1).index_select(0, index)  # a sparse copy, no dense one
                total.addcmul_(grad, grad, value=tokens)  # one fused pass; .grad is never written
                if name in own:
                    total.view(-1).index_copy_(0, index, kept_total.addcmul_(cross_entropy, cross_entropy, value=tokens))
        self._recorded_steps += 1
        self._recording_seconds += time.perf_counter() - started

    def _own_gradient_at_kept_entries(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """name -> (kept indices, d penalty / d theta there = 2 lam alpha_l Omega_i drift_i)."""
        if not self._drift or self.lam == 0 or self.last_alpha is None:
            return {}
        own = {}
        with torch.no_grad():
            for name, drift in self._drift.items():
                scale = 2.0 * self.lam * self.last_alpha[self._group[name]]
                own[name] = (self.index[name].to(self._omega[name].device), scale * self._omega[name] * drift())
        return own

    def layer_penalties(self) -> torch.Tensor:
        """L_reg^(l) for each layer group (embeddings and head form one more group), shape (groups,)."""
        terms = torch.stack([(self._omega[name] * drift().square()).sum() for name, drift in self._drift.items()])
        return torch.zeros(self._groups, device=terms.device).index_add(0, self._group_index, terms)

    def penalty(self) -> torch.Tensor:
        """lam * sum_l alpha_l * L_reg^(l), alpha_l detached (see `layer_coefficients`)."""
        per_layer = self.layer_penalties()
        alpha = layer_coefficients(per_layer, self.layer_weighting)
        self.last_alpha = alpha
        return self.lam * (alpha * per_layer).sum()

    def extra_loss(self, ctx, model, inputs, outputs):
        if not self._drift or self.lam == 0:
            return None
        return self.penalty()

    def after_optimizer_step(self, ctx: TaskContext, model: torch.nn.Module) -> None:
        """The caps: the predicted rise back to `target`, then each tensor's kept drift back to `distance`."""
        if not self._drift:
            return
        moved = self._project_rise() if self.target is not None else False
        moved = (self._project_distance() if self.distance is not None else False) or moved
        self._projected_steps += int(moved)

    def _project_rise(self) -> bool:
        """Trust region: the kept entries back onto {(1/2) sum Omega drift^2 <= target} if the step left it."""
        weights = self._weights
        if weights.change_is_stored:
            flat = {name: weights.weight(name).detach().view(-1) for name in self._drift}  # view: written in place
            indices = self._long_index
            kept = {name: flat[name].index_select(0, indices[name]) for name in self._drift}  # (k,) copies
            rise, multiplier = project(kept, self._anchor, self._omega, self.target)
            moved = multiplier > 0
            if moved:
                with torch.no_grad():
                    for name, values in kept.items():
                        flat[name].index_copy_(0, indices[name], values)
        else:  # LoRA: the rise is quadratic in every B, so scaling B by sqrt(target / P) lands on the boundary
            with torch.no_grad():
                rise = 0.5 * float(self.layer_penalties().sum())
            moved = rise > self.target
            if moved:
                weights.scale_lora_update((self.target / rise) ** 0.5)
        self._largest_rise = max(self._largest_rise, rise)
        return moved

    def _project_distance(self) -> bool:
        """Each tensor whose kept drift is past distance * ||theta*_kept|| scaled back onto that sphere.

        Scaling the drift toward the start only lowers the predicted rise, so after `_project_rise` both caps hold.
        """
        moved = False
        with torch.no_grad():
            for name, drift in self._drift.items():
                norm = self._start_norms[name]
                if norm == 0.0:  # nothing to measure the distance against: left free
                    continue
                ratio = float(drift().norm()) / norm
                self._largest_ratio = max(self._largest_ratio, ratio)
                if ratio <= self.distance * (1 + SPHERE_TOLERANCE):  # a hair outside after the last pull: not a move
                    continue
                shrink = self.distance / ratio
                moved = True
                if self._weights.change_is_stored:
                    flat = self._weights.weight(name).detach().view(-1)
                    index, anchor = self._long_index[name], self._anchor[name]
                    flat.index_copy_(0, index, scaled_toward(anchor, flat.index_select(0, index), shrink))
                else:  # the whole update of that layer: its kept entries are a slice of scaling * B A
                    self._weights.scale_lora_update(shrink, name)
        return moved

    def consolidate(self, ctx: TaskContext) -> None:
        if self.last_alpha is not None:
            ctx.log["layerwise_alpha_max"] = float(self.last_alpha.max())
        if self.target is not None or self.distance is not None:
            ctx.log["layerwise_projected_steps"] = self._projected_steps
        if self.target is not None:
            ctx.log["layerwise_largest_predicted_rise"] = self._largest_rise
        if self.distance is not None:
            ctx.log["layerwise_largest_relative_distance_seen"] = self._largest_ratio
        self._projected_steps, self._largest_rise, self._largest_ratio = 0, 0.0, 0.0
        if self.source == "auto":  # protect this task too from the next one on
            if self._recorded_steps:
                dense = {name: total / self._recorded_steps for name, total in self._recorded.items()}
                self._absorb(ctx, dense, self._recording_seconds)
                ctx.log["layerwise_importance_training_steps"] = self._recorded_steps
            else:
                self._record_importance(ctx, "current_task")
        self._drift, self._omega, self._recorded, self._anchor, self._long_index = {}, {}, {}, {}, {}
        self._start_norms = {}

    def state_tensors(self) -> dict[str, torch.Tensor]:
        state = {f"index/{name}": index for name, index in self.index.items()}
        state.update({f"importance/{name}": values for name, values in self.importance.items()})
        return state

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.index = {key.removeprefix("index/"): t.to(torch.int32) for key, t in tensors.items() if key.startswith("index/")}
        self.importance = {
            key.removeprefix("importance/"): t.to(torch.bfloat16) for key, t in tensors.items() if key.startswith("importance/")
        }
        if set(self.index) != set(self.importance):
            raise ForgetlessError("layerwise state: every protected tensor needs both an index and an importance")
