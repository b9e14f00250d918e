"""A NaN batch that the controller vetoes leaves the probes' running averages usable."""

import math

import pytest
import torch
from tests.conftest import batch, tiny_mlp, tiny_regression

from trimtab import Outcome, Regime


def _run(nan_at, *, updates=16, accumulate=2):
    x, y = tiny_regression()
    model = tiny_mlp()
    regime = Regime(
        model,
        torch.optim.AdamW(model.parameters(), lr=1e-2),
        probes=["loss", "grad_norm", "nonfinite", "noise"],
        accumulate=accumulate,
    )
    outcomes = []
    for i in range(updates):
        for k in range(accumulate):
            xb, yb = batch(x, y, i * accumulate + k, size=16)
            loss = torch.nn.functional.mse_loss(model(xb), yb)
            if i == nan_at and k == 0:
                loss = loss * float("nan")
            regime.backward(loss, batch_size=len(xb))
            outcomes.append(regime.step())
    return regime, [o for o in outcomes if o is not Outcome.ACCUMULATING]


def test_the_noise_estimate_survives_a_vetoed_nan_batch():
    # The NaN update is skipped (weights untouched) and its readings must not enter the
    # noise probe's averages, which used to stay NaN for the rest of the run. Reference:
    # the same run without the NaN (its estimate is of the same order).
    regime, outcomes = _run(nan_at=5)
    assert outcomes[5] is Outcome.SKIPPED and outcomes.count(Outcome.STEPPED) == 15
    latest = regime.signals.snapshot()
    noise = {k: v for k, v in latest.items() if k.startswith("noise/")}
    assert noise and all(math.isfinite(v) for v in noise.values()), noise
    clean, _ = _run(nan_at=None)
    reference = clean.signals.snapshot()
    assert noise["noise/grad_sq"] == pytest.approx(reference["noise/grad_sq"], rel=0.5)
