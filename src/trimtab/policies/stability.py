"""Stability: keep lr x sharpness below the optimizer's stability threshold, with a margin.

The ``curvature`` probe reads the top Hessian eigenvalue lambda (of the preconditioned
Hessian for Adam) and the optimizer's stability coefficient c (2 for GD, 2 + 2 beta for
heavy ball, (2 + 2 beta1) / (1 - beta1) = 38 for Adam at beta1 = 0.9); ``curvature/ratio``
is lr x lambda / c at the user's LR. A step is stable while that ratio, at the
*effective* LR (the user's LR times the group's multiplier), stays below 1. Beyond
``margin`` of it, this policy cuts the group's LR to ``aim`` x margin of the threshold,
by at most ``max_cut`` per decision; far below it (under ``restore_below``) it gives LR
back towards the user's value, by at most ``restore_factor`` per decision and never
beyond the level that would cross ``aim`` x margin. The gap between ``margin`` and
``restore_below`` is the hysteresis.

Exact readings are expensive (``iterations`` Hessian-vector products each), so the
probe runs every ``every`` steps. Between them the policy reads the secant proxy
``grad_stats/secant`` = |g_t - g_(t-1)| / |w_t - w_(t-1)|, a cheap directional
curvature. It is calibrated against the last exact reading: at each exact reading the
scale k = lambda / s (s the median of the last ``secant_window`` secants) is kept, and
a later median s' stands for lambda ~ k s'. The proxy only ever *cuts* (it is a lower,
noisier estimate and must not talk the policy into a raise); restores wait for an
exact reading. The proxy needs three secants at least and cuts only above
``secant_tolerance`` x ``margin``, so secant noise alone does not cut.

Restores give back only this policy's own cuts (the arbiter's record of the factors it
accepted from this policy, so a clamped or refused cut is not counted), never another
policy's (a plateau cut). It may still give its own cut back once another
policy's cut has made room under the threshold: the constraint is then slack.

Without ``regime.step(closure=...)`` the curvature probe emits nothing and this policy
does nothing; it says so once, as an event, after ``absent_after`` steps.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

from trimtab import _checks
from trimtab.errors import ConfigError
from trimtab.policies.base import Policy, PolicyState, PolicyView
from trimtab.types import Action, Knob, Priority, Proposal


class Stability(Policy):
    """Cut a group's LR when lr x sharpness nears the stability threshold; restore far below.

    Args:
        margin: share of the stability threshold that triggers a cut, in (0, 1).
        aim: a cut brings the ratio to ``aim`` x ``margin``, in (0, 1].
        restore_below: ratio (at the effective LR) under which LR is given back.
        max_cut: smallest LR factor of one cut, in (0, 1).
        restore_factor: largest LR factor of one restore (> 1).
        use_secant: also cut on the calibrated secant proxy between exact readings.
        secant_window: recent secants whose median the proxy uses.
        secant_tolerance: the proxy cuts only above ``margin`` x this (it is noisier
            than an exact reading, and a spurious cut would be undone at the next one).
        absent_after: steps without any curvature reading before the one note that the
            signal is absent.
    """

    name = "stability"
    requires = ("curvature", "grad_stats")
    adds_probes = True

    def __init__(
        self,
        *,
        margin: float = 0.8,
        aim: float = 0.9,
        restore_below: float = 0.4,
        max_cut: float = 0.25,
        restore_factor: float = 1.25,
        use_secant: bool = True,
        secant_window: int = 5,
        secant_tolerance: float = 1.25,
        absent_after: int = 200,
    ) -> None:
        self.margin = _checks.in_open_unit("margin", margin)
        self.aim = _checks.positive("aim", aim)
        if self.aim > 1.0:
            raise ConfigError(f"aim must be in (0, 1], got {aim}")
        self.restore_below = _checks.positive("restore_below", restore_below)
        if self.restore_below >= self.aim * self.margin:
            raise ConfigError(
                f"restore_below ({restore_below}) must be below aim x margin "
                f"({self.aim * self.margin:.3g}), or restores and cuts would alternate"
            )
        self.max_cut = _checks.in_open_unit("max_cut", max_cut)
        self.restore_factor = _checks.positive("restore_factor", restore_factor)
        if self.restore_factor <= 1.0:
            raise ConfigError(f"restore_factor must be > 1, got {restore_factor}")
        self.use_secant = bool(use_secant)
        self.secant_window = _checks.count("secant_window", secant_window)
        self.secant_tolerance = _checks.positive("secant_tolerance", secant_tolerance)
        if self.secant_tolerance < 1.0:
            raise ConfigError(f"secant_tolerance must be >= 1, got {secant_tolerance}")
        self.absent_after = _checks.count("absent_after", absent_after)

    def settings(self) -> dict[str, Any]:
        keys = [
            "margin",
            "aim",
            "restore_below",
            "max_cut",
            "restore_factor",
            "use_secant",
            "secant_window",
            "secant_tolerance",
            "absent_after",
        ]
        return {k: getattr(self, k) for k in keys}

    def initial_state(self) -> PolicyState:
        return {
            "exact": None,  # last exact {"lambda", "coefficient", "ratio", "step"}
            "scale": None,  # lambda / secant at the last exact reading
            "secants": [],  # the last ``secant_window`` secant readings
            "noted": False,
        }

    def propose(self, view: PolicyView, state: PolicyState) -> tuple[list[Proposal], PolicyState]:
        state = {**state, "secants": list(state["secants"])}
        state.pop("levels", None)  # checkpoints before the arbiter kept this record
        signals = view.signals
        lam = signals.fresh("curvature/lambda", view.step)
        coefficient = signals.fresh("curvature/coefficient", view.step)
        ratio = signals.fresh("curvature/ratio", view.step)
        secant = signals.fresh("grad_stats/secant", view.step)
        if secant is not None and (not math.isfinite(secant) or secant <= 0):
            secant = None
        if secant is not None:
            state["secants"] = [*state["secants"], secant][-self.secant_window :]
        if lam is not None and coefficient is not None and ratio is not None:
            if not all(math.isfinite(v) for v in (lam, coefficient, ratio)) or lam <= 0:
                return [], state
            if state["secants"]:
                state["scale"] = lam / statistics.median(state["secants"])
            state["exact"] = {"lambda": lam, "coefficient": coefficient, "ratio": ratio}
            return self._decide(view, state, ratio, lam, "exact", exact=True), state
        if state["exact"] is None:
            if not state["noted"] and view.step >= self.absent_after:
                state["noted"] = True
                return [self._absent(view)], state
            return [], state
        if secant is None or not self.use_secant or state["scale"] is None:
            return [], state
        if len(state["secants"]) < min(3, self.secant_window):
            return [], state
        exact = state["exact"]
        estimate = state["scale"] * statistics.median(state["secants"])
        proxy_ratio = exact["ratio"] * estimate / exact["lambda"]
        return self._decide(view, state, proxy_ratio, estimate, "secant", exact=False), state

    def _decide(
        self,
        view: PolicyView,
        state: PolicyState,
        ratio: float,
        lam: float,
        source: str,
        *,
        exact: bool,
    ) -> list[Proposal]:
        proposals = []
        aim = self.aim * self.margin
        trigger = self.margin if exact else self.margin * self.secant_tolerance
        for group in view.groups:
            level = view.multiplier(Knob.LR, group)
            own = view.own_factor(self.name, Knob.LR, group)
            effective = ratio * level
            evidence = {
                "sharpness": lam,
                "ratio": effective,
                "threshold_share": self.margin,
                "exact": 1.0 if exact else 0.0,
            }
            if effective > trigger:
                factor = max(aim / effective, self.max_cut)
                proposals.append(
                    Proposal(
                        policy=self.name,
                        reason=(
                            f"lr x sharpness is {effective:.0%} of the stability threshold "
                            f"({source} sharpness {lam:.4g}), above the {self.margin:.0%} "
                            f"margin; lr x{factor:.3g} to aim at {aim:.0%}"
                        ),
                        priority=Priority.STABILITY,
                        knob=Knob.LR,
                        group=group,
                        factor=factor,
                        signals=evidence,
                    )
                )
            elif exact and effective < self.restore_below and own < 1.0:
                factor = min(
                    self.restore_factor,
                    1.0 / own,
                    aim / effective if effective > 0 else math.inf,
                )
                if factor <= 1.0 + 1e-9:
                    continue
                proposals.append(
                    Proposal(
                        policy=self.name,
                        reason=(
                            f"lr x sharpness is {effective:.0%} of the stability threshold "
                            f"(exact sharpness {lam:.4g}), far below the {self.restore_below:.0%} "
                            f"restore line while this policy's cuts hold the LR at {own:.3g} "
                            f"of the user's; lr x{factor:.3g}"
                        ),
                        priority=Priority.RECOVERY,
                        knob=Knob.LR,
                        group=group,
                        factor=factor,
                        signals=evidence,
                    )
                )
        return proposals

    def _absent(self, view: PolicyView) -> Proposal:
        return Proposal(
            policy=self.name,
            reason=(
                f"no curvature reading in {view.step} steps: the curvature probe needs "
                "regime.step(closure=...), a function recomputing the loss on the batch; "
                "the stability policy does nothing without it"
            ),
            priority=Priority.STABILITY,
            action=Action.VERDICT,
            signals={"steps_without_curvature": float(view.step)},
        )
