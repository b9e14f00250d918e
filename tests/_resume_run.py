"""A deterministic, eventful training run used by the resume test (runs as a script).

Usage: python _resume_run.py START STOP OUT [CHECKPOINT]
Trains steps START..STOP-1 (loading CHECKPOINT first when given) and saves the Regime's
state plus the event records to OUT.
"""

from __future__ import annotations

import sys

import torch

import trimtab


def data(i: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1000 + i)
    x = torch.randn(32, 8, generator=gen)
    y = x.sum(dim=1, keepdim=True) + 0.1 * torch.randn(32, 1, generator=gen)
    if i in (30, 31):  # two corrupted batches in a row: a spike, then a rollback
        x = x * 100.0
    if i == 12:
        x = x * float("nan")
    return x, y


def build() -> tuple[torch.nn.Module, trimtab.Regime]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    params = list(model.parameters())
    opt = torch.optim.AdamW(
        [{"params": params[:2], "name": "body"}, {"params": params[2:], "name": "head"}],
        lr=0.01,
    )
    regime = trimtab.Regime(model, opt, total_steps=200, snapshot_every=5, log_every=3)
    return model, regime


def run(start: int, stop: int, regime: trimtab.Regime, model: torch.nn.Module) -> None:
    for i in range(start, stop):
        x, y = data(i)
        regime.backward(torch.nn.functional.mse_loss(model(x), y))
        regime.step()
        if i % 4 == 3:
            regime.observe(val_loss=1.0 + 0.001 * (i % 3))  # flat: plateau cuts


def main(argv: list[str]) -> None:
    start, stop, out = int(argv[0]), int(argv[1]), argv[2]
    model, regime = build()
    if len(argv) > 3:
        regime.load_state_dict(torch.load(argv[3], weights_only=True)["regime"])
    run(start, stop, regime, model)
    torch.save(
        {"regime": regime.state_dict(), "events": [e.to_record() for e in regime.events]}, out
    )


if __name__ == "__main__":
    main(sys.argv[1:])
