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
        assert row in text
    assert len(list((tmp_path / "out" / "full" / "cells").glob("tabular__*.json"))) == 10
