"""Stability guard: skip non-finite steps, roll back on divergence, then ramp back up.

A spike is judged against the run's own recent loss distribution (median and an
upper-tail robust scale) and against the progress made since the start, so the same
settings work for a loss of 2.3 and a loss of 0.01. All checks run before the update,
so a flagged batch never reaches the weights:

- one batch far above range is skipped (it may be a bad batch);
- if the next batch, at the same weights, is also well above range (a lower bar), or
  the loss rises for a sustained stretch, the weights are bad: roll back to the last
  known-good snapshot and cut the learning rate;
- right after a rollback the restored (good) weights are checked on the next batches:
  if the loss is still high there, the data changed, and after a few skipped batches
  the new level is accepted instead of rolling back in a loop;
- after a rollback the learning rate is brought back gradually to a ceiling; repeated
  divergences ratchet that ceiling down, which is how a learning rate that is far too
  high is found and fixed without a sweep.
"""

from __future__ import annotations

import math
from typing import Any

from trimtab import _checks, stats
from trimtab.errors import ConfigError
from trimtab.policies.base import Policy, PolicyState, PolicyView
from trimtab.types import Action, Knob, Priority, Proposal


class StabilityGuard(Policy):
    """Keep non-finite and divergent updates away from the weights.

    Args:
        spike_z: robust z-score above which a loss is a spike.
        sustained_z: z-score that, held for ``sustained_steps`` in a row, is a divergence.
        sustained_steps: length of that run.
        grad_z: robust z-score (on log gradient norm) above which the step is skipped.
        rel_floor: smallest loss scale, as a fraction of the median, so a very quiet
            loss does not turn noise into spikes.
        early_floor: the smallest scale while fewer than ``min_history`` losses are known.
        min_history: losses needed before the window's own spread is trusted.
        lost_fraction: a spike must also undo at least this share of the progress made
            since the first steps (a sustained rise, half of it).
        window: number of recent losses that define the normal range.
        max_skips: consecutive non-finite steps that mean the weights, not the batch,
            are broken (then roll back).
        cut: LR factor applied with a rollback.
        repeat_cut: LR factor when divergence repeats within ``memory`` steps.
        ceiling: after a repeated divergence, recovery stops at this fraction of the
            effective learning rate that diverged.
        recovery_factor: LR factor per recovery step.
        recovery_every: healthy steps between recovery steps.
        memory: steps within which a second divergence counts as a repeat.
    """

    name = "stability_guard"
    requires = ("loss", "grad_norm", "nonfinite")

    def __init__(
        self,
        *,
        spike_z: float = 6.0,
        sustained_z: float = 3.0,
        sustained_steps: int = 6,
        grad_z: float = 6.0,
        rel_floor: float = 0.1,
        early_floor: float = 0.5,
        min_history: int = 8,
        lost_fraction: float = 0.2,
        window: int = 64,
        max_skips: int = 3,
        cut: float = 0.3,
        repeat_cut: float = 0.1,
        ceiling: float = 0.3,
        recovery_factor: float = 1.25,
        recovery_every: int = 10,
        memory: int = 300,
    ) -> None:
        self.spike_z = _checks.positive("spike_z", spike_z)
        self.sustained_z = _checks.positive("sustained_z", sustained_z)
        if self.sustained_z >= self.spike_z:
            raise ConfigError(f"sustained_z ({sustained_z}) must be below spike_z ({spike_z})")
        self.sustained_steps = _checks.count("sustained_steps", sustained_steps, minimum=2)
        self.grad_z = _checks.positive("grad_z", grad_z)
        self.rel_floor = _checks.in_open_unit("rel_floor", rel_floor)
        self.early_floor = _checks.positive("early_floor", early_floor)
        self.min_history = _checks.count("min_history", min_history)
        self.lost_fraction = _checks.in_open_unit("lost_fraction", lost_fraction)
        self.window = _checks.count("window", window, minimum=4)
        self.max_skips = _checks.count("max_skips", max_skips)
        self.cut = _checks.in_open_unit("cut", cut)
        self.repeat_cut = _checks.in_open_unit("repeat_cut", repeat_cut)
        self.ceiling = _checks.in_open_unit("ceiling", ceiling)
        self.recovery_factor = _checks.positive("recovery_factor", recovery_factor)
        if self.recovery_factor <= 1.0:
            raise ConfigError(f"recovery_factor must be > 1, got {recovery_factor}")
        self.recovery_every = _checks.count("recovery_every", recovery_every)
        self.memory = _checks.count("memory", memory)

    def settings(self) -> dict[str, Any]:
        keys = [
            "spike_z",
            "sustained_z",
            "sustained_steps",
            "grad_z",
            "rel_floor",
            "early_floor",
            "min_history",
            "lost_fraction",
            "window",
            "max_skips",
            "cut",
            "repeat_cut",
            "ceiling",
            "recovery_factor",
            "recovery_every",
            "memory",
        ]
        return {k: getattr(self, k) for k in keys}

    def initial_state(self) -> PolicyState:
        return {
            "losses": [],  # recent losses that were not spikes
            "start_losses": [],  # the first few losses: the level progress is measured from
            "log_grad_norms": [],
            "skips_in_row": 0,
            "above_in_row": 0,
            "last_divergence": None,
            "ceilings": {},  # group -> {"lr": effective LR cap, "multiplier": pre-cut}
            "healthy_since": 0,
            "suspect": False,  # the previous batch was a spike (and was skipped)
            "verifying": False,  # checking the first losses after a rollback
            "shifted": [],  # high losses seen at the restored weights
            "grad_outliers": [],  # log gradient norms of the outlier skips in a row
            "rewound_at": None,  # the last rewind by another policy that was followed
            "data_since": None,  # the last data change announced (by any policy) seen
        }

    def propose(self, view: PolicyView, state: PolicyState) -> tuple[list[Proposal], PolicyState]:
        state = {**state, "ceilings": {g: dict(c) for g, c in state["ceilings"].items()}}
        self._follow_others(view, state)
        if view.rewound_at is not None and view.rewound_at != state.get("rewound_at"):
            # Another policy rewound the weights to an earlier best: the loss level of the
            # abandoned trajectory is no range to judge the restored weights by.
            state.update(
                rewound_at=view.rewound_at,
                losses=[],
                log_grad_norms=[],
                grad_outliers=[],
                suspect=False,
                above_in_row=0,
            )
        signals = view.signals
        loss = signals.fresh("loss/train", view.step)
        grad_norm = signals.fresh("grad_norm/global", view.step)
        if view.data_changed_since(state.get("data_since")):
            state["data_since"] = view.data_changed_at
            if state["verifying"] and loss is not None and math.isfinite(loss):
                # Another policy (``shift``) confirmed new data while the restored weights
                # were being checked: that answers the question the check asks.
                return self._accept(view, state, [*state["shifted"], loss]), state
        if signals.fresh("nonfinite/any", view.step) == 1.0:
            return self._nonfinite(view, state, loss, grad_norm)
        state["skips_in_row"] = 0

        if loss is not None and len(state["losses"]) >= 1:
            centre, sigma = stats.upper_range(state["losses"])
            # Until the window holds min_history losses its spread is not known yet: only
            # a loss several times the first ones counts (early_floor of the median).
            floor = self.rel_floor if len(state["losses"]) >= self.min_history else self.early_floor
            scale = max(sigma, floor * abs(centre), 1e-12)
            z = (loss - centre) / scale
            # Progress made since the start: a spike must also undo a real share of it,
            # so a batch at 0.05 when the median is 0.005 (and the start was 2.3) is noise.
            progress = max(stats.median(state["start_losses"]) - centre, 0.0)
            lost = (loss - centre) / progress if progress > 0 else math.inf
            evidence = {
                "loss/train": loss,
                "loss/median": centre,
                "loss/scale": scale,
                "z": z,
                "progress_lost": min(lost, 1e9),
            }
            spike = z > self.spike_z and lost > self.lost_fraction
            high = z > self.sustained_z and lost > self.lost_fraction / 2
            if state["verifying"]:
                verdict = self._verify(view, state, loss, flagged=spike or high, evidence=evidence)
                if verdict is not None:
                    return verdict, state
            if state["suspect"] and (spike or high):
                why = (
                    f"loss {loss:.4g} is still {z:.1f} robust sigmas above its recent median "
                    f"{centre:.4g} on the batch after a spike (scale {scale:.3g})"
                )
                cut_since = state.get("suspect_lr", {})
                already = bool(cut_since) and all(
                    view.multiplier(Knob.LR, g) < cut_since.get(g, 0.0) * 0.999 for g in view.groups
                )
                return self._diverged(view, state, why, evidence, already_cut=already)
            if spike:
                why = (
                    f"loss {loss:.4g} is {z:.1f} robust sigmas above its recent median "
                    f"{centre:.4g} (scale {scale:.3g}, threshold {self.spike_z})"
                )
                if progress > 0:
                    why += f" and undoes {lost:.0%} of the progress since the start"
                # One high batch may be a bad batch, not bad weights: skip it and judge the
                # next one (at the same weights). The update never reaches the weights.
                state["suspect"] = True
                state["suspect_loss"] = min(loss, centre + self.spike_z * scale)
                state["suspect_lr"] = {g: view.multiplier(Knob.LR, g) for g in view.groups}
                skip = Proposal(
                    policy=self.name,
                    reason=f"{why}; step skipped (if the next batch is high too: roll back)",
                    priority=Priority.SAFETY,
                    action=Action.SKIP,
                    signals=evidence,
                )
                return [skip], state
            if state["suspect"]:
                # The spike was one hard batch (this one is normal): it still belongs to
                # the data's range, at the spike bar, so that frequent hard batches widen
                # the upper tail instead of ending in rollbacks by two-in-a-row chance.
                state["losses"] = [*state["losses"], state.get("suspect_loss", centre)][
                    -self.window :
                ]
            state["suspect"] = False
            state["above_in_row"] = state["above_in_row"] + 1 if high else 0
            if state["above_in_row"] >= self.sustained_steps:
                why = (
                    f"loss stayed above {self.sustained_z} robust sigmas of its median "
                    f"{centre:.4g} for {state['above_in_row']} steps (now {loss:.4g})"
                )
                return self._diverged(view, state, why, evidence)

        proposals: list[Proposal] = []
        if grad_norm is not None and grad_norm > 0:
            skip = self._grad_outlier(state, grad_norm)
            if skip is not None:
                return [skip], state
            state["log_grad_norms"] = [*state["log_grad_norms"], math.log(grad_norm)][
                -self.window :
            ]
        if loss is not None:
            state["losses"] = [*state["losses"], loss][-self.window :]
            if len(state["start_losses"]) < 8:
                state["start_losses"] = [*state["start_losses"], loss]
        state["healthy_since"] += 1
        proposals.extend(self._recover(view, state))
        return proposals, state

    # -- pieces ------------------------------------------------------------------------
    def _nonfinite(
        self, view: PolicyView, state: PolicyState, loss: float | None, grad_norm: float | None
    ) -> tuple[list[Proposal], PolicyState]:
        state["skips_in_row"] += 1
        evidence = {"loss/train": _plain(loss), "grad_norm/global": _plain(grad_norm)}
        if state["skips_in_row"] >= self.max_skips:
            why = (
                f"{state['skips_in_row']} non-finite steps in a row (loss={loss}, "
                f"grad_norm={grad_norm}): the weights, not one batch, are broken"
            )
            state["skips_in_row"] = 0
            return self._diverged(view, state, why, evidence)
        why = f"non-finite loss or gradient (loss={loss}, grad_norm={grad_norm}); step skipped"
        skip = Proposal(
            policy=self.name,
            reason=why,
            priority=Priority.SAFETY,
            action=Action.SKIP,
            signals=evidence,
        )
        return [skip], state

    def _verify(
        self,
        view: PolicyView,
        state: PolicyState,
        loss: float,
        *,
        flagged: bool,
        evidence: dict[str, float],
    ) -> list[Proposal] | None:
        """Judge the losses seen right after a rollback, at the restored weights.

        Those weights were good, so a high loss now is about the data: a burst of bad
        batches is skipped; if it lasts ``sustained_steps`` batches the data has changed,
        and the new level is accepted instead of rolling back in a loop. The rollback's
        LR cut answered a divergence that was not one, so it is taken back at once (an
        undo: the new data needs steps of the old size, not a slow ramp). The divergence
        stays on record: should the weights really diverge next, that counts as a
        repeat, with the steeper cut.
        """
        if not flagged:
            state.update(verifying=False, shifted=[])
            return None
        shifted = [*state["shifted"], loss]
        if len(shifted) >= self.sustained_steps:
            announce = Proposal(
                policy=self.name,
                reason=(
                    f"the data changed: the loss stayed high for {len(shifted)} batches at the "
                    f"restored known-good weights (median {stats.median(shifted):.4g}); the "
                    "weights had not diverged, the new level is accepted"
                ),
                priority=Priority.SAFETY,
                action=Action.NEW_DATA,
                signals={"batches_high": float(len(shifted)), "loss/train": loss},
            )
            return [announce, *self._accept(view, state, shifted)]
        state["shifted"] = shifted
        why = (
            f"loss {loss:.4g} is still high at the restored known-good weights "
            f"({len(shifted)} of {self.sustained_steps} batches): this batch looks unlike "
            "recent data; step skipped"
        )
        return [
            Proposal(
                policy=self.name,
                reason=why,
                priority=Priority.SAFETY,
                action=Action.SKIP,
                signals=evidence,
            )
        ]

    def _accept(self, view: PolicyView, state: PolicyState, shifted: list[float]) -> list[Proposal]:
        """End the check of the restored weights: the high losses are the new data's level,
        and the old data's gradient norms are no range for the new data's."""
        state.update(
            losses=shifted,
            shifted=[],
            verifying=False,
            above_in_row=0,
            log_grad_norms=[],
            grad_outliers=[],
        )
        return self._give_back(view, state, len(shifted))

    def _give_back(self, view: PolicyView, state: PolicyState, batches: int) -> list[Proposal]:
        """Undo the rollback's LR cut per group: the jump was new data, not divergence."""
        proposals = []
        for group, ceiling in sorted(state["ceilings"].items()):
            current = view.multiplier(Knob.LR, group)
            target = ceiling["multiplier"]
            if target <= current * 1.0001:
                continue
            ceiling["intended"] = target
            proposals.append(
                Proposal(
                    policy=self.name,
                    reason=(
                        f"the loss stayed high for {batches} batches at the restored "
                        "known-good weights: the data changed, the weights had not diverged; "
                        f"giving back the rollback's lr cut (multiplier {current:.3g} -> "
                        f"{target:.3g})"
                    ),
                    priority=Priority.RECOVERY,
                    knob=Knob.LR,
                    group=group,
                    target=target,
                    signals={"batches_high": float(batches)},
                    undo=True,
                )
            )
        return proposals

    def _grad_outlier(self, state: PolicyState, grad_norm: float) -> Proposal | None:
        """Skip a step whose gradient norm is far outside its recent range.

        ``sustained_steps`` outliers in a row at healthy losses are a new level (the data
        changed), not a burst: the new norms become the range and the step goes ahead.
        """
        history = state["log_grad_norms"]
        if len(history) < 8:
            return None
        centre, sigma = stats.robust_range(history)
        scale = max(sigma, math.log(1.5))
        z = (math.log(grad_norm) - centre) / scale
        if z <= self.grad_z:
            state["grad_outliers"] = []
            return None
        outliers = [*state.get("grad_outliers", []), math.log(grad_norm)]
        if len(outliers) >= self.sustained_steps:
            state.update(log_grad_norms=outliers[:-1], grad_outliers=[])  # + this one, below
            return None
        state["grad_outliers"] = outliers
        typical = math.exp(centre)
        why = (
            f"gradient norm {grad_norm:.4g} is {grad_norm / typical:.1f}x its recent median "
            f"{typical:.4g} (robust z {z:.1f} > {self.grad_z}); step skipped"
        )
        evidence = {"grad_norm/global": grad_norm, "grad_norm/median": typical, "z": z}
        return Proposal(
            policy=self.name,
            reason=why,
            priority=Priority.SAFETY,
            action=Action.SKIP,
            signals=evidence,
        )

    def _diverged(
        self,
        view: PolicyView,
        state: PolicyState,
        why: str,
        evidence: dict[str, float],
        *,
        already_cut: bool = False,
    ) -> tuple[list[Proposal], PolicyState]:
        """Roll back and cut the LR; with ``already_cut`` (another policy cut every
        group's LR since the spike, for the same overshoot) roll back without cutting."""
        last = state["last_divergence"]
        repeated = last is not None and view.step - last <= self.memory
        cut = 1.0 if already_cut else self.repeat_cut if repeated else self.cut
        for group in view.groups:
            current = view.multiplier(Knob.LR, group)
            effective = current * view.base(Knob.LR, group)
            # An isolated spike may be one bad batch: recover fully. A repeat means the
            # learning rate itself is too high: recover only to a fraction of it. The
            # ceiling is an effective LR, so a user schedule that lowers the base later
            # (or a base that was briefly too high) does not keep the multiplier down.
            before = state["ceilings"].get(group, {}).get("multiplier", current)
            state["ceilings"][group] = {
                "lr": effective * self.ceiling if repeated else effective,
                # where recovery stops: the level before the guard's own cuts
                "multiplier": max(before, current),
                "seen": current * cut,
            }
        # The loss window is kept: the snapshot restored is from that same stretch.
        state.update(
            last_divergence=view.step,
            suspect=False,
            above_in_row=0,
            healthy_since=0,
            verifying=True,
            shifted=[],
        )
        kind = "repeated divergence" if repeated else "divergence"
        rollback = Proposal(
            policy=self.name,
            reason=f"{kind}: {why}; rolling back to the last known-good state"
            + (
                "; the lr was already cut since the spike, so no further cut" if already_cut else ""
            ),
            priority=Priority.SAFETY,
            action=Action.ROLLBACK,
            signals=evidence,
        )
        if already_cut:
            return [rollback], state
        proposals = [
            rollback,
            Proposal(
                policy=self.name,
                reason=f"{kind}: {why}; cutting lr x{cut}",
                priority=Priority.SAFETY,
                knob=Knob.LR,
                factor=cut,
                signals=evidence,
            ),
        ]
        return proposals, state

    def _follow_others(self, view: PolicyView, state: PolicyState) -> None:
        """Move the recovery target with other policies' changes to the LR.

        Recovery restores only what the guard itself cut: when a plateau cut halves the
        rate during recovery, the level to return to halves too (and a raise lifts it).
        """
        for group, ceiling in state["ceilings"].items():
            current = view.multiplier(Knob.LR, group)
            seen = ceiling.get("seen", current)
            intended = ceiling.pop("intended", None)
            ours = intended is not None and math.isclose(current, intended, rel_tol=1e-6)
            if not ours and seen > 0 and not math.isclose(current, seen, rel_tol=1e-6):
                ceiling["multiplier"] *= current / seen
                ceiling["lr"] *= current / seen  # both limits: recovery stops below either
            ceiling["seen"] = current

    def _recover(self, view: PolicyView, state: PolicyState) -> list[Proposal]:
        if state["healthy_since"] < self.recovery_every or not state["ceilings"]:
            return []
        if state["healthy_since"] % self.recovery_every:
            return []
        proposals = []
        for group, ceiling in sorted(state["ceilings"].items()):
            current = view.multiplier(Knob.LR, group)
            base = view.base(Knob.LR, group)
            if base <= 0:
                continue  # a schedule at zero: nothing to recover towards yet
            limit = min(ceiling["multiplier"], ceiling["lr"] / base)
            if current >= limit * 0.999:
                continue
            target = min(current * self.recovery_factor, limit)
            ceiling["intended"] = target
            proposals.append(
                Proposal(
                    policy=self.name,
                    reason=(
                        f"{state['healthy_since']} healthy steps since the last divergence; "
                        f"raising lr multiplier {current:.3g} -> {target:.3g} "
                        f"(lr {current * base:.3g} -> {target * base:.3g}; ceiling lr "
                        f"{ceiling['lr']:.3g})"
                    ),
                    priority=Priority.RECOVERY,
                    knob=Knob.LR,
                    group=group,
                    target=target,
                    signals={"healthy_steps": float(state["healthy_since"])},
                )
            )
        return proposals


def _plain(value: float | None) -> float:
    return float("nan") if value is None else value
