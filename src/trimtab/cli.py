"""The ``trimtab`` command line: ``trimtab demo``, ``trimtab report``, ``trimtab doctor``."""

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


def _report(args: argparse.Namespace) -> int:
    from trimtab.report.cli import report

    return report(args)


def _doctor(args: argparse.Namespace) -> int:
    from trimtab.report.cli import doctor

    return doctor(args)


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
    _add_report_commands(sub)
    return parser


def _add_report_commands(sub: argparse._SubParsersAction) -> None:
    report = sub.add_parser(
        "report",
        help="write an HTML dashboard of one or more run logs",
        description="Reads trimtab JSONL logs (written with Regime(..., log='run.jsonl')) and "
        "writes one self-contained HTML file: loss and validation metrics, every knob per "
        "group, gradient norms, update ratios and other signals, every event as a marker "
        "(hover for its reason), an events table and the recipe note. Several logs are "
        "overlaid for comparison. Opens offline in any browser. Needs plotly: "
        "pip install 'trimtab[report]'.",
        epilog="example: trimtab report runs/a.jsonl runs/b.jsonl -o report.html",
    )
    report.add_argument("logs", nargs="+", metavar="RUN.jsonl", help="run logs to show")
    report.add_argument("-o", "--out", default="report.html", help="output file (report.html)")
    report.set_defaults(func=_report)
    doctor = sub.add_parser(
        "doctor",
        help="diagnose a run: the main symptom, its evidence, set-up lints",
        description="Reads a trimtab JSONL log and names the run's main symptom (loss "
        "diverging, memorization, slow training, backbone drift, dead or saturated units, a "
        "mid-run data shift) with the signal values behind it, then lints the set-up (Adam "
        "with L2 decay, decay on norms and biases, fp16 without loss scaling, evaluation in "
        "training mode, no warmup, clipping on every step). Exit status: 0 healthy, 1 a "
        "finding, 2 an unreadable log.",
        epilog="example: trimtab doctor runs/a.jsonl --note runs/a.md",
    )
    doctor.add_argument("log", metavar="RUN.jsonl", help="the run log to diagnose")
    doctor.add_argument("--json", action="store_true", help="print the diagnosis as JSON")
    doctor.add_argument("--note", metavar="NOTE.md", help="also write the Markdown recipe note")
    doctor.set_defaults(func=_doctor)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
