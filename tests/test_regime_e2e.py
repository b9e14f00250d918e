"""End-to-end runs on tiny seeded models: the outcomes a user would check."""

import itertools
import math

import pytest
import torch
from tests.conftest import batch, tiny_mlp, tiny_regression

from trimtab import EventKind, Outcome, Regime, read_log
from trimtab.policies import DEFAULT_POLICIES


def mse(model, x, y):
    return torch.nn.functional.mse_loss(model(x), y)


def all_finite(model):
    return all(torch.isfinite(p).all() for p in model.parameters())


def test_nan_batches_are_skipped_and_never_reach_the_weights():
    x, y = tiny_regression()
    model = tiny_mlp()
    regime = Regime(model, torch.optim.AdamW(model.parameters(), lr=1e-2), total_steps=100)
    start = mse(model, x, y).item()
    outcomes = []
    for i in range(100):
        xb, yb = batch(x, y, i)
        if i in (10, 40):
            xb = xb * math.nan
        regime.backward(mse(model, xb, yb))
        outcomes.append(regime.step())
        assert all_finite(model)
    assert outcomes[10] is Outcome.SKIPPED and outcomes[40] is Outcome.SKIPPED
    assert outcomes.count(Outcome.STEPPED) == 98 == regime.step_count
    skips = [e for e in regime.events if e.kind is EventKind.SKIP]
    assert len(skips) == 2 and all("non-finite" in e.reason for e in skips)
    assert mse(model, x, y).item() < 0.25 * start


def test_damaged_weights_roll_back_cut_lr_and_recover_gradually():
    x, y = tiny_regression()
    model = tiny_mlp()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    # the guard alone: the early phase would also move the LR in the first steps
    regime = Regime(
        model, opt, total_steps=400, snapshot_every=20, policies=("stability_guard", "plateau")
    )
    losses = []
    for i in range(400):
        if i == 150:  # a bad update lands in the weights (as after a huge step)
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(torch.randn_like(p) * 3.0)
        xb, yb = batch(x, y, i)
        regime.backward(mse(model, xb, yb))
        outcome = regime.step()
        losses.append((i, outcome, mse(model, x, y).item()))
    rollbacks = [e for e in regime.events if e.kind is EventKind.ROLLBACK]
    assert len(rollbacks) == 1 and rollbacks[0].step >= 140
    assert "restored step" in rollbacks[0].reason
    after = next(loss for i, o, loss in losses if o is Outcome.ROLLED_BACK)
    before = losses[149][2]
    assert after < 2 * before + 0.05  # back near the known-good level at once
    cuts = [e for e in regime.events if e.knob == "lr" and e.new < e.old]
    assert cuts and "divergence" in cuts[0].reason and cuts[0].new == pytest.approx(3e-3)
    rises = [e for e in regime.events if e.knob == "lr" and e.new > e.old]
    assert len(rises) >= 3  # gradual, several small steps
    assert all(e.new / e.old <= 1.5 + 1e-9 for e in rises)
    assert regime.hyperparameters()["lr/g0"] == pytest.approx(1e-2)
    assert losses[-1][2] < 0.1


def test_a_learning_rate_100x_too_high_still_converges():
    from trimtab.demo import train

    plain = train(adaptive=False, lr=0.3, epochs=6, log=None)
    adaptive = train(adaptive=True, lr=0.3, epochs=6, log=None)
    assert plain.val_accuracy < 0.4
    assert adaptive.val_accuracy > 0.9
    assert adaptive.rollbacks >= 1


def test_plateau_nudges_lr_down_with_the_numbers_in_the_event():
    x, y = tiny_regression()
    model = tiny_mlp()
    regime = Regime(model, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9))
    for i in range(80):
        xb, yb = batch(x, y, i)
        regime.backward(mse(model, xb, yb))
        regime.step()
        if i % 5 == 4:
            regime.observe(val_loss=0.5 + 0.01 * math.sin(i))  # a flat validation loss
    cuts = [e for e in regime.events if e.policy == "plateau"]
    assert cuts and cuts[0].new == pytest.approx(cuts[0].old * 0.5)
    assert "slope" in cuts[0].reason and "95% band" in cuts[0].reason
    assert {"slope", "band", "val_loss"} <= set(cuts[0].signals)
    steps = [e.step for e in cuts]
    assert all(b - a >= 10 for a, b in itertools.pairwise(steps))  # cooldown


