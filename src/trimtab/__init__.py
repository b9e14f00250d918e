"""trimtab: adaptive, bounded, audited optimizer control for PyTorch."""

from __future__ import annotations

from trimtab import schedules
from trimtab.arbiter import ArbiterConfig
from trimtab.controller import Controller
from trimtab.errors import (
    CallOrderError,
    ConfigError,
    ConfigTypeError,
    StateError,
    TrimtabError,
)
from trimtab.log import read_log
from trimtab.optimizers import OptimizerDefaults, build_optimizer, optimizer_defaults
from trimtab.policies import POLICIES, Plateau, Policy, StabilityGuard
from trimtab.probes import PROBES, Probe
from trimtab.regime import Regime
from trimtab.scaling import (
    CoordCheck,
    InitRecord,
    RecipeReport,
    attention_scale,
    coord_check,
    init_,
    recipe,
)
from trimtab.types import Event, EventKind, Knob, Outcome, Priority, Proposal

__version__ = "0.1.0"

__all__ = [
    "POLICIES",
    "PROBES",
    "ArbiterConfig",
    "CallOrderError",
    "ConfigError",
    "ConfigTypeError",
    "Controller",
    "CoordCheck",
    "Event",
    "EventKind",
    "InitRecord",
    "Knob",
    "OptimizerDefaults",
    "Outcome",
    "Plateau",
    "Policy",
    "Priority",
    "Probe",
    "Proposal",
    "RecipeReport",
    "Regime",
    "StabilityGuard",
    "StateError",
    "TrimtabError",
    "__version__",
    "attention_scale",
    "build_optimizer",
    "coord_check",
    "init_",
    "optimizer_defaults",
    "read_log",
    "recipe",
    "schedules",
]
