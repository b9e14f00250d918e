"""The stability guard, driven by scripted signals only (no model, no optimizer)."""

import math

import pytest

from trimtab.errors import ConfigError
from trimtab.policies import PolicyView, StabilityGuard
from trimtab.signals import Signals
from trimtab.types import Action, Knob, Priority

GROUPS = ("g0", "head")


class Script:
    """Feeds one step of signals at a time and keeps the policy state between steps."""

    def __init__(self, policy=None):
        self.policy = policy or StabilityGuard()
        self.state = self.policy.initial_state()
        self.signals = Signals()
        self.multipliers = {}
        self.bases = {}
        self.step = 0
        self.rewound_at = None
        self.data_changed_at = None

    def feed(self, loss, grad_norm=1.0, nonfinite=0.0):
        self.signals.record(
            self.step,
            {"loss/train": loss, "grad_norm/global": grad_norm, "nonfinite/any": nonfinite},
        )
        view = PolicyView(
            self.step,
            None,
            self.signals,
            GROUPS,
            dict(self.multipliers),
            dict(self.bases),
            rewound_at=self.rewound_at,
            data_changed_at=self.data_changed_at,
        )
        proposals, self.state = self.policy.propose(view, self.state)
        for p in proposals:  # apply knob proposals as an unconstrained arbiter would
            if p.knob is Knob.LR:
                for g in GROUPS if p.group is None else (p.group,):
                    old = self.multipliers.get((Knob.LR, g), 1.0)
                    self.multipliers[(Knob.LR, g)] = p.target or old * p.factor
        self.step += 1
        return proposals


def noisy_descent(script, steps, start=2.0, seed_phase=0.0):
    for i in range(steps):
        loss = start * math.exp(-i / 100) * (1 + 0.05 * math.sin(7 * i + seed_phase))
        assert script.feed(loss) == [] or all(
            p.priority is Priority.RECOVERY for p in script.feed(loss)
        )


def test_healthy_noisy_descent_triggers_nothing():
    script = Script()
    for i in range(300):
        loss = 2.0 * math.exp(-i / 80) * (1 + 0.1 * math.sin(3.7 * i))
        assert script.feed(loss, grad_norm=1 + 0.3 * math.cos(i)) == []


def test_nonfinite_loss_skips_and_cites_the_values():
    script = Script()
    for _ in range(5):
        script.feed(2.0)
    (skip,) = script.feed(math.nan, grad_norm=math.inf, nonfinite=1.0)
    assert skip.action is Action.SKIP and skip.priority is Priority.SAFETY
    assert "non-finite" in skip.reason and "nan" in skip.reason


def test_repeated_nonfinite_steps_mean_broken_weights_and_roll_back():
    script = Script(StabilityGuard(max_skips=3))
    for _ in range(5):
        script.feed(2.0)
    actions = [p.action for _ in range(3) for p in script.feed(math.nan, nonfinite=1.0)]
    assert actions[:2] == [Action.SKIP, Action.SKIP]
    assert Action.ROLLBACK in actions[2:]


def test_one_high_batch_is_skipped_without_touching_the_lr():
    script = Script()
    for i in range(40):
        script.feed(1.0 + 0.02 * math.sin(i))
    (skip,) = script.feed(25.0)
    assert skip.action is Action.SKIP and "next batch is high too" in skip.reason
    assert script.feed(1.0) == []
    assert script.multipliers == {}


def test_a_loss_spike_twice_in_a_row_rolls_back_and_cuts_lr_citing_the_evidence():
    script = Script()
    for i in range(40):
        script.feed(1.0 + 0.02 * math.sin(i))
    script.feed(25.0)
    proposals = script.feed(25.0)
    actions = {p.action for p in proposals}
    assert actions == {Action.ROLLBACK, Action.ADJUST}
    cut = next(p for p in proposals if p.action is Action.ADJUST)
    assert cut.knob is Knob.LR and cut.factor == pytest.approx(0.3)
    assert "25" in cut.reason and "robust sigmas" in cut.reason
    assert cut.signals["loss/train"] == 25.0


