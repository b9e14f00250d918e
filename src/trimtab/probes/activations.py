"""Activation health from sampled forward hooks: dead ReLU units, saturated tanh and
sigmoid units, and the activation scale (RMS) per layer.

Hooks are registered on ``attach`` and removed on ``detach``; they record only on the
forward pass of a due step (they are armed one step ahead), so between readings a hook
costs one boolean check. A unit is a feature (last dimension) or, for 4-D outputs, a
channel; it is *dead* when it is zero for every sample of the batch and *saturated*
when |tanh| > 0.99, or sigmoid < 0.01 or > 0.99, for at least 99 % of the batch.
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
    """Emits ``activations/<layer>/{dead,saturated,rms}`` for each watched module.

    Layer names are the module names in the model (dots kept); ``dead`` applies to
    ReLU-family modules, ``saturated`` to tanh and sigmoid.
    """

    name = "activations"
    cost = Cost.MODERATE

    def __init__(self, *, every: int = 50) -> None:
        super().__init__(every=every)
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._armed = False
        self._readings: dict[str, torch.Tensor] = {}
        self._names: list[str] = []

    def signals(self, groups: Sequence[str]) -> tuple[str, ...]:
        out = []
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
            if not self._armed or not isinstance(output, torch.Tensor):
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
                saturated = edge.float().mean(dim=0) >= 0.99
                self._readings[f"{prefix}/saturated"] = saturated.float().mean()
            else:
                dead = (units.abs() <= 1e-12).all(dim=0)
                self._readings[f"{prefix}/dead"] = dead.float().mean()

        return record

    def due(self, step: int) -> bool:
        return True  # called every step to arm the hooks one forward pass ahead

    def before_step(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        if ctx.step % self.every:
            return {}
        readings, self._readings = self._readings, {}
        self._armed = False
        return readings

    def after_step(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        self._armed = (ctx.step + 1) % self.every == 0
        return {}
