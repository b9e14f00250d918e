"""Activation health: dead ReLU units and saturated tanh units, seen from forward hooks.

A ReLU unit that outputs zero for every sample of a batch gets no gradient and stops
learning; a tanh unit stuck near +-1 passes almost none. Both look like a learning rate
that is too low in the loss curve, so the doctor needs this probe to tell them apart.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from trimtab.probes.base import Cost, Probe, StepContext

_SATURATED = 0.99  # |tanh(x)| above this passes less than 2 % of the gradient


class ActivationsProbe(Probe):
    """Emits ``activations/dead_relu`` and ``activations/saturated_tanh`` (fractions).

    ``dead_relu`` is the share of ReLU units (features) that are zero on the whole batch;
    ``saturated_tanh`` the share of tanh outputs with magnitude above 0.99. Only
    ``torch.nn.ReLU`` and ``torch.nn.Tanh`` modules are seen (not functional calls), and
    only forward passes with gradients enabled (validation passes are ignored). The
    reductions stay on the device; the hook keeps the last training batch's values.
    """

    name = "activations"
    cost = Cost.MODERATE

    def __init__(self, *, every: int = 10) -> None:
        super().__init__(every=every)
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._dead: dict[int, tuple[torch.Tensor, int]] = {}
        self._saturated: dict[int, tuple[torch.Tensor, int]] = {}

    def signals(self, groups: Sequence[str]) -> tuple[str, ...]:
        return ("activations/dead_relu", "activations/saturated_tanh")

    def attach(self, model: torch.nn.Module) -> None:
        for module in model.modules():
            if isinstance(module, torch.nn.ReLU):
                self._handles.append(module.register_forward_hook(self._relu_hook))
            elif isinstance(module, torch.nn.Tanh):
                self._handles.append(module.register_forward_hook(self._tanh_hook))

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _relu_hook(self, module: torch.nn.Module, inputs: object, output: torch.Tensor) -> None:
        if not torch.is_grad_enabled() or output.dim() < 2:
            return
        flat = output.detach().reshape(output.shape[0], -1)
        alive = (flat > 0).any(dim=0)
        self._dead[id(module)] = ((~alive).sum().float(), alive.numel())

    def _tanh_hook(self, module: torch.nn.Module, inputs: object, output: torch.Tensor) -> None:
        if not torch.is_grad_enabled():
            return
        out = output.detach()
        self._saturated[id(module)] = ((out.abs() > _SATURATED).sum().float(), out.numel())

    def before_step(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for key, store in (("dead_relu", self._dead), ("saturated_tanh", self._saturated)):
            if store:
                counted = torch.stack([c for c, _ in store.values()]).sum()
                out[f"activations/{key}"] = counted / sum(n for _, n in store.values())
        return out
