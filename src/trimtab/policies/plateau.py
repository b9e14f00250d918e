"""Plateau: when a validation metric stops improving, nudge the learning rate.

"Stopped improving" is a statistical statement, not a single comparison: over the last
``window`` observations the least-squares slope's one-sided 95 % bound must fail to show
an improvement of at least ``min_rel_improvement`` of the metric per observation.

Down by default. But a flat metric while the gradient still agrees with the previous
update (``alignment/global`` above ``raise_above``) means the steps are too small, not
too large: then the policy tries a provisional raise instead, keeps it if the next
observation is no worse than the last one, and reverts it otherwise.
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
        raise_above: mean ``alignment/global`` above which a plateau tries a raise.
        raise_factor: LR factor of that provisional raise.
        patience: observations without a new best before a flat trend counts: a curve
            still setting new bests while it bends fast has a wide band around a linear
            fit (the residuals are curvature, not noise), which is no plateau.
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
        raise_above: float = 0.1,
        raise_factor: float = 2.0,
        patience: int = 2,
    ) -> None:
        self.metric = _checks.metric("metric", metric)
        self.mode = _checks.mode("mode", mode)
        self.window = _checks.count("window", window, minimum=3)
        self.factor = _checks.in_open_unit("factor", factor)
        self.cooldown = _checks.count("cooldown", cooldown, minimum=0)
        self.min_rel_improvement = _checks.real("min_rel_improvement", min_rel_improvement)
        if self.min_rel_improvement < 0:
            raise ConfigError(f"min_rel_improvement must be >= 0, got {min_rel_improvement}")
        self.raise_above = _checks.real("raise_above", raise_above)
        self.raise_factor = _checks.positive("raise_factor", raise_factor)
        if self.raise_factor <= 1.0:
            raise ConfigError(f"raise_factor must be > 1, got {raise_factor}")
        self.stop_patience = (
            None if stop_patience is None else _checks.count("stop_patience", stop_patience)
        )
        self.patience = _checks.count("patience", patience, minimum=0)

    def settings(self) -> dict[str, Any]:
        keys = [
            "metric",
            "mode",
            "window",
            "factor",
            "cooldown",
            "min_rel_improvement",
            "stop_patience",
            "raise_above",
            "raise_factor",
            "patience",
        ]
        return {k: getattr(self, k) for k in keys}

    def initial_state(self) -> PolicyState:
        return {
            "seen": 0,
            "since_cut": 0,
            "best": None,
            "since_best": 0,
            "trial": None,
            "data_since": None,  # observations up to this step describe older data
        }

    def propose(self, view: PolicyView, state: PolicyState) -> tuple[list[Proposal], PolicyState]:
        if view.data_changed_since(state.get("data_since")):
            return self._new_data(view, state)
        history = view.signals.observations(self.metric, after=state.get("data_since"))
        total = view.signals.observation_count(self.metric)
        if total == state["seen"]:
            return [], state
        state = {**state, "seen": total, "since_cut": state["since_cut"] + 1}
        if not history or view.signals.latest_observation(self.metric) != history[-1]:
            return [], state  # the newest value was NaN/inf: nothing to judge on
        sign = 1.0 if self.mode == "min" else -1.0
        latest = sign * history[-1][1]
        trial = state.get("trial")
        if trial is not None:
            state["trial"] = None
            return [self._verdict(trial, latest, sign)], state
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
        if state["since_best"] < self.patience:
            return [], state  # still setting new bests: a curve bending fast is no plateau
        values = [sign * v for _, v in history[-self.window :]]
        fit = stats.trend(values)
        needed = -self.min_rel_improvement * abs(fit.mean)
        if fit.upper < needed:  # significantly improving
            return [], state
        state["since_cut"] = 0
        slope, low, high = sign * fit.slope, sign * fit.lower, sign * fit.upper
        low, high = min(low, high), max(low, high)
        direction = "falling" if self.mode == "min" else "rising"
        aligns = view.signals.window("alignment/global")[-5:]
        alignment = sum(aligns) / len(aligns) if len(aligns) >= 3 else None
        if alignment is not None and alignment > self.raise_above:
            state["trial"] = {"value": latest, "step": view.step}
            why = (
                f"{self.metric} is not significantly {direction} over the last {fit.n} "
                f"observations (slope {slope:+.4g}/obs), yet gradients still agree with the "
                f"previous updates (mean alignment {alignment:+.2f} > {self.raise_above:+.2f}): "
                f"the steps are too small; provisional lr x{self.raise_factor:g}, expecting "
                f"the next {self.metric} to be no worse than {history[-1][1]:.4g}, else reverted"
            )
            raise_ = Proposal(
                policy=self.name,
                reason=why,
                priority=Priority.SPEED,
                knob=Knob.LR,
                factor=self.raise_factor,
                signals={self.metric: history[-1][1], "alignment": alignment, "provisional": 1.0},
            )
            return [raise_], state
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

    def _new_data(self, view: PolicyView, state: PolicyState) -> tuple[list[Proposal], PolicyState]:
        """Start over on new data: its trend is judged afresh, and the cuts made on the
        old data's plateau are withdrawn (the new data needs steps of the size that
        trained the old data, not the annealed ones)."""
        changed = view.data_changed_at
        fresh = {**self.initial_state(), "seen": state["seen"], "data_since": changed}
        proposals: list[Proposal] = []
        trial = state.get("trial")
        if trial is not None:
            proposals.append(
                Proposal(
                    policy=self.name,
                    reason=(
                        f"raise of step {trial['step']} not judged: the data changed at step "
                        f"{changed}, so the next {self.metric} says nothing about it"
                    ),
                    priority=Priority.SPEED,
                    action=Action.VERDICT,
                    signals={"data_changed_at": float(changed)},
                )
            )
        proposals.append(
            Proposal(
                policy=self.name,
                reason=(
                    f"the data changed at step {changed}: the lr changes this policy made on "
                    f"the old data's {self.metric} trend are withdrawn, and the trend is "
                    "judged again from the new data's observations only"
                ),
                priority=Priority.RECOVERY,
                knob=Knob.LR,
                withdraw=True,
                signals={"data_changed_at": float(changed)},
            )
        )
        return proposals, fresh

    def _verdict(self, trial: dict[str, Any], latest: float, sign: float) -> Proposal:
        evidence = {self.metric: sign * latest, "before": sign * trial["value"]}
        if latest <= trial["value"]:
            return Proposal(
                policy=self.name,
                reason=(
                    f"raise of step {trial['step']} kept: {self.metric} {sign * latest:.4g} is "
                    f"no worse than {sign * trial['value']:.4g} before it"
                ),
                priority=Priority.SPEED,
                action=Action.VERDICT,
                signals=evidence,
            )
        return Proposal(
            policy=self.name,
            reason=(
                f"raise of step {trial['step']} reverted: {self.metric} {sign * latest:.4g} is "
                f"worse than {sign * trial['value']:.4g} before it; lr x{1 / self.raise_factor:g}"
            ),
            priority=Priority.SCHEDULE,
            knob=Knob.LR,
            factor=1.0 / self.raise_factor,
            signals=evidence,
        )
