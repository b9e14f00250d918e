"""Keep the GPU sync check runnable: its loops and its section, on the CPU."""

from benchmarks.gpu_sync import END, START, count_syncs, section


def test_both_loops_run_and_the_section_reports_them():
    rows = [count_syncs("cpu", 4, flag) for flag in (False, True)]
    assert [r["loop"] for r in rows] == ["plain AdamW", "trimtab (default probes)"]
    assert all(sum(r["syncs_per_step"].values()) == 4 for r in rows)
    overhead = {
        "plain_step_ms": 30.0,
        "probes_median_ratio": 1.005,
        "probes_window_ratio": 1.01,
        "median_ratio": 1.01,
        "window_ratio": 1.02,
    }
    block = section("cpu", rows, overhead)
    assert block[0] == START and block[-1] == END
    assert any("trimtab (default probes) | 4 | 0: 4" in line for line in block)
