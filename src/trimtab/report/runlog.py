"""A trimtab JSONL log read back into per-signal series, for the doctor and the dashboard.

Reading is lenient about age: logs written before a field existed (schema 0 had no
``schema`` key, early ``observe`` records had no ``model_training``) load with that
field missing, and every consumer treats a missing field as "not recorded".
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trimtab.log import read_log

Series = list[tuple[int, float]]


@dataclass(frozen=True)
class Observation:
    """One ``Regime.observe`` call: its step, metrics and (if recorded) the model mode."""

    step: int
    metrics: Mapping[str, float]
    model_training: bool | None


@dataclass
class RunLog:
    """Everything one log holds, arranged by signal.

    Attributes:
        name: a label for the run (the file stem unless given).
        header: the ``run`` record (empty if the log has none).
        schema: the log's schema version (0 when the header predates versioning).
        signals: ``{"loss/train": [(step, value), ...], ...}`` from ``signals`` records.
        knobs: effective hyperparameters over time, ``{"lr/g0": [(step, value), ...]}``.
        events: ``event`` records as plain dicts, in order.
        observations: validation observations, in order.
        resumes: steps at which the run continued from a checkpoint.
    """

    name: str
    header: dict[str, Any] = field(default_factory=dict)
    schema: int = 0
    signals: dict[str, Series] = field(default_factory=dict)
    knobs: dict[str, Series] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    observations: list[Observation] = field(default_factory=list)
    resumes: list[int] = field(default_factory=list)

    @property
    def last_step(self) -> int:
        steps = [s for series in self.signals.values() for s, _ in series[-1:]]
        steps += [o.step for o in self.observations] + [int(e["step"]) for e in self.events]
        return max(steps, default=0)

    @property
    def groups(self) -> list[dict[str, Any]]:
        return list(self.header.get("groups", []))

    def series(self, name: str) -> Series:
        """A signal's ``(step, value)`` pairs (empty when it was never logged)."""
        return self.signals.get(name, [])

    def finite(self, name: str) -> Series:
        return [(s, v) for s, v in self.series(name) if math.isfinite(v)]

    def metric(self, name: str) -> Series:
        """A validation metric's ``(step, value)`` pairs, finite values only."""
        return [
            (o.step, float(o.metrics[name]))
            for o in self.observations
            if name in o.metrics and math.isfinite(float(o.metrics[name]))
        ]

    def metric_names(self) -> list[str]:
        return sorted({k for o in self.observations for k in o.metrics})


def from_records(records: Iterable[Mapping[str, Any]], *, name: str = "run") -> RunLog:
    """Build a ``RunLog`` from log records (e.g. ``trimtab.read_log(path)``)."""
    run = RunLog(name=name)
    for record in records:
        kind = record.get("type")
        if kind == "run":
            run.header = {k: v for k, v in record.items() if k != "type"}
            run.schema = int(record.get("schema", 0))
        elif kind == "signals":
            step = int(record["step"])
            for key, value in (record.get("values") or {}).items():
                run.signals.setdefault(key, []).append((step, float(value)))
            for key, value in (record.get("knobs") or {}).items():
                run.knobs.setdefault(key, []).append((step, float(value)))
        elif kind == "event":
            run.events.append({k: v for k, v in record.items() if k != "type"})
        elif kind == "observe":
            training = record.get("model_training")
            run.observations.append(
                Observation(
                    step=int(record["step"]),
                    metrics={k: float(v) for k, v in (record.get("metrics") or {}).items()},
                    model_training=None if training is None else bool(training),
                )
            )
        elif kind == "resume":
            run.resumes.append(int(record["step"]))
        # Unknown record types come from newer writers of the same schema: skip them.
    return run


def load_run(path: str | os.PathLike[str], *, name: str | None = None) -> RunLog:
    """Read a trimtab JSONL log from disk.

    Example:
        >>> run = load_run("runs/exp1.jsonl")          # doctest: +SKIP
        >>> run.series("loss/train")[:2]               # doctest: +SKIP
        [(0, 2.31), (10, 1.87)]
    """
    return from_records(read_log(path), name=name or Path(path).stem)
