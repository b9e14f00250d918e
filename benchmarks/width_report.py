"""Tables, verdicts and plots for ``benchmarks.width_sweep`` (no training in here).

A verdict is computed from the numbers only: a target is called met when the measured
grid shows it, and a best LR that sits on the grid's edge is flagged as censored (the
true optimum may lie beyond it, so "did not move" would be unproven).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.sections import markers

START, END = markers("width")


@dataclass
class Sweep:
    """Per-seed losses per (arm, size, lr); ``axis`` is what varies ("width" or "depth")."""

    name: str
    axis: str
    sizes: tuple[int, ...]
    lrs: tuple[float, ...]
    arms: tuple[str, ...]
    seeds: tuple[int, ...]
    runs: dict[tuple[str, int, float], list[float]] = field(default_factory=dict)
    # a confirmatory re-run at the LR one arm tuned on the smallest size, with more seeds:
    # per size, the per-seed losses (seeds in the same order at every size, so paired)
    confirm: dict[int, list[float]] = field(default_factory=dict)
    confirm_arm: str = "recipe"
    confirm_seeds: tuple[int, ...] = ()

    def trained(self) -> int:
        """Training runs behind the sweep (confirmatory seeds the grid has are reused)."""
        extra = [s for s in self.confirm_seeds if s not in self.seeds] if self.confirm else []
        return sum(len(v) for v in self.runs.values()) + len(extra) * len(self.confirm)

    def loss(self, arm: str, size: int, lr: float) -> float:
        """Mean over seeds; inf when any seed diverged (a diverging LR is not a best LR)."""
        values = self.runs[(arm, size, lr)]
        return math.inf if not all(map(math.isfinite, values)) else sum(values) / len(values)

    def best_lr(self, arm: str, size: int) -> float:
        return min(self.lrs, key=lambda lr: self.loss(arm, size, lr))

    def shift(self, arm: str) -> float:
        """Largest / smallest best LR across sizes (1 = the optimum never moved)."""
        best = [self.best_lr(arm, s) for s in self.sizes]
        return max(best) / min(best)

    def tuned_lr(self, arm: str) -> float:
        """The LR ``arm`` would pick on the smallest size, kept as the size grows."""
        return self.best_lr(arm, self.sizes[0])

    def at_edge(self, arm: str) -> list[int]:
        """Sizes whose best LR is the grid's lowest or highest value (a censored optimum)."""
        edges = (min(self.lrs), max(self.lrs))
        return [s for s in self.sizes if self.best_lr(arm, s) in edges]


def fmt_lr(lr: float) -> str:
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
                fmt_lr(best),
                _loss(result.loss(arm, size, best)),
                _loss(result.loss(arm, size, tuned[arm])),
            ]
        lines.append(f"| {size} | " + " | ".join(cells) + " |")
    lines.append(
        "| **optimum moved** | "
        + " | ".join(f"**{result.shift(arm):.3g}x** | |" for arm in result.arms)
        + " |"
    )
    return lines


def _paired(before: list[float], after: list[float]) -> tuple[float, float]:
    """Mean and standard error of the per-seed change from ``before`` to ``after``."""
    diffs = [b - a for a, b in zip(before, after, strict=True)]
    mean = sum(diffs) / len(diffs)
    if len(diffs) < 2:
        return mean, math.inf
    var = sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1)
    return mean, math.sqrt(var / len(diffs))


def confirm_table(result: Sweep) -> list[str]:
    """Loss at the tuned LR with the confirmatory seeds, and the paired change per step."""
    if not result.confirm:
        return []
    seeds = len(next(iter(result.confirm.values())))
    lines = [
        f"| {result.axis} | {result.confirm_arm}: loss at LR tuned on smallest, mean of "
        f"{seeds} seeds | change from the previous {result.axis} (paired, +- 1 s.e.) |",
        "|---|---|---|",
    ]
    previous: list[float] | None = None
    for size in result.sizes:
        losses = result.confirm[size]
        change = "" if previous is None else "{:+.4f} +- {:.4f}".format(*_paired(previous, losses))
        lines.append(f"| {size} | {_loss(sum(losses) / len(losses))} | {change} |")
        previous = losses
    return lines


