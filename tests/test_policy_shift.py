"""The shift policy: scripted losses and alarms, and a seeded run on a shifting stream."""

import random

import pytest
import torch

import trimtab
from trimtab.errors import ConfigError
from trimtab.policies import POLICIES, PolicyView, Shift
from trimtab.signals import Signals
from trimtab.types import Action, Knob, Priority

GROUPS = ("g0",)


class Script:
    """Feeds a loss (and an alarm) per step and applies accepted moves like the arbiter."""

    def __init__(self, policy, wd=1.0):
        self.policy, self.state = policy, policy.initial_state()
        self.signals, self.step = Signals(), 0
        self.multipliers = {(Knob.LR, "g0"): 1.0, (Knob.WEIGHT_DECAY, "g0"): wd}
        self.made = []

    def feed(self, loss, alarm=0.0, refuse_lr=False):
        self.signals.record(
            self.step, {"loss/train": loss, "shift/loss_alarm": alarm, "shift/grad_alarm": 0.0}
        )
        view = PolicyView(self.step, None, self.signals, GROUPS, dict(self.multipliers))
        proposals, self.state = self.policy.propose(view, self.state)
        for p in proposals:
            if p.action is not Action.ADJUST or (refuse_lr and p.knob is Knob.LR):
                continue
            key = (p.knob, "g0")
            self.multipliers[key] = (
                p.target if p.target is not None else self.multipliers[key] * p.factor
            )
        self.made += [(self.step, p) for p in proposals]
        self.step += 1
        return proposals

    @property
    def lr(self):
        return self.multipliers[(Knob.LR, "g0")]


def settle(script, rng, steps=60, level=1.0):
    for _ in range(steps):
        script.feed(level + 0.02 * rng.gauss(0, 1))


def test_a_lasting_step_change_raises_the_lr_once_then_returns_it_to_the_prior_level():
    rng = random.Random(0)
    script = Script(Shift(persistence=20, decay_every=15, decay_steps=4))
    settle(script, rng)
    script.feed(2.0, alarm=1.0)
    lrs = []
    for i in range(200):  # the new level, then a recovery the raise should speed up
        script.feed(2.0 * max(0.5, 1 - i / 100) + 0.02 * rng.gauss(0, 1))
        lrs.append(script.lr)
    raises = [p for _, p in script.made if p.knob is Knob.LR and p.factor > 1]
    assert len(raises) == 1 and raises[0].priority is Priority.SPEED
    assert raises[0].factor == 2.0 and "distribution shift" in raises[0].reason
    assert raises[0].signals["loss_after"] > 1.7 and raises[0].signals["loss_before"] < 1.1
    assert "expecting" in raises[0].reason and raises[0].signals["provisional"] == 1.0
    raised_at = next(s for s, p in script.made if p is raises[0])
    assert raised_at == 60 + 19  # the alarm's step and 19 more: the persistence window
    # announced with the raise, so the other policies stop judging new data by the old
    (announced,) = [(s, p) for s, p in script.made if p.action is Action.NEW_DATA]
    assert announced[0] == raised_at and "the data changed" in announced[1].reason
    assert max(lrs) == pytest.approx(2.0)
    verdicts = [p for _, p in script.made if p.action is Action.VERDICT]
    assert len(verdicts) == 1 and "kept" in verdicts[0].reason
    assert script.lr == pytest.approx(1.0)  # back to the prior multiplier
    downs = [p for _, p in script.made if p.knob is Knob.LR and p.factor < 1]
    assert len(downs) == 4 and all(p.factor == pytest.approx(2**-0.25) for p in downs)


@pytest.mark.parametrize("burst", [1, 3, 5])
def test_a_short_burst_with_an_alarm_changes_nothing(burst):
    rng = random.Random(1)
    script = Script(Shift())
    settle(script, rng)
    for i in range(burst):  # the fault harness's label burst or one x1e3 batch
        script.feed(1e3 if burst == 1 else 3.0, alarm=1.0 if i == 0 else 0.0)
    settle(script, rng, steps=200)
    assert script.made == [] and script.lr == 1.0


def test_non_finite_losses_before_any_shift_are_left_to_the_guard():
    """A NaN batch (the fault harness) on a quiet run: nothing to do, and no crash."""
    rng = random.Random(3)
    script = Script(Shift())
    for _ in range(5):  # too early for a baseline, then with one
        script.feed(float("nan"))
    settle(script, rng)
    script.feed(float("nan"), alarm=1.0)
    script.feed(float("inf"))
    settle(script, rng, steps=100)
    assert script.made == [] and script.lr == 1.0


def test_a_raise_that_does_not_help_is_reverted_at_once():
    rng = random.Random(2)
    script = Script(Shift(verdict_after=30, decay_every=15, decay_steps=6))
    settle(script, rng)
    script.feed(2.0, alarm=1.0)
    settle(script, rng, steps=120, level=2.0)  # the loss never comes down
    lr_moves = [p for _, p in script.made if p.knob is Knob.LR]
    reverted = [p for p in lr_moves if "raise of step" in p.reason and "reverted" in p.reason]
    assert len(reverted) == 1 and "not below the expected" in reverted[0].reason
    assert script.lr == pytest.approx(1.0)
    assert not [p for _, p in script.made if p.action is Action.VERDICT]


