"""``trimtab.init_``: initialise a model for its activations, depth and width rule.

The rule per module, and how the activation is found:

- ``nn.Linear``/``nn.Conv*`` followed by a ReLU-family activation (ReLU, LeakyReLU,
  GELU, SiLU, ELU, Mish, ...): Kaiming normal (He et al., 2015), ``std = gain /
  sqrt(fan_in)`` with the ReLU gain (LeakyReLU's slope for LeakyReLU). GELU and SiLU get
  the ReLU gain: they are ReLU-like for the inputs that matter.
- followed by Tanh or Sigmoid: Xavier normal (Glorot & Bengio, 2010) with the tanh gain
  (5/3) or 1.
- followed directly by another matrix (no activation): ``std = 1 / sqrt(fan_in)``.
- a transformer block's residual output projections (``linear2`` and the attention's
  ``out_proj`` of ``nn.TransformerEncoderLayer``/``DecoderLayer``): ``1 / sqrt(fan_in)``
  further divided by ``sqrt(2 * depth)`` (GPT-2; Radford et al., 2019), so the residual
  stream's variance does not grow with the number of blocks. ``depth`` counts the blocks.
- the readout (the last ``nn.Linear``; see ``trimtab.scaling.structure``): zero by
  default, which muP allows and Tensor Programs V recommends (Yang et al., 2022, §D);
  ``readout_init="small"`` draws ``std = 1 / fan_in`` (muP's variance 1/fan_in^2),
  ``"standard"`` ``1 / sqrt(fan_in)``.
- biases zero; norm layers weight 1, bias 0; embeddings N(0, 1) (a one-hot fan-in: the
  variance does not depend on width); attention input projections Xavier uniform.

"Followed by" means the next module in the same ``nn.Sequential``, skipping dropout,
identity, normalization and pooling layers; a transformer layer's ``linear1`` reads the
layer's own ``activation``. Anything else is refused with its name: pass
``activations={"pattern": "relu"}`` (fnmatch on module names; also ``"tanh"``,
``"sigmoid"``, ``"linear"``, ``"residual"``) or ``skip=("pattern",)`` to leave it alone.
"""

from __future__ import annotations

import fnmatch
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

from trimtab.errors import ConfigError, ConfigTypeError
from trimtab.scaling.structure import CONVS, EMBEDDINGS, NORMS, classify

logger = logging.getLogger(__name__)

ReadoutInit = Literal["zero", "small", "standard"]
Scheme = Literal["auto", "kaiming", "xavier"]
RELU_LIKE = (
    nn.ReLU,
    nn.ReLU6,
    nn.GELU,
    nn.SiLU,
    nn.ELU,
    nn.CELU,
    nn.Mish,
    nn.Softplus,
    nn.Hardswish,
    nn.PReLU,
    nn.SELU,
)
PASS_THROUGH = (
    nn.Dropout,
    nn.Identity,
    *NORMS,
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.Flatten,
)
TRANSFORMER_LAYERS = (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)
ACTIVATION_NAMES = ("relu", "leaky_relu", "gelu", "silu", "tanh", "sigmoid", "linear", "residual")
_GAINS = {
    "relu": math.sqrt(2.0),
    "gelu": math.sqrt(2.0),
    "silu": math.sqrt(2.0),
    "tanh": 5.0 / 3.0,
    "sigmoid": 1.0,
    "linear": 1.0,
}


@dataclass(frozen=True)
class InitRecord:
    """What ``init_`` did to one module: ``str(record)`` reads as a line of a report."""

    module: str
    kind: str
    rule: str
    std: float | None

    def __str__(self) -> str:
        std = "" if self.std is None else f" (std {self.std:.3g})"
        return f"{self.module or '<model>'} [{self.kind}]: {self.rule}{std}"


