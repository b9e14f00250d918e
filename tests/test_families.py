"""Optimizer families: where knobs live, algorithm state across rollbacks, shared lrs."""

import pytest
import torch
from tests.conftest import batch, tiny_mlp, tiny_regression

from trimtab import Regime
from trimtab.actuator import adapters
from trimtab.errors import ConfigError
from trimtab.policies.base import Policy
from trimtab.schedules import OneCycle
from trimtab.types import Action, Knob, Priority, Proposal


def _lion(params):
    return pytest.importorskip("pytorch_optimizer").Lion(params, lr=1e-3)


def _lamb(params):
    return pytest.importorskip("pytorch_optimizer").Lamb(params, lr=1e-3)


def _schedule_free(params, lr=1e-2):
    optimizer = pytest.importorskip("schedulefree").AdamWScheduleFree(params, lr=lr)
    optimizer.train()
    return optimizer


def _prodigy(params):
    return pytest.importorskip("prodigyopt").Prodigy(params, lr=1.0)


@pytest.mark.parametrize(
    "make, family, momentum",
    [
        (lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True), "sgd", "momentum"),
        (lambda p: torch.optim.Adam(p), "adam", "betas[0]"),
        (lambda p: torch.optim.AdamW(p), "adam", "betas[0]"),
        (lambda p: torch.optim.Adagrad(p), "adagrad", None),
        (_lion, "lion", "betas[0]"),
        (_lamb, "lamb", "betas[0]"),
        (_schedule_free, "schedule_free", "betas[0]"),
        (_prodigy, "prodigy", "betas[0]"),
    ],
)
def test_each_family_is_recognised_with_its_momentum_location(make, family, momentum):
    found = adapters.family_of(make(tiny_mlp().parameters()))
    assert (found.name, found.momentum) == (family, momentum)


def test_muon_is_its_own_family():
    model = tiny_mlp()
    found = adapters.family_of(torch.optim.Muon([model[0].weight]))
    assert (found.name, found.momentum, found.state_keys) == ("muon", "momentum", frozenset())


def test_only_schedule_free_and_prodigy_keep_algorithm_state_in_their_groups():
    assert adapters.family_of(_schedule_free(tiny_mlp().parameters())).state_keys == {
        "k",
        "weight_sum",
        "lr_max",
        "scheduled_lr",
    }
    prodigy = adapters.family_of(_prodigy(tiny_mlp().parameters()))
    assert prodigy.state_keys == {"d_numerator", "d_denom", "d_hat", "k"} and prodigy.shared_lr
    assert adapters.family_of(torch.optim.AdamW(tiny_mlp().parameters())).state_keys == set()


def test_a_missing_knob_is_refused_at_construction_naming_the_family():
    model = tiny_mlp()
    optimizer = torch.optim.Adagrad(model.parameters(), lr=0.1)
    with pytest.raises(ConfigError, match=r"Adagrad \(adagrad family\) group 'g0' has no momentum"):
        Regime(model, optimizer, total_steps=10, schedule=OneCycle())


def test_tensor_betas_are_written_in_place():
    betas = (torch.tensor(0.9), torch.tensor(0.999))
    group = torch.optim.Adam(tiny_mlp().parameters(), betas=betas).param_groups[0]
    first = group["betas"][0]
    adapters.write(group, Knob.MOMENTUM, 0.5)
    assert group["betas"][0] is first and first.item() == 0.5
    assert adapters.read(group, Knob.MOMENTUM) == 0.5


class RollbackAt(Policy):
    """Asks for one rollback at a fixed step (a stand-in for a detected divergence)."""

    name = "rollback_at"

    def __init__(self, step):
        self.at = step

    def initial_state(self):
        return {"done": False}

    def propose(self, view, state):
        if view.step == self.at and not state["done"]:
            proposal = Proposal(self.name, "scripted divergence", Priority.SAFETY, Action.ROLLBACK)
            return [proposal], {"done": True}
        return [], state


def _train(regime, model, batches):
    x, y = tiny_regression()
    outcomes = []
    for i in batches:
        xb, yb = batch(x, y, i, size=16)
        regime.backward(torch.nn.functional.mse_loss(model(xb), yb))
        outcomes.append(regime.step())
    return outcomes


def _group_state(optimizer, keys):
    return [{k: g[k] for k in keys} for g in optimizer.param_groups]


def _rolled_back_and_twin(make):
    """A run rolled back at batch 8 to its step-5 snapshot, and a twin that stopped at 5.

    Both then take batch 9. The rolled-back run saw batches 0-7; the twin only 0-4.
    """
    model, twin = tiny_mlp(), tiny_mlp()
    optimizer, twin_optimizer = make(model.parameters()), make(twin.parameters())
    regime = Regime(model, optimizer, policies=[RollbackAt(8)], snapshot_every=5)
    reference = Regime(twin, twin_optimizer, policies=[], snapshot_every=5)
    outcomes = _train(regime, model, [0, 1, 2, 3, 4, 5, 6, 7, 8])
    assert outcomes[-1].value == "rolled_back"
    _train(reference, twin, [0, 1, 2, 3, 4])
    return model, optimizer, regime, twin, twin_optimizer, reference


