"""The regularization policy on scripted signals, and early stopping end to end."""

import io

import pytest
import torch

import trimtab
from trimtab.errors import ConfigError
from trimtab.policies import PolicyView, Regularization
from trimtab.signals import Signals
from trimtab.types import Action, EventKind, Knob, Priority


class Script:
    """One validation observation per call, with the training loss of that moment."""

    def __init__(self, policy, total_steps=None):
        self.policy, self.total = policy, total_steps
        self.state = policy.initial_state()
        self.signals = Signals()
        self.step = 0
        self.data_changed_at = None
        self.restart_step = None  # the controller's: where a restart would return to
        self.multipliers = {}
        self.calls = None  # step() calls before this one; None: the view does not say

    def observe(self, val, train):
        for _ in range(10):  # ten training steps at this loss between observations
            self.step += 1
            self.signals.record(self.step, {"loss/train": train})
        self.signals.observe(self.step, {"val_loss": val})
        view = PolicyView(
            self.step,
            self.total,
            self.signals,
            ("g0",),
            dict(self.multipliers),
            data_changed_at=self.data_changed_at,
            restart_step=self.restart_step,
            calls=self.step if self.calls is None else self.calls,
        )
        proposals, self.state = self.policy.propose(view, self.state)
        assert self.policy.propose(view, self.state)[0] == []  # nothing new: nothing to do
        return proposals


def actions(proposals):
    return sorted(p.action.value + (f":{p.knob.value}" if p.knob else "") for p in proposals)


def test_each_new_best_keeps_the_weights():
    script = Script(Regularization())
    for val in (1.0, 0.8, 0.7):
        (keep,) = script.observe(val, train=val)
        assert keep.action is Action.KEEP_BEST and keep.signals["val_loss"] == val
    assert script.observe(0.75, train=0.6) == []  # worse once: patience


def test_memorization_rewinds_cuts_lr_and_raises_decay_with_the_evidence():
    script = Script(Regularization(patience=2))
    for val in (1.0, 0.8, 0.6, 0.5):
        script.observe(val, train=val - 0.1)
    assert script.observe(0.65, train=0.3) == []
    made = script.observe(0.8, train=0.2)
    assert actions(made) == ["adjust:lr", "adjust:weight_decay", "restore_best"]
    lr = next(p for p in made if p.knob is Knob.LR)
    decay = next(p for p in made if p.knob is Knob.WEIGHT_DECAY)
    assert lr.factor == 0.5 and decay.factor == 2.0
    assert all(p.priority is Priority.REGULARIZATION for p in made)
    assert "memorizing" in lr.reason and "0.5" in lr.reason
    assert lr.signals["best"] == 0.5 and lr.signals["loss/train"] == 0.2


def test_a_validation_rise_with_a_rising_training_loss_is_not_memorization():
    script = Script(Regularization(patience=2))
    script.observe(0.6, train=0.5)
    for val, train in ((0.7, 0.6), (0.8, 0.7), (0.9, 0.8)):
        assert script.observe(val, train=train) == []


def test_a_rise_within_the_margin_or_the_noise_is_ignored():
    script = Script(Regularization(patience=2, min_rel_worsening=0.05))
    script.observe(1.0, train=1.0)
    for i in range(6):
        assert script.observe(1.0 + 0.01 * (i % 3), train=0.9 - 0.01 * i) == []
    # a flat but noisy metric: its best is the luckiest draw, not a point to return to
    noisy = Script(Regularization(patience=2, min_rel_worsening=0.0))
    draws = [0.50, 0.44, 0.52, 0.47, 0.55, 0.46, 0.53, 0.49, 0.51, 0.48, 0.54, 0.5]
    made = [noisy.observe(v, train=0.4 - 0.01 * i) for i, v in enumerate(draws)]
    assert not any(p.action is Action.RESTORE_BEST for ps in made for p in ps)


