"""The early phase: provisional raises while gradients agree with updates, their verdicts,
and the cut when one update moves the weights too far; scripted and end to end."""

import math

import pytest
import torch
from tests.conftest import batch, tiny_regression

from trimtab import Regime
from trimtab.errors import ConfigError
from trimtab.policies import EarlyPhase, PolicyView, StabilityGuard
from trimtab.probes import AlignmentProbe, GroupView, StepContext
from trimtab.signals import Signals
from trimtab.types import Action, Knob, Priority

GROUPS = ("g0",)


class Script:
    """Feeds one step of signals at a time, applying knob proposals like an arbiter."""

    def __init__(self, policy, total_steps=1000):
        self.policy = policy
        self.state = policy.initial_state()
        self.signals = Signals()
        self.multipliers = {}
        self.total_steps = total_steps
        self.step = 0
        self.rewound_at = None
        self.data_changed_at = None

    def feed(self, **values):
        self.signals.record(self.step, values)
        view = PolicyView(
            self.step,
            self.total_steps,
            self.signals,
            GROUPS,
            dict(self.multipliers),
            rewound_at=self.rewound_at,
            data_changed_at=self.data_changed_at,
        )
        proposals, self.state = self.policy.propose(view, self.state)
        for p in proposals:
            if p.knob is Knob.LR:
                old = self.multipliers.get((Knob.LR, "g0"), 1.0)
                self.multipliers[(Knob.LR, "g0")] = p.target or old * p.factor
        self.step += 1
        return proposals


def _lr(script):
    return script.multipliers.get((Knob.LR, "g0"), 1.0)


def test_agreeing_gradients_raise_provisionally_and_a_falling_loss_keeps_the_raise():
    script = Script(EarlyPhase())
    seen = []
    for i in range(40):
        seen += script.feed(**{"loss/train": 2.0 - 0.01 * i, "alignment/g0": 0.4})
    raises = [p for p in seen if p.knob is Knob.LR]
    verdicts = [p for p in seen if p.action is Action.VERDICT]
    assert raises and all(p.factor == 2.0 and p.priority is Priority.SPEED for p in raises)
    assert "provisional" in raises[0].reason and "alignment +0.40" in raises[0].reason
    assert verdicts and all("kept" in v.reason for v in verdicts)
    assert _lr(script) == 2.0 ** len(raises) and len(raises) >= 2


def test_a_raise_that_makes_the_loss_rise_is_reverted_and_the_ramp_ends():
    script = Script(EarlyPhase())
    seen = []
    for i in range(11):  # the first trial starts at step 10
        seen += script.feed(**{"loss/train": 2.0 + 0.01 * math.sin(i), "alignment/g0": 0.5})
    assert _lr(script) == 2.0
    for _ in range(10):  # the loss jumps after the raise
        seen += script.feed(**{"loss/train": 3.0, "alignment/g0": 0.5})
    reverted = [p for p in seen if p.knob is Knob.LR and p.factor == 0.5]
    assert len(reverted) == 1 and "reverted" in reverted[0].reason
    assert reverted[0].signals["loss/after"] == pytest.approx(3.0)
    assert _lr(script) == 1.0
    for _ in range(60):  # no further raises, however strong the alignment
        assert not [p for p in script.feed(**{"loss/train": 1.0, "alignment/g0": 0.9}) if p.knob]


def test_a_rewind_for_memorization_ends_the_ramp_and_closes_the_open_trial():
    script = Script(EarlyPhase())
    for i in range(15):  # a trial opens at step 10
        script.feed(**{"loss/train": 2.0 - 0.01 * i, "alignment/g0": 0.5})
    assert _lr(script) == 2.0
    script.rewound_at = script.step
    (closed,) = script.feed(**{"loss/train": 1.9, "alignment/g0": 0.5})
    assert closed.action is Action.VERDICT and "rewound" in closed.reason
    for i in range(60):  # no further raises, however strong the alignment
        assert not script.feed(**{"loss/train": 1.8 - 0.01 * i, "alignment/g0": 0.9})


