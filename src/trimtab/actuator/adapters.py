"""Where each knob lives in an optimizer's param groups.

SGD keeps momentum under ``momentum``; Adam-family optimizers keep it as ``betas[0]``;
some optimizers hold ``lr`` as a tensor (for compiled or capturable steps) which must be
written in place. An adapter hides those differences from the actuator.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

import torch

from trimtab.types import Knob

ParamGroup = MutableMapping[str, Any]


def knobs_of(group: ParamGroup) -> frozenset[Knob]:
    """The knobs this param group exposes (``max_grad_norm`` is trimtab's own)."""
    found = {Knob.LR} if "lr" in group else set()
    if "momentum" in group or "betas" in group:
        found.add(Knob.MOMENTUM)
    if "weight_decay" in group:
        found.add(Knob.WEIGHT_DECAY)
    return frozenset(found)


def read(group: ParamGroup, knob: Knob) -> float:
    """Current value of ``knob`` in ``group`` as a float."""
    if knob is Knob.MOMENTUM and "momentum" not in group:
        return float(group["betas"][0])
    value = group[knob.value]
    return float(value.item()) if isinstance(value, torch.Tensor) else float(value)


def write(group: ParamGroup, knob: Knob, value: float) -> None:
    """Set ``knob`` in ``group``, keeping the stored type (float, tensor or betas tuple)."""
    if knob is Knob.MOMENTUM and "momentum" not in group:
        betas = tuple(group["betas"])
        group["betas"] = (value, *betas[1:])
        return
    current = group[knob.value]
    if isinstance(current, torch.Tensor):
        current.fill_(value)
    else:
        group[knob.value] = value
