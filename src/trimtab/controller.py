"""The framework-agnostic core: measure -> propose -> arbitrate -> actuate.

Call ``before_step(loss)`` after the gradients exist and before ``optimizer.step()``;
it returns whether to step, skip or (having already restored the weights) treat the step
as rolled back. Call ``after_step(outcome)`` right after. ``Regime`` does this for plain
loops; framework integrations call it from their pre-optimizer-step hook.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from trimtab import _checks, stats
from trimtab.actuator import Actuator, GroupHandle
from trimtab.arbiter import Arbiter, ArbiterConfig, scale_exponent
from trimtab.errors import ConfigError, ConfigTypeError, StateError
from trimtab.guard import Guard
from trimtab.log import EventLog, Sink
from trimtab.policies import Policy, PolicyView
from trimtab.probes import GroupView, Probe, StepContext
from trimtab.run_header import describe_run
from trimtab.schedules import Schedule
from trimtab.signals import Signals
from trimtab.types import (
    Action,
    Decision,
    Event,
    EventKind,
    Knob,
    Outcome,
    Proposal,
    Rejection,
)

STATE_VERSION = 1


@dataclasses.dataclass
class StepEffects:
    """What one step did to the weights besides the optimizer's update, for whoever
    keeps a copy of them (the weight average): reset at every ``before_step``."""

    restored: str | None = None  # loaded "snapshot" (a rollback), "best" or "initial"
    rescaled: bool = False  # a policy multiplied weights (Action.RESCALE)
    kept_best: bool = False  # the weights were kept as the best so far
    data_changed: bool = False  # a policy found that the data changed (Action.NEW_DATA)


class Controller:
    """Owns the signals, policies, arbiter, actuator, guard and audit trail of one run.

    Args:
        model: the module being trained (for snapshots and the run description).
        optimizers: the optimizers that update it.
        handles: every param group, named.
        probes: instantiated probes, run in order.
        policies: instantiated policies, asked in order.
        total_steps: planned number of optimizer steps (``None``: open-ended).
        arbiter: limits for knob changes; by default
            ``ArbiterConfig.for_model_size(trainable parameters of model)``, recorded as
            ``header["arbiter_scale"]`` (a framework calling the controller directly gets
            the same size-aware limits as ``Regime``).
        log: the JSONL audit trail (``EventLog(None)`` keeps nothing on disk).
        sinks: further receivers of every log record (TensorBoard, MLflow, ...).
        log_every: cadence of signal snapshots in the log.
        snapshot_every: cadence of known-good snapshots.
        schedule: a base schedule composed under the adaptive multipliers.
        max_grad_norm: clip each param group's gradient norm to this (times the adaptive
            multiplier of ``max_grad_norm``) before the step; ``None``: no clipping.
        run_info: extra facts for the run header (precision, accumulation, ...).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        optimizers: Sequence[torch.optim.Optimizer],
        handles: Sequence[GroupHandle],
        *,
        probes: Sequence[Probe],
        policies: Sequence[Policy],
        total_steps: int | None,
        arbiter: ArbiterConfig | None = None,
        log: EventLog | None = None,
        sinks: Sequence[Sink] = (),
        log_every: int = 10,
        snapshot_every: int = 25,
        schedule: Schedule | None = None,
        run_info: Mapping[str, Any] | None = None,
        max_grad_norm: float | None = None,
    ) -> None:
        self.model = model
        self.optimizers = tuple(optimizers)
        self.handles = tuple(handles)
        self.group_names = tuple(h.name for h in self.handles)
        self.probes = tuple(probes)
        self.policies = tuple(policies)
        self.total_steps = total_steps
        for policy in self.policies:
            bind = getattr(policy, "bind", None)  # policies not built on Policy may lack it
            if bind is not None:
                bind(self.group_names)
        # policies that plan an LR base of their own (e.g. a frozen backbone)
        self._planners = tuple(
            p
            for p in self.policies
            if getattr(type(p), "planned_lr", Policy.planned_lr) is not Policy.planned_lr
        )
        # policies that bound other policies' multipliers (e.g. a backbone's LR)
        self._capping = tuple(
            p
            for p in self.policies
            if getattr(type(p), "multiplier_ceiling", Policy.multiplier_ceiling)
            is not Policy.multiplier_ceiling
        )
        for policy in self._planners:  # surface a plan's configuration errors now
            for group in self.group_names:
                policy.planned_lr(0, total_steps, group)
        self.log_every = _checks.count("log_every", log_every)
        if schedule is not None and not isinstance(schedule, Schedule):
            raise ConfigTypeError(
                f"schedule must be a trimtab.schedules.Schedule, got {type(schedule).__name__}"
            )
        if schedule is not None and total_steps is None:
            raise ConfigError("a schedule needs total_steps: pass Regime(..., total_steps=N)")
        self.schedule = schedule
        knobs = {Knob.LR}
        self.clip_base = (
            None if max_grad_norm is None else _checks.positive("max_grad_norm", max_grad_norm)
        )
        if self.clip_base is not None:
            knobs.add(Knob.MAX_GRAD_NORM)
        for policy in self.policies:
            knobs.update(getattr(policy, "knobs", ()))
        if schedule is not None and schedule.momentum(0, total_steps or 1) is not None:
            knobs.add(Knob.MOMENTUM)
        self.actuator = Actuator(self.handles, sorted(knobs, key=lambda k: k.value))
        self._shared_lr = any(f.shared_lr for f in self.actuator.families.values())
        if schedule is not None:
            _refuse_double_warmup(schedule, total_steps or 1, self.actuator)
        if arbiter is None:
            arbiter, scale = _sized_arbiter(model)
            run_info = {**dict(run_info or {}), "arbiter_scale": scale}
        self.arbiter = Arbiter(arbiter)
        self.signals = Signals()
        self.guard = Guard(model, self.optimizers, every=snapshot_every)
        self.sinks: tuple[Sink, ...] = (log or EventLog(None), *sinks)
        self.step = 0
        self.attempts = 0
        self.stop_requested = False
        self.events: list[Event] = []
        self.rejections: list[Rejection] = []
        self.multipliers: dict[tuple[Knob, str], float] = {}
        self.policy_states = {p.name: p.initial_state() for p in self.policies}
        self._last_incident = -(10**9)
        self._rewound_at: int | None = None
        self._data_changed_at: int | None = None
        self._rolled_back_call: int | None = None  # the step() call of the last rollback
        self.effects = StepEffects()  # what the last step did to the weights, besides stepping
        self._pending: dict[str, torch.Tensor] = {}
        self._ctx: StepContext | None = None
        header = describe_run(
            model,
            self.optimizers,
            self.handles,
            self.probes,
            self.policies,
            self.arbiter.config,
            total_steps=total_steps,
            extra={
                "schedule": None if schedule is None else schedule.settings(),
                **dict(run_info or {}),
            },
        )
        for sink in self.sinks:
            sink.start(header)
        for probe in self.probes:
            probe.attach(model)
        self.guard.take(self.step)

    # -- the step ----------------------------------------------------------------------
    def before_step(
        self,
        loss: torch.Tensor | None,
        *,
        closure: Callable[[], torch.Tensor] | None = None,
        micro_grad_sq_norms: Sequence[torch.Tensor] = (),
        micro_batch_size: int | None = None,
        scaler: torch.amp.GradScaler | None = None,
    ) -> Outcome:
        """Measure, decide and write knobs. Syncs host and device once (one transfer).

        ``closure`` recomputes the loss on this batch for probes that need extra passes;
        ``micro_grad_sq_norms`` carries per-micro-batch gradient norms when accumulating.
        With an fp16 ``scaler`` (gradients already unscaled), non-finite gradients from a
        finite loss are an overflow: logged and skipped, not shown to the policies as
        divergence, and not shown to the probes either (an inf gradient would poison
        their running averages). That check costs one more host read on fp16 steps, the
        same flag the GradScaler's own step reads.
        """
        if self._ctx is not None:
            raise RuntimeError("before_step called twice without after_step")
        self.effects = StepEffects()
        groups = [GroupView(h.name, _trainable(h)) for h in self.handles]
        ctx = StepContext(
            step=self.step,
            loss=loss,
            groups=groups,
            model=self.model,
            optimizers=self.optimizers,
            closure=closure,
            micro_grad_sq_norms=tuple(micro_grad_sq_norms),
            micro_batch_size=micro_batch_size,
        )
        if scaler is not None:
            overflow = self._overflow(ctx)
            if overflow is not None:
                self._ctx = ctx
                self._record_overflow(scaler, overflow)
                return Outcome.SKIPPED
        readings = dict(self._pending)
        self._pending = {}
        for probe in self.probes:
            if probe.due(self.step):
                readings.update(probe.before_step(ctx))
        self.signals.record(self.step, _transfer(readings))

        # The groups hold the user's values until the actuator applies: read them once.
        raw = self.actuator.bases()
        bases = self._plan(raw)
        ceilings = self._ceilings()
        view = PolicyView(
            step=self.step,
            total_steps=self.total_steps,
            signals=self.signals,
            groups=self.group_names,
            multipliers=dict(self.multipliers),
            bases=bases,
            rewound_at=self._rewound_at,
            data_changed_at=self._data_changed_at,
            ceilings=ceilings,
            own=self.arbiter.own_record,
            restart_step=self.guard.initial_step,
            calls=self.attempts,
            rolled_back_call=self._rolled_back_call,
        )
        proposals = []
        for policy in self.policies:
            made, self.policy_states[policy.name] = policy.propose(
                view, self.policy_states[policy.name]
            )
            proposals.extend(made)
        decisions, rejections = self.arbiter.arbitrate(
            proposals,
            step=self.step,
            groups=self.group_names,
            multipliers=self.multipliers,
            ceilings=self._ceilings,  # asked again as the uncapped slots move
        )
        self.rejections.extend(rejections)
        outcome = self._enact(decisions, bases)
        if outcome is Outcome.STEPPED and self.signals.fresh("nonfinite/any", self.step) == 1.0:
            outcome = self._veto_nonfinite()
        self._ctx = ctx
        targets = self._targets(bases)
        if outcome is Outcome.STEPPED:
            self.actuator.apply(targets, bases=raw)
            if self.clip_base is not None:
                self._clip(targets)
        if self.step % self.log_every == 0:
            self._log_signals(targets)
        return outcome

    @property
    def data_changed_at(self) -> int | None:
        """Step of the latest data change a policy announced (``None``: none yet)."""
        return self._data_changed_at

    def after_step(self, outcome: Outcome) -> None:
        """Restore base values, run after-step probes, count the step, take snapshots."""
        ctx, self._ctx = self._ctx, None
        if ctx is None:
            raise RuntimeError("after_step called without before_step")
        self.attempts += 1
        if outcome is not Outcome.STEPPED:
            return
        self.actuator.restore()
        for probe in self.probes:
            if probe.due(ctx.step):
                self._pending.update(probe.after_step(ctx))
        self.step += 1
        if self.step - self._last_incident >= self.guard.every and self.guard.due(self.step):
            self.guard.take(self.step)

    def observe(self, metrics: Mapping[str, float]) -> None:
        metrics = dict(metrics)
        train = self.signals.get("loss_trend/ema_short")
        if train is None and self.signals.window("loss/train"):
            train = stats.median(self.signals.window("loss/train"))
        if "val_loss" in metrics and train is not None and math.isfinite(train):
            # the generalization gap, and its trend: a rising gap is the onset of
            # memorization even while both losses still fall
            metrics["gap"] = metrics["val_loss"] - train
            gaps = [*[v for _, v in self.signals.observations("gap")][-4:], metrics["gap"]]
            if len(gaps) >= 3:
                fit = stats.trend(gaps)
                metrics["gap_slope"], metrics["gap_band"] = fit.slope, fit.halfwidth
        self.signals.observe(self.step, metrics)
        # Whether the model was left in training mode while it was evaluated (dropout or
        # batch norm active during validation) is a common, silent mistake worth logging.
        self._write(
            "observe",
            {
                "step": self.step,
                "metrics": dict(metrics),
                "model_training": self.model.training,
            },
        )

    def close(self) -> None:
        """Remove probe hooks and close every sink. Safe to call twice."""
        for probe in self.probes:
            probe.detach()
        for sink in self.sinks:
            sink.close()

    def _write(self, kind: str, payload: Mapping[str, Any]) -> None:
        for sink in self.sinks:
            sink.write(kind, payload)

    # -- effects -----------------------------------------------------------------------
    def _enact(
        self, decisions: Sequence[Decision], bases: Mapping[tuple[Knob, str], float]
    ) -> Outcome:
        outcome = Outcome.STEPPED
        rollback_events, restore_events, restart_events, rescale_asks = [], [], [], []
        for decision in decisions:
            proposal = decision.proposal
            if proposal.action is Action.ADJUST:
                assert proposal.knob is not None and decision.group is not None
                key = (proposal.knob, decision.group)
                base = bases.get(key, 1.0)
                self.multipliers[key] = decision.new  # type: ignore[assignment]
                self._record(
                    Event(
                        step=self.step,
                        knob=proposal.knob.value,
                        group=decision.group,
                        old=base * decision.old,
                        new=base * decision.new,  # type: ignore[operator]
                        policy=proposal.policy,
                        reason=proposal.reason,
                        signals=proposal.signals,
                    )
                )
            elif proposal.action is Action.ROLLBACK:
                outcome = Outcome.ROLLED_BACK
                rollback_events.append(proposal)
            elif proposal.action is Action.SKIP:
                if outcome is Outcome.STEPPED:
                    outcome = Outcome.SKIPPED
                self._record(_action_event(self.step, EventKind.SKIP, proposal))
            elif proposal.action is Action.STOP:
                self.stop_requested = True
                self._record(_action_event(self.step, EventKind.STOP, proposal))
            elif proposal.action is Action.VERDICT:
                self._record(_action_event(self.step, EventKind.VERDICT, proposal))
            elif proposal.action is Action.NEW_DATA:
                self._data_changed_at = self.step
                self.effects.data_changed = True
                event = _action_event(self.step, EventKind.VERDICT, proposal)
                # a stable marker for readers of the log (the doctor): this verdict is a
                # data change, and the skips and rollbacks that led to it were not divergence
                self._record(dataclasses.replace(event, signals={**event.signals, "new_data": 1.0}))
            elif proposal.action is Action.PLAN:
                self._record(self._plan_event(proposal, bases))
            elif proposal.action is Action.KEEP_BEST:
                self.guard.keep_best(self.step)
                self.effects.kept_best = True
            elif proposal.action is Action.RESTORE_BEST:
                outcome = Outcome.ROLLED_BACK
                restore_events.append(proposal)
            elif proposal.action is Action.RESTART:
                outcome = Outcome.ROLLED_BACK
                restart_events.append(proposal)
            elif proposal.action is Action.RESCALE:
                rescale_asks.append(proposal)
                if outcome is Outcome.STEPPED:  # the gradient belongs to the weights before
                    outcome = Outcome.SKIPPED
        if self._shared_lr:
            self._couple_shared_lr(bases)
        if outcome is not Outcome.STEPPED:
            self._last_incident = self.step
        if outcome is Outcome.ROLLED_BACK:  # the last load below is what stays
            self.effects.restored = (
                "initial" if restart_events else "best" if restore_events else "snapshot"
            )
        if rollback_events:
            with self.actuator.keeping_hyperparameters():
                restored = self.guard.restore(before=self.step)
            self._rolled_back_call = self.attempts
            for proposal in rollback_events:
                event = _action_event(self.step, EventKind.ROLLBACK, proposal)
                self._record(
                    Event(
                        **{
                            **event.__dict__,
                            "reason": f"{proposal.reason} (restored step {restored})",
                        }
                    )
                )
        # after any rollback: the best weights (or the start, for a restart) must remain
        for events, restore, told in (
            (restore_events, self.guard.restore_best, "restored the weights of step"),
            (restart_events, self.guard.restore_initial, "restarted from the state of step"),
        ):
            if not events:
                continue
            with self.actuator.keeping_hyperparameters():
                kept = restore()
            self._rewound_at = self.step
            for proposal in events:
                event = _action_event(self.step, EventKind.RESTORE, proposal)
                reason = f"{proposal.reason} ({told} {kept})"
                self._record(dataclasses.replace(event, reason=reason))
        for proposal in rescale_asks:  # last: it scales the weights that stay
            self._rescale(proposal)
        return outcome

    def _rescale(self, proposal: Any) -> None:
        """Multiply the named group's trainable weights (every group's) by the factor; the
        optimizer state stays (its moments describe the gradients' scale, not the weights')."""
        factor = proposal.factor
        names = self.group_names if proposal.group is None else (proposal.group,)
        with torch.no_grad():
            for handle in self.handles:
                if handle.name in names:
                    for param in _trainable(handle):
                        param.mul_(factor)
        self.effects.rescaled = True
        event = _action_event(self.step, EventKind.RESCALE, proposal)
        self._record(dataclasses.replace(event, signals={**event.signals, "factor": factor}))

    def _ceilings(
        self, multipliers: Mapping[tuple[Knob, str], float] | None = None
    ) -> dict[tuple[Knob, str], float]:
        """Per-slot upper bounds the capping policies set at ``multipliers`` (default: the
        current ones); the lowest wins."""
        multipliers = self.multipliers if multipliers is None else multipliers
        ceilings: dict[tuple[Knob, str], float] = {}
        for policy in self._capping:
            for knob in Knob:
                for group in self.group_names:
                    value = policy.multiplier_ceiling(knob, group, multipliers)
                    if value is not None:
                        slot = (knob, group)
                        ceilings[slot] = min(value, ceilings.get(slot, value))
        return ceilings

    def _plan_event(self, proposal: Proposal, bases: Mapping[tuple[Knob, str], float]) -> Event:
        """A planned base change, with the effective value it leads to (``new``)."""
        event = _action_event(self.step, EventKind.BASE, proposal)
        if proposal.knob is None or proposal.group is None:
            return event
        key = (proposal.knob, proposal.group)
        new = bases.get(key, 1.0) * self.multipliers.get(key, 1.0)
        return Event(**{**event.__dict__, "knob": proposal.knob.value, "new": new})

    def _clip(self, targets: Mapping[tuple[Knob, str], float]) -> None:
        """Clip each group's gradient to its threshold, on the device (no host read).

        Runs after the probes: they, the policies and the log see the gradient as it was.
        """
        for handle in self.handles:
            params = [p for p in handle.group["params"] if p.grad is not None]
            if params:
                limit = targets[(Knob.MAX_GRAD_NORM, handle.name)]
                torch.nn.utils.clip_grad_norm_(params, limit)

    def _couple_shared_lr(self, bases: Mapping[tuple[Knob, str], float]) -> None:
        """Give every group of a shared-lr optimizer (Prodigy) the lowest lr multiplier.

        Prodigy refuses different non-zero lrs across its groups, so when a policy moved
        one group's lr the others follow, each with its own event (no silent change).
        """
        for name in self.group_names:
            siblings = self.actuator.lr_siblings(name)
            if not siblings or any(
                self.group_names.index(s) < self.group_names.index(name) for s in siblings
            ):
                continue  # handle each optimizer once, from its first group
            members = (name, *siblings)
            lowest = min(members, key=lambda g: self.multipliers.get((Knob.LR, g), 1.0))
            target = self.multipliers.get((Knob.LR, lowest), 1.0)
            for group in members:
                old = self.multipliers.get((Knob.LR, group), 1.0)
                if old == target:
                    continue
                self.multipliers[(Knob.LR, group)] = target
                base = bases.get((Knob.LR, group), 1.0)
                self._record(
                    Event(
                        step=self.step,
                        knob=Knob.LR.value,
                        group=group,
                        old=base * old,
                        new=base * target,
                        policy="actuator",
                        reason=(
                            f"follows group {lowest!r}: "
                            f"{type(self.actuator.handle(group).optimizer).__name__} needs one "
                            "lr across its param groups"
                        ),
                    )
                )

    def wants_micro_batches(self) -> bool:
        """Whether a probe due at this step reads per-micro-batch gradient norms."""
        return any(
            getattr(p, "needs_micro_batches", False) and p.due(self.step) for p in self.probes
        )

    def _overflow(self, ctx: StepContext) -> dict[str, float] | None:
        """The evidence of an fp16 overflow (non-finite gradients, finite loss), or None.

        Reads the shared gradient norms (the grad_norm probe reuses them) and the loss in
        one transfer. A non-finite loss is not an overflow: it goes to the policies.
        """
        norms = list(ctx.grad_norms().values())
        if not norms:
            return None
        finite = torch.isfinite(torch.stack([n.float() for n in norms])).all().float()
        values = {"finite": finite}
        if ctx.loss is not None:
            values["loss/train"] = ctx.loss
        read = _transfer(values)
        if read["finite"] == 1.0 or not math.isfinite(read.get("loss/train", 0.0)):
            return None
        return {k: v for k, v in read.items() if k != "finite"}

    def _record_overflow(self, scaler: torch.amp.GradScaler, evidence: Mapping[str, float]) -> None:
        scale = scaler.get_scale()  # a sync, but only on overflow steps
        self._record_skip(
            "grad_scaler",
            f"fp16 gradient overflow at loss scale {scale:g} with a finite loss; the "
            "GradScaler skips the step and halves the scale (not a divergence)",
            {"loss_scale": scale, **evidence},
        )

    def _veto_nonfinite(self) -> Outcome:
        """Invariant 5, held whatever the policies: a non-finite value never steps."""
        self._record_skip(
            "controller",
            "non-finite loss or gradient and no policy handled it; step skipped",
            self.signals.snapshot(["loss/train", "grad_norm/global"]),
        )
        return Outcome.SKIPPED

    def _record_skip(self, policy: str, reason: str, evidence: Mapping[str, float]) -> None:
        """A skip decided by the controller itself (not by a policy's proposal)."""
        self._last_incident = self.step
        self._record(
            Event(
                step=self.step,
                knob=None,
                group=None,
                old=None,
                new=None,
                policy=policy,
                reason=reason,
                kind=EventKind.SKIP,
                signals=evidence,
            )
        )

    def _record(self, event: Event) -> None:
        self.events.append(event)
        self._write("event", event.to_record())

    def planned_bases(self) -> dict[tuple[Knob, str], float]:
        """The user's base values after the trimtab schedule, before adaptation."""
        return self._plan(self.actuator.bases())

    def _plan(self, raw: Mapping[tuple[Knob, str], float]) -> dict[tuple[Knob, str], float]:
        """``raw`` (the groups' values) with the trimtab schedule applied (a new dict)."""
        bases = dict(raw)
        if self.clip_base is not None:
            bases.update({(Knob.MAX_GRAD_NORM, g): self.clip_base for g in self.group_names})
        if self.schedule is not None:
            total = self.total_steps or 1
            factor = self.schedule.lr_factor(self.step, total)
            momentum = self.schedule.momentum(self.step, total)
            for (knob, group), value in bases.items():
                if knob is Knob.LR:
                    bases[(knob, group)] = value * factor
                elif knob is Knob.MOMENTUM and momentum is not None:
                    bases[(knob, group)] = momentum
        for policy in self._planners:
            for group in self.group_names:
                key = (Knob.LR, group)
                if key in bases:
                    bases[key] *= policy.planned_lr(self.step, self.total_steps, group)
        return bases

    def _targets(self, bases: Mapping[tuple[Knob, str], float]) -> dict[tuple[Knob, str], float]:
        return {key: base * self.multipliers.get(key, 1.0) for key, base in bases.items()}

    def effective(self) -> dict[str, float]:
        """Effective value of every knob as ``"knob/group"`` (base x schedule x multiplier).

        Reads the user's values from the groups: valid between steps.
        """
        return _by_name(self._targets(self.planned_bases()))

    def _log_signals(self, targets: Mapping[tuple[Knob, str], float]) -> None:
        # the values this step uses, planned before the actuator wrote them (reading the
        # groups after the write would multiply the multipliers in twice)
        self._write(
            "signals",
            {"step": self.step, "values": self.signals.snapshot(), "knobs": _by_name(targets)},
        )

    # -- persistence -------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "groups": list(self.group_names),
            "step": self.step,
            "attempts": self.attempts,
            "stop_requested": self.stop_requested,
            "last_incident": self._last_incident,
            "rewound_at": self._rewound_at,
            "rolled_back_call": self._rolled_back_call,
            "data_changed_at": self._data_changed_at,
            "multipliers": [[k.value, g, v] for (k, g), v in sorted(self.multipliers.items())],
            "policy_states": {k: dict(v) for k, v in self.policy_states.items()},
            "signals": self.signals.state_dict(),
            "arbiter": self.arbiter.state_dict(),
            "guard": self.guard.state_dict(),
            "events": [e.to_record() for e in self.events],
            "pending": {k: v.detach().cpu().clone() for k, v in self._pending.items()},
            "probes": {p.name: p.state_dict() for p in self.probes},
            # a schedule is a function of (step, total_steps): saving its settings lets a
            # resume check that it continues the same curve
            "schedule": _schedule_settings(self.schedule),
            "total_steps": self.total_steps,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("version") != STATE_VERSION:
            raise StateError(
                f"controller state version {state.get('version')!r} is not {STATE_VERSION}"
            )
        if list(state["groups"]) != list(self.group_names):
            raise StateError(
                f"checkpoint has groups {state['groups']}, this run has "
                f"{list(self.group_names)}: build the optimizer with the same groups"
            )
        missing = set(self.policy_states) - set(state["policy_states"])
        if missing:
            raise StateError(f"checkpoint lacks state for policies {sorted(missing)}")
        if "schedule" in state and state["schedule"] != _schedule_settings(self.schedule):
            raise StateError(
                f"checkpoint was trained with schedule {state['schedule']}, this run has "
                f"{_schedule_settings(self.schedule)}: build the Regime with the same "
                "schedule to resume on the same curve"
            )
        self.step = int(state["step"])
        self.attempts = int(state["attempts"])
        self.stop_requested = bool(state["stop_requested"])
        self._last_incident = int(state["last_incident"])
        self._rewound_at = state.get("rewound_at")
        self._rolled_back_call = state.get("rolled_back_call")
        self._data_changed_at = state.get("data_changed_at")
        self.multipliers = {(Knob(k), g): float(v) for k, g, v in state["multipliers"]}
        self.policy_states = {k: dict(state["policy_states"][k]) for k in self.policy_states}
        self.signals.load_state_dict(state["signals"])
        self.arbiter.load_state_dict(state["arbiter"])
        self.guard.load_state_dict(state["guard"])
        self.events = [Event.from_record(r) for r in state["events"]]
        self._pending = dict(state["pending"])
        for probe in self.probes:
            probe.load_state_dict(dict(state.get("probes", {}).get(probe.name, {})))
        resume: dict[str, Any] = {"step": self.step}
        saved_total = state.get("total_steps", self.total_steps)
        if saved_total != self.total_steps:
            # allowed (e.g. extending a warmup-stable-decay run), but on the record
            resume["total_steps"] = {"checkpoint": saved_total, "now": self.total_steps}
        self._write("resume", resume)


