"""Alignment of the new gradient with the previous update: the sign of the hypergradient.

If the gradient at w_t still points along the step just taken (cosine with the negative
update near +1), a larger step would have lowered the loss further: the learning rate
is too small. Near zero, the step size is about right; persistently negative, the step
overshoots. This is the quantity hypergradient descent (Baydin et al., 2018, "Online
Learning Rate Adaptation with Hypergradient Descent") follows, read here as a
normalised signal rather than applied as an update rule. Measured on a cadence: the
weights are copied before step t-1 and the cosine is read at step t.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from trimtab.probes._update import UpdateSnapshot, group_norm
from trimtab.probes.base import Cost, Probe, StepContext


class AlignmentProbe(Probe):
    """Emits ``alignment/<group>`` and ``alignment/global``: cos(g_t, -(w_t - w_(t-1))).

    A reading every ``every`` steps (3 by default: the early-phase policy still gets
    three readings per 10-step period); each costs one copy of the weights on the step
    before (shared with the update-ratio probe) and a fixed number of fused operations.
    A skipped or rolled-back step in between leaves no reading rather than a misleading
    one.
    """

    name = "alignment"
    cost = Cost.MODERATE

    def __init__(self, *, every: int = 3) -> None:
        super().__init__(every=every)
        self._snapshot: UpdateSnapshot | None = None
        self._deltas: dict[str, list[torch.Tensor]] = {}
        self._delta_step: int | None = None

    def due(self, step: int) -> bool:
        return step % self.every == 0 or (step + 1) % self.every == 0  # copies a step ahead

    def signals(self, groups: Sequence[str]) -> tuple[str, ...]:
        return ("alignment/global", *(f"alignment/{g}" for g in groups))

    def before_step(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        if self._delta_step == ctx.step - 1:
            out = self._read(ctx)
        self._deltas, self._delta_step = {}, None
        due = (ctx.step + 1) % self.every == 0
        self._snapshot = ctx.update_snapshot() if due else None
        return out

    def after_step(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        if self._snapshot is not None:
            self._deltas = self._snapshot.finish(ctx.groups)
            self._delta_step = ctx.step
        self._snapshot = None
        return {}

    def _read(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        totals = []
        grad_norms = ctx.grad_norms()
        for group in ctx.groups:
            deltas = self._deltas.get(group.name)
            if not deltas or len(deltas) != len(group.params) or group.name not in grad_norms:
                continue
            paired = zip(group.params, deltas, strict=True)
            pairs = [(p.grad, d) for p, d in paired if p.grad is not None]
            grads, minus = [g for g, _ in pairs], [d for _, d in pairs]
            if minus[0].device != grads[0].device:  # deltas restored from a checkpoint
                minus = [d.to(g.device) for g, d in pairs]
            g_norm, d_norm = grad_norms[group.name], group_norm(minus)
            cos = _cosine(grads, minus, g_norm, d_norm)
            out[f"alignment/{group.name}"] = cos
            totals.append(torch.stack([cos * g_norm * d_norm, g_norm.square(), d_norm.square()]))
        if totals:
            dot, g_sq, d_sq = torch.stack(totals).sum(dim=0)
            out["alignment/global"] = dot / (g_sq * d_sq).sqrt().clamp_min(1e-30)
        return out

    def state_dict(self) -> dict[str, object]:
        return {
            "deltas": {k: [t.cpu().clone() for t in v] for k, v in self._deltas.items()},
            "delta_step": self._delta_step,
        }

    def load_state_dict(self, state: dict[str, object]) -> None:
        self._deltas = dict(state.get("deltas", {}))  # type: ignore[arg-type]
        step = state.get("delta_step")
        self._delta_step = None if step is None else int(step)  # type: ignore[arg-type]


def _cosine(
    grads: list[torch.Tensor], minus: list[torch.Tensor], g_norm: torch.Tensor, d_norm: torch.Tensor
) -> torch.Tensor:
    """cos(g, d) from norms alone, overwriting ``minus``: a fixed number of fused ops.

    With d scaled to g's norm, g.d = (|g + d|^2 - |g - d|^2) / 4 (the polarization
    identity); equal norms keep the two terms of the same size, so the difference does
    not lose the cosine to rounding. A zero gradient or update gives 0.
    """
    with torch.no_grad():
        scale = torch.where(d_norm > 0, g_norm / d_norm, torch.zeros_like(d_norm))
        torch._foreach_mul_(minus, scale)
        torch._foreach_add_(minus, grads)
        plus = group_norm(minus)
        torch._foreach_sub_(minus, grads, alpha=2.0)
        diff = group_norm(minus)
    return (plus.square() - diff.square()) / (4 * g_norm.square()).clamp_min(1e-30)