def test_a_schedule_free_rollback_restores_its_averaging_state_exactly():
    # With k, weight_sum and lr_max restored with z and the moments, the rolled-back run
    # continues exactly like the twin. Keeping the later values would weight the next
    # iterate's average as if the abandoned steps had happened.
    model, optimizer, regime, twin, twin_optimizer, reference = _rolled_back_and_twin(
        _schedule_free
    )
    keys = ["k", "weight_sum", "lr_max", "train_mode"]
    assert _group_state(optimizer, keys) == _group_state(twin_optimizer, keys)
    _train(regime, model, [9])
    _train(reference, twin, [9])
    assert _group_state(optimizer, keys) == _group_state(twin_optimizer, keys)
    for mine, theirs in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(mine, theirs)


def test_a_prodigy_rollback_restores_its_sums_and_keeps_its_step_size():
    model, optimizer, regime, twin, twin_optimizer, reference = _rolled_back_and_twin(_prodigy)
    group, twin_group = optimizer.param_groups[0], twin_optimizer.param_groups[0]
    assert (group["k"], group["d_numerator"]) == (twin_group["k"], twin_group["d_numerator"])
    kept = group["d"]
    assert kept > 2 * twin_group["d"]  # the estimate learned on batches 5-7 is kept
    _train(regime, model, [9])
    _train(reference, twin, [9])
    # The running sums came back together, so the fresh estimate d_hat matches the twin's
    # (keeping the late numerator over the restored ||s|| inflates it about 2x here).
    assert group["d_hat"] == pytest.approx(twin_group["d_hat"], rel=0.1)
    assert group["d"] == kept


def test_rollback_keeps_the_schedule_free_mode_the_user_set():
    # The first snapshot is taken when the Regime is built; a user who calls train()
    # only afterwards must not be put back in eval mode by a rollback to it.
    pytest.importorskip("schedulefree")
    import schedulefree

    model = tiny_mlp()
    optimizer = schedulefree.AdamWScheduleFree(model.parameters(), lr=1e-2)
    regime = Regime(model, optimizer, policies=[RollbackAt(2)], snapshot_every=50)
    optimizer.train()
    outcomes = _train(regime, model, [0, 1, 2, 3])
    assert outcomes[2].value == "rolled_back" and outcomes[3].value == "stepped"
    assert optimizer.param_groups[0]["train_mode"] is True


class CutGroup(Policy):
    """Sets one group's lr multiplier to ``target`` (default: halves it) at step 2."""

    name = "cut_group"

    def __init__(self, group, target=0.5, name=None):
        self.group, self.target = group, target
        self.name = name or self.name

    def propose(self, view, state):
        if view.step == 2:
            proposal = Proposal(
                self.name,
                "scripted cut",
                Priority.STABILITY,
                knob=Knob.LR,
                group=self.group,
                target=self.target,
            )
            return [proposal], state
        return [], state


def _prodigy_body_and_head():
    """A Prodigy over two named groups, and the lrs each of its steps ran at."""
    pytest.importorskip("prodigyopt")
    import prodigyopt

    model = tiny_mlp()
    optimizer = prodigyopt.Prodigy(
        [
            {"params": model[0].parameters(), "name": "body"},
            {"params": model[2].parameters(), "name": "head"},
        ],
        lr=1.0,
    )
    seen = []
    optimizer.register_step_pre_hook(
        lambda opt, args, kwargs: seen.append([g["lr"] for g in opt.param_groups])
    )
    return model, optimizer, seen


def test_prodigy_groups_share_an_lr_change_and_each_follower_is_logged():
    model, optimizer, seen = _prodigy_body_and_head()
    regime = Regime(model, optimizer, policies=[CutGroup("head")])
    _train(regime, model, range(5))  # Prodigy raises inside step() if the lrs differ
    assert seen == [[1.0, 1.0]] * 2 + [[0.5, 0.5]] * 3
    assert [g["lr"] for g in optimizer.param_groups] == [1.0, 1.0]  # bases untouched
    follower = [e for e in regime.events if e.group == "body"]
    assert len(follower) == 1 and follower[0].policy == "actuator"
    assert (follower[0].old, follower[0].new) == (1.0, 0.5)
    assert "follows group 'head'" in follower[0].reason


