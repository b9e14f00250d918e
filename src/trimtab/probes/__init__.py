"""Probes: one file each. Register a new probe by adding it to ``PROBES`` below.

Presets go from cheap to thorough; ``DEFAULT_PROBES`` is what ``Regime`` uses unless
told otherwise (``Regime(..., probes="standard")`` picks a preset).
"""

from __future__ import annotations

from types import MappingProxyType

from trimtab.probes.activations import ActivationProbe
from trimtab.probes.alignment import AlignmentProbe
from trimtab.probes.base import Cost, GroupView, Probe, StepContext
from trimtab.probes.curvature import CurvatureProbe
from trimtab.probes.drift import DriftProbe
from trimtab.probes.grad_norm import GradNormProbe
from trimtab.probes.grad_stats import GradStatsProbe
from trimtab.probes.loss import LossProbe
from trimtab.probes.loss_trend import LossTrendProbe
from trimtab.probes.noise import NoiseProbe
from trimtab.probes.nonfinite import NonFiniteProbe
from trimtab.probes.shift import PageHinkley, ShiftProbe
from trimtab.probes.update_ratio import UpdateRatioProbe

PROBES = MappingProxyType(
    {
        LossProbe.name: LossProbe,
        GradNormProbe.name: GradNormProbe,
        NonFiniteProbe.name: NonFiniteProbe,
        UpdateRatioProbe.name: UpdateRatioProbe,
        LossTrendProbe.name: LossTrendProbe,
        GradStatsProbe.name: GradStatsProbe,
        NoiseProbe.name: NoiseProbe,
        CurvatureProbe.name: CurvatureProbe,
        DriftProbe.name: DriftProbe,
        ActivationProbe.name: ActivationProbe,
        ShiftProbe.name: ShiftProbe,
        AlignmentProbe.name: AlignmentProbe,
    }
)
DEFAULT_PROBES = ("loss", "grad_norm", "nonfinite", "update_ratio", "alignment")
PRESETS = MappingProxyType(
    {
        "cheap": ("loss", "grad_norm", "nonfinite", "loss_trend", "shift"),
        "standard": (*DEFAULT_PROBES, "loss_trend", "shift", "grad_stats", "drift"),
        "thorough": (
            *DEFAULT_PROBES,
            "loss_trend",
            "shift",
            "grad_stats",
            "drift",
            "noise",
            "activations",
            "curvature",
        ),
    }
)

__all__ = [
    "DEFAULT_PROBES",
    "PRESETS",
    "PROBES",
    "ActivationProbe",
    "AlignmentProbe",
    "Cost",
    "CurvatureProbe",
    "DriftProbe",
    "GradNormProbe",
    "GradStatsProbe",
    "GroupView",
    "LossProbe",
    "LossTrendProbe",
    "NoiseProbe",
    "NonFiniteProbe",
    "PageHinkley",
    "Probe",
    "ShiftProbe",
    "StepContext",
    "UpdateRatioProbe",
]
