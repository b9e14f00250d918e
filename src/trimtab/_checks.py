"""Argument checks shared by every constructor: fail early, name the bad value and the fix."""

from __future__ import annotations

import math
from numbers import Real

from trimtab.errors import ConfigError, ConfigTypeError


def real(name: str, value: object) -> float:
    """Return ``value`` as a finite float or raise with the offending value in the message."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ConfigTypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ConfigError(f"{name} must be finite, got {value}")
    return value


def positive(name: str, value: object) -> float:
    value = real(name, value)
    if value <= 0:
        raise ConfigError(f"{name} must be > 0, got {value}")
    return value


def in_open_unit(name: str, value: object) -> float:
    value = real(name, value)
    if not 0.0 < value < 1.0:
        raise ConfigError(f"{name} must be in (0, 1), got {value}")
    return value


def count(name: str, value: object, *, minimum: int = 1) -> int:
    """Return ``value`` as an int >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigTypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {value}")
    return value


def flag(name: str, value: object) -> bool:
    """Return ``value`` if it is a bool (``1`` or ``"yes"`` are likely mistakes)."""
    if not isinstance(value, bool):
        raise ConfigTypeError(f"{name} must be True or False, got {type(value).__name__} {value!r}")
    return value


def metric(name: str, value: object) -> str:
    """Return the name of an ``observe()`` metric: a non-empty string."""
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{name} must be a non-empty string, got {value!r}")
    return value


def mode(name: str, value: object) -> str:
    """Return ``"min"`` (losses) or ``"max"`` (accuracies)."""
    if value not in ("min", "max"):
        raise ConfigError(f"{name} must be 'min' or 'max', got {value!r}")
    return value  # type: ignore[return-value]
