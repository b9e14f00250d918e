"""Read a model's structure: which parameter plays which role, and how wide it is.

Scale-aware rules (muP learning rates, decay by timescale, init) treat a parameter by
its role, not its name. This module finds the roles from the module types alone, in
registration order, and never runs the model:

- ``embedding``: weights of ``nn.Embedding``/``nn.EmbeddingBag`` (an input layer whose
  fan-in is a one-hot vocabulary, so it does not grow with width).
- ``input``: the first ``nn.Linear``/``nn.Conv*`` when the model has no embedding (its
  fan-in is the data's dimension).
- ``readout``: the last ``nn.Linear`` (the output layer), or the module named by
  ``readout=``; a model with a single matrix and no embedding has no readout (its one
  matrix is the input layer).
- ``hidden``: every other matrix of a Linear/Conv, and the input projections of
  ``nn.MultiheadAttention`` (fan-in and fan-out both grow with width).
- ``bias``: biases of those layers; ``norm``: every parameter of a normalization layer.
- ``other``: parameters held directly by any other module (e.g. a learned position
  table); they keep the base learning rate and are reported so the user can re-role them.

``roles={"pattern": "role"}`` (fnmatch on the parameter name) overrides any of these.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Literal, get_args

import torch
from torch import nn

from trimtab.errors import ConfigError, ConfigTypeError

Role = Literal["input", "hidden", "readout", "embedding", "bias", "norm", "other"]
ROLES: tuple[str, ...] = get_args(Role)
MATRIX_ROLES = ("input", "hidden", "readout")

NORMS = (
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
    nn.modules.batchnorm._NormBase,
    *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()),
)
CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
EMBEDDINGS = (nn.Embedding, nn.EmbeddingBag)


@dataclass(frozen=True)
class ParamInfo:
    """One trainable parameter: its name, owner, role and width-bearing dimensions."""

    name: str
    module: str
    kind: str
    role: Role
    shape: tuple[int, ...]
    fan_in: int  # input features/channels (1 for vectors and embeddings)
    fan_out: int  # output features/channels (the length of a vector)
    in_readout: bool  # owned by the output layer (its bias's fan-out does not grow)
    param: nn.Parameter = field(repr=False, compare=False)

    @property
    def is_matrix(self) -> bool:
        return len(self.shape) >= 2


def _matrices(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Linear, *CONVS))]


def _dims(module: nn.Module, pname: str, param: torch.Tensor) -> tuple[int, int]:
    """(fan_in, fan_out) in features/channels, without the kernel's receptive field."""
    if isinstance(module, nn.Linear) and pname == "weight":
        return module.in_features, module.out_features
    if isinstance(module, CONVS) and pname == "weight":
        return module.in_channels, module.out_channels
    if isinstance(module, EMBEDDINGS):
        return 1, module.embedding_dim
    if isinstance(module, nn.MultiheadAttention) and param.dim() == 2:
        return param.shape[1], param.shape[0]
    if param.dim() >= 2:
        return param.shape[-1], param.shape[0]
    return 1, param.numel()


def _role(module: nn.Module, pname: str, param: torch.Tensor) -> Role:
    if isinstance(module, NORMS):
        return "norm"
    if isinstance(module, EMBEDDINGS):
        return "embedding"
    if isinstance(module, (nn.Linear, *CONVS, nn.MultiheadAttention)):
        return "hidden" if param.dim() >= 2 else "bias"
    return "other"


def classify(
    model: nn.Module,
    *,
    readout: str | None = None,
    roles: Mapping[str, str] | None = None,
) -> list[ParamInfo]:
    """Every trainable parameter of ``model`` with its role (see the module docstring).

    Args:
        model: the network.
        readout: name of the output module if it is not the last ``nn.Linear``.
        roles: ``{fnmatch pattern on parameter names: role}`` overrides, applied last.

    Example:
        >>> [p.role for p in classify(nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 2)))]
        ['input', 'bias', 'readout', 'bias']
    """
    if not isinstance(model, nn.Module):
        raise ConfigTypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    modules = dict(model.named_modules())
    if readout is not None and readout not in modules:
        linears = [n for n, _ in _matrices(model)]
        raise ConfigError(f"readout {readout!r} is not a module of the model; matrices: {linears}")
    matrices = _matrices(model)
    has_embedding = any(isinstance(m, EMBEDDINGS) for m in modules.values())
    linears = [n for n, m in matrices if isinstance(m, nn.Linear)]
    first = matrices[0][0] if matrices and not has_embedding else None
    if readout is None and linears and (len(matrices) > 1 or has_embedding):
        readout = linears[-1]
    seen: set[int] = set()
    found: list[ParamInfo] = []
    for mname, module in modules.items():
        for pname, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue  # frozen, or tied to one already classified (first owner wins)
            seen.add(id(param))
            role = _role(module, pname, param)
            if role == "hidden" and mname == readout:
                role = "readout"
            elif role == "hidden" and mname == first:
                role = "input"
            fan_in, fan_out = _dims(module, pname, param)
            full = f"{mname}.{pname}" if mname else pname
            info = ParamInfo(
                full,
                mname,
                type(module).__name__,
                role,
                tuple(param.shape),
                fan_in,
                fan_out,
                mname == readout,
                param,
            )
            found.append(info)
    if not found:
        raise ConfigError(
            f"{type(model).__name__} has no trainable parameters (all requires_grad=False "
            "or none at all); unfreeze some before building a recipe"
        )
    return _override(found, roles or {})


def _override(found: list[ParamInfo], roles: Mapping[str, str]) -> list[ParamInfo]:
    for pattern, role in roles.items():
        if role not in ROLES:
            raise ConfigError(f"roles[{pattern!r}] = {role!r} is not a role; roles: {ROLES}")
        hits = [i for i, p in enumerate(found) if fnmatch.fnmatchcase(p.name, pattern)]
        if not hits:
            names = ", ".join(p.name for p in found[:6])
            raise ConfigError(
                f"roles pattern {pattern!r} matches no parameter; names look like: {names}"
            )
        for i in hits:
            found[i] = replace(found[i], role=role)
    return found
