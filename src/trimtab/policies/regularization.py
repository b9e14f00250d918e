"""Regularization: training improves while validation degrades, so the model memorizes.

Every new best of the validation metric keeps a copy of the weights (on the CPU, once per
improving observation). When the metric has been worse than that best by more than
``min_rel_worsening`` of it, more than twice its own observation noise and more than
``min_progress_share`` of the progress made since the first observation, for
``patience`` observations in a row *while the training loss kept falling* (by at least
``min_train_drop`` of it since the best), the run is
past its best point on the validation set. The response climbs a ladder:

1. rewind: restore the best weights, raise weight decay by ``decay_factor`` (while the
   raises stay within ``max_decay_raises``) and cut the learning rate by ``rewind_factor``
   — the validation minimum lies between the best observation and the next one, and
   smaller steps approach it more closely; at most ``max_rewinds`` times.
   When the best was the *first* observation, the run passed its validation minimum
   before anyone looked, and a rewind returns to weights already past it (on a 60-row
   regression at lr 1e-3 every rewind overfit again within one observation). The first
   detection then restarts instead (``restart``): back to the run's initial weights and
   optimizer state, the LR at ``restart_factor`` of the LR in use up to that observation,
   slow enough for the minimum to fall between observations; once per run, only while
   ``min_stop_fraction`` of the planned steps has not passed, never after a data change;
2. stop: restore the best weights and ask the run to stop (``Regime.should_stop``), but
   never before ``min_stop_fraction`` of the planned steps: a validation set drawn from
   another distribution than the training data (a shift still to come) looks the same
   as memorization for a while, and stopping early is the one step that cannot be undone.

A run that reaches its planned end (its last ``step()`` call of ``total_steps``) while
its latest observation is past the best, with the training loss still falling, gets the
best weights back on that call (``restore_at_end``): the early stop it had no time for.

Weight decay is scaled with the model's parameter count through the arbiter's size rule
(``ArbiterConfig.for_model_size``): at 1e6 parameters or fewer a raise is the full
``decay_factor`` and the total stays within 10x the user's decay; at 1e8, at most 1.59x
per raise and 4.6x in all. A raise shortens the AdamW timescale 1 / (lr * wd) that the
recipe sized to the run, and a large run is the costlier one to over-regularize.

The share of the progress matters at a noise floor: a validation loss that fell from 1.6
to 1e-4 and wobbles to 3e-4 has tripled, and is no sign of memorization; a rewind there
only cuts the LR of a run that has converged (and leaves it slow when the data changes).

A validation metric that worsens while the training loss rises too is not memorization
(the step size is wrong): that is left to the stability guard and the plateau policy.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from trimtab import _checks, stats
from trimtab.errors import ConfigError
from trimtab.policies.base import Policy, PolicyState, PolicyView
from trimtab.types import Action, Knob, Priority, Proposal

_TRAIN_WINDOW = 10  # training losses whose median stands for "the training loss now"
_NOISE_WINDOW = 8  # observations whose scatter sets the validation metric's noise
_MIN_OBSERVATIONS = 5  # observations before the noise is known and a rise can count


def _noise(values: list[float]) -> float:
    """Observation-to-observation scatter of the metric, blind to trends and one turn.

    Second differences cancel a linear trend, and their robust (MAD) spread ignores the
    single large one where a falling curve turns upward; for independent noise of size
    s they scatter by s * sqrt(6). Zero with too few values.
    """
    recent = values[-_NOISE_WINDOW:]
    if len(recent) < _MIN_OBSERVATIONS:
        return 0.0
    second = [a - 2 * b + c for a, b, c in zip(recent, recent[1:], recent[2:], strict=False)]
    return stats.robust_range(second)[1] / math.sqrt(6.0)


class Regularization(Policy):
    """Raise weight decay, rewind to the best weights, then stop early and restore them.

    Args:
        metric: the ``observe()`` keyword to watch (a validation loss or accuracy).
        mode: ``"min"`` for losses, ``"max"`` for accuracies.
        patience: consecutive worse observations (with training still improving) that
            count as memorization.
        min_rel_worsening: how much worse than the best, relative to it, counts as worse.
        min_progress_share: a worsening must also exceed this share of the progress made
            since the first observation (a floor for metrics that converge near zero).
        decay_factor: weight-decay factor per rewind (> 1); groups without decay keep 0.
        max_decay_raises: how many times weight decay may be raised in one run.
        rewind_factor: LR factor applied with each rewind, in (0, 1].
        restart: whether a best at the first observation restarts the run from its
            initial weights instead of rewinding (see above).
        restart_factor: the restart's LR, as a share of the LR in use when the best was
            observed, in (0, 1).
        max_rewinds: rewinds before the next detection stops the run.
        min_stop_fraction: share of ``total_steps`` before which the run is never stopped.
        restore_at_end: at the planned last step, restore the best weights if the latest
            observation is past them (see above).
        min_train_drop: how far (relative) the training loss (median of the last ten) must
            have fallen since the best observation to count as still improving; noise in a
            flat training loss must not pass for memorization.
    """

    name = "regularization"
    knobs = (Knob.WEIGHT_DECAY,)
    requires = ("loss",)

    def __init__(
        self,
        *,
        metric: str = "val_loss",
        mode: Literal["min", "max"] = "min",
        patience: int = 2,
        min_rel_worsening: float = 0.01,
        min_progress_share: float = 0.01,
        decay_factor: float = 2.0,
        max_decay_raises: int = 2,
        rewind_factor: float = 0.5,
        restart: bool = True,
        restart_factor: float = 1 / 16,
        max_rewinds: int = 3,
        min_stop_fraction: float = 0.5,
        min_train_drop: float = 0.05,
        restore_at_end: bool = True,
    ) -> None:
        self.metric = _checks.metric("metric", metric)
        self.mode = _checks.mode("mode", mode)
        self.patience = _checks.count("patience", patience)
        self.min_rel_worsening = _checks.real("min_rel_worsening", min_rel_worsening)
        self.min_progress_share = _checks.real("min_progress_share", min_progress_share)
        if not 0 <= self.min_progress_share < 1:
            raise ConfigError(f"min_progress_share must be in [0, 1), got {min_progress_share}")
        if self.min_rel_worsening < 0:
            raise ConfigError(f"min_rel_worsening must be >= 0, got {min_rel_worsening}")
        self.decay_factor = _checks.positive("decay_factor", decay_factor)
        if self.decay_factor <= 1.0:
            raise ConfigError(f"decay_factor must be > 1, got {decay_factor}")
        self.max_decay_raises = _checks.count("max_decay_raises", max_decay_raises, minimum=0)
        self.rewind_factor = _checks.positive("rewind_factor", rewind_factor)
        if self.rewind_factor > 1.0:
            raise ConfigError(f"rewind_factor must be in (0, 1], got {rewind_factor}")
        self.restart = _checks.flag("restart", restart)
        self.restore_at_end = _checks.flag("restore_at_end", restore_at_end)
        self.restart_factor = _checks.in_open_unit("restart_factor", restart_factor)
        self.max_rewinds = _checks.count("max_rewinds", max_rewinds, minimum=0)
        self.min_train_drop = _checks.real("min_train_drop", min_train_drop)
        if not 0.0 <= self.min_train_drop < 1.0:
            raise ConfigError(f"min_train_drop must be in [0, 1), got {min_train_drop}")
        self.min_stop_fraction = _checks.real("min_stop_fraction", min_stop_fraction)
        if not 0.0 <= self.min_stop_fraction <= 1.0:
            raise ConfigError(f"min_stop_fraction must be in [0, 1], got {min_stop_fraction}")

    def settings(self) -> dict[str, Any]:
        keys = [
            "metric",
            "mode",
            "patience",
            "min_rel_worsening",
            "min_progress_share",
            "decay_factor",
            "max_decay_raises",
            "rewind_factor",
            "restart",
            "restart_factor",
            "max_rewinds",
            "min_stop_fraction",
            "min_train_drop",
            "restore_at_end",
        ]
        return {k: getattr(self, k) for k in keys}

    def initial_state(self) -> PolicyState:
        return {
            "seen": 0,
            "best": None,
            "best_step": None,
            "train_at_best": None,
            "worse": 0,
            "first": None,  # the first observation (signed), the start of the progress
            "best_index": None,  # how many observations (of this data) the best came after
            "lr_at_best": {},  # group -> LR multiplier when the best was observed
            "restarted": False,
            "rewinds": 0,
            "raises": 0,
            "stopped": False,
            "data_since": None,  # observations up to this step describe older data
        }

    def propose(self, view: PolicyView, state: PolicyState) -> tuple[list[Proposal], PolicyState]:
        made, state = self._judge(view, state)
        if not made and self._ends_past_best(view, state):
            state = {**state, "stopped": True}
            made = [self._end_restore(view, state)]
        return made, state

    def _judge(self, view: PolicyView, state: PolicyState) -> tuple[list[Proposal], PolicyState]:
        """Read a new observation: keep a new best, or answer memorization."""
        if view.data_changed_since(state.get("data_since")):
            # The best weights and the progress were of the old data: never rewind to
            # them. The ladder's counts stay, so new data does not reopen it.
            state = {
                **state,
                "data_since": view.data_changed_at,
                **{k: None for k in ("best", "best_step", "train_at_best", "first", "best_index")},
                "worse": 0,
            }
        total = view.signals.observation_count(self.metric)
        if total == state["seen"] or state["stopped"]:
            return [], state
        state = {**state, "seen": total}
        history = view.signals.observations(self.metric, after=state.get("data_since"))
        if not history or view.signals.latest_observation(self.metric) != history[-1]:
            return [], state  # the newest value was NaN/inf: nothing to judge on
        sign = self._sign
        value = sign * history[-1][1]
        losses = view.signals.window("loss/train")[-_TRAIN_WINDOW:]
        train = stats.median(losses) if losses else None
        if state.get("first") is None:
            state["first"] = value  # where the progress is measured from
        if state["best"] is None or value < state["best"]:
            state.update(
                best=value,
                best_step=view.step,
                train_at_best=train,
                worse=0,
                best_index=len(history),
                lr_at_best={g: view.multiplier(Knob.LR, g) for g in view.groups},
            )
            keep = self._propose(
                f"new best {self.metric} {history[-1][1]:.4g}: weights kept",
                action=Action.KEEP_BEST,
                signals={self.metric: history[-1][1]},
            )
            return [keep], state
        best = state["best"]
        progress = max(state["first"] - best, 0.0)
        margin = max(
            self.min_rel_worsening * abs(best),
            2.0 * _noise([v for _, v in history]),
            self.min_progress_share * progress,
        )
        # until the noise can be estimated (five observations) nothing counts as worse
        worse = len(history) >= _MIN_OBSERVATIONS and value - best > margin
        at_best = state["train_at_best"]
        training_improves = (
            train is not None and at_best is not None
        ) and train < at_best - self.min_train_drop * abs(at_best)
        state["worse"] = state["worse"] + 1 if worse and training_improves else 0
        if state["worse"] < self.patience:
            return [], state
        state["worse"] = 0
        evidence = {
            self.metric: history[-1][1],
            "best": sign * best,
            "best_step": float(state["best_step"]),
            "loss/train": float(train),  # type: ignore[arg-type]
            "train_at_best": float(state["train_at_best"]),
        }
        symptom = (
            f"{self.metric} {history[-1][1]:.4g} has been worse than its best "
            f"{sign * best:.4g} (step {state['best_step']}) for {self.patience} observations "
            f"while the training loss fell from {state['train_at_best']:.4g} to {train:.4g}: "
            f"the model is memorizing"
        )
        if self._restart_due(view, state):
            state["restarted"] = True
            return self._restart(symptom, evidence, view, state), state
        if state["rewinds"] < self.max_rewinds:
            state["rewinds"] += 1
            return self._rewind(symptom, evidence, state), state
        planned = view.total_steps
        if planned is not None and view.step < self.min_stop_fraction * planned:
            return [], state  # too early to rule out a shift still to come
        state["stopped"] = True
        stop = [
            self._propose(
                f"{symptom}; {self.max_rewinds} rewinds did not help: stop early",
                action=Action.STOP,
                signals=evidence,
            ),
            self._propose(
                f"{symptom}; back to the best weights before stopping",
                action=Action.RESTORE_BEST,
                signals=evidence,
            ),
        ]
        return stop, state

    def _ends_past_best(self, view: PolicyView, state: PolicyState) -> bool:
        """The planned last step, with the latest observation past the kept best."""
        planned = view.total_steps
        return (
            self.restore_at_end
            and planned is not None
            and view.calls == planned - 1
            and not state["stopped"]
            and state["best"] is not None
            and state["worse"] > 0  # the latest observation: worse, training falling
        )

    def _end_restore(self, view: PolicyView, state: PolicyState) -> Proposal:
        sign = self._sign
        latest = view.signals.latest_observation(self.metric)
        now = f"{latest[1]:.4g} " if latest is not None else ""
        return self._propose(
            f"the run reaches its planned last step with {self.metric} {now}past its best "
            f"{sign * state['best']:.4g} (step {state['best_step']}) while the training "
            "loss fell: back to the best weights",
            action=Action.RESTORE_BEST,
            signals={"best": sign * state["best"], "best_step": float(state["best_step"])},
        )

    @property
    def _sign(self) -> float:
        """Internally the metric is minimized: an accuracy (``mode="max"``) is negated."""
        return 1.0 if self.mode == "min" else -1.0

    def _propose(self, reason: str, **fields: Any) -> Proposal:
        return Proposal(policy=self.name, reason=reason, priority=Priority.REGULARIZATION, **fields)

    def _restart_due(self, view: PolicyView, state: PolicyState) -> bool:
        """Whether this detection restarts the run rather than rewinding it."""
        planned = view.total_steps
        return (
            self.restart
            and not state.get("restarted", False)
            and view.restart_step is not None
            and state.get("data_since") is None  # the start state is of the old data
            and state.get("best_index") == 1
            and (planned is None or view.step < self.min_stop_fraction * planned)
        )

    def _restart(
        self, symptom: str, evidence: dict[str, float], view: PolicyView, state: PolicyState
    ) -> list[Proposal]:
        why = (
            f"{symptom}; the best was the first observation, so the minimum was passed "
            "before it was seen"
        )
        made = [
            self._propose(
                f"{why}: the run starts again from its initial weights",
                action=Action.RESTART,
                signals=evidence,
            )
        ]
        at_best = state.get("lr_at_best") or {}
        for group in view.groups:
            now = view.multiplier(Knob.LR, group)
            then = at_best.get(group, now)
            factor = min(1.0, self.restart_factor * then / now)
            made.append(
                self._propose(
                    f"{why}: lr x{self.restart_factor:g} of the lr in use until then "
                    f"(multiplier {then:.3g} -> {then * self.restart_factor:.3g}), "
                    "slow enough to observe the minimum",
                    knob=Knob.LR,
                    group=group,
                    factor=factor,
                    signals=evidence,
                )
            )
        return made

    def _rewind(
        self, symptom: str, evidence: dict[str, float], state: PolicyState
    ) -> list[Proposal]:
        made = [
            self._propose(
                f"{symptom}; rewind {state['rewinds']} of {self.max_rewinds}",
                action=Action.RESTORE_BEST,
                signals=evidence,
            )
        ]
        if self.rewind_factor < 1.0:
            made.append(
                self._propose(
                    f"{symptom}; smaller steps to approach the best point: "
                    f"lr x{self.rewind_factor:g}",
                    knob=Knob.LR,
                    factor=self.rewind_factor,
                    signals=evidence,
                )
            )
        if state["raises"] < self.max_decay_raises:
            state["raises"] += 1
            made.append(
                self._propose(
                    f"{symptom}; weight decay x{self.decay_factor:g} "
                    f"(raise {state['raises']} of {self.max_decay_raises})",
                    knob=Knob.WEIGHT_DECAY,
                    factor=self.decay_factor,
                    signals=evidence,
                )
            )
        return made
