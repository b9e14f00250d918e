"""Where knobs live, how base values compose with schedulers, and who may write."""

import sys

import pytest
import torch
from tests.conftest import batch, tiny_mlp, tiny_regression

from trimtab import Regime
from trimtab.actuator import Actuator, GroupHandle, adapters
from trimtab.errors import ConfigError
from trimtab.types import Knob


@pytest.mark.parametrize(
    "make, momentum",
    [
        (lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9), 0.9),
        (lambda p: torch.optim.Adam(p, lr=0.1, betas=(0.8, 0.99)), 0.8),
        (lambda p: torch.optim.AdamW(p, lr=0.1), 0.9),
    ],
)
def test_adapters_read_and_write_momentum_where_it_lives(make, momentum):
    group = make(tiny_mlp().parameters()).param_groups[0]
    assert adapters.read(group, Knob.MOMENTUM) == pytest.approx(momentum)
    adapters.write(group, Knob.MOMENTUM, 0.5)
    assert adapters.read(group, Knob.MOMENTUM) == 0.5
    if "betas" in group:
        assert isinstance(group["betas"], tuple) and len(group["betas"]) == 2


def test_tensor_lr_is_written_in_place():
    opt = torch.optim.Adam(tiny_mlp().parameters(), lr=torch.tensor(0.01))
    group = opt.param_groups[0]
    lr_tensor = group["lr"]
    adapters.write(group, Knob.LR, 0.5)
    assert group["lr"] is lr_tensor and lr_tensor.item() == 0.5


def test_actuator_refuses_a_knob_the_optimizer_lacks():
    opt = torch.optim.Adagrad(tiny_mlp().parameters(), lr=0.1)
    with pytest.raises(ConfigError, match="has no momentum"):
        Actuator([GroupHandle("g0", opt, 0)], [Knob.LR, Knob.MOMENTUM])


def test_apply_then_restore_round_trips_the_base():
    opt = torch.optim.SGD(tiny_mlp().parameters(), lr=0.1, momentum=0.9)
    actuator = Actuator([GroupHandle("g0", opt, 0)], [Knob.LR, Knob.MOMENTUM])
    actuator.apply({(Knob.LR, "g0"): 0.025, (Knob.MOMENTUM, "g0"): 0.45})
    assert opt.param_groups[0]["lr"] == pytest.approx(0.025)
    assert opt.param_groups[0]["momentum"] == pytest.approx(0.45)
    actuator.restore()
    assert opt.param_groups[0]["lr"] == 0.1 and opt.param_groups[0]["momentum"] == 0.9


def _run_with_scheduler(kind):
    """Train 30 steps with a multiplier of 0.5 forced on; return the lr used per step."""
    x, y = tiny_regression()
    model = tiny_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    regime = Regime(model, opt, policies=())
    regime._controller.multipliers[(Knob.LR, "g0")] = 0.5
    seen = []
    opt.register_step_pre_hook(lambda o, args, kwargs: seen.append(o.param_groups[0]["lr"]))
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=10, gamma=0.1)
    for i in range(30):
        if kind == "manual":
            for group in opt.param_groups:
                group["lr"] = 0.1 * (1 - i / 30)
        xb, yb = batch(x, y, i)
        regime.backward(torch.nn.functional.mse_loss(model(xb), yb))
        regime.step()
        if kind == "torch":
            scheduler.step()
    return seen, opt


def test_a_torch_lr_scheduler_sets_the_base_and_nothing_compounds():
    seen, opt = _run_with_scheduler("torch")
    expected = [0.5 * 0.1 * 0.1 ** (i // 10) for i in range(30)]
    assert seen == pytest.approx(expected)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * 0.1**3)  # the base, between steps


def test_a_loop_that_assigns_lr_every_step_sets_the_base():
    seen, _ = _run_with_scheduler("manual")
    assert seen == pytest.approx([0.5 * 0.1 * (1 - i / 30) for i in range(30)])


def test_only_the_actuator_writes_param_groups():
    """Record every write to a param group during training, with the writing module."""
    writers = set()

    class Watched(dict):
        def __setitem__(self, key, value):
            frame = sys._getframe(1)
            writers.add(frame.f_globals.get("__name__", "?"))
            super().__setitem__(key, value)

        def update(self, *args, **kwargs):
            frame = sys._getframe(1)
            writers.add(frame.f_globals.get("__name__", "?"))
            super().update(*args, **kwargs)

    x, y = tiny_regression()
    model = tiny_mlp()
    opt = torch.optim.AdamW(model.parameters(), lr=0.5)  # high: forces cuts and rollbacks
    opt.param_groups[0] = Watched(opt.param_groups[0])
    regime = Regime(model, opt, total_steps=60, snapshot_every=5)
    for i in range(60):
        xb, yb = batch(x, y, i)
        loss = torch.nn.functional.mse_loss(model(xb), yb) * (50.0 if i in (30, 31) else 1.0)
        regime.backward(loss)
        regime.step()
        if isinstance(opt.param_groups[0], Watched) is False:
            opt.param_groups[0] = Watched(opt.param_groups[0])  # re-wrap after a rollback
        regime.observe(val_loss=1.0)
    kinds = {e.kind.value for e in regime.events}
    assert {"change", "rollback"} <= kinds  # the run exercised cuts and a rollback
    trimtab_writers = {w for w in writers if w.startswith("trimtab")}
    assert trimtab_writers  # the actuator did write
    assert trimtab_writers <= {"trimtab.actuator.adapters", "trimtab.actuator"}