def test_small_relative_bumps_late_in_training_are_not_spikes():
    script = Script()
    for _ in range(8):
        script.feed(2.3)  # the start level
    for i in range(100):
        script.feed(0.01 * (1 + 0.3 * math.sin(i)))
    # 5x the median, but it undoes only ~2 % of the progress made since the start
    assert script.feed(0.05) == []


def test_lr_recovers_gradually_to_the_ceiling_after_an_isolated_spike():
    script = Script(StabilityGuard(recovery_every=5, recovery_factor=1.5))
    for i in range(30):
        script.feed(1.0 + 0.01 * math.sin(i))
    script.feed(50.0)
    script.feed(50.0)
    assert script.multipliers[(Knob.LR, "g0")] == pytest.approx(0.3)
    seen = []
    for i in range(60):
        for p in script.feed(1.0 + 0.01 * math.sin(i)):
            assert p.priority is Priority.RECOVERY and p.target <= 1.0 + 1e-12
            seen.append(p.target)
    assert script.multipliers[(Knob.LR, "g0")] == pytest.approx(1.0)
    assert len(seen) >= 2 * len(GROUPS)  # several gentle steps, not one jump


def test_a_repeated_divergence_cuts_harder_and_lowers_the_ceiling():
    script = Script(StabilityGuard(recovery_every=5))
    for i in range(20):
        script.feed(1.0 + 0.01 * math.sin(i))
    script.feed(80.0)
    script.feed(80.0)
    for i in range(3):
        script.feed(1.0 + 0.01 * math.sin(i))
    script.feed(80.0)
    proposals = script.feed(80.0)
    cut = next(p for p in proposals if p.action is Action.ADJUST)
    assert cut.factor == pytest.approx(0.1) and "repeated" in cut.reason
    assert script.state["ceilings"]["g0"]["lr"] == pytest.approx(0.3 * 0.3)


def test_an_extreme_gradient_norm_outlier_skips_the_step():
    script = Script()
    for i in range(30):
        script.feed(1.0, grad_norm=1.0 + 0.1 * math.sin(i))
    (skip,) = script.feed(1.0, grad_norm=500.0)
    assert skip.action is Action.SKIP and "gradient norm" in skip.reason


def test_a_lasting_level_shift_after_a_rollback_is_accepted_not_looped():
    script = Script(StabilityGuard(sustained_steps=4))
    for _ in range(8):
        script.feed(3.0)
    for i in range(60):
        script.feed(1.0 + 0.05 * math.sin(i))
    rollbacks = 0
    for i in range(60):  # the data got harder: the loss level doubles and stays
        proposals = script.feed(2.0 + 0.05 * math.sin(i))
        rollbacks += sum(p.action is Action.ROLLBACK for p in proposals)
    assert rollbacks == 1


