"""The first record of every log: what ran, so a log can be read without the script."""

from __future__ import annotations

import platform
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from trimtab.actuator import GroupHandle
from trimtab.arbiter import ArbiterConfig
from trimtab.policies import Policy
from trimtab.probes import Probe


def _plain(value: Any) -> Any:
    """Hyperparameters as JSON-ready values (tensors become floats, tuples lists)."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return float(value.item())
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    return repr(value)


def describe_run(
    model: torch.nn.Module,
    optimizers: Sequence[torch.optim.Optimizer],
    handles: Sequence[GroupHandle],
    probes: Sequence[Probe],
    policies: Sequence[Policy],
    arbiter: ArbiterConfig,
    *,
    total_steps: int | None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    from trimtab import __version__

    params = list(model.parameters())
    groups = []
    for handle in handles:
        group = handle.group
        groups.append(
            {
                "name": handle.name,
                "optimizer": type(handle.optimizer).__name__,
                "family": handle.family.name,
                "params": sum(p.numel() for p in group["params"]),
                "tensors": len(group["params"]),
                # biases and norm weights: decaying them is a common, silent mistake
                "vector_tensors": sum(p.dim() <= 1 for p in group["params"]),
                "hyperparameters": {k: _plain(v) for k, v in group.items() if k != "params"},
            }
        )
    return {
        "trimtab": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "model": {
            "class": type(model).__name__,
            "parameters": sum(p.numel() for p in params),
            "trainable": sum(p.numel() for p in params if p.requires_grad),
            "dtypes": _dtypes(params),
            "modules": _module_counts(model),
        },
        "optimizers": [type(o).__name__ for o in optimizers],
        "groups": groups,
        "total_steps": total_steps,
        "probes": [{"name": p.name, **p.settings()} for p in probes],
        "policies": [{"name": p.name, "settings": p.settings()} for p in policies],
        "arbiter": arbiter.as_dict(),
        **dict(extra or {}),
    }


def _dtypes(params: Sequence[torch.Tensor]) -> dict[str, int]:
    """Parameter count per dtype (``{"float32": 1234}``): shows fp16 weights."""
    counts: dict[str, int] = {}
    for p in params:
        key = str(p.dtype).removeprefix("torch.")
        counts[key] = counts.get(key, 0) + p.numel()
    return counts


def _module_counts(model: torch.nn.Module) -> dict[str, int]:
    """How many modules of each class the model holds (dropout, norms, attention...)."""
    counts: dict[str, int] = {}
    for module in model.modules():
        name = type(module).__name__
        counts[name] = counts.get(name, 0) + 1
    return counts
