"""`ewc`: Elastic Weight Consolidation — a quadratic pull toward earlier solutions, weighted by the Fisher.

    penalty = (lam / 2) * sum_i F_i * (theta_i - theta*_i)^2

F is the diagonal Fisher information of what must be protected (general text before the first task, each
trained task after it), estimated from PER-SAMPLE gradients with `torch.func` (vmap over grad of a
functional call), never from the square of a batch-mean gradient. Under LoRA (EWC-LoRA, Zheng et al.
2026) the Fisher is taken over each adapted weight W (the gradient w.r.t. the merged W equals the one
w.r.t. the update Delta W = scaling * B A) and the penalty is (lam / 2) * sum Omega * (scaling * B A)^2.

Per-sample normalisation: a sequence s with n_s trained tokens contributes g_s^2 / n_s, where g_s is the
gradient of the sum of its token log-likelihoods. For independent tokens this makes F the per-token
Fisher, i.e. (at an optimum) the Hessian of the mean token loss the trainer minimises, so lam = 1 prices a
predicted loss increase on the protected data like the same increase on the task being trained.

Trust region (`target`): the same quadratic, halved, predicts the protected data's mean token loss rise,
P = (1/2) sum F (theta - theta*)^2 nats per token. With `target` set, after every optimizer step the
weights are projected back onto {P <= target} (`_trust_region.py`): a cap on the predicted rise itself,
whose meaning does not depend on how hard a task pulls or on the Fisher's scale, where lam is a price.

The default is that cap, at DEFAULT_TARGET, with no penalty (lam 0): naming `lam` alone gives the plain penalty,
naming both gives both. The cap was chosen over lam 100 because its meaning travels across data; on four
sequences the two end within one seed's noise of each other (docs/results/defaults.md).
"""

from __future__ import annotations

import time
import warnings
from typing import Any, Iterable, Literal

import torch
from pydantic import Field
from torch.func import functional_call, grad, vmap

from ..data.encoding import IGNORE_INDEX
from ..errors import ForgetlessError
from ..nn import without_input_grad_hooks
from ..task_weights import TaskWeights
from . import register_strategy
from ._common import (
    ProtectionSource,
    batches,
    protection_examples,
    sample_examples,
    task_rows,
)
from ._trust_region import DEFAULT_TARGET, CapByDefault, project
from .base import OptimizerStep, Strategy, Strength, TaskContext

FisherFlavour = Literal["empirical", "true"]


# ----------------------------------------------------------------------------------------------------------
# The penalty: sum w * (p - a)^2 without autograd keeping a model-sized difference alive until backward.


class _WeightedSquaredDistance(torch.autograd.Function):
    """sum(weight * (value - anchor)^2) for one tensor, its gradient computed in the same pass.

    Elementwise work over every weight is memory-bound on a CPU, so the forward computes
    weight * (value - anchor) once, uses it for the value and keeps it as the gradient (scaled in place
    in backward): about 13 passes over a model-sized tensor per step instead of 18 with recomputation.
    The price is one model-sized tensor held from the forward to the backward of a step.
    """

    @staticmethod
    def forward(ctx, value: torch.Tensor, anchor: torch.Tensor | None, weight: torch.Tensor | None) -> torch.Tensor:
        difference = value.detach().float()
        difference = difference - anchor if anchor is not None else difference.clone()  # fresh: scaled in place later
        half_gradient = difference if weight is None else difference * weight
        ctx.half_gradient, ctx.dtype = half_gradient, value.dtype
        return torch.dot(half_gradient.reshape(-1), difference.reshape(-1))

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        gradient, ctx.half_gradient = ctx.half_gradient.mul_(2 * grad_output), None  # single use: no retain_graph
        return gradient.to(ctx.dtype), None, None


def squared_distance(value: torch.Tensor, anchor: torch.Tensor | None = None, weight: torch.Tensor | None = None) -> torch.Tensor:
    """sum(weight * (value - anchor)^2) (anchor None = 0, weight None = 1), differentiable w.r.t. value."""
    return _WeightedSquaredDistance.apply(value, anchor, weight)


