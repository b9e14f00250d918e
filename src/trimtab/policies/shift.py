"""Shift: when the data distribution changes for good, a bounded LR raise, then a return.

The ``shift`` probe's Page-Hinkley detectors (per-batch loss, log gradient norm) only
say that something moved. A label-shuffled burst or one x1e3 batch moves them too, so an
alarm opens a *candidate* only: the policy keeps the training losses of the
``persistence`` steps that follow and confirms the shift when their median stays above
the pre-alarm median by more than ``min_rise`` of it and by ``z`` robust deviations of
the pre-alarm losses. A burst shorter than half the window cannot move that median.

On a confirmed shift:

1. the learning rate is raised to ``raise_factor`` times the larger of its current
   multiplier and the user's own value (provisional, at speed priority, in steps of at
   most ``raise_factor`` while the LR is not cooling down): the weights sit far from the
   new optimum and larger steps reach it sooner, and LR cuts made on the old data (a
   plateau, a rewind, the guard's cut when it read the jump as divergence) describe a
   landscape that is gone. So the peak is bounded by ``raise_factor`` x the user's LR
   (or x the current one, when that is higher). The
   expectation is stated: after ``verdict_after`` steps the median training loss must
   be below its level at confirmation by ``min_rise`` of it; else the whole remaining
   raise is taken back at once;
2. kept, the raise decays back to the prior multiplier in ``decay_steps`` equal
   factors, one every ``decay_every`` steps: the raise is relative, so cuts another
   policy made meanwhile are kept;
3. a weight decay raised above the user's value (the regularization policy's answer
   to memorizing the *old* distribution) is brought back to the user's value: that
   evidence no longer describes the data, and decay pulls the weights toward zero while
   they need to move. It is not raised again afterwards; if the new data is memorized,
   the regularization policy will find that on its own.

A confirmed shift is announced (``Action.NEW_DATA``), so the other policies stop judging
the new data by the old: the plateau withdraws its old-data cuts, after which the raise
stands on the run's own level (at most ``raise_factor`` times it, as when the guard
announced the change first and the withdrawal came before the confirmation).

The stability guard acts first on a lasting jump (it may roll back, cut the LR and then
accept the new level as a data change): its cut is more urgent, so the arbiter refuses
the raise as a reversal within its window, and the guard's own ramp back keeps the LR
cooling down. The policy retries once the LR has stood still for ``quiet`` steps, for
``retry_for`` steps after confirmation, and gives up after that (a late raise helps
nobody). So the raise adds to the guard's recovery and never fights it.
"""

from __future__ import annotations

import math
from typing import Any

from trimtab import _checks, stats
from trimtab.errors import ConfigError
from trimtab.policies.base import Policy, PolicyState, PolicyView
from trimtab.types import Action, Knob, Priority, Proposal

_BASELINE = 48  # pre-alarm training losses kept as the old level