def test_new_data_ends_an_unjudged_trial_and_the_ramp_goes_on_from_it():
    script = Script(EarlyPhase())
    for i in range(15):  # a trial opens at step 10
        script.feed(**{"loss/train": 2.0 - 0.01 * i, "alignment/g0": 0.5})
    assert _lr(script) == 2.0
    script.data_changed_at = script.step  # the new data's loss is far higher: no verdict
    (verdict,) = script.feed(**{"loss/train": 9.0, "alignment/g0": 0.5})
    assert verdict.action is Action.VERDICT and "not judged" in verdict.reason
    assert _lr(script) == 2.0  # the raise stays
    later = [
        p
        for i in range(40)
        for p in script.feed(**{"loss/train": 9.0 - 0.01 * i, "alignment/g0": 0.5})
    ]
    assert not any("step 10" in p.reason for p in later)  # the old trial is over
    assert any(p.knob is Knob.LR and p.factor == 2.0 for p in later)  # the ramp goes on


def test_the_first_trial_on_new_data_is_judged_on_new_losses_only():
    script = Script(EarlyPhase())
    for i in range(20):  # agreement only from step 15: no trial pending at step 20
        script.feed(**{"loss/train": 1.0, "alignment/g0": 0.5 if i >= 15 else 0.0})
    script.data_changed_at = 19  # first seen at step 20, a decision step
    made = [p for _ in range(30) for p in script.feed(**{"loss/train": 3.0, "alignment/g0": 0.5})]
    raises = [p for p in made if p.knob is Knob.LR and p.factor == 2.0]
    assert raises and all(p.signals["loss/mean"] == pytest.approx(3.0) for p in raises)
    assert not any(p.knob is Knob.LR and p.factor < 1 for p in made)  # none reverted


def test_no_raise_when_gradients_do_not_agree_or_the_phase_is_over():
    script = Script(EarlyPhase(), total_steps=100)
    for i in range(31):  # the horizon is step 30 (30 % of 100)
        assert script.feed(**{"loss/train": 2.0 - 0.01 * i, "alignment/g0": 0.0}) == []
    for _ in range(40):
        assert script.feed(**{"loss/train": 1.0, "alignment/g0": 0.8}) == []


def test_no_raise_once_the_loss_is_all_but_gone_and_new_data_resets_the_yardstick():
    script = Script(EarlyPhase(raise_above=0.0))
    made = []
    for i in range(80):  # the loss falls 10x every 9 steps while gradients still agree
        made += script.feed(**{"loss/train": 2.0 * 10 ** (-i / 9), "alignment/g0": 0.3})
    raises = [p for p in made if p.knob is Knob.LR and p.factor == 2.0]
    # decisions at steps 10, 20, 30 see mean losses above 1e-3 of the first steps' mean;
    # from step 40 on the loss is below it, and no raise follows however well aligned
    assert [p.signals["loss/mean"] / 2.0 > 1e-3 for p in raises] == [True] * len(raises)
    assert len(raises) == 3 and _lr(script) == 8.0
    script.data_changed_at = script.step  # new data, far higher loss: raises resume
    later = [
        p
        for i in range(30)
        for p in script.feed(**{"loss/train": 5.0 - 0.01 * i, "alignment/g0": 0.3})
    ]
    assert any(p.knob is Knob.LR and p.factor == 2.0 for p in later)


def test_a_loss_that_goes_negative_is_never_judged_fitted():
    # a Gaussian negative log-likelihood: from +2 down through zero to -4; the bar
    # (1e-3 of the start) would read -4 as fitted if signs were ignored
    script = Script(EarlyPhase(raise_above=0.0))
    made = []
    for i in range(80):
        made += script.feed(**{"loss/train": 2.0 - 0.075 * i, "alignment/g0": 0.3})
    raises = [p for p in made if p.knob is Knob.LR and p.factor == 2.0]
    assert len(raises) == 7  # a raise at every decision from step 10 to step 70
    assert min(p.signals["loss/mean"] for p in raises) < 0


def test_an_update_that_moves_the_weights_too_far_is_cut_at_once():
    script = Script(EarlyPhase())
    proposals = script.feed(**{"loss/train": 2.0, "update_ratio/g0": 0.4})
    assert len(proposals) == 1 and proposals[0].priority is Priority.SAFETY
    assert proposals[0].factor == pytest.approx(0.03 / 0.4)
    assert "0.4 of their norm" in proposals[0].reason


