"""fp16: an overflow the GradScaler handles stays away from the probes; weights stay fp32."""

import math

import pytest
import torch
from tests.conftest import batch, tiny_mlp, tiny_regression

from trimtab import ConfigError, Outcome, Probe, Regime


def _run(precision, *, blow_up_at=5, updates=20, accumulate=2):
    x, y = tiny_regression()
    model = tiny_mlp()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    regime = Regime(model, optimizer, probes="thorough", precision=precision, accumulate=accumulate)
    outcomes = []
    for i in range(updates):
        for k in range(accumulate):
            xb, yb = batch(x, y, i * accumulate + k, size=16)
            with regime.autocast():
                loss = torch.nn.functional.mse_loss(model(xb).float(), yb)
            if i == blow_up_at and k == 0:
                loss = loss * 1e4  # finite, but x 65536 loss scale overflows fp16 backward
            regime.backward(loss, batch_size=len(xb))
            outcomes.append(regime.step())
    return regime, [o for o in outcomes if o is not Outcome.ACCUMULATING]


def test_an_overflow_is_skipped_logged_and_kept_from_the_probes():
    regime, outcomes = _run("fp16")
    overflows = [e for e in regime.events if e.policy == "grad_scaler"]
    assert overflows and all(e.kind.value == "skip" for e in overflows)
    assert outcomes.count(Outcome.SKIPPED) == len(overflows)
    assert not [e for e in regime.events if e.policy == "stability_guard"]  # no divergence
    assert any(e.signals["loss/train"] > 1e3 for e in overflows)  # the forced one
    assert all(math.isfinite(e.signals["loss/train"]) for e in overflows)
    # Every signal, and every value in every window, is finite: the overflowed gradients
    # were never measured (the noise probe's running averages used to turn NaN for good).
    signals = regime.signals
    assert {"noise/b_simple", "grad_norm/global"} <= set(signals.names())
    for name in signals.names():
        assert all(math.isfinite(v) for v in signals.window(name)), name
    assert len(signals.window("grad_norm/global")) == regime.step_count


def test_the_same_run_without_overflows_measures_every_update():
    regime, outcomes = _run("bf16", blow_up_at=None)
    assert outcomes.count(Outcome.STEPPED) == 20
    assert not [e for e in regime.events if e.policy in ("stability_guard", "grad_scaler")]
    assert len(regime.signals.window("grad_norm/global")) == 20


def test_fp16_with_half_precision_weights_is_refused_at_construction():
    model = tiny_mlp().half()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ConfigError, match=r"float16 parameters.*drop model.half\(\)"):
        Regime(model, optimizer, precision="fp16")
    Regime(model, optimizer, precision="fp32").close()  # the user's own fp16 loop is allowed


class MicroNorms(Probe):
    """Asks for per-micro-batch gradient norms and keeps them (as device tensors)."""

    name = "micro_norms"
    needs_micro_batches = True

    def __init__(self):
        super().__init__(every=1)
        self.seen = []

    def signals(self, groups):
        return ()

    def before_step(self, ctx):
        self.seen.append(ctx.micro_grad_sq_norms)
        return {}


def test_fp16_micro_batch_norms_are_unscaled_without_reading_the_scale_to_the_host():
    # Reference: the same micro-batches in fp32 (the tiny model's fp16 autocast differs
    # from fp32 only by rounding). The fp16 run must divide the loss scale out on the
    # device: GradScaler.get_scale() (a host read) is made to fail during backward.
    x, y = tiny_regression()
    seen = {}
    for precision in ("fp32", "fp16"):
        model = tiny_mlp()
        probe = MicroNorms()
        regime = Regime(
            model,
            torch.optim.SGD(model.parameters(), lr=0.0),
            accumulate=3,
            precision=precision,
            probes=["loss", "grad_norm", "nonfinite", probe],
        )
        if regime._scaler is not None:

            def no_host_read():
                raise AssertionError("get_scale() syncs host and device")

            regime._scaler.get_scale = no_host_read
        for k in range(3):
            xb, yb = x[8 * k : 8 * (k + 1)], y[8 * k : 8 * (k + 1)]
            with regime.autocast():
                loss = torch.nn.functional.mse_loss(model(xb).float(), yb)
            regime.backward(loss, batch_size=8)
            regime.step()
        seen[precision] = [t.item() for t in probe.seen[0]]
    assert len(seen["fp16"]) == 3
    assert seen["fp16"] == pytest.approx(seen["fp32"], rel=1e-2)


def test_fp16_with_an_optimizer_whose_parameters_got_no_gradient():
    # One optimizer per task head, one head per batch: the idle head's optimizer has no
    # gradients, which GradScaler.step refuses; the Regime steps only the others.
    torch.manual_seed(0)
    body, first, second = (torch.nn.Linear(8, 16), torch.nn.Linear(16, 1), torch.nn.Linear(16, 1))
    model = torch.nn.ModuleDict({"body": body, "first": first, "second": second})
    optimizers = [
        torch.optim.AdamW([{"params": m.parameters(), "name": n}], lr=1e-2)
        for n, m in (("body", body), ("first", first), ("second", second))
    ]
    regime = Regime(model, optimizers, precision="fp16", policies=[])
    x = torch.randn(32, 8)
    for i in range(6):
        head, idle = (first, second) if i % 2 == 0 else (second, first)
        before = [p.detach().clone() for p in idle.parameters()]
        with regime.autocast():
            loss = head(torch.tanh(body(x))).float().pow(2).mean()
        regime.backward(loss)
        regime.step()
        assert all(torch.equal(a, b) for a, b in zip(before, idle.parameters(), strict=True))
    assert regime.step_count >= 4  # a few early steps may be scaler overflows
