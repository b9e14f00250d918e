"""The doctor on hand-made logs (where the right verdict is known) and on corpus runs."""

from __future__ import annotations

import math
import re

import pytest

from report_helpers import corpus
from trimtab.report import diagnose, from_records, load_run, recipe_note


def _run(losses, *, header=None, val=None, extra=None, observe_training=False, events=()):
    """A log with one loss snapshot every 10 steps (plus optional extra signals)."""
    records = [{"type": "run", "schema": 1, **(header or {})}]
    for i, loss in enumerate(losses):
        values = {"loss/train": loss, "nonfinite/any": float(not math.isfinite(loss))}
        for name, series in (extra or {}).items():
            values[name] = series[i]
        records.append(
            {"type": "signals", "step": 10 * i, "values": values, "knobs": {"lr/g0": 0.1}}
        )
    for i, v in enumerate(val or []):
        records.append(
            {
                "type": "observe",
                "step": 20 * (i + 1),
                "metrics": {"val_loss": v},
                "model_training": observe_training,
            }
        )
    records += [{"type": "event", **e} for e in events]
    return from_records(records, name="hand")


HEALTHY = [2.3 * 0.8**i for i in range(20)]


def test_a_steadily_improving_run_is_healthy():
    diagnosis = diagnose(_run(HEALTHY, val=[2.0, 1.5, 1.1, 0.9, 0.7, 0.6, 0.55, 0.5]))
    assert diagnosis.healthy and diagnosis.main is None
    assert "healthy" in diagnosis.text()


def test_nan_loss_is_an_aggressive_step_citing_the_step():
    losses = [*HEALTHY[:5], math.nan, math.nan, *HEALTHY[7:]]
    main = diagnose(_run(losses)).main
    assert main.code == "aggressive_step"
    assert "first at step 50" in main.evidence and main.values["nonfinite_snapshots"] == 2


def test_loss_climbing_over_its_start_is_an_aggressive_step():
    losses = [2.0, 3.5, 1.9, 4.4, 2.5, 3.9, 2.2, 4.1, 2.6]
    main = diagnose(_run(losses)).main
    assert main.code == "aggressive_step"
    assert main.values == {"loss_start": 2.0, "loss_peak": 4.4}
    assert "4.4 at step 30" in main.evidence and "2.2x" in main.evidence


def test_slow_stable_run_is_too_blunt_and_cites_its_progress():
    losses = [2.3 - 0.01 * i for i in range(20)]
    main = diagnose(_run(losses, extra={"update_ratio/g0": [1e-5] * 20})).main
    assert main.code == "too_blunt"
    assert main.values["progress"] == pytest.approx(1 - _median_of_last3(losses) / 2.3)
    assert "raise the learning rate" in main.advice


def _median_of_last3(losses):
    return sorted(losses[-3:])[1]


def test_validation_turning_up_early_is_memorization():
    val = [1.0, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3, 1.4]
    main = diagnose(_run(HEALTHY, val=val)).main
    assert main.code == "memorization"
    assert main.step == 40 and main.values["val_best"] == 0.8
    assert main.values["val_end"] == 1.3  # median of the last three observations


def test_the_same_curves_evaluated_in_train_mode_name_the_set_up_cause():
    header = {"model": {"modules": {"Dropout": 1, "Linear": 2}}}
    val = [1.0, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3, 1.4]
    diagnosis = diagnose(_run(HEALTHY, header=header, val=val, observe_training=True))
    assert diagnosis.main.code == "eval_in_train_mode"
    assert diagnosis.explained.code == "memorization"
    assert "8 of 8 observe() calls" in diagnosis.main.evidence


def test_train_mode_without_dropout_or_batch_norm_is_not_flagged():
    header = {"model": {"modules": {"Linear": 2, "ReLU": 1}}}
    assert diagnose(_run(HEALTHY, header=header, observe_training=True)).healthy


def test_one_sustained_jump_after_progress_is_a_distribution_shift():
    losses = [2.0, 1.2, 0.8, 0.5, 0.4, 0.35, 0.3, 2.5, 2.0, 1.6, 1.2, 0.9, 0.7]
    main = diagnose(_run(losses)).main
    assert main.code == "distribution_shift" and main.step == 70
    assert main.values["loss_before"] == 0.35 and main.values["loss_after"] == 2.5


