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
        self.own = {}  # (knob, group, policy) -> accepted factors, as the arbiter keeps them
        self.rolled_back_call = None  # set by a test that plays the guard's rollback
        self.rewound_at = None  # set by a test that plays another policy's rewind
        self.made = []

    def feed(self, loss, alarm=0.0, refuse_lr=False):
        self.signals.record(
            self.step, {"loss/train": loss, "shift/loss_alarm": alarm, "shift/grad_alarm": 0.0}
        )
        view = PolicyView(
            self.step,
            None,
            self.signals,
            GROUPS,
            dict(self.multipliers),
            own=dict(self.own),
            calls=self.step,
            rolled_back_call=self.rolled_back_call,
            rewound_at=self.rewound_at,
        )
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


def shift_then_relearn(script, rng, level=2.0, steps=200, floor=0.5, over=100):
    """An alarm on a jump to ``level``, then a loss that falls to ``floor`` of it over
    ``over`` steps; returns the LR multiplier after each step."""
    script.feed(level, alarm=1.0)
    lrs = []
    for i in range(steps):
        script.feed(level * max(floor, 1 - i / over) + 0.02 * rng.gauss(0, 1))
        lrs.append(script.lr)
    return lrs


def test_a_lasting_step_change_raises_the_lr_once_then_returns_it_to_the_prior_level():
    rng = random.Random(0)
    script = Script(Shift(persistence=20, decay_every=15, decay_steps=4))
    settle(script, rng)
    lrs = shift_then_relearn(script, rng)  # a recovery the raise should speed up
    raises = [p for _, p in script.made if p.knob is Knob.LR and p.factor > 1]
    assert len(raises) == 1 and raises[0].priority is Priority.SPEED
    assert raises[0].factor == 2.0 and "distribution shift" in raises[0].reason
    assert raises[0].signals["loss_after"] > 1.7 and raises[0].signals["loss_before"] < 1.1
    assert "expecting" in raises[0].reason and raises[0].signals["provisional"] == 1.0
    raised_at = next(s for s, p in script.made if p is raises[0])
    # announced with the raise, at the alarm's step and 19 more (the persistence window),
    # so the other policies stop judging new data by the old
    (announced,) = [(s, p) for s, p in script.made if p.action is Action.NEW_DATA]
    assert announced[0] == 60 + 19 and "the data changed" in announced[1].reason
    assert raised_at == announced[0]
    # the old level (1.0) was no fit of the data: the weights are left alone
    assert not [p for _, p in script.made if p.action is Action.RESCALE]
    assert max(lrs) == pytest.approx(2.0)
    verdicts = [p for _, p in script.made if p.action is Action.VERDICT]
    assert len(verdicts) == 1 and "kept" in verdicts[0].reason
    assert script.lr == pytest.approx(1.0)  # back to the prior multiplier
    downs = [p for _, p in script.made if p.knob is Knob.LR and p.factor < 1]
    assert len(downs) == 4 and all(p.factor == pytest.approx(2**-0.25) for p in downs)


@pytest.mark.parametrize("burst", [1, 3, 5, 9])
def test_a_burst_shorter_than_half_the_window_changes_nothing(burst):
    rng = random.Random(1)
    script = Script(Shift())
    settle(script, rng)
    for i in range(burst):  # one x1e3 batch, or the fault harness's label burst
        script.feed(1e3 if burst == 1 else 3.0, alarm=1.0 if i == 0 else 0.0)
    settle(script, rng, steps=200)
    assert script.made == [] and script.lr == 1.0


def test_high_losses_at_the_weights_the_guard_restored_confirm_at_once():
    """The guard skips the first high batch and rolls back on the second; the next two,
    read at the restored known-good weights, are high too: the data changed."""
    rng = random.Random(1)
    script = Script(Shift())
    settle(script, rng)
    script.feed(3.0, alarm=1.0)
    script.rolled_back_call = script.step  # the guard rolls back on this batch
    assert script.feed(3.2) == []
    assert script.feed(3.1) == []  # one loss at the restored weights: a burst, maybe
    made = script.feed(3.15)
    assert [p.action for p in made] == [Action.NEW_DATA]
    assert made[0].signals["loss_after"] == 3.1  # the lower median of the four
    assert "the last 2 at the weights the guard restored" in made[0].reason


