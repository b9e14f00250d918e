import pytest
import torch
from tests.conftest import tiny_mlp, tiny_regression

from trimtab.errors import ConfigError, StateError
from trimtab.guard import Guard


def train_step(model, opt, seed):
    x, y = tiny_regression(seed)
    opt.zero_grad()
    torch.nn.functional.mse_loss(model(x), y).backward()
    opt.step()


def test_restore_brings_back_weights_and_optimizer_state_exactly():
    model = tiny_mlp()
    opt = torch.optim.AdamW(model.parameters(), lr=0.01)
    train_step(model, opt, 0)
    guard = Guard(model, [opt], every=1)
    guard.take(1)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    moments = [s["exp_avg"].clone() for s in opt.state.values()]
    for seed in range(1, 4):
        train_step(model, opt, seed)
    assert guard.restore(before=4) == 1
    for k, v in model.state_dict().items():
        assert torch.equal(v, weights[k])
    assert all(
        torch.equal(s["exp_avg"], m) for s, m in zip(opt.state.values(), moments, strict=True)
    )


def test_training_after_a_restore_does_not_corrupt_the_snapshot():
    model = tiny_mlp()
    opt = torch.optim.AdamW(model.parameters(), lr=0.01)
    train_step(model, opt, 0)
    guard = Guard(model, [opt], every=1)
    guard.take(1)
    guard.restore(before=2)
    after_first = {k: v.clone() for k, v in model.state_dict().items()}
    train_step(model, opt, 5)  # mutates optimizer state in place
    guard.restore(before=2)
    for k, v in model.state_dict().items():
        assert torch.equal(v, after_first[k])
    train_step(model, opt, 5)
    first_moment = [s["exp_avg"].clone() for s in opt.state.values()]
    guard.restore(before=2)
    train_step(model, opt, 5)
    assert all(
        torch.equal(s["exp_avg"], m) for s, m in zip(opt.state.values(), first_moment, strict=True)
    )


def test_restore_picks_the_newest_snapshot_older_than_the_divergence_and_drops_newer():
    model = tiny_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    guard = Guard(model, [opt], every=1, keep=3)
    for step in (0, 10, 20):
        guard.take(step)
    assert guard.restore(before=20) == 10
    assert guard.steps == (0, 10)
    assert guard.restore(before=0) == 0  # none older: the oldest


def test_no_snapshot_and_bad_settings_are_clear_errors():
    model = tiny_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with pytest.raises(StateError, match="no snapshot"):
        Guard(model, [opt]).restore(before=5)
    with pytest.raises(ConfigError, match="snapshot_every"):
        Guard(model, [opt], every=0)


def test_keep_best_survives_newer_snapshots_and_restores_exactly():
    model = tiny_mlp()
    opt = torch.optim.AdamW(model.parameters(), lr=0.01)
    guard = Guard(model, [opt], every=1, keep=2)
    train_step(model, opt, 0)
    guard.keep_best(1)
    best = {k: v.clone() for k, v in model.state_dict().items()}
    moments = [s["exp_avg"].clone() for s in opt.state.values()]
    for seed in range(1, 5):  # rolling snapshots come and go; the best stays
        train_step(model, opt, seed)
        guard.take(seed + 1)
    assert guard.best_step == 1 and 1 not in guard.steps
    assert guard.restore_best() == 1
    assert all(torch.equal(v, best[k]) for k, v in model.state_dict().items())
    assert all(
        torch.equal(s["exp_avg"], m) for s, m in zip(opt.state.values(), moments, strict=True)
    )
    # the abandoned trajectory's snapshots are gone: a rollback returns to the best too
    assert guard.steps == (1,)


def test_best_state_round_trips_and_old_states_without_it_still_load():
    model = tiny_mlp()
    opt = torch.optim.AdamW(model.parameters(), lr=0.01)
    guard = Guard(model, [opt])
    guard.take(0)
    with pytest.raises(StateError, match="keep_best was never called"):
        guard.restore_best()
    train_step(model, opt, 0)
    guard.keep_best(1)
    state = guard.state_dict()
    other = Guard(tiny_mlp(seed=1), [torch.optim.AdamW(tiny_mlp(seed=1).parameters())])
    other.load_state_dict(state)
    assert other.best_step == 1
    legacy = {k: v for k, v in state.items() if k != "best"}
    other.load_state_dict(legacy)
    assert other.best_step is None


def test_the_first_snapshot_outlives_the_rolling_ones_and_a_restart_loads_it():
    model = tiny_mlp()
    opt = torch.optim.AdamW(model.parameters(), lr=0.01)
    guard = Guard(model, [opt], every=1, keep=2)
    with pytest.raises(StateError, match="no initial state"):
        guard.restore_initial()
    guard.take(0)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    for seed in range(1, 5):
        train_step(model, opt, seed)
        guard.take(seed)
    guard.keep_best(4)
    assert guard.steps == (3, 4) and guard.initial_step == 0
    assert guard.restore_initial() == 0
    assert all(torch.equal(v, start[k]) for k, v in model.state_dict().items())
    assert opt.state_dict()["state"] == {}  # the optimizer as it was: no moments yet
    assert guard.steps == (0,) and guard.best_step == 4  # the best stays until beaten
    train_step(model, opt, 9)  # training again does not touch the kept start
    assert guard.restore_initial() == 0
    assert all(torch.equal(v, start[k]) for k, v in model.state_dict().items())


def test_the_start_state_round_trips_and_an_old_state_cannot_restart():
    model = tiny_mlp()
    opt = torch.optim.AdamW(model.parameters(), lr=0.01)
    guard = Guard(model, [opt], every=1, keep=1)
    guard.take(0)
    train_step(model, opt, 0)
    guard.take(1)
    state = guard.state_dict()
    other_model = tiny_mlp(seed=1)
    other = Guard(other_model, [torch.optim.AdamW(other_model.parameters())], keep=1)
    other.load_state_dict(state)
    assert other.initial_step == 0 and other.restore_initial() == 0
    assert all(
        torch.equal(v, state["initial"]["model"][k]) for k, v in other_model.state_dict().items()
    )
    # saved before restarts existed: a later snapshot is not the run's start
    legacy = Guard(other_model, [torch.optim.AdamW(other_model.parameters())])
    legacy.load_state_dict({k: v for k, v in state.items() if k != "initial"})
    legacy.take(7)
    assert legacy.initial_step is None


def test_a_restart_returns_every_optimizer_to_its_start():
    model = tiny_mlp()
    params = list(model.parameters())
    first = torch.optim.AdamW(params[:2], lr=0.01)
    second = torch.optim.SGD(params[2:], lr=0.01, momentum=0.9)
    guard = Guard(model, [first, second], every=1)
    guard.take(0)
    for seed in range(3):
        x, y = tiny_regression(seed)
        first.zero_grad()
        second.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        first.step()
        second.step()
        guard.take(seed + 1)
    assert first.state_dict()["state"] and second.state_dict()["state"]
    assert guard.restore_initial() == 0
    assert first.state_dict()["state"] == {} and second.state_dict()["state"] == {}
