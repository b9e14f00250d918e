"""A full training recipe under one Regime: Muon + AdamW, bf16, accumulation, a schedule,
and a checkpoint halfway that the second half resumes from.

Run: ``python examples/toolbox_recipe.py`` (needs scikit-learn for the bundled digits;
no download). Swap ``"muon"`` for any name in ``trimtab.optimizer_defaults`` (``"lion"``,
``"schedulefree_adamw"``, ``"prodigy"``, ...) and ``precision`` for ``"fp16"`` or
``"fp32"``; nothing else in the loop changes.
"""

from __future__ import annotations

import argparse
import io

import torch
from torch.nn import functional as F

import trimtab
from trimtab.demo import load_digits_split, make_model
from trimtab.schedules import WarmupStableDecay


def build(optimizer: str, precision: str, steps: int, accumulate: int):
    model = make_model(seed=0)
    optimizers = trimtab.build_optimizer(optimizer, model)  # Muon returns [Muon, AdamW]
    regime = trimtab.Regime(
        model,
        optimizers,
        total_steps=steps,
        schedule=WarmupStableDecay(),  # warmup, flat, then a linear decay to 0
        precision=precision,
        accumulate=accumulate,
    )
    return model, regime


def train(model, regime, x, y, *, micro: int, until: int) -> None:
    """Train until ``until`` optimizer updates are done (micro-batches of ``micro``)."""
    gen = torch.Generator().manual_seed(regime.step_count)  # reproducible, resumed or not
    while regime.step_count < until and not regime.should_stop:
        for idx in torch.randperm(len(x), generator=gen).split(micro):
            with regime.autocast():
                loss = F.cross_entropy(model(x[idx]).float(), y[idx])
            regime.backward(loss, batch_size=len(idx))
            regime.step()  # Outcome.ACCUMULATING until the last micro-batch of an update
            if regime.step_count >= until or regime.should_stop:
                return


def accuracy(model, x, y) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser()
    parser.add_argument("--optimizer", default="muon")
    parser.add_argument("--precision", default="bf16", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--accumulate", type=int, default=2)
    args = parser.parse_args(argv)
    x, y, x_val, y_val = load_digits_split()

    model, regime = build(args.optimizer, args.precision, args.steps, args.accumulate)
    train(model, regime, x, y, micro=32, until=args.steps // 2)
    buffer = io.BytesIO()
    torch.save(regime.state_dict(), buffer)  # model + optimizers + scaler + trimtab

    model, regime = build(args.optimizer, args.precision, args.steps, args.accumulate)
    buffer.seek(0)
    regime.load_state_dict(torch.load(buffer, weights_only=False))
    train(model, regime, x, y, micro=32, until=args.steps)

    acc = accuracy(model, x_val, y_val)
    print(
        f"{args.optimizer} / {args.precision} / accumulate {args.accumulate}: "
        f"{regime.step_count} updates, validation accuracy {acc:.1%}, "
        f"{len(regime.events)} events"
    )
    for event in regime.events:
        print(f"  step {event.step}: {event.kind.value} {event.knob or ''} {event.reason}")
    return acc


if __name__ == "__main__":
    main()
