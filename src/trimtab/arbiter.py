"""The arbiter: turns competing proposals into bounded, rate-limited, explained decisions.

It enforces DESIGN.md's invariants for every knob: multipliers stay inside their bounds,
no single decision moves a knob more than its priority's rate limit, a knob that just
moved waits out its cooldown, a change smaller than ``epsilon`` is dropped, and a
reversal soon after a move (hysteresis) needs an equally urgent reason.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from trimtab import _checks
from trimtab.errors import ConfigError, StateError
from trimtab.types import Action, Decision, Knob, Priority, Proposal, Rejection

STATE_VERSION = 1

# Per-decision factor limits by priority: a safety cut may be steep, speed-ups are gentle.
DEFAULT_RATE_LIMITS: Mapping[Priority, tuple[float, float]] = {
    Priority.SAFETY: (0.01, 1.0),
    Priority.STABILITY: (0.25, 1.0),
    # a restart from the initial weights cuts steeply: no weights in motion to upset
    Priority.REGULARIZATION: (1 / 16, 2.0),
    Priority.SCHEDULE: (0.5, 1.0),
    Priority.RECOVERY: (1.0, 1.5),
    Priority.SPEED: (0.5, 2.0),
}

# Multiplier bounds: wide enough to rescue an initial LR that is 100x off either way.
DEFAULT_BOUNDS: Mapping[Knob, tuple[float, float]] = {
    Knob.LR: (1e-3, 3e2),
    Knob.MOMENTUM: (0.5, 1.0),
    Knob.WEIGHT_DECAY: (0.1, 10.0),
    Knob.MAX_GRAD_NORM: (0.1, 10.0),
}


# Size rule: models up to SCALE_REFERENCE parameters get the defaults above; beyond it
# every upward limit (the tops of the LR and weight-decay bounds, each priority's largest
# factor) is raised to the power 1 / (1 + SCALE_STRENGTH * decades above the reference).
# Large runs are costly to lose and their stable LR range is narrower relative to a tuned
# recipe, so speed-ups get gentler and the ceiling lower; a weight-decay raise shortens
# the AdamW timescale 1 / (lr * wd) the recipe chose for the run, so a large model gets
# smaller raises (the regularization priority's factor) and a lower total. The downward
# limits (safety cuts) stay as they are.
SCALE_REFERENCE = 1e6
SCALE_STRENGTH = 0.25


def scale_exponent(
    parameters: int, *, reference: float = SCALE_REFERENCE, strength: float = SCALE_STRENGTH
) -> float:
    """The size rule's exponent on upward limits: 1 up to ``reference`` parameters."""
    decades = max(0.0, math.log10(max(parameters, 1) / reference))
    return 1.0 / (1.0 + strength * decades)


# per-slot upper bounds on multipliers, fixed or as a function of the multipliers
Ceilings = (
    Mapping[tuple[Knob, str], float]
    | Callable[[Mapping[tuple[Knob, str], float]], Mapping[tuple[Knob, str], float]]
)


def _fixed(
    ceilings: Mapping[tuple[Knob, str], float] | None,
) -> Callable[[Mapping[tuple[Knob, str], float]], Mapping[tuple[Knob, str], float]]:
    fixed = dict(ceilings or {})
    return lambda _multipliers: fixed


