"""The ``trimtab`` command line: ``trimtab demo`` (more subcommands arrive with reports)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path


def _demo(args: argparse.Namespace) -> int:
    from trimtab import demo

    try:
        from tqdm import tqdm
    except ImportError:
        print("the demo's progress bar needs tqdm: pip install 'trimtab[demo]'", file=sys.stderr)
        return 2
    out = Path(args.out)
    results = []
    for adaptive in (False, True):
        label = "AdamW + trimtab" if adaptive else "AdamW (plain)"
        total = args.epochs * 22
        with tqdm(total=total, desc=f"{label:<16}", unit="step", leave=True) as bar:

            def progress(step: int, loss: float, lr: float, bar=bar) -> None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.3g}", lr=f"{lr:.2g}", refresh=False)

            name = "trimtab" if adaptive else "adamw"
            results.append(
                demo.train(
                    adaptive=adaptive,
                    lr=args.lr,
                    epochs=args.epochs,
                    log=out / f"{name}.jsonl",
                    seed=args.seed,
                    progress=progress,
                )
            )
    print()
    print(
        f"digits MLP, AdamW at lr={args.lr:g} (a sensible rate is ~3e-3), "
        f"{args.epochs} epochs, seed {args.seed}"
    )
    header = f"{'method':<18}{'val acc':>9}{'steps':>7}{'skipped':>9}{'rollbacks':>11}{'events':>8}"
    print(header)
    print("-" * len(header))
    for r in results:
        print(
            f"{r.name:<18}{r.val_accuracy:>9.1%}{r.steps:>7}{r.skipped:>9}"
            f"{r.rollbacks:>11}{r.events:>8}"
        )
    print()
    for r in results:
        print(f"log of {r.name}: {r.log}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trimtab",
        description="Adaptive, bounded, audited optimizer control for PyTorch.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "demo",
        help="train a digits classifier at a far-too-high LR with and without trimtab",
        description="Trains a small MLP on scikit-learn's digits twice (plain AdamW at a "
        "learning rate 100x too high, then the same with trimtab) and prints a comparison.",
    )
    demo.add_argument("--lr", type=float, default=0.3, help="initial learning rate (0.3)")
    demo.add_argument("--epochs", type=int, default=15, help="training epochs (15)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (0)")
    demo.add_argument("--out", default="runs/demo", help="folder for the JSONL logs")
    demo.set_defaults(func=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
