"""Host syncs and overhead of the default probes on a GPU.

The probe contract says a probe never syncs by itself: it returns device tensors and the
controller reads every due value in one transfer per optimizer step (the non-finite veto
needs that read before the update). On the CPU, ``tests/test_probes_no_sync.py`` checks
the contract on meta tensors; this script checks it where it costs time, with
``torch.cuda.set_sync_debug_mode``:

1. each probe's ``before_step`` and ``after_step`` run in mode "error" (a sync raises);
2. whole steps run in mode "warn" and the synchronising calls are counted, for a plain
   AdamW loop and for a trimtab loop on the same task;
3. the overhead table of ``benchmarks.overhead`` on the device.

``python -m benchmarks.gpu_sync`` needs CUDA and writes its section of RESULTS.md;
``--device cpu --steps 40`` runs it here as a smoke check (no sync counts on the CPU).
"""

from __future__ import annotations

import argparse
import datetime
import functools
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

import trimtab
from benchmarks.overhead import measure_task, train_step
from benchmarks.sections import markers, replace_section
from benchmarks.tasks import TASKS, Size

TASK = "char_lm"
START, END = markers("gpu-sync")


@contextmanager
def sync_mode(device: str, mode: str) -> Iterator[None]:
    """``torch.cuda.set_sync_debug_mode`` for the block (nothing on the CPU)."""
    if device != "cuda":
        yield
        return
    old = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode(mode)
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(old)


def _strict(method: Callable[..., Any], device: str) -> Callable[..., Any]:
    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with sync_mode(device, "error"):
            return method(*args, **kwargs)

    return wrapper


def count_syncs(device: str, steps: int, trimtab_loop: bool, factor: int = 1) -> dict[str, Any]:
    """Train ``steps`` steps; count synchronising calls per step (mode "warn").

    In the trimtab loop every probe call runs in mode "error", so a probe that syncs
    stops the run with the call that did it.
    """
    torch.manual_seed(0)
    setup = TASKS[TASK].build(0, 100, Size(device, factor))
    optimizer = torch.optim.AdamW(setup.model.parameters(), lr=1e-3)
    regime = trimtab.Regime(setup.model, optimizer) if trimtab_loop else None
    if regime is not None:
        for probe in regime._controller.probes:
            probe.before_step = _strict(probe.before_step, device)  # type: ignore[method-assign]
            probe.after_step = _strict(probe.after_step, device)  # type: ignore[method-assign]
    per_step: list[int] = []
    for step in range(steps):
        batch = setup.batch(step)
        with warnings.catch_warnings(record=True) as caught, sync_mode(device, "warn"):
            warnings.simplefilter("always")
            train_step(setup, optimizer, regime, batch)
        per_step.append(sum("synchroniz" in str(w.message) for w in caught))
    return {
        "loop": "trimtab (default probes)" if trimtab_loop else "plain AdamW",
        "steps": steps,
        "syncs_per_step": dict(Counter(per_step)),
    }


def section(device: str, syncs: list[dict[str, Any]], overhead: dict[str, float]) -> list[str]:
    name = torch.cuda.get_device_name() if device == "cuda" else "CPU (smoke check)"
    lines = [
        START,
        "",
        "## Host syncs and overhead on a GPU",
        "",
        f"Date {datetime.date.today()}, {name}, torch {torch.__version__}, task {TASK}. "
        "Reproduce: `python -m benchmarks.gpu_sync`. Every probe call ran with "
        '`torch.cuda.set_sync_debug_mode("error")` without raising.',
        "",
        "| loop | steps | synchronising calls per step (count: steps) |",
        "|---|---|---|",
    ]
    for row in syncs:
        counts = ", ".join(f"{k}: {v}" for k, v in sorted(row["syncs_per_step"].items()))
        lines.append(f"| {row['loop']} | {row['steps']} | {counts} |")
    lines += [
        "",
        f"Overhead on the device: plain step {overhead['plain_step_ms']:.2f} ms; "
        f"default probes / plain {overhead['probes_median_ratio']:.3f} (median step), "
        f"{overhead['probes_window_ratio']:.3f} (25-step windows); whole default Regime "
        f"/ plain {overhead['median_ratio']:.3f} and {overhead['window_ratio']:.3f}.",
        "",
        END,
    ]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_sync")
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--results", default="benchmarks/RESULTS.md")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA device here; use --device cpu for a smoke check")
    if args.steps < 40:
        parser.error(
            f"--steps must be at least 40 (10 warm-up steps + a 25-step window), got {args.steps}"
        )
    syncs = [count_syncs(args.device, min(args.steps, 50), flag) for flag in (False, True)]
    overhead = measure_task(TASK, args.steps, args.device)
    block = section(args.device, syncs, overhead)
    print("\n".join(block))
    if args.device == "cuda":
        replace_section(Path(args.results), START, END, block)
        print(f"wrote {args.results}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
