"""Optimizers x precision x accumulation under one Regime, on CPU."""

import math

import pytest
import torch
from tests.conftest import batch, tiny_mlp, tiny_regression

from trimtab import (
    CallOrderError,
    EventKind,
    Knob,
    Outcome,
    Probe,
    Regime,
    build_optimizer,
    optimizer_defaults,
)
from trimtab.schedules import WarmupCosine

FAMILIES = ["sgd", "adam", "adamw", "lion", "lamb", "schedulefree_adamw", "prodigy", "muon"]


def deep_mlp(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(8, 32),
        torch.nn.ReLU(),
        torch.nn.Linear(32, 32),
        torch.nn.ReLU(),
        torch.nn.Linear(32, 1),
    )


def train(regime, model, steps, *, accumulate=1, start=0):
    x, y = tiny_regression()
    for i in range(start, start + steps):
        for k in range(accumulate):
            xb, yb = batch(x, y, i * accumulate + k, size=16)
            with regime.autocast():
                loss = torch.nn.functional.mse_loss(model(xb).float(), yb)
            regime.backward(loss, batch_size=len(xb))
            outcome = regime.step()
            if k < accumulate - 1:
                assert outcome is Outcome.ACCUMULATING


def full_loss(model):
    x, y = tiny_regression()
    with torch.no_grad():
        return torch.nn.functional.mse_loss(model(x), y).item()


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("accumulate", [1, 2])
def test_every_family_precision_and_accumulation_trains(family, precision, accumulate):
    pytest.importorskip(
        {
            "lion": "pytorch_optimizer",
            "lamb": "pytorch_optimizer",
            "schedulefree_adamw": "schedulefree",
            "prodigy": "prodigyopt",
        }.get(family, "torch")
    )
    model = deep_mlp()
    fast = {
        "sgd": 0.01,
        "adam": 0.01,
        "adamw": 0.01,
        "lamb": 0.01,
        "lion": 3e-3,
        "schedulefree_adamw": 0.01,
    }  # short runs: a brisker rate than the defaults
    overrides = {"lr": fast[family]} if family in fast else {}
    optimizer = build_optimizer(family, model, **overrides)
    regime = Regime(model, optimizer, total_steps=60, precision=precision, accumulate=accumulate)
    start = full_loss(model)
    train(regime, model, 60, accumulate=accumulate)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert full_loss(model) < 0.75 * start, (family, precision, accumulate)
    assert regime.step_count >= 50  # fp16 may skip a few early overflow steps


def test_optimizer_defaults_encode_the_family_differences():
    lion, adamw = optimizer_defaults("lion"), optimizer_defaults("adamw")
    assert 3 <= adamw.lr / lion.lr <= 10 and lion.weight_decay >= 3 * adamw.weight_decay
    with pytest.raises(ValueError, match="known: adam"):
        optimizer_defaults("adagrad")


def test_muon_pairs_with_adamw_and_the_regime_drives_both():
    model = deep_mlp()
    muon, adamw = build_optimizer("muon", model)
    assert all(p.dim() == 2 for g in muon.param_groups for p in g["params"])
    regime = Regime(model, [muon, adamw], total_steps=30)
    regime._controller.multipliers[(Knob.LR, "muon")] = 0.5
    seen = []
    muon.register_step_pre_hook(lambda o, a, k: seen.append(o.param_groups[0]["lr"]))
    train(regime, model, 5)
    assert seen == pytest.approx([0.01] * 5)
    assert {"lr/muon", "lr/adamw"} <= set(regime.hyperparameters())


def test_schedule_free_must_be_in_train_mode():
    pytest.importorskip("schedulefree")
    model = tiny_mlp()
    optimizer = build_optimizer("schedulefree_adamw", model)
    regime = Regime(model, optimizer, total_steps=10)
    optimizer.eval()
    x, y = tiny_regression()
    regime.backward(torch.nn.functional.mse_loss(model(x), y))
    with pytest.raises(CallOrderError, match=r"call optimizer\.train\(\)"):
        regime.step()


def test_fp16_overflow_is_skipped_and_logged_not_treated_as_divergence():
    model = tiny_mlp()
    regime = Regime(model, torch.optim.AdamW(model.parameters(), lr=1e-3), precision="fp16")
    x, y = tiny_regression()
    outcomes = []
    for i in range(12):
        xb, yb = batch(x, y, i)
        loss = torch.nn.functional.mse_loss(model(xb), yb)
        if i in (5, 6, 7):
            loss = loss * 1e34  # finite, but x65536 overflows every gradient
        regime.backward(loss)
        outcomes.append(regime.step())
        assert all(torch.isfinite(p).all() for p in model.parameters())
    assert outcomes[5:8] == [Outcome.SKIPPED] * 3
    overflow = [e for e in regime.events if e.policy == "grad_scaler"]
    assert len(overflow) == 3 and all(e.kind is EventKind.SKIP for e in overflow)
    assert "65536" in overflow[0].reason and "32768" in overflow[1].reason
    assert not any(e.kind is EventKind.ROLLBACK for e in regime.events)


