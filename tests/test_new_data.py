"""New data mid-run, end to end: the guard finds that the data changed, not the weights,
and the plateau's annealing on the old data is withdrawn so the new data trains at speed."""

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


def test_a_distribution_shift_gets_the_pre_plateau_lr_back_and_is_learned():
    draw = _stream()
    held_out = {s: draw(500, s, torch.Generator().manual_seed(7 + s)) for s in (False, True)}
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(DIM, 32), torch.nn.ReLU(), torch.nn.Linear(32, CLASSES)
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    regime = trimtab.Regime(model, optimizer, total_steps=STEPS)
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

    (changed,) = [e for e in events if e.kind is EventKind.VERDICT and "data changed" in e.reason]
    assert changed.policy == "stability_guard" and changed.signals["batches_high"] == 6
    assert changed.signals["new_data"] == 1.0  # the log's marker the doctor reads
    plateau_cuts = [e for e in events if e.policy == "plateau" and e.step < changed.step]
    assert plateau_cuts, "the old data's plateau should have annealed the LR"
    (withdrawn,) = [e for e in events if e.policy == "plateau" and "withdrawn" in e.reason]
    # back at the rate the first plateau cut started from, in one decision
    assert withdrawn.step == changed.step + 1
    assert withdrawn.new == plateau_cuts[0].old and withdrawn.new > 4 * withdrawn.old
    before = max(a for s, a in curve if s <= SHIFT_AT)
    after = [a for s, a in curve if SHIFT_AT < s <= SHIFT_AT + 40]
    assert max(after) >= before - 0.02  # the new data is learned within 40 steps