def test_a_group_that_starts_from_zero_weights_is_exempt_from_the_ratio_checks():
    # its first ratio is infinite (all-zero weights); later ones are large next to its
    # own small norm, which is no sign of a rate that is too high
    zero = Script(EarlyPhase())
    assert zero.feed(**{"loss/train": 2.0, "update_ratio/g0": math.inf}) == []
    seen = [
        p
        for i in range(30)
        for p in zero.feed(
            **{"loss/train": 2.0 - 0.01 * i, "alignment/g0": 0.5, "update_ratio/g0": 0.4}
        )
    ]
    assert not [p for p in seen if p.priority is Priority.SAFETY]
    assert [p for p in seen if p.knob is Knob.LR and p.factor == 2.0]  # raises go on
    # the same readings after a finite first one: the step is too large, cut at once
    normal = Script(EarlyPhase())
    assert normal.feed(**{"loss/train": 2.0, "update_ratio/g0": 0.01}) == []
    cut = normal.feed(**{"loss/train": 2.0, "alignment/g0": 0.5, "update_ratio/g0": 0.4})[0]
    assert cut.priority is Priority.SAFETY and cut.factor < 1


def test_a_step_that_did_not_advance_does_not_cut_twice_on_the_same_reading():
    script = Script(EarlyPhase())
    script.signals.record(0, {"loss/train": 2.0, "update_ratio/g0": 0.4})
    view = PolicyView(0, 1000, script.signals, GROUPS, {})
    (cut,), state = script.policy.propose(view, script.state)
    # the step was skipped: the controller asks again at the same step, same reading
    again, _ = script.policy.propose(view, state)
    assert cut.priority is Priority.SAFETY and again == []


def test_a_refused_or_superseded_raise_is_no_verdict_on_the_ramp():
    script = Script(EarlyPhase())
    seen = []
    for i in range(11):  # the trial of step 10 is proposed...
        seen += script.feed(**{"loss/train": 2.0 - 0.01 * i, "alignment/g0": 0.5})
    script.multipliers[(Knob.LR, "g0")] = 1.25  # ...but a recovery step won the slot
    for i in range(10):
        seen += script.feed(**{"loss/train": 1.9 - 0.01 * i, "alignment/g0": 0.5})
    verdicts = [p for p in seen if p.action is Action.VERDICT]
    assert verdicts and "did not happen" in verdicts[-1].reason
    assert "ramp goes on" in verdicts[-1].reason
    raises = [p for p in seen if p.knob is Knob.LR and p.factor == 2.0]
    assert len(raises) == 2  # a new trial right away


def test_a_cut_by_another_policy_between_trials_ends_the_ramp():
    script = Script(EarlyPhase())
    for i in range(21):  # trial at 10 kept at 20, next trial proposed at 20
        script.feed(**{"loss/train": 2.0 - 0.01 * i, "alignment/g0": 0.5})
    for i in range(10):
        script.feed(**{"loss/train": 1.7 - 0.01 * i, "alignment/g0": 0.5})
    script.multipliers[(Knob.LR, "g0")] = 1.0  # e.g. the plateau policy halved it
    seen = [p for _ in range(60) for p in script.feed(**{"loss/train": 1.5, "alignment/g0": 0.9})]
    assert not [p for p in seen if p.knob is Knob.LR]
    assert any("another policy cut" in p.reason or "cut by another" in p.reason for p in seen)


def test_bad_settings_are_refused_with_the_reason():
    with pytest.raises(ConfigError, match="factor must be > 1"):
        EarlyPhase(factor=0.5)
    with pytest.raises(ConfigError, match="target_update_ratio"):
        EarlyPhase(max_update_ratio=0.1, target_update_ratio=0.2)
    with pytest.raises(ConfigError, match="fitted_below must be in"):
        EarlyPhase(fitted_below=0.0)


