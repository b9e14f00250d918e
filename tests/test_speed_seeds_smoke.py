"""The many-seed speed table: its arithmetic, and one small task end to end."""

import math

from benchmarks import speed


def test_summary_counts_never_reached_targets_on_the_right_side():
    steps = {
        "a": (100.0, 80.0),  # 1.25x faster
        "b": (100.0, 120.0),  # slower, within 1.25x
        "c": (100.0, math.inf),  # trimtab_auto never gets there: speed-up 0
        "d": (math.inf, 300.0),  # only trimtab_auto gets there: infinitely faster
        "e": (100.0, 130.0),  # slower by more than 1.25x
    }
    median, no_more, within = speed.summary(steps)
    assert median == 100.0 / 120.0  # sorted 0, 0.77, 0.83, 1.25, inf
    assert no_more == 2  # a and d
    assert within == 3  # a, b and d


def test_a_small_run_writes_all_seeds_and_both_halves(tmp_path):
    results = tmp_path / "RESULTS.md"
    results.write_text("# Results\n\nkept\n")
    argv = ["--tasks", "tabular", "--seeds", "2", "--workers", "1"]
    argv += ["--out", str(tmp_path / "out"), "--results", str(results)]
    assert speed.main(argv) == 0
    text = results.read_text()
    assert "kept" in text and text.count(speed.START) == 1
    for row in ("| seeds 0-1 |", "| seeds 0-0 |", "| seeds 1-1 |"):
        assert text.count(row) == 2  # trimtab_auto's table and the high start's
    assert f"trimtab started at {speed.HIGH_START:g}" in text
    cells = {p.name for p in (tmp_path / "out" / "full" / "cells").glob("tabular__*.json")}
    # AdamW + cosine at 4 LRs, trimtab_auto, and trimtab at the high start only: 2 seeds each
    assert len(cells) == 12
    assert sum(f"__trimtab__{speed.HIGH_START}__" in name for name in cells) == 2


def test_a_third_method_does_not_move_the_fallback_target_of_another():
    def cell(method, lr, level, diverged=False):
        curve = [[step, level * step / 100] for step in (25, 50, 75, 100)]
        return {
            "task": "faults",
            "method": method,
            "lr": lr,
            "seed": 0,
            "final": math.nan if diverged else level,
            "diverged": diverged,
            "curve": [[s, math.nan] for s, _ in curve] if diverged else curve,
        }

    # AdamW + cosine diverges, so the target falls back to the best configuration scored
    records = [cell("adamw_cosine", 1e-3, 0.0, diverged=True), cell("trimtab_auto", 0.0, 0.9)]
    records.append(cell("trimtab", 1e-2, 0.97))  # better: would raise that fallback target
    auto = speed.steps_to_target(records, [0], "trimtab_auto")
    high = speed.steps_to_target(records, [0], "trimtab", 1e-2)
    assert auto["faults"][1] == 75  # its own curve at 75 % sets its target
    assert high["faults"][1] == 75
