"""The diagnostic probes against known truths: scripted losses, closed-form noise,
exact Hessians, hand-made activations and change points."""

import math

import pytest
import torch
from tests.conftest import batch, tiny_mlp, tiny_regression

from trimtab import Regime
from trimtab.probes import (
    ActivationProbe,
    CurvatureProbe,
    DriftProbe,
    GradStatsProbe,
    GroupView,
    LossTrendProbe,
    NoiseProbe,
    PageHinkley,
    ShiftProbe,
    StepContext,
)


def ctx_for(model, step, loss=None, **kwargs):
    params = tuple(p for p in model.parameters())
    return StepContext(
        step=step, loss=loss, groups=[GroupView("g0", params)], model=model, **kwargs
    )


def test_loss_trend_recovers_a_scripted_slope_and_calls_plateaus():
    probe = LossTrendProbe(window=64)
    gen = torch.Generator().manual_seed(0)
    model = tiny_mlp()
    out = {}
    for t in range(101):  # slope fits run every 10 steps: the last step fits
        loss = torch.tensor(2.0 - 0.01 * t) + 0.02 * torch.randn((), generator=gen)
        out = probe.before_step(ctx_for(model, t, loss))
    slope, band = out["loss_trend/slope"].item(), out["loss_trend/band"].item()
    assert abs(slope + 0.01) < band + 1e-3 and band < 0.002
    assert out["loss_trend/plateau"].item() == 0.0
    assert out["loss_trend/noise"].item() == pytest.approx(0.02, rel=0.3)
    flat = LossTrendProbe(window=64)
    for t in range(101):
        loss = torch.tensor(0.5) + 0.001 * torch.randn((), generator=gen)
        out = flat.before_step(ctx_for(model, t, loss))
    assert out["loss_trend/plateau"].item() == 1.0
    ema = 0.5
    probe = LossTrendProbe(short=4)
    for t, value in enumerate([0.5, 1.0, 0.0, 2.0]):
        out = probe.before_step(ctx_for(model, t, torch.tensor(value)))
        ema = value if t == 0 else ema + (value - ema) / 4
    assert out["loss_trend/ema_short"].item() == pytest.approx(ema)


def test_nan_losses_never_enter_the_trend():
    probe = LossTrendProbe()
    model = tiny_mlp()
    for t in range(30):
        loss = torch.tensor(math.nan if t == 20 else 1.0)
        out = probe.before_step(ctx_for(model, t, loss))
    assert all(math.isfinite(v.item()) for v in out.values())