def _schedule_settings(schedule: Schedule | None) -> dict[str, Any] | None:
    """A schedule's settings as plain data (tuples as lists), comparable after a reload."""
    if schedule is None:
        return None
    return {k: list(v) if isinstance(v, tuple) else v for k, v in schedule.settings().items()}


def _refuse_double_warmup(schedule: Schedule, total: int, actuator: Actuator) -> None:
    """A schedule that ramps the lr up on an optimizer that warms up by itself compounds.

    Schedule-free AdamW scales its lr by its own ``warmup_steps`` ramp; a trimtab warmup
    on top would multiply the two ramps (the lr would start at their product).
    """
    start = schedule.lr_factor(0, total)
    if start >= 1.0:
        return
    for handle in actuator.handles:
        key = actuator.families[handle.name].warmup_key
        if key is not None and handle.group.get(key, 0) > 0:
            raise ConfigError(
                f"{type(handle.optimizer).__name__} group {handle.name!r} warms up by itself "
                f"({key}={handle.group[key]}) and the {type(schedule).__name__} schedule "
                f"starts at {start:.3g} x lr: the two warmups would multiply. Set {key}=0 on "
                "the optimizer, or use a schedule without a warmup."
            )


def _by_name(values: Mapping[tuple[Knob, str], float]) -> dict[str, float]:
    return {f"{knob.value}/{group}": v for (knob, group), v in values.items()}


