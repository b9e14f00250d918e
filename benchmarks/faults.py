"""The fault harness: inject one fault per run and compare with the same run without it."""

from __future__ import annotations

import json
import math
import multiprocessing as mp
from pathlib import Path
from typing import Any

from benchmarks.harness import FAULTS, run_cell
from benchmarks.methods import METHODS
from benchmarks.tasks import TASKS

FAULT_TASKS = ("width_128", "tabular")
FAULT_METHODS = (
    "adamw_cosine",
    "adamw_cosine_clip",
    "adamw_cosine_zclip",
    "adamw_skip_nonfinite",
    "trimtab",
)
LR = 1e-3


def _work(args: tuple) -> dict[str, Any]:
    cell, path = args
    if Path(path).exists():
        return json.loads(Path(path).read_text())
    record = run_cell(*cell)
    Path(path).write_text(json.dumps(record))
    return record


def run(
    *, quick: bool, seeds: int, out: Path, workers: int, device: str = "cpu", factor: int = 1
) -> list[dict[str, Any]]:
    out.mkdir(parents=True, exist_ok=True)
    methods = [m for m in FAULT_METHODS if METHODS[m].available()]
    jobs = []
    for task in FAULT_TASKS:
        steps = TASKS[task].quick_steps if quick else TASKS[task].steps
        for method in methods:
            for seed in range(seeds):
                for fault in (None, *FAULTS):
                    cell = (task, method, LR, seed, steps, 20, fault, device, factor)
                    name = f"{task}__{method}__{seed}__{steps}__{fault}{_size(device, factor)}"
                    jobs.append((cell, str(out / f"{name}.json")))
    with mp.get_context("spawn").Pool(workers) as pool:
        records = list(pool.imap_unordered(_work, jobs))
    clean = {(r["task"], r["method"], r["seed"]): r for r in records if r["fault"] is None}
    rows = []
    for r in records:
        if r["fault"] is None:
            continue
        base = clean[(r["task"], r["method"], r["seed"])]
        task = TASKS[r["task"]]
        rows.append(
            {
                "task": r["task"],
                "method": r["method"],
                "seed": r["seed"],
                "fault": r["fault"],
                "diverged": r["diverged"] or _collapsed(r, base),
                "delta": (r["final"] - base["final"])
                if r["final"] is not None and base["final"] is not None
                else None,
                "recovery": _recovery(r, base, task.tolerance(base["final"] or 0.0)),
            }
        )
    return rows


def _size(device: str, factor: int) -> str:
    return "" if (device, factor) == ("cpu", 1) else f"__{device}x{factor}"


def _collapsed(record: dict, clean: dict) -> bool:
    """Counted as a divergence: final accuracy more than 30 points below the clean run."""
    if record["final"] is None or clean["final"] is None:
        return True
    return record["final"] < clean["final"] - 0.30


def _recovery(record: dict, clean: dict, tol: float) -> float:
    """Steps after the fault until the curve is back within tolerance of the clean one."""
    start = record["fault_at"]
    for (step, value), (_, ref) in zip(record["curve"], clean["curve"], strict=False):
        if step > start and math.isfinite(value) and value >= ref - tol:
            return float(step - start)
    return math.inf
