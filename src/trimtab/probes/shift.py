"""Distribution shift: a Page-Hinkley change detector on the per-batch loss and log
gradient norm, fed only by cheap signals and run entirely on the device (both streams in
one detector: on the CPU each small tensor op costs microseconds, and this probe runs
every step in the default set).

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
    """Page-Hinkley detectors on a tensor of streams, element-wise; ``update`` returns
    1.0 where an alarm fires this step, else 0.0.

    One call updates every stream with a handful of fused element-wise ops, so the two
    streams of the shift probe cost what one did. Works on tensors of any device (or CPU
    tensors made from floats in tests). A non-finite value leaves a stream's mean and
    deviation alone and cannot raise its alarm.
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
        x = x.detach().float()
        finite = torch.isfinite(x)
        if not self.state:
            zero = torch.zeros_like(x)
            # a stream whose first value is not finite starts from 0 (its mean would
            # otherwise stay NaN for good)
            self.state = {
                "mean": torch.where(finite, x, zero),
                "var": zero + 1e-12,
                "cum": zero.clone(),
                "low": zero.clone(),
            }
        s = self.state
        x = torch.where(finite, x, s["mean"])
        self.seen += 1
        cum = s["cum"]
        if self.seen > self.warmup:
            z = (x - s["mean"]) / s["var"].sqrt().clamp_min(1e-6)
            cum = cum + (z - self.delta)
        low = torch.minimum(s["low"], cum)
        alarm = (cum - low > self.threshold) & finite
        keep = ~alarm
        # on an alarm: re-baseline on the new level
        s["cum"] = cum * keep
        s["low"] = low * keep
        s["mean"] = torch.where(alarm, x, s["mean"] + self.alpha * (x - s["mean"]))
        s["var"] = s["var"] + self.alpha * ((x - s["mean"]) ** 2 - s["var"])
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
        # one detector over both streams: [loss, log gradient norm]
        self.detector = PageHinkley(threshold=threshold, delta=delta)

    def signals(self, groups: Sequence[str]) -> tuple[str, ...]:
        return ("shift/loss_alarm", "shift/grad_alarm")

    def settings(self) -> dict[str, object]:
        detector = self.detector
        return {**super().settings(), "threshold": detector.threshold, "delta": detector.delta}

    def before_step(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        norm = ctx.global_grad_norm()  # shared with the other probes, computed once
        if ctx.loss is None and norm is None:
            return {}
        # a missing stream reads as a non-finite value: it moves nothing and cannot alarm
        missing = float("nan")
        device = (norm if norm is not None else ctx.loss).device  # type: ignore[union-attr]
        loss = ctx.loss.detach().float().reshape(()) if ctx.loss is not None else missing
        log_norm = torch.log(norm.float().clamp_min(1e-30)) if norm is not None else missing
        values = torch.stack([torch.as_tensor(v, device=device) for v in (loss, log_norm)])
        alarms = self.detector.update(values)
        out = {}
        if ctx.loss is not None:
            out["shift/loss_alarm"] = alarms[0]
        if norm is not None:
            out["shift/grad_alarm"] = alarms[1]
        return out

    def state_dict(self) -> dict[str, object]:
        return {"detector": self.detector.state_dict()}

    def load_state_dict(self, state: dict[str, object]) -> None:
        if "detector" in state:
            self.detector.load_state_dict(dict(state["detector"]))  # type: ignore[arg-type]
            return
        # saved before the two streams shared one detector: stack the two states
        parts = [dict(state.get(k, {})) for k in ("loss", "grad")]  # type: ignore[arg-type]
        if all(p.get("state") for p in parts):
            stacked = {
                key: torch.stack([p["state"][key].reshape(()) for p in parts])  # type: ignore[index]
                for key in ("mean", "var", "cum", "low")
            }
            self.detector.load_state_dict({"state": stacked, "seen": parts[0].get("seen", 0)})
