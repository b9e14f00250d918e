"""The audit trail on disk: a JSON-lines file, one record per line, schema-versioned.

Record types:
    ``run``      first line: what ran (model size, optimizers and groups, policies, versions)
    ``event``    a knob change, skip, rollback or stop, with its reason and evidence
    ``signals``  a snapshot of every signal's latest value, on a cadence
    ``observe``  the metrics passed to ``Regime.observe``
    ``resume``   the run continued from a checkpoint at this step

Non-finite floats are written as the strings ``"nan"``, ``"inf"`` and ``"-inf"`` so every
line is strict JSON; ``read_log`` turns them back into floats.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

SCHEMA_VERSION = 1
_NONFINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def _encode(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, Mapping):
        return {str(k): _encode(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_encode(v) for v in value]
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, str) and value in _NONFINITE:
        return _NONFINITE[value]
    if isinstance(value, dict):
        return {k: _decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


class Sink(Protocol):
    """Anything that receives the audit trail: the JSONL log, TensorBoard, MLflow, ...

    ``start`` gets the ``run`` header once, ``write`` every later record (the same
    ``kind``/payload pairs the JSONL file holds), ``close`` is called at the end.
    """

    def start(self, header: Mapping[str, Any]) -> None: ...

    def write(self, kind: str, payload: Mapping[str, Any]) -> None: ...

    def close(self) -> None: ...


class EventLog:
    """Appends records to a JSONL file (or keeps nothing when ``path`` is ``None``).

    Each write opens, appends and closes the file, so a crash loses at most the record
    being written and several processes never hold the file open.
    """

    def __init__(self, path: str | os.PathLike[str] | None) -> None:
        self.path = None if path is None else Path(path)
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def start(self, header: Mapping[str, Any]) -> None:
        """Begin a new log (truncating an old file) with the ``run`` record."""
        if self.path is None:
            return
        self.path.write_text("")
        self.write("run", {"schema": SCHEMA_VERSION, **header})

    def write(self, kind: str, payload: Mapping[str, Any]) -> None:
        if self.path is None:
            return
        line = json.dumps({"type": kind, **_encode(payload)}, allow_nan=False)
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(line + "\n")

    def close(self) -> None:
        """Nothing to release: every write closes the file."""


def read_log(path: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """Yield the records of a trimtab JSONL log, checking its schema version."""
    with Path(path).open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            record = _decode(json.loads(line))
            if record.get("type") == "run" and record.get("schema", 0) > SCHEMA_VERSION:
                raise ValueError(
                    f"{path}:{number} has log schema {record['schema']}, newer than this "
                    f"trimtab reads ({SCHEMA_VERSION}); upgrade trimtab"
                )
            yield record
