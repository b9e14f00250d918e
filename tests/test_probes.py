"""Foundation probes against plain-autograd reference twins."""

import math

import pytest
import torch
from tests.conftest import tiny_mlp, tiny_regression

from trimtab.errors import ConfigError
from trimtab.probes import (
    PROBES,
    GradNormProbe,
    GroupView,
    LossProbe,
    NonFiniteProbe,
    StepContext,
    UpdateRatioProbe,
)


def context(model, loss, split=True):
    params = [p for p in model.parameters()]
    groups = [GroupView("body", tuple(params[:2])), GroupView("head", tuple(params[2:]))]
    if not split:
        groups = [GroupView("g0", tuple(params))]
    return StepContext(step=0, loss=loss, groups=groups, model=model)


def backward(model):
    x, y = tiny_regression()
    loss = torch.nn.functional.mse_loss(model(x), y)
    loss.backward()
    return loss


def test_grad_norms_match_clip_grad_norm():
    model = tiny_mlp()
    loss = backward(model)
    out = GradNormProbe().before_step(context(model, loss))
    params = list(model.parameters())
    total = torch.nn.utils.clip_grad_norm_(params, float("inf"))
    body = torch.nn.utils.clip_grad_norm_(params[:2], float("inf"))
    assert out["grad_norm/global"].item() == pytest.approx(total.item(), rel=1e-5)
    assert out["grad_norm/body"].item() == pytest.approx(body.item(), rel=1e-5)
    assert all(v.dim() == 0 for v in out.values())  # device tensors, not floats


def test_loss_probe_detaches():
    model = tiny_mlp()
    loss = backward(model)
    out = LossProbe().before_step(context(model, loss))
    assert not out["loss/train"].requires_grad
    assert out["loss/train"].item() == pytest.approx(loss.item())


@pytest.mark.parametrize("poison", ["grad_nan", "grad_inf", "loss_nan"])
def test_nonfinite_probe_flags_nan_and_inf(poison):
    model = tiny_mlp()
    loss = backward(model)
    probe = NonFiniteProbe()
    assert probe.before_step(context(model, loss))["nonfinite/any"].item() == 0.0
    if poison == "grad_nan":
        next(model.parameters()).grad[0, 0] = math.nan
    elif poison == "grad_inf":
        list(model.parameters())[-1].grad[0] = math.inf
    else:
        loss = torch.tensor(math.nan)
    assert probe.before_step(context(model, loss))["nonfinite/any"].item() == 1.0


def test_nonfinite_probe_refuses_a_cadence():
    with pytest.raises(ConfigError, match="every step"):
        NonFiniteProbe(every=5)


def test_update_ratio_matches_a_manual_computation():
    model = tiny_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = backward(model)
    ctx = context(model, loss, split=False)
    before = [p.detach().clone() for p in model.parameters()]
    probe = UpdateRatioProbe(every=1)
    probe.before_step(ctx)
    optimizer.step()
    out = probe.after_step(ctx)
    delta = torch.sqrt(
        sum(((p - b) ** 2).sum() for p, b in zip(model.parameters(), before, strict=True))
    )
    norm = torch.sqrt(sum((b**2).sum() for b in before))
    assert out["update_ratio/g0"].item() == pytest.approx((delta / norm).item(), rel=1e-5)


def test_update_ratio_of_an_all_zero_group_is_infinite_not_huge():
    model = tiny_mlp()
    torch.nn.init.zeros_(model[2].weight)
    torch.nn.init.zeros_(model[2].bias)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    loss = backward(model)
    ctx = context(model, loss)  # groups: body (first layer), head (the zero readout)
    probe = UpdateRatioProbe(every=1)
    probe.before_step(ctx)
    optimizer.step()
    out = probe.after_step(ctx)
    assert math.isinf(out["update_ratio/head"].item())
    assert 0 < out["update_ratio/body"].item() < 1


def test_every_registered_probe_declares_its_contract():
    for name, cls in PROBES.items():
        probe = cls()
        probe.attach(tiny_mlp())  # some probes name their signals after the model's layers
        assert probe.name == name
        assert probe.every >= 1
        signals = probe.signals(["a", "b"])
        assert signals and all(s.startswith(f"{name}/") for s in signals)
        assert set(probe.settings()) >= {"every", "cost"}
        probe.detach()


def test_update_ratio_leaves_out_tensors_that_started_at_zero_for_the_whole_run():
    # a zero readout matrix beside its default bias: the ratio is the bias's own, on the
    # first reading and on later ones (when the matrix is no longer zero), also after a
    # checkpoint round trip
    model = tiny_mlp()
    torch.nn.init.zeros_(model[2].weight)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    probe = UpdateRatioProbe(every=1)
    for step in range(3):
        if step == 2:
            saved, probe = probe.state_dict(), UpdateRatioProbe(every=1)
            probe.load_state_dict(saved)
        optimizer.zero_grad()
        ctx = context(model, backward(model))
        bias_before = model[2].bias.detach().clone()
        probe.before_step(ctx)
        optimizer.step()
        out = probe.after_step(ctx)
        moved = (model[2].bias.detach() - bias_before).norm() / bias_before.norm()
        assert out["update_ratio/head"].item() == pytest.approx(moved.item(), rel=1e-4)
        assert model[2].weight.abs().sum() > 0  # the matrix moved, and is not counted
