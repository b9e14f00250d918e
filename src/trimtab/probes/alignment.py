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

from trimtab.probes.base import Cost, Probe, StepContext


class AlignmentProbe(Probe):
    """Emits ``alignment/<group>`` and ``alignment/global``: cos(g_t, -(w_t - w_(t-1))).

    A reading every ``every`` steps; each costs one copy of the weights (on the step
    before the reading) and a few fused reductions. A skipped or rolled-back step in
    between leaves no reading rather than a misleading one.
    """

    name = "alignment"
    cost = Cost.MODERATE

    def __init__(self, *, every: int = 2) -> None:
        super().__init__(every=every)
        self._before: dict[str, list[torch.Tensor]] = {}
        self._deltas: dict[str, list[torch.Tensor]] = {}
        self._delta_step: int | None = None

    def due(self, step: int) -> bool:
        return True  # copies one step ahead of each reading

    def signals(self, groups: Sequence[str]) -> tuple[str, ...]:
        return ("alignment/global", *(f"alignment/{g}" for g in groups))

    def before_step(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        if self._delta_step == ctx.step - 1:
            out = self._read(ctx)
        self._deltas, self._delta_step = {}, None
        if (ctx.step + 1) % self.every == 0:
            self._before = {
                g.name: [p.detach().clone() for p in g.params] for g in ctx.groups if g.params
            }
        return out

    def after_step(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        if self._before:
            for group in ctx.groups:
                before = self._before.get(group.name)
                if before:
                    # before - after = -(update): the direction a gradient agrees with
                    params = [p.detach() for p in group.params]
                    before = [b.to(p.device) for b, p in zip(before, params, strict=True)]
                    self._deltas[group.name] = torch._foreach_sub(before, params)
            self._delta_step = ctx.step
        self._before = {}
        return {}

    def _read(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        totals = []
        for group in ctx.groups:
            minus_update = self._deltas.get(group.name)
            if not minus_update:
                continue
            pairs = [
                (p.grad, d.to(p.grad.device))
                for p, d in zip(group.params, minus_update, strict=True)
                if p.grad is not None
            ]
            if not pairs:
                continue
            grads, deltas = [g for g, _ in pairs], [d for _, d in pairs]
            dot = torch.stack([torch.sum(g * d) for g, d in pairs]).sum()
            g_sq = torch.stack(torch._foreach_norm(grads)).square().sum()
            d_sq = torch.stack(torch._foreach_norm(deltas)).square().sum()
            out[f"alignment/{group.name}"] = dot / (g_sq * d_sq).sqrt().clamp_min(1e-30)
            totals.append((dot, g_sq, d_sq))
        if totals:
            dot = torch.stack([t[0] for t in totals]).sum()
            g_sq = torch.stack([t[1] for t in totals]).sum()
            d_sq = torch.stack([t[2] for t in totals]).sum()
            out["alignment/global"] = dot / (g_sq * d_sq).sqrt().clamp_min(1e-30)
        return out

    def state_dict(self) -> dict[str, object]:
        return {
            "before": {k: [t.cpu().clone() for t in v] for k, v in self._before.items()},
            "deltas": {k: [t.cpu().clone() for t in v] for k, v in self._deltas.items()},
            "delta_step": self._delta_step,
        }

    def load_state_dict(self, state: dict[str, object]) -> None:
        self._before = dict(state.get("before", {}))  # type: ignore[arg-type]
        self._deltas = dict(state.get("deltas", {}))  # type: ignore[arg-type]
        step = state.get("delta_step")
        self._delta_step = None if step is None else int(step)  # type: ignore[arg-type]
