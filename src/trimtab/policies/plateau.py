"""Plateau: when a validation metric stops improving, nudge the learning rate down.

"Stopped improving" is a statistical statement, not a single comparison: over the last
``window`` observations the least-squares slope's one-sided 95 % bound must fail to show
an improvement of at least ``min_rel_improvement`` of the metric per observation.
"""

from __future__ import annotations

from typing import Any, Literal

from trimtab import _checks, stats
from trimtab.errors import ConfigError
from trimtab.policies.base import Policy, PolicyState, PolicyView
from trimtab.types import Action, Knob, Priority, Proposal


class Plateau(Policy):
    """Cut the LR by ``factor`` on a flat validation trend; optionally stop after a while.

    Args:
        metric: the ``observe()`` keyword to watch.
        mode: ``"min"`` for losses, ``"max"`` for accuracies.
        window: observations in the trend test (>= 3).
        factor: LR factor applied on a plateau, in (0, 1).
        cooldown: new observations to wait after a cut before testing again.
        min_rel_improvement: improvement per observation, relative to the metric's mean,
            that counts as progress.
        stop_patience: stop the run after this many observations without a new best
            (``None``: never stop).
    """

    name = "plateau"

    def __init__(
        self,
        *,
        metric: str = "val_loss",
        mode: Literal["min", "max"] = "min",
        window: int = 5,
        factor: float = 0.5,
        cooldown: int = 3,
        min_rel_improvement: float = 1e-3,
        stop_patience: int | None = None,
    ) -> None:
        if not isinstance(metric, str) or not metric:
            raise ConfigError(f"metric must be a non-empty string, got {metric!r}")
        if mode not in ("min", "max"):
            raise ConfigError(f"mode must be 'min' or 'max', got {mode!r}")
        self.metric = metric
        self.mode = mode
        self.window = _checks.count("window", window, minimum=3)
        self.factor = _checks.in_open_unit("factor", factor)
        self.cooldown = _checks.count("cooldown", cooldown, minimum=0)
        self.min_rel_improvement = _checks.real("min_rel_improvement", min_rel_improvement)
        if self.min_rel_improvement < 0:
            raise ConfigError(f"min_rel_improvement must be >= 0, got {min_rel_improvement}")
        self.stop_patience = (
            None if stop_patience is None else _checks.count("stop_patience", stop_patience)
        )

    def settings(self) -> dict[str, Any]:
        keys = [
            "metric",
            "mode",
            "window",
            "factor",
            "cooldown",
            "min_rel_improvement",
            "stop_patience",
        ]
        return {k: getattr(self, k) for k in keys}

    def initial_state(self) -> PolicyState:
        return {"seen": 0, "since_cut": 0, "best": None, "since_best": 0}

    def propose(self, view: PolicyView, state: PolicyState) -> tuple[list[Proposal], PolicyState]:
        history = view.signals.observations(self.metric)
        total = view.signals.observation_count(self.metric)
        if total == state["seen"]:
            return [], state
        state = {**state, "seen": total, "since_cut": state["since_cut"] + 1}
        if not history or view.signals.latest_observation(self.metric) != history[-1]:
            return [], state  # the newest value was NaN/inf: nothing to judge on
        sign = 1.0 if self.mode == "min" else -1.0
        latest = sign * history[-1][1]
        if state["best"] is None or latest < state["best"]:
            state.update(best=latest, since_best=0)
        else:
            state["since_best"] += 1

        if self.stop_patience is not None and state["since_best"] >= self.stop_patience:
            why = (
                f"{self.metric} has not improved on its best {sign * state['best']:.4g} "
                f"for {state['since_best']} observations (patience {self.stop_patience})"
            )
            stop = Proposal(
                policy=self.name,
                reason=why,
                priority=Priority.SCHEDULE,
                action=Action.STOP,
                signals={self.metric: history[-1][1], "best": sign * state["best"]},
            )
            return [stop], state

        if len(history) < self.window or state["since_cut"] <= self.cooldown:
            return [], state
        values = [sign * v for _, v in history[-self.window :]]
        fit = stats.trend(values)
        needed = -self.min_rel_improvement * abs(fit.mean)
        if fit.upper < needed:  # significantly improving
            return [], state
        state["since_cut"] = 0
        slope, low, high = sign * fit.slope, sign * fit.lower, sign * fit.upper
        low, high = min(low, high), max(low, high)
        direction = "falling" if self.mode == "min" else "rising"
        why = (
            f"{self.metric} is not significantly {direction} over the last {fit.n} "
            f"observations: slope {slope:+.4g}/obs (95% band {low:+.4g} to {high:+.4g}), "
            f"progress needed {abs(needed):.3g}/obs ({self.min_rel_improvement:g} of the mean "
            f"{sign * fit.mean:.4g}); lr x{self.factor}"
        )
        evidence = {
            self.metric: history[-1][1],
            "slope": slope,
            "band": fit.halfwidth,
            "mean": sign * fit.mean,
        }
        cut = Proposal(
            policy=self.name,
            reason=why,
            priority=Priority.SCHEDULE,
            knob=Knob.LR,
            factor=self.factor,
            signals=evidence,
        )
        return [cut], state
