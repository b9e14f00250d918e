"""Write the benchmark section of RESULTS.md and its plots."""

from __future__ import annotations

import datetime
import math
import platform
import statistics
import subprocess
import textwrap
from collections import defaultdict
from pathlib import Path
from typing import Any

from benchmarks.scoring import R_MAX, TaskScore, performance_profile_scores, score_task
from benchmarks.sections import markers, replace_section
from benchmarks.tasks import TASKS


def _gpu_name() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "unknown"


def _fmt(value: float | None, higher: bool) -> str:
    if value is None or not math.isfinite(value):
        return "—"
    return f"{100 * value:.1f}%" if higher else f"{value:.3f}"


def _commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _heading(records: list[dict[str, Any]], *, quick: bool, device: str, factor: int) -> list[str]:
    """Title and provenance: the seed count is read from the cells themselves, so a
    table's figures always say how many seeds they average."""
    kind = "quick" if quick else "full"
    where = "CPU only" if device == "cpu" else f"GPU {_gpu_name()}, sizes x{factor}"
    seeds = len({r["seed"] for r in records})
    command = "python -m benchmarks.run" + (" --quick" if quick else "") + f" --seeds {seeds}"
    if device != "cpu":
        command += f" --device {device} --factor {factor}"
    return [
        f"## Benchmark suite ({kind} run, {where}, {seeds} seeds per cell)",
        "",
        f"Machine: {platform.machine()}, {platform.processor() or 'cpu'}; {where}; "
        f"date {datetime.date.today()}; commit `{_commit()}`; torch threads 1 per worker. "
        f"Reproduce: `{command}`.",
        "",
    ]


def write(
    records: list[dict[str, Any]],
    methods: list[str],
    tasks: list[str],
    fault_rows: list[dict] | None,
    cost: list[dict],
    *,
    quick: bool,
    results: Path,
    plots: Path,
    missing: list[str],
    device: str = "cpu",
    factor: int = 1,
) -> None:
    by_task: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        by_task[r["task"]].append(r)
    scores = [score_task(t, by_task[t]) for t in tasks if by_task[t]]
    start, end = markers("benchmark" if device == "cpu" else "benchmark-cuda", quick=quick)
    lines = [start, "", *_heading(records, quick=quick, device=device, factor=factor)]
    if missing:
        lines += [f"Not run (package not installed): {', '.join(missing)}.", ""]
    lines += _summary(scores, methods)
    lines += _robustness(scores, methods)
    lines += _speed(scores, methods)
    lines += _per_task(scores, methods)
    if fault_rows:
        lines += _faults(fault_rows)
    lines += _overhead(cost)
    if device != "cpu":
        plots = plots / device
    if quick:
        plots = plots / "quick"  # the committed PNGs are the full run's
    _plots(records, scores, plots)
    lines += [
        f"Plots: `{plots.as_posix()}/final_vs_lr_<task>.png` (final metric against the "
        f"initial LR per method) and `{plots.as_posix()}/curves_<task>.png` (learning curves "
        "with trimtab's events marked).",
        "",
        end,
    ]
    replace_section(results, start, end, lines)


def _summary(scores: list[TaskScore], methods: list[str]) -> list[str]:
    out = [
        "### Tuned best final metric (best LR per method; accuracy: mean over seeds, loss: median)",
        "",
        "| method | " + " | ".join(s.task for s in scores) + " |",
        "|---|" + "---|" * len(scores),
    ]
    for m in methods:
        cells = []
        for s in scores:
            higher = TASKS[s.task].higher_is_better
            value = s.tuned.get(m)
            mark = " ★" if value is not None and value == s.oracle else ""
            cells.append(_fmt(value, higher) + mark)
        out.append(f"| {m} | " + " | ".join(cells) + " |")
    out += [
        "",
        "Accuracy in %, losses as values (lower is better); ★ = the oracle "
        "(best over every method and LR).",
        "",
    ]
    return out


def _robustness(scores: list[TaskScore], methods: list[str]) -> list[str]:
    out = [
        "### LR-robustness: share of grid LRs ending within tolerance of the oracle",
        "",
        "Tolerance: 1 accuracy point, or 5 % relative for losses. Methods that ignore "
        "the LR have one configuration (1.00 or 0.00).",
        "",
        "| method | " + " | ".join(s.task for s in scores) + " | all cells | divergences |",
        "|---|" + "---|" * (len(scores) + 2),
    ]
    for m in methods:
        shares = [s.robustness.get(m) for s in scores]
        known = [x for x in shares if x is not None]
        div = sum(s.divergences.get(m, 0) for s in scores)
        out.append(
            f"| {m} | "
            + " | ".join("—" if x is None else f"{x:.2f}" for x in shares)
            + f" | {statistics.fmean(known):.2f} | {div} |"
            if known
            else f"| {m} |"
        )
    out.append("")
    return out


