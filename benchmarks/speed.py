"""Issue 5's speed targets with enough seeds to read them: ``python -m benchmarks.speed``.

The suite's steps-to-target table uses 6 seeds (2 until 2026-12-01), and its targets
sit where the learning curves flatten (what the best-LR AdamW + warmup-cosine reaches at
75 % of its budget), so the step at which a few seeds' mean first crosses one moves by a
third of the run from one pair of seeds to the next. Here the two methods the targets
compare, trimtab given no LR (``trimtab_auto``) and AdamW + cosine at every grid LR, run
on ``--seeds`` seeds (the suite's cells are reused: same cache, same keys), and the
figures are given for all seeds and for each half, so the spread between halves shows
how far to trust them. A second table does the same for trimtab started at
``HIGH_START``: no faster on the median, and short of the tabular task's target
(RESULTS.md).

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
from benchmarks.sections import markers, replace_section
from benchmarks.tasks import TASKS

START, END = markers("speed_seeds")
NO_SLOWER = 1.25  # the no-sweep target's bound: at most 1.25x the reference's steps
HIGH_START = 1e-2  # trimtab started on the high side, beside AdamW's default start
# What each table compares with AdamW + cosine: a method, and the one LR of it to use
# (None: the method ignores the LR).
CONTENDERS = {
    "trimtab_auto (AdamW's default 1e-3, then adaptation; evaluated on its average)": (
        "trimtab_auto",
        None,
    ),
    f"trimtab started at {HIGH_START:g} (evaluated on its average)": ("trimtab", HIGH_START),
}
METHODS = ("adamw_cosine", *dict.fromkeys(method for method, _ in CONTENDERS.values()))


def steps_to_target(
    records: Sequence[dict],
    seeds: Sequence[int],
    method: str = "trimtab_auto",
    lr: float | None = None,
) -> dict[str, tuple[float, float]]:
    """Per task: (AdamW + cosine's steps to target, ``method``'s at ``lr``), on these seeds.

    Only the two are scored together: where AdamW + cosine diverges (the fault task) the
    target falls back to the best configuration present, which a third must not move."""
    by_task: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        ours = r["method"] == method and (lr is None or r["lr"] == lr)
        if r["seed"] in seeds and (ours or r["method"] == "adamw_cosine"):
            by_task[r["task"]].append(r)
    out = {}
    for task, rs in by_task.items():
        score = score_task(task, rs)
        if method in score.steps_to_target:
            out[task] = (score.steps_to_target["adamw_cosine"], score.steps_to_target[method])
    return out


def speedup(reference: float, ours: float) -> float:
    """Reference steps / trimtab's: 0 when trimtab never reaches the target, infinite
    when only trimtab does."""
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


def table(
    records: Sequence[dict], seeds: int, method: str = "trimtab_auto", lr: float | None = None
) -> list[str]:
    halves = {
        f"seeds 0-{seeds - 1}": range(seeds),
        f"seeds 0-{seeds // 2 - 1}": range(seeds // 2),
        f"seeds {seeds // 2}-{seeds - 1}": range(seeds // 2, seeds),
    }
    per_half = {
        name: steps_to_target(records, list(chosen), method, lr) for name, chosen in halves.items()
    }
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


def write_section(path: Path, tables: dict[str, list[str]], seeds: int, seconds: float) -> None:
    block = [
        START,
        "",
        f"## Speed targets on {seeds} seeds (CPU)",
        "",
        "Each cell: trimtab's steps to the target / the best-LR AdamW + warmup-cosine's "
        "(its LR chosen on the same seeds' mean final metric), and the speed-up. Target: "
        "what that AdamW + cosine's seed-mean curve reaches at 75 % of its budget, as in "
        "the suite. The issue's targets are read from trimtab_auto (no LR given); the "
        f"second table starts trimtab at {HIGH_START:g} (the suite's trimtab cells at that "
        "LR). Reproduce: `python -m benchmarks.speed`.",
        "",
    ]
    for title, lines in tables.items():
        block += [f"**{title}**", "", *lines, ""]
    block += [
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
    wanted = {m: lr for m, lr in CONTENDERS.values()}
    cells = [
        c
        for c in plan(False, args.tasks or list(TASKS), list(METHODS), args.seeds)
        if wanted.get(c[1]) in (None, c[2])  # of trimtab, only the LR it starts at here
    ]
    records = execute(cells, Path(args.out) / "full" / "cells", args.workers)
    tables = {
        title: table(records, args.seeds, method, lr) for title, (method, lr) in CONTENDERS.items()
    }
    write_section(Path(args.results), tables, args.seeds, time.perf_counter() - started)
    for title, lines in tables.items():
        print(title, *lines, sep="\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
