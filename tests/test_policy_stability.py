"""The stability policy: scripted curvature readings, the secant proxy, an absent signal,
Regime adding its probes, and a GD run above 2/lambda that it brings back under."""

import pytest
import torch

import trimtab
from trimtab.errors import ConfigError
from trimtab.policies import PolicyView, Stability
from trimtab.probes import CurvatureProbe, GradStatsProbe
from trimtab.signals import Signals
from trimtab.types import Action, Knob, Priority

GROUPS = ("g0",)


class Script:
    def __init__(self, policy):
        self.policy, self.state = policy, policy.initial_state()
        self.signals, self.multipliers, self.step = Signals(), {}, 0
        self.own = {}  # what the arbiter would record: every proposal accepted as made

    def feed(self, accept=True, **values):
        record = {}
        if "ratio" in values:
            ratio, lam = values["ratio"], values.get("lam", 10.0)
            record = {"curvature/lambda": lam, "curvature/coefficient": 2.0}
            record["curvature/ratio"] = ratio
        if "secant" in values:
            record["grad_stats/secant"] = values["secant"]
        self.signals.record(self.step, record)
        view = PolicyView(
            self.step, None, self.signals, GROUPS, dict(self.multipliers), own=dict(self.own)
        )
        proposals, self.state = self.policy.propose(view, self.state)
        for p in proposals if accept else ():  # accept=False: the arbiter refused them
            if p.action is Action.ADJUST:
                key, mine = (Knob.LR, "g0"), (Knob.LR, "g0", p.policy)
                self.multipliers[key] = self.multipliers.get(key, 1.0) * p.factor
                self.own[mine] = self.own.get(mine, 1.0) * p.factor
        self.step += 1
        return proposals

    @property
    def level(self):
        return self.multipliers.get((Knob.LR, "g0"), 1.0)


def test_an_exact_reading_above_the_margin_cuts_to_the_aim_with_the_evidence():
    script = Script(Stability(margin=0.8, aim=0.9))
    (cut,) = script.feed(ratio=1.2, lam=12.0)
    assert cut.knob is Knob.LR and cut.priority is Priority.STABILITY and cut.group == "g0"
    assert cut.factor == pytest.approx(0.72 / 1.2)
    assert "120% of the stability threshold" in cut.reason and "80% margin" in cut.reason
    assert cut.signals["ratio"] == pytest.approx(1.2) and cut.signals["exact"] == 1.0
    # the next reading at the same sharpness sees the cut LR: nothing more to do
    assert script.feed(ratio=1.2, lam=12.0) == []


def test_a_cut_is_bounded_per_decision():
    script = Script(Stability(max_cut=0.25))
    (cut,) = script.feed(ratio=50.0)
    assert cut.factor == pytest.approx(0.25)
    (again,) = script.feed(ratio=50.0)  # still far above: another bounded cut
    assert again.factor == pytest.approx(0.25)


def test_restores_only_far_below_and_never_beyond_the_users_lr():
    script = Script(Stability(margin=0.8, aim=0.9, restore_below=0.4, restore_factor=1.25))
    script.feed(ratio=1.44)  # cut to half
    assert script.level == pytest.approx(0.5)
    assert script.feed(ratio=1.2) == []  # 60% at the cut LR: inside the dead band
    (back,) = script.feed(ratio=0.6)  # 30% at the cut LR: far below
    assert back.priority is Priority.RECOVERY and back.factor == pytest.approx(1.25)
    for _ in range(10):
        script.feed(ratio=0.1)
    assert script.level == pytest.approx(1.0)
    assert script.feed(ratio=0.1) == []  # at the user's LR: nothing to give back


def test_a_restore_never_crosses_the_aim():
    script = Script(Stability(margin=0.8, aim=0.9, restore_below=0.4, restore_factor=1.5))
    script.feed(ratio=7.2)  # cut by 0.25: now at 1.8 x 0.25 = 180% ... then more
    while script.level * 7.2 > 0.8:
        script.feed(ratio=7.2)
    level = script.level
    (back,) = script.feed(ratio=0.95 / level * 0.38)  # 38%: restore, capped at the aim
    assert back.factor * 0.38 <= 0.72 + 1e-9


def test_the_calibrated_secant_cuts_between_exact_readings_but_never_restores():
    script = Script(Stability(margin=0.8, aim=0.9, secant_window=3, secant_tolerance=1.25))
    script.feed(secant=4.0)
    script.feed(secant=6.0)
    # exact 50% at lambda 10, secants (4, 6, 5): scale 10 / 5
    assert script.feed(ratio=0.5, lam=10.0, secant=5.0) == []
    assert script.feed(secant=5.5) == []  # median 5.5: lambda ~11, ratio 55%
    assert script.feed(secant=12.0) == []  # one high secant: median 5.5 still
    (cut,) = script.feed(secant=12.0)  # median 12: lambda ~24, ratio 120% > 100%
    assert cut.signals["exact"] == 0.0 and "secant sharpness" in cut.reason
    assert cut.signals["sharpness"] == pytest.approx(24.0)
    assert cut.factor == pytest.approx(0.72 / 1.2)
    for _ in range(6):
        assert script.feed(secant=0.5) == []  # a low proxy never gives LR back


