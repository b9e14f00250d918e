import itertools
import math

import pytest
import torch
from tests.conftest import batch, tiny_mlp, tiny_regression

from trimtab import ConfigError, Knob, Regime
from trimtab.schedules import (
    Constant,
    LinearWarmup,
    OneCycle,
    StepDecay,
    WarmupCosine,
    WarmupStableDecay,
)

TOTAL = 100


def factors(schedule):
    return [schedule.lr_factor(s, TOTAL) for s in range(TOTAL)]


def test_warmup_cosine_ramps_then_decays_to_final():
    f = factors(WarmupCosine(warmup=0.1, final=0.1))
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(f[10:]))
    assert WarmupCosine(warmup=0.1, final=0.1).lr_factor(TOTAL, TOTAL) == pytest.approx(0.1)
    mid = 10 + (TOTAL - 10) // 2
    assert f[mid] == pytest.approx(0.1 + 0.9 * 0.5, abs=0.02)


def test_linear_warmup_and_constant():
    assert factors(LinearWarmup(warmup=0.2))[:3] == pytest.approx([0.05, 0.1, 0.15])
    assert set(factors(LinearWarmup(warmup=0.2))[19:]) == {1.0}
    assert set(factors(Constant())) == {1.0}


def test_step_decay_multiplies_at_each_milestone():
    f = factors(StepDecay(milestones=(0.5, 0.8), gamma=0.1))
    assert f[49] == 1.0 and f[50] == pytest.approx(0.1) and f[80] == pytest.approx(0.01)


def test_warmup_stable_decay_has_three_phases():
    f = factors(WarmupStableDecay(warmup=0.1, decay=0.2, final=0.0))
    assert f[4] < 1.0 and set(f[10:80]) == {1.0}
    assert f[80] == pytest.approx(1.0) and f[99] == pytest.approx(0.05)


def test_one_cycle_lr_and_momentum_move_inversely():
    cycle = OneCycle(peak=0.3, div=25, final_div=1e4)
    f = factors(cycle)
    m = [cycle.momentum(s, TOTAL) for s in range(TOTAL)]
    assert f[0] == pytest.approx(1 / 25) and max(f) == pytest.approx(1.0, abs=1e-3)
    assert f[-1] < 1e-3
    peak = f.index(max(f))
    assert 28 <= peak <= 31 and m[peak] == pytest.approx(0.85, abs=1e-3)
    assert m[0] == pytest.approx(0.95) and m[-1] == pytest.approx(0.95, abs=1e-3)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: WarmupCosine(warmup=1.5), "warmup must be in"),
        (lambda: StepDecay(milestones=(0.8, 0.5)), "increasing"),
        (lambda: OneCycle(base_momentum=0.99, max_momentum=0.9), "must not exceed"),
        (lambda: WarmupStableDecay(warmup=0.5, decay=0.6), "must not exceed 1"),
        (lambda: WarmupCosine(final=math.nan), "finite"),
    ],
)
def test_bad_schedule_settings(make, message):
    with pytest.raises(ConfigError, match=message):
        make()


def _lrs_seen(regime_kwargs, *, multiplier=1.0, steps=40, opt_kwargs=None):
    x, y = tiny_regression()
    model = tiny_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, **(opt_kwargs or {}))
    seen = []
    opt.register_step_pre_hook(
        lambda o, a, k: seen.append((o.param_groups[0]["lr"], o.param_groups[0]["momentum"]))
    )
    regime = Regime(model, opt, policies=(), total_steps=steps, **regime_kwargs)
    regime._controller.multipliers[(Knob.LR, "g0")] = multiplier
    for i in range(steps):
        xb, yb = batch(x, y, i)
        regime.backward(torch.nn.functional.mse_loss(model(xb), yb))
        regime.step()
    return seen, opt


def test_a_trimtab_schedule_composes_with_the_multiplier_and_keeps_the_base():
    schedule = WarmupCosine(warmup=0.1)
    seen, opt = _lrs_seen({"schedule": schedule}, multiplier=0.5)
    expected = [0.1 * schedule.lr_factor(s, 40) * 0.5 for s in range(40)]
    assert [lr for lr, _ in seen] == pytest.approx(expected)
    assert opt.param_groups[0]["lr"] == 0.1  # the user's base is never rewritten


def test_one_cycle_drives_momentum_through_the_actuator():
    cycle = OneCycle()
    seen, opt = _lrs_seen({"schedule": cycle}, opt_kwargs={"momentum": 0.9})
    assert [m for _, m in seen] == pytest.approx([cycle.momentum(s, 40) for s in range(40)])
    assert opt.param_groups[0]["momentum"] == 0.9


def test_a_schedule_needs_total_steps_and_momentum_schedules_need_momentum():
    model = tiny_mlp()
    with pytest.raises(ConfigError, match="needs total_steps"):
        Regime(model, torch.optim.SGD(model.parameters(), lr=0.1), schedule=WarmupCosine())
    with pytest.raises(ConfigError, match="has no momentum"):
        Regime(
            model,
            torch.optim.Adagrad(model.parameters(), lr=0.1),
            total_steps=10,
            schedule=OneCycle(),
        )
