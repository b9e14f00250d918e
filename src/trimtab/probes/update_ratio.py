"""Update/weight ratio per group: how far one step moves the weights, relative to them.

Healthy training moves weights by roughly 1e-3 of their norm per step; ratios near 1e-1
mean the step is destroying what was learned, ratios near 1e-5 that nothing is learned.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from trimtab.probes.base import Cost, Probe, StepContext


class UpdateRatioProbe(Probe):
    """Emits ``update_ratio/<group>`` = ||w_after - w_before|| / ||w_before||.

    Copies the group's weights before a due step (hence its moderate cost and a cadence
    of 10 steps by default).
    """

    name = "update_ratio"
    cost = Cost.MODERATE

    def __init__(self, *, every: int = 10) -> None:
        super().__init__(every=every)
        self._before: dict[str, list[torch.Tensor]] = {}

    def signals(self, groups: Sequence[str]) -> tuple[str, ...]:
        return tuple(f"update_ratio/{g}" for g in groups)

    def before_step(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        self._before = {
            g.name: [p.detach().clone() for p in g.params] for g in ctx.groups if g.params
        }
        return {}

    def after_step(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for group in ctx.groups:
            before = self._before.get(group.name)
            if not before:
                continue
            after = [p.detach() for p in group.params]
            deltas = torch._foreach_sub(after, before)
            delta = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(deltas)))
            weight = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(before)))
            out[f"update_ratio/{group.name}"] = delta / weight.clamp_min(1e-12)
        self._before = {}
        return out
