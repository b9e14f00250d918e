"""Shift recovery: how soon after a mid-run distribution change is a method back where it was.

``python -m benchmarks.shift_recovery [--results PATH] [--seeds N] [--steps N]``

The stream is the ``shift`` task's Gaussian classes, whose inputs rotate and move at
mid-run; a rotation and a translation keep the Bayes accuracy, so the pre-shift level is
reachable again. Every ``every`` steps the model is evaluated on a held-out set of the
*current* distribution. The pre-shift level is the accuracy at the last evaluation before
the shift; the recovery time is the number of steps after the shift until the accuracy is
back within the task tolerance (1 point) of it. A run that never gets back counts as not
recovered (shown as ``>`` the steps left). Every method of ``MAIN_METHODS`` that imports,
plus ``trimtab-plus-shift``, runs at its best LR from a small grid, chosen per method by
the median recovery time (ties: the median final accuracy); methods with their own LR
(prodigy, dog, the fixed schedule-free and trimtab_auto) run once.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from benchmarks.methods import MAIN_METHODS, METHODS
from benchmarks.sections import replace_section
from benchmarks.tasks import Setup, _ce, _classification_eval, _mlp, _one_group, shifting_blobs

START = "<!-- shift_recovery:start -->"
END = "<!-- shift_recovery:end -->"
TOLERANCE = 0.01  # accuracy points, as the suite's tolerance for accuracy tasks
LRS = (1e-3, 3e-3, 1e-2)


def stream(seed: int, steps: int, dim: int = 20, classes: int = 5) -> tuple[Setup, object]:
    """The shifting stream and an evaluator of the current distribution at a step."""
    draw = shifting_blobs(seed, dim, classes)
    shift_at = steps // 2

    torch.manual_seed(seed)
    model = _mlp([dim, 64, 64, classes])
    held_out = {
        shifted: _classification_eval(
            model, *draw(1000, shifted, torch.Generator().manual_seed(seed + 99 + shifted))
        )
        for shifted in (False, True)
    }

    def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(seed * 100003 + step)
        return draw(64, step >= shift_at, g)

    def evaluate_at(step: int):
        return held_out[step >= shift_at]

    setup = Setup(model, _one_group(model), batch, _ce, held_out[False], {shift_at: "shift"})
    return setup, evaluate_at


def run(method: str, lr: float, seed: int, steps: int, every: int) -> dict:
    """One run: the curve on the current distribution, the pre-shift level, recovery."""
    torch.set_num_threads(1)
    setup, evaluate_at = stream(seed, steps)
    shift_at = steps // 2
    trainer = METHODS[method].build(setup, lr, steps)
    curve: list[tuple[int, float]] = []
    for step in range(steps):
        trainer.step(setup.loss(setup.model, setup.batch(step)))
        done = step + 1
        if done % every == 0 or done == steps:
            trainer.eval_mode()
            # the evaluation at the shift's step still sees the old distribution
            accuracy, val_loss = evaluate_at(done - 1)(setup.model)
            trainer.train_mode()
            curve.append((done, accuracy))
            trainer.observe(val_loss if math.isfinite(val_loss) else 1e9)
    trainer.close()
    before = [a for s, a in curve if s <= shift_at]
    pre = before[-1] if before else math.nan
    recovered = next(
        (s - shift_at for s, a in curve if s > shift_at and a >= pre - TOLERANCE), None
    )
    return {
        "method": method,
        "lr": lr,
        "seed": seed,
        "pre": pre,
        "final": curve[-1][1],
        "recovery": recovered,
        "events": [e for e in trainer.events if e.get("policy") == "shift"],
    }


def _median_recovery(records: Sequence[dict], left: int) -> float:
    """Median over seeds, a run that never recovered counting as infinitely late."""
    return statistics.median(
        math.inf if r["recovery"] is None else float(r["recovery"]) for r in records
    )


def best_lr(records: list[dict], left: int) -> list[dict]:
    """The records of the LR with the fastest median recovery (ties: higher final)."""
    by_lr: dict[float, list[dict]] = {}
    for r in records:
        by_lr.setdefault(r["lr"], []).append(r)
    return min(
        by_lr.values(),
        key=lambda rs: (_median_recovery(rs, left), -statistics.median(r["final"] for r in rs)),
    )


def methods_to_run(names: Sequence[str] | None) -> list[str]:
    if names:
        return list(names)
    wanted = [*MAIN_METHODS, "trimtab-plus-shift"]
    return [m for m in wanted if m in METHODS and METHODS[m].available()]


def table(results: dict[str, list[dict]], steps: int) -> list[str]:
    left = steps - steps // 2
    lines = [
        "| method | LR | median recovery steps | recovered | pre-shift accuracy | final accuracy |",
        "|---|---|---|---|---|---|",
    ]
    order = sorted(results, key=lambda m: _median_recovery(results[m], left))
    for m in order:
        rs = results[m]
        median = _median_recovery(rs, left)
        shown = f">{left}" if math.isinf(median) else f"{median:g}"
        lr = f"{rs[0]['lr']:g}" if METHODS[m].uses_lr else "own"
        done = sum(r["recovery"] is not None for r in rs)
        pre = statistics.median(r["pre"] for r in rs)
        final = statistics.median(r["final"] for r in rs)
        lines.append(f"| {m} | {lr} | {shown} | {done}/{len(rs)} | {pre:.3f} | {final:.3f} |")
    return lines


def write_section(path: Path, lines: list[str], args: argparse.Namespace, seconds: float) -> None:
    block = [
        START,
        "",
        f"## Shift recovery (CPU, {args.seeds} seeds, {args.steps} steps, shift at "
        f"{args.steps // 2})",
        "",
        "Gaussian classes whose inputs rotate and move at mid-run; accuracy on a held-out set "
        f"of the current distribution every {args.every} steps. Recovery: steps after the "
        f"shift until the accuracy is within {TOLERANCE:g} of its value just before the shift. "
        f"Each LR-taking method at its best LR of {', '.join(f'{lr:g}' for lr in args.lrs)} "
        "by median recovery. Reproduce: `python -m benchmarks.shift_recovery`.",
        "",
        *lines,
        "",
        f"({seconds:.0f} s on this machine.)",
        "",
        END,
    ]
    replace_section(path, START, END, block)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default="benchmarks/RESULTS.md")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--every", type=int, default=10)
    parser.add_argument("--lrs", type=float, nargs="+", default=list(LRS))
    parser.add_argument("--methods", nargs="*")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    results: dict[str, list[dict]] = {}
    left = args.steps - args.steps // 2
    for method in methods_to_run(args.methods):
        lrs = args.lrs if METHODS[method].uses_lr else [args.lrs[0]]
        records = [
            run(method, lr, seed, args.steps, args.every)
            for lr in lrs
            for seed in range(args.seeds)
        ]
        results[method] = best_lr(records, left)
        print(method, [(r["lr"], r["recovery"]) for r in results[method]], flush=True)
    lines = table(results, args.steps)
    write_section(Path(args.results), lines, args, time.perf_counter() - started)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
