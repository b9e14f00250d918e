"""Turn cell records into the suite's figures: oracle, tuned best, LR-robustness,
steps-to-target and an AlgoPerf-style performance-profile score.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from benchmarks.tasks import TASKS

R_MAX = 4.0


def _worst(higher: bool) -> float:
    return 0.0 if higher else math.inf


def _value(record: dict[str, Any], higher: bool) -> float:
    final = record["final"]
    return _worst(higher) if record["diverged"] or final is None else float(final)


def _better(a: float, b: float, higher: bool) -> bool:
    return a > b if higher else a < b


@dataclass
class TaskScore:
    task: str
    oracle: float
    tuned: dict[str, float]  # method -> best seed-mean final over its LRs
    best_lr: dict[str, float | None]
    robustness: dict[str, float]  # share of grid LRs within tolerance of the oracle
    divergences: dict[str, int]
    target: float | None
    steps_to_target: dict[str, float]  # median over seeds at the tuned LR (inf: never)


def score_task(task_name: str, records: Sequence[dict[str, Any]]) -> TaskScore:
    task = TASKS[task_name]
    higher = task.higher_is_better
    by_config: dict[tuple[str, float], list[dict]] = defaultdict(list)
    for r in records:
        by_config[(r["method"], r["lr"])].append(r)
    mean = {
        key: statistics.fmean(_value(r, higher) for r in rs)
        if higher
        else statistics.median(_value(r, higher) for r in rs)
        for key, rs in by_config.items()
    }
    oracle = max(mean.values()) if higher else min(mean.values())
    tol = task.tolerance(oracle)
    methods = sorted({m for m, _ in mean})
    tuned, best_lr, robust, divergences = {}, {}, {}, {}
    for m in methods:
        configs = {lr: v for (mm, lr), v in mean.items() if mm == m}
        lr_best = (max if higher else min)(configs, key=configs.get)
        tuned[m], best_lr[m] = configs[lr_best], lr_best
        robust[m] = sum(abs(v - oracle) <= tol for v in configs.values()) / len(configs)
        divergences[m] = sum(
            r["diverged"] for (mm, _), rs in by_config.items() if mm == m for r in rs
        )
    # Target: the best-LR AdamW + warmup-cosine at 75 % of its budget; when that run
    # diverged (as on the fault task), the oracle configuration stands in.
    reference = ("adamw_cosine", best_lr.get("adamw_cosine"))
    if reference not in by_config or tuned["adamw_cosine"] == _worst(higher):
        reference = min(mean, key=lambda k: -mean[k] if higher else mean[k])
    ref_curve = _mean_curve(by_config[reference])
    target = _at_fraction(ref_curve, 0.75)
    steps = {}
    for m in methods:
        curve = _mean_curve(by_config[(m, best_lr[m])])
        steps[m] = _first_hit(curve, target, higher) if target is not None else math.inf
    return TaskScore(task_name, oracle, tuned, best_lr, robust, divergences, target, steps)


def _mean_curve(runs: Sequence[dict[str, Any]]) -> list[tuple[int, float]]:
    """Seed-mean learning curve (a diverged point counts as the worst value)."""
    curves = [r["curve"] for r in runs]
    length = min(len(c) for c in curves)
    out = []
    for i in range(length):
        values = [c[i][1] for c in curves]
        finite = [v for v in values if math.isfinite(v)]
        out.append(
            (curves[0][i][0], statistics.fmean(finite) if len(finite) == len(values) else math.nan)
        )
    return out


def _at_fraction(curve: Sequence[Sequence[float]], fraction: float) -> float | None:
    if not curve:
        return None
    last = curve[-1][0]
    for step, value in curve:
        if step >= fraction * last:
            return value if math.isfinite(value) else None
    return None


def _first_hit(curve: Sequence[Sequence[float]], target: float, higher: bool) -> float:
    for step, value in curve:
        if math.isfinite(value) and (value >= target if higher else value <= target):
            return float(step)
    return math.inf


def performance_profile_scores(
    scores: Iterable[TaskScore], methods: Sequence[str]
) -> dict[str, float]:
    """AlgoPerf-style: integrate each method's performance profile over tau in [1, R_MAX].

    A task's ratio is the method's steps-to-target over the fastest method's; a method that
    never reaches the target (or exceeds R_MAX) contributes nothing on that task.
    """
    scores = list(scores)
    ratios: dict[str, list[float]] = {m: [] for m in methods}
    for s in scores:
        best = min((s.steps_to_target.get(m, math.inf) for m in methods), default=math.inf)
        for m in methods:
            t = s.steps_to_target.get(m, math.inf)
            ratios[m].append(t / best if math.isfinite(best) and math.isfinite(t) else math.inf)
    grid = [1 + i * (R_MAX - 1) / 300 for i in range(301)]
    out = {}
    for m in methods:
        if not scores:
            out[m] = 0.0
            continue
        profile = [sum(r <= tau for r in ratios[m]) / len(scores) for tau in grid]
        area = sum((a + b) / 2 for a, b in itertools.pairwise(profile))
        out[m] = area / (len(grid) - 1)
    return out
