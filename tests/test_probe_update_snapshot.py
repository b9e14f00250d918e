"""The weight copy shared by the alignment and update-ratio probes, and the fused cosine."""

import pytest
import torch
from tests.conftest import tiny_mlp, tiny_regression

from trimtab.probes import AlignmentProbe, GroupView, StepContext, UpdateRatioProbe


def _backward(model, seed=0):
    x, y = tiny_regression(seed)
    model.zero_grad(set_to_none=True)
    torch.nn.functional.mse_loss(model(x), y).backward()


def _groups(model):
    params = list(model.parameters())
    return [GroupView("body", tuple(params[:2])), GroupView("head", tuple(params[2:]))]


def test_alignment_and_update_ratio_share_one_copy_and_match_plain_formulas():
    model = tiny_mlp()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    groups = _groups(model)
    alignment, ratio = AlignmentProbe(every=3), UpdateRatioProbe(every=9)
    assert alignment.due(8) and ratio.due(8) and ratio.due(0) and not ratio.due(1)
    _backward(model)
    ctx = StepContext(step=8, loss=None, groups=groups)
    before = [p.detach().clone() for p in model.parameters()]
    alignment.before_step(ctx)
    ratio.before_step(ctx)
    assert ctx._update is not None and ctx.update_snapshot() is ctx._update  # one copy
    optimizer.step()
    alignment.after_step(ctx)
    got_ratio = ratio.after_step(ctx)
    minus = [b - p.detach() for b, p in zip(before, model.parameters(), strict=True)]
    for name, sl in (("body", slice(0, 2)), ("head", slice(2, 4))):
        matrices = [i for i in range(len(before))[sl] if before[i].dim() >= 2]  # no biases
        want = (
            torch.cat([minus[i].flatten() for i in matrices]).norm()
            / torch.cat([before[i].flatten() for i in matrices]).norm()
        )
        assert got_ratio[f"update_ratio/{name}"].item() == pytest.approx(want.item(), rel=1e-5)

    _backward(model, seed=1)
    got = alignment.before_step(StepContext(step=9, loss=None, groups=groups))
    grads = [p.grad for p in model.parameters()]
    flat_g = torch.cat([g.flatten() for g in grads]).double()
    flat_d = torch.cat([m.flatten() for m in minus]).double()
    want = flat_g @ flat_d / (flat_g.norm() * flat_d.norm())
    assert got["alignment/global"].item() == pytest.approx(want.item(), abs=1e-6)
    head_g, head_d = flat_g[-17:], flat_d[-17:]
    want_head = head_g @ head_d / (head_g.norm() * head_d.norm())
    assert got["alignment/head"].item() == pytest.approx(want_head.item(), abs=1e-6)


def test_alignment_of_a_zero_update_is_zero_not_nan():
    w = torch.nn.Parameter(torch.ones(4))
    group = GroupView("g0", (w,))
    probe = AlignmentProbe(every=1)
    w.grad = torch.full((4,), 1e12)
    probe.before_step(StepContext(step=0, loss=None, groups=[group]))
    probe.after_step(StepContext(step=0, loss=None, groups=[group]))  # the step moved nothing
    got = probe.before_step(StepContext(step=1, loss=None, groups=[group]))
    assert got["alignment/g0"].item() == 0.0