def test_backbone_moving_like_the_head_is_drift_but_a_slow_one_is_not():
    header = {
        "groups": [
            {"name": "backbone", "hyperparameters": {"lr": 1e-2}},
            {"name": "head", "hyperparameters": {"lr": 1e-2}},
        ]
    }
    fast = {"update_ratio/backbone": [5e-3] * 20, "update_ratio/head": [6e-3] * 20}
    diagnosis = diagnose(_run(HEALTHY, header=header, extra=fast))
    assert diagnosis.main.code == "backbone_drift"
    assert diagnosis.main.values["update_ratio/backbone"] == 5e-3
    assert "same_lr_finetune" in [f.code for f in diagnosis.lints]
    slow = {"update_ratio/backbone": [4e-4] * 20, "update_ratio/head": [6e-3] * 20}
    header["groups"][0]["hyperparameters"]["lr"] = 1e-4
    assert diagnose(_run(HEALTHY, header=header, extra=slow)).healthy


@pytest.mark.parametrize(
    ("header", "code"),
    [
        (
            {
                "groups": [
                    {"name": "g0", "optimizer": "Adam", "hyperparameters": {"weight_decay": 0.1}}
                ]
            },
            "adam_l2",
        ),
        (
            {
                "groups": [
                    {
                        "name": "g0",
                        "optimizer": "AdamW",
                        "vector_tensors": 4,
                        "hyperparameters": {"weight_decay": 0.1},
                    }
                ]
            },
            "decay_on_norms",
        ),
        ({"model": {"dtypes": {"float16": 100}}}, "fp16_no_loss_scaling"),
        ({"model": {"modules": {"MultiheadAttention": 1}}, "optimizers": ["AdamW"]}, "no_warmup"),
        (
            {"groups": [{"name": "g0", "hyperparameters": {"max_grad_norm": 0.5}}]},
            "clipping_every_step",
        ),
        ({"policies": [{"name": "plateau"}, {"name": "shift"}]}, "shift_without_guard"),
    ],
)
def test_set_up_lints_are_the_main_finding_of_otherwise_healthy_curves(header, code):
    extra = {"grad_norm/global": [1.0] * 20}
    diagnosis = diagnose(_run(HEALTHY, header=header, extra=extra))
    assert diagnosis.main is not None and diagnosis.main.code == code
    assert diagnosis.main.values


def test_the_shift_policy_beside_the_guard_or_the_guard_alone_is_quiet():
    for names in (["stability_guard", "shift"], ["stability_guard"], []):
        header = {"policies": [{"name": n} for n in names]}
        diagnosis = diagnose(_run(HEALTHY, header=header))
        assert "shift_without_guard" not in [f.code for f in diagnosis.lints], names


def test_fp16_with_recorded_loss_scaling_and_small_decay_are_quiet():
    header = {
        "model": {"dtypes": {"float16": 100}},
        "amp": {"dtype": "float16", "loss_scaling": True},
        "groups": [
            {
                "name": "g0",
                "optimizer": "AdamW",
                "vector_tensors": 4,
                "hyperparameters": {"weight_decay": 0.01},
            }
        ],
    }
    diagnosis = diagnose(_run(HEALTHY, header=header))
    assert diagnosis.healthy
    assert [f.code for f in diagnosis.lints] == ["decay_on_norms"]  # listed as a note


NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:e[-+]?\d+)?")


@pytest.mark.parametrize(
    "kind", ["lr_high", "overfit", "dead_relu", "shift", "adam_l2", "healthy/adamw"]
)
def test_corpus_runs_get_the_right_main_finding_with_cited_values(kind, tmp_path):
    dc = corpus()
    case = dc.Case(kind, 2)
    diagnosis = diagnose(load_run(dc.run_case(case, tmp_path)))
    assert (diagnosis.main.code if diagnosis.main else None) == case.expected
    for finding in (*diagnosis.symptoms, *diagnosis.lints):
        assert finding.values, finding.code
        assert NUMBER.search(finding.evidence), finding.evidence
    note = recipe_note(load_run(tmp_path / f"{case.name}.jsonl"), diagnosis)
    assert note.startswith(f"# Recipe note: {case.name}")
    assert "**Next move.**" in note and "`loss/train`" in note


