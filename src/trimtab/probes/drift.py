"""Distance from the initial (or pretrained) weights per group: how far a backbone moved.

The weights at ``attach`` time are copied once (memory: one copy of the weights); every
``every`` steps the probe reports ||w - w0|| / ||w0|| per group.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from trimtab.probes.base import Cost, Probe, StepContext


class DriftProbe(Probe):
    """Emits ``drift/<group>``: relative distance from the weights at the start."""

    name = "drift"
    cost = Cost.MODERATE

    def __init__(self, *, every: int = 10) -> None:
        super().__init__(every=every)
        self._start: dict[int, torch.Tensor] = {}

    def signals(self, groups: Sequence[str]) -> tuple[str, ...]:
        return tuple(f"drift/{g}" for g in groups)

    def attach(self, model: nn.Module) -> None:
        if not self._start:  # a resumed run keeps the loaded reference
            self._start = {id(p): p.detach().clone() for p in model.parameters()}
        self._order = [id(p) for p in model.parameters()]

    def before_step(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        out = {}
        for group in ctx.groups:
            pairs = [(p.detach(), self._start[id(p)]) for p in group.params if id(p) in self._start]
            if not pairs:
                continue
            now, start = zip(*pairs, strict=True)
            delta = torch.stack(torch._foreach_norm(torch._foreach_sub(list(now), list(start))))
            base = torch.stack(torch._foreach_norm(list(start)))
            # a group that started at all-zero weights has no relative drift: inf, which
            # readers skip, not a huge finite number that looks like a backbone running off
            out[f"drift/{group.name}"] = delta.pow(2).sum().sqrt() / base.pow(2).sum().sqrt()
        return out

    def state_dict(self) -> dict[str, object]:
        return {"start": [self._start[i].cpu().clone() for i in self._order if i in self._start]}

    def load_state_dict(self, state: dict[str, object]) -> None:
        saved = list(state.get("start", []))  # type: ignore[arg-type]
        if saved:
            self._start = {
                i: t.to(self._start[i].device) if i in self._start else t
                for i, t in zip(self._order, saved, strict=True)
            }