def init_(
    model: nn.Module,
    scheme: Scheme = "auto",
    *,
    activations: Mapping[str, str] | None = None,
    readout: str | None = None,
    readout_init: ReadoutInit = "zero",
    depth: int | None = None,
    skip: Sequence[str] = (),
) -> list[InitRecord]:
    """Initialise ``model`` in place, module by module; return what was done to each.

    Args:
        model: the network.
        scheme: ``"auto"`` reads each matrix's activation (module docstring);
            ``"kaiming"``/``"xavier"`` apply that rule to every hidden matrix.
        activations: ``{fnmatch pattern on module names: activation name}``.
        readout: name of the output module if it is not the last ``nn.Linear``.
        readout_init: ``"zero"``, ``"small"`` (std 1/fan_in) or ``"standard"``.
        depth: residual blocks for the 1/sqrt(2 * depth) rule (counted if None).
        skip: fnmatch patterns of module names to leave as they are.

    Example:
        >>> records = init_(nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2)))
        >>> print(records[0])
        0 [Linear]: xavier (tanh) (std 0.68)
    """
    if not isinstance(model, nn.Module):
        raise ConfigTypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if scheme not in ("auto", "kaiming", "xavier"):
        raise ConfigError(f"scheme must be 'auto', 'kaiming' or 'xavier', got {scheme!r}")
    if readout_init not in ("zero", "small", "standard"):
        raise ConfigError(
            f"readout_init must be 'zero', 'small' or 'standard', got {readout_init!r}"
        )
    mapping = dict(activations or {})
    for pattern, name in mapping.items():
        if name not in ACTIVATION_NAMES:
            raise ConfigError(f"activations[{pattern!r}] = {name!r}; known: {ACTIVATION_NAMES}")
    modules = dict(model.named_modules())
    blocks = sum(isinstance(m, TRANSFORMER_LAYERS) for m in modules.values())
    depth = (blocks or 1) if depth is None else depth
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        raise ConfigError(f"depth must be an int >= 1, got {depth!r}")
    out_layer = next(
        (p.module for p in classify(model, readout=readout) if p.role == "readout"), None
    )
    following = _followers(model)
    residual = _residual_projections(modules)
    embedded = {id(m.weight) for m in modules.values() if isinstance(m, EMBEDDINGS)}
    records: list[InitRecord] = []
    with torch.no_grad():
        for name, module in modules.items():
            if not any(True for _ in module.parameters(recurse=False)):
                continue
            kind = type(module).__name__
            if any(fnmatch.fnmatchcase(name, p) for p in skip):
                records.append(InitRecord(name, kind, "skipped (skip=)", None))
                continue
            if isinstance(module, NORMS):
                _fill(module, "weight", 1.0)
                _fill(module, "bias", 0.0)
                records.append(InitRecord(name, kind, "weight 1, bias 0", None))
            elif isinstance(module, EMBEDDINGS):
                nn.init.normal_(module.weight, 0.0, 1.0)
                records.append(InitRecord(name, kind, "normal (width-independent)", 1.0))
            elif isinstance(module, nn.MultiheadAttention):
                records.append(_attention(name, module))
            elif isinstance(module, (nn.Linear, *CONVS)):
                if name == out_layer and id(module.weight) in embedded:
                    records.append(InitRecord(name, kind, "tied to an embedding: left", None))
                    continue
                rule = _rule_for(name, module, mapping, out_layer, residual, following, scheme)
                records.append(_matrix(name, module, rule, readout_init, depth))
            else:
                params = [n for n, _ in module.named_parameters(recurse=False)]
                raise ConfigError(
                    f"init_ does not know how to initialise module {name or '<model>'!r} "
                    f"({kind}, parameters {params}); pass skip=({name!r},) to leave it as it "
                    "is, or initialise it yourself after init_"
                )
    for record in records:
        logger.debug("init_: %s", record)
    return records


def _fill(module: nn.Module, attribute: str, value: float) -> None:
    tensor = getattr(module, attribute, None)
    if isinstance(tensor, torch.Tensor):
        tensor.fill_(value)


def _activation_name(module: object) -> str | None:
    """The family of an activation module or function, or None if it is not one."""
    if isinstance(module, nn.LeakyReLU):
        return "leaky_relu"
    if isinstance(module, (nn.Tanh, nn.Hardtanh)):
        return "tanh"
    if isinstance(module, nn.Sigmoid):
        return "sigmoid"
    if isinstance(module, (nn.GELU,)) or module is F.gelu:
        return "gelu"
    if isinstance(module, RELU_LIKE) or module in (F.relu, F.silu):
        return "relu"
    return None


