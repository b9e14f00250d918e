"""Errors trimtab raises; each subclass also derives from the builtin users expect."""

from __future__ import annotations


class TrimtabError(Exception):
    """Base class for every error trimtab raises on purpose."""


class ConfigError(TrimtabError, ValueError):
    """A setting is out of range, non-finite or unknown. The message names the fix."""


class ConfigTypeError(TrimtabError, TypeError):
    """An argument has the wrong type (e.g. a model where an optimizer belongs)."""


class CallOrderError(TrimtabError, RuntimeError):
    """Regime methods were called out of order (e.g. ``step()`` before ``backward()``)."""


class StateError(TrimtabError, ValueError):
    """A state dict cannot be loaded: wrong version, missing keys or another run's layout."""
