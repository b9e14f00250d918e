"""Issue 5's speed targets with enough seeds to read them: ``python -m benchmarks.speed``.

The suite's steps-to-target table uses 6 seeds (2 until 2026-12-01), and its targets
sit where the learning curves flatten (what the best-LR AdamW + warmup-cosine reaches at
75 % of its budget), so the step at which a few seeds' mean first crosses one moves by a
third of the run from one pair of seeds to the next. Here the two methods the targets
compare, trimtab given no LR (``trimtab_auto``) and AdamW + cosine at every grid LR, run
on ``--seeds`` seeds (the suite's cells are reused: same cache, same keys), and the
figures are given for all seeds and for each half, so the spread between halves shows
how far to trust them.

``python -m benchmarks.speed [--seeds N] [--workers N] [--results PATH]``
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from benchmarks.run import execute, plan
from benchmarks.scoring import score_task
from benchmarks.sections import replace_section
from benchmarks.tasks import TASKS

START = "<!-- speed_seeds:start -->"
END = "<!-- speed_seeds:end -->"
METHODS = ("adamw_cosine", "trimtab_auto")
NO_SLOWER = 1.25  # the no-sweep target's bound: at most 1.25x the reference's steps


def steps_to_target(
    records: Sequence[dict], seeds: Sequence[int]
) -> dict[str, tuple[float, float]]:
    """Per task: (AdamW + cosine's steps to target, trimtab_auto's), on these seeds."""
    by_task: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        if r["seed"] in seeds:
            by_task[r["task"]].append(r)
    out = {}
    for task, rs in by_task.items():
        score = score_task(task, rs)
        out[task] = (score.steps_to_target["adamw_cosine"], score.steps_to_target["trimtab_auto"])
    return out


def speedup(reference: float, ours: float) -> float:
    """Reference steps / trimtab_auto's: 0 when trimtab_auto never reaches the target,
    infinite when only trimtab_auto does."""
    if math.isinf(ours):
        return 0.0
    return math.inf if math.isinf(reference) else reference / ours


def summary(steps: dict[str, tuple[float, float]]) -> tuple[float, int, int]:
    """Median speed-up, tasks in no more steps, tasks within ``NO_SLOWER``."""
    median = statistics.median(speedup(*pair) for pair in steps.values())
    no_more = sum(ours <= reference for reference, ours in steps.values())
    within = sum(ours <= NO_SLOWER * reference for reference, ours in steps.values())
    return median, no_more, within


def _cell(steps: tuple[float, float]) -> str:
    reference, ours = steps
    shown = [("never" if math.isinf(v) else f"{v:g}") for v in (reference, ours)]
    ratio = speedup(reference, ours)
    written = "0" if ratio == 0 else "inf" if math.isinf(ratio) else f"{ratio:.2f}"
    return f"{shown[1]} / {shown[0]} ({written}x)"


def table(records: Sequence[dict], seeds: int) -> list[str]:
    halves = {
        f"seeds 0-{seeds - 1}": range(seeds),
        f"seeds 0-{seeds // 2 - 1}": range(seeds // 2),
        f"seeds {seeds // 2}-{seeds - 1}": range(seeds // 2, seeds),
    }
    per_half = {name: steps_to_target(records, list(chosen)) for name, chosen in halves.items()}
    tasks = [t for t in TASKS if all(t in steps for steps in per_half.values())]
    lines = [
        "| seeds | " + " | ".join(tasks) + " | median speed-up | no more steps | "
        f"within {NO_SLOWER:g}x |",
        "|---|" + "---|" * (len(tasks) + 3),
    ]
    for name, steps in per_half.items():
        median, no_more, within = summary({t: steps[t] for t in tasks})
        cells = " | ".join(_cell(steps[t]) for t in tasks)
        lines.append(
            f"| {name} | {cells} | {median:.2f}x | {no_more} of {len(tasks)} | "
            f"{within} of {len(tasks)} |"
        )
    return lines


def write_section(path: Path, lines: list[str], seeds: int, seconds: float) -> None:
    block = [
        START,
        "",
        f"## Speed targets on {seeds} seeds (CPU)",
        "",
        "Each cell: trimtab_auto's steps to the target / the best-LR AdamW + warmup-cosine's "
        "(its LR chosen on the same seeds' mean final metric), and the speed-up. Target: "
        "what that AdamW + cosine's seed-mean curve reaches at 75 % of its budget, as in "
        "the suite. Reproduce: `python -m benchmarks.speed`.",
        "",
        *lines,
        "",
        f"({seconds:.0f} s on this machine, cached cells included at no cost.)",
        "",
        END,
    ]
    replace_section(path, START, END, block)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=12)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--tasks", nargs="*", help="subset of tasks")
    parser.add_argument("--out", default="benchmarks/out", help="the suite's cell cache")
    parser.add_argument("--results", default="benchmarks/RESULTS.md")
    args = parser.parse_args(argv)
    if args.seeds < 2:
        parser.error("--seeds must be at least 2: the table compares the two halves")
    started = time.perf_counter()
    cells = plan(False, args.tasks or list(TASKS), list(METHODS), args.seeds)
    records = execute(cells, Path(args.out) / "full" / "cells", args.workers)
    lines = table(records, args.seeds)
    write_section(Path(args.results), lines, args.seeds, time.perf_counter() - started)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
