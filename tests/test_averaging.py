"""The moving average of the weights: what it buys, when it restarts, and that it resumes."""

import math

import pytest
import torch
from tests.conftest import batch, tiny_mlp, tiny_regression

from trimtab import ConfigError, Outcome, Regime, StateError
from trimtab.averaging import WeightAverage, decay_for


def mse(model, x, y):
    return torch.nn.functional.mse_loss(model(x), y)


def _noisy_run(regime, model, x, y, steps, start=0):
    for i in range(start, start + steps):
        xb, yb = batch(x, y, i)
        regime.backward(mse(model, xb, yb))
        regime.step()


def test_the_average_is_nearer_the_bottom_than_the_noisy_last_step():
    x, y = tiny_regression()
    model = tiny_mlp()
    # a constant, high LR: the last iterate rattles around the valley's floor
    opt = torch.optim.AdamW(model.parameters(), lr=3e-2)
    regime = Regime(model, opt, total_steps=400, policies=("stability_guard",), average=True)
    _noisy_run(regime, model, x, y, 400)
    live = mse(model, x, y).item()
    with torch.no_grad(), regime.averaged():
        averaged = mse(model, x, y).item()
    assert averaged < 0.5 * live  # 0.22x here; 0.27x-0.40x on three other seeds
    assert mse(model, x, y).item() == live  # the live weights are back after the block


def test_the_live_weights_come_back_even_when_the_evaluation_fails():
    model = tiny_mlp()
    regime = Regime(model, torch.optim.SGD(model.parameters(), lr=0.1), average=0.9)
    x, y = tiny_regression()
    _noisy_run(regime, model, x, y, 5)
    live = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(RuntimeError, match="evaluation broke"), regime.averaged():
        assert not all(torch.equal(a, b) for a, b in zip(model.parameters(), live, strict=True))
        raise RuntimeError("evaluation broke")
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), live, strict=True))


def test_a_rollback_restarts_the_average_from_the_restored_weights():
    x, y = tiny_regression()
    model = tiny_mlp()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    regime = Regime(
        model, opt, total_steps=300, snapshot_every=20, policies=("stability_guard",), average=0.99
    )
    rolled_back = False
    for i in range(300):
        if i == 150:  # a bad update lands in the weights
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(torch.randn_like(p) * 3.0)
        xb, yb = batch(x, y, i)
        regime.backward(mse(model, xb, yb))
        if regime.step() is Outcome.ROLLED_BACK and not rolled_back:
            rolled_back = True
            restored = [p.detach().clone() for p in model.parameters()]
            with regime.averaged():
                # the average is the restored state itself, not a blend with the old one
                assert all(
                    torch.equal(a, b) for a, b in zip(model.parameters(), restored, strict=True)
                )
    assert rolled_back
    with torch.no_grad(), regime.averaged():
        assert math.isfinite(mse(model, x, y).item()) and mse(model, x, y).item() < 0.1


def test_integer_buffers_are_left_alone_and_running_statistics_are_averaged():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8))
    average = WeightAverage(model, decay=0.5)
    model.train()
    for _ in range(3):
        model(torch.randn(16, 4) + 5.0)
        average.update()
    live_mean = model[1].running_mean.clone()
    with average.swapped_in():
        assert model[1].num_batches_tracked.item() == 3
        assert not torch.equal(model[1].running_mean, live_mean)
    assert torch.equal(model[1].running_mean, live_mean)


def test_resume_with_an_average_is_bit_identical():
    x, y = tiny_regression()

    def build():
        torch.manual_seed(0)
        model = tiny_mlp()
        regime = Regime(model, torch.optim.AdamW(model.parameters(), lr=1e-2), average=0.95)
        return model, regime

    model, regime = build()
    _noisy_run(regime, model, x, y, 60)
    with regime.averaged():
        straight = [p.detach().clone() for p in model.parameters()]

    model, regime = build()
    _noisy_run(regime, model, x, y, 30)
    saved = regime.state_dict()
    model, regime = build()
    regime.load_state_dict(saved)
    _noisy_run(regime, model, x, y, 30, start=30)
    with regime.averaged():
        resumed = [p.detach().clone() for p in model.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(straight, resumed, strict=True))


def test_bad_settings_say_what_to_do():
    model = tiny_mlp()
    opt = torch.optim.AdamW(model.parameters())
    with pytest.raises(ConfigError, match="total_steps"):
        Regime(model, opt, average=True)
    with pytest.raises(ConfigError, match=r"decay in \(0, 1\)"):
        Regime(model, opt, average=1.5)
    plain = Regime(model, opt)
    with pytest.raises(ConfigError, match="average=True"), plain.averaged():
        pass
    averaged = Regime(model, opt, average=0.9)
    with pytest.raises(StateError, match="weight averaging"):
        averaged.load_state_dict(plain.state_dict())