def test_alignment_probe_matches_a_hand_computed_cosine_and_skips_a_gap():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(5))
    probe = AlignmentProbe(every=2)
    group = GroupView("g0", (w,))
    target = torch.randn(5)

    def grad_at():
        w.grad = None
        ((w - target) ** 2).sum().backward()
        return w.grad.clone()

    grad_at()
    assert probe.before_step(StepContext(step=1, loss=None, groups=[group])) == {}
    before = w.detach().clone()
    with torch.no_grad():
        w.sub_(0.1 * w.grad)
    probe.after_step(StepContext(step=1, loss=None, groups=[group]))
    g = grad_at()
    got = probe.before_step(StepContext(step=2, loss=None, groups=[group]))
    minus_update = before - w.detach()
    want = torch.dot(g, minus_update) / (g.norm() * minus_update.norm())
    assert got["alignment/g0"].item() == pytest.approx(want.item(), abs=1e-6)
    assert got["alignment/global"].item() == pytest.approx(want.item(), abs=1e-6)
    # A step that was not applied (no after_step) leaves no reading.
    probe.before_step(StepContext(step=3, loss=None, groups=[group]))
    assert probe.before_step(StepContext(step=4, loss=None, groups=[group])) == {}


def _train(lr, policies=None, steps=150):
    x, y = tiny_regression()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1))
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    kwargs = {} if policies is None else {"policies": policies}
    regime = Regime(model, opt, total_steps=steps, **kwargs)
    for i in range(steps):
        xb, yb = batch(x, y, i)
        regime.backward(torch.nn.functional.mse_loss(model(xb), yb))
        regime.step()
    return regime, torch.nn.functional.mse_loss(model(x), y).item()


def test_a_learning_rate_100x_too_low_is_raised_and_trains_much_further():
    regime, adapted = _train(1e-4)
    _, plain = _train(1e-4, policies=())
    raises = [e for e in regime.events if e.policy == "early_phase" and e.knob == "lr"]
    assert len(raises) >= 3 and all(e.new == pytest.approx(2 * e.old) for e in raises)
    assert any(e.kind.value == "verdict" and "kept" in e.reason for e in regime.events)
    assert adapted < 0.5 * plain


def test_a_learning_rate_far_too_high_is_cut_in_the_first_steps():
    regime, _ = _train(1.0)
    cuts = [e for e in regime.events if e.policy == "early_phase" and e.knob == "lr"]
    assert cuts and cuts[0].step <= 10 and cuts[0].new < cuts[0].old / 3


def _steps(regime, model, n):
    """``n`` steps of regression on the tiny data set; the outcome of each."""
    x, y = tiny_regression()
    outcomes = []
    for i in range(n):
        xb, yb = batch(x, y, i)
        regime.backward(torch.nn.functional.mse_loss(model(xb), yb))
        outcomes.append(regime.step())
    return outcomes


def test_a_zero_initialised_readout_keeps_its_rate_and_its_first_update():
    # a common set-up (and what trimtab.init_ does): the readout starts at zero, in its
    # own group; its first update is infinitely large next to its norm, and used to be
    # cut 100x and rolled back with the whole model
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1))
    torch.nn.init.zeros_(model[2].weight)
    torch.nn.init.zeros_(model[2].bias)
    groups = [
        {"params": model[0].parameters(), "name": "body"},
        {"params": model[2].parameters(), "name": "readout"},
    ]
    opt = torch.optim.AdamW(groups, lr=1e-3)
    regime = Regime(model, opt, total_steps=150)
    outcomes = _steps(regime, model, 150)
    assert all(o.value == "stepped" for o in outcomes)
    cuts = [
        e for e in regime.events if e.group == "readout" and e.new is not None and e.new < e.old
    ]
    assert cuts == []
    assert regime.hyperparameters()["lr/readout"] >= 1e-3
    assert math.isinf(regime.signals.window("update_ratio/readout")[0])


@pytest.mark.parametrize("bias", [0.1, 0.01])
def test_a_zero_readout_matrix_beside_its_bias_does_not_count_as_a_far_too_large_step(bias):
    # the group's matrix started at zero: it is a zero-initialised group, whatever its
    # single bias holds (a drawn one may be ~0: at 0.01 a step of 5e-3 is half its norm)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1))
    torch.nn.init.zeros_(model[2].weight)
    torch.nn.init.constant_(model[2].bias, bias)
    groups = [
        {"params": model[0].parameters(), "name": "body"},
        {"params": model[2].parameters(), "name": "readout"},
    ]
    regime = Regime(model, torch.optim.AdamW(groups, lr=5e-3), total_steps=150)
    outcomes = _steps(regime, model, 20)
    assert all(o.value == "stepped" for o in outcomes)
    assert not [e for e in regime.events if e.group == "readout" and e.new < e.old]
    assert math.isinf(regime.signals.window("update_ratio/readout")[0])


