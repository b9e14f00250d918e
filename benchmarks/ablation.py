"""Ablation: each default policy switched off in turn, on the suite's LR grid.

``python -m benchmarks.ablation [--quick] [--workers N] [--seeds N]`` runs trimtab without
one default policy at a time on every (task, LR, seed) cell, reuses the suite's cached
cells (the same cache as ``benchmarks.run``: run that first for the oracle and the full
trimtab), and writes a table to benchmarks/RESULTS.md: which policy's absence loses (or
wins) which cells. The default policy set is the one this table supports.
"""

from __future__ import annotations

import argparse
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from benchmarks.methods import ABLATIONS, CANDIDATES, MAIN_METHODS
from benchmarks.run import add_seeds_argument, execute, plan, seeds_or_default
from benchmarks.scoring import _value
from benchmarks.sections import markers, replace_section
from benchmarks.tasks import QUICK_TASKS, TASKS


def within(records: list[dict[str, Any]], variants: list[str]) -> dict[str, dict[str, list]]:
    """Per variant and task: for each LR, whether its seed aggregate is within tolerance.

    The oracle is the best seed-aggregated (method, LR) of the suite's own methods, as
    in ``scoring.score_task``: the ablation variants do not move it, and one that beats
    it counts as within.
    """
    grouped: dict[tuple[str, str, float], list[dict]] = defaultdict(list)
    for r in records:
        grouped[(r["task"], r["method"], r["lr"])].append(r)
    out: dict[str, dict[str, list]] = defaultdict(dict)
    for task in sorted({t for t, _, _ in grouped}):
        higher = TASKS[task].higher_is_better
        aggregate = statistics.fmean if higher else statistics.median

        def mean(rs: list[dict]) -> float:
            return aggregate(_value(r, higher) for r in rs)  # noqa: B023

        suite = [mean(rs) for (t, m, _), rs in grouped.items() if t == task and m in MAIN_METHODS]
        if not suite:
            continue
        oracle = max(suite) if higher else min(suite)
        tol = TASKS[task].tolerance(oracle)
        for variant in variants:
            cells = [(lr, rs) for (t, m, lr), rs in grouped.items() if t == task and m == variant]
            out[variant][task] = [
                (lr, (mean(rs) - oracle if higher else oracle - mean(rs)) >= -tol, mean(rs))
                for lr, rs in sorted(cells, key=lambda c: c[0])
            ]
    return out


def table(
    hits: dict[str, dict[str, list]],
    variants: list[str],
    tasks: list[str],
    divergences: dict[str, int],
) -> list[str]:
    lines = [
        "| policies | " + " | ".join(tasks) + " | within tolerance | divergences |",
        "|---|" + "---|" * (len(tasks) + 2),
    ]
    for variant in variants:
        cells, total, good = [], 0, 0
        for task in tasks:
            row = hits.get(variant, {}).get(task, [])
            ok = sum(1 for _, hit, _ in row if hit)
            cells.append(f"{ok}/{len(row)}" if row else "—")
            total, good = total + len(row), good + ok
        share = f"{good}/{total} ({100 * good / total:.0f} %)" if total else "—"
        label = (
            "all defaults"
            if variant == "trimtab"
            else f"without `{ABLATIONS[variant]}`"
            if variant in ABLATIONS
            else f"defaults + `{CANDIDATES[variant]}`"
        )
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {share} | {divergences[variant]} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ablation", description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--workers", type=int, default=2)
    add_seeds_argument(parser)
    parser.add_argument("--out", default="benchmarks/out")
    parser.add_argument("--results", default="benchmarks/RESULTS.md")
    args = parser.parse_args(argv)
    seeds = seeds_or_default(args.seeds, quick=args.quick, error=parser.error)
    tasks = list(QUICK_TASKS if args.quick else TASKS)
    variants = ["trimtab", *ABLATIONS, *CANDIDATES]
    cache = Path(args.out) / ("quick" if args.quick else "full") / "cells"
    cells = plan(args.quick, tasks, [*MAIN_METHODS, *ABLATIONS, *CANDIDATES], seeds)
    records = execute(cells, cache, args.workers)
    hits = within(records, variants)
    diverged = {v: sum(r["diverged"] for r in records if r["method"] == v) for v in variants}
    lines = table(hits, variants, tasks, diverged)
    kind = "quick" if args.quick else "full"
    start, end = markers("ablation", quick=args.quick)
    block = [
        start,
        "",
        f"## Policy ablation ({kind} run, CPU, {seeds} seeds per cell)",
        "",
        "Each default policy switched off in turn, and each built policy that is not a default "
        "added; a cell is one (task, initial LR) of the "
        "suite's grid, within tolerance of the oracle as in the LR-robustness table. "
        f"Reproduce: `python -m benchmarks.ablation{' --quick' if args.quick else ''} "
        f"--seeds {seeds}`.",
        "",
        *lines,
        "",
        end,
    ]
    replace_section(Path(args.results), start, end, block)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
