"""Reporters receive the same records as the JSONL log (TensorBoard, MLflow, console)."""

from __future__ import annotations

import io
import math
import sys
from pathlib import Path

import pytest

from report_helpers import logged_run
from trimtab.report import ConsoleReporter, load_run


def test_tensorboard_scalars_equal_the_jsonl_values(tmp_path):
    pytest.importorskip("tensorboard", reason="needs the 'tensorboard' extra")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from trimtab.report import TensorBoardReporter

    run = load_run(
        logged_run(tmp_path / "a.jsonl", lr=2.0, reporters=[TensorBoardReporter(tmp_path / "tb")])
    )
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    loss = [(e.step, e.value) for e in acc.Scalars("signals/loss/train")]
    expected = run.series("loss/train")
    assert [s for s, _ in loss] == [s for s, _ in expected]
    assert all(
        math.isclose(a, b, rel_tol=1e-6) for (_, a), (_, b) in zip(loss, expected, strict=True)
    )
    lrs = [(e.step, e.value) for e in acc.Scalars("knobs/lr/g0")]
    assert [round(v, 7) for _, v in lrs] == [round(v, 7) for _, v in run.knobs["lr/g0"]]
    assert [e.value for e in acc.Scalars("observe/val_loss")] == pytest.approx(
        [o.metrics["val_loss"] for o in run.observations], rel=1e-6
    )
    assert acc.Scalars("events/count")[-1].value == len(run.events)


def test_mlflow_metrics_equal_the_jsonl_values(tmp_path, monkeypatch):
    pytest.importorskip("mlflow", reason="needs the 'mlflow' extra")
    from mlflow.tracking import MlflowClient

    from trimtab.report import MLflowReporter

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    uri = (tmp_path / "mlruns").as_uri()
    reporter = MLflowReporter(uri, experiment="tests", run_name="a")
    run = load_run(logged_run(tmp_path / "a.jsonl", lr=2.0, reporters=[reporter]))
    client = MlflowClient(tracking_uri=uri)
    [found] = client.search_runs([client.get_experiment_by_name("tests").experiment_id])
    history = client.get_metric_history(found.info.run_id, "loss/train")
    expected = [(s, v) for s, v in run.series("loss/train") if math.isfinite(v)]
    assert [m.step for m in history] == [s for s, _ in expected]
    assert [m.value for m in history] == pytest.approx([v for _, v in expected])
    assert found.data.params["g0.lr"] == "2.0"
    assert found.info.status == "FINISHED"
    events = client.download_artifacts(found.info.run_id, "events.jsonl", str(tmp_path))
    assert len(Path(events).read_text().splitlines()) == len(run.events)


def test_console_bar_shows_step_loss_lr_and_the_last_event(tmp_path):
    pytest.importorskip("tqdm")
    stream = io.StringIO()
    run = load_run(
        logged_run(tmp_path / "a.jsonl", lr=2.0, reporters=[ConsoleReporter(stream=stream)])
    )
    text = stream.getvalue()
    assert "55/60" in text  # the last signals record was at step 55
    assert f"lr={run.knobs['lr/g0'][-1][1]:.3g}" in text
    last = run.events[-1]
    assert f"@{last['step']} by {last['policy']}" in text


@pytest.mark.parametrize(
    ("name", "module", "extra"),
    [
        ("TensorBoardReporter", "torch.utils.tensorboard", "tensorboard"),
        ("MLflowReporter", "mlflow.tracking", "mlflow"),
        ("ConsoleReporter", "tqdm", "demo"),
    ],
)
def test_a_missing_library_names_the_extra_to_install(monkeypatch, name, module, extra):
    import trimtab.report as report

    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(ImportError, match=rf"trimtab\[{extra}\]"):
        getattr(report, name)("x") if name != "ConsoleReporter" else report.ConsoleReporter()