def test_restores_give_back_only_the_policys_own_cuts():
    script = Script(Stability(restore_factor=1.5))
    script.multipliers[(Knob.LR, "g0")] = 0.1  # another policy's cut
    assert script.feed(ratio=0.5) == []  # 5%: far below, but nothing of its own to give back
    assert script.level == pytest.approx(0.1)


def test_a_cut_the_arbiter_refused_is_never_given_back():
    script = Script(Stability(margin=0.8, aim=0.9, restore_below=0.4, restore_factor=1.25))
    assert len(script.feed(ratio=1.44, accept=False)) == 1  # proposed, refused
    assert script.level == 1.0
    # far below the threshold at the user's LR: counting its proposal as made, the
    # policy would "restore" a cut that never happened and raise the LR above the user's
    assert script.feed(ratio=0.1) == []
    assert script.level == 1.0


def test_it_reads_its_own_cuts_from_the_arbiters_record_in_a_regime():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    regime = trimtab.Regime(model, optimizer, policies=["stability_guard", "stability"])
    arbiter = regime._controller.arbiter
    arbiter._own[(Knob.LR, "g0", "stability")] = 0.5  # as if it had cut the LR to half
    assert regime._controller.arbiter.own_record[(Knob.LR, "g0", "stability")] == 0.5
    fresh = type(arbiter)(arbiter.config)
    fresh.load_state_dict(arbiter.state_dict())  # the record survives a checkpoint ...
    assert fresh.own_record[(Knob.LR, "g0", "stability")] == 0.5  # ... and its view too


def test_without_curvature_it_does_nothing_and_says_so_once():
    script = Script(Stability(absent_after=20))
    made = [p for _ in range(100) for p in script.feed(secant=3.0)]
    assert len(made) == 1
    (note,) = made
    assert note.action is Action.VERDICT and "closure" in note.reason
    assert script.level == 1.0


def test_settings_are_checked():
    with pytest.raises(ConfigError):
        Stability(restore_below=0.75, margin=0.8, aim=0.9)
    with pytest.raises(ConfigError):
        Stability(restore_factor=1.0)
    with pytest.raises(ValueError):
        Stability(margin=1.5)


def test_regime_adds_the_probes_it_requires():
    model = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    regime = trimtab.Regime(model, opt, policies=["stability"], probes=["loss", "nonfinite"])
    names = {p.name for p in regime._controller.probes}
    assert {"curvature", "grad_stats"} <= names


def _quadratic_run(policies, probes, *, steps=150, closure=True):
    torch.manual_seed(0)
    x = torch.randn(64, 8) * torch.linspace(0.3, 2.0, 8)
    y = x @ torch.randn(8, 1) + 0.01 * torch.randn(64, 1)
    model = torch.nn.Linear(8, 1, bias=False)
    sharpness = torch.linalg.eigvalsh(2 * x.T @ x / 64).max().item()
    opt = torch.optim.SGD(model.parameters(), lr=1.5 * 2 / sharpness)  # 1.5x the GD limit
    regime = trimtab.Regime(model, opt, total_steps=steps, policies=policies, probes=probes)
    losses = []
    for _ in range(steps):

        def f():
            return torch.nn.functional.mse_loss(model(x), y)

        loss = f()
        regime.backward(loss)
        regime.step(closure=f if closure else None)
        losses.append(loss.item())
    return losses, sharpness, regime


def test_gd_above_the_stability_limit_diverges_without_the_policy_and_converges_with_it():
    losses, _, _ = _quadratic_run([], ["loss", "nonfinite"], steps=60)
    assert not losses[-1] < losses[0]  # diverged (inf or huge)
    probes = ["loss", "nonfinite", CurvatureProbe(every=10), GradStatsProbe(every=5)]
    losses, sharpness, regime = _quadratic_run(["stability"], probes)
    assert losses[-1] < 1e-2 * losses[0]
    cuts = [e for e in regime.events if e.policy == "stability"]
    assert cuts and cuts[0].step == 0 and "stability threshold" in cuts[0].reason
    # the effective lr x sharpness ends below the GD threshold 2, with the margin
    assert cuts[-1].new * sharpness / 2 < 0.8


def test_a_run_without_a_closure_gets_one_note_and_no_change():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    regime = trimtab.Regime(
        model, opt, policies=[Stability(absent_after=20)], probes=["loss", "nonfinite"]
    )
    for _ in range(60):
        x = torch.randn(16, 4)
        regime.backward(torch.nn.functional.mse_loss(model(x), x.sum(1, keepdim=True)))
        regime.step()
    mine = [e for e in regime.events if e.policy == "stability"]
    assert len(mine) == 1 and mine[0].kind.value == "verdict" and "closure" in mine[0].reason
    assert opt.param_groups[0]["lr"] == 0.05
