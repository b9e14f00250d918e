"""Overhead of a trimtab step over a plain step, interleaved in one process."""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

import trimtab
from benchmarks.tasks import TASKS, Size

OVERHEAD_TASKS = ("width_128", "char_lm")
_PEAK_SCRIPT = """
import resource, sys, torch, trimtab
from benchmarks.tasks import TASKS
torch.set_num_threads(1)
from benchmarks.tasks import Size
device = sys.argv[3]
setup = TASKS[sys.argv[1]].build(0, 100, Size(device, int(sys.argv[4])))
opt = torch.optim.AdamW(setup.model.parameters(), lr=1e-3)
regime = trimtab.Regime(setup.model, opt) if sys.argv[2] == "trimtab" else None
for step in range(60):
    loss = setup.loss(setup.model, setup.batch(step))
    if regime is None:
        opt.zero_grad(); loss.backward(); opt.step()
    else:
        regime.backward(loss); regime.step()
if device == "cuda":
    print(torch.cuda.max_memory_allocated() // 1024)
else:
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def peak_memory_mb(task: str, method: str, device: str = "cpu", factor: int = 1) -> float:
    """Peak memory of a fresh process training 60 steps: resident memory on the CPU,
    allocated GPU memory on cuda (both reported in KiB, returned in MB)."""
    result = subprocess.run(
        [sys.executable, "-c", _PEAK_SCRIPT, task, method, device, str(factor)],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(result.stdout.strip().splitlines()[-1]) / 1024


def _setup(task: str, seed: int, size: Size):
    setup = TASKS[task].build(seed, 100, size)
    return setup, torch.optim.AdamW(setup.model.parameters(), lr=1e-3)


def measure(steps: int = 400, device: str = "cpu", factor: int = 1) -> list[dict[str, float]]:
    """Overhead on a tiny MLP (where fixed Python cost dominates) and a small transformer."""
    return [measure_task(task, steps, device, factor) for task in OVERHEAD_TASKS]


def _clock(device: str) -> float:
    if device == "cuda":
        torch.cuda.synchronize()  # time the work, not the launch
    return time.perf_counter()


def interleaved(
    task: str, steps: int, device: str = "cpu", factor: int = 1, **regime_kwargs: object
) -> tuple[list[float], list[float], trimtab.Regime, torch.nn.Module]:
    """Alternate a plain AdamW step and a trimtab step on twin models and batches.

    Returns the per-step time ratios and plain step times after 10 warm-up steps, the
    Regime and its model. The trimtab step gets a closure, for probes that need one.
    Both loops clear the gradients after the step, so the comparison is like for like.
    """
    torch.set_num_threads(1)
    plain, plain_opt = _setup(task, 0, Size(device, factor))
    adapted, adapted_opt = _setup(task, 0, Size(device, factor))
    regime = trimtab.Regime(adapted.model, adapted_opt, **regime_kwargs)  # type: ignore[arg-type]
    ratios, plain_times = [], []
    for step in range(steps):
        batch = plain.batch(step)
        t0 = _clock(device)
        plain.loss(plain.model, batch).backward()
        plain_opt.step()
        # cleared after the step, as Regime.step() does: where the gradients are freed
        # changes how the CPU allocator reuses memory, by 5-9 % of a 30 ms step
        plain_opt.zero_grad(set_to_none=True)
        t1 = _clock(device)
        regime.backward(adapted.loss(adapted.model, batch))
        regime.step(closure=lambda b=batch: adapted.loss(adapted.model, b))
        t2 = _clock(device)
        if step >= 10:  # after warm-up
            ratios.append((t2 - t1) / (t1 - t0))
            plain_times.append(t1 - t0)
    return ratios, plain_times, regime, adapted.model


def measure_task(
    task: str, steps: int = 400, device: str = "cpu", factor: int = 1
) -> dict[str, float]:
    """Median and total-time ratio of (trimtab step) / (plain step) at the default cadence."""
    ratios, plain_times, regime, model = interleaved(task, steps, device, factor)
    trimtab_times = [r * p for r, p in zip(ratios, plain_times, strict=True)]
    guard = regime._controller.guard
    snapshot_bytes = sum(
        t.numel() * t.element_size() for snap in guard._snapshots for t in snap.model.values()
    )
    return {
        "task": task,
        "median_ratio": statistics.median(ratios),
        # work on a cadence (weight copies every few steps, snapshots every 25) hides
        # from the median step; total time over 25-step windows counts it, and the
        # median over windows keeps one preempted step from deciding the figure
        "window_ratio": statistics.median(
            sum(trimtab_times[i : i + 25]) / sum(plain_times[i : i + 25])
            for i in range(0, len(plain_times) - 24, 25)
        ),
        "plain_step_ms": 1e3 * statistics.median(plain_times),
        "params": sum(p.numel() for p in model.parameters()),
        "snapshots": len(guard._snapshots),
        "snapshot_weight_bytes": snapshot_bytes,
        "peak_plain_mb": peak_memory_mb(task, "plain", device, factor),
        "peak_trimtab_mb": peak_memory_mb(task, "trimtab", device, factor),
    }


def main(argv: list[str] | None = None) -> int:
    """Measure the overhead alone and rewrite its table in RESULTS.md (in place)."""
    from benchmarks.report import _overhead

    parser = argparse.ArgumentParser(prog="python -m benchmarks.overhead")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--results", default="benchmarks/RESULTS.md")
    args = parser.parse_args(argv)
    table = _overhead(measure(steps=args.steps))
    print("\n".join(table))
    path = Path(args.results)
    text = path.read_text()
    head, found, rest = text.partition(table[0])
    if found:
        tail = rest.split(table[-2], 1)[1]  # up to the closing note, kept from the table
        path.write_text(head + "\n".join(table[:-1]) + tail)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