def _followers(model: nn.Module) -> dict[int, str | None]:
    """id(matrix) -> the activation after it in its Sequential ("linear": another matrix)."""
    found: dict[int, str | None] = {}
    for seq in model.modules():
        if not isinstance(seq, nn.Sequential):
            continue
        children = list(seq)
        for i, child in enumerate(children):
            if not isinstance(child, (nn.Linear, *CONVS)):
                continue
            nxt = next((c for c in children[i + 1 :] if not isinstance(c, PASS_THROUGH)), None)
            if nxt is None:
                continue
            if isinstance(nxt, (nn.Linear, *CONVS)):
                found[id(child)] = "linear"
            else:
                found[id(child)] = _activation_name(nxt)
                if found[id(child)] == "leaky_relu":
                    found[id(child)] = f"leaky_relu:{nxt.negative_slope}"
    return found


def _residual_projections(modules: Mapping[str, nn.Module]) -> dict[str, str | None]:
    """Names of residual output projections -> None; first FFN layers -> their activation."""
    found: dict[str, str | None] = {}
    for name, module in modules.items():
        if not isinstance(module, TRANSFORMER_LAYERS):
            continue
        prefix = f"{name}." if name else ""
        found[f"{prefix}linear2"] = "residual"
        found[f"{prefix}self_attn.out_proj"] = "residual"
        if isinstance(module, nn.TransformerDecoderLayer):
            found[f"{prefix}multihead_attn.out_proj"] = "residual"
        found[f"{prefix}linear1"] = _activation_name(module.activation)
    return found


def _rule_for(name, module, mapping, out_layer, residual, following, scheme) -> str:
    hits = [a for p, a in mapping.items() if fnmatch.fnmatchcase(name, p)]
    if hits:
        return hits[-1]
    if name == out_layer:
        return "readout"
    if name in residual and residual[name] is not None:
        return residual[name]  # type: ignore[return-value]
    if scheme != "auto":
        return "relu" if scheme == "kaiming" else "xavier"
    if following.get(id(module)) is not None:
        return following[id(module)]  # type: ignore[return-value]
    raise ConfigError(
        f"init_ cannot tell which activation follows {name!r} ({type(module).__name__}): it "
        f"is not followed by an activation in an nn.Sequential; pass activations={{{name!r}: "
        f"'relu'}} (or 'tanh', 'sigmoid', 'linear', 'residual') or skip=({name!r},)"
    )


def _matrix(name: str, module: nn.Module, rule: str, readout_init: str, depth: int) -> InitRecord:
    kind = type(module).__name__
    weight = module.weight
    fan_in = nn.init._calculate_correct_fan(weight, "fan_in")
    fan_out = nn.init._calculate_correct_fan(weight, "fan_out")
    if rule == "readout":
        std = {"zero": 0.0, "small": 1.0 / fan_in, "standard": fan_in**-0.5}[readout_init]
        text = f"readout: {readout_init}"
    elif rule == "residual":
        std = fan_in**-0.5 / math.sqrt(2 * depth)
        text = f"residual projection: 1/sqrt(fan_in) / sqrt(2 x {depth})"
    elif rule.startswith("leaky_relu"):
        slope = float(rule.split(":")[1]) if ":" in rule else 0.01
        std = math.sqrt(2.0 / (1 + slope**2)) / math.sqrt(fan_in)
        text = f"kaiming (leaky_relu {slope:g})"
    elif rule in ("tanh", "sigmoid", "xavier"):
        std = _GAINS.get(rule, 1.0) * math.sqrt(2.0 / (fan_in + fan_out))
        text = f"xavier ({rule})" if rule != "xavier" else "xavier"
    elif rule == "linear":
        std = fan_in**-0.5
        text = "1/sqrt(fan_in) (no activation)"
    else:
        std = _GAINS[rule] / math.sqrt(fan_in)
        text = f"kaiming ({rule})"
    if std == 0.0:
        weight.zero_()
    else:
        nn.init.normal_(weight, 0.0, std)
    if getattr(module, "bias", None) is not None:
        module.bias.zero_()
    return InitRecord(name, kind, text, std)


def _attention(name: str, module: nn.MultiheadAttention) -> InitRecord:
    for pname in ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight"):
        tensor = getattr(module, pname, None)
        if tensor is not None:
            nn.init.xavier_uniform_(tensor)
    for pname in ("in_proj_bias", "bias_k", "bias_v"):
        tensor = getattr(module, pname, None)
        if tensor is not None:
            tensor.zero_()
    return InitRecord(name, type(module).__name__, "input projections xavier uniform", None)
