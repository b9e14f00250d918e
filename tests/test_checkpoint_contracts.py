"""Checkpoints: they remember their schedule, and are refused mid-accumulation."""

import pytest
import torch
from tests.conftest import batch, tiny_mlp, tiny_regression

from trimtab import Regime, StateError, read_log
from trimtab.schedules import StepDecay, WarmupCosine


def _regime(schedule, total_steps=20, log=None):
    model = tiny_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    regime = Regime(model, optimizer, total_steps=total_steps, schedule=schedule, log=log)
    return model, regime


def _checkpoint(schedule):
    model, regime = _regime(schedule)
    x, y = tiny_regression()
    for i in range(5):
        xb, yb = batch(x, y, i)
        regime.backward(torch.nn.functional.mse_loss(model(xb), yb))
        regime.step()
    return regime.state_dict()


@pytest.mark.parametrize(
    "other", [WarmupCosine(warmup=0.2), StepDecay(milestones=(0.5,)), None], ids=str
)
def test_resuming_under_another_schedule_is_refused(other):
    saved = _checkpoint(StepDecay(milestones=(0.5, 0.75)))
    _, regime = _regime(other)
    with pytest.raises(StateError, match="trained with schedule"):
        regime.load_state_dict(saved)


def test_the_same_schedule_resumes_and_a_longer_run_is_on_the_record(tmp_path):
    saved = _checkpoint(StepDecay(milestones=(0.5, 0.75)))
    _, same = _regime(StepDecay(milestones=(0.5, 0.75)))
    same.load_state_dict(saved)
    assert same.step_count == 5
    _, longer = _regime(StepDecay(milestones=(0.5, 0.75)), 40, tmp_path / "run.jsonl")
    longer.load_state_dict(saved)
    resume = [r for r in read_log(tmp_path / "run.jsonl") if r["type"] == "resume"]
    assert resume[-1]["total_steps"] == {"checkpoint": 20, "now": 40}


def test_checkpoints_from_before_schedules_were_saved_still_load():
    saved = _checkpoint(WarmupCosine())
    for key in ("schedule", "total_steps"):
        del saved["controller"][key]
    _, regime = _regime(WarmupCosine(warmup=0.3))
    regime.load_state_dict(saved)
    assert regime.step_count == 5


def test_a_checkpoint_in_the_middle_of_an_accumulation_cycle_is_refused():
    from trimtab import CallOrderError

    model = tiny_mlp()
    regime = Regime(model, torch.optim.SGD(model.parameters(), lr=0.1), accumulate=3)
    x, y = tiny_regression()
    regime.backward(torch.nn.functional.mse_loss(model(x[:8]), y[:8]))
    regime.step()  # ACCUMULATING
    with pytest.raises(CallOrderError, match=r"1 of 3 micro-batches"):
        regime.state_dict()
    for _ in range(2):
        regime.backward(torch.nn.functional.mse_loss(model(x[:8]), y[:8]))
        regime.step()
    assert regime.state_dict()["version"] == 1  # right after the completing step()
