"""Early phase: find the learning rate's scale in the first part of the run, on the fly.

A learning rate that is 10-100x too small is the most common reason a run "works but
slowly", and no cut-only policy can fix it. While the new gradient keeps agreeing with
the previous update (mean ``alignment`` above zero: the step has not yet crossed the
valley, so a bigger one would have helped), this policy doubles the group's learning
rate, one provisional trial at a time. Each trial states what it expects (the next
``period`` steps' mean training loss no higher than the last ``period`` steps'); if
the loss rises instead, or another policy had to cut the rate, the trial is reverted
and the group's ramp ends; so does a cut by another policy between trials (it knows
something the alignment does not), except the response to the same overshoot this
policy has just cut for. A raise the arbiter refused is no trial and ends nothing.
Both the trial and its verdict are events. After ``until`` of the run the policy stays
silent, and so does it while the training loss is below ``fitted_below`` of where it
started: on data the model already fits, gradients still agree but a larger step gains
nothing, and the raised rate is what new data meets (on the shift-recovery stream a
ramp to x32 on a loss of 1e-7 killed a run at its data change).

The opposite mistake shows in the very first steps: an update that moves the weights by
a large share of their norm (``update_ratio`` above ``max_update_ratio``; healthy runs
sit near 1e-3 to 1e-2) wrecks the initialisation before any loss-based check can react,
so the rate is cut at once to bring the ratio to ``target_update_ratio``, and raises
never take the ratio past ``max_update_ratio``. A group whose weight matrices all start
at zero (a zero-initialised readout beside its bias, a LoRA ``B`` matrix) is exempt from
both ratio checks: it has no initialisation to wreck, and its first steps are
necessarily large next to its own small norm (its first ratio is infinite). Its raises
are still judged by alignment and loss.
"""

from __future__ import annotations

import math
from typing import Any

from trimtab import _checks, stats
from trimtab.errors import ConfigError
from trimtab.policies.base import Policy, PolicyState, PolicyView
from trimtab.types import Action, Knob, Priority, Proposal