def test_a_burst_that_ends_after_one_loss_at_the_restored_weights_is_no_shift():
    """The faults task's three shuffled-label batches: skipped, rolled back, and one
    more high loss at the restored weights; the next batch is normal again."""
    rng = random.Random(1)
    script = Script(Shift())
    settle(script, rng)
    script.feed(3.0, alarm=1.0)
    script.rolled_back_call = script.step
    script.feed(3.2)
    script.feed(3.1)
    settle(script, rng, steps=100)
    assert script.made == [] and script.lr == 1.0
    # one loss at the restored weights was asked for: the burst counts as a shift
    script = Script(Shift(at_restored=1))
    settle(script, rng)
    script.feed(3.0, alarm=1.0)
    script.rolled_back_call = script.step
    script.feed(3.2)
    assert [p.action for p in script.feed(3.1)] == [Action.NEW_DATA]


def test_a_jump_after_another_policys_rewind_is_no_shift():
    """Early stopping restores the best weights of long ago: the training loss jumps
    because the weights changed, and the loss level before is no longer the old level."""
    rng = random.Random(11)
    script = Script(Shift())
    for _ in range(60):
        script.feed(1e-3 * (1 + 0.1 * rng.gauss(0, 1)))
    script.rewound_at = script.step - 1  # rewound on the last step
    script.feed(0.7, alarm=1.0)
    for i in range(100):
        script.feed(0.7 * max(0.01, 1 - i / 50) * (1 + 0.05 * rng.gauss(0, 1)))
    assert script.made == [] and script.lr == 1.0
    # without the rewind, the same losses read as a shift
    script = Script(Shift())
    for _ in range(60):
        script.feed(1e-3 * (1 + 0.1 * rng.gauss(0, 1)))
    script.feed(0.7, alarm=1.0)
    for i in range(100):
        script.feed(0.7 * max(0.01, 1 - i / 50) * (1 + 0.05 * rng.gauss(0, 1)))
    assert [p for _, p in script.made if p.action is Action.NEW_DATA]


