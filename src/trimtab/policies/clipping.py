"""Clipping: the clip threshold follows the run's own gradient norms; chronic clipping
means the learning rate, not the threshold, is wrong.

A fixed ``max_grad_norm`` is right for one phase of a run at best: early gradients are
large, late ones small, so a threshold tuned for one clips every step or never in the
other. This policy keeps each group's threshold near a high percentile of its recent
gradient norms (``quantile`` x ``headroom``), so clipping catches the outliers that
precede spikes and nothing else. It moves the threshold only when it is off by more
than ``tolerance`` (hysteresis), down as a stability change and up as a recovery.

If clipping still fires on most of the last ``period`` steps although the threshold
is at or above the norms' own history, the norms have outgrown it: every update is
being rescaled, which only hides a step that is too large. Then the learning rate is
cut instead and the threshold is left where it is.

Clipping happens only where the run clips: ``Regime(..., max_grad_norm=...)``.
"""

from __future__ import annotations

import math
from typing import Any

from trimtab import _checks, stats
from trimtab.errors import ConfigError
from trimtab.policies.base import Policy, PolicyState, PolicyView
from trimtab.types import Knob, Priority, Proposal


class Clipping(Policy):
    """Keep each group's clip threshold at a percentile of its gradient norms.

    Args:
        period: steps between decisions; also the "recent" stretch whose clip rate counts.
        window: gradient norms of history the percentile is taken over.
        quantile: percentile of that history the threshold follows, in (0, 1).
        headroom: threshold = quantile x headroom (>= 1).
        tolerance: the threshold moves only when off its target by more than this factor.
        most: clip rate over the recent stretch above which the LR is cut instead.
        lr_factor: that LR cut, in (0, 1).
    """

    name = "clipping"
    knobs = (Knob.MAX_GRAD_NORM,)
    requires = ("grad_norm",)

    def __init__(
        self,
        *,
        period: int = 20,
        window: int = 200,
        quantile: float = 0.9,
        headroom: float = 1.5,
        tolerance: float = 1.5,
        most: float = 0.5,
        lr_factor: float = 0.5,
    ) -> None:
        self.period = _checks.count("period", period)
        self.window = _checks.count("window", window, minimum=2)
        if self.window <= self.period:
            raise ConfigError(f"window ({window}) must be longer than period ({period})")
        self.quantile = _checks.in_open_unit("quantile", quantile)
        self.headroom = _checks.positive("headroom", headroom)
        if self.headroom < 1.0:
            raise ConfigError(f"headroom must be >= 1, got {headroom}")
        self.tolerance = _checks.positive("tolerance", tolerance)
        if self.tolerance <= 1.0:
            raise ConfigError(f"tolerance must be > 1, got {tolerance}")
        self.most = _checks.in_open_unit("most", most)
        self.lr_factor = _checks.in_open_unit("lr_factor", lr_factor)

    def settings(self) -> dict[str, Any]:
        keys = ["period", "window", "quantile", "headroom", "tolerance", "most", "lr_factor"]
        return {k: getattr(self, k) for k in keys}

    def initial_state(self) -> PolicyState:
        return {"norms": {}}

    def propose(self, view: PolicyView, state: PolicyState) -> tuple[list[Proposal], PolicyState]:
        norms = {g: list(v) for g, v in state["norms"].items()}
        for group in view.groups:
            reading = view.signals.fresh(f"grad_norm/{group}", view.step)
            if reading is not None and math.isfinite(reading):
                norms[group] = [*norms.get(group, []), reading][-self.window :]
        state = {"norms": norms}
        if view.step == 0 or view.step % self.period:
            return [], state
        proposals = []
        for group in view.groups:
            if (Knob.MAX_GRAD_NORM, group) not in view.bases:
                continue  # this run does not clip
            made = self._decide(view, group, norms.get(group, []))
            if made is not None:
                proposals.append(made)
        return proposals, state

    def _decide(self, view: PolicyView, group: str, norms: list[float]) -> Proposal | None:
        recent, history = norms[-self.period :], norms[: -self.period]
        if len(history) < self.period:
            return None
        base = view.base(Knob.MAX_GRAD_NORM, group)
        current = view.multiplier(Knob.MAX_GRAD_NORM, group)
        threshold = base * current
        level = stats.quantile(history, self.quantile)
        rate = sum(n > threshold for n in recent) / len(recent)
        evidence = {
            f"grad_norm/{group}": recent[-1],
            "threshold": threshold,
            "clip_rate": rate,
            f"q{round(100 * self.quantile)}": level,
        }
        if rate > self.most and threshold >= level:
            return Proposal(
                policy=self.name,
                reason=(
                    f"clipping fired on {rate:.0%} of the last {len(recent)} steps although "
                    f"the threshold {threshold:.3g} is above the norms' own "
                    f"{self.quantile:.0%} level {level:.3g}: the gradients outgrew it and "
                    f"every update is being rescaled, so the step is too large; "
                    f"lr x{self.lr_factor:g}"
                ),
                priority=Priority.STABILITY,
                knob=Knob.LR,
                group=group,
                factor=self.lr_factor,
                signals=evidence,
            )
        target = level * self.headroom
        if abs(math.log(target / threshold)) <= math.log(self.tolerance):
            return None
        down = target < threshold
        return Proposal(
            policy=self.name,
            reason=(
                f"clip threshold {threshold:.3g} is {'above' if down else 'below'} "
                f"{self.headroom:g} x the {self.quantile:.0%} level {level:.3g} of the last "
                f"{len(history)} gradient norms (clip rate {rate:.0%}); moving it to "
                f"{target:.3g} so that only outliers are clipped"
            ),
            priority=Priority.STABILITY if down else Priority.RECOVERY,
            knob=Knob.MAX_GRAD_NORM,
            group=group,
            target=target / base,
            signals=evidence,
        )