def _speed(scores: list[TaskScore], methods: list[str]) -> list[str]:
    profile = performance_profile_scores(scores, methods)
    out = [
        "### Steps to target and AlgoPerf-style score",
        "",
        "Target per task: what the best-LR AdamW + warmup-cosine reaches at 75 % of its "
        f"budget. Score: the performance profile integrated over τ ∈ [1, {R_MAX:g}] "
        "(1.0 = fastest on every task; a task whose target is never reached adds 0).",
        "",
        "| method | " + " | ".join(s.task for s in scores) + " | score |",
        "|---|" + "---|" * (len(scores) + 1),
    ]
    for m in methods:
        steps = [s.steps_to_target.get(m, math.inf) for s in scores]
        out.append(
            f"| {m} | "
            + " | ".join(f"{t:.0f}" if math.isfinite(t) else "never" for t in steps)
            + f" | {profile[m]:.3f} |"
        )
    out.append("")
    return out


def _per_task(scores: list[TaskScore], methods: list[str]) -> list[str]:
    out = ["### Per task: oracle, tuned best, gap, best LR", ""]
    for s in scores:
        task = TASKS[s.task]
        higher = task.higher_is_better
        out += [
            f"**{s.task}** — {task.description}; metric {task.metric}; oracle "
            f"{_fmt(s.oracle, higher)}; target {_fmt(s.target, higher)}",
            "",
            "| method | tuned | gap | best LR |",
            "|---|---|---|---|",
        ]
        for m in methods:
            if m not in s.tuned:
                continue
            gap = abs(s.tuned[m] - s.oracle) if math.isfinite(s.tuned[m]) else math.inf
            gap_text = (
                (f"{100 * gap:.1f} pt" if higher else f"{gap:.3f}") if math.isfinite(gap) else "—"
            )
            lr = s.best_lr[m]
            out.append(
                f"| {m} | {_fmt(s.tuned[m], higher)} | {gap_text} | "
                f"{'—' if not lr else f'{lr:g}'} |"
            )
        out.append("")
    return out


def _faults(rows: list[dict]) -> list[str]:
    table: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in rows:
        table[(r["method"], r["fault"])].append(r)
    methods = sorted({r["method"] for r in rows})
    faults = sorted({r["fault"] for r in rows})
    out = [
        "### Fault harness",
        "",
        "Each fault injected at 40 % of a run (AdamW-family methods at lr 1e-3, tasks "
        "width_128 and tabular, every seed), compared with the same run without it. "
        "Cell: divergences / runs; median change of the final accuracy in points; median "
        "steps until the curve is back within 1 point of the clean run.",
        "",
        "| method | " + " | ".join(faults) + " |",
        "|---|" + "---|" * len(faults),
    ]
    for m in methods:
        cells = []
        for f in faults:
            rs = table[(m, f)]
            div = sum(r["diverged"] for r in rs)
            deltas = [r["delta"] for r in rs if r["delta"] is not None]
            rec = statistics.median(r["recovery"] for r in rs)
            delta = f"{100 * statistics.median(deltas):+.1f}" if deltas else "—"
            cells.append(
                f"{div}/{len(rs)}; {delta}; {rec:.0f}"
                if math.isfinite(rec)
                else f"{div}/{len(rs)}; {delta}; never"
            )
        out.append(f"| {m} | " + " | ".join(cells) + " |")
    out.append("")
    return out


