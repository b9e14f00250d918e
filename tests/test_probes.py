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


def test_update_ratio_matches_a_manual_computation_over_the_matrices():
    # the group holds two weight matrices and two biases: the ratio is the matrices' own
    model = tiny_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = backward(model)
    ctx = context(model, loss, split=False)
    before = [p.detach().clone() for p in model.parameters()]
    probe = UpdateRatioProbe(every=1)
    probe.before_step(ctx)
    optimizer.step()
    out = probe.after_step(ctx)
    pairs = [(p, b) for p, b in zip(model.parameters(), before, strict=True) if p.dim() >= 2]
    delta = torch.sqrt(sum(((p - b) ** 2).sum() for p, b in pairs))
    norm = torch.sqrt(sum((b**2).sum() for _, b in pairs))
    assert out["update_ratio/g0"].item() == pytest.approx((delta / norm).item(), rel=1e-5)
    whole = torch.sqrt(
        sum(((p - b) ** 2).sum() for p, b in zip(model.parameters(), before, strict=True))
    ) / torch.sqrt(sum((b**2).sum() for b in before))
    assert abs(out["update_ratio/g0"].item() - whole.item()) > 1e-4  # the biases would move it


def test_update_ratio_of_a_group_without_matrices_is_its_vectors_own():
    model = tiny_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = backward(model)
    biases = (model[0].bias, model[2].bias)
    ctx = StepContext(step=0, loss=loss, groups=[GroupView("biases", biases)], model=model)
    before = [b.detach().clone() for b in biases]
    probe = UpdateRatioProbe(every=1)
    probe.before_step(ctx)
    optimizer.step()
    out = probe.after_step(ctx)
    delta = torch.sqrt(sum(((p - b) ** 2).sum() for p, b in zip(biases, before, strict=True)))
    norm = torch.sqrt(sum((b**2).sum() for b in before))
    assert out["update_ratio/biases"].item() == pytest.approx((delta / norm).item(), rel=1e-5)


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
    # a LoRA-like group: an initialised matrix beside a zero one (and a bias); the ratio
    # is the initialised matrix's own, on the first reading and on later ones (when the
    # zero matrix has moved), also after a checkpoint round trip
    model = tiny_mlp()
    torch.nn.init.zeros_(model[2].weight)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    probe = UpdateRatioProbe(every=1)
    for step in range(3):
        if step == 2:
            saved, probe = probe.state_dict(), UpdateRatioProbe(every=1)
            probe.load_state_dict(saved)
        optimizer.zero_grad()
        loss = backward(model)
        group = GroupView("lora", (model[0].weight, model[2].weight, model[2].bias))
        ctx = StepContext(step=step, loss=loss, groups=[group], model=model)
        first_before = model[0].weight.detach().clone()
        probe.before_step(ctx)
        optimizer.step()
        out = probe.after_step(ctx)
        moved = (model[0].weight.detach() - first_before).norm() / first_before.norm()
        assert out["update_ratio/lora"].item() == pytest.approx(moved.item(), rel=1e-4)
        assert model[2].weight.abs().sum() > 0  # the zero matrix moved, and is not counted


def test_a_zero_readout_matrix_beside_its_bias_reads_inf_not_the_bias_ratio():
    # the bias alone is no yardstick (a single drawn value near 0): the group reads as
    # zero-initialised, and later readings are the matrix's own
    model = tiny_mlp()
    torch.nn.init.zeros_(model[2].weight)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    probe = UpdateRatioProbe(every=1)
    readings = []
    for step in range(2):
        optimizer.zero_grad()
        ctx = context(model, backward(model))
        ctx.step = step
        weight_before = model[2].weight.detach().clone()
        probe.before_step(ctx)
        optimizer.step()
        readings.append(probe.after_step(ctx)["update_ratio/head"].item())
    assert math.isinf(readings[0])
    moved = (model[2].weight.detach() - weight_before).norm() / weight_before.norm()
    assert readings[1] == pytest.approx(moved.item(), rel=1e-4)
