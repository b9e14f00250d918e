"""Width transfer: tune the base LR on a small model, does it stay best on a wide one?

``python -m benchmarks.width_sweep [--quick]`` trains, for each LR of a factor-2 grid:

- an MLP on sklearn digits at 5 widths spanning 16x (32 ... 512) and 3 depths (2, 4, 8
  hidden layers: 4x) at width 128;
- a small causal transformer (``benchmarks.width_lm.WidthLM``: ``_TinyLM``'s architecture,
  2 blocks, 4 heads, with its attention scale exposed; characters of stdlib source) at 5
  widths spanning 16x (16 ... 256);

each with the standard parametrization (PyTorch init, one AdamW LR for every parameter,
weight decay 0.01) and with trimtab's recipe (``init_`` + ``recipe``: muP per-layer LRs
around base width 16/32, decay by timescale, size-aware clip and warmup; on the
transformer also muP's attention scale, ``trimtab.attention_scale``), and on the MLP
also with the ``mup`` package (``MuReadout`` + ``MuAdamW``) when it is installed. Both
arms use the same warmup + cosine schedule shape and clip the global gradient norm
(1.0 standard, the recipe's own threshold). The full run writes the "Width transfer"
section of RESULTS.md and the plots in ``benchmarks/plots/width_sweep/``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import multiprocessing as mp
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

import trimtab
from benchmarks.tasks import _corpus, _digits
from benchmarks.width_lm import INIT_ACTIVATIONS, WidthLM
from benchmarks.width_report import (
    END,
    START,
    Sweep,
    confirm_table,
    fmt_lr,
    plot,
    table,
    verdict,
    write_section,
)

PLOTS = Path("benchmarks/plots/width_sweep")
MLP_BASE, LM_BASE = 32, 16


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
    """(optimizer, clip threshold, warmup steps) for one arm; the recipe arm inits first."""
    warmup = max(1, round(0.02 * steps))
    if arm == "recipe":
        init_kw = recipe_kw.pop("init_kw", {})
        trimtab.init_(model, skip=("",), **init_kw)
        opt, report = trimtab.recipe(model, lr=lr, total_steps=steps, base_width=base, **recipe_kw)
        return opt, report.max_grad_norm, report.warmup_steps
    if arm == "mup":
        from mup import MuAdamW

        return MuAdamW(model.parameters(), lr=lr, weight_decay=0.01), 1.0, warmup
    return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01), 1.0, warmup


@dataclass(frozen=True)
class LMArm:
    """One way to build and train the transformer (the ablations vary one thing each)."""

    recipe: bool
    mup_attention: bool = False  # logits x attention_scale(head_dim, base_head_dim)
    zero_query: bool = False  # Tensor Programs V, App. D: start the query projection at 0
    readout_multiplier: float = 1.0


LM_ARMS = {
    "standard": LMArm(recipe=False),
    "recipe": LMArm(recipe=True, mup_attention=True),
    # ablations: python -m benchmarks.width_sweep --lm-arms recipe recipe_sqrt_attention ...
    "recipe_sqrt_attention": LMArm(recipe=True),
    "recipe_zero_query": LMArm(recipe=True, mup_attention=True, zero_query=True),
}
HEADS = 4


def _lm_model(arm: LMArm, vocab: int, width: int, context: int) -> WidthLM:
    scale = None
    if arm.mup_attention:
        scale = trimtab.attention_scale(width // HEADS, base_head_dim=LM_BASE // HEADS)
    return WidthLM(vocab, width, context, heads=HEADS, scale=scale)


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
    """Validation loss of ``WidthLM`` after ``steps`` updates of 16 x 32 characters."""
    data, vocab = _lm_data()
    split = int(0.9 * len(data))
    train, val = data[:split], data[split:]
    torch.manual_seed(seed)
    how = LM_ARMS[arm]
    model = _lm_model(how, vocab, width, context)
    if how.recipe:
        opt, clip, warmup = _optimizer(
            "recipe",
            model,
            lr,
            steps,
            LM_BASE,
            roles={"position": "embedding"},
            readout_multiplier=how.readout_multiplier,
            init_kw={"activations": INIT_ACTIVATIONS, "depth": len(model.blocks)},
        )
        if how.zero_query:
            with torch.no_grad():
                for block in model.blocks:
                    block.attn.qkv.weight[:width].zero_()
    else:
        opt, clip, warmup = _optimizer("standard", model, lr, steps, LM_BASE)

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


# -- the plan: which cells to train ------------------------------------------------------
@dataclass(frozen=True)
class Plan:
    """Sizes, LR grids, steps and seeds of one sweep run (``FULL``, ``QUICK`` or a test's)."""

    widths: tuple[int, ...]
    depths: tuple[int, ...]
    lm_widths: tuple[int, ...]
    lrs: tuple[float, ...]
    lm_lrs: tuple[float, ...]
    mlp_steps: int
    lm_steps: int
    seeds: tuple[int, ...]
    lm_seeds: tuple[int, ...]
    # seeds of the confirmatory re-run at the recipe's LR tuned on the smallest width
    # (width sweeps only): a width-to-width loss change smaller than the spread between
    # seeds cannot be read from the grid's few seeds
    confirm_seeds: tuple[int, ...] = ()


FULL = Plan(
    widths=(32, 64, 128, 256, 512),
    depths=(2, 4, 8),
    lm_widths=(16, 32, 64, 128, 256),
    lrs=tuple(2.0**k for k in range(-12, 1)),
    lm_lrs=tuple(2.0**k for k in range(-12, 0)),  # to 0.5: no optimum on the edge
    mlp_steps=300,
    lm_steps=200,
    seeds=(0, 1),
    lm_seeds=(0, 1),
    confirm_seeds=tuple(range(24)),
)
QUICK = Plan(
    widths=(32, 128, 512),
    depths=(2, 8),
    lm_widths=(16, 64),
    lrs=tuple(4.0**k for k in range(-6, 1)),
    lm_lrs=tuple(4.0**k for k in (-5, -4, -3)),
    mlp_steps=80,
    lm_steps=30,
    seeds=(0,),
    lm_seeds=(0,),
)

Cell = tuple[str, str, int, float, int, int]  # sweep, arm, size, lr, seed, steps


SWEEPS = ("mlp_width", "mlp_depth", "transformer_width")


def cells(
    plan: Plan,
    arms: tuple[str, ...],
    *,
    lm_arms: tuple[str, ...] = ("standard", "recipe"),
    sweeps: tuple[str, ...] = SWEEPS,
) -> dict[str, list[Cell]]:
    """Every training run of the plan, per sweep (``arms`` for the MLP ones)."""
    unknown = sorted(set(lm_arms) - set(LM_ARMS)) + sorted(set(sweeps) - set(SWEEPS))
    if unknown:
        raise ValueError(f"unknown {unknown}; transformer arms {list(LM_ARMS)}, sweeps {SWEEPS}")
    grids = {
        "mlp_width": (arms, plan.widths, plan.lrs, plan.seeds, plan.mlp_steps),
        "mlp_depth": (arms, plan.depths, plan.lrs, plan.seeds, plan.mlp_steps),
        "transformer_width": (lm_arms, plan.lm_widths, plan.lm_lrs, plan.lm_seeds, plan.lm_steps),
    }
    return {
        name: [
            (name, arm, size, lr, seed, steps)
            for arm in grid_arms
            for size in sizes
            for lr in lrs
            for seed in seeds
        ]
        for name, (grid_arms, sizes, lrs, seeds, steps) in grids.items()
        if name in sweeps
    }


def run_cell(cell: Cell) -> float:
    """Final loss of one training run (inf if it diverged)."""
    name, arm, size, lr, seed, steps = cell
    if name == "transformer_width":
        return run_lm(arm, size, lr, steps, seed)
    width, depth = (128, size) if name == "mlp_depth" else (size, 2)
    return run_mlp(arm, width, depth, lr, steps, seed)


def _key(cell: Cell) -> str:
    name, arm, size, lr, seed, steps = cell
    return f"{name}__{arm}__{size}__{lr:.6g}__{seed}__{steps}"


def _work(job: tuple[Cell, str | None]) -> tuple[Cell, float, float]:
    cell, path = job
    torch.set_num_threads(1)  # one core per worker: steadier on a shared machine
    started = time.perf_counter()
    loss = run_cell(cell)
    seconds = time.perf_counter() - started
    if path is not None:
        Path(path).write_text(json.dumps({"cell": list(cell), "loss": loss, "seconds": seconds}))
    return cell, loss, seconds


Done = dict[Cell, tuple[float, float, bool]]  # loss, training seconds, read from the cache


def execute(todo: list[Cell], *, out: Path | None, workers: int) -> Done:
    """(loss, seconds, cached) per cell; cells cached under ``out`` are read, not rerun."""
    done: Done = {}
    jobs: list[tuple[Cell, str | None]] = []
    for cell in todo:
        path = None if out is None else out / f"{_key(cell)}.json"
        if path is not None and path.exists():
            record = json.loads(path.read_text())
            done[cell] = (float(record["loss"]), float(record["seconds"]), True)
        else:
            jobs.append((cell, None if path is None else str(path)))
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        print(f"{len(done)} cells cached, {len(jobs)} to run on {workers} workers", flush=True)
    if workers <= 1:
        results = map(_work, jobs)
    else:
        pool = mp.get_context("spawn").Pool(workers)
        results = pool.imap_unordered(_work, jobs)
    started = time.perf_counter()
    for i, (cell, loss, seconds) in enumerate(results, start=1):
        done[cell] = (loss, seconds, False)
        if out is not None and (i % 25 == 0 or i == len(jobs)):
            print(f"  {i}/{len(jobs)} cells, {time.perf_counter() - started:.0f} s", flush=True)
    if workers > 1:
        pool.close()
        pool.join()
    return done


def measure(
    plan: Plan,
    arms: tuple[str, ...],
    *,
    lm_arms: tuple[str, ...] = ("standard", "recipe"),
    sweeps: tuple[str, ...] = SWEEPS,
    out: Path | None = None,
    workers: int = 1,
) -> tuple[list[Sweep], tuple[float, float]]:
    """The sweeps of ``plan``, and the training seconds of their cells: (summed, cached)."""
    per_sweep = cells(plan, arms, lm_arms=lm_arms, sweeps=sweeps)
    done = execute([c for group in per_sweep.values() for c in group], out=out, workers=workers)
    axes = {"mlp_width": "width", "mlp_depth": "depth", "transformer_width": "width"}
    results = []
    for name, group in per_sweep.items():
        result = Sweep(
            name,
            axes[name],
            tuple(sorted({c[2] for c in group})),
            tuple(sorted({c[3] for c in group})),
            tuple(dict.fromkeys(c[1] for c in group)),
            tuple(sorted({c[4] for c in group})),
        )
        for cell in group:
            result.runs.setdefault(cell[1:4], []).append(done[cell][0])
        results.append(result)
    for result in results:
        if result.axis != "width" or not plan.confirm_seeds or "recipe" not in result.arms:
            continue
        steps = plan.lm_steps if result.name == "transformer_width" else plan.mlp_steps
        tuned = result.tuned_lr("recipe")
        confirm = [
            (result.name, "recipe", size, tuned, seed, steps)
            for size in result.sizes
            for seed in plan.confirm_seeds
        ]
        done.update(execute(confirm, out=out, workers=workers))
        for cell in confirm:
            result.confirm.setdefault(cell[2], []).append(done[cell][0])
        result.confirm_seeds = plan.confirm_seeds
    summed = sum(seconds for _, seconds, _ in done.values())
    return results, (summed, sum(seconds for _, seconds, cached in done.values() if cached))


# -- the RESULTS.md section --------------------------------------------------------------
def section(
    results: list[Sweep],
    *,
    plan: Plan,
    seconds: tuple[float, float],
    wall: float,
    workers: int,
    mup: str,
) -> str:
    day = datetime.date.today().isoformat()
    lines = [
        START,
        "",
        "## Width transfer",
        "",
        f"`python -m benchmarks.width_sweep` ({day}, CPU, one thread per run: "
        f"{sum(r.trained() for r in results)} training runs, "
        f"{seconds[0] / 60:.1f} min summed, {workers} at a time on a shared 2-core machine; "
        f"the last invocation took {wall / 60:.1f} min wall and read "
        f"{seconds[1] / 60:.1f} min of runs from the cell cache). "
        "Tune the base LR on the smallest model, then grow it: does the best LR stay put, "
        "and does the loss at the tuned LR improve with width? Arms: *standard* (PyTorch "
        "init, one AdamW LR, wd 0.01, clip 1.0), *recipe* (`trimtab.init_` + "
        "`trimtab.recipe`: muP LRs per layer around base width 32 (MLP) / 16 (transformer), "
        "weight decay by timescale (tau = the run), the recipe's clip and warmup), and "
        f"*mup* (the `mup` package: `MuReadout` + `MuAdamW`, MLP only; {mup}). Same warmup "
        "+ cosine shape for all. LR grid: factor 2, "
        f"{fmt_lr(min(plan.lrs))}-{fmt_lr(max(plan.lrs))} (MLP), "
        f"{fmt_lr(min(plan.lm_lrs))}-{fmt_lr(max(plan.lm_lrs))} (transformer). MLP: sklearn "
        f"digits, loss on the full set after {plan.mlp_steps} steps of batch 64, mean of "
        f"{len(plan.seeds)} seeds. Transformer: `WidthLM` of `benchmarks/width_lm.py` "
        "(`_TinyLM`'s architecture: 2 blocks, 4 heads, pre-norm, 4x ReLU MLP; the recipe "
        "arm also scales attention logits by `trimtab.attention_scale(head_dim, "
        "base_head_dim=4)`, muP's 1/head_dim), validation loss after "
        f"{plan.lm_steps} steps of 16 x 32 characters, mean of {len(plan.lm_seeds)} "
        "seed(s) per cell before picking the best LR."
        + (
            f" Then a confirmatory run: the recipe at the LR it tuned on the smallest width, "
            f"{len(plan.confirm_seeds)} seeds per width (the same seeds at every width, so "
            "the change from one width to the next is paired), because the grid's seeds "
            "differ by more than neighbouring widths do."
            if plan.confirm_seeds
            else ""
        ),
        "",
    ]
    for result in results:
        lines += [f"### {result.name}", "", *table(result), ""]
        if result.confirm:
            lines += [*confirm_table(result), ""]
        links = ", ".join(
            f"[{arm}](plots/width_sweep/{result.name}_{arm}.png)" for arm in result.arms
        )
        lines += [f"Plots: {links}", ""]
    lines += ["### Targets", ""]
    for result in results:
        lines += verdict(result)
    lines += ["", END]
    return "\n".join(lines)


def _mup_status() -> str:
    try:
        import mup  # noqa: F401
    except ImportError:
        return "not installed: `pip install mup` failed or was not run, so no mup arm"
    return "installed from PyPI"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.width_sweep")
    parser.add_argument("--quick", action="store_true", help="fewer sizes, short runs, no write")
    parser.add_argument("--workers", type=int, default=2, help="parallel runs, 1 thread each")
    parser.add_argument("--out", default="benchmarks/out/width_sweep", help="cache of cells")
    parser.add_argument("--results", default="benchmarks/RESULTS.md")
    parser.add_argument("--plots", default=str(PLOTS), help="folder for the PNGs")
    parser.add_argument("--sweeps", nargs="*", default=list(SWEEPS), choices=SWEEPS)
    parser.add_argument(
        "--lm-arms",
        nargs="*",
        default=["standard", "recipe"],
        choices=list(LM_ARMS),
        help="transformer arms (ablations print only: RESULTS.md is written for the default)",
    )
    parser.add_argument(
        "--lm-lrs", nargs="*", type=float, help="transformer LR grid (ablations: print only)"
    )
    args = parser.parse_args(argv)
    started = time.perf_counter()
    mup = _mup_status()
    arms = ("standard", "recipe") + (("mup",) if mup.startswith("installed") else ())
    plan = QUICK if args.quick else FULL
    if args.lm_lrs:
        plan = replace(plan, lm_lrs=tuple(sorted(args.lm_lrs)))
    results, seconds = measure(
        plan,
        arms,
        lm_arms=tuple(args.lm_arms),
        sweeps=tuple(args.sweeps),
        out=Path(args.out),
        workers=args.workers,
    )
    wall = time.perf_counter() - started
    for result in results:
        print(f"\n{result.name}")
        print("\n".join(table(result) + confirm_table(result)))
    print("\n".join(line for r in results for line in verdict(r)))
    print(f"{wall:.0f} s wall; training summed {seconds[0]:.0f} s, {seconds[1]:.0f} s cached")
    for result in results:
        if result.name == "transformer_width":
            for arm in result.arms[2:]:
                print("\n".join(verdict(result, arm)))
    default = list(SWEEPS) == args.sweeps and args.lm_arms == ["standard", "recipe"]
    default = default and not args.lm_lrs
    if not args.quick and default:
        for result in results:
            plot(result, Path(args.plots))
        text = section(
            results, plan=plan, seconds=seconds, wall=wall, workers=args.workers, mup=mup
        )
        write_section(Path(args.results), text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
