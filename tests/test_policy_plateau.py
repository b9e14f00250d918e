import math

import pytest

from trimtab.errors import ConfigError
from trimtab.policies import Plateau, PolicyView
from trimtab.signals import Signals
from trimtab.types import Action, Knob, Priority


def drive(policy, values, metric="val_loss"):
    signals = Signals()
    state = policy.initial_state()
    out = []
    for i, value in enumerate(values):
        signals.observe(i * 10, {metric: value})
        view = PolicyView(i * 10, None, signals, ("g0",), {})
        proposals, state = policy.propose(view, state)
        out.append(proposals)
        # asking again without a new observation proposes nothing
        assert policy.propose(view, state)[0] == []
    return out


def test_a_flat_noisy_validation_loss_cuts_lr_with_the_numbers():
    values = [1.0, 1.02, 0.99, 1.01, 1.0, 0.98, 1.01]
    rounds = drive(Plateau(window=5, cooldown=0), values)
    first = next(i for i, r in enumerate(rounds) if r)
    assert first == 4  # as soon as five observations exist
    (cut,) = rounds[first]
    assert cut.knob is Knob.LR and cut.factor == 0.5 and cut.priority is Priority.SCHEDULE
    assert "not significantly falling" in cut.reason and "95% band" in cut.reason
    assert cut.signals["val_loss"] == values[first]


def test_a_steady_improvement_is_left_alone():
    values = [1.0 * 0.9**i for i in range(12)]
    assert all(r == [] for r in drive(Plateau(), values))


def test_cooldown_spaces_cuts_by_observations():
    rounds = drive(Plateau(window=3, cooldown=2), [1.0] * 12)
    cut_at = [i for i, r in enumerate(rounds) if r]
    assert cut_at == [2, 5, 8, 11]


def test_max_mode_watches_a_rising_metric():
    rising = [0.5 + 0.05 * i for i in range(8)]
    assert all(r == [] for r in drive(Plateau(metric="acc", mode="max"), rising, "acc"))
    flat = [0.9, 0.91, 0.9, 0.89, 0.9, 0.9]
    assert any(drive(Plateau(metric="acc", mode="max"), flat, "acc"))


def test_stop_patience_proposes_a_stop_with_the_best_value():
    rounds = drive(Plateau(stop_patience=3, window=10), [1.0, 0.8, 0.9, 0.85, 0.95])
    (stop,) = rounds[-1]
    assert stop.action is Action.STOP and "0.8" in stop.reason


def test_a_nan_observation_is_not_judged():
    rounds = drive(Plateau(window=3, cooldown=0), [1.0, 1.0, math.nan])
    assert rounds[-1] == []


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"mode": "up"}, "mode must be"),
        ({"factor": 1.0}, "factor must be in"),
        ({"window": 2}, "window must be >= 3"),
        ({"metric": ""}, "metric must be"),
        ({"min_rel_improvement": -1.0}, "must be >= 0"),
    ],
)
def test_bad_settings_fail_at_construction(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        Plateau(**kwargs)


def _drive_aligned(values, alignment):
    """Observations with a steady alignment reading between them."""
    signals = Signals()
    policy = Plateau(window=5, cooldown=0)
    state = policy.initial_state()
    out = []
    for i, value in enumerate(values):
        for k in range(3):
            signals.record(i * 10 + k, {"alignment/global": alignment})
        signals.observe(i * 10, {"val_loss": value})
        proposals, state = policy.propose(PolicyView(i * 10, None, signals, ("g0",), {}), state)
        out.append(proposals)
    return out


def test_a_plateau_with_agreeing_gradients_tries_a_raise_and_reverts_it_if_worse():
    values = [1.0, 1.02, 0.99, 1.01, 1.0, 1.2]
    rounds = _drive_aligned(values, alignment=0.5)
    (trial,) = rounds[4]
    assert trial.knob is Knob.LR and trial.factor == 2.0 and trial.priority is Priority.SPEED
    assert "too small" in trial.reason and "provisional" in trial.reason
    (revert,) = rounds[5]
    assert revert.factor == 0.5 and "reverted" in revert.reason
    assert revert.signals == {"val_loss": 1.2, "before": 1.0}


def test_a_raise_that_helps_is_kept_with_a_verdict():
    rounds = _drive_aligned([1.0, 1.02, 0.99, 1.01, 1.0, 0.9], alignment=0.5)
    (verdict,) = rounds[5]
    assert verdict.action is Action.VERDICT and "kept" in verdict.reason


def test_without_agreeing_gradients_a_plateau_still_cuts():
    rounds = _drive_aligned([1.0, 1.02, 0.99, 1.01, 1.0], alignment=-0.05)
    assert rounds[4][0].factor == 0.5


def test_new_data_withdraws_the_cuts_and_judges_the_trend_afresh():
    policy, signals = Plateau(window=3, cooldown=0), Signals()
    state, made = policy.initial_state(), []

    def decide(step, changed=None):
        nonlocal state
        view = PolicyView(step, None, signals, ("g0",), {}, data_changed_at=changed)
        proposals, state = policy.propose(view, state)
        made.extend(proposals)
        return proposals

    for i in range(6):  # a flat old-data trend: cuts
        signals.observe(i * 10, {"val_loss": 0.01})
        decide(i * 10)
    assert any(p.knob is Knob.LR and p.factor == 0.5 for p in made)
    (back,) = decide(55, changed=55)
    assert back.withdraw and back.knob is Knob.LR and back.group is None
    assert "data changed at step 55" in back.reason and "withdrawn" in back.reason
    assert decide(56, changed=55) == []  # once per change
    # the new data's first observations: no trend is judged until three of its own
    for step, value in ((60, 3.0), (70, 3.0)):
        signals.observe(step, {"val_loss": value})
        assert decide(step, changed=55) == []
    signals.observe(80, {"val_loss": 3.0})
    (cut,) = decide(80, changed=55)
    assert cut.factor == 0.5 and "last 3 observations" in cut.reason


def test_new_data_ends_a_pending_raise_unjudged():
    policy, signals = Plateau(window=3, cooldown=0), Signals()
    signals.record(0, {"alignment/global": 0.5})
    for _ in range(3):
        signals.record(0, {"alignment/global": 0.5})
    state = policy.initial_state()
    for i in range(3):
        signals.observe(i * 10, {"val_loss": 1.0})
        proposals, state = policy.propose(PolicyView(i * 10, None, signals, ("g0",), {}), state)
    (trial,) = proposals
    assert trial.factor == 2.0 and trial.signals["provisional"] == 1.0
    view = PolicyView(25, None, signals, ("g0",), {}, data_changed_at=25)
    verdict, back = policy.propose(view, state)[0]
    assert verdict.action is Action.VERDICT and "not judged" in verdict.reason
    assert back.withdraw


def test_a_curve_still_setting_new_bests_is_no_plateau_however_wide_its_band():
    # a fast bend: a linear fit's band is wide (curvature in the residuals) and includes 0
    bending = [2.0, 0.3, 0.2, 0.15, 0.14]
    assert all(r == [] for r in drive(Plateau(window=5, cooldown=0), bending))
    # the same values with patience 0 (the trend test alone) would have cut
    assert any(drive(Plateau(window=5, cooldown=0, patience=0), bending))
    # once two observations set no new best, the flat trend counts
    rounds = drive(Plateau(window=5, cooldown=0), [*bending, 0.141, 0.1405])
    assert rounds[-2] == [] and rounds[-1][0].factor == 0.5