def test_a_rise_at_the_noise_floor_is_not_memorization():
    """Validation fell from 1.6 to 1e-4 (a solved task): tripling to 3e-4 undoes 0.01 %
    of the progress and must not rewind the run, though it is 200 % of the best."""
    values = [1.6, 0.4, 0.05, 1e-3, 1e-4, 1.1e-4, 3e-4, 3.2e-4, 3.1e-4]
    script = Script(Regularization(patience=2))
    made = [p for i, v in enumerate(values) for p in script.observe(v, train=0.1 / (i + 1) ** 3)]
    assert not any(p.action is Action.RESTORE_BEST for p in made)
    # a rise that undoes a real share of the progress still is memorization
    worse = [1.6, 1.0, 0.6, 0.4, 0.3, 0.25, 0.27, 0.3, 0.34, 0.38]
    script = Script(Regularization(patience=2))
    made = [p for i, v in enumerate(worse) for p in script.observe(v, train=0.1 / (i + 1) ** 3)]
    assert any(p.action is Action.RESTORE_BEST for p in made)


def test_nothing_counts_as_worse_before_five_observations():
    script = Script(Regularization(patience=1, min_rel_worsening=0.0))
    script.observe(0.5, train=0.5)
    for train in (0.4, 0.3, 0.2):
        assert script.observe(0.9, train=train) == []
    assert any(p.action is Action.RESTORE_BEST for p in script.observe(0.9, train=0.1))


def test_after_the_rewinds_it_stops_and_restores_but_not_before_the_stop_fraction():
    policy = Regularization(patience=1, max_rewinds=1, max_decay_raises=0, min_stop_fraction=0.5)
    script = Script(policy, total_steps=140)
    for val in (0.8, 0.7, 0.6, 0.5):  # steps 10 to 40
        script.observe(val, train=val)
    assert actions(script.observe(0.6, train=0.4)) == ["adjust:lr", "restore_best"]
    assert script.observe(0.6, train=0.3) == []  # step 60: the earliest stop is step 70 of 140
    made = script.observe(0.6, train=0.2)
    assert actions(made) == ["restore_best", "stop"]
    assert "stop early" in next(p for p in made if p.action is Action.STOP).reason
    assert script.observe(0.7, train=0.05) == []  # stopped: silent from now on


def at_call(script, calls):
    """One step() call with no new observation, the view saying how many came before."""
    view = PolicyView(
        calls, script.total, script.signals, ("g0",), {}, calls=calls, restart_step=None
    )
    made, script.state = script.policy.propose(view, script.state)
    return made


@pytest.mark.parametrize("case", ["past best", "switched off", "new best last", "not the end"])
def test_the_planned_last_step_restores_the_best_when_the_run_ends_past_it(case):
    script = Script(Regularization(patience=2, restore_at_end=case != "switched off"), 100)
    for val in (0.8, 0.7, 0.6, 0.5, 0.55):  # steps 10-50; the best is 0.5
        script.observe(val, train=val - 0.1)
    last = 0.45 if case == "new best last" else 0.65
    made = script.observe(last, train=0.3)  # step 60: worse once (patience 2: no verdict)
    assert "restore_best" not in actions(made)
    made = at_call(script, 98 if case == "not the end" else 99)
    if case == "past best":
        assert actions(made) == ["restore_best"]
        assert "planned last step" in made[0].reason and "0.65" in made[0].reason
        assert at_call(script, 99) == []  # once
    else:
        assert made == []


def test_max_mode_watches_an_accuracy():
    script = Script(Regularization(metric="val_loss", mode="max", patience=1, max_rewinds=0))
    for acc in (0.6, 0.7, 0.8, 0.9):
        script.observe(acc, train=1.0 - acc)
    assert actions(script.observe(0.8, train=0.05)) == ["restore_best", "stop"]


def past_best_at_first(script, *, first=0.5):
    """Best at the first observation, then five worse ones while training improves."""
    made = script.observe(first, train=0.5)
    for i, val in enumerate((0.7, 0.8, 0.85, 0.9, 0.92)):
        made += script.observe(val, train=0.4 - 0.05 * i)
    return made


def test_a_best_at_the_first_observation_restarts_once_at_a_sixteenth_of_its_lr():
    script = Script(Regularization(patience=2))
    script.restart_step = 0
    script.multipliers = {(Knob.LR, "g0"): 2.0}  # the lr in use when the best was seen
    script.observe(0.5, train=0.5)
    script.multipliers = {(Knob.LR, "g0"): 1.0}  # another policy halved it since
    for i, val in enumerate((0.7, 0.8, 0.85, 0.9)):
        assert script.observe(val, train=0.4 - 0.05 * i) == []
    made = script.observe(0.92, train=0.2)
    assert actions(made) == ["adjust:lr", "restart"]  # no decay raise: the step was the cause
    lr = next(p for p in made if p.knob is Knob.LR)
    assert lr.factor == pytest.approx(2.0 / 16) and lr.group == "g0"
    assert "first observation" in lr.reason and "2 -> 0.125" in lr.reason
    # once per run: the next detection (no new best since) rewinds
    for val in (0.93, 0.95):
        made = script.observe(val, train=0.1)
    assert "restore_best" in actions(made) and "restart" not in actions(made)


