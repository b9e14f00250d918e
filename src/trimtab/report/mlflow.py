"""MLflow reporter: the audit trail as an MLflow run (metrics, params, an events file)."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from typing import Any


class MLflowReporter:
    """Logs signals, knobs and validation metrics as MLflow metrics, the set-up as params.

    Uses an ``MlflowClient`` (no global active run), so it never disturbs a run the user
    has open. Events are kept as the ``events.jsonl`` artifact and the ``events`` metric
    (a running count). A ``trimtab.log.Sink``. Needs ``pip install 'trimtab[mlflow]'``.

    Args:
        tracking_uri: where MLflow stores runs: ``"file:./mlruns"`` (recent MLflow opens a
            local file store only with ``MLFLOW_ALLOW_FILE_STORE=true`` in the
            environment), an ``http://`` tracking server, or ``"sqlite:///mlflow.db"``
            (needs full ``mlflow``, not mlflow-skinny).
        experiment: experiment name, created if missing.
        run_name: the MLflow run's name.
    """

    def __init__(
        self,
        tracking_uri: str | None = None,
        *,
        experiment: str = "trimtab",
        run_name: str | None = None,
    ) -> None:
        try:
            from mlflow.tracking import MlflowClient
        except ImportError as exc:
            raise ImportError(
                "the MLflow reporter needs mlflow: pip install 'trimtab[mlflow]'"
            ) from exc
        self.client = MlflowClient(tracking_uri=tracking_uri)
        self.experiment = experiment
        self.run_name = run_name
        self.run_id: str | None = None
        self._events: list[str] = []

    def start(self, header: Mapping[str, Any]) -> None:
        found = self.client.get_experiment_by_name(self.experiment)
        experiment_id = (
            found.experiment_id if found else self.client.create_experiment(self.experiment)
        )
        run = self.client.create_run(experiment_id, run_name=self.run_name)
        self.run_id = run.info.run_id
        self.client.log_text(
            self.run_id, json.dumps(dict(header), indent=2, default=str), "run_header.json"
        )
        for group in header.get("groups", []):
            for key, value in group.get("hyperparameters", {}).items():
                if isinstance(value, (int, float, str, bool)):
                    self.client.log_param(self.run_id, f"{group['name']}.{key}", value)
        for key in ("total_steps", "trimtab", "torch"):
            if header.get(key) is not None:
                self.client.log_param(self.run_id, key, header[key])

    def _metrics(self, values: Mapping[str, Any], step: int, prefix: str = "") -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [
            Metric(f"{prefix}{name}", float(v), now, step)
            for name, v in values.items()
            if isinstance(v, (int, float)) and math.isfinite(v)
        ]
        if metrics and self.run_id is not None:
            self.client.log_batch(self.run_id, metrics=metrics)

    def write(self, kind: str, payload: Mapping[str, Any]) -> None:
        if self.run_id is None:
            return
        step = int(payload.get("step", 0))
        if kind == "signals":
            self._metrics(payload.get("values", {}), step)
            self._metrics(payload.get("knobs", {}), step, prefix="knob/")
        elif kind == "observe":
            self._metrics(payload.get("metrics", {}), step, prefix="val/")
        elif kind == "event":
            self._events.append(json.dumps(dict(payload), default=str))
            self._metrics({"events": len(self._events)}, step)

    def close(self) -> None:
        if self.run_id is None:
            return
        self.client.log_text(self.run_id, "\n".join(self._events) + "\n", "events.jsonl")
        self.client.set_terminated(self.run_id)
        self.run_id = None
