"""Every optimizer family: knobs land where the family keeps them, and resume is exact.

The toolbox matrix (test_toolbox) checks that each family trains under every precision
and accumulation; this checks two more contracts per family: the value each knob has
*inside* ``optimizer.step()`` (base x schedule x multiplier, at the family's own
location), and checkpoint -> resume with a schedule under every precision and
accumulation (bit-identical on the CPU).
"""

import pytest
import torch
from tests.conftest import batch, tiny_regression

from trimtab import Regime, build_optimizer
from trimtab.actuator import adapters
from trimtab.policies.base import Policy
from trimtab.schedules import OneCycle, WarmupCosine
from trimtab.types import Knob, Priority, Proposal

FAMILIES = ["sgd", "adam", "adamw", "lion", "lamb", "schedulefree_adamw", "prodigy", "muon"]
NEEDS = {
    "lion": "pytorch_optimizer",
    "lamb": "pytorch_optimizer",
    "schedulefree_adamw": "schedulefree",
    "prodigy": "prodigyopt",
}


def mlp(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 16), torch.nn.Tanh(),
        torch.nn.Linear(16, 1),
    )  # fmt: skip


def build(family, model):
    pytest.importorskip(NEEDS.get(family, "torch"))
    built = build_optimizer(family, model, lr=1.0 if family == "prodigy" else 1e-3)
    return built if isinstance(built, list) else [built]


class HalveAt(Policy):
    """Halves every group's lr multiplier at one step (a scripted adaptive decision)."""

    name = "halve_at"

    def __init__(self, step):
        self.at = step

    def propose(self, view, state):
        if view.step != self.at:
            return [], state
        return [Proposal(self.name, "scripted", Priority.STABILITY, knob=Knob.LR, factor=0.5)], (
            state
        )


def train(regime, model, updates, *, start=0, accumulate=1):
    x, y = tiny_regression()
    for i in range(start, start + updates):
        for k in range(accumulate):
            xb, yb = batch(x, y, i * accumulate + k, size=16)
            with regime.autocast():
                loss = torch.nn.functional.mse_loss(model(xb).float(), yb)
            regime.backward(loss, batch_size=len(xb))
            regime.step()


def momentum_of(group, family):
    location = family.momentum
    return group["momentum"] if location == "momentum" else float(group["betas"][0])


@pytest.mark.parametrize("family", FAMILIES)
def test_inside_the_step_each_knob_is_base_x_schedule_x_multiplier(family):
    model = mlp()
    optimizers = build(family, model)
    total, cut_at = 12, 4
    schedule = OneCycle()
    seen = []
    for optimizer in optimizers:
        fam = adapters.family_of(optimizer)
        optimizer.register_step_pre_hook(
            lambda opt, args, kwargs, fam=fam: seen.append(
                [(g["lr"], momentum_of(g, fam)) for g in opt.param_groups]
            )
        )
    bases = [(g["lr"], o) for o in optimizers for g in o.param_groups]
    regime = Regime(
        model, optimizers, total_steps=total, policies=[HalveAt(cut_at)], schedule=schedule
    )
    train(regime, model, total)
    per_optimizer = len(optimizers)
    assert len(seen) == total * per_optimizer
    for step in range(total):
        multiplier = 0.5 if step >= cut_at else 1.0
        factor = schedule.lr_factor(step, total)
        values = [
            v for call in seen[step * per_optimizer : (step + 1) * per_optimizer] for v in call
        ]
        for (lr, momentum), (base, _) in zip(values, bases, strict=True):
            assert lr == pytest.approx(base * factor * multiplier, rel=1e-12)
            assert momentum == pytest.approx(schedule.momentum(step, total), rel=1e-12)
    # between steps every group holds the user's own base again
    assert [g["lr"] for o in optimizers for g in o.param_groups] == [b for b, _ in bases]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("accumulate", [1, 2])
def test_resume_is_exact_under_every_precision_and_accumulation(family, precision, accumulate):
    def fresh():
        model = mlp(seed=3)
        regime = Regime(
            model,
            build(family, model),
            total_steps=16,
            precision=precision,
            accumulate=accumulate,
            schedule=WarmupCosine(warmup=0.2),
            snapshot_every=4,
        )
        return model, regime

    straight, straight_regime = fresh()
    train(straight_regime, straight, 16, accumulate=accumulate)
    first, first_regime = fresh()
    train(first_regime, first, 8, accumulate=accumulate)
    saved = first_regime.state_dict()
    resumed, resumed_regime = fresh()
    resumed_regime.load_state_dict(saved)
    train(resumed_regime, resumed, 8, start=8, accumulate=accumulate)
    for a, b in zip(straight.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)
    assert [e.to_record() for e in straight_regime.events] == [
        e.to_record() for e in resumed_regime.events
    ]
