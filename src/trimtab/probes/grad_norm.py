"""Gradient norms, global and per group: the scale of the step before it is taken."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from trimtab.probes.base import Cost, Probe, StepContext


class GradNormProbe(Probe):
    """Emits ``grad_norm/global`` and ``grad_norm/<group>`` (L2 norms)."""

    name = "grad_norm"
    cost = Cost.CHEAP

    def signals(self, groups: Sequence[str]) -> tuple[str, ...]:
        return ("grad_norm/global", *(f"grad_norm/{g}" for g in groups))

    def before_step(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        norms = ctx.grad_norms()
        if not norms:
            return {}
        out = {f"grad_norm/{name}": norm for name, norm in norms.items()}
        out["grad_norm/global"] = ctx.global_grad_norm()  # type: ignore[assignment]
        return out
