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
from benchmarks.tasks import TASKS, Batch, Setup, Size

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


def train_step(
    setup: Setup, optimizer: torch.optim.Optimizer, regime: trimtab.Regime | None, batch: Batch
) -> None:
    """One training step, plain (``regime`` None) or through the Regime with a closure
    for probes that need one. Both clear the gradients after the step, as
    ``Regime.step()`` does: where the gradients are freed changes how the CPU allocator
    reuses memory, by 5-9 % of a 30 ms step."""
    loss = setup.loss(setup.model, batch)
    if regime is None:
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    else:
        regime.backward(loss)
        regime.step(closure=lambda: setup.loss(setup.model, batch))


# What the overhead table compares with a plain step: the default probe preset alone (the
# issue-4 target: what measuring costs), and the whole default Regime (probes + policies).
# A second plain loop (None) is the A/A control: how far from 1.000 a ratio strays when
# nothing differs but the order of the loops.
VARIANTS: dict[str, dict[str, object] | None] = {
    "plain_twin": None,
    "probes": {"policies": ()},
    "trimtab": {},
}


def interleaved(
    task: str, steps: int, device: str = "cpu", factor: int = 1, **regime_kwargs: object
) -> tuple[list[float], list[float], trimtab.Regime, torch.nn.Module]:
    """One Regime configuration against a plain step (see ``interleaved_many``)."""
    ratios, plain_times, regimes, models = interleaved_many(
        task, steps, {"trimtab": regime_kwargs}, device, factor
    )
    regime = regimes["trimtab"]
    assert regime is not None
    return ratios["trimtab"], plain_times, regime, models["trimtab"]


def interleaved_many(
    task: str,
    steps: int,
    variants: dict[str, dict[str, object] | None],
    device: str = "cpu",
    factor: int = 1,
) -> tuple[
    dict[str, list[float]],
    list[float],
    dict[str, trimtab.Regime | None],
    dict[str, torch.nn.Module],
]:
    """Alternate a plain AdamW step and one step of each Regime variant, on twin models
    and the same batches, so that the machine's load affects all of them alike.

    Returns each variant's per-step time ratios to the plain step, the plain step times
    (both after 10 warm-up steps), and each variant's Regime and model. A variant of
    ``None`` is another plain loop. Each step is ``train_step``.
    """
    torch.set_num_threads(1)
    plain, plain_opt = _setup(task, 0, Size(device, factor))
    regimes: dict[str, trimtab.Regime | None] = {}
    setups, optimizers = {}, {}
    for name, kwargs in variants.items():
        setups[name], optimizers[name] = _setup(task, 0, Size(device, factor))
        regimes[name] = (
            None
            if kwargs is None
            else trimtab.Regime(setups[name].model, optimizers[name], **kwargs)  # type: ignore[arg-type]
        )
    ratios: dict[str, list[float]] = {name: [] for name in variants}
    plain_times = []
    for step in range(steps):
        batch = plain.batch(step)
        t0 = _clock(device)
        train_step(plain, plain_opt, None, batch)
        plain_time = _clock(device) - t0
        for name, regime in regimes.items():
            t1 = _clock(device)
            train_step(setups[name], optimizers[name], regime, batch)
            if step >= 10:  # after warm-up
                ratios[name].append((_clock(device) - t1) / plain_time)
        if step >= 10:
            plain_times.append(plain_time)
    return ratios, plain_times, regimes, {name: s.model for name, s in setups.items()}


def _window_ratio(ratios: list[float], plain_times: list[float]) -> float:
    # work on a cadence (weight copies every few steps, snapshots every 25) hides from
    # the median step; total time over 25-step windows counts it, and the median over
    # windows keeps one preempted step from deciding the figure
    times = [r * p for r, p in zip(ratios, plain_times, strict=True)]
    return statistics.median(
        sum(times[i : i + 25]) / sum(plain_times[i : i + 25])
        for i in range(0, len(plain_times) - 24, 25)
    )


def measure_task(
    task: str, steps: int = 400, device: str = "cpu", factor: int = 1
) -> dict[str, float]:
    """Median and total-time ratios to a plain step at the default cadence: the default
    probe preset alone (``probes_*``) and the whole default Regime."""
    ratios, plain_times, regimes, models = interleaved_many(task, steps, VARIANTS, device, factor)
    regime = regimes["trimtab"]
    assert regime is not None
    guard = regime._controller.guard
    snapshot_bytes = sum(
        t.numel() * t.element_size() for snap in guard._snapshots for t in snap.model.values()
    )
    return {
        "task": task,
        "twin_median_ratio": statistics.median(ratios["plain_twin"]),
        "probes_median_ratio": statistics.median(ratios["probes"]),
        "probes_window_ratio": _window_ratio(ratios["probes"], plain_times),
        "median_ratio": statistics.median(ratios["trimtab"]),
        "window_ratio": _window_ratio(ratios["trimtab"], plain_times),
        "plain_step_ms": 1e3 * statistics.median(plain_times),
        "params": sum(p.numel() for p in models["trimtab"].parameters()),
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