def test_secant_equals_the_curvature_of_an_isotropic_quadratic_and_cosine_is_exact():
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0, 0.5]))
    model = torch.nn.Module()
    model.w = w
    probe = GradStatsProbe(every=2)
    opt = torch.optim.SGD([w], lr=0.1)
    grads = []
    for step in range(3):  # copies at step 1, reads at step 2
        opt.zero_grad()
        (0.5 * 3.0 * (w * w).sum()).backward()  # Hessian = 3 I
        grads.append(w.grad.clone())
        out = probe.before_step(StepContext(step, None, [GroupView("g0", (w,))]))
        opt.step()
    assert out["grad_stats/secant"].item() == pytest.approx(3.0, rel=1e-5)
    expected = torch.nn.functional.cosine_similarity(grads[2], grads[1], dim=0)
    assert out["grad_stats/cosine"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_outlier_score_flags_a_gradient_spike():
    model = tiny_mlp()
    probe = GradStatsProbe()
    x, y = tiny_regression()
    for step in range(30):
        model.zero_grad()
        scale = 100.0 if step == 29 else 1.0
        (scale * torch.nn.functional.mse_loss(model(x), y)).backward()
        out = probe.before_step(ctx_for(model, step))
    assert out["grad_stats/outlier_z"].item() > 6


def _regression(d=6, sigma=0.5, seed=0):
    gen = torch.Generator().manual_seed(seed)
    w_star = torch.randn(d, generator=gen)
    model = torch.nn.Linear(d, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_((w_star + torch.randn(d, generator=gen)).unsqueeze(0))
    delta = model.weight.detach().squeeze(0) - w_star
    # per-example gradient of 0.5 r^2 at fixed w (x ~ N(0, I), y = x.w* + eps):
    # E[g] = delta, Sigma = (|delta|^2 + sigma^2) I + delta delta^T
    truth = (d * (delta @ delta + sigma**2) + delta @ delta) / (delta @ delta)

    def draw(n, g):
        x = torch.randn(n, d, generator=g)
        y = x @ w_star + sigma * torch.randn(n, generator=g)
        return x, y

    return model, draw, truth.item()


@pytest.mark.parametrize("mode", ["micro_batches", "across_steps"])
def test_noise_scale_matches_the_closed_form_on_linear_regression(mode):
    model, draw, truth = _regression()
    probe = NoiseProbe(block=4, beta=0.98)
    accumulate = 4 if mode == "micro_batches" else 1
    regime = Regime(
        model,
        torch.optim.SGD(model.parameters(), lr=0.0),
        policies=(),
        accumulate=accumulate,
        probes=["loss", "grad_norm", "nonfinite", probe],
    )
    gen = torch.Generator().manual_seed(1)
    for _ in range(800):
        for _ in range(accumulate):
            x, y = draw(16, gen)
            loss = 0.5 * (model(x).squeeze(1) - y).pow(2).mean()
            regime.backward(loss, batch_size=16)
            regime.step()
    estimate = regime.signals.get("noise/b_simple")
    assert estimate == pytest.approx(truth, rel=0.2), (estimate, truth)


def _flat_params(model):
    return [p for p in model.parameters()]


def _exact_top_eigenvalue(model, loss_fn, scale=None):
    params = _flat_params(model)
    shapes = [p.shape for p in params]
    flat = torch.cat([p.detach().reshape(-1) for p in params])

    def f(vector):
        chunks, offset = [], 0
        for shape in shapes:
            n = math.prod(shape)
            chunks.append(vector[offset : offset + n].reshape(shape))
            offset += n
        return loss_fn(chunks)

    hessian = torch.autograd.functional.hessian(f, flat)
    if scale is not None:
        s = torch.cat([t.reshape(-1) for t in scale])
        hessian = s[:, None] * hessian * s[None, :]
    return torch.linalg.eigvalsh(hessian)[-1].item()


def _small_problem():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    x = torch.randn(32, 3)
    y = torch.randn(32, 1)

    def functional(chunks):
        w1, b1, w2, b2 = chunks
        return torch.nn.functional.mse_loss(torch.tanh(x @ w1.T + b1) @ w2.T + b2, y)

    return model, x, y, functional


def test_power_iteration_matches_the_exact_hessian_for_sgd_with_momentum():
    model, x, y, functional = _small_problem()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    probe = CurvatureProbe(every=1, iterations=10)
    closure = lambda: torch.nn.functional.mse_loss(model(x), y)  # noqa: E731
    for step in range(6):  # warm-started readings at fixed weights converge
        out = probe.before_step(ctx_for(model, step, closure=closure, optimizers=(opt,)))
    exact = _exact_top_eigenvalue(model, functional)
    assert out["curvature/lambda"].item() == pytest.approx(exact, rel=1e-3)
    assert out["curvature/coefficient"].item() == pytest.approx(2 + 2 * 0.9)
    assert out["curvature/ratio"].item() == pytest.approx(0.05 * exact / 3.8, rel=1e-3)


def test_adam_curvature_is_preconditioned_against_38_over_lr():
    model, x, y, functional = _small_problem()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(5):
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
    probe = CurvatureProbe(every=1, iterations=10)
    closure = lambda: torch.nn.functional.mse_loss(model(x), y)  # noqa: E731
    for step in range(8):
        out = probe.before_step(ctx_for(model, step, closure=closure, optimizers=(opt,)))
    scale = []
    for p in model.parameters():
        state = opt.state[p]
        v_hat = state["exp_avg_sq"] / (1 - 0.999 ** float(state["step"]))
        scale.append((v_hat.sqrt() + 1e-8).rsqrt())
    exact = _exact_top_eigenvalue(model, functional, scale)
    assert out["curvature/lambda"].item() == pytest.approx(exact, rel=1e-2)
    assert out["curvature/coefficient"].item() == pytest.approx(38.0)


class _Attention(torch.nn.Module):
    """One causal self-attention layer on the fused kernel, as small transformers use."""

    def __init__(self):
        super().__init__()
        self.qkv, self.out = torch.nn.Linear(8, 24), torch.nn.Linear(8, 1)

    def forward(self, x):
        heads = self.qkv(x).unflatten(-1, (3, 2, 4)).permute(2, 0, 3, 1, 4)  # (3, B, H, L, D)
        mixed = torch.nn.functional.scaled_dot_product_attention(*heads, is_causal=True)
        return self.out(mixed.transpose(1, 2).flatten(2)).mean(dim=(1, 2))


def test_curvature_reads_through_fused_attention_kernels():
    """The fused CPU attention kernel has no double backward; the probe's closure runs
    on the math kernel, so a transformer gets a reading instead of a crash."""
    torch.manual_seed(0)
    model = _Attention()
    x, y = torch.randn(4, 6, 8), torch.randn(4)
    closure = lambda: torch.nn.functional.mse_loss(model(x), y)  # noqa: E731
    loss = closure()
    grads = torch.autograd.grad(loss, list(model.parameters()), create_graph=True)
    with pytest.raises(RuntimeError, match="derivative"):  # the failure the probe avoids
        torch.autograd.grad(grads[0].sum(), list(model.parameters()))
    out = CurvatureProbe(every=1, iterations=3).before_step(
        ctx_for(model, 0, closure=closure, optimizers=(torch.optim.SGD(model.parameters()),))
    )
    assert math.isfinite(out["curvature/lambda"].item()) and out["curvature/lambda"] != 0


def test_curvature_without_a_closure_emits_nothing():
    model = tiny_mlp()
    assert CurvatureProbe().before_step(ctx_for(model, 0)) == {}


def test_drift_reports_relative_distance_from_the_start():
    model = tiny_mlp()
    probe = DriftProbe()
    probe.attach(model)
    start = torch.cat([p.detach().reshape(-1).clone() for p in model.parameters()])
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.5)
    out = probe.before_step(ctx_for(model, 10))
    assert out["drift/g0"].item() == pytest.approx(0.5, rel=1e-5)
    assert start.norm() > 0


def test_activation_probe_finds_dead_and_saturated_units_and_cleans_up():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 8), torch.nn.Tanh()
    )
    with torch.no_grad():
        model[0].bias[:2] = -1e6  # two of eight ReLU units never fire
        model[2].weight.mul_(1e4)  # tanh units pinned at +-1
    probe = ActivationProbe(every=2)
    probe.attach(model)
    model(torch.randn(64, 4))
    out = probe.before_step(ctx_for(model, 0))
    assert out["activations/1/dead"].item() == pytest.approx(2 / 8)
    assert out["activations/3/saturated"].item() > 0.5
    probe.after_step(ctx_for(model, 0))
    model(torch.randn(64, 4))
    assert probe.before_step(ctx_for(model, 1)) == {}  # not a reading step: hooks idle
    probe.detach()
    assert not model[1]._forward_hooks and not model[3]._forward_hooks