def test_accumulation_matches_one_big_batch():
    x, y = tiny_regression()
    big = tiny_mlp()
    big_opt = torch.optim.SGD(big.parameters(), lr=0.1)
    torch.nn.functional.mse_loss(big(x[:64]), y[:64]).backward()
    big_opt.step()

    small = tiny_mlp()
    regime = Regime(small, torch.optim.SGD(small.parameters(), lr=0.1), accumulate=4)
    outcomes = []
    for k in range(4):
        xb, yb = x[16 * k : 16 * (k + 1)], y[16 * k : 16 * (k + 1)]
        regime.backward(torch.nn.functional.mse_loss(small(xb), yb))
        outcomes.append(regime.step())
    assert outcomes == [Outcome.ACCUMULATING] * 3 + [Outcome.STEPPED]
    for a, b in zip(big.parameters(), small.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6)


class MicroBatchSpy(Probe):
    """A probe that asks for per-micro-batch gradient norms and keeps what it got."""

    name = "spy"
    needs_micro_batches = True

    def __init__(self):
        super().__init__(every=1)
        self.seen = []

    def signals(self, groups):
        return ("spy/count",)

    def before_step(self, ctx):
        self.seen.append(([t.item() for t in ctx.micro_grad_sq_norms], ctx.micro_batch_size))
        return {"spy/count": torch.tensor(float(len(ctx.micro_grad_sq_norms)))}


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_micro_batch_gradient_norms_reach_probes_that_ask(precision):
    x, y = tiny_regression()
    model = tiny_mlp()
    spy = MicroBatchSpy()
    regime = Regime(
        model,
        torch.optim.SGD(model.parameters(), lr=0.0),
        accumulate=3,
        precision=precision,
        probes=["loss", "grad_norm", "nonfinite", spy],
    )
    expected = []
    for k in range(3):
        xb, yb = x[8 * k : 8 * (k + 1)], y[8 * k : 8 * (k + 1)]
        reference = tiny_mlp()
        reference.load_state_dict(model.state_dict())
        torch.nn.functional.mse_loss(reference(xb), yb).backward()
        expected.append(sum(p.grad.pow(2).sum().item() for p in reference.parameters()))
        regime.backward(torch.nn.functional.mse_loss(model(xb), yb), batch_size=8)
        regime.step()
    norms, size = spy.seen[0]
    assert size == 8
    assert norms == pytest.approx(expected, rel=1e-3)


def test_resume_with_fp16_accumulation_and_a_schedule_is_exact():
    def build():
        model = deep_mlp(seed=3)
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
        regime = Regime(
            model,
            opt,
            total_steps=40,
            precision="fp16",
            accumulate=2,
            schedule=WarmupCosine(warmup=0.1),
            snapshot_every=5,
        )
        return model, regime

    model_a, regime_a = build()
    train(regime_a, model_a, 40, accumulate=2)

    model_b, regime_b = build()
    train(regime_b, model_b, 20, accumulate=2)
    saved = regime_b.state_dict()
    model_c, regime_c = build()
    regime_c.load_state_dict(saved)
    train(regime_c, model_c, 20, accumulate=2, start=20)

    for a, c in zip(model_a.parameters(), model_c.parameters(), strict=True):
        assert torch.equal(a, c)
    assert [e.to_record() for e in regime_a.events] == [e.to_record() for e in regime_c.events]
    assert math.isclose(regime_a._scaler.get_scale(), regime_c._scaler.get_scale())


def test_a_trimtab_cut_on_schedule_free_shrinks_steps_but_not_its_averaging_weights():
    pytest.importorskip("schedulefree")
    model = tiny_mlp()
    optimizer = build_optimizer("schedulefree_adamw", model, lr=0.01, warmup_steps=0)
    regime = Regime(model, optimizer, total_steps=20)
    train(regime, model, 5)
    group = optimizer.param_groups[0]
    assert group["lr_max"] == pytest.approx(0.01)
    regime._controller.multipliers[(Knob.LR, "g0")] = 0.5  # as a plateau cut would
    train(regime, model, 1, start=5)
    assert group["scheduled_lr"] == pytest.approx(0.005)
    assert group["lr_max"] == pytest.approx(0.01)  # the average's weights are unchanged
    assert group["lr"] == 0.01  # the base, between steps
