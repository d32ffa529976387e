"""The weights one task trains, where they started and how far they have moved: full fine-tuning and LoRA alike.

Strategies ask the same questions in three set-ups (full fine-tuning, LoRA merged after each task, LoRA
stacked); `TaskWeights` answers them so no strategy branches on the adapter, as PEFT hides an adapter
behind `get_delta_weight` / `disable_adapter`:

- which weights: named as under full fine-tuning ("model.layers.0.self_attn.q_proj.weight"), so a Fisher
  or an importance keyed by that name means the same weight in every set-up. Under LoRA they are the
  Linear weights W that this task's adapter adapts (other adapted layer types are refused).
- their change since the task's start: LoRA, the adapter's own update scaling * B A (a fresh adapter
  has B = 0, so nothing needs storing); full, W - W_start from a copy the strategy asked for
  (`remember_start`), held once per task however many strategies ask.
- edits after training: keep the change only where a mask says (FAPM), or scale it (WiSE-FT).
- the task's starting function: `snapshot()` copies every trained tensor, and `torch.func.functional_call`
  with it runs the model as it was (FIP, LwF), without a second model and in stack mode too (earlier
  adapters stay on; only this task's tensors are swapped).

This module imports nothing of forgetless's above `errors`.
"""

from __future__ import annotations

from typing import Callable

import torch

from .errors import ForgetlessError