@pytest.mark.parametrize(
    "case", ["best later", "switched off", "no start state", "new data", "too late"]
)
def test_a_restart_needs_a_first_best_a_start_state_and_time_left(case):
    policy = Regularization(patience=2, restart=case != "switched off")
    script = Script(policy, total_steps=80 if case == "too late" else None)
    script.restart_step = None if case == "no start state" else 0
    if case == "new data":
        script.observe(2.0, train=2.0)
        script.data_changed_at = script.step
    if case == "best later":
        script.observe(0.6, train=0.6)
    made = past_best_at_first(script)
    assert "restart" not in actions(made) and "restore_best" in actions(made)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mode": "median"}, "mode"),
        ({"decay_factor": 1.0}, "decay_factor"),
        ({"rewind_factor": 1.5}, "rewind_factor"),
        ({"restart_factor": 1.0}, "restart_factor"),
        ({"min_stop_fraction": 2.0}, "min_stop_fraction"),
        ({"patience": 0}, "patience"),
    ],
)
def test_bad_settings_fail_at_construction(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        Regularization(**kwargs)


def memorizing_setup(policies, steps=240, seed=0):
    """A wide MLP on 24 noisy points and its Regime; the data as (x, y, train, val)."""
    torch.manual_seed(seed)
    x = torch.randn(224, 8)
    y = x[:, :1] + 0.8 * torch.randn(224, 1)
    train, val = slice(0, 24), slice(24, None)
    model = torch.nn.Sequential(
        torch.nn.Linear(8, 256), torch.nn.ReLU(), torch.nn.Linear(256, 256),
        torch.nn.ReLU(), torch.nn.Linear(256, 1),
    )  # fmt: skip
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    regime = trimtab.Regime(model, opt, total_steps=steps, policies=policies)
    return model, regime, (x, y, train, val)


def train(model, regime, data, steps, observed):
    """Full-batch steps until ``steps`` (or a stop), observing validation every 10."""
    x, y, train, val = data
    for step in range(regime.step_count, steps):
        regime.backward(torch.nn.functional.mse_loss(model(x[train]), y[train]))
        regime.step()
        if (step + 1) % 10 == 0:
            with torch.no_grad():
                observed.append(torch.nn.functional.mse_loss(model(x[val]), y[val]).item())
            regime.observe(val_loss=observed[-1])
        if regime.should_stop:
            break


def memorizing_run(policies, steps=240, seed=0):
    """Training loss keeps falling, validation turns up: the run, its observations, its end."""
    model, regime, data = memorizing_setup(policies, steps, seed)
    observed = []
    train(model, regime, data, steps, observed)
    x, y, _, val = data
    with torch.no_grad():
        final = torch.nn.functional.mse_loss(model(x[val]), y[val]).item()
    regime.close()
    return regime, observed, final


def test_a_memorizing_run_stops_early_with_the_best_weights_restored():
    # without the restart: this run's best is its first observation (see below)
    regime, observed, final = memorizing_run(("stability_guard", Regularization(restart=False)))
    kinds = [e.kind for e in regime.events]
    assert EventKind.RESTORE in kinds and kinds[-1] in (EventKind.STOP, EventKind.RESTORE)
    assert regime.should_stop and regime.step_count < 240
    assert final == pytest.approx(min(observed), rel=1e-6)  # the best observed weights
    assert final < observed[-1]  # and they are better than where the run had got to
    assert EventKind.ROLLBACK not in kinds  # the restores did not read as divergence
    decay = [e for e in regime.events if e.knob == "weight_decay"]
    assert decay and decay[0].new == pytest.approx(2 * decay[0].old)
    restore = next(e for e in regime.events if e.kind is EventKind.RESTORE)
    assert "memorizing" in restore.reason and "restored the weights of step" in restore.reason


def test_a_run_past_its_best_at_the_first_observation_restarts_slower_and_does_better():
    """At lr 3e-3 the 24-point run is past its validation minimum by step 10, its first
    observation; rewinding there only overfits again. It starts again from its initial
    weights at 1/16 of the lr, and the minimum then falls between observations."""
    regime, observed, _ = memorizing_run(("stability_guard", "regularization"))
    _, without, _ = memorizing_run(("stability_guard", Regularization(restart=False)))
    assert min(without) > 0.95 * without[0]  # the control: rewinds found little better
    restores = [e for e in regime.events if e.kind is EventKind.RESTORE]
    first = restores[0]
    assert "restarted from the state of step 0" in first.reason
    assert "the best was the first observation" in first.reason
    cut = next(e for e in regime.events if e.knob == "lr" and e.step == first.step)
    assert cut.new == pytest.approx(3e-3 / 16) and cut.policy == "regularization"
    assert not [e for e in regime.events if e.knob == "weight_decay" and e.step == first.step]
    assert min(observed) < 0.9 * min(without)  # the restarted run found a better point
    assert EventKind.ROLLBACK not in [e.kind for e in regime.events]  # not read as divergence
    # once per run: every later detection rewinds to the new trajectory's best
    assert all("restored the weights of step" in e.reason for e in restores[1:])


def test_a_run_that_ends_past_its_best_ends_with_the_best_weights():
    regime, observed, final = memorizing_run(("stability_guard", "regularization"))
    _, without, end = memorizing_run(("stability_guard", Regularization(restore_at_end=False)))
    assert end == pytest.approx(without[-1], rel=1e-6) and end > min(without)  # the control
    assert final == pytest.approx(min(observed), rel=1e-6)  # the best weights came back
    last = [e for e in regime.events if e.kind is EventKind.RESTORE][-1]
    assert "planned last step" in last.reason and last.step >= 230


def test_a_run_resumed_from_before_its_restart_restarts_to_the_same_start():
    """The start state travels in the checkpoint: a run saved at step 40 and resumed in a
    fresh model restarts at step 60 to the original initial weights, bit for bit."""
    model, regime, data = memorizing_setup(("stability_guard", "regularization"))
    whole = []
    train(model, regime, data, 40, whole)
    saved = io.BytesIO()
    torch.save(regime.state_dict(), saved)
    train(model, regime, data, 150, whole)
    assert any("restarted from the state of step 0" in e.reason for e in regime.events)

    torch.manual_seed(123)  # the fresh model's own initialisation must not matter
    model2, regime2, _ = memorizing_setup(("stability_guard", "regularization"), seed=5)
    saved.seek(0)
    regime2.load_state_dict(torch.load(saved, weights_only=True))
    resumed = whole[:4]
    train(model2, regime2, data, 150, resumed)
    assert resumed == whole
    assert [e.to_record() for e in regime2.events] == [e.to_record() for e in regime.events]
    assert all(
        torch.equal(a, b)
        for a, b in zip(model.state_dict().values(), model2.state_dict().values(), strict=True)
    )


def test_without_the_policy_the_same_run_ends_worse():
    _, _, with_policy = memorizing_run(("stability_guard", Regularization(restart=False)))
    _, observed, without = memorizing_run(("stability_guard",))
    assert without > with_policy and without == pytest.approx(observed[-1], rel=1e-6)


@pytest.mark.parametrize("announced", [False, True])
def test_new_data_is_never_rewound_to_the_old_datas_best_weights(announced):
    script = Script(Regularization(patience=2))
    for val in (1.0, 0.5, 0.2, 0.1):
        script.observe(val, train=val + 0.4)  # old data: best 0.1 at a training loss of 0.5
    if announced:
        script.data_changed_at = script.step
    made = []
    for val, train in ((2.0, 1.6), (1.5, 1.0), (1.0, 0.45), (0.8, 0.4), (0.7, 0.35), (0.6, 0.3)):
        made += script.observe(val, train=train)  # new data, learned: both losses fall
    rewinds = [p for p in made if p.action is Action.RESTORE_BEST]
    if announced:  # each new-data improvement is a new best
        assert rewinds == [] and sum(p.action is Action.KEEP_BEST for p in made) == 6
    else:  # the control: judged against the old best, it looks like memorization
        assert rewinds