def _overhead(cost: list[dict]) -> list[str]:
    out = [
        "### Overhead of a trimtab step",
        "",
        "| model | parameters | plain step | A/A: plain twin / plain (median step) | "
        "default probes / plain (median step; "
        "25-step windows) | trimtab defaults (probes + policies) / plain (median step; "
        "25-step windows) | snapshots kept | snapshot weights | peak RSS plain → trimtab |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    nan = float("nan")
    for c in cost:
        out.append(
            f"| {c['task']} | {c['params']:,} | {c['plain_step_ms']:.2f} ms | "
            f"{c.get('twin_median_ratio', nan):.3f} | "
            f"{c.get('probes_median_ratio', nan):.3f}; {c.get('probes_window_ratio', nan):.3f} | "
            f"{c['median_ratio']:.3f}; {c.get('window_ratio', nan):.3f} | "
            f"{c['snapshots']} | "
            f"{c['snapshot_weight_bytes'] / 1e6:.2f} MB | "
            f"{c['peak_plain_mb']:.0f} → {c['peak_trimtab_mb']:.0f} MB |"
        )
    out += [
        "",
        "The four loops (plain AdamW, a plain twin as the A/A control, the default probe "
        "preset with no policies, the default Regime) take turns on twin models and the "
        "same batches, so load hits them alike. All of them clear the gradients after the "
        "step, as `Regime.step()` does: with the plain loop clearing them before its "
        "forward pass instead, an A/A test of two plain loops measured 1.06-1.10 on "
        "char_lm (the CPU allocator reusing freed gradient memory differently), which "
        "earlier tables counted as trimtab overhead. The median step hides work done on a "
        "cadence (weight copies, snapshots); the window figures count it.",
        "",
        "Snapshots also hold the optimizer state (for AdamW about twice the weights), on the CPU.",
        "",
    ]
    return out


def _plots(records: list[dict], scores: list[TaskScore], folder: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    folder.mkdir(parents=True, exist_ok=True)
    for s in scores:
        higher = TASKS[s.task].higher_is_better
        rs = [r for r in records if r["task"] == s.task]
        fig, ax = plt.subplots(figsize=(7, 4.5))
        grouped: dict[str, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
        for r in rs:
            value = r["final"] if r["final"] is not None and not r["diverged"] else math.nan
            grouped[r["method"]][r["lr"]].append(value)
        palette = plt.get_cmap("tab20")
        scaled = False  # a log axis needs at least one finite point on it
        for index, (method, by_lr) in enumerate(sorted(grouped.items())):
            means = _finite_means(by_lr)
            lrs, ys = list(means), list(means.values())
            if not lrs:
                continue  # named under the plot (_left_off)
            color = palette(index % 20)
            if lrs == [0.0]:
                ax.axhline(ys[0], linestyle="--", linewidth=1, label=method, color=color)
            else:
                scaled = True
                style = "-o" if method.startswith("trimtab") else "-."
                ax.plot(
                    lrs,
                    ys,
                    style,
                    label=method,
                    color=color,
                    linewidth=2 if "trimtab" in method else 1,
                )
        if scaled:
            ax.set_xscale("log")
            if not higher:
                ax.set_yscale("log")
        ax.set_xlabel("initial learning rate")
        ax.set_ylabel(TASKS[s.task].metric)
        ax.set_title(f"{s.task}: final metric against initial LR")
        ax.legend(fontsize=7, ncol=2)
        gone = _left_off(grouped)
        if gone:
            note = "a run diverged at every LR, not drawn: " + ", ".join(gone)
            fig.text(0.01, 0.01, textwrap.fill(note, 120), fontsize=6, va="bottom")
            fig.tight_layout(rect=(0, 0.06, 1, 1))
        else:
            fig.tight_layout()
        fig.savefig(folder / f"final_vs_lr_{s.task}.png", dpi=90)
        plt.close(fig)
        _curve_plot(s, rs, folder, plt)


def _finite_means(by_lr: dict[float, list[float]]) -> dict[float, float]:
    """Mean final per LR, for the LRs where no seed diverged (a diverged run is NaN)."""
    means = {lr: statistics.fmean(by_lr[lr]) for lr in sorted(by_lr)}
    return {lr: y for lr, y in means.items() if math.isfinite(y)}


def _left_off(grouped: dict[str, dict[float, list[float]]]) -> list[str]:
    """Methods with a diverged run at every LR: nothing of theirs can be drawn."""
    return [m for m, by_lr in sorted(grouped.items()) if not _finite_means(by_lr)]


def _curve_plot(score: TaskScore, records: list[dict], folder: Path, plt) -> None:
    fig, ax = plt.subplots(figsize=(7, 4))
    for method in ("adamw", "adamw_cosine", "trimtab"):
        lr = score.best_lr.get(method)
        run = next(
            (r for r in records if r["method"] == method and r["lr"] == lr and r["seed"] == 0), None
        )
        if run is None:
            continue
        steps, values = zip(*run["curve"], strict=True)
        ax.plot(steps, values, label=f"{method} (lr {lr:g})")
        if method == "trimtab":
            for event in run["events"]:
                color = {"rollback": "red", "skip": "orange"}.get(event["kind"], "gray")
                ax.axvline(event["step"], color=color, alpha=0.4, linewidth=1)
    ax.set_xlabel("step")
    ax.set_ylabel(TASKS[score.task].metric)
    ax.set_title(
        f"{score.task}: curves at each method's best LR; trimtab events as lines "
        "(red rollback, orange skip, gray knob change)",
        fontsize=8,
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(folder / f"curves_{score.task}.png", dpi=90)
    plt.close(fig)
