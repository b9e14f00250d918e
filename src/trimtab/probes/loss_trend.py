"""Loss trend: EMAs, a windowed slope with a confidence band, a plateau verdict and the
loss's own noise level, all computed on the device from a ring buffer of batch losses.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from trimtab import _checks
from trimtab.probes._ring import DeviceRing
from trimtab.probes.base import Cost, Probe, StepContext

_T95_LARGE = 1.645  # one-sided 95 % normal quantile; windows are >= 16 points


class LossTrendProbe(Probe):
    """Emits ``loss_trend/{ema_short,ema_long,slope,band,noise,plateau}``.

    ``slope`` is the least-squares slope of the last ``window`` batch losses per step,
    ``band`` its one-sided 95 % half-width (from the residual spread), ``noise`` the
    residual standard deviation, and ``plateau`` is 1.0 when the band includes zero *and*
    is tight: the loss would move by less than ``tight`` of its level over the window.

    Args:
        window: batch losses in the slope fit (>= 16).
        short, long: EMA time constants in steps.
        tight: relative change over the window below which a flat fit is a plateau.
        fit_every: steps between slope fits (the EMAs and the window update every step).
    """

    name = "loss_trend"
    cost = Cost.CHEAP

    def __init__(
        self,
        *,
        every: int = 1,
        window: int = 64,
        short: int = 10,
        long: int = 100,
        tight: float = 0.02,
        fit_every: int = 10,
    ) -> None:
        super().__init__(every=every)
        self.fit_every = _checks.count("fit_every", fit_every)
        self.window = _checks.count("window", window, minimum=16)
        self.short = _checks.count("short", short)
        self.long = _checks.count("long", long)
        self.tight = _checks.positive("tight", tight)
        self._ring = DeviceRing(self.window)
        self._ema: dict[str, torch.Tensor] = {}

    def signals(self, groups: Sequence[str]) -> tuple[str, ...]:
        names = ("ema_short", "ema_long", "slope", "band", "noise", "plateau")
        return tuple(f"loss_trend/{n}" for n in names)

    def settings(self) -> dict[str, object]:
        return {
            **super().settings(),
            "window": self.window,
            "short": self.short,
            "long": self.long,
            "tight": self.tight,
            "fit_every": self.fit_every,
        }

    def before_step(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        if ctx.loss is None:
            return {}
        loss = ctx.loss.detach().float().reshape(())
        finite = torch.isfinite(loss)
        out = {}
        for key, span in (("ema_short", self.short), ("ema_long", self.long)):
            previous = self._ema.get(key)
            if previous is not None and previous.device != loss.device:
                previous = previous.to(loss.device)
            if previous is None:
                self._ema[key] = torch.where(finite, loss, torch.zeros_like(loss))
            else:
                updated = previous + (loss - previous) / span
                self._ema[key] = torch.where(finite, updated, previous)  # NaN never enters
            out[f"loss_trend/{key}"] = self._ema[key]
        self._ring.push(torch.where(finite, loss, self._ema["ema_short"]))
        if self._ring.count < 16 or ctx.step % self.fit_every:
            return out
        y = self._ring.values()
        n = y.numel()
        x = torch.arange(n, device=y.device, dtype=y.dtype)
        xc = x - x.mean()
        sxx = (xc * xc).sum()
        slope = (xc * (y - y.mean())).sum() / sxx
        residual = y - y.mean() - slope * xc
        noise = torch.sqrt((residual * residual).sum() / (n - 2))
        band = _T95_LARGE * noise / torch.sqrt(sxx)
        level = y.mean().abs().clamp_min(1e-12)
        flat = (slope.abs() <= band) & (band * n <= self.tight * level)
        out.update(
            {
                "loss_trend/slope": slope,
                "loss_trend/band": band,
                "loss_trend/noise": noise,
                "loss_trend/plateau": flat.float(),
            }
        )
        return out

    def state_dict(self) -> dict[str, object]:
        return {
            "ring": self._ring.state_dict(),
            "ema": {k: v.detach().cpu().clone() for k, v in self._ema.items()},
        }

    def load_state_dict(self, state: dict[str, object]) -> None:
        self._ring.load_state_dict(dict(state.get("ring", {})))  # type: ignore[arg-type]
        self._ema = {k: v.clone() for k, v in dict(state.get("ema", {})).items()}  # type: ignore[union-attr]
