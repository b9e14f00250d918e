"""Distribution shift: a Page-Hinkley change detector on the per-batch loss and log
gradient norm, fed only by cheap signals and run entirely on the device.

Each stream is standardised by its own slow EMA mean and deviation (so one threshold
fits any loss scale), then the Page-Hinkley statistic accumulates upward departures
beyond ``delta``; an alarm fires when it rises more than ``threshold`` above its running
minimum, after which the detector re-baselines (Page, 1954; Hinkley, 1971).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from trimtab import _checks
from trimtab.probes.base import Cost, Probe, StepContext


class PageHinkley:
    """One stream's detector; ``update`` returns 1.0 on an alarm step, else 0.0.

    Works on 0-dim tensors of any device (or CPU tensors made from floats in tests).
    """

    def __init__(
        self, *, delta: float = 0.5, threshold: float = 12.0, alpha: float = 0.02, warmup: int = 30
    ) -> None:
        self.delta = _checks.positive("delta", delta)
        self.threshold = _checks.positive("threshold", threshold)
        self.alpha = _checks.in_open_unit("alpha", alpha)
        self.warmup = _checks.count("warmup", warmup)
        self.state: dict[str, torch.Tensor] = {}
        self.seen = 0

    def update(self, x: torch.Tensor) -> torch.Tensor:
        x = x.detach().float().reshape(())
        if not self.state:
            zero = torch.zeros_like(x)
            self.state = {
                "mean": x.clone(),
                "var": zero + 1e-12,
                "cum": zero.clone(),
                "low": zero.clone(),
            }
        s = self.state
        finite = torch.isfinite(x)
        x = torch.where(finite, x, s["mean"])
        z = (x - s["mean"]) / s["var"].sqrt().clamp_min(1e-6)
        self.seen += 1
        active = self.seen > self.warmup
        cum = s["cum"] + (z - self.delta) if active else s["cum"]
        low = torch.minimum(s["low"], cum)
        alarm = (cum - low > self.threshold) & finite
        # on an alarm: re-baseline on the new level
        s["cum"] = torch.where(alarm, torch.zeros_like(cum), cum)
        s["low"] = torch.where(alarm, torch.zeros_like(low), low)
        s["mean"] = torch.where(alarm, x, s["mean"] + self.alpha * (x - s["mean"]))
        deviation = (x - s["mean"]) ** 2
        s["var"] = s["var"] + self.alpha * (deviation - s["var"])
        return alarm.float()

    def state_dict(self) -> dict[str, object]:
        return {"state": {k: v.cpu().clone() for k, v in self.state.items()}, "seen": self.seen}

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.state = dict(state.get("state", {}))  # type: ignore[arg-type]
        self.seen = int(state.get("seen", 0))  # type: ignore[arg-type]


class ShiftProbe(Probe):
    """Emits ``shift/loss_alarm`` and ``shift/grad_alarm`` (1.0 on the step of an alarm)."""

    name = "shift"
    cost = Cost.CHEAP

    def __init__(self, *, every: int = 1, threshold: float = 12.0, delta: float = 0.5) -> None:
        super().__init__(every=every)
        self.loss = PageHinkley(threshold=threshold, delta=delta)
        self.grad = PageHinkley(threshold=threshold, delta=delta)

    def signals(self, groups: Sequence[str]) -> tuple[str, ...]:
        return ("shift/loss_alarm", "shift/grad_alarm")

    def settings(self) -> dict[str, object]:
        return {**super().settings(), "threshold": self.loss.threshold, "delta": self.loss.delta}

    def before_step(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        out = {}
        if ctx.loss is not None:
            out["shift/loss_alarm"] = self.loss.update(ctx.loss)
        norms = ctx.grad_norms()
        if norms:
            total = torch.linalg.vector_norm(torch.stack(list(norms.values())))
            out["shift/grad_alarm"] = self.grad.update(torch.log(total.clamp_min(1e-30)))
        return out

    def state_dict(self) -> dict[str, object]:
        return {"loss": self.loss.state_dict(), "grad": self.grad.state_dict()}

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.loss.load_state_dict(dict(state.get("loss", {})))  # type: ignore[arg-type]
        self.grad.load_state_dict(dict(state.get("grad", {})))  # type: ignore[arg-type]