# Chunk of the fused gradient pass: four fp32 operands of 1 MiB each stay in cache between the operations.
PULL_CHUNK = 1 << 18


def add_quadratic_pull(
    parameters: dict[str, torch.Tensor], anchor: dict[str, torch.Tensor], weight: dict[str, torch.Tensor], lam: float
) -> float:
    """p.grad += lam * F * (p - a) for every parameter with a weight F; returns sum F (p - a)^2.

    That is the gradient of (lam / 2) * sum F (p - a)^2, added after the loss's backward instead of
    through autograd: in cache-sized chunks it reads p, a, F and the gradient once and writes the
    gradient once (5 passes over a model-sized tensor against ~13 for the autograd penalty), and nothing
    model-sized lives between forward and backward.
    """
    total = 0.0
    with torch.no_grad():
        for name, parameter in parameters.items():
            if name not in weight:
                continue
            tensor_total = torch.zeros((), dtype=torch.float64, device=parameter.device)  # a CUDA sum needs a CUDA total
            if parameter.grad is None:  # unused by this step's loss: the penalty still pulls it
                parameter.grad = torch.zeros_like(parameter)
            values, anchors, weights = parameter.reshape(-1), anchor[name].reshape(-1), weight[name].reshape(-1)
            grads = parameter.grad.view(-1)
            difference = torch.empty(min(PULL_CHUNK, values.numel()), dtype=torch.float32, device=values.device)
            pulled = torch.empty_like(difference)
            for start in range(0, values.numel(), PULL_CHUNK):
                stop = min(start + PULL_CHUNK, values.numel())
                d, fd = difference[: stop - start], pulled[: stop - start]
                torch.sub(values[start:stop], anchors[start:stop], out=d)
                torch.mul(d, weights[start:stop], out=fd)
                tensor_total += torch.dot(fd, d).to(torch.float64)
                grads[start:stop].add_(fd, alpha=lam)
            total += float(tensor_total)
    return total


# ----------------------------------------------------------------------------------------------------------
# The diagonal Fisher from per-sample gradients.


def normalised_log_likelihood(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """sum_t log p(label_t) / sqrt(n) over the n trained tokens of ONE sequence; logits (T, V), labels (T,).

    Squared, its gradient is g^2 / n: the per-token normalisation described in the module docstring.
    """
    targets = labels[1:]  # position t predicts token t+1
    trained = targets != IGNORE_INDEX
    log_probs = torch.log_softmax(logits[:-1].float(), dim=-1)  # (T-1, V)
    token_log_probs = log_probs.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)  # (T-1,)
    count = trained.sum().clamp(min=1)
    return (token_log_probs * trained).sum() / count.sqrt()


def sample_model_labels(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], draws: int, generator: torch.Generator
) -> list[torch.Tensor]:
    """`draws` label sets drawn from the model's own predictive distribution at the trained positions.

    Teacher-forced on the data prefix: position t gets a token sampled from p(. | x_<=t). Returns a list of
    (B, T) label tensors, -100 wherever the data has -100.
    """
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
    probs = torch.softmax(logits[:, :-1].float(), dim=-1)  # (B, T-1, V)
    flat = probs.reshape(-1, probs.size(-1))
    sampled = torch.multinomial(flat, draws, replacement=True, generator=generator)  # (B*(T-1), draws)
    sampled = sampled.T.reshape(draws, *probs.shape[:2])  # (draws, B, T-1)
    labels = batch["labels"]
    trained = labels[:, 1:] != IGNORE_INDEX
    result = []
    for draw in sampled:
        drawn = labels.clone()
        drawn[:, 1:] = torch.where(trained, draw, torch.full_like(draw, IGNORE_INDEX))
        result.append(drawn)
    return result