def test_a_far_too_large_first_update_is_rolled_back_to_the_initial_weights():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1))
    initial = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.AdamW(model.parameters(), lr=1.0)
    regime = Regime(model, opt, total_steps=150)
    outcomes = _steps(regime, model, 2)
    assert outcomes[1].value == "rolled_back"
    (undone,) = [e for e in regime.events if e.kind.value == "rollback"]
    assert undone.policy == "early_phase" and "first update moved the weights" in undone.reason
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), initial, strict=True))
    assert regime.step_count == 1 and not opt.state  # the jump's moments are gone too


def test_a_first_jump_is_undone_whatever_the_next_loss_did():
    for after in (9.0, 1.5):
        script = Script(EarlyPhase())
        script.feed(**{"loss/train": 2.0})
        made = script.feed(**{"loss/train": after, "update_ratio/g0": 0.4})
        cut, rollback = made
        assert cut.knob is Knob.LR and cut.factor == pytest.approx(0.03 / 0.4)
        assert rollback.action is Action.ROLLBACK
        assert rollback.signals == {"update_ratio/max": 0.4}
    # later readings cut the rate but never roll back (the jump is not the first update)
    script = Script(EarlyPhase())
    for i in range(10):
        script.feed(**{"loss/train": 2.0 - 0.01 * i})
    made = script.feed(**{"loss/train": 1.9, "update_ratio/g0": 0.4})
    assert [p.action for p in made] == [Action.ADJUST]


def test_the_first_update_stays_when_undo_first_jump_is_off():
    policies = ("stability_guard", EarlyPhase(undo_first_jump=False), "regularization", "plateau")
    regime, _ = _train(1.0, policies=policies, steps=20)
    assert [e for e in regime.events if e.policy == "early_phase" and e.knob == "lr"]
    # (here the guard rolls the spike back itself, as a divergence, a batch later)
    assert not [
        e for e in regime.events if e.kind.value == "rollback" and e.policy == "early_phase"
    ]


def test_guard_recovery_restores_only_its_own_cut():
    guard = StabilityGuard(recovery_every=5)
    script = Script(guard)
    for i in range(20):
        script.feed(**{"loss/train": 1.0 + 0.01 * math.sin(i), "grad_norm/global": 1.0})
    script.feed(**{"loss/train": 50.0, "grad_norm/global": 1.0})  # spike: skip
    script.feed(**{"loss/train": 50.0, "grad_norm/global": 1.0})  # again: roll back, cut
    assert _lr(script) == pytest.approx(0.3)
    script.multipliers[(Knob.LR, "g0")] = 0.15  # another policy halves the rate
    for i in range(200):
        script.feed(**{"loss/train": 1.0 + 0.01 * math.sin(i), "grad_norm/global": 1.0})
    assert _lr(script) == pytest.approx(0.5)  # back to half the level, not to 1.0


def _separable(early_phase, steps=150):
    """Two far-apart Gaussian classes: the loss falls to ~0 within a few dozen steps."""
    gen = torch.Generator().manual_seed(0)
    y = torch.arange(256) % 2
    x = torch.randn(256, 8, generator=gen) + 6.0 * (2 * y[:, None] - 1)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    regime = Regime(model, opt, total_steps=steps, policies=(early_phase,))
    losses = []
    for i in range(steps):
        xb, yb = batch(x, y, i)
        loss = torch.nn.functional.cross_entropy(model(xb), yb)
        losses.append(loss.item())
        regime.backward(loss)
        regime.step()
    raises = [e for e in regime.events if e.knob == "lr" and e.new > e.old]
    return raises, losses


def test_a_fitted_loss_stops_the_ramp_end_to_end():
    raises, losses = _separable(EarlyPhase())
    start = sum(losses[:10]) / 10
    # every raise was decided on a loss still above 1e-3 of the first steps' mean
    assert raises and all(e.signals["loss/mean"] >= 1e-3 * start for e in raises)
    assert min(losses) < 1e-4 * start  # and the loss did fall far below that bar
    unbounded, _ = _separable(EarlyPhase(fitted_below=1e-12))
    assert len(unbounded) > len(raises)  # gradients kept agreeing: the bar is what stopped it