def _confirmed_growth(result: Sweep, arm: str) -> str | None:
    """The "loss does not get worse" verdict from the confirmatory seeds (None: no run)."""
    if not result.confirm or arm != result.confirm_arm:
        return None
    means = {s: sum(v) / len(v) for s, v in result.confirm.items()}
    seeds = len(result.confirm[result.sizes[0]])
    worse = []
    for a, b in zip(result.sizes, result.sizes[1:], strict=False):
        if not means[b] <= means[a]:
            mean, se = _paired(result.confirm[a], result.confirm[b])
            worse.append(
                f"{b}: {_loss(means[b])} > {a}: {_loss(means[a])} ({mean:+.4f} +- {se:.4f})"
            )
    head = (
        f"- {result.name}: loss at the LR tuned on the smallest {result.axis} "
        f"({fmt_lr(result.tuned_lr(arm))}), confirmed with {seeds} seeds per {result.axis}, "
    )
    if not worse:
        return head + f"never gets worse as the {result.axis} grows (target met)."
    return head + "gets worse at " + "; ".join(worse) + " (target NOT met)."


def _others(result: Sweep, arm: str) -> str:
    return "; ".join(f"{a}: {result.shift(a):.3g}x" for a in result.arms if a != arm)


def verdict(result: Sweep, arm: str = "recipe") -> list[str]:
    """The targets for ``arm``, checked against the numbers (never claimed beyond them)."""
    tuned = result.best_lr(arm, result.sizes[0])
    losses = [result.loss(arm, s, tuned) for s in result.sizes]
    worse = [
        f"{b}: {_loss(lb)} > {a}: {_loss(la)}"
        for a, la, b, lb in zip(result.sizes, losses, result.sizes[1:], losses[1:], strict=False)
        if lb > la
    ]
    shift = result.shift(arm)
    edge = result.at_edge(arm)
    censored = (
        f" Censored: the best LR sits on the grid's edge at {result.axis}s {edge}, so the "
        "true optimum there may lie beyond the grid."
        if edge
        else ""
    )
    if result.axis == "depth":
        return [
            f"- {result.name}: best LR moves {shift:.3g}x with the {arm} ({_others(result, arm)})"
            f" across depths {result.sizes[0]}-{result.sizes[-1]} (no target: muP is a "
            "width rule and this plain MLP has no residual branches to scale)." + censored
        ]
    met = shift <= 2.0 and not edge
    on_grid = (
        f"- {result.name}: loss at the LR tuned on the smallest {result.axis} ({fmt_lr(tuned)}), "
        f"mean of the grid's {len(result.seeds)} seed(s), "
        + (
            f"never gets worse as the {result.axis} grows"
            if not worse
            else "gets worse at " + "; ".join(worse)
        )
    )
    confirmed = _confirmed_growth(result, arm)
    lines = [
        f"- {result.name}: with the {arm} the best LR moves {shift:.3g}x across "
        f"{result.axis}s {result.sizes[0]}-{result.sizes[-1]} (target <= 2x: "
        f"{'met' if met else 'NOT met'}); {_others(result, arm)}.{censored}",
    ]
    if confirmed is None:
        return [*lines, on_grid + (" (target met)." if not worse else " (target NOT met).")]
    return [*lines, on_grid + " (the confirmatory run below decides).", confirmed]


def plot(result: Sweep, directory: Path) -> list[Path]:
    """Loss against LR, one line per size, one figure per arm."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    paths = []
    values = [result.loss(*key) for key in result.runs]
    finite = sorted(v for v in values if math.isfinite(v))
    top = min(finite[-1], 3 * finite[len(finite) // 2]) if finite else 1.0
    directory.mkdir(parents=True, exist_ok=True)
    for arm in result.arms:
        fig, ax = plt.subplots(figsize=(5.5, 3.8))
        for size in result.sizes:
            ys = [min(result.loss(arm, size, lr), top) for lr in result.lrs]
            ax.plot(result.lrs, ys, marker="o", ms=3, label=f"{result.axis} {size}")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("base learning rate")
        ax.set_ylabel(f"final loss, mean of {len(result.seeds)} seeds (capped)")
        ax.set_title(f"{result.name}: {arm}")
        ax.legend(fontsize=7)
        path = directory / f"{result.name}_{arm}.png"
        fig.savefig(path, dpi=90, bbox_inches="tight")
        plt.close(fig)
        paths.append(path)
    return paths


def write_section(path: Path, text: str) -> None:
    """Replace the marked section (or append it), leaving the rest of the file alone."""
    current = path.read_text() if path.exists() else "# Results\n"
    if START in current and END in current:
        head, rest = current.split(START, 1)
        current = head + text + rest.split(END, 1)[1]
    else:
        current = current.rstrip() + "\n\n" + text + "\n"
    path.write_text(current)
