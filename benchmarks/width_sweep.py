"""Width transfer: tune the base LR on a small model, does it stay best on a wide one?

``python -m benchmarks.width_sweep [--quick]`` trains, for each LR of a factor-2 grid:

- an MLP on sklearn digits at 5 widths spanning 16x (32 ... 512) and 3 depths (2, 4, 8
  hidden layers: 4x) at width 128;
- the small causal transformer of ``benchmarks.tasks`` (``_TinyLM``, 2 blocks, 4 heads,
  characters of stdlib source) at 5 widths spanning 16x (16 ... 256);

each with the standard parametrization (PyTorch init, one AdamW LR for every parameter,
weight decay 0.01) and with trimtab's recipe (``init_`` + ``recipe``: muP per-layer LRs
around base width 16/32, decay by timescale, size-aware clip and warmup), and on the MLP
also with the ``mup`` package (``MuReadout`` + ``MuAdamW``) when it is installed. Both
arms use the same warmup + cosine schedule shape and clip the global gradient norm
(1.0 standard, the recipe's own threshold). The full run writes the "Width transfer"
section of RESULTS.md and the plots in ``benchmarks/plots/width_sweep/``.
"""

from __future__ import annotations

import argparse
import datetime
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

import trimtab
from benchmarks.tasks import _corpus, _digits, _TinyLM

START, END = "<!-- width:start -->", "<!-- width:end -->"
PLOTS = Path("benchmarks/plots/width_sweep")
MLP_BASE, LM_BASE = 32, 16


@dataclass
class Sweep:
    """Loss per (arm, size, lr); ``axis`` is what varies ("width" or "depth")."""

    name: str
    axis: str
    sizes: tuple[int, ...]
    lrs: tuple[float, ...]
    arms: tuple[str, ...]
    loss: dict[tuple[str, int, float], float] = field(default_factory=dict)

    def best_lr(self, arm: str, size: int) -> float:
        return min(self.lrs, key=lambda lr: self.loss[(arm, size, lr)])

    def shift(self, arm: str) -> float:
        """Largest / smallest best LR across sizes (1 = the optimum never moved)."""
        best = [self.best_lr(arm, s) for s in self.sizes]
        return max(best) / min(best)


# -- models and optimizers -------------------------------------------------------------
def _mlp(width: int, depth: int, readout: Callable[[int, int], nn.Module] = nn.Linear):
    layers: list[nn.Module] = [nn.Linear(64, width), nn.ReLU()]
    for _ in range(depth - 1):
        layers += [nn.Linear(width, width), nn.ReLU()]
    return nn.Sequential(*layers, readout(width, 10))


def _mup_mlp(width: int, depth: int) -> nn.Module:
    from mup import MuReadout, set_base_shapes

    def head(a: int, b: int) -> nn.Module:
        return MuReadout(a, b, readout_zero_init=True)

    model = _mlp(width, depth, head)
    set_base_shapes(model, _mlp(MLP_BASE, depth, head), delta=_mlp(2 * MLP_BASE, depth, head))
    return model


def _optimizer(arm: str, model: nn.Module, lr: float, steps: int, base: int, **recipe_kw):
    """(optimizer, clip threshold, warmup steps) for one arm."""
    warmup = max(1, round(0.02 * steps))
    if arm == "recipe":
        trimtab.init_(model, skip=("",))
        opt, report = trimtab.recipe(model, lr=lr, total_steps=steps, base_width=base, **recipe_kw)
        return opt, report.max_grad_norm, report.warmup_steps
    if arm == "mup":
        from mup import MuAdamW

        return MuAdamW(model.parameters(), lr=lr, weight_decay=0.01), 1.0, warmup
    return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01), 1.0, warmup


def _train(model, opt, clip: float, warmup: int, steps: int, batch, loss_fn) -> bool:
    """Warmup + cosine on every group's base LR; False when the loss went non-finite."""
    bases = [g["lr"] for g in opt.param_groups]
    for step in range(steps):
        if step < warmup:
            factor = (step + 1) / warmup
        else:
            factor = 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(steps - warmup, 1)))
        for group, base in zip(opt.param_groups, bases, strict=True):
            group["lr"] = base * factor
        loss = loss_fn(model, batch(step))
        if not torch.isfinite(loss):
            return False
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
    return True