def test_state_is_plain_data_and_the_policy_is_deterministic():
    runs = []
    for _ in range(2):
        script = Script()
        for i in range(50):
            script.feed(1.0 + 0.02 * math.sin(i))
        script.feed(30.0)
        script.feed(30.0)
        runs.append(script.state)
    assert runs[0] == runs[1]
    assert all(isinstance(k, str) for k in runs[0])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"cut": 1.5}, "cut must be in"),
        ({"spike_z": 2.0, "sustained_z": 3.0}, "must be below spike_z"),
        ({"recovery_factor": 0.9}, "recovery_factor must be > 1"),
        ({"window": 2}, "window must be >= 4"),
        ({"spike_z": math.inf}, "spike_z must be finite"),
    ],
)
def test_bad_settings_fail_at_construction(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        StabilityGuard(**kwargs)


def test_the_recovery_ceiling_is_an_effective_lr_so_a_lower_base_lets_it_return():
    script = Script(StabilityGuard(recovery_every=5, recovery_factor=1.5))
    script.bases = {(Knob.LR, g): 0.3 for g in GROUPS}  # a base briefly 30x too high
    for i in range(20):
        script.feed(1.0 + 0.01 * math.sin(i))
    for _ in range(2):
        script.feed(60.0)
    for i in range(3):
        script.feed(1.0 + 0.01 * math.sin(i))
    for _ in range(2):
        script.feed(60.0)  # a repeat: ceiling = 0.3 x the effective lr that diverged
    assert script.state["ceilings"]["g0"]["lr"] == pytest.approx(0.3 * 0.3 * 0.3)
    script.bases = {(Knob.LR, g): 0.01 for g in GROUPS}  # the schedule is back to normal
    for i in range(200):
        script.feed(1.0 + 0.01 * math.sin(i))
    # back to the multiplier held before the first cut, not kept 30x down
    assert script.multipliers[(Knob.LR, "g0")] == pytest.approx(1.0)


def test_a_lasting_jump_in_gradient_norm_is_skipped_briefly_then_accepted():
    """A new gradient scale (the data changed) must not freeze training in skips."""
    script = Script(StabilityGuard(sustained_steps=4))
    for i in range(40):
        script.feed(1.0, grad_norm=1.0 + 0.1 * math.sin(i))
    skips = [
        sum(p.action is Action.SKIP for p in script.feed(1.0, grad_norm=300.0 + math.sin(i)))
        for i in range(40)
    ]
    assert skips[:3] == [1, 1, 1] and sum(skips) == 3


@pytest.mark.parametrize("rewind", [True, None])
def test_a_rewind_by_another_policy_resets_the_loss_range(rewind):
    script = Script()
    for i in range(100):  # a fast descent, then a quiet stretch at 0.1
        script.feed(2.0 * math.exp(-i / 5) + 0.1 + 0.002 * math.sin(i))
    # the weights go back to an earlier best: the loss is far above the recent range
    script.rewound_at = script.rewound_at if rewind is None else script.step
    proposals = []
    for i in range(20):
        proposals += script.feed(0.6 + 0.01 * math.sin(i))
    flagged = any(p.action in (Action.SKIP, Action.ROLLBACK) for p in proposals)
    assert flagged is (rewind is None)  # without the notice the jump reads as divergence


def test_frequent_isolated_hard_batches_widen_the_range_instead_of_causing_rollbacks():
    """A converged loss with a hard batch every few steps: two in a row is not divergence."""
    script = Script()
    for i in range(40):
        script.feed(2.0 * math.exp(-i / 4) + 0.01)
    proposals = []
    for i in range(200):
        hard = i % 6 == 0 or i == 151  # i = 150, 151: two hard batches in a row
        proposals += script.feed(0.5 if hard else 0.01 * (1 + 0.1 * math.sin(i)))
    assert not any(p.action is Action.ROLLBACK for p in proposals)


def test_a_rate_already_cut_since_the_spike_is_not_cut_again_by_the_rollback():
    """The early phase cut for the same overshoot: roll back, but do not pile on a cut."""
    script = Script()
    for i in range(30):
        script.feed(2.0 + 0.05 * math.sin(i))
    (skip,) = script.feed(50.0)
    assert skip.action is Action.SKIP
    for g in GROUPS:  # another policy cuts every group's LR on that same step
        script.multipliers[(Knob.LR, g)] = 0.02
    proposals = script.feed(45.0)
    assert [p.action for p in proposals] == [Action.ROLLBACK]
    assert "already cut" in proposals[0].reason
    assert all(script.multipliers[(Knob.LR, g)] == 0.02 for g in GROUPS)
    for i in range(100):  # and no recovery back to the pre-cut rate either
        assert not [p for p in script.feed(2.0 + 0.05 * math.sin(i)) if p.knob is Knob.LR]


def test_recovery_after_repeated_divergence_keeps_a_later_cut_by_another_policy():
    """Both recovery limits (multiplier and effective LR) follow another policy's cut."""
    script = Script()
    script.bases = {(Knob.LR, g): 0.3 for g in GROUPS}
    for i in range(30):
        script.feed(2.0 + 0.05 * math.sin(i))
    for _ in range(2):  # two divergences: the ceiling becomes 0.3 of the diverged rate
        script.feed(50.0)
        script.feed(45.0)
        for i in range(20):
            script.feed(2.0 + 0.05 * math.sin(i))
    assert script.state["ceilings"]["g0"]["lr"] < 0.3 * 0.3  # the effective-LR limit binds
    for i in range(200):
        script.feed(2.0 + 0.05 * math.sin(i))
    top = script.multipliers[(Knob.LR, "g0")]
    for g in GROUPS:  # a plateau halves the rate once recovery is done
        script.multipliers[(Knob.LR, g)] = top / 2
    raises = [p for i in range(300) for p in script.feed(1.0 + 0.02 * math.sin(i)) if p.knob]
    assert raises == [] and script.multipliers[(Knob.LR, "g0")] == top / 2


def test_a_rollback_that_turns_out_to_be_new_data_gives_its_lr_cut_back_at_once():
    script = Script(StabilityGuard(sustained_steps=4))
    for _ in range(8):
        script.feed(3.0)
    for i in range(60):
        script.feed(1.0 + 0.05 * math.sin(i))
    made = []
    for i in range(12):  # the data got harder: the loss level doubles and stays
        made += script.feed(2.0 + 0.05 * math.sin(i))
    cuts = [p for p in made if p.knob is Knob.LR and p.factor is not None and p.factor < 1]
    undos = [p for p in made if p.undo]
    assert len(cuts) == 1 and {p.group for p in undos} == set(GROUPS)
    assert all(p.target == pytest.approx(1.0) and "data changed" in p.reason for p in undos)
    assert script.multipliers[(Knob.LR, "g0")] == pytest.approx(1.0)
    # ... and says so, once, for every other policy to hear
    (announced,) = [p for p in made if p.action is Action.NEW_DATA]
    assert announced.signals["batches_high"] == 4 and "data changed" in announced.reason
    # the divergence stays on record: a real one soon after counts as a repeat
    assert script.state["last_divergence"] is not None


def test_another_policys_new_data_verdict_ends_the_check_of_the_restored_weights():
    script = Script()  # six batches to tell new data from a burst on its own
    for _ in range(8):
        script.feed(3.0)
    for i in range(60):
        script.feed(1.0 + 0.05 * math.sin(i))
    made = script.feed(9.0) + script.feed(9.5)  # spike, then rollback
    assert [p.action for p in made if p.knob is None] == [Action.SKIP, Action.ROLLBACK]
    assert Action.SKIP in [p.action for p in script.feed(9.2)]  # 1 of 6 at the restored weights
    script.data_changed_at = script.step - 1  # e.g. the shift policy confirmed new data
    made = script.feed(9.1)
    assert all(p.action is Action.ADJUST for p in made)  # no skip: the step goes ahead
    undos = [p for p in made if p.undo]
    assert {p.group for p in undos} == set(GROUPS)
    assert not script.state["verifying"]
    assert sorted(script.state["losses"]) == [9.1, 9.2]  # the new level is the range now
    assert script.state["log_grad_norms"] == []  # and the old data's gradients are no range
    # no second announcement: the guard's own verdict was not needed
    assert not [p for p in made if p.action is Action.NEW_DATA]
    for i in range(10):  # the new level is normal now: nothing is skipped or rolled back
        assert all(p.action is Action.ADJUST for p in script.feed(9.0 + 0.1 * math.sin(i)))


def test_a_data_change_announced_outside_a_check_changes_nothing():
    script = Script()
    for _ in range(8):
        script.feed(3.0)
    for i in range(60):
        script.feed(1.0 + 0.05 * math.sin(i))
    script.data_changed_at = script.step - 1
    assert script.feed(1.0) == []
    made = script.feed(9.0)  # a spike is still judged against the loss window
    assert [p.action for p in made] == [Action.SKIP]
