"""Keep the benchmark suite from rotting: one task, two methods, a handful of steps."""

import math

import pytest
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


def test_a_method_that_stops_early_keeps_its_final_value_for_the_rest_of_the_curve(monkeypatch):
    from benchmarks import methods

    class StopsAfterTwoEvals(methods.Method):
        observed = 0

        def observe(self, val_loss):
            self.observed += 1

        @property
        def should_stop(self):
            return self.observed >= 2

    monkeypatch.setitem(
        methods.METHODS, "stops", methods.MethodSpec("stops", StopsAfterTwoEvals, True)
    )
    record = run_cell("tabular", "stops", 1e-3, 0, 40, evals=4)
    assert record["stopped_at"] == 20
    assert [s for s, _ in record["curve"]] == [10, 20, 30, 40]
    assert record["curve"][2][1] == record["curve"][3][1] == record["final"]


def test_the_ablation_table_counts_cells_within_tolerance_against_the_suite_oracle():
    from benchmarks.ablation import table, within

    def cell(method, lr, final):
        return {"task": "tabular", "method": method, "lr": lr, "final": final, "diverged": False}

    records = [
        cell("adamw", 1e-3, 0.95),  # the oracle
        cell("trimtab", 1e-3, 0.945),
        cell("trimtab", 1e-1, 0.90),
        cell("trimtab-no-plateau", 1e-3, 0.99),  # beats the oracle: still within
        cell("trimtab-no-plateau", 1e-1, 0.93),
    ]
    hits = within(records, ["trimtab", "trimtab-no-plateau"])
    assert [hit for _, hit, _ in hits["trimtab"]["tabular"]] == [True, False]
    assert [hit for _, hit, _ in hits["trimtab-no-plateau"]["tabular"]] == [True, False]
    lines = table(
        hits,
        ["trimtab", "trimtab-no-plateau"],
        ["tabular"],
        {"trimtab": 0, "trimtab-no-plateau": 1},
    )
    assert "| all defaults | 1/2 | 1/2 (50 %) | 0 |" in lines
    assert "| without `plateau` | 1/2 | 1/2 (50 %) | 1 |" in lines


def test_a_candidate_restricted_to_some_tasks_is_planned_only_there():
    from benchmarks.methods import METHODS
    from benchmarks.run import plan

    spec = METHODS["trimtab-plus-fine_tuning"]
    assert spec.tasks == ("finetune",) and spec.runs_on("finetune")
    assert not spec.runs_on("tabular") and METHODS["trimtab"].runs_on("tabular")
    cells = plan(True, ["tabular", "finetune"], ["trimtab", "trimtab-plus-fine_tuning"], 1)
    planned = {(c[0], c[1]) for c in cells}
    assert ("finetune", "trimtab-plus-fine_tuning") in planned
    assert ("tabular", "trimtab-plus-fine_tuning") not in planned
    assert ("tabular", "trimtab") in planned
    record = run_cell("finetune", "trimtab-plus-fine_tuning", 1e-2, 0, 30, evals=3)
    assert record["error"] is None and record["final"] is not None


def test_the_stability_candidate_gets_a_closure_and_reads_curvature(monkeypatch):
    from benchmarks import methods

    assert methods.METHODS["trimtab-plus-stability"].build.wants_closure
    assert not methods.METHODS["trimtab-plus-noise"].build.wants_closure
    seen = []
    original = methods.Trimtab.step

    def step(self, loss, closure=None):
        seen.append(closure)
        original(self, loss, closure=closure)

    monkeypatch.setattr(methods.Trimtab, "step", step)
    record = run_cell("tabular", "trimtab-plus-stability", 1e-3, 0, 12, evals=2)
    assert seen and all(callable(c) for c in seen)
    assert math.isfinite(record["final"])
    record = run_cell("tabular", "trimtab-plus-noise", 1e-3, 0, 12, evals=2)
    assert math.isfinite(record["final"])