def test_a_raised_weight_decay_returns_to_the_users_value_and_stays_there():
    rng = random.Random(3)
    script = Script(Shift(), wd=4.0)
    settle(script, rng)
    script.feed(2.0, alarm=1.0)
    settle(script, rng, steps=150, level=2.0)
    wd = [p for _, p in script.made if p.knob is Knob.WEIGHT_DECAY]
    assert len(wd) == 1 and wd[0].target == 1.0 and "stale" in wd[0].reason
    assert wd[0].priority is Priority.REGULARIZATION
    assert script.multipliers[(Knob.WEIGHT_DECAY, "g0")] == 1.0


def test_a_refused_raise_is_retried_for_a_while_then_given_up():
    rng = random.Random(4)
    script = Script(Shift(retry_for=60, quiet=10))
    settle(script, rng)
    script.feed(2.0, alarm=1.0)
    for _ in range(200):
        script.feed(2.0 + 0.02 * rng.gauss(0, 1), refuse_lr=True)
    asks = [p for _, p in script.made if p.knob is Knob.LR]
    assert 4 <= len(asks) <= 7 and all(p.factor == 2.0 for p in asks)
    assert script.lr == 1.0 and script.state["phase"] == "idle"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"raise_factor": 3.0}, "raise_factor"), ({"raise_factor": 1.0}, "raise_factor"),
     ({"persistence": 3}, "persistence"), ({"min_rise": 0.0}, "min_rise")],
)  # fmt: skip
def test_bad_settings_fail_at_construction(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        Shift(**kwargs)


def test_it_is_registered_but_not_a_default_and_needs_the_shift_probe():
    assert POLICIES["shift"] is Shift and "shift" not in trimtab.policies.DEFAULT_POLICIES
    model = torch.nn.Linear(2, 1)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    # left at the default probes, Regime adds the detector the policy reads
    regime = trimtab.Regime(model, opt, policies=("shift",))
    assert "shift" in {p.name for p in regime._controller.probes}
    # a probe set the user chose is theirs: a missing detector is a clear error
    with pytest.raises(ConfigError, match="shift"):
        trimtab.Regime(model, opt, policies=("shift",), probes=list(trimtab.probes.DEFAULT_PROBES))


def _shifting_run(policies, steps=500, shift_at=250):
    """Two Gaussian classes whose inputs move and rotate at ``shift_at``."""
    gen = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 10, generator=gen) * 1.5
    rotation, _ = torch.linalg.qr(torch.randn(10, 10, generator=gen))

    def batch(step, n=64):
        g = torch.Generator().manual_seed(step)
        y = torch.randint(4, (n,), generator=g)
        x = centres[y] + torch.randn(n, 10, generator=g)
        return (x @ rotation if step >= shift_at else x), y

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(10, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    regime = trimtab.Regime(
        model,
        opt,
        total_steps=steps,
        policies=policies,
        probes=("loss", "grad_norm", "nonfinite", "shift"),
    )
    losses = []
    for step in range(steps):
        x, y = batch(step)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        losses.append(loss.item())
        regime.backward(loss)
        regime.step()
    regime.close()
    return regime, losses


def test_a_seeded_run_on_a_shifting_stream_raises_after_the_shift_and_returns():
    regime, losses = _shifting_run(("stability_guard", "shift"))
    events = [e for e in regime.events if e.policy == "shift" and e.knob == "lr"]
    assert events, [e.reason for e in regime.events]
    assert all(e.step > 250 for e in events)  # nothing before the shift
    assert events[0].new == pytest.approx(2 * events[0].old)
    assert events[-1].new == pytest.approx(events[0].old)  # back where it started
    assert any(e.kind.value == "verdict" and "kept" in e.reason for e in regime.events)
    _, plain = _shifting_run(("stability_guard",))
    # the guard reads the jump as divergence first (rollback, cut, ramp back); the raise
    # comes once that ramp is done and still speeds up the rest of the adaptation
    after = slice(events[0].step, events[0].step + 100)
    assert sum(losses[after]) < 0.9 * sum(plain[after])


def test_after_stale_cuts_the_raise_climbs_to_twice_the_users_lr_and_returns_to_the_cut():
    """LR cut to a quarter on the old data: the peak is 2x the user's value, not 2x the cut."""
    rng = random.Random(5)
    script = Script(Shift(quiet=10, decay_steps=3, decay_every=15))
    script.multipliers[(Knob.LR, "g0")] = 0.25
    settle(script, rng)
    script.feed(2.0, alarm=1.0)
    lrs = []
    for i in range(250):
        script.feed(2.0 * max(0.3, 1 - i / 60) + 0.02 * rng.gauss(0, 1))
        lrs.append(script.lr)
    ups = [p for _, p in script.made if p.knob is Knob.LR and p.factor > 1]
    assert [p.factor for p in ups] == pytest.approx([2.0, 2.0, 2.0])
    assert max(lrs) == pytest.approx(2.0)  # raise_factor x the user's value, never more
    assert "stale" in ups[0].reason and ups[0].signals["peak"] == pytest.approx(8.0)
    assert script.lr == pytest.approx(0.25)  # back to the prior multiplier
