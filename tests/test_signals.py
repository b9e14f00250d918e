import math

import pytest

from trimtab.errors import StateError
from trimtab.signals import Signals


def test_record_keeps_latest_fresh_and_a_bounded_window():
    signals = Signals(window=4)
    for step in range(6):
        signals.record(step, {"loss/train": float(step)})
    assert signals.get("loss/train") == 5.0
    assert signals.fresh("loss/train", 5) == 5.0
    assert signals.fresh("loss/train", 6) is None
    assert signals.window("loss/train") == (2.0, 3.0, 4.0, 5.0)
    assert signals.get("missing") is None


def test_observations_skip_non_finite_values_but_count_them():
    signals = Signals()
    signals.observe(10, {"val_loss": 1.0})
    signals.observe(20, {"val_loss": math.nan, "accuracy": 0.5})
    assert signals.observations("val_loss") == ((10, 1.0),)
    assert signals.observation_count("val_loss") == 2
    assert math.isnan(signals.latest_observation("val_loss")[1])
    assert signals.observed_metrics() == ("accuracy", "val_loss")


def test_observations_after_a_step_leave_out_that_step_and_earlier():
    signals = Signals()
    for step, value in ((10, 1.0), (20, 2.0), (30, 3.0)):
        signals.observe(step, {"val_loss": value})
    assert signals.observations("val_loss", after=20) == ((30, 3.0),)
    assert signals.observations("val_loss", after=None) == signals.observations("val_loss")


def test_state_round_trip_and_version_check():
    signals = Signals(window=4)
    signals.record(1, {"a": 1.0})
    signals.observe(1, {"val_loss": 2.0})
    other = Signals(window=4)
    other.load_state_dict(signals.state_dict())
    assert other.state_dict() == signals.state_dict()
    with pytest.raises(StateError, match="version"):
        other.load_state_dict({**signals.state_dict(), "version": 99})