@pytest.mark.parametrize(
    "make",
    [
        lambda groups: torch.optim.SGD(groups, lr=0.05, momentum=0.9),
        lambda groups: torch.optim.SGD(groups, lr=0.05, momentum=0.9, nesterov=True),
        lambda groups: torch.optim.Adam(groups, lr=1e-2),
        lambda groups: torch.optim.AdamW(groups, lr=1e-2, weight_decay=0.01),
    ],
)
def test_optimizers_with_named_groups_train_and_keep_their_own_bases(make):
    x, y = tiny_regression()
    model = tiny_mlp()
    params = list(model.parameters())
    opt = make([{"params": params[:2], "name": "body"}, {"params": params[2:], "lr": 2e-3}])
    regime = Regime(model, opt, total_steps=150)
    start = mse(model, x, y).item()
    while not regime.should_stop:
        xb, yb = batch(x, y, regime.step_count)
        regime.backward(mse(model, xb, yb))
        regime.step()
    assert regime.step_count == 150
    assert mse(model, x, y).item() < 0.5 * start
    knobs = regime.hyperparameters()
    # the regularization policy may move weight decay, so it is tracked next to the LR
    assert set(knobs) == {"lr/body", "lr/g1", "weight_decay/body", "weight_decay/g1"}
    assert opt.param_groups[1]["lr"] == 2e-3  # the user's base, untouched between steps


def test_the_log_describes_the_run_and_holds_every_event(tmp_path):
    path = tmp_path / "runs" / "a.jsonl"
    x, y = tiny_regression()
    model = tiny_mlp()
    regime = Regime(
        model,
        torch.optim.AdamW(model.parameters(), lr=1e-2),
        total_steps=40,
        log=path,
        log_every=5,
    )
    for i in range(40):
        xb, yb = batch(x, y, i)
        if i == 7:
            xb = xb * math.inf
        regime.backward(mse(model, xb, yb))
        regime.step()
        if i % 10 == 9:
            regime.observe(val_loss=mse(model, x, y).item(), accuracy=0.5)
    records = list(read_log(path))
    header = records[0]
    assert header["type"] == "run" and header["schema"] == 1
    assert header["model"]["parameters"] == sum(p.numel() for p in model.parameters())
    assert header["groups"][0]["hyperparameters"]["lr"] == 1e-2
    assert [p["name"] for p in header["policies"]] == list(DEFAULT_POLICIES)
    assert header["policies"][0]["settings"]["spike_z"] == 6.0
    assert header["torch"] == torch.__version__ and header["trimtab"]
    logged = [r for r in records if r["type"] == "event"]
    assert [r["reason"] for r in logged] == [e.reason for e in regime.events]
    (skip,) = [r for r in logged if r["kind"] == "skip"]
    assert skip["step"] == 7 and not math.isfinite(skip["signals"]["grad_norm/global"])
    snapshots = [r for r in records if r["type"] == "signals"]
    assert [r["step"] for r in snapshots][:3] == [0, 5, 10]
    assert "loss/train" in snapshots[1]["values"] and "lr/g0" in snapshots[1]["knobs"]
    observed = [r for r in records if r["type"] == "observe"]
    assert len(observed) == 4 and observed[0]["metrics"]["accuracy"] == 0.5


def test_should_stop_after_total_steps_and_on_a_stop_decision():
    from trimtab import Plateau

    x, y = tiny_regression()
    model = tiny_mlp()
    regime = Regime(
        model,
        torch.optim.AdamW(model.parameters(), lr=1e-3),
        policies=["stability_guard", Plateau(stop_patience=2)],
    )
    regime.backward(mse(model, x, y))
    regime.step()
    for value in (1.0, 1.1, 1.2):
        assert not regime.should_stop
        regime.observe(val_loss=value)
        regime.backward(mse(model, x, y))
        regime.step()
    assert regime.should_stop
    assert regime.events[-1].kind is EventKind.STOP and "patience 2" in regime.events[-1].reason


def test_without_policies_a_non_finite_step_is_still_vetoed():
    x, y = tiny_regression()
    model = tiny_mlp()
    regime = Regime(model, torch.optim.SGD(model.parameters(), lr=0.1), policies=())
    regime.backward(mse(model, x * math.nan, y))
    assert regime.step() is Outcome.SKIPPED
    assert all_finite(model)
    assert regime.events[-1].policy == "controller" and regime.step_count == 0


def test_logged_knobs_are_the_effective_values_of_the_step(tmp_path):
    from trimtab.types import Knob

    model = torch.nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    path = tmp_path / "run.jsonl"
    regime = Regime(model, opt, policies=(), log=path, log_every=1)
    regime._controller.multipliers[(Knob.LR, "g0")] = 2.0
    regime.backward(model(torch.randn(8, 4)).pow(2).mean())
    regime.step()
    (snapshot,) = [r for r in read_log(path) if r["type"] == "signals"]
    assert snapshot["knobs"]["lr/g0"] == pytest.approx(0.2)  # base x multiplier, once
    assert regime.hyperparameters()["lr/g0"] == pytest.approx(0.2)
