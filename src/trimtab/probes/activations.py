"""Activation health from sampled forward hooks: dead ReLU units, saturated tanh and
sigmoid units, and the activation scale (RMS) per layer.

Hooks are registered on ``attach`` and removed on ``detach``; they record only on the
forward pass of a due step (they are armed one step ahead), so between readings a hook
costs one boolean check. A unit is a feature (last dimension) or, for 4-D outputs, a
channel; it is *dead* when it is zero for every sample of the batch. *saturated* is
the share of outputs with |tanh| > 0.99, or sigmoid < 0.01 or > 0.99 (each passes back
less than 2 % of its gradient).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from trimtab.probes.base import Cost, Probe, StepContext

_WATCHED = (nn.ReLU, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid)


def _units(output: torch.Tensor) -> torch.Tensor:
    """Reshape to (samples, units): channels for 4-D, last dimension otherwise."""
    if output.dim() == 4:
        return output.transpose(0, 1).flatten(1).T
    return output.reshape(-1, output.shape[-1])


class ActivationProbe(Probe):
    """Emits ``activations/<layer>/{dead,saturated,rms}`` for each watched module, and
    ``activations/dead`` and ``activations/saturated`` pooled over all units of the
    model (the doctor reads these two).

    Layer names are the module names in the model (dots kept); ``dead`` applies to
    ReLU-family modules, ``saturated`` to tanh and sigmoid. Forward passes without
    gradients (validation) are ignored, so an evaluation between steps cannot
    overwrite the training reading.
    """

    name = "activations"
    cost = Cost.MODERATE

    def __init__(self, *, every: int = 50) -> None:
        super().__init__(every=every)
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._armed = False
        self._readings: dict[str, torch.Tensor] = {}
        self._pooled: dict[str, dict[str, tuple[torch.Tensor, int]]] = {}
        self._names: list[str] = []

    def signals(self, groups: Sequence[str]) -> tuple[str, ...]:
        out = ["activations/dead", "activations/saturated"]
        for name in self._names:
            out += [
                f"activations/{name}/dead",
                f"activations/{name}/saturated",
                f"activations/{name}/rms",
            ]
        return tuple(out)

    def attach(self, model: nn.Module) -> None:
        self.detach()
        for name, module in model.named_modules():
            if isinstance(module, _WATCHED):
                label = name or type(module).__name__.lower()
                self._names.append(label)
                self._handles.append(module.register_forward_hook(self._hook(label, module)))
        self._armed = True  # step 0 is a reading step

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles, self._names = [], []

    def _hook(self, label: str, module: nn.Module):
        def record(_module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
            if not (self._armed and torch.is_grad_enabled() and isinstance(output, torch.Tensor)):
                return
            units = _units(output.detach().float())
            prefix = f"activations/{label}"
            self._readings[f"{prefix}/rms"] = units.pow(2).mean().sqrt()
            if isinstance(module, (nn.Tanh, nn.Sigmoid)):
                edge = (
                    units.abs() > 0.99
                    if isinstance(module, nn.Tanh)
                    else ((units < 0.01) | (units > 0.99))
                )
                self._record(prefix, "saturated", edge)
            else:
                self._record(prefix, "dead", (units.abs() <= 1e-12).all(dim=0))

        return record

    def _record(self, prefix: str, kind: str, flags: torch.Tensor) -> None:
        self._readings[f"{prefix}/{kind}"] = flags.float().mean()
        self._pooled.setdefault(kind, {})[prefix] = (flags.float().sum(), flags.numel())

    def due(self, step: int) -> bool:
        return True  # called every step to arm the hooks one forward pass ahead

    def before_step(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        if ctx.step % self.every:
            return {}
        readings, self._readings = self._readings, {}
        for kind, layers in self._pooled.items():
            units = sum(n for _, n in layers.values())
            readings[f"activations/{kind}"] = (
                torch.stack([c for c, _ in layers.values()]).sum() / units
            )
        self._pooled = {}
        self._armed = False
        return readings

    def after_step(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        self._armed = (ctx.step + 1) % self.every == 0
        return {}
