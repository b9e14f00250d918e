"""Optimizer-aware starting points, and a builder for the families trimtab knows.

Each family has a different sensible learning rate and weight decay: Lion's sign update
has a larger norm than Adam's, so its LR is 3-10x lower and its decoupled weight decay
3-10x higher (keeping lr x wd, the decay timescale, similar; Chen et al., 2023); LAMB's
per-layer trust ratio makes large batches and larger LRs safe (You et al., 2020); Muon
orthogonalises 2-D updates and runs at ~0.02 with momentum 0.95 (Jordan et al., 2024),
with AdamW for everything that is not a matrix; schedule-free AdamW wants no schedule
and a slightly higher LR (Defazio et al., 2024); Prodigy estimates the step size itself,
so its ``lr`` is a multiplier that stays at 1 (Mishchenko & Defazio, 2024).

How trimtab acts on each (the actuator writes only ``lr``, ``momentum``/``betas[0]`` and
``weight_decay``, and only for the duration of ``optimizer.step()``):

- schedule-free: its ``lr`` is the peak LR its warmup scales (``scheduled_lr`` logs the
  value used). The weight of each iterate in its average is ``lr_max ** 2``, where
  ``lr_max`` is the largest LR used so far: a trimtab cut makes the steps smaller but
  leaves the averaging weights as they were, while raising the LR above its previous
  maximum raises the weight of every later iterate for good. It must be in ``train()``
  mode while stepping (``Regime.step`` checks) and ``eval()`` for evaluation. A rollback
  restores ``k``, ``weight_sum`` and ``lr_max`` with the averaged state; a trimtab
  schedule that warms up is refused while its own ``warmup_steps`` is above 0.
- Prodigy: the step is ``d x lr``; trimtab's multiplier scales ``lr`` around 1 and leaves
  the estimate ``d`` to Prodigy. A rollback restores its running sums (``d_numerator``,
  ``k``) with the moments and keeps ``d``, so the cut applies to ``d x lr``; its groups
  share one lr, so an lr change to one group moves them all (each logged).
- Muon + AdamW: pass both to ``Regime`` as a list; groups are named across both.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

from trimtab.errors import ConfigError


@dataclass(frozen=True)
class OptimizerDefaults:
    """A starting recipe for one optimizer family (override anything)."""

    name: str
    lr: float
    weight_decay: float
    extra: dict[str, Any] = field(default_factory=dict)
    note: str = ""


_DEFAULTS = {
    d.name: d
    for d in [
        OptimizerDefaults(
            "sgd",
            0.1,
            5e-4,
            {"momentum": 0.9, "nesterov": True},
            "classic vision recipe; pair with warmup + cosine",
        ),
        OptimizerDefaults(
            "adam",
            1e-3,
            0.0,
            {"betas": (0.9, 0.999)},
            "L2 weight decay in Adam is not decoupled: prefer adamw",
        ),
        OptimizerDefaults(
            "adamw", 1e-3, 0.01, {"betas": (0.9, 0.999)}, "the default; warmup for transformers"
        ),
        OptimizerDefaults(
            "lion",
            3e-4,
            0.1,
            {"betas": (0.9, 0.99)},
            "3-10x lower LR and 3-10x higher weight decay than AdamW",
        ),
        OptimizerDefaults(
            "lamb",
            2e-3,
            0.01,
            {"betas": (0.9, 0.999)},
            "for large batches: the trust ratio keeps per-layer steps sane",
        ),
        OptimizerDefaults(
            "muon",
            0.02,
            0.01,
            {"momentum": 0.95, "nesterov": True},
            "2-D weights only; the rest goes to AdamW at 1e-3",
        ),
        OptimizerDefaults(
            "schedulefree_adamw",
            2.5e-3,
            0.08,
            {"betas": (0.9, 0.9955)},
            "no schedule; 2 % warmup; the AlgoPerf-2024 configuration",
        ),
        OptimizerDefaults(
            "prodigy",
            1.0,
            0.0,
            {"betas": (0.9, 0.999)},
            "lr is a multiplier on the estimated step size: keep it at 1",
        ),
    ]
}


def optimizer_defaults(name: str) -> OptimizerDefaults:
    """The starting recipe for ``name`` (see the module docstring for the reasons)."""
    try:
        return _DEFAULTS[name]
    except KeyError:
        raise ConfigError(
            f"unknown optimizer {name!r}; known: {', '.join(sorted(_DEFAULTS))}"
        ) from None


def _lazy(module: str, attribute: str, extra: str) -> type:
    try:
        return getattr(importlib.import_module(module), attribute)
    except ImportError as exc:
        raise ImportError(
            f"{attribute} needs the {module!r} package: pip install 'trimtab[{extra}]'"
        ) from exc


def build_optimizer(
    name: str, model: torch.nn.Module, **overrides: Any
) -> torch.optim.Optimizer | list[torch.optim.Optimizer]:
    """Build ``name`` over ``model``'s trainable parameters with its defaults.

    Muon returns ``[Muon(matrices), AdamW(the rest)]``; pass the list to ``Regime``.
    Keyword arguments override the defaults (``lr=...``, ``weight_decay=...``).
    """
    recipe = optimizer_defaults(name)
    params = [p for p in model.parameters() if p.requires_grad]
    settings = {"lr": recipe.lr, "weight_decay": recipe.weight_decay, **recipe.extra}
    settings.update(overrides)
    if name == "sgd":
        return torch.optim.SGD(params, **settings)
    if name == "adam":
        return torch.optim.Adam(params, **settings)
    if name == "adamw":
        return torch.optim.AdamW(params, **settings)
    if name == "lion":
        return _lazy("pytorch_optimizer", "Lion", "optimizers")(params, **settings)
    if name == "lamb":
        return _lazy("pytorch_optimizer", "Lamb", "optimizers")(params, **settings)
    if name == "schedulefree_adamw":
        cls = _lazy("schedulefree", "AdamWScheduleFree", "optimizers")
        optimizer = cls(params, **settings)
        optimizer.train()
        return optimizer
    if name == "prodigy":
        return _lazy("prodigyopt", "Prodigy", "optimizers")(params, **settings)
    return _muon_pair(model, settings)


def _muon_pair(model: torch.nn.Module, settings: dict[str, Any]) -> list[torch.optim.Optimizer]:
    matrices = [p for p in _hidden_matrices(model)]
    ids = {id(p) for p in matrices}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
    if not matrices:
        raise ConfigError(f"{type(model).__name__} has no 2-D hidden weights for Muon")
    muon = torch.optim.Muon([{"params": matrices, "name": "muon"}], **settings)
    adamw = torch.optim.AdamW([{"params": rest, "name": "adamw"}], lr=1e-3, weight_decay=0.01)
    return [muon, adamw]


def _hidden_matrices(model: torch.nn.Module) -> Iterable[torch.nn.Parameter]:
    """2-D weights of linear layers except the first and the last (Muon's usual split)."""
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    inner = linears[1:-1] if len(linears) > 2 else []
    return [m.weight for m in inner if m.weight.requires_grad]