def parameter_groups(tensors: dict[str, torch.Tensor], batch_size: int, max_gradient_mb: float) -> list[list[str]]:
    """Split names into consecutive groups whose per-sample gradients for a batch fit in max_gradient_mb.

    A tensor larger than the budget on its own forms its own group (the bound is then batch_size x it).
    """
    budget = max_gradient_mb * 2**20
    groups: list[list[str]] = [[]]
    used = 0
    for name, tensor in tensors.items():
        size = batch_size * tensor.numel() * 4  # float32 per-sample gradients
        if groups[-1] and used + size > budget:
            groups.append([])
            used = 0
        groups[-1].append(name)
        used += size
    return groups


def per_sample_fisher(
    model: torch.nn.Module,
    names: Iterable[str],
    examples: list[dict[str, Any]],
    pad_token_id: int,
    flavour: FisherFlavour = "empirical",
    draws: int = 1,
    batch_size: int = 4,
    max_gradient_mb: float = 1024,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Diagonal Fisher of the parameters `names` of `model`: mean over examples (and draws) of g_s^2 / n_s.

    empirical: g_s is the gradient of the log-likelihood of the dataset labels. true: of labels sampled
    from the model (`draws` per example; exact expectation over the vocabulary would need one backward per
    vocabulary entry and position, which is unaffordable). Per-sample gradients come from vmap(grad(.))
    over a batch; peak memory for them is about max_gradient_mb (parameters are processed in groups, each
    group one more forward and backward), plus the activations of one batch.
    """
    if not examples:
        raise ForgetlessError("no examples to estimate the Fisher information on")
    all_parameters = dict(model.named_parameters())
    selected = {name: all_parameters[name].detach() for name in names}
    fisher = {name: torch.zeros_like(tensor, dtype=torch.float32) for name, tensor in selected.items()}
    groups = parameter_groups(selected, batch_size, max_gradient_mb)
    device = next(iter(selected.values())).device
    generator = torch.Generator(device=device).manual_seed(seed)

    def sequence_score(group: dict[str, torch.Tensor], others: dict[str, torch.Tensor], input_ids, labels):
        # Right padding needs no attention mask under causal attention: real tokens never see the padding.
        inputs = {"input_ids": input_ids[None], "use_cache": False}  # (1, T): one sequence
        logits = functional_call(model, (group, others), args=(), kwargs=inputs).logits
        return normalised_log_likelihood(logits[0], labels)

    per_sample_gradients = vmap(grad(sequence_score), in_dims=(None, None, 0, 0))
    was_training = model.training
    model.eval()  # no dropout: the Fisher of the deterministic model
    try:
        with warnings.catch_warnings(), without_input_grad_hooks(model):
            # SDPA on CPU has no vmap batching rule yet: torch loops over the batch for attention only.
            warnings.filterwarnings("ignore", message=".*batching rule.*")
            for batch in batches(examples, batch_size, pad_token_id, device):
                label_sets = [batch["labels"]] if flavour == "empirical" else sample_model_labels(model, batch, draws, generator)
                for labels in label_sets:
                    for group_names in groups:
                        group = {name: selected[name] for name in group_names}
                        others = {name: p.detach() for name, p in all_parameters.items() if name not in group}
                        gradients = per_sample_gradients(group, others, batch["input_ids"], labels)
                        for name, gradient in gradients.items():  # gradient: (batch, *shape)
                            fisher[name] += gradient.float().square_().sum(0)
                        del gradients
    finally:
        model.train(was_training)
    count = len(examples) * (1 if flavour == "empirical" else draws)
    return {name: value.div_(count) for name, value in fisher.items()}


# ----------------------------------------------------------------------------------------------------------


@register_strategy
class EWC(Strategy):
    """Elastic Weight Consolidation (offline or online), and EWC-LoRA under `adapter: lora`."""

    name = "ewc"
    strength = Strength("lam", "up", bound=1e12, centre=100.0)
    other_strengths = (Strength("target", "down", bound=1e-6, centre=DEFAULT_TARGET, cap=True),)
    in_task_state = ("_penalty_total", "_penalty_steps", "_projected_steps", "_largest_rise")
    # Penalties are keyed by parameter name: right under DDP (replicated weights), wrong under FSDP (sharded).

    class Params(CapByDefault):
        default_target = DEFAULT_TARGET

        lam: float = Field(
            0.0, ge=0, description="Penalty weight; lam = 1 prices a protected-data loss rise like a task-loss rise "
            "(0: no penalty; 100 was the default before the trust region).",
        )
        target: float | None = Field(
            None, gt=0, description="Trust region: after each step, project the weights so that the predicted loss rise "
            f"on the protected data, (1/2) sum F (theta - theta*)^2, is at most this many nats per token (None: off). "
            f"When neither lam nor target is given: {DEFAULT_TARGET}.",
        )
        fisher: FisherFlavour = Field(
            "empirical", description="empirical: gradients of the data's own tokens; true: of tokens sampled from the model."
        )
        fisher_samples: int = Field(1, ge=1, description="Sampled continuations per sequence for the true Fisher.")
        online: bool = Field(
            False, description="Online EWC: one running Fisher, decayed by gamma at each task, instead of one per task."
        )
        gamma: float = Field(0.97, gt=0, le=1, description="Online EWC: decay of the earlier Fisher at each new task.")
        source: ProtectionSource = Field(
            "auto",
            description="What the Fisher protects: auto (the general rows, then each trained task), general, earlier_tasks, "
            "current_task.",
        )
        samples: int = Field(64, ge=1, description="Sequences the Fisher is estimated on.")
        batch_size: int = Field(4, ge=1, description="Sequences per vmap'd per-sample gradient batch.")
        max_gradient_mb: float = Field(
            1024, gt=0, description="Memory cap for per-sample gradients; parameters are processed in groups under it."
        )

    def __init__(self, **params: Any):
        super().__init__(**params)
        self.fisher_flavour = self.params.fisher  # `self.fisher` below is the Fisher itself
        # Full fine-tuning: F and the anchor per parameter name, plus a scalar (see _absorb).
        self.fisher: dict[str, torch.Tensor] = {}
        self.anchor: dict[str, torch.Tensor] = {}
        self.offset = 0.0
        # LoRA: Omega per adapted weight, named as under full fine-tuning.
        self.omega: dict[str, torch.Tensor] = {}
        self._weights: TaskWeights | None = None
        self._penalty_total, self._penalty_steps = 0.0, 0  # per task, for the mean reported in results.json
        self._projected_steps, self._largest_rise = 0, 0.0  # per task: steps the trust region acted on, largest P seen

    # -- hooks ---------------------------------------------------------------------------------------------

    def on_task_start(self, ctx: TaskContext) -> None:
        self._weights = ctx.weights
        if self.fisher or self.omega:
            return  # already protecting something (an earlier task, or a loaded state)
        # The first task is protected too: the starting model, on general text (or earlier tasks on resume).
        if self.source == "current_task":
            return  # the task about to be trained is nothing to protect yet
        examples = protection_examples(ctx, self.samples, self.source, seed=ctx.setup.seed)
        if examples:
            self._estimate_and_absorb(ctx, examples, "ewc_start")

    def penalty(self) -> torch.Tensor:
        """(lam / 2) * sum F (theta - theta*)^2 (or over the LoRA update), differentiable."""
        return self.lam / 2 * self.weighted_distance()

    def extra_loss(self, ctx: TaskContext, model: torch.nn.Module, inputs: dict[str, torch.Tensor], outputs: Any):
        # Full fine-tuning adds the penalty's gradient in `after_backward` instead (fewer memory passes).
        if self.lam == 0 or not self.omega or self._weights.change_is_stored:
            return None
        return self.penalty()

    def after_backward(self, ctx: TaskContext, model: torch.nn.Module, step: OptimizerStep) -> None:
        """Full fine-tuning: .grad += lam * F * (theta - theta*), the penalty's gradient; its value is logged."""
        if not self._weights.change_is_stored or self.lam == 0 or not self.fisher:
            return
        parameters = self._weights.weights()
        for name, parameter in parameters.items():  # a loaded state arrives on the CPU
            if name in self.fisher:
                self._on(self.anchor, name, parameter)
                self._on(self.fisher, name, parameter)
        distance = add_quadratic_pull(parameters, self.anchor, self.fisher, self.lam)
        self._penalty_total += self.lam / 2 * (distance + self.offset)
        self._penalty_steps += 1

    def after_optimizer_step(self, ctx: TaskContext, model: torch.nn.Module) -> None:
        """Trust region: back onto {(1/2) sum F (theta - theta*)^2 <= target} if the step left it."""
        if self.target is None or not (self.fisher or self.omega):
            return
        if self._weights.change_is_stored:
            parameters = self._weights.weights()
            for name, parameter in parameters.items():
                if name in self.fisher:
                    self._on(self.anchor, name, parameter)
                    self._on(self.fisher, name, parameter)
            rise, multiplier = project(parameters, self.anchor, self.fisher, self.target)
            moved = multiplier > 0
        else:  # LoRA: the predicted rise is quadratic in B, so scaling every B by sqrt(target / P) lands on the boundary
            with torch.no_grad():
                rise = 0.5 * float(self.weighted_distance())
            moved = rise > self.target
            if moved:
                self._weights.scale_lora_update((self.target / rise) ** 0.5)
        self._largest_rise = max(self._largest_rise, rise)
        self._projected_steps += int(moved)

    def consolidate(self, ctx: TaskContext) -> None:
        if self._penalty_steps:
            ctx.log["ewc_mean_penalty"] = self._penalty_total / self._penalty_steps
        if self.target is not None:
            ctx.log["ewc_projected_steps"] = self._projected_steps
            ctx.log["ewc_largest_predicted_rise"] = self._largest_rise
        self._penalty_total, self._penalty_steps = 0.0, 0
        self._projected_steps, self._largest_rise = 0, 0.0
        if self.source == "earlier_tasks":  # every task trained so far, this one included
            rows = [row for task in [*ctx.earlier_tasks, ctx.task] for row in task_rows(task)]
            examples = sample_examples(ctx, rows, self.samples, ctx.setup.max_length, ctx.setup.seed)
        else:  # auto: the task just trained (earlier ones are already in F)
            source = "current_task" if self.source == "auto" else self.source
            examples = protection_examples(ctx, self.samples, source, seed=ctx.setup.seed)
        self._estimate_and_absorb(ctx, examples, "ewc")

    # -- the penalty and its state -------------------------------------------------------------------------

    def weighted_distance(self) -> torch.Tensor:
        """sum_i F_i (theta_i - theta*_i)^2 (+ the offline constant), or sum Omega (scaling B A)^2 under LoRA."""
        weights = self._weights
        if not weights.change_is_stored:  # LoRA: the change is the adapter's update since the task's start
            terms = []
            for name in weights.names():
                if name in self.omega:
                    delta = weights.change(name)
                    terms.append(squared_distance(delta, None, self._on(self.omega, name, delta)))
            return torch.stack(terms).sum()
        terms = [
            squared_distance(parameter, self._on(self.anchor, name, parameter), self._on(self.fisher, name, parameter))
            for name, parameter in weights.weights().items()
            if name in self.fisher
        ]
        return torch.stack(terms).sum() + self.offset

    @staticmethod
    def _on(store: dict[str, torch.Tensor], name: str, like: torch.Tensor) -> torch.Tensor:
        """store[name] on the device of `like` (moved once: a loaded state arrives on the CPU)."""
        if store[name].device != like.device:
            store[name] = store[name].to(like.device)
        return store[name]

    def _estimate_and_absorb(self, ctx: TaskContext, examples: list[dict[str, Any]], log_key: str) -> None:
        if not examples:
            raise ForgetlessError(
                f"strategy 'ewc': no example with a trained token to estimate the Fisher on (source {self.source!r}, "
                f"task {ctx.task.name!r}); raise train.max_length or choose another source"
            )
        started = time.perf_counter()
        weights = self._weights
        names = {parameter: name for name, parameter in weights.gradient_names().items()}  # gradient of W, by W's name
        fisher = per_sample_fisher(
            ctx.model, list(names), examples, ctx.tokenizer.pad_token_id, self.fisher_flavour, self.fisher_samples,
            self.batch_size, self.max_gradient_mb, seed=ctx.setup.seed + ctx.task_index,
        )
        fisher = {names[name]: value for name, value in fisher.items()}
        if not weights.change_is_stored:
            decay = self.gamma if self.online else 1.0
            self.omega = combine_online(self.omega, fisher, decay)
        else:
            anchor = {name: parameter.detach().float().clone() for name, parameter in weights.weights().items()}
            if self.online:
                self.fisher, self.anchor = combine_online(self.fisher, fisher, self.gamma), anchor
            else:
                self.fisher, self.anchor, added = combine_offline(self.fisher, self.anchor, fisher, anchor)
                self.offset += added
        ctx.log[f"{log_key}_fisher_examples"] = len(examples)
        ctx.log[f"{log_key}_fisher_seconds"] = round(time.perf_counter() - started, 2)
        ctx.log[f"{log_key}_fisher_mean"] = _mean(fisher.values())

    def state_tensors(self) -> dict[str, torch.Tensor]:
        tensors = {f"fisher.{name}": value for name, value in self.fisher.items()}
        tensors.update({f"anchor.{name}": value for name, value in self.anchor.items()})
        tensors.update({f"omega.{name}": value for name, value in self.omega.items()})
        if self.fisher:
            tensors["offset"] = torch.tensor([self.offset], dtype=torch.float64)
        return tensors

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        stores = {"fisher": self.fisher, "anchor": self.anchor, "omega": self.omega}
        for store in stores.values():
            store.clear()
        self.offset = float(tensors["offset"]) if "offset" in tensors else 0.0
        for key, value in tensors.items():
            kind, _, name = key.partition(".")
            if kind in stores:
                stores[kind][name] = value


def combine_online(previous: dict[str, torch.Tensor], new: dict[str, torch.Tensor], gamma: float) -> dict[str, torch.Tensor]:
    """Online EWC (Schwarz et al. 2018): F <- gamma * F_prev + F_new, one penalty around the latest anchor."""
    return {name: (gamma * previous[name].to(value.device) + value) if name in previous else value for name, value in new.items()}


def combine_offline(
    fisher: dict[str, torch.Tensor],
    anchor: dict[str, torch.Tensor],
    new_fisher: dict[str, torch.Tensor],
    new_anchor: dict[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], float]:
    """Offline EWC (one penalty per task) folded into ONE quadratic of the same value, in constant memory.

    F1 (x - a)^2 + F2 (x - b)^2 = (F1 + F2) (x - m)^2 + F1 F2 / (F1 + F2) (a - b)^2 with m the
    Fisher-weighted mean of a and b; the last term is a constant, returned summed over all parameters.
    """
    combined_fisher, combined_anchor, constant = {}, {}, 0.0
    for name, f2 in new_fisher.items():
        b = new_anchor[name]
        if name not in fisher:
            combined_fisher[name], combined_anchor[name] = f2, b
            continue
        f1, a = fisher[name].to(f2.device), anchor[name].to(b.device)
        total = f1 + f2
        share = torch.where(total > 0, f2 / total, torch.ones_like(total))  # weight of the new anchor
        combined_anchor[name] = a + share * (b - a)
        constant += float((f1 * share * (a - b).square()).sum(dtype=torch.float64))  # f1 f2 / (f1 + f2) (a - b)^2
        combined_fisher[name] = total
    return combined_fisher, combined_anchor, constant


def _mean(tensors: Iterable[torch.Tensor]) -> float:
    """Mean entry over several tensors (for the log)."""
    total, count = 0.0, 0
    for tensor in tensors:
        total += float(tensor.sum(dtype=torch.float64))
        count += tensor.numel()
    return total / max(count, 1)