def test_prodigy_groups_meet_once_a_step_after_every_policy_decided():
    """Two policies cut two groups in one step: the groups meet at the lower level with
    one follower event, not one after each decision (the first would drag the second
    group down before its own cut, and log a change that never ran)."""
    model, optimizer, seen = _prodigy_body_and_head()
    policies = [CutGroup("head"), CutGroup("body", target=0.25, name="cut_body")]
    regime = Regime(model, optimizer, policies=policies)
    _train(regime, model, range(4))
    assert seen == [[1.0, 1.0]] * 2 + [[0.25, 0.25]] * 2
    follower = [(e.group, e.old, e.new) for e in regime.events if e.policy == "actuator"]
    assert follower == [("head", 0.5, 0.25)]


def test_adam_groups_keep_independent_lrs():
    model = tiny_mlp()
    optimizer = torch.optim.Adam(
        [
            {"params": model[0].parameters(), "name": "body"},
            {"params": model[2].parameters(), "name": "head"},
        ],
        lr=1e-2,
    )
    regime = Regime(model, optimizer, policies=[CutGroup("head")])
    _train(regime, model, range(4))
    assert regime.hyperparameters()["lr/body"] == 1e-2
    assert regime.hyperparameters()["lr/head"] == pytest.approx(5e-3)
    assert all(e.group == "head" for e in regime.events)


def test_the_run_header_names_each_group_family(tmp_path):
    from trimtab import read_log

    model = tiny_mlp()
    optimizers = [
        torch.optim.Muon([{"params": [model[0].weight], "name": "muon"}]),
        torch.optim.AdamW([{"params": [model[0].bias, *model[2].parameters()], "name": "adamw"}]),
    ]
    Regime(model, optimizers, log=tmp_path / "run.jsonl").close()
    header = next(r for r in read_log(tmp_path / "run.jsonl") if r["type"] == "run")
    assert [(g["name"], g["family"]) for g in header["groups"]] == [
        ("muon", "muon"),
        ("adamw", "adam"),
    ]


def test_a_schedule_warmup_on_top_of_schedule_free_warmup_is_refused():
    schedulefree = pytest.importorskip("schedulefree")
    from trimtab.schedules import StepDecay, WarmupCosine

    model = tiny_mlp()
    warming = schedulefree.AdamWScheduleFree(model.parameters(), lr=1e-2, warmup_steps=10)
    with pytest.raises(ConfigError, match=r"warmup_steps=10\) and the WarmupCosine schedule"):
        Regime(model, warming, total_steps=100, schedule=WarmupCosine(warmup=0.1))
    # Either warmup alone is fine: a schedule without one, or the optimizer's set to 0.
    Regime(model, warming, total_steps=100, schedule=StepDecay()).close()
    plain = schedulefree.AdamWScheduleFree(model.parameters(), lr=1e-2, warmup_steps=0)
    Regime(model, plain, total_steps=100, schedule=WarmupCosine(warmup=0.1)).close()


class SetLrMultiplier(Policy):
    """Sets every group's lr multiplier to ``value`` at step ``at`` and 1.0 at ``back``."""

    name = "set_lr"

    def __init__(self, value, at, back):
        self.value, self.at, self.back = value, at, back

    def propose(self, view, state):
        target = {self.at: self.value, self.back: 1.0}.get(view.step)
        if target is None:
            return [], state
        return [Proposal(self.name, "scripted", Priority.SAFETY, knob=Knob.LR, target=target)], (
            state
        )


def test_a_raise_on_schedule_free_lifts_its_averaging_weight_for_good():
    # Each step adds lr_max**2 to weight_sum (weight_lr_power 2, r 0). A x2 multiplier for
    # steps 3-4 lifts lr_max to 2 x base, and later steps keep the 4x weight after the
    # multiplier is back at 1: documented, not undone.
    from trimtab.arbiter import ArbiterConfig
    from trimtab.types import Priority as P

    model = tiny_mlp()
    optimizer = _schedule_free(model.parameters(), lr=1e-2)
    limits = ArbiterConfig(rate_limits={P.SAFETY: (0.01, 2.0)}, cooldown=0)
    regime = Regime(model, optimizer, policies=[SetLrMultiplier(2.0, 3, 5)], arbiter=limits)
    sums = []
    x, y = tiny_regression()
    for i in range(8):
        xb, yb = batch(x, y, i)
        regime.backward(torch.nn.functional.mse_loss(model(xb), yb))
        regime.step()
        sums.append(optimizer.param_groups[0]["weight_sum"])
    added = [b - a for a, b in zip([0.0, *sums], sums, strict=False)]
    assert added[:3] == pytest.approx([1e-4] * 3)
    assert added[3:] == pytest.approx([4e-4] * 5)  # x2 lr at steps 3-4, and kept after
    assert optimizer.param_groups[0]["lr_max"] == pytest.approx(2e-2)
    assert optimizer.param_groups[0]["lr"] == 1e-2  # the base, between steps
