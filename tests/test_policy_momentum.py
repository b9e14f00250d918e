"""The momentum policy: scripted alignment, and a heavy-ball run that overshoots."""

import math

import pytest
import torch

import trimtab
from trimtab.errors import ConfigError
from trimtab.policies import Momentum, PolicyView
from trimtab.signals import Signals
from trimtab.types import Knob, Priority

GROUPS = ("g0",)


class Script:
    def __init__(self, policy, base=0.9):
        self.policy, self.state = policy, policy.initial_state()
        self.signals, self.multipliers, self.step = Signals(), {}, 0
        self.bases = {(Knob.MOMENTUM, "g0"): base}

    def feed(self, alignment):
        self.signals.record(self.step, {"alignment/g0": alignment})
        view = PolicyView(
            self.step, None, self.signals, GROUPS, dict(self.multipliers), dict(self.bases)
        )
        proposals, self.state = self.policy.propose(view, self.state)
        for p in proposals:
            self.multipliers[(Knob.MOMENTUM, "g0")] = p.target
        self.step += 1
        return proposals

    @property
    def multiplier(self):
        return self.multipliers.get((Knob.MOMENTUM, "g0"), 1.0)


def test_persistent_overshoot_lowers_momentum_down_to_the_floor_with_the_evidence():
    script = Script(Momentum(factor=0.8, floor=0.5))
    made = [p for i in range(200) for p in script.feed(-0.5 + 0.05 * math.sin(i))]
    assert made and all(p.knob is Knob.MOMENTUM and p.priority is Priority.STABILITY for p in made)
    assert "overshoot" in made[0].reason and "alignment -0.49" in made[0].reason
    assert made[0].target == pytest.approx(0.8) and made[0].signals["momentum"] == 0.9
    assert script.multiplier == 0.5  # the floor, reached and held
    assert len(made) == 4  # 0.8, 0.64, 0.512, 0.5


def test_momentum_comes_back_to_the_users_value_and_never_beyond():
    script = Script(Momentum(restore_after=3))
    for _ in range(40):
        script.feed(-0.6)
    lowered = script.multiplier
    assert lowered < 1.0
    for _ in range(10):  # the window still remembers the overshoot for a decision
        script.feed(0.3)
    made = [p for _ in range(400) for p in script.feed(0.3)]
    assert made and all(p.priority is Priority.RECOVERY for p in made)
    assert script.multiplier == 1.0 and "user's value is 0.9" in made[-1].reason


def test_noise_around_zero_and_groups_without_momentum_are_left_alone():
    noisy = Script(Momentum())
    assert not [p for i in range(300) for p in noisy.feed(0.3 * math.sin(1.7 * i))]
    plain = Script(Momentum(), base=0.0)  # SGD without momentum: nothing to lower
    assert not [p for _ in range(100) for p in plain.feed(-0.8)]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"oscillate_below": 0.1}, "oscillate_below"), ({"factor": 1.2}, "factor"),
     ({"floor": 0.0}, "floor"), ({"window": 1}, "window")],
)  # fmt: skip
def test_bad_settings_fail_at_construction(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        Momentum(**kwargs)


def test_a_heavy_ball_run_that_overshoots_gets_less_momentum_and_ends_lower():
    """Least squares whose stiff direction makes SGD+momentum 0.99 ring back and forth."""

    def run(policies):
        torch.manual_seed(0)
        x = torch.randn(256, 2) * torch.tensor([1.0, 8.0])
        y = x @ torch.tensor([[1.0], [-0.5]])
        model = torch.nn.Linear(2, 1, bias=False)
        opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.99)
        regime = trimtab.Regime(model, opt, total_steps=300, policies=policies)
        for i in range(300):
            xb, yb = x[(i * 32) % 256 :][:32], y[(i * 32) % 256 :][:32]
            regime.backward(torch.nn.functional.mse_loss(model(xb), yb))
            regime.step()
        loss = torch.nn.functional.mse_loss(model(x), y).item()
        regime.close()
        return regime, loss, opt.param_groups[0]["momentum"]

    regime, with_policy, momentum = run(("stability_guard", Momentum()))
    _, without, _ = run(("stability_guard",))
    events = [e for e in regime.events if e.knob == "momentum"]
    assert events and events[0].new < events[0].old == 0.99
    assert "overshoot" in events[0].reason
    assert momentum == 0.99  # the user's value is restored between steps
    assert with_policy < without


def test_a_level_that_overshoots_again_after_its_restore_is_not_given_back_twice():
    """Overshoot and calm alternate: each give-back ends lower, so the swings die out."""
    script = Script(Momentum(restore_after=2, factor=0.8, floor=0.5))
    ups_per_phase = []
    for phase in range(16):  # 60 steps each
        before = script.multiplier
        ups = 0
        for _ in range(60):
            made = script.feed(-0.6 if phase % 2 == 0 else 0.4)
            ups += sum(p.priority is Priority.RECOVERY for p in made)
        ups_per_phase.append(ups)
        if phase % 2:  # a calm phase gives back less than the previous one did
            assert script.multiplier >= before
    assert sum(ups_per_phase[8:]) == 0  # the ceiling has come down to the floor
    assert script.multiplier == 0.5
