"""New data mid-run, end to end: the shift policy (or, without it, the guard) finds that the
data changed, not the weights, and the plateau's annealing on the old data is withdrawn so
the new data trains at speed."""

import pytest
import torch

import trimtab
from trimtab.types import EventKind

DIM, CLASSES, STEPS, SHIFT_AT = 10, 4, 400, 200


def _stream(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(CLASSES, DIM, generator=gen) * 1.5
    rotation, _ = torch.linalg.qr(torch.randn(DIM, DIM, generator=gen))
    offset = torch.randn(DIM, generator=gen) * 2.0

    def draw(n: int, shifted: bool, g: torch.Generator):
        labels = torch.randint(CLASSES, (n,), generator=g)
        points = centres[labels] + torch.randn(n, DIM, generator=g)
        return (points @ rotation + offset if shifted else points), labels

    return draw


def _accuracy(model, data) -> tuple[float, float]:
    with torch.no_grad():
        logits = model(data[0])
        loss = torch.nn.functional.cross_entropy(logits, data[1]).item()
        return (logits.argmax(1) == data[1]).float().mean().item(), loss


def _run(policies):
    draw = _stream()
    held_out = {s: draw(500, s, torch.Generator().manual_seed(7 + s)) for s in (False, True)}
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(DIM, 32), torch.nn.ReLU(), torch.nn.Linear(32, CLASSES)
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    regime = trimtab.Regime(model, optimizer, total_steps=STEPS, policies=policies)
    curve = []
    for step in range(STEPS):
        x, y = draw(64, step >= SHIFT_AT, torch.Generator().manual_seed(1000 + step))
        regime.backward(torch.nn.functional.cross_entropy(model(x), y))
        regime.step()
        if (step + 1) % 10 == 0:
            accuracy, val_loss = _accuracy(model, held_out[step >= SHIFT_AT])
            regime.observe(val_loss=val_loss)
            curve.append((step + 1, accuracy))
    events = list(regime.events)
    regime.close()
    return events, curve


def _check_withdrawn_and_learned(events, curve, changed, back):
    """The plateau's cuts are withdrawn in one decision on the next call (the shift policy
    drops the step of its verdict: the update count stays), and ``back`` (that or a
    later event) returns the LR to where the first plateau cut started from."""
    assert changed.signals["new_data"] == 1.0  # the log's marker the doctor reads
    plateau_cuts = [e for e in events if e.policy == "plateau" and e.step < changed.step]
    assert plateau_cuts, "the old data's plateau should have annealed the LR"
    (withdrawn,) = [e for e in events if e.policy == "plateau" and "withdrawn" in e.reason]
    assert withdrawn.step == changed.step + (changed.policy == "stability_guard")
    assert withdrawn.new > 4 * withdrawn.old
    assert back(withdrawn).new == pytest.approx(plateau_cuts[0].old)
    before = max(a for s, a in curve if s <= SHIFT_AT)
    after = [a for s, a in curve if SHIFT_AT < s <= SHIFT_AT + 40]
    assert max(after) >= before - 0.02  # the new data is learned within 40 steps


def test_without_the_shift_policy_the_guard_calls_new_data_and_the_plateau_withdraws():
    events, curve = _run(tuple(p for p in trimtab.policies.DEFAULT_POLICIES if p != "shift"))
    (changed,) = [e for e in events if e.kind is EventKind.VERDICT and "data changed" in e.reason]
    assert changed.policy == "stability_guard" and changed.signals["batches_high"] == 6
    _check_withdrawn_and_learned(events, curve, changed, back=lambda withdrawn: withdrawn)


def test_with_the_defaults_the_shift_policy_calls_it_sooner_and_the_plateau_withdraws():
    events, curve = _run(trimtab.policies.DEFAULT_POLICIES)
    (changed,) = [e for e in events if e.kind is EventKind.VERDICT and "data changed" in e.reason]
    # two losses at the weights the guard restored, not the guard's six
    assert changed.policy == "shift" and "the last 2 at the weights" in changed.reason
    skips = [e for e in events if e.kind is EventKind.SKIP and e.step == changed.step]
    assert len(skips) == 3  # the spike, then the two checks at the restored weights
    # the guard's cut (it read the jump as divergence) is made good by the shift policy's
    # return to the highest level the run trained at, two steps later
    (restore,) = [e for e in events if e.policy == "shift" and "at once" in e.reason]
    assert restore.step == changed.step + 2
    _check_withdrawn_and_learned(events, curve, changed, back=lambda _: restore)