@dataclass(frozen=True)
class ArbiterConfig:
    """Limits the arbiter enforces. Every field is checked at construction."""

    bounds: Mapping[Knob, tuple[float, float]] = field(default_factory=lambda: dict(DEFAULT_BOUNDS))
    rate_limits: Mapping[Priority, tuple[float, float]] = field(
        default_factory=lambda: dict(DEFAULT_RATE_LIMITS)
    )
    cooldown: int = 10
    reversal_window: int = 50
    epsilon: float = 0.01

    def __post_init__(self) -> None:
        for knob, (low, high) in self.bounds.items():
            _checks.positive(f"lower bound of {knob.value}", low)
            _checks.positive(f"upper bound of {knob.value}", high)
            if not low <= 1.0 <= high:
                raise ConfigError(
                    f"bounds of {knob.value} must contain 1.0 (the user's own value), "
                    f"got ({low}, {high})"
                )
        for priority, (low, high) in self.rate_limits.items():
            _checks.positive(f"rate limit low of {priority.name}", low)
            _checks.positive(f"rate limit high of {priority.name}", high)
            if low > 1.0 or high < 1.0:
                raise ConfigError(
                    f"rate limits of {priority.name} must bracket 1.0, got ({low}, {high})"
                )
        _checks.count("cooldown", self.cooldown, minimum=0)
        _checks.count("reversal_window", self.reversal_window, minimum=0)
        _checks.positive("epsilon", self.epsilon)

    @classmethod
    def for_model_size(
        cls,
        parameters: int,
        *,
        reference: float = SCALE_REFERENCE,
        strength: float = SCALE_STRENGTH,
    ) -> ArbiterConfig:
        """The default limits, made more conservative for a model of ``parameters``.

        At 1e6 parameters or fewer this is ``ArbiterConfig()``; at 1e8 the LR ceiling is
        300^(1/1.5) ~ 45x, a speed-up or a weight-decay raise at most 2^(1/1.5) ~ 1.59x
        per decision and weight decay at most 10^(1/1.5) ~ 4.6x the user's; at 1e10, ~17x,
        1.41x and 3.2x. Pass your own ``ArbiterConfig`` to ``Regime`` to override.

        Example:
            >>> ArbiterConfig.for_model_size(1_000).bounds == ArbiterConfig().bounds
            True
        """
        _checks.count("parameters", parameters)
        _checks.positive("reference", reference)
        _checks.real("strength", strength)
        if strength < 0:
            raise ConfigError(f"strength must be >= 0, got {strength}")
        power = scale_exponent(parameters, reference=reference, strength=strength)
        bounds = dict(DEFAULT_BOUNDS)
        low, high = bounds[Knob.LR]
        bounds[Knob.LR] = (low, high**power)
        low, high = bounds[Knob.WEIGHT_DECAY]
        bounds[Knob.WEIGHT_DECAY] = (low, high**power)
        rates = {p: (lo, hi**power) for p, (lo, hi) in DEFAULT_RATE_LIMITS.items()}
        return cls(bounds=bounds, rate_limits=rates)

    def as_dict(self) -> dict[str, Any]:
        return {
            "bounds": {k.value: list(v) for k, v in self.bounds.items()},
            "rate_limits": {p.name.lower(): list(v) for p, v in self.rate_limits.items()},
            "cooldown": self.cooldown,
            "reversal_window": self.reversal_window,
            "epsilon": self.epsilon,
        }


