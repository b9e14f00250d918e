"""Shift: when the data distribution changes for good, relearn fast, then return.

The ``shift`` probe's Page-Hinkley detectors (per-batch loss, log gradient norm) only
say that something moved. One x1e3 batch, a burst of bad batches or weights that
diverge move them too, so an alarm opens a *candidate* only, judged on the training
losses from the alarm's on:

- at once, when the stability guard rolled back since the alarm (it skips the first
  high batch and rolls back on the second) and ``at_restored`` (2) losses were read at
  the restored, known-good weights (the guard skips while it checks them): all high
  there (and the lower median since the alarm high too), the data changed; one normal
  there, the weights had diverged, and the guard's cut stands. So a burst of three bad
  batches (skip, rollback, one more) is dismissed, one of four or more is taken for new
  data; a guard that needs six batches at the restored weights before it calls new
  data is cut short;
- else once ``persistence`` losses are in: their lower median, and the latest, must
  stay above the pre-alarm median by more than ``min_rise`` of it and by ``z`` robust
  deviations of the pre-alarm losses. A burst shorter than half that window cannot
  move the median.

A rewind of the weights by another policy (early stopping's return to its best, a
restart) makes the training loss jump too; the losses before it belonged to other
weights, so the old level is measured again from there.

On a confirmed shift:

1. if the old data was fitted (its median loss below ``fitted`` x the new level) and the
   shift was confirmed at the restored weights (before any step on the new data), the
   weights of ``shrink_groups`` (default: every group) are scaled by ``shrink``
   (``Action.RESCALE``; the step is dropped). Such a model is confidently wrong on the
   new data: its saturated outputs pass back little gradient, and its logits must
   shrink before they can turn. Smaller weights keep their directions (what was
   learned) and relearn much faster: shrink and perturb (Ash & Adams, 2020), without
   the perturbation;
2. the learning rate is raised, provisionally, to the larger of ``raise_factor`` x the
   user's value and the highest multiplier the run trained at since the guard's last
   cut: the weights sit far from the new optimum, and LR cuts made on the old data (a
   plateau, the guard's cut when it read the jump as divergence) describe a landscape
   that is gone. The raise starts two steps after the announcement, on what the other
   policies' answers left (the plateau withdraws its old-data cuts); a return to a level
   the run held is one restore (``Proposal.restore``: no rate limit), the rest climbs
   in steps of at most ``raise_factor`` as the cooldown allows. A level that ended in
   a divergence (the guard cut it) is never returned to, and a level counts only once
   it stood for a few steps: a user's LR the first update showed far too large (the
   early phase cut it at once) is replaced by the highest level the run trained at,
   in the raise's bound too. The expectation is stated:
   after ``verdict_after`` steps the median training loss must be below its level at
   confirmation by ``min_rise`` of it; else the whole remaining raise is taken back;
3. kept, the raise decays back to the prior multiplier in ``decay_steps`` equal
   factors, one every ``decay_every`` steps: the raise is relative, so cuts another
   policy made meanwhile are kept;
4. a weight decay raised above the user's value (the regularization policy's answer
   to memorizing the *old* distribution) is brought back to the user's value: that
   evidence no longer describes the data, and decay pulls the weights toward zero while
   they need to move. It is not raised again afterwards; if the new data is memorized,
   the regularization policy will find that on its own.

A confirmed shift is announced (``Action.NEW_DATA``), so the other policies stop judging
the new data by the old. The stability guard usually acts first on the jump (it skips
the first high batch and rolls back on the second); the announcement ends its check of
the restored weights, which would otherwise skip batches until it calls the change
itself. A raise the arbiter refuses is retried once the LR has stood still for
``quiet`` steps, for ``retry_for`` steps after confirmation, and given up after that (a
late raise helps nobody).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from trimtab import _checks, stats
from trimtab.errors import ConfigError
from trimtab.policies.base import Policy, PolicyState, PolicyView
from trimtab.policies.stability_guard import StabilityGuard
from trimtab.types import Action, Knob, Priority, Proposal

_BASELINE = 48  # pre-alarm training losses kept as the old level
_RESTORE_MIN = 1.02  # a return smaller than this is left to the ordinary raise
# steps an LR multiplier must stand to count as a level the run trained at: the early
# phase cuts a level the first update showed far too large at once
_HOLD = 5


class Shift(Policy):
    """Confirm a lasting distribution shift, relearn fast, then return.

    Args:
        persistence: losses from the alarm's on whose lower median, and the latest, must
            stay at the new level, when the guard did not roll back (at least 6).
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
        shrink: factor on the weights at a shift after a fit, in (0, 1]; 1 keeps them.
        fitted: the old data counts as fitted when its median loss is below this
            fraction of the new level.
        shrink_groups: the groups whose weights are shrunk (default: every group); leave
            a pretrained backbone out where its scale matters.
        at_restored: losses read at the weights the guard restored that must all be high
            to confirm at once: a burst of bad batches no longer than the guard's skip,
            its rollback and these losses less one is dismissed.
    """

    name = "shift"
    knobs = (Knob.WEIGHT_DECAY,)
    requires = ("loss", "shift")
    # the detector reads two scalars a step that the run has anyway: a default policy's
    # cheap probe joins a probe set the user chose rather than failing it
    adds_probes = True

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
        shrink: float = 0.3,
        fitted: float = 1e-3,
        shrink_groups: Sequence[str] | None = None,
        at_restored: int = 2,
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
        self.shrink = _checks.positive("shrink", shrink)
        if self.shrink > 1.0:
            raise ConfigError(f"shrink must be in (0, 1] (1 keeps the weights), got {shrink}")
        self.fitted = _checks.in_open_unit("fitted", fitted)
        if shrink_groups is not None and (
            isinstance(shrink_groups, str) or not all(isinstance(g, str) for g in shrink_groups)
        ):
            raise ConfigError(
                f"shrink_groups must be a sequence of group names, got {shrink_groups!r}"
            )
        self.shrink_groups = None if shrink_groups is None else tuple(shrink_groups)
        self.at_restored = _checks.count("at_restored", at_restored)

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
            "shrink",
            "fitted",
            "shrink_groups",
            "at_restored",
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
            # per group: the highest LR multiplier trained at since the guard's last cut
            # (a level that ended in a divergence is no level to return to)
            "high": {},
            "guard": {},  # per group: the guard's own LR factor last seen
            "raise_from": None,  # first step of the raise: after the others' answers
            "rewound_at": None,  # the last rewind of the weights by another policy seen
            "held": {},  # per group: [multiplier, step it was first seen at]
            "trained": {},  # per group: the highest LR multiplier held in the whole run
            "restored": [],  # losses since the alarm read at the weights the guard restored
        }

    # -- the pure rule ------------------------------------------------------------------
    def propose(self, view: PolicyView, state: PolicyState) -> tuple[list[Proposal], PolicyState]:
        state = {
            **state,
            "baseline": list(state["baseline"]),
            "after": list(state["after"]),
            "high": dict(state.get("high", {})),
            "guard": dict(state.get("guard", {})),
            "held": {g: list(h) for g, h in state.get("held", {}).items()},
            "trained": dict(state.get("trained", {})),
            "restored": list(state.get("restored", [])),
        }
        lrs = [view.multiplier(Knob.LR, g) for g in view.groups]
        if lrs != state["lrs"]:  # someone moved the LR: the arbiter's cooldown runs
            state.update(lrs=lrs, lr_moved=view.step)
        loss = view.signals.fresh("loss/train", view.step)
        finite = loss is not None and math.isfinite(loss)
        if view.rewound_at is not None and view.rewound_at != state.get("rewound_at"):
            # Another policy rewound the weights (early stopping's best, a restart): the
            # loss jumps because the weights changed, not the data. The old level belonged
            # to the abandoned trajectory; an adaptation under way is relative, and goes on.
            state["rewound_at"] = view.rewound_at
            if state["phase"] in ("idle", "candidate"):
                state.update(phase="idle", baseline=[], after=[], restored=[])
        if state["phase"] == "idle":
            self._track_high(view, state)
            alarm = any(
                (view.signals.fresh(f"shift/{s}_alarm", view.step) or 0.0) > 0.5
                for s in ("loss", "grad")
            )
            quiet = state["ended"] is None or view.step - state["ended"] >= self.min_gap
            if alarm and quiet and len(state["baseline"]) >= self.persistence:
                state.update(
                    phase="candidate",
                    alarm_step=view.step,
                    alarm_call=_call(view),
                    after=[],
                    restored=[],
                    restored_call=None,
                )
            else:
                if finite:
                    state["baseline"] = [*state["baseline"], loss][-_BASELINE:]
                return [], state  # a non-finite loss is the guard's business, not a shift
        if finite:
            state["after"] = [*state["after"], loss]
        if finite and state["phase"] == "candidate":
            # read at the weights the guard restored since the alarm (the guard skips the
            # steps while it checks them): a second rollback starts the count again
            rolled, alarm = view.rolled_back_call, state.get("alarm_call")
            if rolled is not None and alarm is not None and alarm <= rolled < _call(view):
                if state.get("restored_call") != rolled:
                    state.update(restored_call=rolled, restored=[])
                state["restored"] = [*state["restored"], loss]
        if state["phase"] == "candidate":
            return self._judge(view, state), state
        return self._adapt(view, state), state

    def _judge(self, view: PolicyView, state: PolicyState) -> list[Proposal]:
        """Confirm or dismiss the candidate: at once when ``at_restored`` losses were read
        at weights the guard restored since the alarm, else once the persistence window
        is full."""
        after, at_restored = state["after"], state["restored"]
        before = state["baseline"]
        old, spread = stats.robust_range(before)
        needed = max(self.min_rise * abs(old), self.z * spread)
        # the guard rolled back since the alarm, and these losses come from the restored,
        # known-good weights: high there, the data changed; normal, the weights had
        # diverged (the guard's cut stands)
        restored = len(at_restored) >= self.at_restored
        normal_there = bool(at_restored) and at_restored[-1] - old <= needed
        if not restored and not normal_there and len(after) < self.persistence:
            if view.step - state["alarm_step"] > 3 * self.persistence:  # mostly non-finite
                state.update(phase="idle", after=[], restored=[])
            return []
        # the lower median: more than half of the window must be at the new level; and
        # the latest loss too (at the restored weights, when the guard rolled back)
        window = sorted(after if restored else after[-self.persistence :])
        new = window[(len(window) - 1) // 2]
        evidence = {"loss_before": old, "loss_after": new, "needed_rise": needed}
        if normal_there or new - old <= needed or after[-1] - old <= needed:
            # a blip or a burst: the old level stands, and the window becomes history
            state.update(
                phase="idle", after=[], restored=[], baseline=[*before, *after][-_BASELINE:]
            )
            return []
        state.update(
            phase="raising",
            confirmed_step=view.step,
            level=new,
            after=[],
            verdict=False,
            owed=0.0,
            # confirmed at the restored weights (before any step on the new data), the
            # peak is set when the raise starts, on the level the others' answers left;
            # after 20 losses, at once: 2x the larger of the user's LR and the current
            peak=None if restored else self._ordinary_peak(view, state),
            raised_step=None,
            raise_from=view.step + 2,
            evidence=evidence,
            fast=restored,
            held_for=(
                f"{len(window)} losses after the detector's alarm at step "
                f"{state['alarm_step']}, the last {len(at_restored)} at the weights the "
                "guard restored"
                if restored
                else None  # the persistence window: see _held_for
            ),
        )
        announce = Proposal(
            policy=self.name,
            reason=(
                f"the data changed: the training loss moved from median "
                f"{evidence['loss_before']:.4g} to {evidence['loss_after']:.4g} for "
                f"{self._held_for(state)}"
            ),
            priority=Priority.SAFETY,
            action=Action.NEW_DATA,
            signals=evidence,
        )
        # the shrink and the return to the run's highest LR are for a model that has not
        # trained on the new data yet: confirmed at the restored weights, right after
        # the jump. After 20 losses it is relearning already: an ordinary raise at once.
        if restored:
            return [announce, *self._rescale(old, new), *self._rebalance(view, evidence)]
        if state["peak"] <= _lowest_lr(view) * (1 + 1e-6):  # at the run's highest level
            state.update(phase="idle", ended=view.step, after=[], baseline=[])
            return [announce, *self._rebalance(view, evidence)]
        return [announce, self._raise(view, state, evidence), *self._rebalance(view, evidence)]

    def _ordinary_peak(self, view: PolicyView, state: PolicyState) -> float:
        """``raise_factor`` x the larger of the user's LR and the current one, but never
        above the fast path's peak. A user's LR the run never trained at (the early
        phase cut it at once) counts as the highest level it did train at."""
        user = min(_trained(view, state), 1.0)
        ordinary = self.raise_factor * max(_lowest_lr(view), user)
        return min(ordinary, self._highest_peak(view, state))

    def _highest_peak(self, view: PolicyView, state: PolicyState) -> float:
        """The highest LR multiplier the run trained at since the guard's last cut (the
        lowest over groups), or ``raise_factor`` x the user's LR if that is higher (x
        that level, when the run never trained at the user's LR)."""
        return max(_high(view, state), self.raise_factor * min(_trained(view, state), 1.0))

    def _track_high(self, view: PolicyView, state: PolicyState) -> None:
        """Per group, the highest LR multiplier that stood for ``_HOLD`` steps since the
        guard's last cut of it, and in the whole run: a level the first update showed far
        too large is no level the run trained at."""
        for group in view.groups:
            current = view.multiplier(Knob.LR, group)
            guard = view.own_factor(StabilityGuard.name, Knob.LR, group)
            cut = guard < state["guard"].get(group, guard) * (1 - 1e-9)
            level, since = state["held"].get(group, (current, view.step))
            if abs(current - level) > 1e-9 * level:
                level, since = current, view.step
            state["held"][group] = [level, since]
            stood = view.step - since >= _HOLD
            if cut:  # the cut level is where the run goes on from
                state["high"][group] = current
            elif stood:
                state["high"][group] = max(state["high"].get(group, current), current)
            if stood:
                state["trained"][group] = max(state["trained"].get(group, current), current)
            state["guard"][group] = guard

    def _rescale(self, old: float, new: float) -> list[Proposal]:
        """Shrink the weights when the old data was fitted to a small fraction of the new
        loss: such a model is confidently wrong on the new data, its saturated outputs
        pass back little gradient, and smaller weights relearn faster (shrink and
        perturb, Ash & Adams 2020, without the perturbation: directions are kept)."""
        if self.shrink >= 1.0 or old < 0 or new <= 0 or old > self.fitted * new:
            return []
        reason = (
            f"distribution shift: the old data was fitted (median loss {old:.4g}, below "
            f"{self.fitted:g} x the new level {new:.4g}), so the model is confidently wrong "
            f"on the new data; its weights are scaled by {self.shrink:g} to learn again "
            "faster, and this step's update (taken at the weights before) is dropped"
        )
        signals = {"loss_before": old, "loss_after": new, "factor": self.shrink}
        groups = self.shrink_groups or (None,)
        return [
            Proposal(
                policy=self.name,
                reason=reason,
                priority=Priority.REGULARIZATION,
                action=Action.RESCALE,
                group=group,
                factor=self.shrink,
                signals=signals,
            )
            for group in groups
        ]

    def _raise(self, view: PolicyView, state: PolicyState, evidence: dict[str, float]) -> Proposal:
        # relative to the multiplier now: another policy's moves since (the guard's ramp
        # back) count toward the peak, which stays an absolute bound
        current = _lowest_lr(view)
        # one factor for every group that takes none above the highest level it trained at
        held = min(
            state["high"].get(g, view.multiplier(Knob.LR, g)) / view.multiplier(Knob.LR, g)
            for g in view.groups
        )
        restore = state.get("fast", False) and held > _RESTORE_MIN
        factor = min(held if restore else self.raise_factor, state["peak"] / current)
        state["pending"] = {
            "before": {g: view.multiplier(Knob.LR, g) for g in view.groups},
            "factor": factor,
        }
        state["last_move"] = view.step
        peak = state["peak"] / current
        if restore:
            how = (
                f"lr x{factor:.3g} at once, back to the highest level the run trained at since "
                "the guard's last cut (a level it held: no rate limit), towards multiplier "
                f"{state['peak']:.3g}"
            )
        elif state["owed"] > 0:
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
        else:
            how = f"lr x{peak:.3g} in steps of at most x{self.raise_factor:g}"
        return Proposal(
            policy=self.name,
            reason=(
                f"distribution shift: the training loss moved from median "
                f"{evidence['loss_before']:.4g} to {evidence['loss_after']:.4g} and held there "
                f"for {self._held_for(state)} (rise needed {evidence['needed_rise']:.3g}); "
                f"provisional {how} (the larger of {self.raise_factor:g}x the user's LR and "
                "the highest LR the run trained at: cuts made for the old data are stale), "
                f"expecting the median loss of the next {self.verdict_after} steps to fall "
                f"below {state['level'] * (1 - self.min_rise):.4g}, else reverted; it decays "
                f"back in {self.decay_steps} steps of {self.decay_every}"
            ),
            priority=Priority.SPEED,
            knob=Knob.LR,
            factor=factor,
            restore=restore,
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
                current = _lowest_lr(view)
                if current >= state["peak"] * (1 - 1e-6):
                    state.update(phase="raised", per_decay=state["owed"] / self.decay_steps)
            elif state["phase"] == "raised" and applied is not None:
                state["owed"] = max(0.0, state["owed"] + applied)
                if state["owed"] <= 1e-9:
                    state.update(phase="idle", ended=view.step, after=[], baseline=[])
                    return []
        if state["phase"] == "raising" and state["peak"] is None:
            # The other policies answer the data change on the step after it is announced
            # (the plateau withdraws its old-data cuts): the raise starts on what they leave.
            if view.step < state["raise_from"]:
                return []
            state["peak"] = self._highest_peak(view, state)
            return [self._raise(view, state, state["evidence"])]
        if state["phase"] == "raising" and view.step - state["confirmed_step"] > self.retry_for:
            if state["owed"] <= 0:
                state.update(phase="idle", ended=view.step, after=[], baseline=[])
                return []  # the raise was refused throughout: too late to help now
            state.update(phase="raised", per_decay=state["owed"] / self.decay_steps)
        if state["phase"] == "raising":
            current = _lowest_lr(view)
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

    def _held_for(self, state: PolicyState) -> str:
        """How long the new level held before confirmation, for the reasons: the fast
        path's count, else the persistence window (also in states saved before it)."""
        return state.get("held_for") or (
            f"{self.persistence} steps after the detector's alarm at step {state['alarm_step']}"
        )

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


def _high(view: PolicyView, state: PolicyState) -> float:
    """The lowest over groups of the highest LR multiplier each trained at since the
    guard's last cut (a group with no level held yet: its current multiplier)."""
    return min(state["high"].get(g, view.multiplier(Knob.LR, g)) for g in view.groups)


def _trained(view: PolicyView, state: PolicyState) -> float:
    """The lowest over groups of the highest LR multiplier each trained at in the whole
    run, guard's cuts or not (a group with no level held yet: its current multiplier)."""
    return min(state["trained"].get(g, view.multiplier(Knob.LR, g)) for g in view.groups)


def _lowest_lr(view: PolicyView) -> float:
    """The lowest LR multiplier over the groups: the raise moves every group by one factor."""
    return min(view.multiplier(Knob.LR, g) for g in view.groups)


def _call(view: PolicyView) -> int:
    """The user's step() count (the update count where the caller gave none)."""
    return view.step if view.calls is None else view.calls
