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

from trimtab.probes._update import FlatCopy, UpdateSnapshot
from trimtab.probes.base import Cost, Probe, StepContext


class AlignmentProbe(Probe):
    """Emits ``alignment/<group>`` and ``alignment/global``: cos(g_t, -(w_t - w_(t-1))).

    A reading every ``every`` steps (3 by default: the early-phase policy still gets
    three readings per 10-step period); each costs one flat copy of the weights on the
    step before (shared with the update-ratio probe) and a few operations over it. A
    skipped or rolled-back step in between leaves no reading rather than a misleading
    one.
    """

    name = "alignment"
    cost = Cost.MODERATE

    def __init__(self, *, every: int = 3) -> None:
        super().__init__(every=every)
        self._snapshot: UpdateSnapshot | None = None
        self._deltas: dict[str, FlatCopy] = {}
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
        """cos(g, -update) per group; overwrites the stored update (it is read once)."""
        out: dict[str, torch.Tensor] = {}
        totals = []
        grad_norms = ctx.grad_norms()
        for group in ctx.groups:
            minus = self._deltas.get(group.name)
            if minus is None or len(minus.views) != len(group.params):
                continue
            if group.name not in grad_norms:
                continue
            grads = [p.grad for p in group.params]
            if minus.flat.device != group.params[0].device:  # restored from a checkpoint
                minus = FlatCopy([v.to(group.params[0].device) for v in minus.views])
            pairs = list(zip(minus.views, grads, strict=True))
            with torch.no_grad():
                # tensors without a gradient this step leave their update out, as in g.d
                for view, grad in pairs:
                    if grad is None:
                        view.zero_()
                d_norm = minus.norm()
                present = [(v, g) for v, g in pairs if g is not None]
                torch._foreach_mul_([v for v, _ in present], [g for _, g in present])
                dot = minus.flat.sum()  # the flat buffer now holds g * (-update)
            g_norm = grad_norms[group.name]
            out[f"alignment/{group.name}"] = dot / (g_norm * d_norm).clamp_min(1e-30)
            totals.append((dot, g_norm, d_norm))
        if len(totals) == 1:
            out["alignment/global"] = next(iter(out.values()))
        elif totals:
            dot, g_sq, d_sq = torch.stack(
                [torch.stack([d, g.square(), n.square()]) for d, g, n in totals]
            ).sum(dim=0)
            out["alignment/global"] = dot / (g_sq * d_sq).sqrt().clamp_min(1e-30)
        return out

    def state_dict(self) -> dict[str, object]:
        return {
            "deltas": {k: [v.cpu().clone() for v in c.views] for k, c in self._deltas.items()},
            "delta_step": self._delta_step,
        }

    def load_state_dict(self, state: dict[str, object]) -> None:
        deltas = dict(state.get("deltas", {}))  # type: ignore[call-overload]
        self._deltas = {k: FlatCopy(v) for k, v in deltas.items() if v}
        step = state.get("delta_step")
        self._delta_step = None if step is None else int(step)  # type: ignore[arg-type]