class Arbiter:
    """Merges proposals per (knob, group) and applies the limits of ``ArbiterConfig``."""

    def __init__(self, config: ArbiterConfig | None = None) -> None:
        self.config = config or ArbiterConfig()
        # (knob, group) -> (step, direction, priority, policy) of the last change
        self._last: dict[tuple[Knob, str], tuple[int, int, int, str]] = {}
        # (knob, group) -> the multiplier the last change started from (what an undo restores)
        self._before: dict[tuple[Knob, str], float] = {}
        # (knob, group, policy) -> product of that policy's accepted factors (what a
        # withdraw divides out, and what a policy that gives back its own cuts reads)
        self._own: dict[tuple[Knob, str, str], float] = {}
        self.own_record: Mapping[tuple[Knob, str, str], float] = MappingProxyType(self._own)
        # (knob, group) -> the highest multiplier the slot has held (what a restore may reach)
        self._high: dict[tuple[Knob, str], float] = {}

    def arbitrate(
        self,
        proposals: Sequence[Proposal],
        *,
        step: int,
        groups: Sequence[str],
        multipliers: Mapping[tuple[Knob, str], float],
        ceilings: Ceilings | None = None,
    ) -> tuple[list[Decision], list[Rejection]]:
        """Decide which proposals to act on. Pure in its inputs and the arbiter's state.

        ``ceilings`` lowers the upper bound of single (knob, group) slots (a policy's
        ``multiplier_ceiling``); a slot already above its ceiling may only come down. It
        is a mapping, or a function of the multipliers that returns one: then the capped
        slots are decided last, against the ceilings of the multipliers as this decision
        leaves the others (a backbone's ceiling follows the head's LR, which may move in
        the same decision: a withdraw on both must not leave the backbone at the head's
        old level).
        """
        decisions: list[Decision] = []
        rejections: list[Rejection] = []
        by_slot: dict[tuple[Knob, str], list[Proposal]] = {}
        for proposal in proposals:
            if proposal.action is Action.RESCALE:
                why = _bad_rescale(proposal, groups)
                if why is not None:
                    rejections.append(Rejection(proposal, why))
                    continue
            if proposal.action is not Action.ADJUST:
                decisions.append(Decision(proposal, proposal.group, None, None))
                continue
            if proposal.knob is None or not _well_formed(proposal):
                rejections.append(
                    Rejection(
                        proposal,
                        "an adjustment needs a knob and exactly one of factor or target "
                        "(a withdraw: neither)",
                    )
                )
                continue
            targets = groups if proposal.group is None else (proposal.group,)
            for group in targets:
                if group not in groups:
                    rejections.append(Rejection(proposal, f"unknown group {group!r}"))
                    continue
                by_slot.setdefault((proposal.knob, group), []).append(proposal)

        if not by_slot:  # most steps: nothing to adjust, no ceilings to ask for
            return decisions, rejections
        ceiling_of = ceilings if callable(ceilings) else _fixed(ceilings)
        capped = set(ceiling_of(multipliers))
        decided = dict(multipliers)
        after: Mapping[tuple[Knob, str], float] | None = None  # capped slots' ceilings
        for slot in sorted(by_slot, key=lambda s: (s in capped, s[0].value, s[1])):
            old = multipliers.get(slot, 1.0)
            ceiling = None
            if slot in capped:
                after = ceiling_of(decided) if after is None else after
                ceiling = after.get(slot)
            contenders, checked = [], {}
            for proposal in by_slot[slot]:
                # an undo, withdraw or restore with nothing to take back asks for nothing,
                # so it must not supersede a proposal that asks for something
                if proposal.undo or proposal.withdraw or proposal.restore:
                    checked[id(proposal)] = verdict = self._limit(
                        proposal, slot, old, step, ceiling
                    )
                    if isinstance(verdict, str):
                        rejections.append(Rejection(proposal, verdict))
                        continue
                contenders.append(proposal)
            if not contenders:
                continue
            ranked = sorted(contenders, key=lambda p: (p.priority, _wanted(p, old)))
            winner, losers = ranked[0], ranked[1:]
            for loser in losers:
                rejections.append(
                    Rejection(loser, f"superseded by {winner.policy} on {slot[0].value}/{slot[1]}")
                )
            verdict = (
                checked[id(winner)]
                if id(winner) in checked
                else self._limit(winner, slot, old, step, ceiling)
            )
            if isinstance(verdict, str):
                rejections.append(Rejection(winner, verdict))
                continue
            decisions.append(Decision(winner, slot[1], old, verdict))
            decided[slot] = verdict
            self._high[slot] = max(self._high.get(slot, 1.0), old, verdict)
            direction = 1 if verdict > old else -1
            self._last[slot] = (step, direction, int(winner.priority), winner.policy)
            self._before[slot] = old
            own = (*slot, winner.policy)
            self._own[own] = self._own.get(own, 1.0) * verdict / old  # after a full withdraw: 1
        return decisions, rejections

    def _limit(
        self,
        proposal: Proposal,
        slot: tuple[Knob, str],
        old: float,
        step: int,
        ceiling: float | None = None,
    ):
        """Return the new multiplier, or a string saying why the proposal is refused."""
        cfg = self.config
        knob, group = slot
        last = self._last.get(slot)
        if proposal.undo:
            return self._undo(proposal, slot, old, step, last)
        if proposal.withdraw:
            return self._withdraw(proposal, slot, old, ceiling)
        if proposal.restore:
            return self._restore(proposal, slot, old, ceiling)
        urgent = proposal.priority is Priority.SAFETY
        if last is not None and not urgent and step - last[0] < cfg.cooldown:
            return f"{knob.value}/{group} is cooling down (moved at step {last[0]})"
        wanted = _wanted(proposal, old)
        if not math.isfinite(wanted) or wanted <= 0:
            return f"asked for a non-finite or non-positive multiplier ({wanted})"
        factor = wanted / old
        low, high = cfg.rate_limits.get(proposal.priority, (1.0, 1.0))
        factor = min(max(factor, low), high)
        b_low, b_high = self._bounds(knob, ceiling)
        if ceiling is not None and old > b_high and old * factor > old:
            return f"{knob.value}/{group} is above its ceiling {b_high:.4g}"
        new = min(max(old * factor, b_low), b_high)
        if abs(math.log(new / old)) < cfg.epsilon:
            return f"change below epsilon or at a bound ({knob.value}/{group} stays {old:.4g})"
        direction = 1 if new > old else -1
        if (
            last is not None
            and direction != last[1]
            and step - last[0] < cfg.reversal_window
            and int(proposal.priority) > last[2]
            and proposal.policy != last[3]
        ):
            return (
                f"reversal of {last[3]}'s change at step {last[0]} needs an equally urgent "
                f"reason within {cfg.reversal_window} steps"
            )
        return new

    def _bounds(self, knob: Knob, ceiling: float | None) -> tuple[float, float]:
        """The knob's multiplier bounds, the upper one lowered to a slot's ceiling."""
        low, high = self.config.bounds.get(knob, (1.0, 1.0))
        return low, high if ceiling is None else min(high, max(ceiling, low))

    def _undo(self, proposal: Proposal, slot: tuple[Knob, str], old: float, step: int, last):
        """Take back the proposer's own last change of ``slot``, at most to where it began.

        A policy that learns its change was wrong (the guard's cut for a "divergence"
        that turns out to be new data) restores the state the arbiter accepted before:
        no new ground, so neither the cooldown nor the rate limit applies.
        """
        knob, group = slot
        if last is None or last[3] != proposal.policy:
            return f"nothing of {proposal.policy}'s to undo on {knob.value}/{group}"
        if step - last[0] > self.config.reversal_window:
            return f"{proposal.policy}'s change at step {last[0]} is too old to undo"
        before = self._before.get(slot, 1.0)
        wanted = _wanted(proposal, old)
        if not math.isfinite(wanted) or wanted <= 0:
            return f"asked for a non-finite or non-positive multiplier ({wanted})"
        low, high = sorted((old, before))
        new = min(max(wanted, low), high)  # toward the start of that change, not past it
        if abs(math.log(new / old)) < self.config.epsilon:
            return f"nothing left to undo ({knob.value}/{group} stays {old:.4g})"
        return new

    def _withdraw(
        self, proposal: Proposal, slot: tuple[Knob, str], old: float, ceiling: float | None
    ):
        """Take back all of the proposer's accepted changes of ``slot`` at once.

        A policy whose changes answered conditions that no longer hold (plateau cuts made
        on data that has since changed) returns the knob to what every other policy's
        changes alone make it: a level the run held before, so the rate limit and the
        cooldown do not apply; the bounds and a ceiling still do.
        """
        knob, group = slot
        own = self._own.get((*slot, proposal.policy), 1.0)
        b_low, b_high = self._bounds(knob, ceiling)
        new = min(max(old / own, b_low), b_high)
        # only toward undoing: a bound or ceiling on the far side of ``old`` means there
        # is nothing to withdraw now (what is left stays on record)
        low, high = sorted((old, old / own))
        if abs(math.log(new / old)) < self.config.epsilon or not low <= new <= high:
            return f"nothing of {proposal.policy}'s to withdraw on {knob.value}/{group}"
        return new

    def _restore(
        self, proposal: Proposal, slot: tuple[Knob, str], old: float, ceiling: float | None
    ):
        """Move the knob up, at most to the highest multiplier the slot has held.

        A level the run already trained at is no new ground (new data that needs steps of
        the size that trained the old data), so the cooldown and the rate limit do not
        apply; the bounds and a ceiling still do.
        """
        knob, group = slot
        wanted = _wanted(proposal, old)
        if not math.isfinite(wanted) or wanted <= 0:
            return f"asked for a non-finite or non-positive multiplier ({wanted})"
        high = self._high.get(slot, 1.0)  # every level recorded includes the user's 1.0
        b_low, b_high = self._bounds(knob, ceiling)
        new = min(wanted, high, b_high)
        if new <= old * math.exp(self.config.epsilon):
            return (
                f"nothing to restore on {knob.value}/{group}: {old:.4g} is at or above the "
                f"asked {wanted:.4g} or the highest level it held ({high:.4g})"
            )
        return max(new, b_low)

    def state_dict(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "last": [[k.value, g, *v] for (k, g), v in sorted(self._last.items())],
            "before": [[k.value, g, v] for (k, g), v in sorted(self._before.items())],
            "own": [[k.value, g, p, v] for (k, g, p), v in sorted(self._own.items())],
            "high": [[k.value, g, v] for (k, g), v in sorted(self._high.items())],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("version") != STATE_VERSION:
            raise StateError(f"arbiter state version {state.get('version')!r} is unsupported")
        self._last = {
            (Knob(k), g): (int(s), int(d), int(p), str(pol)) for k, g, s, d, p, pol in state["last"]
        }
        # checkpoints from before undo existed lack it: nothing to undo then
        self._before = {(Knob(k), g): float(v) for k, g, v in state.get("before", [])}
        # ... or before withdraw existed: the changes made until then cannot be withdrawn
        self._own.clear()  # in place: ``own_record`` is a view of this dict
        self._own.update({(Knob(k), g, p): float(v) for k, g, p, v in state.get("own", [])})
        # ... or before restore existed: the levels held until then are not known
        self._high = {(Knob(k), g): float(v) for k, g, v in state.get("high", [])}


def _bad_rescale(proposal: Proposal, groups: Sequence[str]) -> str | None:
    """Why a rescale of the weights cannot be done (None: it can)."""
    factor = proposal.factor
    if factor is None or not math.isfinite(factor) or factor <= 0:
        return f"a rescale of the weights needs a finite factor above 0, got {factor!r}"
    if proposal.group is not None and proposal.group not in groups:
        return f"unknown group {proposal.group!r}"
    return None


def _well_formed(proposal: Proposal) -> bool:
    """A withdraw names no value; any other adjustment exactly one of factor or target."""
    if proposal.withdraw:
        return proposal.factor is None and proposal.target is None
    return (proposal.factor is None) != (proposal.target is None)


def _wanted(proposal: Proposal, old: float) -> float:
    """The multiplier a proposal asks for, before limits."""
    if proposal.target is not None:
        return proposal.target
    return old * (proposal.factor if proposal.factor is not None else 1.0)
