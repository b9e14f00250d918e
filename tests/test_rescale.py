"""Action.RESCALE: a policy multiplies a group's weights in place; the step is dropped."""

import copy
import math

import pytest
import torch
from tests.conftest import batch, tiny_mlp, tiny_regression

from trimtab import Outcome, Regime
from trimtab.policies.base import Policy
from trimtab.types import Action, EventKind, Priority, Proposal


class RescaleAt(Policy):
    """Asks once, at a fixed step, to rescale the weights of ``group`` by ``factor``."""

    name = "rescale_at"

    def __init__(self, step, factor, group=None):
        self.at, self.factor, self.group = step, factor, group

    def initial_state(self):
        return {"done": False}

    def propose(self, view, state):
        if view.step == self.at and not state["done"]:
            ask = Proposal(
                self.name,
                "scripted rescale",
                Priority.SPEED,
                Action.RESCALE,
                group=self.group,
                factor=self.factor,
            )
            return [ask], {"done": True}
        return [], state


def _two_groups(seed=0):
    model = tiny_mlp(seed)
    first, last = model[0], model[2]
    optimizer = torch.optim.AdamW(
        [{"params": first.parameters()}, {"params": last.parameters(), "lr": 3e-3}], lr=1e-3
    )
    return model, optimizer


def _steps(regime, model, batches):
    x, y = tiny_regression()
    outcomes = []
    for i in batches:
        xb, yb = batch(x, y, i)
        regime.backward(torch.nn.functional.mse_loss(model(xb), yb))
        outcomes.append(regime.step())
    return outcomes


def test_a_rescale_multiplies_one_groups_weights_and_drops_the_step():
    model, optimizer = _two_groups()
    regime = Regime(model, optimizer, policies=[RescaleAt(3, 0.5, group="g1")])
    _steps(regime, model, range(3))
    before = copy.deepcopy(model.state_dict())
    moments = copy.deepcopy(optimizer.state_dict()["state"])
    (outcome,) = _steps(regime, model, [3])
    assert outcome is Outcome.SKIPPED  # the gradient was taken at the weights before
    after = model.state_dict()
    for name in ("0.weight", "0.bias"):  # group g0: untouched
        assert torch.equal(after[name], before[name])
    for name in ("2.weight", "2.bias"):  # group g1: halved, and not stepped
        assert torch.equal(after[name], before[name] * 0.5)
    for index, state in optimizer.state_dict()["state"].items():  # moments kept as they were
        assert torch.equal(state["exp_avg_sq"], moments[index]["exp_avg_sq"])
    (event,) = [e for e in regime.events if e.kind is EventKind.RESCALE]
    assert (event.step, event.group, event.policy) == (3, "g1", "rescale_at")
    assert event.signals["factor"] == 0.5 and event.reason == "scripted rescale"
    assert _steps(regime, model, [4]) == [Outcome.STEPPED]  # and training goes on


def test_a_rescale_without_a_group_scales_every_group():
    model, optimizer = _two_groups()
    regime = Regime(model, optimizer, policies=[RescaleAt(2, 0.3)])
    _steps(regime, model, range(2))
    before = copy.deepcopy(model.state_dict())
    _steps(regime, model, [2])
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name] * 0.3)


@pytest.mark.parametrize("factor", [0.0, -0.5, math.nan, math.inf, None])
def test_a_bad_rescale_is_refused_and_the_step_goes_ahead(factor):
    model, optimizer = _two_groups()
    regime = Regime(model, optimizer, policies=[RescaleAt(2, factor)])
    _steps(regime, model, range(2))
    before = copy.deepcopy(model.state_dict())
    assert _steps(regime, model, [2]) == [Outcome.STEPPED]
    assert not any(e.kind is EventKind.RESCALE for e in regime.events)
    moved = [not torch.equal(v, before[k]) for k, v in model.state_dict().items()]
    assert all(moved)  # an ordinary optimizer step, not a rescale
    assert all(math.isfinite(v.abs().sum().item()) for v in model.state_dict().values())


def test_a_rescale_of_an_unknown_group_is_refused():
    model, optimizer = _two_groups()
    regime = Regime(model, optimizer, policies=[RescaleAt(1, 0.5, group="nope")])
    assert _steps(regime, model, range(3)) == [Outcome.STEPPED] * 3
    assert not any(e.kind is EventKind.RESCALE for e in regime.events)


def test_the_weight_average_starts_over_at_a_rescale():
    model, optimizer = _two_groups()
    regime = Regime(model, optimizer, policies=[RescaleAt(5, 0.5)], average=0.9)
    _steps(regime, model, range(6))  # the rescale drops step 5
    live = copy.deepcopy(model.state_dict())
    with regime.averaged():  # the average holds the rescaled weights only, not old ones
        for name, value in model.state_dict().items():
            assert torch.equal(value, live[name])
