"""Non-finite loss or gradients: the one signal that vetoes a step outright."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from trimtab.probes.base import Cost, Probe, StepContext


class NonFiniteProbe(Probe):
    """Emits ``nonfinite/any``: 1.0 if the loss or any gradient is NaN or infinite.

    A NaN or inf anywhere in a gradient makes that group's norm non-finite, so the check
    reuses the shared gradient norms instead of scanning every element again.
    """

    name = "nonfinite"
    cost = Cost.FREE

    def __init__(self, *, every: int = 1) -> None:
        if every != 1:
            from trimtab.errors import ConfigError

            raise ConfigError(
                f"the nonfinite probe must run every step (every=1), got every={every}: "
                "a skipped check could let a NaN reach the weights"
            )
        super().__init__(every=1)

    def signals(self, groups: Sequence[str]) -> tuple[str, ...]:
        return ("nonfinite/any",)

    def before_step(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        checks = list(ctx.grad_norms().values())
        if ctx.loss is not None:
            checks.append(ctx.loss.detach().float())
        if not checks:
            return {}
        finite = torch.isfinite(torch.stack([c.float() for c in checks])).all()
        return {"nonfinite/any": (~finite).float()}
