"""Fine-tuning: a smaller backbone learning rate, a limit on backbone drift, and optional
staged unfreezing, for models split into pretrained "backbone" and new "head" groups.

Which group is which comes from the param groups' names (``"backbone"``, ``"encoder"``,
... mark a backbone, the same words the run doctor uses), or from ``backbone=`` and
``head=``. Three rules act on the backbone groups only:

* Planned ratio. The backbone's LR is planned at ``ratio`` (default 0.1) x the LR the
  user gave its group. The pretrained features are already good; the usual fine-tuning
  recipes ("discriminative" LRs) give them 10x-100x smaller steps than a freshly
  initialised head, and 0.1 is the mild end of that range: the drift limit below cuts
  further when the backbone still moves too much. The ratio is part of the plan (like a
  schedule), not an adaptive move, so the arbiter's rate limits do not stretch it over
  many steps and the adaptive multiplier stays free for the drift rule.
* Drift limit. The ``drift`` probe reports ||w - w0|| / ||w0|| per group. Every
  ``period`` steps, if the median of the last ``window`` readings is above ``limit`` and
  still growing (a significant least-squares slope over the readings held, at this
  decision and the one before), the
  backbone's LR multiplier is cut by ``cut`` (at most every ``cooldown`` steps, never
  below ``floor``). The cut is provisional: it expects the drift to grow more slowly,
  and the next decision logs a verdict. Well under the limit (below ``ease_below`` x
  ``limit``) the policy's own cuts are undone by ``ease`` at a time; other policies'
  cuts are left alone.
* Staged unfreezing (``freeze > 0``). For the first ``freeze`` of the run the backbone's
  planned LR is exactly 0: optimizers multiply their update by the LR, so the weights
  stay bit-identical (``requires_grad`` is left alone; the optimizer state still
  accumulates, which warms it up for the unfreeze). Then the ratio is reached by a
  linear ramp over ``ramp`` of the run.
* Ceiling. Other policies may raise the backbone's LR multiplier only as far as the
  head's (``backbone_ceiling`` x the largest head multiplier), so the planned ratio
  between them holds: when the early phase finds that the user's LR was too small it
  may raise both, but a backbone never ramps alone. With a fixed cap at the plan
  instead, a run started at lr 1e-4 left the backbone 10x too slow (77-86 % accuracy
  on the benchmark's fine-tuning task against 98 %).

Planned changes (the ratio, freezing, the ramp) are logged as ``base`` events.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from trimtab import _checks, stats
from trimtab.errors import ConfigError
from trimtab.policies.base import Policy, PolicyState, PolicyView
from trimtab.types import Action, Knob, Priority, Proposal

# Same words as the run doctor's (trimtab.report.symptoms.BACKBONE_WORDS, checked by a
# test); not imported from there because the report package stays off the training path.
BACKBONE_WORDS = ("backbone", "encoder", "base", "body", "features", "pretrained", "trunk")


class FineTuning(Policy):
    """Keep a pretrained backbone's LR small, its drift bounded, optionally frozen first.

    Args:
        backbone: names of the backbone groups; default: groups whose name contains one of
            ``BACKBONE_WORDS``.
        head: names of the groups that are not backbone (default: all the others); a group
            named in both is an error.
        ratio: the backbone's planned LR as a fraction of its group's own LR, in (0, 1].
        limit: drift (||w - w0|| / ||w0||) above which the backbone LR is cut.
        cut: factor of that cut, in (0, 1).
        floor: the lowest LR multiplier the drift rule cuts to.
        ease_below: drift below ``ease_below`` x ``limit`` undoes the policy's own cuts.
        ease: factor of that easing (> 1).
        period: steps between drift decisions.
        window: drift readings whose median is compared with the limit.
        cooldown: steps between two moves of one group's LR.
        freeze: fraction of the run the backbone is frozen (LR exactly 0); 0: never.
        ramp: fraction of the run over which the LR then ramps up to the ratio.
        backbone_ceiling: a backbone's LR multiplier stays at most this times the largest
            head multiplier (1.0: the planned ratio holds); ``None``: no ceiling.
    """

    name = "fine_tuning"
    requires = ("drift",)

    def __init__(
        self,
        *,
        backbone: Sequence[str] | None = None,
        head: Sequence[str] | None = None,
        ratio: float = 0.1,
        limit: float = 0.1,
        cut: float = 0.5,
        floor: float = 0.05,
        ease_below: float = 0.5,
        ease: float = 1.25,
        period: int = 50,
        window: int = 3,
        cooldown: int = 100,
        freeze: float = 0.0,
        ramp: float = 0.1,
        backbone_ceiling: float | None = 1.0,
    ) -> None:
        self.backbone = None if backbone is None else tuple(backbone)
        self.head = None if head is None else tuple(head)
        if self.backbone is not None and self.head is not None:
            both = set(self.backbone) & set(self.head)
            if both:
                raise ConfigError(f"groups {sorted(both)} are named both backbone and head")
        self.ratio = _checks.positive("ratio", ratio)
        if self.ratio > 1.0:
            raise ConfigError(f"ratio must be in (0, 1] (a smaller backbone LR), got {ratio}")
        self.limit = _checks.positive("limit", limit)
        self.cut = _checks.in_open_unit("cut", cut)
        self.floor = _checks.in_open_unit("floor", floor)
        self.ease_below = _checks.in_open_unit("ease_below", ease_below)
        self.ease = _checks.positive("ease", ease)
        if self.ease <= 1.0:
            raise ConfigError(f"ease must be > 1, got {ease}")
        self.period = _checks.count("period", period)
        self.window = _checks.count("window", window)
        self.cooldown = _checks.count("cooldown", cooldown, minimum=0)
        self.freeze = _checks.real("freeze", freeze)
        self.ramp = _checks.real("ramp", ramp)
        self._heads: tuple[str, ...] = ()  # the run's head groups, set by ``bind``
        self.backbone_ceiling = (
            None
            if backbone_ceiling is None
            else _checks.positive("backbone_ceiling", backbone_ceiling)
        )
        for label, value in (("freeze", self.freeze), ("ramp", self.ramp)):
            if not 0.0 <= value < 1.0:
                raise ConfigError(f"{label} must be a fraction of the run in [0, 1), got {value}")
        if self.freeze + self.ramp >= 1.0:
            raise ConfigError(f"freeze + ramp must leave part of the run, got {freeze} + {ramp}")

    def settings(self) -> dict[str, Any]:
        keys = ["backbone", "head", "ratio", "limit", "cut", "floor", "ease_below", "ease"]
        keys += ["period", "window", "cooldown", "freeze", "ramp", "backbone_ceiling"]
        return {k: getattr(self, k) for k in keys}

    # -- roles ---------------------------------------------------------------------------
    def is_backbone(self, group: str) -> bool:
        """Whether ``group`` is treated as pretrained backbone."""
        if self.backbone is not None:
            return group in self.backbone
        if self.head is not None and group in self.head:
            return False
        return any(word in group.lower() for word in BACKBONE_WORDS)

    def multiplier_ceiling(
        self, knob: Knob, group: str, multipliers: Mapping[tuple[Knob, str], float]
    ) -> float | None:
        """A backbone's LR multiplier may not outgrow the head's (x ``backbone_ceiling``)."""
        if knob is not Knob.LR or self.backbone_ceiling is None or not self.is_backbone(group):
            return None
        heads = [multipliers.get((Knob.LR, g), 1.0) for g in self._heads]
        return self.backbone_ceiling * max(heads, default=1.0)

    def bind(self, groups: Sequence[str]) -> None:
        """Refuse a run whose groups have no backbone, or that names groups it lacks."""
        self._heads = tuple(g for g in groups if not self.is_backbone(g))
        named = [*(self.backbone or ()), *(self.head or ())]
        unknown = [g for g in named if g not in groups]
        if unknown:
            raise ConfigError(
                f"fine_tuning was given groups {unknown} that the optimizer does not have "
                f"(its param groups: {list(groups)})"
            )
        if not any(self.is_backbone(g) for g in groups):
            raise ConfigError(
                f"fine_tuning found no backbone group among the param groups {list(groups)}: "
                "put the pretrained weights in their own group named e.g. 'backbone' "
                f"(any name containing one of {list(BACKBONE_WORDS)}), as in "
                "[{'params': model.backbone.parameters(), 'name': 'backbone'}, "
                "{'params': model.head.parameters(), 'name': 'head'}], "
                "or pass FineTuning(backbone=('<group name>',))"
            )

    # -- the plan ------------------------------------------------------------------------
    def _stages(self, total_steps: int | None) -> tuple[int, int]:
        """(first step after the freeze, first step after the ramp)."""
        if self.freeze <= 0:
            return 0, 0
        if total_steps is None:
            raise ConfigError(
                "fine_tuning's staged unfreezing needs the run's length: pass "
                "Regime(..., total_steps=N), or freeze=0"
            )
        thawed = max(1, round(self.freeze * total_steps))
        return thawed, thawed + round(self.ramp * total_steps)

    def planned_lr(self, step: int, total_steps: int | None, group: str) -> float:
        """Factor on ``group``'s planned LR: 0 while frozen, the ramp, then ``ratio``."""
        if not self.is_backbone(group):
            return 1.0
        thawed, ramped = self._stages(total_steps)
        if step < thawed:
            return 0.0
        if step < ramped:
            return self.ratio * (step - thawed + 1) / (ramped - thawed + 1)
        return self.ratio

    def _stage(self, step: int, total_steps: int | None) -> str:
        thawed, ramped = self._stages(total_steps)
        return "frozen" if step < thawed else "ramp" if step < ramped else "ratio"

    # -- decisions -----------------------------------------------------------------------
    def initial_state(self) -> PolicyState:
        # easing undoes only what this policy cut, never another policy's cut: what it
        # cut is the arbiter's record of its accepted changes (PolicyView.own_factor)
        return {"stage": None, "drift": {}, "moved": {}, "trial": {}, "grew": {}}

    def propose(self, view: PolicyView, state: PolicyState) -> tuple[list[Proposal], PolicyState]:
        backbone = [g for g in view.groups if self.is_backbone(g)]
        drift = {g: [list(r) for r in v] for g, v in state["drift"].items()}
        for group in backbone:
            reading = view.signals.fresh(f"drift/{group}", view.step)
            if reading is not None and math.isfinite(reading):
                drift[group] = [*drift.get(group, []), [view.step, reading]][-4 * self.window :]
        state = {**state, "drift": drift, "moved": dict(state["moved"])}
        state["trial"] = dict(state["trial"])
        state.pop("owed", None)  # checkpoints before the arbiter kept this record
        proposals = self._plan_events(view, state, backbone)
        if view.step == 0 or view.step % self.period or state["stage"] == "frozen":
            return proposals, state
        for group in backbone:
            proposals += self._decide(view, state, group)
        return proposals, state

    def _plan_events(
        self, view: PolicyView, state: PolicyState, backbone: list[str]
    ) -> list[Proposal]:
        stage = self._stage(view.step, view.total_steps)
        if stage == state["stage"]:
            return []
        state["stage"] = stage
        thawed, ramped = self._stages(view.total_steps)
        reason = {
            "frozen": f"staged unfreezing: backbone frozen (lr exactly 0) until step {thawed}",
            "ramp": (
                f"staged unfreezing: backbone thawed, lr ramping linearly from 0 to "
                f"{self.ratio:g} x its group's lr by step {ramped}"
            ),
            "ratio": (
                f"fine-tuning: backbone lr planned at {self.ratio:g} x its group's lr, so the "
                "pretrained features take small steps while the head learns"
            ),
        }[stage]
        return [
            Proposal(
                policy=self.name,
                reason=reason,
                priority=Priority.SCHEDULE,
                action=Action.PLAN,
                knob=Knob.LR,
                group=group,
                signals={"planned_factor": self.planned_lr(view.step, view.total_steps, group)},
            )
            for group in backbone
        ]

    def _decide(self, view: PolicyView, state: PolicyState, group: str) -> list[Proposal]:
        readings = state["drift"].get(group, [])
        if len(readings) < self.window:
            return []
        level = stats.median([v for _, v in readings[-self.window :]])
        rate, significant = _growth(readings)
        # growth must show at two decisions in a row: the readings held overlap, and at a
        # stationary level one significant slope in ~20 decisions is chance
        grew = dict(state.get("grew", {}))
        growing = significant and grew.get(group, False)
        grew[group] = significant
        state["grew"] = grew
        evidence = {f"drift/{group}": level, "limit": self.limit, "drift_rate": rate}
        proposals = []
        trial = state["trial"].pop(group, None)
        if trial is not None:
            since, _ = _growth([r for r in readings if r[0] >= trial["step"]])
            proposals.append(self._verdict(group, trial, since, evidence))
        last = state["moved"].get(group)
        if last is not None and view.step - last < self.cooldown:
            return proposals
        current = view.multiplier(Knob.LR, group)
        if level > self.limit and growing and current > self.floor * 1.0001:
            new = max(current * self.cut, self.floor)
            state["moved"][group] = view.step
            state["trial"][group] = {"step": view.step, "rate": rate}
            proposals.append(
                Proposal(
                    policy=self.name,
                    reason=(
                        f"backbone drift {level:.3g} from the pretrained weights is above the "
                        f"limit {self.limit:g} and still growing ({rate:.3g}/step); lr "
                        f"multiplier {current:.3g} -> {new:.3g}, expecting slower drift"
                    ),
                    priority=Priority.REGULARIZATION,
                    knob=Knob.LR,
                    group=group,
                    target=new,
                    signals=evidence,
                )
            )
        elif (
            level < self.ease_below * self.limit
            and (owed := 1.0 / view.own_factor(self.name, Knob.LR, group)) > 1.0001
        ):
            new = current * min(self.ease, owed)
            state["moved"][group] = view.step
            proposals.append(
                Proposal(
                    policy=self.name,
                    reason=(
                        f"backbone drift {level:.3g} is well under the limit {self.limit:g} "
                        f"(< {self.ease_below:g}x); easing lr multiplier {current:.3g} -> "
                        f"{new:.3g}"
                    ),
                    priority=Priority.RECOVERY,
                    knob=Knob.LR,
                    group=group,
                    target=new,
                    signals=evidence,
                )
            )
        return proposals

    def _verdict(
        self, group: str, trial: dict[str, float], rate: float, evidence: dict[str, float]
    ) -> Proposal:
        met = rate < trial["rate"]
        return Proposal(
            policy=self.name,
            reason=(
                f"drift cut of step {int(trial['step'])} on {group}: drift now grows "
                f"{rate:.3g}/step against {trial['rate']:.3g}/step before; expectation "
                + ("met" if met else "not met")
            ),
            priority=Priority.REGULARIZATION,
            action=Action.VERDICT,
            group=group,
            signals={**evidence, "drift_rate_before": trial["rate"]},
        )


def _growth(readings: list[list[float]]) -> tuple[float, bool]:
    """Drift growth per step over ``readings`` (a least-squares slope), and whether it is
    significant (the slope's 95 % band excludes 0): noise around a level is not growth."""
    if len(readings) < 3:
        return 0.0, False
    fit = stats.trend([v for _, v in readings])
    spacing = max((readings[-1][0] - readings[0][0]) / (len(readings) - 1), 1.0)
    return fit.slope / spacing, fit.slope - fit.halfwidth > 0
