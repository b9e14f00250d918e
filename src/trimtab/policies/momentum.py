"""Momentum: a run that keeps bouncing across a valley gets less momentum, then it back.

``alignment/<group>`` is the cosine between the new gradient and the previous update's
direction. Persistently negative, each update overshoots: the gradient now points back
where the step came from. With heavy-ball or Adam momentum that overshoot feeds itself
(the velocity carries the weights past the valley floor again), so this policy lowers
the group's momentum (SGD ``momentum``, Adam ``betas[0]``) by ``factor``, at most down
to ``floor`` of the user's value. When the alignment has been non-negative for
``restore_after`` decisions in a row, it gives the momentum back one step at a time, up
to the user's value and never beyond. A level it gave back that overshoots again is not
given back a second time (the ceiling drops below it), so the knob cannot oscillate.
"""

from __future__ import annotations

import math
from typing import Any

from trimtab import _checks
from trimtab.errors import ConfigError
from trimtab.policies.base import Policy, PolicyState, PolicyView
from trimtab.types import Knob, Priority, Proposal


class Momentum(Policy):
    """Lower a group's momentum while its updates overshoot; restore it once they do not.

    Args:
        period: steps between decisions.
        window: alignment readings a decision averages (at least half of them needed).
        oscillate_below: mean alignment below which the updates overshoot.
        min_negative: share of those readings that must be negative too.
        factor: momentum factor of one cut, in (0, 1).
        floor: lowest momentum multiplier (of the user's own value), in (0, 1).
        restore_after: decisions in a row with non-negative mean alignment before one
            step back up.
    """

    name = "momentum"
    knobs = (Knob.MOMENTUM,)
    requires = ("alignment",)

    def __init__(
        self,
        *,
        period: int = 10,
        window: int = 10,
        oscillate_below: float = -0.2,
        min_negative: float = 0.7,
        factor: float = 0.8,
        floor: float = 0.5,
        restore_after: int = 3,
    ) -> None:
        self.period = _checks.count("period", period)
        self.window = _checks.count("window", window, minimum=2)
        self.oscillate_below = _checks.real("oscillate_below", oscillate_below)
        if not -1.0 < self.oscillate_below < 0.0:
            raise ConfigError(f"oscillate_below must be in (-1, 0), got {oscillate_below}")
        self.min_negative = _checks.in_open_unit("min_negative", min_negative)
        self.factor = _checks.in_open_unit("factor", factor)
        self.floor = _checks.in_open_unit("floor", floor)
        self.restore_after = _checks.count("restore_after", restore_after)

    def settings(self) -> dict[str, Any]:
        keys = [
            "period",
            "window",
            "oscillate_below",
            "min_negative",
            "factor",
            "floor",
            "restore_after",
        ]
        return {k: getattr(self, k) for k in keys}

    def initial_state(self) -> PolicyState:
        return {"groups": {}}

    def propose(self, view: PolicyView, state: PolicyState) -> tuple[list[Proposal], PolicyState]:
        groups = {g: dict(v) for g, v in state["groups"].items()}
        for group in view.groups:
            entry = groups.setdefault(
                group, {"aligns": [], "smooth": 0, "restored_to": None, "ceiling": 1.0}
            )
            reading = view.signals.fresh(f"alignment/{group}", view.step)
            if reading is not None and math.isfinite(reading):
                entry["aligns"] = [*entry["aligns"], reading][-self.window :]
        state = {"groups": groups}
        if view.step == 0 or view.step % self.period:
            return [], state
        proposals = []
        for group in view.groups:
            made = self._decide(view, group, groups[group])
            if made is not None:
                proposals.append(made)
        return proposals, state

    def _decide(self, view: PolicyView, group: str, entry: dict[str, Any]) -> Proposal | None:
        aligns = entry["aligns"]
        if len(aligns) < max(2, self.window // 2) or view.base(Knob.MOMENTUM, group) <= 0:
            return None
        mean = sum(aligns) / len(aligns)
        negative = sum(a < 0 for a in aligns) / len(aligns)
        current = view.multiplier(Knob.MOMENTUM, group)
        base = view.base(Knob.MOMENTUM, group)
        evidence = {"alignment": mean, "negative_share": negative, "momentum": current * base}
        if mean < self.oscillate_below and negative >= self.min_negative:
            entry["smooth"] = 0
            restored = entry["restored_to"]
            if restored is not None and math.isclose(current, restored, rel_tol=1e-6):
                # the level it was given back overshoots again: do not return to it
                entry["ceiling"] = min(entry["ceiling"], current * self.factor)
            target = max(current * self.factor, self.floor)
            if target >= current * (1 - 1e-9):
                return None  # already at the floor
            return Proposal(
                policy=self.name,
                reason=(
                    f"updates overshoot: mean alignment {mean:+.2f} over {len(aligns)} readings "
                    f"(< {self.oscillate_below:+.2f}, {negative:.0%} negative), the gradient "
                    f"keeps pointing back across the valley; momentum {current * base:.3g} -> "
                    f"{target * base:.3g}"
                ),
                priority=Priority.STABILITY,
                knob=Knob.MOMENTUM,
                group=group,
                target=target,
                signals=evidence,
            )
        entry["smooth"] = entry["smooth"] + 1 if mean >= 0 else 0
        target = min(current / self.factor, entry["ceiling"])
        if target <= current * (1 + 1e-9) or entry["smooth"] < self.restore_after:
            return None
        entry.update(smooth=0, restored_to=target)
        return Proposal(
            policy=self.name,
            reason=(
                f"updates no longer overshoot: mean alignment {mean:+.2f} for "
                f"{self.restore_after} decisions; momentum {current * base:.3g} -> "
                f"{target * base:.3g} (the user's value is {base:.3g}, the ceiling "
                f"{entry['ceiling'] * base:.3g})"
            ),
            priority=Priority.RECOVERY,
            knob=Knob.MOMENTUM,
            group=group,
            target=target,
            signals=evidence,
        )