def _trainable(handle: GroupHandle) -> tuple[torch.Tensor, ...]:
    return tuple(p for p in handle.group["params"] if p.requires_grad)


def _transfer(readings: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """Move every reading to the host in one transfer (the step's single sync).

    Readings that already live on the CPU need no transfer: each is read as it is
    (rounded to float32 like the stacked path), which skips the stack's per-value ops.
    """
    if not readings:
        return {}
    if all(t.is_cpu for t in readings.values()):
        return {n: float(t.float()) for n, t in readings.items()}
    names = list(readings)
    device = readings[names[0]].device
    stacked = torch.stack([readings[n].detach().reshape(()).float().to(device) for n in names])
    return {n: float(v) for n, v in zip(names, stacked.cpu().tolist(), strict=True)}


def _action_event(step: int, kind: EventKind, proposal: Any) -> Event:
    return Event(
        step=step,
        knob=None,
        group=proposal.group,
        old=None,
        new=None,
        policy=proposal.policy,
        reason=proposal.reason,
        kind=kind,
        signals=proposal.signals,
    )


def _sized_arbiter(model: torch.nn.Module) -> tuple[ArbiterConfig, dict[str, Any]]:
    """The default limits for the model's size, and the facts behind them for the header."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    scale = {
        "parameters": trainable,
        "exponent": scale_exponent(trainable),
        "rule": "upward limits ** 1/(1 + 0.25 x decades above 1e6 parameters)",
    }
    return ArbiterConfig.for_model_size(max(trainable, 1)), scale
