"""The noise policy: scripted SNR readings, hysteresis, persistence and absent signals."""

import random

import pytest
import torch

import trimtab
from trimtab.errors import ConfigError
from trimtab.policies import Noise, PolicyView
from trimtab.signals import Signals
from trimtab.types import Knob, Priority

GROUPS = ("g0",)


class Script:
    def __init__(self, policy):
        self.policy, self.state = policy, policy.initial_state()
        self.signals, self.multipliers, self.step = Signals(), {}, 0
        self.own = {}  # what the arbiter would record: every proposal accepted as made

    def feed(self, snr=None, accept=True):
        if snr is not None:
            self.signals.record(self.step, {"noise/snr/g0": snr})
        view = PolicyView(
            self.step, None, self.signals, GROUPS, dict(self.multipliers), own=dict(self.own)
        )
        proposals, self.state = self.policy.propose(view, self.state)
        for p in proposals if accept else ():  # accept=False: the arbiter refused them
            key, mine = (Knob.LR, "g0"), (Knob.LR, "g0", p.policy)
            self.multipliers[key] = self.multipliers.get(key, 1.0) * p.factor
            self.own[mine] = self.own.get(mine, 1.0) * p.factor
        self.step += 1
        return proposals

    def run(self, values):
        return [p for v in values for p in self.feed(v)]

    @property
    def level(self):
        return self.multipliers.get((Knob.LR, "g0"), 1.0)


def policy(**kw):
    return Noise(window=8, reference_readings=8, period=2, persistence=3, **kw)


def test_a_persistent_fall_in_snr_cuts_the_lr_in_bounded_steps_with_the_evidence():
    script = Script(policy(max_cut=0.7))
    assert script.run([4.0] * 8) == []  # the healthy reference: 4 -> h = 0.8
    made = script.run([0.25] * 40)  # h = 0.2: a quarter of the progress per step
    assert made, "a persistent fall must cut"
    first = made[0]
    assert first.knob is Knob.LR and first.group == "g0" and first.priority is Priority.SCHEDULE
    assert first.factor == pytest.approx(0.7)  # bounded: the target 0.25 is further
    assert "signal-to-noise fell" in first.reason and "s/(1+s)" in first.reason
    assert first.signals["snr"] == pytest.approx(0.25)
    assert first.signals["reference_snr"] == pytest.approx(4.0)
    assert script.level == pytest.approx(0.25)  # settles on the target h(0.25)/h(4)
    assert all(p.factor < 1 for p in made)


def test_one_bad_window_is_not_persistent():
    script = Script(policy())
    script.run([4.0] * 8)
    # a dip shorter than the median window plus persistence moves nothing
    assert script.run([4.0] * 8 + [0.2] * 3 + [4.0] * 20) == []
    assert script.level == 1.0


def test_the_lr_comes_back_when_the_signal_recovers_and_never_beyond_the_users():
    script = Script(policy(restore_factor=1.25))
    script.run([4.0] * 8 + [0.5] * 40)
    low = script.level
    assert low < 0.8
    made = script.run([4.0] * 80)
    assert made and all(p.priority is Priority.RECOVERY for p in made)
    assert all(p.factor <= 1.25 + 1e-9 for p in made)
    assert "recovered" in made[0].reason
    assert script.level == pytest.approx(1.0)
    assert script.run([8.0] * 40) == []  # healthier than the reference: still the user's LR


def test_another_policys_cut_is_not_undone():
    script = Script(policy())
    script.run([4.0] * 8)
    script.multipliers[(Knob.LR, "g0")] = 0.5  # say, a plateau cut
    assert script.run([4.0] * 40) == []
    assert script.level == 0.5


def test_a_refused_cut_is_proposed_again_not_counted_as_made():
    script = Script(policy())
    script.run([4.0] * 8)  # the healthy reference
    refused = [p for v in [0.25] * 40 for p in script.feed(v, accept=False)]
    assert refused and script.level == 1.0
    # its level is what the arbiter accepted (nothing): the same persistent fall asks
    # for the same cut again instead of believing the LR already came down
    assert len(refused) >= 2
    assert refused[1].factor == pytest.approx(refused[0].factor)
    assert refused[1].signals["level"] == 1.0


def test_the_floor_bounds_the_total_cut():
    script = Script(policy(floor=0.4))
    script.run([4.0] * 8 + [0.01] * 80)
    assert script.level == pytest.approx(0.4)


def test_absent_or_non_finite_signal_does_nothing():
    script = Script(policy())
    assert script.run([None] * 100) == []
    assert script.run([float("nan")] * 50) == []
    assert script.level == 1.0


def test_stationary_noisy_snr_never_moves_the_knob():
    rng = random.Random(0)
    script = Script(Noise())
    made = script.run([max(0.0, 0.5 * (1 + 0.4 * rng.gauss(0, 1))) for _ in range(3000)])
    assert made == []


def test_settings_are_checked():
    with pytest.raises(ConfigError):
        Noise(restore_factor=0.9)
    with pytest.raises(ValueError):
        Noise(margin=0.0)


def test_regime_adds_the_noise_probe_and_a_training_run_reads_it():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    regime = trimtab.Regime(model, opt, policies=["noise"], probes=["loss", "nonfinite"])
    assert "noise" in {p.name for p in regime._controller.probes}
    w = torch.randn(4, 1)
    for _ in range(40):
        x = torch.randn(16, 4)
        loss = torch.nn.functional.mse_loss(model(x), x @ w + torch.randn(16, 1))
        regime.backward(loss, batch_size=16)
        regime.step()
    assert any(name.startswith("noise/snr/") for name in regime._controller.signals.names())
