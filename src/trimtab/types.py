"""Closed vocabulary shared by every component: knobs, priorities, proposals, events.

Messages between components are frozen dataclasses so a policy cannot mutate what the
arbiter later reads, and enums keep the set of knobs and outcomes closed.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


class Knob(str, enum.Enum):
    """A hyperparameter trimtab may adjust, spelled as its ``param_groups`` key."""

    LR = "lr"
    MOMENTUM = "momentum"
    WEIGHT_DECAY = "weight_decay"
    MAX_GRAD_NORM = "max_grad_norm"


class Priority(int, enum.Enum):
    """Who wins when proposals conflict: a lower value is more urgent."""

    SAFETY = 0
    STABILITY = 1
    REGULARIZATION = 2
    SCHEDULE = 3
    RECOVERY = 4
    SPEED = 5


class Outcome(str, enum.Enum):
    """What ``Regime.step()`` did with the current gradients."""

    STEPPED = "stepped"
    SKIPPED = "skipped"
    ROLLED_BACK = "rolled_back"
    ACCUMULATING = "accumulating"


class Action(str, enum.Enum):
    """A proposal's effect beyond a knob change."""

    ADJUST = "adjust"
    SKIP = "skip"
    ROLLBACK = "rollback"
    STOP = "stop"
    VERDICT = "verdict"  # a provisional change's outcome, logged without moving a knob
    KEEP_BEST = "keep_best"  # keep the current weights as the best so far (not logged)
    RESTORE_BEST = "restore_best"  # load the weights kept by KEEP_BEST; the step is dropped
    # load the run's first snapshot (weights and optimizer state): the run starts again,
    # the weights kept by KEEP_BEST stay the best until it does better; the step is dropped
    RESTART = "restart"
    PLAN = "plan"  # a policy's planned base changed (Policy.planned_lr): logged as a base event
    # the data changed (not the weights): logged as a verdict; every policy sees the step
    # in ``PolicyView.data_changed_at`` and stops judging the new data by the old
    NEW_DATA = "new_data"
    # multiply the weights of ``group`` (None: every group) by ``factor``, in place: a
    # model that fitted old data confidently learns new data faster from smaller weights
    # (shrink and perturb, Ash & Adams 2020); the step is dropped, since its gradient
    # was taken at the weights before
    RESCALE = "rescale"


class EventKind(str, enum.Enum):
    """Kinds of audit-trail entries."""

    CHANGE = "change"
    SKIP = "skip"
    ROLLBACK = "rollback"
    STOP = "stop"
    BASE = "base"
    VERDICT = "verdict"
    RESTORE = "restore"
    RESCALE = "rescale"


@dataclass(frozen=True)
class Proposal:
    """A policy's request: move ``knob`` of ``group`` by ``factor`` (or act), and why.

    ``factor`` multiplies the knob's adaptive multiplier; ``target`` instead asks for an
    absolute multiplier. ``group=None`` means every group.
    """

    policy: str
    reason: str
    priority: Priority
    action: Action = Action.ADJUST
    knob: Knob | None = None
    group: str | None = None
    factor: float | None = None
    target: float | None = None
    signals: Mapping[str, float] = field(default_factory=dict)
    # takes back the proposing policy's own last change of this knob, no further than
    # where that change started: exempt from the cooldown and the rate limit
    undo: bool = False
    # takes back every change the proposing policy made to this knob (factor and target
    # stay None): the knob returns to what the other policies' changes alone made it,
    # exempt from the cooldown and the rate limit like ``undo``
    withdraw: bool = False
    # moves the knob up toward a level it held before: the arbiter clamps it at the
    # highest multiplier the slot has held, so it breaks no new ground and is exempt from
    # the cooldown, the rate limit and the reversal rule like ``undo``
    restore: bool = False


@dataclass(frozen=True)
class Decision:
    """A proposal the arbiter accepted, with the multiplier it will hold afterwards."""

    proposal: Proposal
    group: str | None
    old: float | None
    new: float | None


@dataclass(frozen=True)
class Rejection:
    """A proposal the arbiter refused, kept so the audit trail explains silence too."""

    proposal: Proposal
    why: str


@dataclass(frozen=True)
class Event:
    """One entry of the audit trail.

    For a knob change ``old``/``new`` are effective hyperparameter values as the
    optimizer sees them; skips, rollbacks and stops carry ``knob=None``.
    """

    step: int
    knob: str | None
    group: str | None
    old: float | None
    new: float | None
    policy: str
    reason: str
    kind: EventKind = EventKind.CHANGE
    signals: Mapping[str, float] = field(default_factory=dict)

    def to_record(self) -> dict[str, Any]:
        """Plain-data form used by the JSONL log and ``state_dict``."""
        return {
            "step": self.step,
            "kind": self.kind.value,
            "knob": self.knob,
            "group": self.group,
            "old": self.old,
            "new": self.new,
            "policy": self.policy,
            "reason": self.reason,
            "signals": dict(self.signals),
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Event:
        return cls(
            step=int(record["step"]),
            knob=record.get("knob"),
            group=record.get("group"),
            old=record.get("old"),
            new=record.get("new"),
            policy=str(record["policy"]),
            reason=str(record["reason"]),
            kind=EventKind(record.get("kind", EventKind.CHANGE.value)),
            signals=dict(record.get("signals", {})),
        )
