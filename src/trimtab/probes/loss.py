"""The training loss as the loop computed it: free to read, the first sign of trouble."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from trimtab.probes.base import Cost, Probe, StepContext


class LossProbe(Probe):
    """Emits ``loss/train``: the (micro-batch averaged) loss of this step's batch."""

    name = "loss"
    cost = Cost.FREE

    def signals(self, groups: Sequence[str]) -> tuple[str, ...]:
        return ("loss/train",)

    def before_step(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        if ctx.loss is None:
            return {}
        return {"loss/train": ctx.loss.detach().float()}
