"""Policies: one rule per file. Register a new policy by adding it to ``POLICIES``."""

from __future__ import annotations

from types import MappingProxyType

from trimtab.policies.base import Policy, PolicyState, PolicyView
from trimtab.policies.clipping import Clipping
from trimtab.policies.early_phase import EarlyPhase
from trimtab.policies.fine_tuning import FineTuning
from trimtab.policies.momentum import Momentum
from trimtab.policies.noise import Noise
from trimtab.policies.plateau import Plateau
from trimtab.policies.regularization import Regularization
from trimtab.policies.shift import Shift
from trimtab.policies.stability import Stability
from trimtab.policies.stability_guard import StabilityGuard

POLICIES = MappingProxyType(
    {
        StabilityGuard.name: StabilityGuard,
        Plateau.name: Plateau,
        EarlyPhase.name: EarlyPhase,
        Regularization.name: Regularization,
        Momentum.name: Momentum,
        Clipping.name: Clipping,
        FineTuning.name: FineTuning,
        Noise.name: Noise,
        Stability.name: Stability,
        Shift.name: Shift,
    }
)
DEFAULT_POLICIES = ("stability_guard", "early_phase", "regularization", "plateau", "shift")

__all__ = [
    "DEFAULT_POLICIES",
    "POLICIES",
    "Clipping",
    "EarlyPhase",
    "FineTuning",
    "Momentum",
    "Noise",
    "Plateau",
    "Policy",
    "PolicyState",
    "PolicyView",
    "Regularization",
    "Shift",
    "Stability",
    "StabilityGuard",
]
