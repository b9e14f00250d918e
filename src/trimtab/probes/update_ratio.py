"""Update/weight ratio per group: how far one step moves the weights, relative to them.

Healthy training moves weights by roughly 1e-3 of their norm per step; ratios near 1e-1
mean the step is destroying what was learned, ratios near 1e-5 that nothing is learned.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from trimtab.probes._update import UpdateSnapshot
from trimtab.probes.base import Cost, Probe, StepContext


class UpdateRatioProbe(Probe):
    """Emits ``update_ratio/<group>`` = ||w_after - w_before|| / ||w_before||.

    A group whose weights are all zero before the step gets an infinite ratio (any
    update is infinitely large next to nothing), not a huge finite one: readers can
    tell a zero-initialised group from a step that is far too large.

    Measures the very first update (a learning rate 100x too large shows at once) and
    then the update of every ``every``-th step, the one just before steps ``every``,
    ``2 every``, ...: the alignment probe copies the weights on those steps too (its
    cadence divides this one by default), so the two share one copy of the weights.
    """

    name = "update_ratio"
    cost = Cost.MODERATE

    def __init__(self, *, every: int = 9) -> None:
        super().__init__(every=every)
        self._snapshot: UpdateSnapshot | None = None
        self._weights: dict[str, torch.Tensor] = {}

    def due(self, step: int) -> bool:
        return step == 0 or (step + 1) % self.every == 0

    def signals(self, groups: Sequence[str]) -> tuple[str, ...]:
        return tuple(f"update_ratio/{g}" for g in groups)

    def before_step(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        self._snapshot = ctx.update_snapshot()
        self._weights = self._snapshot.weight_norms()
        return {}

    def after_step(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        snapshot, self._snapshot = self._snapshot, None
        weights, self._weights = self._weights, {}
        if snapshot is None:
            return {}
        minus_update = snapshot.finish(ctx.groups)
        return {
            f"update_ratio/{name}": minus_update[name].norm() / weight
            for name, weight in weights.items()
            if name in minus_update
        }