def test_average_true_spans_four_percent_of_the_run():
    assert decay_for(True, 500) == pytest.approx(1 - 1 / 20)
    assert decay_for(True, 100_000) == pytest.approx(1 - 1 / 4000)
    assert decay_for(True, 50) == pytest.approx(1 - 1 / 10)  # never under 10 steps
    assert decay_for(False, 500) is None
    assert decay_for(0.999, None) == 0.999


def test_new_data_restarts_the_average_and_the_averaged_model_learns_it():
    from tests.test_new_data import CLASSES, DIM, SHIFT_AT, STEPS, _accuracy, _stream

    draw = _stream()
    held_out = draw(500, True, torch.Generator().manual_seed(8))
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(DIM, 32), torch.nn.ReLU(), torch.nn.Linear(32, CLASSES)
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    regime = Regime(model, optimizer, total_steps=STEPS, average=True)
    restarted_at, best_after = None, 0.0
    for step in range(STEPS):
        x, y = draw(64, step >= SHIFT_AT, torch.Generator().manual_seed(1000 + step))
        regime.backward(torch.nn.functional.cross_entropy(model(x), y))
        regime.step()
        new_data = any(e.signals.get("new_data") for e in regime.events)
        if restarted_at is None and new_data:
            restarted_at = step
            live = [p.detach().clone() for p in model.parameters()]
            with regime.averaged():  # nothing of the old data's trajectory is left in it
                assert all(torch.equal(a, b) for a, b in zip(model.parameters(), live, strict=True))
        if step >= SHIFT_AT and (step + 1) % 10 == 0:
            with regime.averaged():
                accuracy, val_loss = _accuracy(model, held_out)
            regime.observe(val_loss=val_loss)
            if step < SHIFT_AT + 60:
                best_after = max(best_after, accuracy)
    assert restarted_at is not None and SHIFT_AT < restarted_at < SHIFT_AT + 20
    assert best_after > 0.97  # the averaged model learns the new data within 60 steps


def test_bf16_weights_are_averaged_in_float32_and_tied_weights_once():
    embed = torch.nn.Embedding(10, 4)
    readout = torch.nn.Linear(4, 10, bias=False)
    readout.weight = embed.weight  # tied, as in many language models
    model = torch.nn.Sequential(embed, readout).to(torch.bfloat16)
    with torch.no_grad():
        embed.weight.zero_()
    average = WeightAverage(model, decay=0.99)
    assert list(average.state_dict()["average"]) == ["0.weight"]  # one tensor, not two
    with torch.no_grad():
        embed.weight.fill_(1.0)  # exact in bf16; the average creeps toward it
    remaining = 1.0
    for n in range(1, 301):
        average.update()
        remaining *= min(0.99, n / (9.0 + n))
    averaged = average.state_dict()["average"]["0.weight"]
    assert averaged.dtype == torch.float32
    # a bf16 average would be off by its rounding of each small step (~1e-3 here)
    assert torch.allclose(averaged, torch.full_like(averaged, 1.0 - remaining), atol=1e-5)
    with average.swapped_in():
        assert model[1].weight.dtype == torch.bfloat16


def test_early_stopping_comes_back_to_the_average_that_scored_best():
    from tests.test_policy_regularization import memorizing_setup

    from trimtab.policies.regularization import Regularization

    policies = ("stability_guard", Regularization(restart=False))
    model, plain, (x, y, train, val) = memorizing_setup(policies, 240, 0)
    plain.close()
    regime = Regime(model, plain.optimizers[0], total_steps=240, policies=policies, average=0.9)
    observed = []
    for step in range(240):
        regime.backward(torch.nn.functional.mse_loss(model(x[train]), y[train]))
        regime.step()
        if (step + 1) % 10 == 0:
            with torch.no_grad(), regime.averaged():
                observed.append(torch.nn.functional.mse_loss(model(x[val]), y[val]).item())
            regime.observe(val_loss=observed[-1])
        if regime.should_stop:
            break
    assert regime.should_stop and any(e.kind.value == "restore" for e in regime.events)
    with torch.no_grad(), regime.averaged():
        final = torch.nn.functional.mse_loss(model(x[val]), y[val]).item()
    assert final == pytest.approx(min(observed), rel=1e-6)  # the average that scored best
    assert final < observed[-1]
