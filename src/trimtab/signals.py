"""The Signals store: the one shared state between measuring and deciding.

Probes' readings land here as floats (after the controller's single transfer per step);
policies only read. Keeping short windows here, rather than in every policy, means two
policies that watch the same signal see the same numbers.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any

from trimtab import _checks
from trimtab.errors import StateError

STATE_VERSION = 1


class Signals:
    """Latest value and a bounded window per signal, plus the validation observations.

    Args:
        window: how many recent values of each per-step signal to keep.
        max_observations: how many ``observe()`` records to keep.
    """

    def __init__(self, *, window: int = 64, max_observations: int = 512) -> None:
        self.window_size = _checks.count("window", window, minimum=4)
        self.max_observations = _checks.count("max_observations", max_observations, minimum=4)
        self._latest: dict[str, float] = {}
        self._updated_at: dict[str, int] = {}
        self._windows: dict[str, deque[float]] = {}
        self._observations: deque[dict[str, float]] = deque(maxlen=self.max_observations)
        self._observation_counts: dict[str, int] = {}

    # -- writing (controller only) -------------------------------------------------------
    def record(self, step: int, values: Mapping[str, float]) -> None:
        for name, value in values.items():
            self._latest[name] = value
            self._updated_at[name] = step
            window = self._windows.get(name)
            if window is None:  # not setdefault: that would build a deque every call
                window = self._windows[name] = deque(maxlen=self.window_size)
            window.append(value)

    def observe(self, step: int, metrics: Mapping[str, float]) -> None:
        record = {"step": float(step)}
        record.update(metrics)
        self._observations.append(record)
        for name in metrics:
            self._observation_counts[name] = self._observation_counts.get(name, 0) + 1

    # -- reading -----------------------------------------------------------------------
    def get(self, name: str, default: float | None = None) -> float | None:
        """Latest value of ``name`` or ``default`` if it was never measured."""
        return self._latest.get(name, default)

    def fresh(self, name: str, step: int) -> float | None:
        """Value of ``name`` only if it was measured at ``step``."""
        return self._latest[name] if self._updated_at.get(name) == step else None

    def window(self, name: str) -> tuple[float, ...]:
        return tuple(self._windows.get(name, ()))

    def names(self) -> tuple[str, ...]:
        return tuple(sorted(self._latest))

    def observations(self, metric: str, after: int | None = None) -> tuple[tuple[int, float], ...]:
        """``(step, value)`` pairs of a validation metric, oldest first, finite values only
        (with ``after``: only those observed after that step)."""
        return tuple(
            (int(rec["step"]), rec[metric])
            for rec in self._observations
            if metric in rec
            and math.isfinite(rec[metric])
            and (after is None or int(rec["step"]) > after)
        )

    def latest_observation(self, metric: str) -> tuple[int, float] | None:
        """The newest ``(step, value)`` of ``metric``, finite or not."""
        for rec in reversed(self._observations):
            if metric in rec:
                return int(rec["step"]), rec[metric]
        return None

    def observation_count(self, metric: str) -> int:
        """How many times ``metric`` was observed over the whole run (never truncated)."""
        return self._observation_counts.get(metric, 0)

    def observed_metrics(self) -> tuple[str, ...]:
        seen: set[str] = set()
        for rec in self._observations:
            seen.update(k for k in rec if k != "step")
        return tuple(sorted(seen))

    def snapshot(self, names: Iterable[str] | None = None) -> dict[str, float]:
        """Latest values of ``names`` (all signals by default) as a plain dict."""
        keys = self._latest if names is None else names
        return {k: self._latest[k] for k in keys if k in self._latest}

    # -- persistence -------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "latest": dict(self._latest),
            "updated_at": dict(self._updated_at),
            "windows": {k: list(v) for k, v in self._windows.items()},
            "observations": [dict(r) for r in self._observations],
            "observation_counts": dict(self._observation_counts),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("version") != STATE_VERSION:
            raise StateError(
                f"Signals state version {state.get('version')!r} is not {STATE_VERSION}; "
                "it was saved by an incompatible trimtab"
            )
        self._latest = dict(state["latest"])
        self._updated_at = dict(state["updated_at"])
        self._windows = {k: deque(v, maxlen=self.window_size) for k, v in state["windows"].items()}
        self._observations = deque(
            (dict(r) for r in state["observations"]), maxlen=self.max_observations
        )
        self._observation_counts = dict(state["observation_counts"])