def test_page_hinkley_detects_a_shift_quickly_and_stays_quiet_otherwise():
    gen = torch.Generator().manual_seed(0)
    quiet = PageHinkley()
    alarms = sum(quiet.update(torch.randn((), generator=gen)).item() for _ in range(2000))
    assert alarms == 0
    shifted = PageHinkley()
    delay = None
    for t in range(1000):
        value = torch.randn((), generator=gen) + (2.0 if t >= 500 else 0.0)
        if shifted.update(value).item() and t >= 500:
            delay = t - 500
            break
    assert delay is not None and delay <= 20


def test_streams_in_one_page_hinkley_alarm_as_they_would_alone():
    """The shift probe runs its two streams (loss, log gradient norm) in one detector:
    each element's alarms are those of a detector of its own, NaN and inf included."""
    gen = torch.Generator().manual_seed(1)
    steps = torch.arange(900)
    loss = torch.randn(900, generator=gen) * 0.1 + 1.0 + 2.0 * (steps >= 400)
    log_norm = torch.randn(900, generator=gen) * 0.2 - 3.0 + 1.0 * (steps >= 600)
    loss[50], log_norm[70] = math.nan, math.inf
    alone = [PageHinkley(), PageHinkley()]
    together = PageHinkley()
    fired = 0
    for t in range(900):
        single = [d.update(v[t]).item() for d, v in zip(alone, (loss, log_norm), strict=True)]
        assert together.update(torch.stack([loss[t], log_norm[t]])).tolist() == single, t
        fired += sum(single)
    assert fired >= 2  # both shifts were found