class EarlyPhase(Policy):
    """Provisionally raise a group's LR while its gradients agree with its updates.

    Args:
        period: steps between decisions (and the length of a trial).
        raise_above: mean alignment (cosine of gradient and previous update) above which
            the step is judged too small. The default 0 ramps until the gradient stops
            agreeing at all; 0.1 (the earlier default) stopped a few raises short: with
            the weight average evaluated it read 1.09x the best AdamW + cosine's speed
            on 12 seeds against 1.40x at 0 (benchmarks/RESULTS.md).
        factor: LR factor of one trial (> 1).
        min_readings: alignment readings needed for a decision.
        until: fraction of ``total_steps`` after which the policy stops ramping.
        max_steps: when ``total_steps`` is unknown, the step after which it stops.
        slack: a trial passes when the loss after it is at most the loss before it plus
            this many standard errors of the mean (noise must not revert a good raise).
        max_update_ratio: update/weight ratio above which the step is cut at once.
        target_update_ratio: the ratio such a cut aims for.
        undo_first_jump: when the run's first update is cut this way, also roll it back
            to the initial weights (its jump would otherwise stay in the weights).
        fitted_below: no raise once the recent mean train loss is below this fraction
            of the first ``period`` steps' (on new data: of its first steps'): a loss
            that low leaves no speed to gain, and a rate raised on its tiny gradients
            is a risk stored for the next data. Losses that start at or below zero or
            go negative are never judged fitted.
    """

    name = "early_phase"
    requires = ("loss",)  # reads alignment and update_ratio when those probes run

    def __init__(
        self,
        *,
        period: int = 10,
        raise_above: float = 0.0,
        factor: float = 2.0,
        min_readings: int = 3,
        until: float = 0.3,
        max_steps: int = 1000,
        slack: float = 1.0,
        max_update_ratio: float = 0.15,
        target_update_ratio: float = 0.03,
        undo_first_jump: bool = True,
        fitted_below: float = 1e-3,
    ) -> None:
        self.period = _checks.count("period", period, minimum=2)
        self.raise_above = _checks.real("raise_above", raise_above)
        if not -1.0 < self.raise_above < 1.0:
            raise ConfigError(f"raise_above must be a cosine in (-1, 1), got {raise_above}")
        self.factor = _checks.positive("factor", factor)
        if self.factor <= 1.0:
            raise ConfigError(f"factor must be > 1 (it raises the LR), got {factor}")
        self.min_readings = _checks.count("min_readings", min_readings)
        self.until = _checks.in_open_unit("until", until)
        self.max_steps = _checks.count("max_steps", max_steps)
        self.slack = _checks.real("slack", slack)
        self.max_update_ratio = _checks.positive("max_update_ratio", max_update_ratio)
        self.target_update_ratio = _checks.positive("target_update_ratio", target_update_ratio)
        self.undo_first_jump = bool(undo_first_jump)
        self.fitted_below = _checks.in_open_unit("fitted_below", fitted_below)
        if self.target_update_ratio >= self.max_update_ratio:
            raise ConfigError(
                f"target_update_ratio ({target_update_ratio}) must be below "
                f"max_update_ratio ({max_update_ratio})"
            )

    def settings(self) -> dict[str, Any]:
        keys = [
            "period",
            "raise_above",
            "factor",
            "min_readings",
            "until",
            "max_steps",
            "slack",
            "max_update_ratio",
            "target_update_ratio",
            "undo_first_jump",
            "fitted_below",
        ]
        return {k: getattr(self, k) for k in keys}

    def initial_state(self) -> PolicyState:
        return {
            "losses": [],
            "groups": {},
            "rewound_at": None,
            "data_since": None,
            "start_loss": None,
        }

    def _horizon(self, view: PolicyView) -> int:
        if view.total_steps is None:
            return self.max_steps
        return int(self.until * view.total_steps)

    def propose(self, view: PolicyView, state: PolicyState) -> tuple[list[Proposal], PolicyState]:
        signals = view.signals
        losses = list(state["losses"])
        loss = signals.fresh("loss/train", view.step)
        if loss is not None and math.isfinite(loss):
            losses = [*losses, loss][-2 * self.period :]
        groups = {g: dict(v) for g, v in state["groups"].items()}
        for group in view.groups:
            entry = groups.setdefault(group, {"aligns": [], "trial": None, "done": False})
            reading = signals.fresh(f"alignment/{group}", view.step)
            if reading is not None and math.isfinite(reading):
                entry["aligns"] = [*entry["aligns"], reading][-self.min_readings - 2 :]
            ratio = signals.fresh(f"update_ratio/{group}", view.step)
            if ratio is not None and not math.isnan(ratio) and "zero_start" not in entry:
                # an infinite first ratio: the group's weights were all zero
                entry["zero_start"] = math.isinf(ratio)
        state = {
            "losses": losses,
            "groups": groups,
            "rewound_at": state.get("rewound_at"),
            "data_since": state.get("data_since"),
            "start_loss": state.get("start_loss"),  # absent in states saved before it
        }
        proposals: list[Proposal] = []
        if view.data_changed_since(state["data_since"]):
            # New data: losses of the old data are no yardstick, and a pending trial
            # cannot be judged on them. Its raise stays: the ramp goes on from it, and the
            # next trial is judged on the new data's losses.
            losses = []
            state.update(data_since=view.data_changed_at, losses=losses, start_loss=None)
            for group in view.groups:
                entry = groups[group]
                if entry["trial"] is not None:
                    proposals.append(self._ended_by_new_data(group, entry["trial"], view))
                entry["trial"] = None
        if view.rewound_at is not None and view.rewound_at != state["rewound_at"]:
            # Memorization made another policy rewind the weights: speed is not what this
            # run lacks, so the ramp ends (a pending trial gets its verdict now).
            state.update(rewound_at=view.rewound_at, losses=[])
            for group in view.groups:
                entry = groups[group]
                if entry["trial"] is not None:
                    proposals.append(self._ended_by_rewind(group, entry["trial"]))
                entry.update(trial=None, done=True)
        if view.step <= self._horizon(view):
            cuts = [c for g in view.groups if (c := self._too_fast(view, g, groups[g]))]
            proposals += cuts
            if cuts and view.step == 1 and self.undo_first_jump:
                proposals.append(self._undo_first_update(cuts))
        if proposals or view.step % self.period or view.step < self.period:
            return proposals, state
        if state["start_loss"] is None and len(losses) >= self.period:
            state["start_loss"] = sum(losses[-self.period :]) / self.period
        for group in view.groups:
            proposals += self._decide(view, group, groups[group], losses, state["start_loss"])
        return proposals, state

    def _undo_first_update(self, cuts: list[Proposal]) -> Proposal:
        """Roll a far too large first update back to the initial weights, so the cut
        rate starts clean. Whether the next loss rose says little: on the char_lm
        benchmark a first jump at lr 0.1 lowered it and still cost 0.26 nats at the
        end of the run; on the 60-row regression a jump that raised it happened to help."""
        worst = max(v for c in cuts for v in c.signals.values())
        return Proposal(
            policy=self.name,
            reason=(
                f"the first update moved the weights by {worst:.3g} of their norm: undone, "
                "back to the initial weights, to start again at the cut lr"
            ),
            priority=Priority.SAFETY,
            action=Action.ROLLBACK,
            signals={"update_ratio/max": worst},
        )

    def _verdict_event(self, group: str, reason: str, signals: dict[str, float]) -> Proposal:
        """A verdict on ``group``'s trial or ramp: an event, no knob moves."""
        return Proposal(
            policy=self.name,
            reason=reason,
            priority=Priority.SPEED,
            action=Action.VERDICT,
            group=group,
            signals=signals,
        )

    def _ended_by_rewind(self, group: str, trial: dict[str, Any]) -> Proposal:
        return self._verdict_event(
            group,
            f"trial of step {trial['step']} ended: the weights were rewound to an "
            "earlier best (the model memorizes); no further raises",
            {"multiplier": trial["multiplier"]},
        )

    def _ended_by_new_data(self, group: str, trial: dict[str, Any], view: PolicyView) -> Proposal:
        return self._verdict_event(
            group,
            f"trial of step {trial['step']} not judged: the data changed at step "
            f"{view.data_changed_at}, so the losses since say nothing about the raise; "
            "it stays, and the ramp goes on from it",
            {"multiplier": trial["multiplier"]},
        )

    def _ended_by_cut(self, group: str, before: float, now: float) -> Proposal:
        return self._verdict_event(
            group,
            f"another policy cut the lr multiplier from {before:.3g} to {now:.3g} since "
            "the last decision: it knows something the alignment does not; no further "
            "raises",
            {"multiplier": now, "before": before},
        )

    def _too_fast(self, view: PolicyView, group: str, entry: dict[str, Any]) -> Proposal | None:
        if entry.get("zero_start"):
            return None  # no initialisation to wreck, and its own norm is no yardstick
        ratio = view.signals.fresh(f"update_ratio/{group}", view.step)
        if ratio is None or not math.isfinite(ratio) or ratio <= self.max_update_ratio:
            return None
        if entry.get("cut_at") == view.step:
            # A skipped or rolled-back step keeps the step count, so the same reading is
            # fresh again: it was acted on already.
            return None
        entry["cut_at"] = view.step
        entry["trial"] = None  # a pending raise is moot: the rate comes down
        factor = self.target_update_ratio / ratio
        why = (
            f"one update moved the weights by {ratio:.3g} of their norm (> "
            f"{self.max_update_ratio:g}; healthy runs sit near 1e-3 to 1e-2): the step is "
            f"far too large; lr x{factor:.3g} to aim for {self.target_update_ratio:g}"
        )
        return Proposal(
            policy=self.name,
            reason=why,
            priority=Priority.SAFETY,
            knob=Knob.LR,
            group=group,
            factor=factor,
            signals={f"update_ratio/{group}": ratio},
        )

    def _decide(
        self,
        view: PolicyView,
        group: str,
        entry: dict[str, Any],
        losses: list[float],
        start_loss: float | None,
    ) -> list[Proposal]:
        current = view.multiplier(Knob.LR, group)
        out: list[Proposal] = []
        seen, entry["seen"] = entry.get("seen"), current
        trial = entry["trial"]
        if trial is None and not entry["done"] and seen is not None and current < seen * 0.999:
            ours = entry.get("cut_at") is not None and view.step - entry["cut_at"] <= self.period
            if not ours:  # not a response to the overshoot this policy just cut for
                entry["done"] = True
                return [self._ended_by_cut(group, seen, current)]
        if trial is not None:
            entry["trial"] = None
            verdict = self._verdict(group, entry, trial, current, losses)
            out.append(verdict)
            if verdict.action is not Action.VERDICT or entry["done"]:
                return out  # reverted or over: no new trial on the same step
        if entry["done"] or view.step > self._horizon(view):
            return out
        aligns = entry["aligns"]
        if len(aligns) < self.min_readings or len(losses) < self.period:
            return out
        mean_align = sum(aligns) / len(aligns)
        if mean_align <= self.raise_above:
            return out
        ratio = view.signals.get(f"update_ratio/{group}")
        if (
            ratio is not None
            and not entry.get("zero_start")
            and ratio * self.factor > self.max_update_ratio
        ):
            return out  # a raise would make the step too large
        cap = view.ceilings.get((Knob.LR, group))
        if cap is not None and current >= cap * 0.999:
            return out  # another policy caps this group's LR here: the raise would be refused
        recent = losses[-self.period :]
        before = sum(recent) / len(recent)
        if self._fitted(before, start_loss):
            return out  # the loss is all but gone: nothing left for a larger step to gain
        spread = stats.robust_range(recent)[1] / math.sqrt(len(recent))
        entry["trial"] = {
            "step": view.step,
            "before": before,
            "se": spread,
            "multiplier": current * self.factor,
            "from": current,
        }
        entry["aligns"] = []
        why = (
            f"gradient and previous update agree (mean alignment {mean_align:+.2f} over "
            f"{len(aligns)} readings > {self.raise_above:+.2f}): the step is too small; "
            f"provisional lr x{self.factor:g}, expecting the mean train loss of the next "
            f"{self.period} steps to stay at or below {before:.4g} (+{self.slack:g} s.e. "
            f"{spread:.2g}), else reverted"
        )
        raise_ = Proposal(
            policy=self.name,
            reason=why,
            priority=Priority.SPEED,
            knob=Knob.LR,
            group=group,
            factor=self.factor,
            signals={"alignment": mean_align, "loss/mean": before, "provisional": 1.0},
        )
        return [*out, raise_]

    def _fitted(self, loss: float, start_loss: float | None) -> bool:
        """Whether ``loss`` is below ``fitted_below`` of the start. Only a loss bounded
        below by zero (cross-entropy, MSE) has such a floor: one that starts at or below
        zero, or goes negative (a log-likelihood of a density), never counts as fitted."""
        if start_loss is None or start_loss <= 0.0 or loss < 0.0:
            return False
        return loss < self.fitted_below * start_loss

    def _verdict(
        self,
        group: str,
        entry: dict[str, Any],
        trial: dict[str, Any],
        current: float,
        losses: list[float],
    ) -> Proposal | None:
        recent = losses[-self.period :]
        after = sum(recent) / len(recent) if recent else math.inf
        limit = trial["before"] + self.slack * trial["se"]
        applied = current >= trial["multiplier"] * 0.999
        evidence = {"loss/before": trial["before"], "loss/after": after, "limit": limit}
        refused = not applied and current >= trial.get("from", math.inf) * 0.999
        if refused:
            # The arbiter refused the raise (a cooldown, a more urgent recent cut, or
            # another policy's move on the same step won): no trial took place, so there
            # is nothing to judge and the ramp may go on.
            return self._verdict_event(
                group,
                f"trial of step {trial['step']} did not happen: the arbiter refused or "
                f"superseded the raise (the lr multiplier is {current:.3g}, not "
                f"{trial['multiplier']:.3g}); the ramp goes on",
                evidence,
            )
        if not applied:
            # Another policy cut the rate since the raise: the ramp is over.
            entry["done"] = True
            return self._verdict_event(
                group,
                f"trial of step {trial['step']} ended: the lr multiplier is "
                f"{current:.3g}, not the {trial['multiplier']:.3g} it raised to "
                "(cut by another policy); no further raises",
                evidence,
            )
        if after <= limit:
            return self._verdict_event(
                group,
                f"trial of step {trial['step']} kept: mean train loss {after:.4g} over "
                f"the last {len(recent)} steps, at or below {limit:.4g}",
                evidence,
            )
        entry["done"] = True
        return Proposal(
            policy=self.name,
            reason=(
                f"trial of step {trial['step']} reverted: mean train loss {after:.4g} over "
                f"the last {len(recent)} steps is above {limit:.4g}; lr x{1 / self.factor:g} "
                "and no further raises for this group"
            ),
            priority=Priority.SPEED,
            knob=Knob.LR,
            group=group,
            factor=1.0 / self.factor,
            signals=evidence,
        )
