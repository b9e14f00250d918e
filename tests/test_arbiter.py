import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trimtab.arbiter import DEFAULT_BOUNDS, DEFAULT_RATE_LIMITS, Arbiter, ArbiterConfig
from trimtab.errors import ConfigError
from trimtab.types import Action, Knob, Priority, Proposal

GROUPS = ("g0", "head")

proposal = st.builds(
    Proposal,
    policy=st.sampled_from(["a", "b", "c"]),
    reason=st.just("test"),
    priority=st.sampled_from(list(Priority)),
    knob=st.sampled_from([Knob.LR, Knob.MOMENTUM]),
    group=st.sampled_from([None, *GROUPS]),
    factor=st.floats(1e-4, 1e4),
)
schedule = st.lists(st.lists(proposal, max_size=4), min_size=1, max_size=60)


def run(steps):
    arbiter = Arbiter()
    multipliers = {}
    history = []
    for step, proposals in enumerate(steps):
        decisions, _ = arbiter.arbitrate(
            proposals, step=step, groups=GROUPS, multipliers=multipliers
        )
        for d in decisions:
            multipliers[(d.proposal.knob, d.group)] = d.new
            history.append((step, d))
    return multipliers, history


@given(schedule)
def test_multipliers_never_leave_their_bounds(steps):
    multipliers, _ = run(steps)
    for (knob, _), value in multipliers.items():
        low, high = DEFAULT_BOUNDS[knob]
        assert low <= value <= high


@given(schedule)
def test_no_decision_exceeds_its_priority_rate_limit(steps):
    _, history = run(steps)
    for _, d in history:
        low, high = DEFAULT_RATE_LIMITS[d.proposal.priority]
        ratio = d.new / d.old
        assert low * (1 - 1e-9) <= ratio <= high * (1 + 1e-9)


@given(schedule)
def test_non_safety_changes_wait_out_the_cooldown(steps):
    _, history = run(steps)
    last = {}
    for step, d in history:
        slot = (d.proposal.knob, d.group)
        if slot in last and d.proposal.priority is not Priority.SAFETY:
            assert step - last[slot] >= ArbiterConfig().cooldown
        last[slot] = step


@given(schedule)
def test_decisions_are_a_pure_function_of_the_inputs(steps):
    first = [(s, d.group, d.new) for s, d in run(steps)[1]]
    second = [(s, d.group, d.new) for s, d in run(steps)[1]]
    assert first == second


def test_most_urgent_priority_wins_and_the_loser_is_recorded():
    arbiter = Arbiter()
    speed = Proposal("fast", "go", Priority.SPEED, knob=Knob.LR, group="g0", factor=2.0)
    safety = Proposal("safe", "stop", Priority.SAFETY, knob=Knob.LR, group="g0", factor=0.5)
    decisions, rejections = arbiter.arbitrate(
        [speed, safety], step=0, groups=GROUPS, multipliers={}
    )
    assert [d.proposal.policy for d in decisions] == ["safe"]
    assert decisions[0].new == pytest.approx(0.5)
    assert "superseded by safe" in rejections[0].why


def test_group_none_means_every_group():
    decisions, _ = Arbiter().arbitrate(
        [Proposal("p", "r", Priority.SCHEDULE, knob=Knob.LR, factor=0.5)],
        step=0,
        groups=GROUPS,
        multipliers={},
    )
    assert sorted(d.group for d in decisions) == sorted(GROUPS)


def test_tiny_changes_are_dropped_and_reversals_need_urgency():
    arbiter = Arbiter()
    tiny = Proposal("p", "r", Priority.SPEED, knob=Knob.LR, group="g0", factor=1.001)
    decisions, rejections = arbiter.arbitrate([tiny], step=0, groups=GROUPS, multipliers={})
    assert not decisions and "epsilon" in rejections[0].why

    cut = Proposal("plateau", "r", Priority.SCHEDULE, knob=Knob.LR, group="g0", factor=0.5)
    (d,), _ = arbiter.arbitrate([cut], step=0, groups=GROUPS, multipliers={})
    up = Proposal("speed", "r", Priority.SPEED, knob=Knob.LR, group="g0", factor=2.0)
    mult = {(Knob.LR, "g0"): d.new}
    decisions, rejections = arbiter.arbitrate([up], step=20, groups=GROUPS, multipliers=mult)
    assert not decisions and "reversal" in rejections[0].why
    decisions, _ = arbiter.arbitrate([up], step=80, groups=GROUPS, multipliers=mult)
    assert decisions and decisions[0].new == pytest.approx(1.0)