def test_the_overhead_loops_take_turns_and_report_each_variant():
    from benchmarks.overhead import VARIANTS, interleaved_many
    from benchmarks.report import _overhead

    ratios, plain_times, regimes, _ = interleaved_many("width_32", 14, VARIANTS)
    assert set(ratios) == {"plain_twin", "probes", "trimtab"}
    assert all(len(r) == len(plain_times) == 4 for r in ratios.values())  # after warm-up
    assert regimes["plain_twin"] is None
    assert not regimes["probes"]._controller.policies
    assert regimes["trimtab"]._controller.policies[0].name == "stability_guard"
    assert regimes["trimtab"].step_count == 14 and regimes["probes"].step_count == 14
    row = {
        "task": "width_32",
        "params": 1,
        "plain_step_ms": 1.0,
        "twin_median_ratio": 1.0,
        "probes_median_ratio": 1.1,
        "probes_window_ratio": 1.2,
        "median_ratio": 1.3,
        "window_ratio": 1.4,
        "snapshots": 2,
        "snapshot_weight_bytes": 0,
        "peak_plain_mb": 1.0,
        "peak_trimtab_mb": 1.0,
    }
    assert "| 1.000 | 1.100; 1.200 | 1.300; 1.400 |" in _overhead([row])[4]


def test_plots_survive_a_task_where_every_lr_taking_run_diverged(tmp_path):
    from benchmarks.report import _plots

    def cell(method, lr, final, diverged):
        curve = [[10, final], [20, final]]
        return {
            "task": "faults",
            "method": method,
            "lr": lr,
            "seed": 0,
            "final": final,
            "diverged": diverged,
            "curve": curve,
            "events": [],
        }

    # as with `--methods adamw_cosine trimtab_auto`: every adamw_cosine run diverged there
    records = [cell("adamw_cosine", lr, math.nan, True) for lr in (1e-3, 1e-1)]
    records.append(cell("trimtab_auto", 0.0, 0.97, False))
    score = score_task("faults", records)
    _plots(records, [score], tmp_path)
    assert (tmp_path / "final_vs_lr_faults.png").stat().st_size > 0


def test_a_method_with_a_diverged_run_at_every_lr_is_named_as_left_off():
    from benchmarks.report import _left_off

    grouped = {
        "adamw": {1e-3: [0.9, math.nan], 1e-1: [math.nan, math.nan]},
        "sgd": {1e-3: [0.9, 0.8], 1e-1: [math.nan, 0.5]},
        "trimtab_auto": {0.0: [0.97, 0.96]},
    }
    assert _left_off(grouped) == ["adamw"]


def test_the_suite_heading_says_how_many_seeds_its_figures_average():
    from benchmarks.report import _heading

    records = [{"seed": s, "task": "tabular"} for s in (0, 1, 2, 0, 2)]
    title, _, provenance, _ = _heading(records, quick=False, device="cpu", factor=1)
    assert "3 seeds per cell" in title
    assert "`python -m benchmarks.run --seeds 3`" in provenance


def test_the_full_suite_defaults_to_six_seeds_and_quick_to_two(monkeypatch):
    import benchmarks.run as run

    planned = {}

    def stop_after_planning(quick, tasks, methods, seeds, *args):
        planned[quick] = seeds
        raise SystemExit(0)

    monkeypatch.setattr(run, "plan", stop_after_planning)
    for argv in ([], ["--quick"]):
        with pytest.raises(SystemExit):
            run.main([*argv, "--tasks", "tabular", "--methods", "adamw"])
    assert planned == {False: 6, True: 2}


def test_a_seed_count_below_one_is_refused_with_what_was_given():
    from benchmarks.run import seeds_or_default

    def refuse(message):
        raise ValueError(message)

    with pytest.raises(ValueError, match="at least 1, got 0"):
        seeds_or_default(0, quick=False, error=refuse)
    assert seeds_or_default(3, quick=True, error=refuse) == 3


def test_a_quick_report_writes_its_own_section_and_plots_beside_the_full_ones(tmp_path):
    from benchmarks import report

    def cell(method, lr, seed, final):
        return {
            "task": "tabular",
            "method": method,
            "lr": lr,
            "seed": seed,
            "final": final,
            "diverged": False,
            "curve": [[10, final - 0.02], [20, final]],
            "events": [],
        }

    records = [cell("adamw", lr, s, 0.9 + lr) for lr in (1e-3, 1e-2) for s in (0, 1)]
    results = tmp_path / "RESULTS.md"
    full = "<!-- benchmark:start -->\nthe full run's tables\n<!-- benchmark:end -->"
    results.write_text(f"# Results\n\n{full}\n")
    plots = tmp_path / "plots"
    report.write(
        records,
        ["adamw"],
        ["tabular"],
        None,
        [],
        quick=True,
        results=results,
        plots=plots,
        missing=[],
    )
    text = results.read_text()
    assert full in text
    assert "<!-- benchmark-quick:start -->" in text and "quick run" in text
    assert not list(plots.glob("*.png"))
    assert (plots / "quick" / "final_vs_lr_tabular.png").exists()