def trained_parameters(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """The parameters the optimizer updates (all weights, or only LoRA's), by name."""
    return {name: parameter for name, parameter in model.named_parameters() if parameter.requires_grad}


def base_weight_name(module_name: str) -> str:
    """The name a LoRA-adapted Linear's weight has without PEFT's wrapping (as under full fine-tuning)."""
    return module_name.removeprefix("base_model.model.") + ".weight"


def lora_linear_layers(model: torch.nn.Module, adapter: str) -> dict[str, torch.nn.Module]:
    """The PEFT LoRA Linear layers holding `adapter`, by module name; other adapted layer types are refused."""
    from peft.tuners.lora import Linear, LoraLayer

    layers: dict[str, torch.nn.Module] = {}
    for name, module in model.named_modules():
        if not isinstance(module, LoraLayer) or adapter not in getattr(module, "lora_A", {}):
            continue
        if not isinstance(module, Linear):
            raise ForgetlessError(
                f"{name}: only LoRA on Linear layers is supported here, not {type(module).__name__}; "
                "drop it from lora.target_modules"
            )
        layers[name] = module
    if not layers:
        raise ForgetlessError(f"the model has no LoRA layer of adapter {adapter!r}")
    return layers


class TaskWeights:
    """The weights `model` trains in one task: full fine-tuning (`adapter` None) or the LoRA adapter `adapter`."""

    def __init__(self, model: torch.nn.Module, adapter: str | None = None):
        self.adapter = adapter
        self._start: dict[str, torch.Tensor] = {}
        self.rebind(model)

    def rebind(self, model: torch.nn.Module) -> None:
        """Read the weights from `model` (the same network handed over as another object); kept starts stay."""
        self.model = model
        adapter = self.adapter
        if adapter is None:
            self._parameters = trained_parameters(model)
            self._layers: dict[str, torch.nn.Module] = {}
            self._gradient_names = {name: name for name in self._parameters}
        else:
            layers = lora_linear_layers(model, adapter)
            self._parameters = {}
            self._layers = {base_weight_name(name): layer for name, layer in layers.items()}
            # d loss / d W is the gradient of the base weight: the forward computes (W + scaling B A) x.
            self._gradient_names = {base_weight_name(name): f"{name}.base_layer.weight" for name in layers}

    @property
    def is_lora(self) -> bool:
        return self.adapter is not None

    @property
    def change_is_stored(self) -> bool:
        """True under full fine-tuning: the change needs W_start kept (`remember_start`); LoRA's is B A itself."""
        return not self.is_lora

    @property
    def weights_receive_gradients(self) -> bool:
        """True when training computes d loss / d W itself (full); under LoRA W is frozen and only A, B get one."""
        return not self.is_lora

    def names(self) -> list[str]:
        return list(self._layers or self._parameters)

    def weight(self, name: str) -> torch.Tensor:
        """The tensor holding W: the trained parameter, or under LoRA the frozen base weight the adapter adds to."""
        return self._layers[name].base_layer.weight if self.is_lora else self._parameters[name]

    def weights(self) -> dict[str, torch.Tensor]:
        return {name: self.weight(name) for name in self.names()}

    def gradient_names(self) -> dict[str, str]:
        """Weight name -> the name in `model.named_parameters()` whose gradient is d loss / d W."""
        return dict(self._gradient_names)

    # -- start and change ------------------------------------------------------------------------------

    def remember_start(self, select: Callable[[str, torch.Tensor], bool] | None = None, device: str = "cpu") -> None:
        """Keep W_start of the selected weights (full fine-tuning only; a no-op under LoRA). Call at the task's start.

        A weight already kept is not copied again: strategies that share a task share the copy.
        """
        if self.is_lora:
            return
        for name, parameter in self._parameters.items():
            if name not in self._start and (select is None or select(name, parameter)):
                self._start[name] = parameter.detach().to(device, copy=True)

    def remembered(self) -> list[str]:
        """Weights whose start is known: all under LoRA, those kept by `remember_start` under full fine-tuning."""
        return self.names() if self.is_lora else list(self._start)

    def start(self, name: str) -> torch.Tensor:
        """W at the task's start, on W's device (under LoRA the base weight W itself, adapters off).

        Called once per weight after training (edits), not per step: it moves the kept copy each time.
        """
        if self.is_lora:
            return self.weight(name)
        if name not in self._start:
            raise ForgetlessError(f"the start of {name} was not kept: call remember_start at the task's start")
        # A transient copy on W's device: the kept start stays where `remember_start` put it (off the GPU).
        return self._start[name].to(self._parameters[name].device)

    def change(self, name: str, since: torch.Tensor | None = None) -> torch.Tensor:
        """How far W moved, differentiable: scaling * B A under LoRA; W - since (default W_start) otherwise.

        `since` (full fine-tuning only) measures from another point, such as the run's start.
        """
        if self.is_lora:
            return self._layers[name].get_delta_weight(self.adapter)  # (out, in), like W
        parameter = self._parameters[name]
        return parameter - (self.start(name) if since is None else since)

    # -- edits after training ------------------------------------------------------------------------

    @torch.no_grad()
    def keep_change_where(self, name: str, mask: torch.Tensor) -> None:
        """W = W_start + mask * change: entries outside `mask` go back exactly to their start.

        LoRA: the masked update is folded into the base weight and the adapter's B zeroed (a sparse update
        has no rank-r form), so the checkpoint must hold full weights (`Strategy.changes_base_weights`).
        """
        if self.is_lora:
            layer = self._layers[name]
            weight = layer.base_layer.weight
            update = self.change(name).to(weight.dtype)
            weight.add_(torch.where(mask, update, torch.zeros_like(update)))
            layer.lora_B[self.adapter].weight.zero_()
            return
        parameter = self._parameters[name]
        # torch.where keeps both sides bit-exact: reset entries are exactly W_start, kept ones exactly W.
        parameter.copy_(torch.where(mask, parameter, self.start(name)))

    def interpolator(self, repeatable: bool = False) -> Callable[[float], None]:
        """A function alpha -> W = W_start + alpha * (W_end - W_start) for every weight, W_end = W now.

        `repeatable`: callable several times (holds W_end, a second copy under full fine-tuning); otherwise
        one interpolation in place. LoRA: the update is linear in B, so B <- alpha * B_end (needs B = 0 at
        the start, which `check_fresh_adapter` verifies).
        """
        if self.is_lora:
            b_weights = [layer.lora_B[self.adapter].weight for layer in self._layers.values()]
            ends = [b.detach().clone() for b in b_weights]

            @torch.no_grad()
            def set_lora(alpha: float) -> None:
                for b, end in zip(b_weights, ends):
                    b.copy_(end * alpha)

            return set_lora
        names = self.remembered()
        ends_full = {name: self._parameters[name].detach().to("cpu", copy=True) for name in names} if repeatable else None

        @torch.no_grad()
        def set_full(alpha: float) -> None:
            for name in names:
                parameter = self._parameters[name]
                end = parameter if ends_full is None else ends_full[name].to(parameter.device)
                parameter.copy_(torch.lerp(self.start(name), end, alpha))

        return set_full

    @torch.no_grad()
    def scale_lora_update(self, factor: float, name: str | None = None) -> None:
        """Under LoRA, scaling * B A <- factor * scaling * B A for every adapted layer, or for weight `name` (B is scaled)."""
        layers = self._layers.values() if name is None else [self._layers[name]]
        for layer in layers:
            layer.lora_B[self.adapter].weight.mul_(factor)

    def check_fresh_adapter(self, who: str) -> None:
        """Under LoRA, refuse an adapter whose B is not zero: its update would not start at zero."""
        for name, layer in self._layers.items():
            if layer.lora_B[self.adapter].weight.count_nonzero():
                raise ForgetlessError(f"{who}: the LoRA update of {name} is not zero at the task's start; "
                                      "it needs a freshly initialised adapter (B = 0)")

    # -- the starting function ------------------------------------------------------------------------

    def snapshot(self) -> dict[str, torch.Tensor]:
        """Detached copies of every trained tensor, by `model.named_parameters()` name.

        `torch.func.functional_call(model, snapshot, ...)` then computes the model at that point: the task's
        start if taken then. Full fine-tuning copies every weight; LoRA only this task's adapter.
        """
        return {name: parameter.detach().clone() for name, parameter in trained_parameters(self.model).items()}
