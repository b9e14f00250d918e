"""Reading logs back: series, events, observations, and older schema versions."""

from __future__ import annotations

import json

import pytest

from report_helpers import logged_run
from trimtab import read_log
from trimtab.report import from_records, load_run


def test_series_match_the_raw_records(tmp_path):
    path = logged_run(tmp_path / "a.jsonl", lr=2.0)
    run = load_run(path)
    raw = list(read_log(path))
    signals = [r for r in raw if r["type"] == "signals"]
    assert run.series("loss/train") == [
        (r["step"], r["values"]["loss/train"]) for r in signals if "loss/train" in r["values"]
    ]
    assert run.knobs["lr/g0"] == [(r["step"], r["knobs"]["lr/g0"]) for r in signals]
    assert len(run.events) == sum(r["type"] == "event" for r in raw)
    assert run.events, "lr=2.0 on this task diverges, so the guard must have acted"
    assert [o.step for o in run.observations] == [10, 20, 30, 40, 50, 60]
    assert all(o.model_training is True for o in run.observations)
    assert run.schema == 1 and run.header["groups"][0]["vector_tensors"] == 2


def test_header_describes_dtypes_and_modules(tmp_path):
    run = load_run(logged_run(tmp_path / "a.jsonl"))
    model = run.header["model"]
    assert model["dtypes"] == {"float32": model["parameters"]}
    assert model["modules"]["Linear"] == 2 and model["modules"]["Tanh"] == 1


def test_older_logs_without_schema_or_new_fields_still_load():
    # A schema-0 log: no "schema" key, observe without model_training, no vector_tensors.
    records = [
        {"type": "run", "groups": [{"name": "g0", "optimizer": "Adam"}]},
        {"type": "signals", "step": 0, "values": {"loss/train": 2.0}},
        {"type": "observe", "step": 0, "metrics": {"val_loss": 2.1}},
        {"type": "future_kind", "step": 0},
    ]
    run = from_records(records, name="old")
    assert run.schema == 0
    assert run.observations[0].model_training is None
    assert run.series("loss/train") == [(0, 2.0)] and run.knobs == {}


def test_a_newer_schema_is_refused_with_a_hint(tmp_path):
    path = tmp_path / "new.jsonl"
    path.write_text(json.dumps({"type": "run", "schema": 99}) + "\n")
    with pytest.raises(ValueError, match="upgrade trimtab"):
        load_run(path)