def test_actions_pass_through_and_bad_targets_are_refused():
    arbiter = Arbiter()
    skip = Proposal("g", "nan", Priority.SAFETY, action=Action.SKIP)
    nan = Proposal("p", "r", Priority.SPEED, knob=Knob.LR, group="g0", target=math.nan)
    unknown = Proposal("p", "r", Priority.SPEED, knob=Knob.LR, group="body", factor=2.0)
    decisions, rejections = arbiter.arbitrate(
        [skip, nan, unknown], step=0, groups=GROUPS, multipliers={}
    )
    assert [d.proposal.action for d in decisions] == [Action.SKIP]
    assert {"unknown group 'body'"} <= {r.why for r in rejections}
    assert any("non-finite" in r.why for r in rejections)


def test_state_round_trip_keeps_cooldowns():
    arbiter = Arbiter()
    cut = Proposal("p", "r", Priority.SCHEDULE, knob=Knob.LR, group="g0", factor=0.5)
    arbiter.arbitrate([cut], step=5, groups=GROUPS, multipliers={})
    restored = Arbiter()
    restored.load_state_dict(arbiter.state_dict())
    decisions, rejections = restored.arbitrate(
        [cut], step=6, groups=GROUPS, multipliers={(Knob.LR, "g0"): 0.5}
    )
    assert not decisions and "cooling down" in rejections[0].why


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"cooldown": -1}, "cooldown"),
        ({"epsilon": math.nan}, "epsilon must be finite"),
        ({"bounds": {Knob.LR: (2.0, 3.0)}}, "must contain 1.0"),
        ({"rate_limits": {Priority.SPEED: (1.5, 2.0)}}, "must bracket 1.0"),
    ],
)
def test_config_rejects_bad_values_with_the_value_in_the_message(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        ArbiterConfig(**kwargs)


def test_a_ceiling_caps_raises_of_one_slot_and_leaves_cuts_and_other_slots_alone():
    arbiter = Arbiter()
    up = Proposal("speed", "faster", Priority.SPEED, knob=Knob.LR, factor=2.0)
    ceilings = {(Knob.LR, "g0"): 1.0}
    decisions, rejections = arbiter.arbitrate(
        [up], step=0, groups=GROUPS, multipliers={}, ceilings=ceilings
    )
    assert {d.group: d.new for d in decisions} == {"head": 2.0}  # g0 sits at its ceiling
    assert any("g0" in r.why for r in rejections)
    cut = Proposal("plateau", "flat", Priority.SCHEDULE, knob=Knob.LR, group="g0", factor=0.5)
    (d,), _ = arbiter.arbitrate([cut], step=20, groups=GROUPS, multipliers={}, ceilings=ceilings)
    assert d.new == 0.5
    # from below, a raise stops at the ceiling
    (d,), _ = Arbiter().arbitrate(
        [Proposal("speed", "faster", Priority.SPEED, knob=Knob.LR, group="g0", factor=2.0)],
        step=0,
        groups=GROUPS,
        multipliers={(Knob.LR, "g0"): 0.6},
        ceilings=ceilings,
    )
    assert d.new == 1.0
    # a slot above its ceiling may only come down
    _, (rejection,) = Arbiter().arbitrate(
        [Proposal("speed", "faster", Priority.SPEED, knob=Knob.LR, group="g0", factor=2.0)],
        step=0,
        groups=GROUPS,
        multipliers={(Knob.LR, "g0"): 3.0},
        ceilings=ceilings,
    )
    assert "ceiling" in rejection.why


def test_an_undo_takes_back_the_proposers_own_last_change_past_cooldown_and_rate_limits():
    arbiter = Arbiter()
    cut = Proposal("guard", "diverged", Priority.SAFETY, knob=Knob.LR, group="g0", factor=0.3)
    (d,), _ = arbiter.arbitrate([cut], step=0, groups=GROUPS, multipliers={})
    mult = {(Knob.LR, "g0"): d.new}
    # a plain raise at step 1 is cooling down; an undo by the same policy is not
    back = Proposal(
        "guard", "new data", Priority.RECOVERY, knob=Knob.LR, group="g0", target=5.0, undo=True
    )
    (d,), _ = arbiter.arbitrate([back], step=1, groups=GROUPS, multipliers=mult)
    assert d.new == pytest.approx(1.0)  # where the cut began, not the 5.0 asked for
    # another policy cannot undo the guard's change, and nothing is left after the undo
    mult = {(Knob.LR, "g0"): 0.3}
    other = Proposal(
        "plateau", "x", Priority.RECOVERY, knob=Knob.LR, group="g0", factor=3, undo=True
    )
    arbiter = Arbiter()
    arbiter.arbitrate([cut], step=0, groups=GROUPS, multipliers={})
    _, (rejection,) = arbiter.arbitrate([other], step=1, groups=GROUPS, multipliers=mult)
    assert "nothing of plateau's to undo" in rejection.why
    # too late: outside the reversal window it is an ordinary proposal's business
    _, (rejection,) = arbiter.arbitrate([back], step=80, groups=GROUPS, multipliers=mult)
    assert "too old" in rejection.why
    # the state a resume needs includes where the last change began
    restored = Arbiter()
    restored.load_state_dict(arbiter.state_dict())
    (d,), _ = restored.arbitrate([back], step=2, groups=GROUPS, multipliers=mult)
    assert d.new == pytest.approx(1.0)


def test_a_withdraw_returns_the_knob_to_what_the_other_policies_made_it():
    arbiter = Arbiter()
    mult: dict = {}

    def decide(proposal, step):
        decisions, rejections = arbiter.arbitrate(
            [proposal], step=step, groups=GROUPS, multipliers=mult
        )
        for d in decisions:
            mult[(Knob.LR, d.group)] = d.new
        return decisions, rejections

    raise_ = Proposal("early", "ramp", Priority.SPEED, knob=Knob.LR, group="g0", factor=2.0)
    cut = Proposal("plateau", "flat", Priority.SCHEDULE, knob=Knob.LR, group="g0", factor=0.5)
    decide(raise_, 0)
    decide(raise_, 10)
    for step in (20, 40, 60, 80):  # then four plateau cuts
        decide(cut, step)
    assert mult[(Knob.LR, "g0")] == pytest.approx(4.0 / 16)
    back = Proposal("plateau", "new data", Priority.RECOVERY, knob=Knob.LR, withdraw=True)
    # a step after the last cut: no cooldown, and x16 at once (no rate limit) ...
    (d,), rejections = decide(back, 81)
    assert d.group == "g0" and d.new == pytest.approx(4.0)  # ... to the early phase's x4
    assert [r.why for r in rejections] == ["nothing of plateau's to withdraw on lr/head"]
    _, nothing = decide(back, 82)  # withdrawn once, nothing is left
    assert len(nothing) == 2 and all("nothing of plateau's to withdraw" in r.why for r in nothing)
    # a withdraw stays inside the bounds (another change, unknown to it, raised the rest)
    bounded = Arbiter(ArbiterConfig(bounds={**DEFAULT_BOUNDS, Knob.LR: (1e-3, 3.0)}))
    bounded.arbitrate([cut], step=0, groups=GROUPS, multipliers={})
    mult = {(Knob.LR, "g0"): 2.0}
    (d,), _ = bounded.arbitrate([back], step=1, groups=GROUPS, multipliers=mult)
    assert d.new == pytest.approx(3.0)  # 2.0 / 0.5 would be 4
    # the part left (x1.33 of the x2) stays on record; a ceiling below the knob never
    # turns a withdraw into a cut
    mult = {(Knob.LR, "g0"): 1.0}
    (d,), _ = bounded.arbitrate([cut], step=100, groups=GROUPS, multipliers=mult)
    mult = {(Knob.LR, "g0"): d.new}
    _, (refused, _) = bounded.arbitrate(
        [back], step=101, groups=GROUPS, multipliers=mult, ceilings={(Knob.LR, "g0"): 0.2}
    )
    assert "nothing of plateau's to withdraw" in refused.why
    (d,), _ = bounded.arbitrate([back], step=102, groups=GROUPS, multipliers=mult)
    # the knob was moved to 1.0 by others (their share 1.0 / 0.75); the plateau's x0.5
    # since and the x0.75 left over are both withdrawn: back to the others' 4/3
    assert d.new == pytest.approx(4 / 3)
    # a withdraw names no value
    bad = Proposal("plateau", "x", Priority.RECOVERY, knob=Knob.LR, factor=2.0, withdraw=True)
    _, (rejection,) = Arbiter().arbitrate([bad], step=0, groups=("g0",), multipliers={})
    assert "withdraw" in rejection.why


def test_withdraw_records_survive_a_resume_and_old_checkpoints_load():
    arbiter = Arbiter()
    cut = Proposal("plateau", "flat", Priority.SCHEDULE, knob=Knob.LR, group="g0", factor=0.5)
    arbiter.arbitrate([cut], step=0, groups=GROUPS, multipliers={})
    restored = Arbiter()
    restored.load_state_dict(arbiter.state_dict())
    back = Proposal("plateau", "new data", Priority.RECOVERY, knob=Knob.LR, withdraw=True)
    (d,), _ = restored.arbitrate([back], step=1, groups=GROUPS, multipliers={(Knob.LR, "g0"): 0.5})
    assert d.new == pytest.approx(1.0)
    old = {k: v for k, v in arbiter.state_dict().items() if k != "own"}
    restored = Arbiter()
    restored.load_state_dict(old)  # a checkpoint from before withdraw existed
    _, (r,) = restored.arbitrate([back], step=1, groups=("g0",), multipliers={(Knob.LR, "g0"): 0.5})
    assert "nothing of plateau's to withdraw" in r.why


@pytest.mark.parametrize("restoring", ["withdraw", "undo"])
def test_an_undo_or_withdraw_with_nothing_to_take_back_supersedes_nothing(restoring):
    # an empty ask by a more urgent priority would otherwise win the slot and be refused
    arbiter = Arbiter()
    empty = Proposal(
        "plateau",
        "new data",
        Priority.RECOVERY,
        knob=Knob.LR,
        group="g0",
        **({"withdraw": True} if restoring == "withdraw" else {"target": 1.0, "undo": True}),
    )
    ramp = Proposal("early", "ramp", Priority.SPEED, knob=Knob.LR, group="g0", factor=2.0)
    (d,), (r,) = arbiter.arbitrate([empty, ramp], step=0, groups=GROUPS, multipliers={})
    assert d.proposal is ramp and d.new == pytest.approx(2.0)
    assert r.proposal is empty and f"nothing of plateau's to {restoring}" in r.why


def test_a_ceiling_that_follows_another_slot_follows_it_within_the_decision():
    """A backbone capped at the head's LR: the plateau's cuts on both are withdrawn in one
    decision (new data). Against the head's multiplier from before the decision, the
    backbone would stay at the head's old, cut level; the cap must follow the head."""
    arbiter = Arbiter()
    groups = ("backbone", "head")

    def cap(multipliers):  # the backbone's LR multiplier at most the head's
        return {(Knob.LR, "backbone"): multipliers.get((Knob.LR, "head"), 1.0)}

    mult = {}
    cut = Proposal("plateau", "flat", Priority.SCHEDULE, knob=Knob.LR, factor=0.5)
    for step in (0, 20):
        decisions, _ = arbiter.arbitrate(
            [cut], step=step, groups=groups, multipliers=mult, ceilings=cap
        )
        mult.update({(d.proposal.knob, d.group): d.new for d in decisions})
    assert mult == {(Knob.LR, "backbone"): 0.25, (Knob.LR, "head"): 0.25}
    back = Proposal("plateau", "new data", Priority.RECOVERY, knob=Knob.LR, withdraw=True)
    decisions, rejections = arbiter.arbitrate(
        [back], step=21, groups=groups, multipliers=mult, ceilings=cap
    )
    assert not rejections
    assert {d.group: d.new for d in decisions} == {"backbone": 1.0, "head": 1.0}
    # a fixed mapping still caps as given: the same withdraw against the old ceiling
    fixed = Arbiter()
    for step in (0, 20):
        fixed.arbitrate([cut], step=step, groups=groups, multipliers={}, ceilings=cap({}))
    _, refused = fixed.arbitrate(
        [back], step=21, groups=groups, multipliers=mult, ceilings=cap(mult)
    )
    assert [r.proposal.policy for r in refused] == ["plateau"]  # the backbone's: capped


def test_a_restore_returns_to_the_highest_level_held_at_once_and_no_higher():
    arbiter = Arbiter()
    mult: dict = {}

    def decide(proposals, step, ceilings=None):
        decisions, rejections = arbiter.arbitrate(
            proposals, step=step, groups=("g0",), multipliers=mult, ceilings=ceilings
        )
        for d in decisions:
            mult[(Knob.LR, d.group)] = d.new
        return decisions, rejections

    ramp = Proposal("early", "ramp", Priority.SPEED, knob=Knob.LR, factor=2.0)
    decide([ramp], 0)
    decide([ramp], 10)  # the run held x4
    cut = Proposal("guard", "spike", Priority.SAFETY, knob=Knob.LR, factor=0.1)
    decide([cut], 20)
    back = Proposal("shift", "new data", Priority.SPEED, knob=Knob.LR, factor=100.0, restore=True)
    # a step after the cut: no cooldown, no rate limit (x2 for speed), no reversal rule,
    # but no higher than x4, the most the run has held
    (d,), _ = decide([back], 21)
    assert d.new == pytest.approx(4.0)
    _, (refused,) = decide([back], 22)  # at the highest level already: nothing to restore
    assert "nothing to restore" in refused.why
    # an ordinary raise beyond it is new ground: it waits out the cooldown
    _, (cooling,) = decide([ramp], 23)
    assert "cooling down" in cooling.why
    # a ceiling still binds, and a restore asks for no more than its own target
    decide([cut], 40)
    (d,), _ = decide([back], 41, ceilings={(Knob.LR, "g0"): 1.5})
    assert d.new == pytest.approx(1.5)
    target = Proposal("shift", "x", Priority.SPEED, knob=Knob.LR, target=2.0, restore=True)
    (d,), _ = decide([target], 42)
    assert d.new == pytest.approx(2.0)
    # an empty restore supersedes nothing
    decisions, (empty,) = decide([Proposal(**{**back.__dict__, "factor": 1.0}), ramp], 60)
    assert "nothing to restore" in empty.why and decisions[0].proposal is ramp


def test_the_levels_a_restore_may_reach_survive_a_resume_and_old_checkpoints_load():
    arbiter = Arbiter()
    ramp = Proposal("early", "ramp", Priority.SPEED, knob=Knob.LR, group="g0", factor=2.0)
    arbiter.arbitrate([ramp], step=0, groups=("g0",), multipliers={})
    back = Proposal(
        "shift", "x", Priority.SPEED, knob=Knob.LR, group="g0", factor=8.0, restore=True
    )
    low = {(Knob.LR, "g0"): 0.5}
    restored = Arbiter()
    restored.load_state_dict(arbiter.state_dict())
    (d,), _ = restored.arbitrate([back], step=1, groups=("g0",), multipliers=low)
    assert d.new == pytest.approx(2.0)
    old = {k: v for k, v in arbiter.state_dict().items() if k != "high"}
    restored = Arbiter()
    restored.load_state_dict(old)  # a checkpoint from before restore existed
    (d,), _ = restored.arbitrate([back], step=1, groups=("g0",), multipliers=low)
    assert d.new == pytest.approx(1.0)  # only the user's own value is known to be held