def test_a_normal_loss_at_the_restored_weights_is_no_shift():
    """High losses, then the guard's rollback: the restored weights read a normal loss,
    so the weights had diverged (the guard's cut must stand), the data is the same."""
    rng = random.Random(1)
    script = Script(Shift())
    settle(script, rng)
    script.feed(3.0, alarm=1.0)
    for _ in range(4):  # a divergence that builds up before the guard rolls back
        script.feed(3.2)
    script.rolled_back_call = script.step - 1
    script.feed(1.0)  # the lower median is still high, the latest loss is not
    settle(script, rng, steps=100)
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
     ({"persistence": 5}, "persistence"), ({"min_rise": 0.0}, "min_rise"),
     ({"shrink": 0.0}, "shrink"), ({"shrink": 1.5}, "shrink"), ({"fitted": 1.0}, "fitted"),
     ({"shrink_groups": "head"}, "shrink_groups")],
)  # fmt: skip
def test_bad_settings_fail_at_construction(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        Shift(**kwargs)


def test_it_is_a_default_and_brings_its_detector_into_any_probe_set():
    assert POLICIES["shift"] is Shift and "shift" in trimtab.policies.DEFAULT_POLICIES
    model = torch.nn.Linear(2, 1)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    # left at the default probes, Regime adds the detector the policy reads
    regime = trimtab.Regime(model, opt)
    assert "shift" in {p.name for p in regime._controller.probes}
    # the detector is cheap (two scalars a step): it joins a probe set the user chose too,
    # so a set that worked before the shift policy became a default still does
    chosen = trimtab.Regime(model, opt, probes=list(trimtab.probes.DEFAULT_PROBES))
    assert "shift" in {p.name for p in chosen._controller.probes}


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
    settle(script, rng, steps=30)  # trained at the user's LR first
    script.multipliers[(Knob.LR, "g0")] = 0.25
    settle(script, rng)
    lrs = shift_then_relearn(script, rng, steps=250, floor=0.3, over=60)
    ups = [p for _, p in script.made if p.knob is Knob.LR and p.factor > 1]
    assert [p.factor for p in ups] == pytest.approx([2.0, 2.0, 2.0])
    assert max(lrs) == pytest.approx(2.0)  # raise_factor x the user's value, never more
    assert "stale" in ups[0].reason and ups[0].signals["peak"] == pytest.approx(8.0)
    assert script.lr == pytest.approx(0.25)  # back to the prior multiplier


def _fitted_then_shifted(script, rng, old=1e-6, new=8.0):
    """Losses near zero (the old data fitted), then a jump that holds; the guard rolls
    back on its second batch."""
    for _ in range(60):
        script.feed(old * (1 + 0.1 * rng.gauss(0, 1)))
    script.feed(new, alarm=1.0)
    script.rolled_back_call = script.step
    for _ in range(40):
        script.feed(new * (1 + 0.05 * rng.gauss(0, 1)))


def test_a_shift_after_fitting_the_old_data_shrinks_the_weights_once():
    rng = random.Random(6)
    script = Script(Shift())
    _fitted_then_shifted(script, rng)
    (rescale,) = [(s, p) for s, p in script.made if p.action is Action.RESCALE]
    (announced,) = [s for s, p in script.made if p.action is Action.NEW_DATA]
    # with the confirmation, on the second loss at the restored weights
    assert rescale[0] == announced == 63
    assert rescale[1].factor == 0.3 and rescale[1].group is None
    assert "fitted" in rescale[1].reason and "dropped" in rescale[1].reason
    assert rescale[1].signals["loss_before"] < 1e-5 and rescale[1].signals["loss_after"] > 7


@pytest.mark.parametrize(
    ("kwargs", "old", "groups"),
    [({}, 1.0, None), ({"shrink": 1.0}, 1e-6, None), ({"fitted": 1e-8}, 1e-6, None),
     ({"shrink_groups": ("g0",)}, 1e-6, ["g0"])],
)  # fmt: skip
def test_the_weights_are_shrunk_only_after_a_fit_and_only_where_asked(kwargs, old, groups):
    rng = random.Random(7)
    script = Script(Shift(**kwargs))
    _fitted_then_shifted(script, rng, old=old)
    assert [p for _, p in script.made if p.action is Action.NEW_DATA]  # a shift, each time
    rescales = [p for _, p in script.made if p.action is Action.RESCALE]
    assert [p.group for p in rescales] == (groups or [])


def test_the_raise_returns_at_once_to_the_highest_lr_the_run_trained_at():
    """An early ramp to x8, then plateau cuts to x1 on the old data: after a shift seen
    at the restored weights the LR goes back to x8 in one restore (no new ground) two
    steps after the announcement, not x2 by doublings."""
    rng = random.Random(8)
    script = Script(Shift())
    for level in (2.0, 4.0, 8.0, 4.0, 2.0, 1.0):
        script.multipliers[(Knob.LR, "g0")] = level
        settle(script, rng, steps=25)
    script.feed(3.0, alarm=1.0)
    script.rolled_back_call = script.step  # the guard rolls back on the next batch
    for i in range(200):
        script.feed(3.0 * max(0.3, 1 - i / 60) + 0.02 * rng.gauss(0, 1))
    ups = [(s, p) for s, p in script.made if p.knob is Knob.LR and p.factor > 1]
    (restore,) = [(s, p) for s, p in ups if p.restore]
    assert restore[0] == 150 + 3 + 2 and restore[1].factor == pytest.approx(8.0)
    assert "highest level the run trained at" in restore[1].reason
    assert len(ups) == 1  # x8 is already above 2x the user's LR: no climb beyond it
    assert script.lr == pytest.approx(1.0)  # and it decays back to the prior level


def test_a_level_that_ended_in_a_guard_cut_is_not_returned_to():
    rng = random.Random(9)
    script = Script(Shift())
    script.multipliers[(Knob.LR, "g0")] = 16.0
    settle(script, rng, steps=10)
    # the guard cut it: a divergence at x16; the ramp then reached x4 at most
    script.own[(Knob.LR, "g0", "stability_guard")] = 0.25
    script.multipliers[(Knob.LR, "g0")] = 4.0
    settle(script, rng, steps=10)
    script.multipliers[(Knob.LR, "g0")] = 1.0  # plateau cuts
    settle(script, rng, steps=40)
    script.feed(3.0, alarm=1.0)
    script.rolled_back_call = script.step
    for i in range(10):
        script.feed(3.0 - 0.01 * i)
    (restore,) = [p for _, p in script.made if p.restore]
    assert restore.factor == pytest.approx(4.0)


def _fitted_stream_recovery(policies, seed=0, steps=400, shift_at=200):
    """Steps after a shift until the held-out accuracy on the new data is back within a
    point of its level before it, on far-apart classes the model fits to near zero loss."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(4, 10, generator=gen) * 3.0
    rotation, _ = torch.linalg.qr(torch.randn(10, 10, generator=gen))
    offset = torch.randn(10, generator=gen) * 3.0

    def draw(n, shifted, g):
        y = torch.randint(4, (n,), generator=g)
        x = centres[y] + torch.randn(n, 10, generator=g)
        return (x @ rotation + offset if shifted else x), y

    held = {s: draw(500, s, torch.Generator().manual_seed(99 + s)) for s in (False, True)}
    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Linear(10, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64), torch.nn.ReLU(),
        torch.nn.Linear(64, 4),
    )  # fmt: skip
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    regime = trimtab.Regime(model, opt, total_steps=steps, policies=policies)

    def accuracy(shifted):
        with torch.no_grad():
            x, y = held[shifted]
            return (model(x).argmax(1) == y).float().mean().item()

    before, back = None, None
    for step in range(steps):
        x, y = draw(64, step >= shift_at, torch.Generator().manual_seed(seed * 7919 + step))
        regime.backward(torch.nn.functional.cross_entropy(model(x), y))
        regime.step()
        if (step + 1) % 10 == 0:
            with torch.no_grad():
                x, y = held[step >= shift_at]
                regime.observe(val_loss=torch.nn.functional.cross_entropy(model(x), y).item())
        if step + 1 == shift_at:
            before = accuracy(False)
        elif step + 1 > shift_at and back is None and accuracy(True) >= before - 0.01:
            back = step + 1 - shift_at
    regime.close()
    return regime, before, back


def test_on_a_fitted_stream_the_shift_policy_shrinks_restores_and_recovers_sooner():
    defaults = trimtab.policies.DEFAULT_POLICIES
    regime, before, back = _fitted_stream_recovery(defaults)
    _, _, plain = _fitted_stream_recovery(tuple(p for p in defaults if p != "shift"))
    assert before > 0.99 and back is not None and plain is not None
    kinds = [(e.policy, e.kind.value) for e in regime.events if e.step >= 195]
    assert ("shift", "rescale") in kinds
    # the guard stops checking the restored weights on the shift's word: none of its
    # skips comes after the shift policy's verdict
    verdict = next(i for i, e in enumerate(regime.events) if e.policy == "shift")
    assert not [e for e in regime.events[verdict:] if e.kind.value == "skip"]
    assert back < plain, (back, plain)


def test_a_shift_confirmed_after_twenty_losses_leaves_the_weights_alone():
    """Without the guard's rollback the model has trained on the new data for 20 steps
    by the confirmation: it is relearning already, and a shrink would undo that."""
    rng = random.Random(10)
    script = Script(Shift())
    for _ in range(60):
        script.feed(1e-6 * (1 + 0.1 * rng.gauss(0, 1)))
    script.feed(8.0, alarm=1.0)
    for _ in range(40):
        script.feed(8.0 * (1 + 0.05 * rng.gauss(0, 1)))
    assert [s for s, p in script.made if p.action is Action.NEW_DATA] == [60 + 19]
    assert not [p for _, p in script.made if p.action is Action.RESCALE]


def test_a_shift_confirmed_after_twenty_losses_gets_the_ordinary_raise():
    """Relearning is under way by then: 2x the user's LR by doublings, no restore."""
    rng = random.Random(11)
    script = Script(Shift())
    for level in (8.0, 1.0):
        script.multipliers[(Knob.LR, "g0")] = level
        settle(script, rng, steps=30)
    script.feed(3.0, alarm=1.0)
    for i in range(100):
        script.feed(3.0 * max(0.3, 1 - i / 60) + 0.02 * rng.gauss(0, 1))
    ups = [p for _, p in script.made if p.knob is Knob.LR and p.factor > 1]
    assert ups and not any(p.restore for p in ups) and ups[0].factor == 2.0


def test_the_ordinary_raise_never_goes_above_the_highest_lr_the_run_trained_at():
    """An LR already at x64 of the user's (the early phase's ramp): a 20-loss
    confirmation does not double it into new ground."""
    rng = random.Random(12)
    script = Script(Shift())
    script.multipliers[(Knob.LR, "g0")] = 64.0
    settle(script, rng)
    script.feed(3.0, alarm=1.0)
    for i in range(100):
        script.feed(3.0 * max(0.3, 1 - i / 60) + 0.02 * rng.gauss(0, 1))
    assert [s for s, p in script.made if p.action is Action.NEW_DATA] == [60 + 19]
    assert not [p for _, p in script.made if p.knob is Knob.LR]
    assert script.lr == 64.0


def test_a_users_lr_the_run_never_trained_at_is_no_level_to_raise_to():
    """lr 0.1 on a small model: the early phase cut it x0.02 after one update. A shift
    raises 2x the level the run trained at, not 2x the user's (x100 of it)."""
    rng = random.Random(12)
    script = Script(Shift())
    script.feed(1.0)
    script.multipliers[(Knob.LR, "g0")] = 0.02
    settle(script, rng)
    lrs = shift_then_relearn(script, rng)
    raises = [p for _, p in script.made if p.knob is Knob.LR and p.factor > 1]
    assert [p.factor for p in raises] == pytest.approx([2.0])
    assert max(lrs) == pytest.approx(0.04)
