"""Run one benchmark cell (task, method, lr, seed), optionally with an injected fault."""

from __future__ import annotations

import math
import time
from typing import Any

import torch

from benchmarks.methods import METHODS
from benchmarks.tasks import TASKS, Size

FAULTS = ("nan_batch", "scaled_batch", "label_burst", "lr_x30", "overflow_storm")
_FAULT_LENGTH = {
    "nan_batch": 1,
    "scaled_batch": 1,
    "label_burst": 5,
    "lr_x30": 10,
    "overflow_storm": 5,
}


def _closure(setup: Any, x: torch.Tensor, y: torch.Tensor) -> Any:
    """A function recomputing the loss on this step's batch, for probes that need it."""

    def closure() -> torch.Tensor:
        return setup.loss(setup.model, (x, y))

    return closure


def run_cell(
    task_name: str,
    method_name: str,
    lr: float,
    seed: int,
    steps: int,
    evals: int = 20,
    fault: str | None = None,
    device: str = "cpu",
    factor: int = 1,
) -> dict[str, Any]:
    """Train and evaluate ``evals`` times; a non-finite loss does not stop the run.

    A method that asks to stop early (``should_stop``, e.g. trimtab's early stopping,
    which restores its best weights first) is evaluated once more and that value stands
    for the rest of the curve: the model no longer changes.

    ``fault`` injects one of ``FAULTS`` at 40 % of the run, lasting 1 to 10 steps;
    ``device`` and ``factor`` (width and batch multiplier) size the task.
    """
    torch.set_num_threads(1)
    task = TASKS[task_name]
    setup = task.build(seed, steps, Size(device, factor))
    method = METHODS[method_name].build(setup, lr, steps)
    every = max(1, steps // evals)
    curve: list[tuple[int, float]] = []
    fault_at = int(0.4 * steps)
    fault_steps = range(fault_at, fault_at + _FAULT_LENGTH[fault]) if fault else range(0)
    started = time.perf_counter()
    error = None
    stopped_at = None
    for step in range(steps):
        x, y = setup.batch(step)
        faulty = step in fault_steps
        if faulty and fault == "nan_batch":
            x = x * math.nan
        elif faulty and fault == "scaled_batch":
            x = x * 1e3
        elif faulty and fault == "label_burst":
            y = y[torch.randperm(len(y), generator=torch.Generator().manual_seed(step))]
        loss = setup.loss(setup.model, (x, y))
        if faulty and fault == "overflow_storm":
            loss = loss * math.inf  # what an fp16 overflow does to every gradient
        saved = None
        if faulty and fault == "lr_x30":  # a buggy schedule writes a 30x rate
            saved = [g["lr"] for g in method.optimizer.param_groups]
            for g in method.optimizer.param_groups:
                g["lr"] = g["lr"] * 30
        try:
            if getattr(method, "wants_closure", False):  # e.g. the curvature probe's HVPs
                method.step(loss, closure=_closure(setup, x, y))
            else:
                method.step(loss)
        except (RuntimeError, AssertionError, ValueError) as exc:  # the method gave up
            error = f"{type(exc).__name__}: {exc}"
            break
        if saved is not None:
            for g, value in zip(method.optimizer.param_groups, saved, strict=True):
                g["lr"] = value
        if (step + 1) % every == 0 or step + 1 == steps:
            method.eval_mode()
            metric, val_loss = setup.evaluate(setup.model)
            method.train_mode()
            curve.append((step + 1, metric))
            method.observe(val_loss)
        if method.should_stop and step + 1 < steps:
            stopped_at = step + 1
            method.eval_mode()
            metric, _ = setup.evaluate(setup.model)
            method.train_mode()
            done = curve[-1][0] if curve else 0
            curve += [(s, metric) for s in range(done + every, steps + 1, every)]
            if curve[-1][0] != steps:
                curve.append((steps, metric))
            break
    method.close()
    if error is not None:  # the rest of the run counts as lost
        worst = 0.0 if task.higher_is_better else math.inf
        done = curve[-1][0] if curve else 0
        curve += [(s, worst) for s in range(done + every, steps + 1, every)] or [(steps, worst)]
    final = curve[-1][1] if error is None else math.nan
    finite = all(torch.isfinite(p).all() for p in setup.model.parameters())
    return {
        "task": task_name,
        "method": method_name,
        "lr": lr,
        "seed": seed,
        "steps": steps,
        "fault": fault,
        "fault_at": fault_at if fault else None,
        "device": device,
        "factor": factor,
        "final": final if math.isfinite(final) else None,
        "curve": curve,
        "diverged": not finite or not math.isfinite(final),
        "skipped": method.skipped,
        "events": method.events,
        "seconds": time.perf_counter() - started,
        "error": error,
        "stopped_at": stopped_at,
    }
