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

    The ratio is a weight-matrix notion: in a group that has matrices (any tensor of two
    or more dimensions: linear and conv weights, embeddings) only those are measured.
    A bias or a norm gain beside them carries little of the group's norm and says
    nothing of how far the layer's map moved; alone it can read large (a single drawn
    bias of 0.01 beside a zero-initialised readout matrix). A group with no matrix at all
    (biases, norm gains) is measured over its vectors.

    Tensors that were all zero at the first reading (a zero-initialised readout matrix,
    a LoRA ``B``) are left out of both norms for the rest of the run: any step is large
    next to their own small norm, and they have no initialisation a large step could
    wreck. A group whose every measured tensor started at zero gets an infinite ratio
    instead (the update over its zero norm, as measured), not a huge finite one:
    readers can tell a zero-initialised group from a step that is far too large.

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
        # group -> per tensor: measured (a matrix, or any tensor of a group without one,
        # that was not all zero at the first reading; all of those candidates when every
        # one was zero, so the ratio reads inf)
        self._measured: dict[str, torch.Tensor] = {}

    def due(self, step: int) -> bool:
        return step == 0 or (step + 1) % self.every == 0

    def signals(self, groups: Sequence[str]) -> tuple[str, ...]:
        return tuple(f"update_ratio/{g}" for g in groups)

    def before_step(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        self._snapshot = ctx.update_snapshot()
        self._weights = self._snapshot.weight_norms()
        for name, norms in self._weights.items():
            known = self._measured.get(name)
            if known is None or len(known) != len(norms):  # decided once per group
                params = next(g.params for g in ctx.groups if g.name == name)
                self._measured[name] = _measured(norms > 0, [p.dim() >= 2 for p in params])
            elif known.device != norms.device:  # loaded from a checkpoint
                self._measured[name] = known.to(norms.device)
        return {}

    def after_step(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        snapshot, self._snapshot = self._snapshot, None
        weights, self._weights = self._weights, {}
        if snapshot is None:
            return {}
        minus_update = snapshot.finish(ctx.groups)
        out = {}
        for name, norms in weights.items():
            if name not in minus_update:
                continue
            updates = minus_update[name].tensor_norms()
            keep = self._measured[name]
            ratio = (updates.square() * keep).sum().sqrt() / (norms.square() * keep).sum().sqrt()
            out[f"update_ratio/{name}"] = ratio
        return out

    def state_dict(self) -> dict[str, object]:
        return {"initialised": {k: v.detach().cpu().clone() for k, v in self._measured.items()}}

    def load_state_dict(self, state: dict[str, object]) -> None:
        saved = state.get("initialised", {})  # absent in states saved before it existed
        # the saved mask as it is (a checkpoint from before matrices-only keeps measuring
        # what it measured); an all-false one (never saved so) would read 0/0
        self._measured = {}
        for k, v in dict(saved).items():  # type: ignore[call-overload]
            mask = torch.as_tensor(v, dtype=torch.bool)
            self._measured[k] = torch.where(mask.any(), mask, torch.ones_like(mask))


def _measured(initialised: torch.Tensor, matrices: Sequence[bool]) -> torch.Tensor:
    """The tensors a group's ratio is measured over: its matrices (every tensor, when it
    has none), those of them initialised, or all of them when none was (no host sync)."""
    wanted = matrices if any(matrices) else [True] * len(matrices)
    candidates = torch.tensor(wanted, device=initialised.device)
    kept = initialised & candidates
    return torch.where(kept.any(), kept, candidates)
