"""Gradient statistics beyond the norm: an outlier score (a spike precursor), the cosine
between successive gradients (negative and persistent: bouncing across a valley) and a
secant curvature proxy ||g_t - g_(t-1)|| / ||w_t - w_(t-1)|| between expensive readings.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from trimtab import _checks
from trimtab.probes._ring import DeviceRing
from trimtab.probes.base import Cost, Probe, StepContext

_MAD_TO_SIGMA = 1.4826


def _flat(tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    return [t.detach() for t in tensors]


class GradStatsProbe(Probe):
    """Emits ``grad_stats/outlier_z`` every step and, every ``every`` steps,
    ``grad_stats/cosine`` and ``grad_stats/secant``.

    The outlier score is a robust z-score of log gradient norm against the last
    ``window`` steps (median and MAD, on the device). The cosine and secant need the
    gradient and weights of the step before, so the probe copies them one step ahead of
    each reading (memory: one extra copy of gradients and weights, on those steps only).
    """

    name = "grad_stats"
    cost = Cost.MODERATE

    def __init__(self, *, every: int = 10, window: int = 64) -> None:
        super().__init__(every=every)
        self.window = _checks.count("window", window, minimum=8)
        self._ring = DeviceRing(self.window)
        self._previous: tuple[list[torch.Tensor], list[torch.Tensor]] | None = None

    def due(self, step: int) -> bool:
        return True  # the outlier score runs every step; pairs only around the cadence

    def signals(self, groups: Sequence[str]) -> tuple[str, ...]:
        return ("grad_stats/outlier_z", "grad_stats/cosine", "grad_stats/secant")

    def before_step(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        norms = ctx.grad_norms()
        if not norms:
            return {}
        total = torch.linalg.vector_norm(torch.stack(list(norms.values())))
        log_norm = torch.log(total.clamp_min(1e-30))
        out: dict[str, torch.Tensor] = {}
        if self._ring.count >= 8:
            history = self._ring.values()
            centre = history.median()
            sigma = _MAD_TO_SIGMA * (history - centre).abs().median()
            out["grad_stats/outlier_z"] = (log_norm - centre) / sigma.clamp_min(1e-3)
        fallback = self._ring.values()[-1] if self._ring.count else log_norm.new_zeros(())
        self._ring.push(torch.where(torch.isfinite(log_norm), log_norm, fallback))
        params = [p for g in ctx.groups for p in g.params if p.grad is not None]
        grads = [p.grad for p in params]
        if self._previous is not None and ctx.step % self.every == 0:
            old_grads = [b.to(a.device) for a, b in zip(grads, self._previous[0], strict=True)]
            old_params = [q.to(p.device) for p, q in zip(params, self._previous[1], strict=True)]
            dot = sum(torch.sum(a * b) for a, b in zip(grads, old_grads, strict=True))
            cur = torch.sqrt(sum(torch.sum(a * a) for a in grads))
            old = torch.sqrt(sum(torch.sum(b * b) for b in old_grads))
            out["grad_stats/cosine"] = dot / (cur * old).clamp_min(1e-30)
            dg = torch.sqrt(
                sum(torch.sum((a - b) ** 2) for a, b in zip(grads, old_grads, strict=True))
            )
            dw = torch.sqrt(
                sum(
                    torch.sum((p.detach() - q) ** 2)
                    for p, q in zip(params, old_params, strict=True)
                )
            )
            out["grad_stats/secant"] = dg / dw.clamp_min(1e-30)
            self._previous = None
        if (ctx.step + 1) % self.every == 0:
            self._previous = (
                [g.detach().clone() for g in grads],
                [p.detach().clone() for p in params],
            )
        return out

    def state_dict(self) -> dict[str, object]:
        previous = None
        if self._previous is not None:
            previous = [[t.cpu().clone() for t in part] for part in self._previous]
        return {"ring": self._ring.state_dict(), "previous": previous}

    def load_state_dict(self, state: dict[str, object]) -> None:
        self._ring.load_state_dict(dict(state.get("ring", {})))  # type: ignore[arg-type]
        previous = state.get("previous")
        self._previous = (
            None
            if previous is None
            else (  # type: ignore[assignment]
                list(previous[0]),
                list(previous[1]),
            )
        )  # type: ignore[index]