class Shift(Policy):
    """Confirm a lasting distribution shift, raise the LR for a while, then return.

    Args:
        persistence: steps after an alarm whose median loss must stay at the new level.
        min_rise: relative rise of that median over the pre-alarm median that counts
            as a new level (also the fall the raise is expected to bring).
        z: robust deviations of the pre-alarm losses the rise must exceed too.
        raise_factor: provisional LR factor, in (1, 2].
        verdict_after: steps after the raise when its expectation is checked.
        decay_every: steps between decay steps (and between raise retries).
        decay_steps: equal factors in which the raise is taken back.
        retry_for: steps after confirmation during which a refused raise is retried.
        min_gap: steps after the end of one adaptation before a new alarm counts.
        quiet: steps the LR must have stood still before a refused raise is retried
            (the arbiter's cooldown: asking sooner is refused again).
    """

    name = "shift"
    knobs = (Knob.WEIGHT_DECAY,)
    requires = ("loss", "shift")

    def __init__(
        self,
        *,
        persistence: int = 20,
        min_rise: float = 0.1,
        z: float = 3.0,
        raise_factor: float = 2.0,
        verdict_after: int = 30,
        decay_every: int = 15,
        decay_steps: int = 6,
        retry_for: int = 120,
        quiet: int = 10,
        min_gap: int = 50,
    ) -> None:
        self.persistence = _checks.count("persistence", persistence, minimum=6)
        self.min_rise = _checks.positive("min_rise", min_rise)
        self.z = _checks.positive("z", z)
        self.raise_factor = _checks.positive("raise_factor", raise_factor)
        if not 1.0 < self.raise_factor <= 2.0:
            raise ConfigError(f"raise_factor must be in (1, 2], got {raise_factor}")
        self.verdict_after = _checks.count("verdict_after", verdict_after)
        self.decay_every = _checks.count("decay_every", decay_every)
        self.decay_steps = _checks.count("decay_steps", decay_steps)
        self.retry_for = _checks.count("retry_for", retry_for, minimum=0)
        self.min_gap = _checks.count("min_gap", min_gap, minimum=0)
        self.quiet = _checks.count("quiet", quiet, minimum=0)

    def settings(self) -> dict[str, Any]:
        keys = [
            "persistence",
            "min_rise",
            "z",
            "raise_factor",
            "verdict_after",
            "decay_every",
            "decay_steps",
            "retry_for",
            "min_gap",
            "quiet",
        ]
        return {k: getattr(self, k) for k in keys}

    def initial_state(self) -> PolicyState:
        return {
            "phase": "idle",  # idle -> candidate -> raising -> raised -> idle
            "baseline": [],  # losses before the alarm (the old level)
            "after": [],  # losses since the alarm (or since the raise)
            "alarm_step": None,
            "confirmed_step": None,
            "level": None,  # median loss at confirmation
            "pending": None,  # {"before": multipliers, "factor": f} of the last LR ask
            "owed": 0.0,  # log of the raise still to be taken back
            "peak": 1.0,  # the LR multiplier the raise climbs to
            "per_decay": 0.0,  # log of one decay factor
            "raised_step": None,
            "verdict": False,
            "last_move": None,
            "ended": None,
            "lrs": None,  # LR multipliers last seen, and when they last changed
            "lr_moved": -(10**9),
        }

    # -- the pure rule ------------------------------------------------------------------
    def propose(self, view: PolicyView, state: PolicyState) -> tuple[list[Proposal], PolicyState]:
        state = {**state, "baseline": list(state["baseline"]), "after": list(state["after"])}
        lrs = [view.multiplier(Knob.LR, g) for g in view.groups]
        if lrs != state["lrs"]:  # someone moved the LR: the arbiter's cooldown runs
            state.update(lrs=lrs, lr_moved=view.step)
        loss = view.signals.fresh("loss/train", view.step)
        finite = loss is not None and math.isfinite(loss)
        if state["phase"] == "idle":
            alarm = any(
                (view.signals.fresh(f"shift/{s}_alarm", view.step) or 0.0) > 0.5
                for s in ("loss", "grad")
            )
            quiet = state["ended"] is None or view.step - state["ended"] >= self.min_gap
            if alarm and quiet and len(state["baseline"]) >= self.persistence:
                state.update(phase="candidate", alarm_step=view.step, after=[])
            else:
                if finite:
                    state["baseline"] = [*state["baseline"], loss][-_BASELINE:]
                return [], state  # a non-finite loss is the guard's business, not a shift
        if finite:
            state["after"] = [*state["after"], loss]
        if state["phase"] == "candidate":
            return self._judge(view, state), state
        return self._adapt(view, state), state

    def _judge(self, view: PolicyView, state: PolicyState) -> list[Proposal]:
        """Confirm or dismiss the candidate once the persistence window is full."""
        after = state["after"]
        if len(after) < self.persistence:
            if view.step - state["alarm_step"] > 3 * self.persistence:  # mostly non-finite
                state.update(phase="idle", after=[])
            return []
        before = state["baseline"]
        old, spread = stats.robust_range(before)
        new = stats.median(after[-self.persistence :])
        needed = max(self.min_rise * abs(old), self.z * spread)
        evidence = {"loss_before": old, "loss_after": new, "needed_rise": needed}
        if new - old <= needed:
            # a blip or a burst: the old level stands, and the window becomes history
            state.update(phase="idle", after=[], baseline=[*before, *after][-_BASELINE:])
            return []
        prior = min(view.multiplier(Knob.LR, g) for g in view.groups)
        peak = self.raise_factor * max(prior, 1.0)
        state.update(
            phase="raising",
            confirmed_step=view.step,
            level=new,
            after=[],
            verdict=False,
            owed=0.0,
            peak=peak,
            raised_step=None,
        )
        announce = Proposal(
            policy=self.name,
            reason=(
                f"the data changed: the training loss moved from median "
                f"{evidence['loss_before']:.4g} to {evidence['loss_after']:.4g} for "
                f"{self.persistence} steps after the detector's alarm at step "
                f"{state['alarm_step']}"
            ),
            priority=Priority.SAFETY,
            action=Action.NEW_DATA,
            signals=evidence,
        )
        return [announce, self._raise(view, state, evidence), *self._rebalance(view, evidence)]

    def _raise(self, view: PolicyView, state: PolicyState, evidence: dict[str, float]) -> Proposal:
        # relative to the multiplier now: another policy's moves since (the guard's ramp
        # back) count toward the peak, which stays an absolute bound
        current = min(view.multiplier(Knob.LR, g) for g in view.groups)
        factor = min(self.raise_factor, state["peak"] / current)
        state["pending"] = {
            "before": {g: view.multiplier(Knob.LR, g) for g in view.groups},
            "factor": factor,
        }
        state["last_move"] = view.step
        peak = state["peak"] / current
        if state["owed"] > 0:
            return Proposal(
                policy=self.name,
                reason=(
                    f"distribution shift confirmed at step {state['confirmed_step']}: the raise "
                    f"climbs on, lr x{factor:.3g} (x{math.exp(state['owed']):.3g} so far, "
                    f"towards multiplier {state['peak']:.3g})"
                ),
                priority=Priority.SPEED,
                knob=Knob.LR,
                factor=factor,
                signals={"level": state["level"], "provisional": 1.0},
            )
        return Proposal(
            policy=self.name,
            reason=(
                f"distribution shift: the training loss moved from median "
                f"{evidence['loss_before']:.4g} to {evidence['loss_after']:.4g} and held there "
                f"for {self.persistence} steps after the detector's alarm at step "
                f"{state['alarm_step']} (rise needed {evidence['needed_rise']:.3g}); "
                f"provisional lr x{peak:.3g} in steps of at most x{self.raise_factor:g} (to "
                f"{self.raise_factor:g}x the larger of the user's LR and the current one: "
                f"cuts made for the old data are stale), expecting the median loss of the next "
                f"{self.verdict_after} steps to fall below "
                f"{state['level'] * (1 - self.min_rise):.4g}, else reverted; it decays back "
                f"in {self.decay_steps} steps of {self.decay_every}"
            ),
            priority=Priority.SPEED,
            knob=Knob.LR,
            factor=factor,
            signals={**evidence, "peak": peak, "provisional": 1.0},
        )

    def _rebalance(self, view: PolicyView, evidence: dict[str, float]) -> list[Proposal]:
        made = []
        for group in view.groups:
            current = view.multiplier(Knob.WEIGHT_DECAY, group)
            if current > 1.0 + 1e-9:
                made.append(
                    Proposal(
                        policy=self.name,
                        reason=(
                            f"distribution shift: weight decay x{current:.3g} of the user's "
                            f"value was raised against memorizing the old data; that "
                            f"evidence is stale and decay holds back adaptation: back to "
                            f"the user's value"
                        ),
                        priority=Priority.REGULARIZATION,
                        knob=Knob.WEIGHT_DECAY,
                        group=group,
                        target=1.0,
                        signals={**evidence, "weight_decay_multiplier": current},
                    )
                )
        return made

    def _applied(self, view: PolicyView, pending: dict[str, Any]) -> float | None:
        """Log of the factor the last LR ask actually moved the multiplier by, if it did.

        Only one proposal per slot wins a step, so a move on the step after the ask is
        either this policy's (maybe clamped by the arbiter's rate limit) or another's
        that superseded it. A move smaller than 0.4 of the ask (in log) or larger than it
        is taken for another policy's (the guard's x1.25 ramp, a x0.5 cut) and not
        counted, so the policy never takes back a change it did not make.
        """
        asked = math.log(pending["factor"])
        moved = []
        for group, before in pending["before"].items():
            step = math.log(view.multiplier(Knob.LR, group) / before)
            if not 0.4 * abs(asked) <= abs(step) <= abs(asked) * (1 + 1e-6) or step * asked < 0:
                return None
            moved.append(step)
        return min(moved, key=abs) if moved else None

    def _adapt(self, view: PolicyView, state: PolicyState) -> list[Proposal]:
        pending = state["pending"]
        if pending is not None:
            state["pending"] = None
            applied = self._applied(view, pending)
            if state["phase"] == "raising" and applied is not None:
                if state["raised_step"] is None:
                    state.update(raised_step=view.step - 1, after=[])
                state["owed"] += applied
                current = min(view.multiplier(Knob.LR, g) for g in view.groups)
                if current >= state["peak"] * (1 - 1e-6):
                    state.update(phase="raised", per_decay=state["owed"] / self.decay_steps)
            elif state["phase"] == "raised" and applied is not None:
                state["owed"] = max(0.0, state["owed"] + applied)
                if state["owed"] <= 1e-9:
                    state.update(phase="idle", ended=view.step, after=[], baseline=[])
                    return []
        if state["phase"] == "raising" and view.step - state["confirmed_step"] > self.retry_for:
            if state["owed"] <= 0:
                state.update(phase="idle", ended=view.step, after=[], baseline=[])
                return []  # the raise was refused throughout: too late to help now
            state.update(phase="raised", per_decay=state["owed"] / self.decay_steps)
        if state["phase"] == "raising":
            current = min(view.multiplier(Knob.LR, g) for g in view.groups)
            if current >= state["peak"] * (1 - 1e-6):  # others brought it there already
                if state["owed"] <= 0:
                    state.update(phase="idle", ended=view.step, after=[], baseline=[])
                    return []
                state.update(phase="raised", per_decay=state["owed"] / self.decay_steps)
            elif min(view.step - state["lr_moved"], view.step - state["last_move"]) >= self.quiet:
                evidence = {"level": state["level"], "retry": 1.0}
                return [self._raise(view, state, {**evidence, **self._evidence(state)})]
            if state["phase"] == "raising":
                return []
        since = view.step - state["raised_step"]
        if not state["verdict"] and since >= self.verdict_after and state["after"]:
            state["verdict"] = True
            return [self._verdict(view, state)]
        if view.step - state["last_move"] >= self.decay_every:
            factor = math.exp(-min(state["per_decay"], state["owed"]))
            return [self._take_back(view, state, factor, Priority.SCHEDULE, "decays")]
        return []

    def _evidence(self, state: PolicyState) -> dict[str, float]:
        before = state["baseline"]
        return {"loss_before": stats.median(before) if before else math.nan,
                "loss_after": state["level"], "needed_rise": 0.0}  # fmt: skip

    def _verdict(self, view: PolicyView, state: PolicyState) -> Proposal:
        now = stats.median(state["after"][-self.verdict_after :])
        expected = state["level"] * (1 - self.min_rise)
        evidence = {"loss": now, "level": state["level"], "expected_below": expected}
        if now < expected:
            return Proposal(
                policy=self.name,
                reason=(
                    f"shift raise of step {state['raised_step']} kept: median loss {now:.4g} "
                    f"is below the expected {expected:.4g} (it was {state['level']:.4g})"
                ),
                priority=Priority.SPEED,
                action=Action.VERDICT,
                signals=evidence,
            )
        return self._take_back(
            view,
            state,
            math.exp(-state["owed"]),
            Priority.SCHEDULE,
            f"reverted: median loss {now:.4g} is not below the expected {expected:.4g}",
            evidence,
        )

    def _take_back(
        self,
        view: PolicyView,
        state: PolicyState,
        factor: float,
        priority: Priority,
        how: str,
        evidence: dict[str, float] | None = None,
    ) -> Proposal:
        state["pending"] = {
            "before": {g: view.multiplier(Knob.LR, g) for g in view.groups},
            "factor": factor,
        }
        state["last_move"] = view.step
        left = math.exp(state["owed"])
        return Proposal(
            policy=self.name,
            reason=(
                f"shift raise of step {state['raised_step']} {how}: lr x{factor:.3g} "
                f"(x{left:.3g} of the raise left before it, back to the prior level at x1)"
            ),
            priority=priority,
            knob=Knob.LR,
            factor=factor,
            signals=evidence or {"owed": left},
        )
