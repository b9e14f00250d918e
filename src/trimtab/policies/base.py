"""The policy contract: a pure rule from signals and its own state to proposals.

``propose`` does no I/O and never touches the optimizer; its state is plain data it
returns rather than mutates, so a test needs only a scripted ``Signals`` and the same
inputs always give the same proposals (which keeps distributed ranks in lockstep).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from trimtab.signals import Signals
from trimtab.types import Knob, Proposal

PolicyState = dict[str, Any]


@dataclass(frozen=True)
class PolicyView:
    """What a policy may read when it decides."""

    step: int
    total_steps: int | None
    signals: Signals
    groups: tuple[str, ...]
    multipliers: Mapping[tuple[Knob, str], float]
    bases: Mapping[tuple[Knob, str], float] = field(default_factory=dict)
    # step at which the weights were last rewound to a kept best or the start
    # (``RESTORE_BEST``, ``RESTART``):
    # histories a policy keeps of the abandoned trajectory no longer describe the weights
    rewound_at: int | None = None
    # step at which a policy found that the data changed (``Action.NEW_DATA``): losses,
    # observations and best weights from before it describe other data
    data_changed_at: int | None = None
    # upper bounds on single multipliers that capping policies set (``multiplier_ceiling``)
    ceilings: Mapping[tuple[Knob, str], float] = field(default_factory=dict)
    # (knob, group, policy) -> product of the factors the arbiter accepted from that
    # policy: what a policy's own changes amount to, after clamps and refusals
    own: Mapping[tuple[Knob, str, str], float] = field(default_factory=dict)
    # step of the state a RESTART returns to (the run's first snapshot); None: none kept
    restart_step: int | None = None
    # step() calls before this one, skipped and rolled-back ones included: the user's loop
    # counter, which ``total_steps`` plans (``step`` counts only the updates made)
    calls: int | None = None
    # the ``calls`` count at the last rollback to a snapshot (``Action.ROLLBACK``): losses
    # of later calls were measured at the restored, known-good weights or after them
    rolled_back_call: int | None = None

    def data_changed_since(self, seen: int | None) -> bool:
        """Whether a data change was announced that a policy, which last saw the one at
        step ``seen`` (``None``: none), has not answered yet."""
        return self.data_changed_at is not None and self.data_changed_at != seen

    def multiplier(self, knob: Knob, group: str) -> float:
        return self.multipliers.get((knob, group), 1.0)

    def own_factor(self, policy: str, knob: Knob, group: str) -> float:
        """The product of ``policy``'s accepted changes to ``knob`` on ``group`` (1.0: none
        on record). A policy that gives back only its own cuts reads this rather than
        counting what it proposed: a proposal may be clamped, superseded or refused."""
        return self.own.get((knob, group, policy), 1.0)

    def base(self, knob: Knob, group: str) -> float:
        """The user's own value (the schedule's, between steps); 1.0 when unknown."""
        return self.bases.get((knob, group), 1.0)


class Policy:
    """Base class: subclasses set ``name`` and implement ``initial_state`` and ``propose``."""

    name: str = "policy"
    knobs: tuple[Knob, ...] = ()  # knobs the policy may adjust besides lr
    requires: tuple[str, ...] = ()  # probes whose signals it reads
    # Regime adds a requested policy's missing ``requires`` probes (default settings) when
    # probes= is left at its default; True: also into a probe set the user chose
    adds_probes: bool = False

    def initial_state(self) -> PolicyState:
        return {}

    def propose(self, view: PolicyView, state: PolicyState) -> tuple[list[Proposal], PolicyState]:
        raise NotImplementedError

    def bind(self, groups: Sequence[str]) -> None:
        """Check the run's param group names once, before the first step (raise
        ``ConfigError`` when the policy cannot work with them)."""

    def planned_lr(self, step: int, total_steps: int | None, group: str) -> float:
        """A planned factor on ``group``'s LR base, composed like a schedule (>= 0).

        Unlike an adaptive multiplier it is outside the arbiter's bounds, so it may be
        exactly 0 (a frozen group). Pure in its arguments; announce changes of plan
        with an ``Action.PLAN`` proposal.
        """
        return 1.0

    def multiplier_ceiling(
        self, knob: Knob, group: str, multipliers: Mapping[tuple[Knob, str], float]
    ) -> float | None:
        """The highest multiplier any policy may give ``knob`` on ``group`` now, or ``None``.

        Asked before each decision with the current multipliers; the arbiter lowers that
        slot's upper bound to it (e.g. a pretrained backbone's LR may not outgrow its
        head's). Pure in its arguments.
        """
        return None

    def settings(self) -> dict[str, Any]:
        """The policy's configuration, written to the run header of the log."""
        return {}
