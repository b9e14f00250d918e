"""Probes: one file each. Register a new probe by adding it to ``PROBES`` below."""

from __future__ import annotations

from types import MappingProxyType

from trimtab.probes.activations import ActivationsProbe
from trimtab.probes.base import Cost, GroupView, Probe, StepContext
from trimtab.probes.grad_norm import GradNormProbe
from trimtab.probes.loss import LossProbe
from trimtab.probes.nonfinite import NonFiniteProbe
from trimtab.probes.update_ratio import UpdateRatioProbe

PROBES = MappingProxyType(
    {
        LossProbe.name: LossProbe,
        GradNormProbe.name: GradNormProbe,
        NonFiniteProbe.name: NonFiniteProbe,
        UpdateRatioProbe.name: UpdateRatioProbe,
        ActivationsProbe.name: ActivationsProbe,
    }
)
DEFAULT_PROBES = ("loss", "grad_norm", "nonfinite", "update_ratio")

__all__ = [
    "DEFAULT_PROBES",
    "PROBES",
    "ActivationsProbe",
    "Cost",
    "GradNormProbe",
    "GroupView",
    "LossProbe",
    "NonFiniteProbe",
    "Probe",
    "StepContext",
    "UpdateRatioProbe",
]
