import json
import math

import pytest

from trimtab.log import EventLog, read_log


def test_non_finite_values_round_trip_as_strict_json(tmp_path):
    log = EventLog(tmp_path / "x.jsonl")
    log.start({"model": {}})
    log.write("event", {"signals": {"a": math.nan, "b": math.inf, "c": -math.inf, "d": 1.5}})
    for line in (tmp_path / "x.jsonl").read_text().splitlines():
        json.loads(line, parse_constant=lambda c: pytest.fail(f"non-strict JSON {c}"))
    records = list(read_log(tmp_path / "x.jsonl"))
    values = records[1]["signals"]
    assert math.isnan(values["a"]) and values["b"] == math.inf and values["c"] == -math.inf
    assert values["d"] == 1.5


def test_a_newer_schema_is_refused_with_advice(tmp_path):
    path = tmp_path / "new.jsonl"
    path.write_text(json.dumps({"type": "run", "schema": 99}) + "\n")
    with pytest.raises(ValueError, match="upgrade trimtab"):
        list(read_log(path))


def test_no_path_keeps_nothing(tmp_path):
    log = EventLog(None)
    log.start({})
    log.write("event", {})
    assert not list(tmp_path.iterdir())