# -- tasks -----------------------------------------------------------------------------
@cache
def _digits_data() -> tuple[torch.Tensor, torch.Tensor]:
    return _digits()


def run_mlp(arm: str, width: int, depth: int, lr: float, steps: int, seed: int) -> float:
    """Loss on the whole digits set after ``steps`` updates of batch 64 (inf if diverged)."""
    x, y = _digits_data()
    torch.manual_seed(seed)
    model = _mup_mlp(width, depth) if arm == "mup" else _mlp(width, depth)
    opt, clip, warmup = _optimizer(arm, model, lr, steps, MLP_BASE)
    g = torch.Generator().manual_seed(seed)
    order = [torch.randperm(len(x), generator=g) for _ in range(steps * 64 // len(x) + 1)]
    flat = torch.cat(order)

    def batch(step: int):
        idx = flat[step * 64 : (step + 1) * 64]
        return x[idx], y[idx]

    def loss_fn(m, b):
        return F.cross_entropy(m(b[0]), b[1])

    if not _train(model, opt, clip, warmup, steps, batch, loss_fn):
        return math.inf
    with torch.no_grad():
        final = F.cross_entropy(model(x), y).item()
    return final if math.isfinite(final) else math.inf


@cache
def _lm_data() -> tuple[torch.Tensor, int]:
    text = _corpus()
    vocab = sorted(set(text))
    index = {c: i for i, c in enumerate(vocab)}
    return torch.tensor([index[c] for c in text], dtype=torch.long), len(vocab)


def run_lm(arm: str, width: int, lr: float, steps: int, seed: int, context: int = 32) -> float:
    """Validation loss of ``_TinyLM`` after ``steps`` updates of 16 x 32 characters."""
    data, vocab = _lm_data()
    split = int(0.9 * len(data))
    train, val = data[:split], data[split:]
    torch.manual_seed(seed)
    model = _TinyLM(vocab, width=width, context=context)
    opt, clip, warmup = _optimizer(arm, model, lr, steps, LM_BASE, roles={"position": "embedding"})

    def windows(source: torch.Tensor, starts: torch.Tensor):
        x = torch.stack([source[s : s + context] for s in starts])
        return x, torch.stack([source[s + 1 : s + context + 1] for s in starts])

    def batch(step: int):
        g = torch.Generator().manual_seed(seed * 100003 + step)
        return windows(train, torch.randint(len(train) - context - 1, (16,), generator=g))

    def loss_fn(m, b):
        return F.cross_entropy(m(b[0]).flatten(0, 1), b[1].flatten())

    if not _train(model, opt, clip, warmup, steps, batch, loss_fn):
        return math.inf
    g = torch.Generator().manual_seed(12345)
    held = windows(val, torch.randint(len(val) - context - 1, (64,), generator=g))
    with torch.no_grad():
        final = loss_fn(model, held).item()
    return final if math.isfinite(final) else math.inf


def sweep(name: str, axis: str, sizes, lrs, arms, run: Callable[[str, int, float], float]) -> Sweep:
    result = Sweep(name, axis, tuple(sizes), tuple(lrs), tuple(arms))
    for arm in arms:
        for size in sizes:
            for lr in lrs:
                result.loss[(arm, size, lr)] = run(arm, size, lr)
    return result


# -- report ----------------------------------------------------------------------------
def _fmt(lr: float) -> str:
    return f"{lr:.2g}"


def _loss(value: float) -> str:
    return "div." if not math.isfinite(value) else f"{value:.3f}"


def table(result: Sweep) -> list[str]:
    """Best LR per size per arm, then the loss at the LR each arm tuned on the smallest."""
    head = f"| {result.axis} | " + " | ".join(
        f"{arm}: best LR | {arm}: loss at best | {arm}: loss at LR tuned on smallest"
        for arm in result.arms
    )
    lines = [head + " |", "|---" * (1 + 3 * len(result.arms)) + "|"]
    tuned = {arm: result.best_lr(arm, result.sizes[0]) for arm in result.arms}
    for size in result.sizes:
        cells = []
        for arm in result.arms:
            best = result.best_lr(arm, size)
            cells += [
                _fmt(best),
                _loss(result.loss[(arm, size, best)]),
                _loss(result.loss[(arm, size, tuned[arm])]),
            ]
        lines.append(f"| {size} | " + " | ".join(cells) + " |")
    lines.append(
        "| **optimum moved** | "
        + " | ".join(f"**{result.shift(arm):.3g}x** | |" for arm in result.arms)
        + " |"
    )
    return lines


def verdict(result: Sweep) -> list[str]:
    """The targets, checked against the numbers (never claimed beyond them)."""
    lines = []
    tuned = result.best_lr("recipe", result.sizes[0])
    losses = [result.loss[("recipe", s, tuned)] for s in result.sizes]
    worse = [
        f"{b}: {_loss(lb)} > {a}: {_loss(la)}"
        for (a, la), (b, lb) in zip(
            zip(result.sizes, losses, strict=True),
            zip(result.sizes[1:], losses[1:], strict=True),
            strict=False,
        )
        if lb > la
    ]
    shift = result.shift("recipe")
    if result.axis == "depth":
        return [
            f"- {result.name}: best LR moves {shift:.3g}x with the recipe, "
            f"{result.shift('standard'):.3g}x standard"
            + (f", {result.shift('mup'):.3g}x mup" if "mup" in result.arms else "")
            + f" across depths {result.sizes[0]}-{result.sizes[-1]} (no target: muP is a "
            "width rule and this plain MLP has no residual branches to scale)."
        ]
    lines.append(
        f"- {result.name}: with the recipe the best LR moves {shift:.3g}x across "
        f"{result.axis}s {result.sizes[0]}-{result.sizes[-1]} (target <= 2x: "
        f"{'met' if shift <= 2.0 else 'NOT met'}); standard: {result.shift('standard'):.3g}x"
        + (f"; mup package: {result.shift('mup'):.3g}x" if "mup" in result.arms else "")
        + "."
    )
    lines.append(
        f"- {result.name}: loss at the LR tuned on the smallest {result.axis} ({_fmt(tuned)}) "
        + (
            "never gets worse as the " + result.axis + " grows (target met)."
            if not worse
            else "gets worse at " + "; ".join(worse) + " (target NOT met)."
        )
    )
    return lines


def plot(result: Sweep, directory: Path) -> list[Path]:
    """Loss against LR, one line per size, one figure per arm."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    paths = []
    finite = [v for v in result.loss.values() if math.isfinite(v)]
    top = min(max(finite), 3 * sorted(finite)[len(finite) // 2]) if finite else 1.0
    for arm in result.arms:
        fig, ax = plt.subplots(figsize=(5.5, 3.8))
        for size in result.sizes:
            ys = [min(result.loss[(arm, size, lr)], top) for lr in result.lrs]
            ax.plot(result.lrs, ys, marker="o", ms=3, label=f"{result.axis} {size}")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("base learning rate")
        ax.set_ylabel("final loss (capped)")
        ax.set_title(f"{result.name}: {arm}")
        ax.legend(fontsize=7)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{result.name}_{arm}.png"
        fig.savefig(path, dpi=90, bbox_inches="tight")
        plt.close(fig)
        paths.append(path)
    return paths


def section(results: list[Sweep], *, steps: dict[str, int], seconds: float, mup: str) -> str:
    day = datetime.date.today().isoformat()
    lines = [
        START,
        "",
        "## Width transfer",
        "",
        f"`python -m benchmarks.width_sweep` ({day}, CPU, {seconds / 60:.1f} min). Tune the "
        "base LR on the smallest model, then grow it: does the best LR stay put, and does "
        "the loss at the tuned LR improve with width? Arms: *standard* (PyTorch init, one "
        "AdamW LR, wd 0.01, clip 1.0), *recipe* (`trimtab.init_` + `trimtab.recipe`: muP "
        "LRs per layer around base width 32 (MLP) / 16 (transformer), weight decay by "
        "timescale (tau = the run), the recipe's clip and warmup), and *mup* (the `mup` "
        f"package: `MuReadout` + `MuAdamW`, MLP only; {mup}). Same warmup + cosine shape "
        "for all. LR grid: factor 2. MLP: sklearn digits, loss on the full set after "
        f"{steps['mlp']} steps of batch 64, mean of 2 seeds. Transformer: `_TinyLM` of "
        f"`benchmarks/tasks.py` (2 blocks, 4 heads), validation loss after {steps['lm']} "
        "steps of 16 x 32 characters, 1 seed.",
        "",
    ]
    for result in results:
        lines += [f"### {result.name}", "", *table(result), ""]
        lines += [
            "Plots: "
            + ", ".join(
                f"[{arm}](plots/width_sweep/{result.name}_{arm}.png)" for arm in result.arms
            ),
            "",
        ]
    lines += ["### Targets", ""]
    for result in results:
        lines += verdict(result)
    lines += ["", END]
    return "\n".join(lines)


def write_section(path: Path, text: str) -> None:
    """Replace the marked section (or append it), leaving the rest of the file alone."""
    current = path.read_text() if path.exists() else "# Results\n"
    if START in current and END in current:
        head, rest = current.split(START, 1)
        current = head + text + rest.split(END, 1)[1]
    else:
        current = current.rstrip() + "\n\n" + text + "\n"
    path.write_text(current)


def _mup_status() -> str:
    try:
        import mup  # noqa: F401
    except ImportError:
        return "not installed: `pip install mup` failed or was not run, so no mup arm"
    return "installed from PyPI"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.width_sweep")
    parser.add_argument("--quick", action="store_true", help="3 widths, short runs, no write")
    parser.add_argument("--results", default="benchmarks/RESULTS.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    started = time.perf_counter()
    mup = _mup_status()
    arms = ("standard", "recipe") + (("mup",) if mup.startswith("installed") else ())
    if args.quick:
        widths, lm_widths, depths = (32, 128, 512), (16, 64), (2, 8)
        lrs, lm_lrs, steps, seeds = (
            [4.0**k for k in range(-6, 1)],
            [4.0**k for k in (-5, -4, -3)],
            {"mlp": 80, "lm": 30},
            (0,),
        )
    else:
        widths, lm_widths, depths = (32, 64, 128, 256, 512), (16, 32, 64, 128, 256), (2, 4, 8)
        lrs = [2.0**k for k in range(-12, 1)]
        lm_lrs = [2.0**k for k in range(-12, -3)]
        steps, seeds = {"mlp": 300, "lm": 200}, (0, 1)

    def mlp_run(depth_axis: bool):
        def run(arm: str, size: int, lr: float) -> float:
            width, depth = (128, size) if depth_axis else (size, 2)
            values = [run_mlp(arm, width, depth, lr, steps["mlp"], s) for s in seeds]
            return sum(values) / len(values)

        return run

    results = [
        sweep("mlp_width", "width", widths, lrs, arms, mlp_run(False)),
        sweep("mlp_depth", "depth", depths, lrs, arms, mlp_run(True)),
        sweep(
            "transformer_width",
            "width",
            lm_widths,
            lm_lrs,
            ("standard", "recipe"),
            lambda arm, w, lr: run_lm(arm, w, lr, steps["lm"], 0),
        ),
    ]
    seconds = time.perf_counter() - started
    for result in results:
        print(f"\n{result.name}")
        print("\n".join(table(result)))
    print("\n".join(line for r in results for line in verdict(r)))
    print(f"{seconds:.0f} s")
    if not args.quick:
        for result in results:
            plot(result, PLOTS)
        write_section(Path(args.results), section(results, steps=steps, seconds=seconds, mup=mup))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