def test_a_non_finite_first_value_does_not_blind_the_detector():
    detector = PageHinkley()
    detector.update(torch.tensor(math.nan))
    gen = torch.Generator().manual_seed(2)
    values = [torch.randn((), generator=gen) + (3.0 if t >= 200 else 0.0) for t in range(300)]
    alarms = [t for t, v in enumerate(values) if detector.update(v).item()]
    assert alarms and 200 <= alarms[0] <= 220


def test_the_shift_probe_reads_the_streams_it_has_and_resumes_an_older_checkpoint():
    model = tiny_mlp()
    x, y = tiny_regression()
    torch.nn.functional.mse_loss(model(x), y).backward()
    probe = ShiftProbe()
    assert set(probe.before_step(ctx_for(model, 0))) == {"shift/grad_alarm"}  # no loss given
    loss = torch.tensor(0.5)
    assert set(probe.before_step(ctx_for(model, 1, loss=loss))) == {
        "shift/loss_alarm",
        "shift/grad_alarm",
    }
    # a checkpoint from before the streams shared a detector: one state per stream
    old = {
        name: {"state": {k: v[i].clone() for k, v in probe.detector.state.items()}, "seen": 2}
        for i, name in enumerate(("loss", "grad"))
    }
    resumed = ShiftProbe()
    resumed.load_state_dict(old)
    assert resumed.detector.seen == 2
    for key, value in probe.detector.state.items():
        assert torch.equal(resumed.detector.state[key], value), key


def test_generalization_gap_and_its_trend_come_from_observe():
    x, y = tiny_regression()
    model = tiny_mlp()
    regime = Regime(model, torch.optim.AdamW(model.parameters(), lr=1e-2), probes="cheap")
    for i in range(40):
        xb, yb = batch(x, y, i)
        regime.backward(torch.nn.functional.mse_loss(model(xb), yb))
        regime.step()
        if i % 10 == 9:
            regime.observe(val_loss=0.5 + 0.1 * i / 10)  # validation worsens as train falls
    gaps = regime.signals.observations("gap")
    assert len(gaps) == 4
    train = regime.signals.get("loss_trend/ema_short")
    assert gaps[-1][1] == pytest.approx(0.5 + 0.1 * 3.9 - train, abs=0.2)
    assert regime.signals.observations("gap_slope")[-1][1] > 0


def test_the_thorough_preset_resumes_exactly():
    def build():
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        return model, Regime(model, opt, probes="thorough")

    x, y = tiny_regression()

    def run(model, regime, start, stop):
        for i in range(start, stop):
            xb, yb = batch(x, y, i)
            regime.backward(torch.nn.functional.mse_loss(model(xb), yb))
            regime.step(closure=lambda xb=xb, yb=yb: torch.nn.functional.mse_loss(model(xb), yb))

    model_a, regime_a = build()
    run(model_a, regime_a, 0, 60)
    model_b, regime_b = build()
    run(model_b, regime_b, 0, 30)
    state = regime_b.state_dict()
    model_c, regime_c = build()
    regime_c.load_state_dict(state)
    run(model_c, regime_c, 30, 60)
    for a, c in zip(model_a.parameters(), model_c.parameters(), strict=True):
        assert torch.equal(a, c)
    assert regime_a.signals.state_dict() == regime_c.signals.state_dict()


def test_drift_of_a_group_that_started_at_zero_is_infinite_not_huge():
    # e.g. a LoRA B matrix: relative drift is undefined, and a huge finite number would
    # read as a backbone running away from its pretrained weights
    model = tiny_mlp()
    torch.nn.init.zeros_(model[2].weight)
    torch.nn.init.zeros_(model[2].bias)
    probe = DriftProbe()
    probe.attach(model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)
    params = tuple(model.parameters())
    groups = [GroupView("body", params[:2]), GroupView("lora_b", params[2:])]
    out = probe.before_step(StepContext(step=10, loss=None, groups=groups, model=model))
    assert math.isinf(out["drift/lora_b"].item())
    assert 0 < out["drift/body"].item() < 1
