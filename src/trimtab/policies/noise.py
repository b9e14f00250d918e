"""Noise: when the gradient's signal-to-noise ratio falls for good, take smaller steps.

``noise/snr/<group>`` (the ``noise`` probe) is |G|^2 / (tr(Sigma) / B): how much of a
batch gradient is the true gradient. A step of size lr along a gradient with SNR s makes
expected progress in proportion to s / (1 + s) (McCandlish et al., 2018: the optimal
step shrinks by that factor as noise takes over). So this policy keeps a *healthy
reference* SNR per group (the median of its first ``reference_readings`` readings; not
raised later, since a maximum over noisy windows would ratchet up and read noise as a
fall) and aims the group's LR at

    target = h(now) / h(reference),   h(s) = s / (1 + s),

clamped to ``[floor, 1]`` of the user's LR, where ``now`` is the median of the last
``window`` readings (one noisy reading never moves anything). It acts only when the
target has stayed at least ``margin`` below its own current level for ``persistence``
decisions in a row, by at most ``max_cut`` per decision, and gives LR back (by at most
``restore_factor`` per decision, never beyond the user's LR) only when the target has
stayed ``margin`` above it as long. The dead band between the two and the persistence
are the hysteresis: stationary noise keeps the target inside the band, so the knob never
flips.

Its level is the product of its own factors that the arbiter accepted (``PolicyView.
own_factor``), so another policy's cut (a plateau) is never undone by a noise restore,
and a cut the arbiter clamped or refused is not counted as made.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

from trimtab import _checks
from trimtab.errors import ConfigError
from trimtab.policies.base import Policy, PolicyState, PolicyView
from trimtab.types import Knob, Priority, Proposal


def _h(snr: float) -> float:
    snr = max(snr, 0.0)
    return snr / (1.0 + snr)


class Noise(Policy):
    """Lower a group's LR while its gradient SNR sits well below its healthy level.

    Args:
        window: SNR readings whose median a decision uses.
        reference_readings: first readings whose median is the initial healthy level.
        period: new readings between decisions.
        margin: relative gap between target and current level that counts (the dead band).
        persistence: decisions in a row the gap must hold before acting.
        max_cut: smallest LR factor of one cut, in (0, 1).
        restore_factor: largest LR factor of one restore (> 1).
        floor: lowest LR level the policy sets, of the user's LR, in (0, 1).
    """

    name = "noise"
    requires = ("noise",)
    adds_probes = True

    def __init__(
        self,
        *,
        window: int = 32,
        reference_readings: int = 32,
        period: int = 4,
        margin: float = 0.25,
        persistence: int = 4,
        max_cut: float = 0.7,
        restore_factor: float = 1.25,
        floor: float = 0.25,
    ) -> None:
        self.window = _checks.count("window", window, minimum=3)
        self.reference_readings = _checks.count("reference_readings", reference_readings, minimum=3)
        self.period = _checks.count("period", period)
        self.margin = _checks.in_open_unit("margin", margin)
        self.persistence = _checks.count("persistence", persistence)
        self.max_cut = _checks.in_open_unit("max_cut", max_cut)
        self.restore_factor = _checks.positive("restore_factor", restore_factor)
        if self.restore_factor <= 1.0:
            raise ConfigError(f"restore_factor must be > 1, got {restore_factor}")
        self.floor = _checks.in_open_unit("floor", floor)

    def settings(self) -> dict[str, Any]:
        keys = [
            "window",
            "reference_readings",
            "period",
            "margin",
            "persistence",
            "max_cut",
            "restore_factor",
            "floor",
        ]
        return {k: getattr(self, k) for k in keys}

    def initial_state(self) -> PolicyState:
        return {"groups": {}}

    def propose(self, view: PolicyView, state: PolicyState) -> tuple[list[Proposal], PolicyState]:
        groups = {g: dict(v) for g, v in state["groups"].items()}
        proposals = []
        for group in view.groups:
            entry = groups.setdefault(
                group,
                {"readings": [], "first": [], "reference": None, "new": 0, "run": 0},
            )
            reading = view.signals.fresh(f"noise/snr/{group}", view.step)
            if reading is None or not math.isfinite(reading):
                continue
            entry["readings"] = [*entry["readings"], reading][-self.window :]
            entry["new"] += 1
            if entry["reference"] is None:
                entry["first"] = [*entry["first"], reading]
                if len(entry["first"]) >= self.reference_readings:
                    entry["reference"] = statistics.median(entry["first"])
                    entry["first"] = []
                    entry["new"] = 0
                continue
            if entry["new"] < self.period or len(entry["readings"]) < self.window:
                continue
            entry["new"] = 0
            entry.pop("level", None)  # checkpoints before the arbiter kept this record
            made = self._decide(group, entry, view.own_factor(self.name, Knob.LR, group))
            if made is not None:
                proposals.append(made)
        return proposals, {"groups": groups}

    def _decide(self, group: str, entry: dict[str, Any], level: float) -> Proposal | None:
        """One decision for ``group``; ``level`` is the product of this policy's accepted
        LR factors there."""
        now = statistics.median(entry["readings"])
        reference = entry["reference"]
        if _h(reference) <= 0:
            return None
        target = min(1.0, max(self.floor, _h(now) / _h(reference)))
        evidence = {"snr": now, "reference_snr": reference, "target": target, "level": level}
        at_floor = target <= self.floor and level > self.floor * (1 + 1e-9)
        if target < level * (1 - self.margin) or at_floor:
            direction = -1
        elif target > level * (1 + self.margin) or (target >= 1.0 and level < 1.0 - 1e-9):
            direction = 1
        else:
            entry["run"] = 0
            return None
        run = entry["run"]
        entry["run"] = run + direction if run * direction >= 0 else direction
        if abs(entry["run"]) < self.persistence:
            return None
        entry["run"] = 0
        if direction < 0:
            factor = max(target / level, self.max_cut)
            return Proposal(
                policy=self.name,
                reason=(
                    f"gradient signal-to-noise fell: median SNR {now:.3g} over the last "
                    f"{len(entry['readings'])} readings against a healthy {reference:.3g}, so a "
                    f"step makes {target:.0%} of the progress it did (s/(1+s)) for "
                    f"{self.persistence} decisions in a row; lr x{factor:.3g}"
                ),
                priority=Priority.SCHEDULE,
                knob=Knob.LR,
                group=group,
                factor=factor,
                signals=evidence,
            )
        factor = min(target / level, self.restore_factor, 1.0 / level)
        if factor <= 1.0 + 1e-9:
            return None
        return Proposal(
            policy=self.name,
            reason=(
                f"gradient signal-to-noise recovered: median SNR {now:.3g} against a healthy "
                f"{reference:.3g} (target {target:.0%} of the user's LR) for "
                f"{self.persistence} decisions in a row; lr x{factor:.3g} (noise's level "
                f"{level:.3g} -> {level * factor:.3g}, never above 1)"
            ),
            priority=Priority.RECOVERY,
            knob=Knob.LR,
            group=group,
            factor=factor,
            signals=evidence,
        )
