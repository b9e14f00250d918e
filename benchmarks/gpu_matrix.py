"""The toolbox matrix: every optimizer family x precision x accumulation under one Regime.

The unit tests run this matrix on the CPU with a tiny model. On a GPU, fp16 autocast,
GradScaler and bf16 take different kernels and different overflow behaviour, so the same
matrix is worth running there at a larger width: ``python -m benchmarks.gpu_matrix``
(needs CUDA; ``--device cpu`` runs it here as a smoke check). Each cell trains a seeded
MLP on synthetic regression data and records the loss reduction, skips (with the ones
the GradScaler made), rollbacks, time per update and peak GPU memory, and whether
checkpoint -> resume reproduces the uninterrupted run. The result replaces the section
between this script's markers in RESULTS.md.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from benchmarks.sections import markers as section_markers
from benchmarks.sections import replace_section
from trimtab import Outcome, Regime, build_optimizer

FAMILIES = ("sgd", "adam", "adamw", "lion", "lamb", "schedulefree_adamw", "prodigy", "muon")
PRECISIONS = ("fp32", "bf16", "fp16")
ACCUMULATIONS = (1, 4)
NEEDS = {
    "lion": "pytorch_optimizer",
    "lamb": "pytorch_optimizer",
    "schedulefree_adamw": "schedulefree",
    "prodigy": "prodigyopt",
}
# Brisker than the table's defaults so short runs show progress (as in the unit tests).
LRS = {
    "sgd": 0.01,
    "adam": 0.01,
    "adamw": 0.01,
    "lamb": 0.01,
    "lion": 3e-3,
    "schedulefree_adamw": 0.01,
}


@dataclass(frozen=True)
class Cell:
    """One row of the matrix."""

    family: str
    precision: str
    accumulate: int
    start_loss: float
    final_loss: float
    updates: int
    skipped: int
    scaler_skips: int
    rollbacks: int
    ms_per_update: float
    peak_mb: float | None
    resume_gap: float | None  # max |w_resumed - w_straight|; 0.0 means bit-identical
    error: str | None = None

    @property
    def ratio(self) -> float:
        return self.final_loss / self.start_loss if self.start_loss else math.nan


def _data(device: str, width: int, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, width, generator=gen)
    w = torch.randn(width, 1, generator=gen) / math.sqrt(width)
    y = x @ w + 0.1 * torch.randn(n, 1, generator=gen)
    return x.to(device), y.to(device)


def _model(device: str, width: int, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Linear(width, 2 * width),
        torch.nn.ReLU(),
        torch.nn.Linear(2 * width, 2 * width),
        torch.nn.ReLU(),
        torch.nn.Linear(2 * width, 1),
    )
    return model.to(device)


def _build(family: str, model: torch.nn.Module, precision: str, accumulate: int, steps: int):
    overrides = {"lr": LRS[family]} if family in LRS else {}
    optimizer = build_optimizer(family, model, **overrides)
    return Regime(model, optimizer, total_steps=steps, precision=precision, accumulate=accumulate)


def _train(regime, model, x, y, updates, *, start, accumulate, micro):
    """Run ``updates`` optimizer updates from update ``start``; return the outcomes."""
    outcomes = []
    n = len(x)
    for i in range(start, start + updates):
        for k in range(accumulate):
            lo = ((i * accumulate + k) * micro) % (n - micro + 1)
            xb, yb = x[lo : lo + micro], y[lo : lo + micro]
            with regime.autocast():
                loss = torch.nn.functional.mse_loss(model(xb).float(), yb)
            regime.backward(loss, batch_size=micro)
            outcomes.append(regime.step())
    return outcomes


def _loss(model, x, y) -> float:
    with torch.no_grad():
        return torch.nn.functional.mse_loss(model(x).float(), y).item()


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def run_cell(
    family: str,
    precision: str,
    accumulate: int,
    *,
    device: str,
    width: int,
    steps: int,
    micro: int,
    check_resume: bool = True,
) -> Cell:
    """Train one cell; with ``check_resume`` also stop halfway, reload and compare."""
    x, y = _data(device, width, n=max(8 * micro * accumulate, 512))
    model = _model(device, width)
    regime = _build(family, model, precision, accumulate, steps)
    start = _loss(model, x, y)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    _sync(device)
    began = time.perf_counter()
    outcomes = _train(regime, model, x, y, steps, start=0, accumulate=accumulate, micro=micro)
    _sync(device)
    elapsed = time.perf_counter() - began
    peak = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None
    events = regime.events
    gap = _resume_gap(family, precision, accumulate, device, width, steps, micro, model, x, y)
    return Cell(
        family=family,
        precision=precision,
        accumulate=accumulate,
        start_loss=start,
        final_loss=_loss(model, x, y),
        updates=regime.step_count,
        skipped=sum(o is Outcome.SKIPPED for o in outcomes),
        scaler_skips=sum(e.policy == "grad_scaler" for e in events),
        rollbacks=sum(o is Outcome.ROLLED_BACK for o in outcomes),
        ms_per_update=1000 * elapsed / steps,
        peak_mb=peak,
        resume_gap=gap if check_resume else None,
    )


def _resume_gap(family, precision, accumulate, device, width, steps, micro, straight, x, y):
    """Train half, checkpoint, resume into fresh objects, finish; compare with ``straight``."""
    half = steps // 2
    model = _model(device, width)
    regime = _build(family, model, precision, accumulate, steps)
    _train(regime, model, x, y, half, start=0, accumulate=accumulate, micro=micro)
    state = copy.deepcopy(regime.state_dict())
    resumed = _model(device, width, seed=1)  # different init: the checkpoint must win
    again = _build(family, resumed, precision, accumulate, steps)
    again.load_state_dict(state)
    _train(again, resumed, x, y, steps - half, start=half, accumulate=accumulate, micro=micro)
    return max(
        (a - b).abs().max().item()
        for a, b in zip(resumed.parameters(), straight.parameters(), strict=True)
    )


def run_matrix(
    *,
    device: str,
    families=FAMILIES,
    precisions=PRECISIONS,
    accumulations=ACCUMULATIONS,
    width: int = 64,
    steps: int = 60,
    micro: int = 32,
    check_resume: bool = True,
) -> list[Cell]:
    """Every cell of the matrix; a family whose package is missing is left out."""
    import importlib.util

    cells = []
    for family in families:
        if family in NEEDS and importlib.util.find_spec(NEEDS[family]) is None:
            continue
        for precision in precisions:
            for accumulate in accumulations:
                try:
                    cell = run_cell(
                        family,
                        precision,
                        accumulate,
                        device=device,
                        width=width,
                        steps=steps,
                        micro=micro,
                        check_resume=check_resume,
                    )
                except Exception as error:  # a crashing cell is a result, not an abort
                    cell = _failed(family, precision, accumulate, error)
                cells.append(cell)
    return cells


def _failed(family: str, precision: str, accumulate: int, error: Exception) -> Cell:
    return Cell(
        family=family,
        precision=precision,
        accumulate=accumulate,
        start_loss=math.nan,
        final_loss=math.nan,
        updates=0,
        skipped=0,
        scaler_skips=0,
        rollbacks=0,
        ms_per_update=math.nan,
        peak_mb=None,
        resume_gap=None,
        error=f"{type(error).__name__}: {error}",
    )


def _fmt(value: Any, spec: str) -> str:
    if value is None:
        return "—"
    return format(value, spec)


def table(cells: list[Cell]) -> list[str]:
    rows = [
        "| family | precision | accumulate | loss ratio | updates | skipped (scaler) | "
        "rollbacks | ms/update | peak MB | resume gap |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in cells:
        if c.error:
            rows.append(f"| {c.family} | {c.precision} | {c.accumulate} | error: {c.error} |")
            continue
        rows.append(
            f"| {c.family} | {c.precision} | {c.accumulate} | {c.ratio:.3f} | {c.updates} | "
            f"{c.skipped} ({c.scaler_skips}) | {c.rollbacks} | {c.ms_per_update:.2f} | "
            f"{_fmt(c.peak_mb, '.1f')} | {_fmt(c.resume_gap, '.2g')} |"
        )
    return rows


def section(cells: list[Cell], *, device: str, width: int, steps: int, micro: int) -> list[str]:
    """The RESULTS.md section for one device (between its own markers)."""
    start, end = markers(device)
    where = f"GPU {torch.cuda.get_device_name()}" if device == "cuda" else "CPU, 1 thread"
    ok = [c for c in cells if not c.error]
    trained = sum(c.ratio < 0.75 for c in ok)
    exact = sum(c.resume_gap == 0.0 for c in ok if c.resume_gap is not None)
    return [
        start,
        "",
        f"## Toolbox matrix: optimizer family x precision x accumulation ({where})",
        "",
        f"Date {datetime.date.today()}; torch {torch.__version__}; MLP {width}-{2 * width}-"
        f"{2 * width}-1 on synthetic regression, {steps} updates of {micro}-sample "
        "micro-batches, default policies. Reproduce: "
        f"`python -m benchmarks.gpu_matrix --device {device} --width {width} --steps {steps}`.",
        "",
        *table(cells),
        "",
        f"{trained} of {len(ok)} cells end below 0.75 x their starting loss; "
        f"{exact} of {len(ok)} resume bit-identically (resume gap 0: train half, "
        "checkpoint, load into a freshly built Regime, finish, compare weights with the "
        f"uninterrupted run); {len(cells) - len(ok)} cells raised. 'skipped (scaler)': "
        "skipped updates, and among them the fp16 overflows the GradScaler handled.",
        "",
        end,
    ]


def markers(device: str) -> tuple[str, str]:
    return section_markers("toolbox-matrix" if device == "cpu" else f"toolbox-matrix-{device}")


def write_section(results: Path, lines: list[str], device: str) -> None:
    replace_section(results, *markers(device), lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_matrix")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--width", type=int, default=None, help="64 on cpu, 1024 on cuda")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--micro", type=int, default=None, help="32 on cpu, 256 on cuda")
    parser.add_argument("--results", default="benchmarks/RESULTS.md")
    parser.add_argument("--json", default=None, help="also write the cells as JSON here")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: run this on a GPU machine, or pass --device cpu for a smoke run")
        return 2
    if args.device == "cpu":
        torch.set_num_threads(1)  # steadier timings on a shared machine
    width = args.width or (1024 if args.device == "cuda" else 64)
    micro = args.micro or (256 if args.device == "cuda" else 32)
    cells = run_matrix(device=args.device, width=width, steps=args.steps, micro=micro)
    lines = section(cells, device=args.device, width=width, steps=args.steps, micro=micro)
    print("\n".join(table(cells)))
    write_section(Path(args.results), lines, args.device)
    if args.json:
        import json

        Path(args.json).write_text(json.dumps([asdict(c) for c in cells], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
