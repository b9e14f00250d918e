"""TensorBoard reporter: the audit trail as scalars and text in a ``SummaryWriter``."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from typing import Any


class TensorBoardReporter:
    """Writes signals, knobs, validation metrics and events to TensorBoard.

    Scalars: ``signals/<name>`` and ``knobs/<knob>/<group>`` on each ``signals`` record,
    ``observe/<metric>`` on each ``observe()``; events go to the ``events`` text tab (with
    their reason) and an ``events/count`` scalar. A ``trimtab.log.Sink``.

    Args:
        log_dir: the TensorBoard run folder.
        writer: an existing ``SummaryWriter`` to write to instead (it is not closed).

    Example:
        >>> regime = trimtab.Regime(model, opt, reporters=[TensorBoardReporter("tb/a")])
        ...                                                            # doctest: +SKIP
    """

    def __init__(self, log_dir: str | os.PathLike[str] | None = None, *, writer: Any = None):
        if writer is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as exc:
                raise ImportError(
                    "the TensorBoard reporter needs tensorboard: pip install 'trimtab[tensorboard]'"
                ) from exc
            writer = SummaryWriter(log_dir=None if log_dir is None else str(log_dir))
            self._owned = True
        else:
            self._owned = False
        self.writer = writer
        self._events = 0

    def start(self, header: Mapping[str, Any]) -> None:
        text = json.dumps(dict(header), indent=2, default=str)
        self.writer.add_text("run", f"```\n{text}\n```", 0)

    def write(self, kind: str, payload: Mapping[str, Any]) -> None:
        step = int(payload.get("step", 0))
        if kind == "signals":
            for name, value in payload.get("values", {}).items():
                self.writer.add_scalar(f"signals/{name}", float(value), step)
            for name, value in payload.get("knobs", {}).items():
                self.writer.add_scalar(f"knobs/{name}", float(value), step)
        elif kind == "observe":
            for name, value in payload.get("metrics", {}).items():
                self.writer.add_scalar(f"observe/{name}", float(value), step)
        elif kind == "event":
            self._events += 1
            self.writer.add_scalar("events/count", float(self._events), step)
            change = ""
            if payload.get("knob") and _finite(payload.get("old"), payload.get("new")):
                change = f" {payload['knob']}/{payload['group']}: "
                change += f"{payload['old']:.4g} → {payload['new']:.4g}"
            self.writer.add_text(
                "events",
                f"**{payload.get('kind')}**{change} by {payload.get('policy')}: "
                f"{payload.get('reason')}",
                step,
            )

    def close(self) -> None:
        self.writer.flush()
        if self._owned:
            self.writer.close()


def _finite(*values: Any) -> bool:
    return all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)
