"""A console progress bar fed by the audit trail: step, loss, LR and the last event."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, TextIO


class ConsoleReporter:
    """Shows a tqdm progress bar while a ``Regime`` trains (a ``trimtab.log.Sink``).

    It advances on each ``signals`` record (every ``log_every`` steps), so it costs no
    extra host sync. Needs tqdm: ``pip install 'trimtab[demo]'``.

    Args:
        stream: where the bar is drawn (tqdm's default, stderr, when ``None``).
        desc: the bar's label.

    Example:
        >>> regime = trimtab.Regime(model, opt, total_steps=1000,
        ...                         reporters=[ConsoleReporter()])  # doctest: +SKIP
    """

    def __init__(self, *, stream: TextIO | None = None, desc: str = "training") -> None:
        try:
            from tqdm import tqdm
        except ImportError as exc:
            raise ImportError(
                "the console progress bar needs tqdm: pip install 'trimtab[demo]'"
            ) from exc
        self._tqdm = tqdm
        self.stream = stream
        self.desc = desc
        self._bar: Any = None
        self._step = 0
        self._postfix: dict[str, str] = {}

    def start(self, header: Mapping[str, Any]) -> None:
        self._bar = self._tqdm(
            total=header.get("total_steps"),
            desc=self.desc,
            unit="step",
            file=self.stream,
            dynamic_ncols=True,
        )
        self._step = 0

    def write(self, kind: str, payload: Mapping[str, Any]) -> None:
        if self._bar is None:
            return
        if kind == "signals":
            step = int(payload["step"])
            self._bar.update(max(0, step - self._step))
            self._step = max(self._step, step)
            loss = payload.get("values", {}).get("loss/train")
            if isinstance(loss, float):
                self._postfix["loss"] = f"{loss:.4g}" if math.isfinite(loss) else str(loss)
            lrs = [v for k, v in payload.get("knobs", {}).items() if k.startswith("lr/")]
            if lrs:
                self._postfix["lr"] = f"{lrs[0]:.3g}"
        elif kind == "event":
            what = payload.get("knob") or payload.get("kind")
            self._postfix["last"] = f"{what}@{payload.get('step')} by {payload.get('policy')}"
        elif kind == "resume":
            self._step = int(payload["step"])
            self._bar.n = self._step
        else:
            return
        self._bar.set_postfix(self._postfix, refresh=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
