"""Clipping in the controller, and the clipping policy on scripted and real norms."""

import math

import pytest
import torch
from tests.conftest import batch, tiny_mlp, tiny_regression

import trimtab
from trimtab.errors import ConfigError
from trimtab.policies import Clipping, PolicyView
from trimtab.signals import Signals
from trimtab.types import Knob, Priority


def test_the_regime_clips_each_step_on_the_device_after_the_probes_read_the_norm():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1, bias=False)
    start = model.weight.detach().clone()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    regime = trimtab.Regime(model, opt, policies=("stability_guard",), max_grad_norm=0.01)
    x, y = torch.randn(8, 3), torch.randn(8, 1)
    loss = torch.nn.functional.mse_loss(model(x), y)
    (grad,) = torch.autograd.grad(loss, model.weight)
    regime.backward(torch.nn.functional.mse_loss(model(x), y))
    regime.step()
    step = model.weight.detach() - start
    assert torch.linalg.vector_norm(step).item() == pytest.approx(0.01, rel=1e-4)
    assert torch.allclose(step / 0.01, -grad / grad.norm(), atol=1e-5)  # direction kept
    seen = regime._controller.signals.get("grad_norm/global")
    assert seen == pytest.approx(grad.norm().item(), rel=1e-5)  # the unclipped norm
    assert regime.hyperparameters()["max_grad_norm/g0"] == 0.01
    with pytest.raises(ConfigError, match="max_grad_norm"):
        trimtab.Regime(model, opt, max_grad_norm=-1.0)


class Script:
    def __init__(self, policy, base=1.0):
        self.policy, self.state = policy, policy.initial_state()
        self.signals, self.step, self.multipliers = Signals(), 0, {}
        self.bases = {} if base is None else {(Knob.MAX_GRAD_NORM, "g0"): base}

    def feed(self, norm):
        self.signals.record(self.step, {"grad_norm/g0": norm})
        view = PolicyView(
            self.step, None, self.signals, ("g0",), dict(self.multipliers), dict(self.bases)
        )
        made, self.state = self.policy.propose(view, self.state)
        for p in made:
            if p.knob is Knob.MAX_GRAD_NORM:
                self.multipliers[(p.knob, "g0")] = p.target
        self.step += 1
        return made

    @property
    def threshold(self):
        return self.bases[(Knob.MAX_GRAD_NORM, "g0")] * self.multipliers.get(
            (Knob.MAX_GRAD_NORM, "g0"), 1.0
        )


def noisy(i, level=1.0):
    return level * math.exp(0.2 * math.sin(1.3 * i))


def test_a_threshold_far_above_the_norms_comes_down_to_the_percentile_with_headroom():
    script = Script(Clipping(), base=50.0)
    made = [p for i in range(400) for p in script.feed(noisy(i))]
    assert made and all(p.priority is Priority.STABILITY for p in made)
    assert "only outliers are clipped" in made[0].reason
    assert 1.2 < script.threshold < 2.5  # 1.5 x the 90 % level of norms near 1


def test_a_threshold_below_the_norms_rises_as_a_recovery_not_an_lr_cut():
    script = Script(Clipping(), base=0.05)
    made = [p for i in range(600) for p in script.feed(noisy(i))]
    assert made and all(p.knob is Knob.MAX_GRAD_NORM for p in made)
    assert all(p.priority is Priority.RECOVERY for p in made)
    assert 1.2 < script.threshold < 2.5


def test_norms_that_outgrow_a_fitted_threshold_cut_the_lr_instead():
    script = Script(Clipping(), base=1.0)
    for i in range(300):
        script.feed(noisy(i))
    fitted = script.threshold
    made = [p for i in range(40) for p in script.feed(noisy(i, level=5.0))]
    cuts = [p for p in made if p.knob is Knob.LR]
    assert cuts and cuts[0].factor == 0.5 and cuts[0].priority is Priority.STABILITY
    assert "outgrew" in cuts[0].reason and cuts[0].signals["clip_rate"] > 0.5
    assert script.threshold == fitted  # the threshold stays; the step was too large


def test_a_run_that_does_not_clip_is_left_alone():
    script = Script(Clipping(), base=None)
    assert not [p for i in range(300) for p in script.feed(noisy(i, level=100.0))]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"window": 10, "period": 20}, "window"), ({"headroom": 0.5}, "headroom"),
     ({"tolerance": 1.0}, "tolerance"), ({"quantile": 1.0}, "quantile")],
)  # fmt: skip
def test_bad_settings_fail_at_construction(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        Clipping(**kwargs)


def test_end_to_end_the_threshold_follows_a_real_runs_gradient_norms():
    x, y = tiny_regression()
    model = tiny_mlp()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    regime = trimtab.Regime(
        model, opt, total_steps=300, policies=("stability_guard", Clipping()), max_grad_norm=100.0
    )
    for i in range(300):
        xb, yb = batch(x, y, i)
        regime.backward(torch.nn.functional.mse_loss(model(xb), yb))
        regime.step()
    moves = [e for e in regime.events if e.knob == "max_grad_norm"]
    assert moves and moves[-1].new < 100.0 and "gradient norms" in moves[0].reason
    norms = regime._controller.signals.window("grad_norm/g0")
    assert moves[-1].new > max(norms[-20:]) * 0.5  # near the norms, not clipping them all