def _shift_events(announced):
    guard = "stability_guard"
    events = [
        {"step": 70, "kind": "skip", "policy": guard, "reason": "loss 2.5 is far above"},
        {"step": 70, "kind": "rollback", "policy": guard, "reason": "divergence: ..."},
    ]
    if announced:
        events.append(
            {
                "step": 70,
                "kind": "verdict",
                "policy": guard,
                "reason": "the data changed: the loss stayed high for 6 batches",
                "signals": {"batches_high": 6.0, "new_data": 1.0},
            }
        )
    return events


@pytest.mark.parametrize("announced", [True, False])
def test_the_guards_incidents_before_a_data_change_verdict_are_not_divergence(announced):
    losses = [2.0, 1.2, 0.8, 0.5, 0.4, 0.35, 0.3, 2.5, 2.0, 1.6, 1.2, 0.9, 0.7]
    diagnosis = diagnose(_run(losses, events=_shift_events(announced)))
    codes = [f.code for f in diagnosis.symptoms]
    if announced:
        assert codes[0] == "distribution_shift" and "aggressive_step" not in codes
    else:  # the control: the same skips without the verdict read as divergence
        assert codes[0] == "aggressive_step"


def test_a_data_change_verdict_alone_names_a_distribution_shift():
    # the logged snapshots miss the jump (a gentle shift, or log_every too coarse)
    diagnosis = diagnose(_run(HEALTHY, events=_shift_events(True)))
    assert diagnosis.main.code == "distribution_shift" and diagnosis.main.step == 70
    assert "stability_guard at step 70: the data changed" in diagnosis.main.evidence


@pytest.mark.parametrize("restored", [True, False])
def test_a_jump_from_trimtabs_own_restart_is_not_a_distribution_shift(restored):
    """The regularization policy restarted the run from its initial weights at step 70:
    the training loss is back near its start, which is the restart, not new data."""
    losses = [2.0, 1.2, 0.8, 0.5, 0.4, 0.35, 0.3, 2.0, 1.7, 1.5, 1.3, 1.1, 0.9]
    val = [1.0, 1.2, 1.3, 1.4, 1.1, 0.9]
    restart = {
        "step": 65,
        "kind": "restore",
        "policy": "regularization",
        "reason": "... the model is memorizing; ... (restarted from the state of step 0)",
    }
    diagnosis = diagnose(_run(losses, val=val, events=[restart] if restored else []))
    codes = [f.code for f in diagnosis.symptoms]
    if restored:
        assert "distribution_shift" not in codes
    else:  # the control: the same curve with no restore to explain it
        assert codes[0] == "distribution_shift"


def test_trimtabs_own_rewinds_name_memorization_that_the_curves_hide():
    """Rewinds keep validation near its best, so the curve rule cannot see the rise; the
    regularization policy's restore events are the evidence."""
    val = [1.0, 0.8, 0.85, 0.9, 0.82, 0.85, 0.83, 0.84]
    rewind = {
        "step": 60,
        "kind": "restore",
        "policy": "regularization",
        "reason": "val_loss 0.9 has been worse than its best 0.8 (step 20) ...: the model is "
        "memorizing; rewind 1 of 3 (restored the weights of step 20)",
    }
    assert diagnose(_run(HEALTHY, val=val)).healthy  # the control: no events, no symptom
    main = diagnose(_run(HEALTHY, val=val, events=[rewind])).main
    assert main.code == "memorization" and main.step == 60
    assert main.values == {"regularization_acts": 1.0} and "rewind 1 of 3" in main.evidence


def test_a_zero_initialised_group_is_no_huge_update():
    # its first ratio is infinite (all-zero weights before the step), not a real jump
    ratios = [math.inf, *([0.004] * 19)]
    findings = diagnose(_run(HEALTHY, extra={"update_ratio/readout": ratios})).symptoms
    assert not [f for f in findings if "update_ratio/readout" in f.values]
    jump = diagnose(_run(HEALTHY, extra={"update_ratio/readout": [0.8, *ratios[1:]]})).symptoms
    assert [f for f in jump if f.values.get("update_ratio/readout") == 0.8]
