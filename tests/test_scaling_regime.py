"""The Regime reads the model's scale: size-aware arbiter limits and the recipe header."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import trimtab
from trimtab.arbiter import DEFAULT_BOUNDS, DEFAULT_RATE_LIMITS, Arbiter, scale_exponent
from trimtab.types import Knob, Priority, Proposal


def test_small_models_keep_the_defaults_and_large_ones_get_gentler_upward_limits():
    assert trimtab.ArbiterConfig.for_model_size(10_000) == trimtab.ArbiterConfig()
    assert scale_exponent(10**6) == 1.0
    big = trimtab.ArbiterConfig.for_model_size(10**8)
    assert big.bounds[Knob.LR][1] == pytest.approx(300 ** (1 / 1.5))
    assert big.bounds[Knob.LR][0] == DEFAULT_BOUNDS[Knob.LR][0]  # cuts stay available
    assert big.rate_limits[Priority.SPEED] == pytest.approx((0.5, 2 ** (1 / 1.5)))
    assert big.rate_limits[Priority.SAFETY] == DEFAULT_RATE_LIMITS[Priority.SAFETY]
    assert big.bounds[Knob.WEIGHT_DECAY] == pytest.approx((0.1, 10 ** (1 / 1.5)))
    assert big.rate_limits[Priority.REGULARIZATION] == pytest.approx((1 / 16, 2 ** (1 / 1.5)))
    sizes = [10**6, 10**7, 10**9, 10**11]
    ceilings = [trimtab.ArbiterConfig.for_model_size(n).bounds[Knob.LR][1] for n in sizes]
    assert ceilings == sorted(ceilings, reverse=True) and ceilings[-1] > 1.0
    loose = trimtab.ArbiterConfig.for_model_size(10**8, strength=0.0)
    assert loose == trimtab.ArbiterConfig()
    with pytest.raises(trimtab.ConfigError, match="strength"):
        trimtab.ArbiterConfig.for_model_size(10**8, strength=-1.0)


def _header(tmp_path, model, **kwargs):
    opt = kwargs.pop("optimizer", None) or torch.optim.AdamW(model.parameters(), lr=1e-3)
    log = tmp_path / "run.jsonl"
    trimtab.Regime(model, opt, total_steps=5, log=log, **kwargs).close()
    return next(iter(trimtab.read_log(log)))


def test_the_regime_scales_its_arbiter_by_trainable_parameters(tmp_path):
    small = _header(tmp_path, nn.Linear(4, 2))
    assert small["arbiter"] == trimtab.ArbiterConfig().as_dict()
    assert small["arbiter_scale"]["exponent"] == 1.0
    large = _header(tmp_path, nn.Linear(2000, 1000))  # 2.0e6 parameters
    assert large["arbiter_scale"]["parameters"] == 2_001_000
    assert large["arbiter"]["bounds"]["lr"][1] < 300
    assert large["arbiter"]["rate_limits"]["speed"][1] < 2.0
    own = trimtab.ArbiterConfig(cooldown=3)
    explicit = _header(tmp_path, nn.Linear(2000, 1000), arbiter=own)
    assert explicit["arbiter"] == own.as_dict() and "arbiter_scale" not in explicit


def test_the_recipe_report_goes_into_the_run_header(tmp_path):
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2))
    opt, report = trimtab.recipe(model, lr=1e-3, total_steps=5, base_width=16)
    header = _header(tmp_path, model, optimizer=opt, recipe=report, schedule=report.schedule())
    assert header["recipe"] == report.as_dict()
    assert {g["name"] for g in header["groups"]} == {g.name for g in report.groups}
    readout = next(g for g in header["groups"] if g["name"] == "readout")
    assert readout["hyperparameters"]["max_grad_norm"] == report.max_grad_norm
    with pytest.raises(trimtab.ConfigTypeError, match=r"trimtab\.recipe"):
        trimtab.Regime(model, opt, recipe={"groups": []})


def _controller(model, **kwargs):
    from trimtab.controller import Controller
    from trimtab.log import EventLog
    from trimtab.regime import _handles

    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    records = []

    class Keep:
        def start(self, header):
            records.append(header)

        def write(self, kind, payload):
            records.append(payload)

        def close(self):
            pass

    controller = Controller(
        model,
        [opt],
        _handles([opt]),
        probes=[trimtab.PROBES["nonfinite"]()],
        policies=[],
        total_steps=5,
        log=EventLog(None),
        sinks=[Keep()],
        **kwargs,
    )
    return controller, records[0]


def test_a_controller_without_an_arbiter_config_sizes_it_to_the_model():
    # Frameworks that own optimizer.step() build the Controller directly, without Regime.
    large = nn.Linear(2000, 1000)
    controller, header = _controller(large)
    assert controller.arbiter.config == trimtab.ArbiterConfig.for_model_size(2_001_000)
    assert controller.arbiter.config.bounds[Knob.LR][1] < DEFAULT_BOUNDS[Knob.LR][1]
    assert header["arbiter_scale"]["parameters"] == 2_001_000
    frozen = nn.Sequential(nn.Linear(2000, 1000), nn.Linear(1000, 2))
    frozen[0].requires_grad_(False)  # only trainable parameters count
    assert _controller(frozen)[0].arbiter.config == trimtab.ArbiterConfig()
    own = trimtab.ArbiterConfig(cooldown=3)
    controller, header = _controller(large, arbiter=own)
    assert controller.arbiter.config is own and "arbiter_scale" not in header


def test_a_weight_decay_raise_is_smaller_and_capped_lower_on_a_large_model():
    raise_ = Proposal(
        "regularization",
        "r",
        Priority.REGULARIZATION,
        knob=Knob.WEIGHT_DECAY,
        group="g0",
        factor=2.0,
    )
    totals = {}
    for parameters in (10**5, 10**8):
        arbiter = Arbiter(
            trimtab.ArbiterConfig.for_model_size(
                parameters,
            )
        )
        multipliers: dict = {}
        firsts = []
        for step in range(0, 2000, 100):  # past every cooldown and reversal window
            decisions, _ = arbiter.arbitrate(
                [raise_], step=step, groups=("g0",), multipliers=multipliers
            )
            for d in decisions:
                firsts.append(d.new / (d.old or 1.0))
                multipliers[(Knob.WEIGHT_DECAY, "g0")] = d.new
        totals[parameters] = (firsts[0], multipliers[(Knob.WEIGHT_DECAY, "g0")])
    assert totals[10**5] == pytest.approx((2.0, 10.0))
    assert totals[10**8][0] == pytest.approx(2 ** (1 / 1.5))
    assert totals[10**8][1] == pytest.approx(10 ** (1 / 1.5))
