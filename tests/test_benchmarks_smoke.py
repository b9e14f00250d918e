"""Keep the benchmark suite from rotting: one task, two methods, a handful of steps."""

import math

from benchmarks.harness import run_cell
from benchmarks.scoring import performance_profile_scores, score_task


def test_one_task_two_methods_score_end_to_end():
    records = [
        run_cell("tabular", method, lr, seed, 30, evals=3)
        for method in ("adamw_cosine", "trimtab")
        for lr in (1e-3, 1e-1)
        for seed in (0, 1)
    ]
    assert all(len(r["curve"]) == 3 and r["final"] is not None for r in records)
    score = score_task("tabular", records)
    assert 0.5 < score.oracle <= 1.0
    assert set(score.tuned) == {"adamw_cosine", "trimtab"}
    assert all(0.0 <= v <= 1.0 for v in score.robustness.values())
    assert score.target is not None
    profile = performance_profile_scores([score], ["adamw_cosine", "trimtab"])
    assert all(0.0 <= v <= 1.0 for v in profile.values())


def test_a_fault_is_injected_and_trimtab_skips_it():
    record = run_cell("tabular", "trimtab", 1e-3, 0, 30, evals=3, fault="nan_batch")
    assert record["fault_at"] == 12 and not record["diverged"]
    assert record["skipped"] >= 1
    assert any(e["kind"] == "skip" for e in record["events"])
    assert math.isfinite(record["final"])
