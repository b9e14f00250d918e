"""Run the benchmark suite: ``python -m benchmarks.run [--quick] [--workers N]``.

Every cell (task, method, lr, seed) is cached as JSON under ``--out``, so an interrupted
run resumes where it stopped. Results go to benchmarks/RESULTS.md (the section between
the benchmark markers) and PNG plots to benchmarks/plots/.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from benchmarks import faults, overhead, report
from benchmarks.harness import run_cell
from benchmarks.methods import MAIN_METHODS, METHODS, QUICK_METHODS
from benchmarks.tasks import QUICK_TASKS, TASKS

LRS = (1e-4, 1e-3, 1e-2, 1e-1)
QUICK_LRS = (1e-3, 1e-2, 1e-1)


def _key(cell: tuple) -> str:
    task, method, lr, seed, steps, _evals, _fault, device, factor = cell
    size = "" if (device, factor) == ("cpu", 1) else f"__{device}x{factor}"
    return f"{task}__{method}__{lr:g}__{seed}__{steps}{size}"


def _work(args: tuple) -> dict:
    cell, path = args
    record = run_cell(*cell)
    Path(path).write_text(json.dumps(record))
    return record


FULL_SEEDS = 6  # 2 left the oracle and tuned bests a few tenths of a point apart between pairs
QUICK_SEEDS = 2


def add_seeds_argument(parser: argparse.ArgumentParser) -> None:
    """``--seeds``, left at None so ``seeds_or_default`` picks by the run's kind."""
    parser.add_argument(
        "--seeds",
        type=int,
        default=None,
        help=f"seeds per cell (default: {FULL_SEEDS} full, {QUICK_SEEDS} with --quick)",
    )


def seeds_or_default(seeds: int | None, *, quick: bool, error: Callable[[str], Any]) -> int:
    """The seeds per cell a run asked for, or the default of its kind (full or quick)."""
    if seeds is None:
        return QUICK_SEEDS if quick else FULL_SEEDS
    if seeds < 1:
        error(f"--seeds must be at least 1, got {seeds}")
    return seeds


def plan(
    quick: bool,
    tasks: list[str],
    methods: list[str],
    seeds: int,
    device: str = "cpu",
    factor: int = 1,
) -> list[tuple]:
    cells = []
    for task in tasks:
        steps = TASKS[task].quick_steps if quick else TASKS[task].steps
        for method in methods:
            if not METHODS[method].runs_on(task):
                continue
            lrs = (QUICK_LRS if quick else LRS) if METHODS[method].uses_lr else (0.0,)
            for lr in lrs:
                for seed in range(seeds):
                    cells.append((task, method, lr, seed, steps, 20, None, device, factor))
    return cells


def execute(cells: list[tuple], out: Path, workers: int) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    todo, done = [], []
    for cell in cells:
        path = out / f"{_key(cell)}.json"
        if path.exists():
            done.append(json.loads(path.read_text()))
        else:
            todo.append((cell, str(path)))
    print(f"{len(done)} cells cached, {len(todo)} to run on {workers} workers", flush=True)
    started = time.time()
    if todo:
        with mp.get_context("spawn").Pool(workers) as pool:
            for i, record in enumerate(pool.imap_unordered(_work, todo), start=1):
                done.append(record)
                if i % 20 == 0 or i == len(todo):
                    print(f"  {i}/{len(todo)} cells, {time.time() - started:.0f} s", flush=True)
    return done


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="4 tasks, 3 LRs, short runs")
    parser.add_argument("--workers", type=int, default=2)
    add_seeds_argument(parser)
    parser.add_argument("--tasks", nargs="*", help="subset of tasks")
    parser.add_argument("--methods", nargs="*", help="subset of methods")
    parser.add_argument("--out", default="benchmarks/out", help="cache of cell records")
    parser.add_argument("--results", default="benchmarks/RESULTS.md")
    parser.add_argument("--plots", default="benchmarks/plots", help="folder for the PNGs")
    parser.add_argument(
        "--device",
        default="cpu",
        choices=["cpu", "cuda"],
        help="cuda runs the same suite at larger sizes (see --factor)",
    )
    parser.add_argument(
        "--factor",
        type=int,
        default=None,
        help="width and batch-size multiplier (default: 1 on cpu, 4 on cuda)",
    )
    parser.add_argument("--skip-faults", action="store_true")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda needs a CUDA GPU, and torch.cuda.is_available() is False")
    factor = args.factor or (4 if args.device == "cuda" else 1)
    seeds = seeds_or_default(args.seeds, quick=args.quick, error=parser.error)
    tasks = args.tasks or list(QUICK_TASKS if args.quick else TASKS)
    wanted = args.methods or list(QUICK_METHODS if args.quick else MAIN_METHODS)
    missing = [m for m in wanted if not METHODS[m].available()]
    methods = [m for m in wanted if m not in missing]
    if missing:
        print(
            f"skipping methods whose package is not installed: {missing} "
            "(pip install -e '.[bench]')",
            file=sys.stderr,
        )
    name = ("quick" if args.quick else "full") + ("" if args.device == "cpu" else "-cuda")
    out = Path(args.out) / name
    cells = plan(args.quick, tasks, methods, seeds, args.device, factor)
    records = execute(cells, out / "cells", args.workers)
    fault_rows = None
    if not args.skip_faults:
        fault_rows = faults.run(
            quick=args.quick,
            seeds=seeds,
            out=out / "faults",
            workers=args.workers,
            device=args.device,
            factor=factor,
        )
    cost = overhead.measure(steps=150 if args.quick else 400, device=args.device, factor=factor)
    report.write(
        records,
        methods,
        tasks,
        fault_rows,
        cost,
        quick=args.quick,
        results=Path(args.results),
        plots=Path(args.plots),
        missing=missing,
        device=args.device,
        factor=factor,
    )
    print(f"wrote {args.results}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
