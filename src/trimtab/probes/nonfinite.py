"""Non-finite loss or gradients: the one signal that vetoes a step outright."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from trimtab.probes.base import Cost, Probe, StepContext


class NonFiniteProbe(Probe):
    """Emits ``nonfinite/any``: true (1.0) if the loss or any gradient is NaN or infinite.

    A NaN or inf anywhere in a gradient makes the global gradient norm non-finite, so
    the check reuses the shared norm instead of scanning every element again, and tests
    the sum of that norm and the loss: one non-finite term makes the sum non-finite (a
    norm so large the sum overflows is flagged too, which only errs on the safe side).
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
        total = ctx.global_grad_norm()
        if ctx.loss is not None:
            loss = ctx.loss.detach().float()
            total = loss if total is None else total.float() + loss
        if total is None:
            return {}
        # x - x is 0 for a finite x and NaN for inf or NaN, and only NaN differs from
        # itself: two element-wise ops, cheaper than isfinite's composite on one value.
        # A 0-dim bool tensor: the controller's transfer reads it as 1.0 or 0.0.
        zero_if_finite = total - total
        return {"nonfinite/any": zero_if_finite != zero_if_finite}
