"""``trimtab.recipe``: a ready optimizer whose settings follow the model's scale.

One recipe, tuned once on a small model, should transfer to a wide one. The rules (see
``trimtab.scaling.rules`` for each formula and its source) are muP learning rates per
layer, weight decay by EMA timescale per group, and a clip threshold and warmup that
follow the model's size. Every choice is in the returned ``RecipeReport``.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from typing import Any, Literal

import torch
from torch import nn

from trimtab import _checks
from trimtab.errors import ConfigError, ConfigTypeError
from trimtab.optimizers import optimizer_defaults
from trimtab.scaling import rules
from trimtab.scaling.attention import attention_note
from trimtab.scaling.report import GroupChoice, RecipeReport
from trimtab.scaling.structure import MATRIX_ROLES, ParamInfo, classify

RecipeOptimizer = Literal["adamw", "adam", "sgd"]
_CLASSES: dict[str, type[torch.optim.Optimizer]] = {
    "adamw": torch.optim.AdamW,
    "adam": torch.optim.Adam,
    "sgd": torch.optim.SGD,
}
OVERRIDE_KEYS = ("lr", "lr_scale", "weight_decay")


def recipe(
    model: nn.Module,
    optimizer: RecipeOptimizer = "adamw",
    *,
    total_steps: int,
    lr: float | None = None,
    base_width: int = 256,
    weight_decay: float | None = None,
    decay_fraction: float = 1.0,
    decay_embeddings: bool = False,
    readout_multiplier: float = 1.0,
    max_grad_norm: float | None = None,
    warmup_steps: int | None = None,
    readout: str | None = None,
    roles: Mapping[str, str] | None = None,
    overrides: Mapping[str, Mapping[str, float]] | None = None,
) -> tuple[torch.optim.Optimizer, RecipeReport]:
    """Build ``optimizer`` over ``model`` with per-group settings that follow its scale.

    Groups: matrices (input, hidden, readout) decay; biases, norm weights and (unless
    ``decay_embeddings``) embeddings do not. Learning rates follow muP (Yang & Hu 2021;
    Yang et al. 2022, "Tensor Programs V"): for Adam/AdamW a hidden or readout matrix
    gets ``lr * base_width / fan_in``, everything else ``lr``; for SGD hidden matrices
    keep ``lr``, the readout gets ``lr * base_width / fan_in`` and vector-like
    parameters ``lr * fan_out / base_width``. Weight decay holds the AdamW EMA timescale
    ``1 / (lr_group * wd)`` at ``decay_fraction`` of ``total_steps`` (Wang & Aitchison
    2024). ``max_grad_norm`` defaults to ``0.5 * sqrt(number of weight matrices)``; the
    warmup to 2 % of the run at 1e5 parameters plus 2 points per decade (at most 10 %).

    Args:
        model: the network (its structure decides the groups; it is not run).
        optimizer: ``"adamw"``, ``"adam"`` or ``"sgd"``.
        total_steps: planned optimizer steps (sets the decay timescale and warmup).
        lr: base learning rate, as tuned at ``base_width``; the family default if None.
        base_width: the width at which ``lr`` holds unchanged for a width-``fan_in`` matrix.
        weight_decay: one value for every decaying group instead of the timescale rule.
        decay_fraction: decay timescale as a fraction of ``total_steps``. The default
            1.0 is ours (AdamW at lr 1e-3 for 10k steps gets wd 0.1); the papers find the
            best fraction roughly constant across model and data size, so tune it once
            on the small model. It trades training loss for regularization.
        decay_embeddings: decay embedding tables too.
        readout_multiplier: extra factor on the readout's learning rate.
        max_grad_norm, warmup_steps: override the size rules.
        readout, roles: see ``trimtab.scaling.structure.classify``.
        overrides: ``{fnmatch pattern on parameter names: {"lr"|"lr_scale"|
            "weight_decay": value}}``, applied after the rules.

    Returns:
        ``(optimizer, report)``; each group has ``name``, ``lr``, ``weight_decay`` and
        ``max_grad_norm`` (pass it as ``Regime(..., max_grad_norm=...)`` to clip with it).

    Example:
        >>> model = nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 2))
        >>> opt, report = recipe(model, "adamw", lr=1e-3, total_steps=1000, base_width=32)
        >>> report.group("readout").lr
        0.0005
    """
    name = _family(optimizer)
    total_steps = _checks.count("total_steps", total_steps)
    defaults = optimizer_defaults(name)
    base_lr = defaults.lr if lr is None else _checks.positive("lr", lr)
    base_width = _checks.count("base_width", base_width)
    fraction = _checks.positive("decay_fraction", decay_fraction)
    readout_multiplier = _checks.positive("readout_multiplier", readout_multiplier)
    if weight_decay is not None and _checks.real("weight_decay", weight_decay) < 0:
        raise ConfigError(f"weight_decay must be >= 0, got {weight_decay}")
    if warmup_steps is not None:
        _checks.count("warmup_steps", warmup_steps, minimum=0)
        if warmup_steps >= total_steps:
            raise ConfigError(
                f"warmup_steps ({warmup_steps}) must be below total_steps ({total_steps})"
            )
    infos = classify(model, readout=readout, roles=roles)
    patterns = _check_overrides(overrides or {}, infos)
    momentum = float(defaults.extra.get("momentum", 0.0)) if name == "sgd" else 0.0

    keyed: dict[tuple[Any, ...], list[ParamInfo]] = {}
    settings: dict[tuple[Any, ...], tuple[float, str, float, str]] = {}
    for info in infos:
        mult, lr_rule = rules.lr_multiplier(name, info, base_width)
        if info.role == "readout" and readout_multiplier != 1.0:
            mult, lr_rule = mult * readout_multiplier, f"{lr_rule} x {readout_multiplier:g}"
        group_lr = base_lr * mult
        hit = [i for i, (p, _) in enumerate(patterns) if fnmatch.fnmatchcase(info.name, p)]
        change = patterns[hit[-1]][1] if hit else {}
        if "lr" in change:
            group_lr, lr_rule = change["lr"], "override"
        elif "lr_scale" in change:
            group_lr, lr_rule = group_lr * change["lr_scale"], f"{lr_rule} x {change['lr_scale']:g}"
        decays = info.role in MATRIX_ROLES or (info.role == "other" and info.is_matrix)
        decays = decays or (info.role == "embedding" and decay_embeddings)
        if not decays:
            wd, wd_rule = 0.0, f"no decay ({info.role})"
        elif weight_decay is not None:
            wd, wd_rule = weight_decay, "user value"
        elif name == "adam":
            wd, wd_rule = 0.0, "Adam's L2 is coupled: no timescale rule (use adamw)"
        else:
            tau = fraction * total_steps
            wd = rules.timescale_decay(group_lr, total_steps, fraction, momentum)
            wd_rule = f"tau {tau:.4g} steps" + (f" x (1-{momentum:g})" if momentum else "")
        if "weight_decay" in change:
            wd, wd_rule = change["weight_decay"], "override"
        key = (info.role, group_lr, wd, hit[-1] if hit else -1)
        keyed.setdefault(key, []).append(info)
        settings[key] = (group_lr, lr_rule, wd, wd_rule)

    names = _group_names(list(keyed), keyed)
    matrices = sum(i.role in MATRIX_ROLES or i.role == "embedding" for i in infos)
    clip = rules.clip_threshold(matrices) if max_grad_norm is None else max_grad_norm
    clip = _checks.positive("max_grad_norm", clip)
    parameters = sum(i.param.numel() for i in infos)
    if warmup_steps is None:
        warmup_steps = min(round(rules.warmup_fraction(parameters) * total_steps), total_steps - 1)
        warmup_rule = f"{rules.warmup_fraction(parameters):.1%} of the run at {parameters} params"
    else:
        warmup_rule = "override"
    clip_rule = "override" if max_grad_norm is not None else f"0.5 x sqrt({matrices} matrices)"

    groups: list[dict[str, Any]] = []
    choices: list[GroupChoice] = []
    for key, members in keyed.items():
        group_lr, lr_rule, wd, wd_rule = settings[key]
        params = [m.param for m in members]
        groups.append(
            {
                "params": params,
                "name": names[key],
                "lr": group_lr,
                "weight_decay": wd,
                "max_grad_norm": clip,
            }
        )
        choices.append(
            GroupChoice(
                name=names[key],
                role=key[0],
                tensors=len(params),
                params=sum(p.numel() for p in params),
                lr=group_lr,
                lr_rule=lr_rule,
                weight_decay=wd,
                decay_rule=wd_rule,
                names=tuple(m.name for m in members),
            )
        )
    built = _CLASSES[name](groups, lr=base_lr, **defaults.extra)
    report = RecipeReport(
        optimizer=name,
        base_lr=base_lr,
        base_width=base_width,
        total_steps=total_steps,
        parameters=parameters,
        matrices=matrices,
        decay_fraction=fraction,
        max_grad_norm=clip,
        clip_rule=clip_rule,
        warmup_steps=warmup_steps,
        warmup_rule=warmup_rule,
        groups=tuple(choices),
        notes=_notes(model, infos, base_width),
    )
    return built, report


def _family(optimizer: object) -> str:
    if not isinstance(optimizer, str):
        raise ConfigTypeError(
            f"optimizer must be a name ('adamw', 'adam' or 'sgd'), got {type(optimizer).__name__}"
        )
    if optimizer not in _CLASSES:
        optimizer_defaults(optimizer)  # raises for names trimtab does not know at all
        raise ConfigError(
            f"recipe() supports {', '.join(_CLASSES)}; for {optimizer!r} use "
            "trimtab.build_optimizer and set per-group rates yourself"
        )
    return optimizer


def _check_overrides(
    overrides: Mapping[str, Mapping[str, float]], infos: list[ParamInfo]
) -> list[tuple[str, dict[str, float]]]:
    checked: list[tuple[str, dict[str, float]]] = []
    for pattern, change in overrides.items():
        if not isinstance(change, Mapping):
            raise ConfigTypeError(f"overrides[{pattern!r}] must be a dict like {{'lr': 1e-3}}")
        unknown = sorted(set(change) - set(OVERRIDE_KEYS))
        if unknown:
            raise ConfigError(
                f"overrides[{pattern!r}] has unknown keys {unknown}; use {list(OVERRIDE_KEYS)}"
            )
        if "lr" in change and "lr_scale" in change:
            raise ConfigError(f"overrides[{pattern!r}] sets both lr and lr_scale; pick one")
        values = {}
        for key, value in change.items():
            label = f"overrides[{pattern!r}][{key!r}]"
            values[key] = _checks.positive(label, value) if key != "weight_decay" else value
            if key == "weight_decay" and _checks.real(label, value) < 0:
                raise ConfigError(f"{label} must be >= 0, got {value}")
        if not any(fnmatch.fnmatchcase(i.name, pattern) for i in infos):
            sample = ", ".join(i.name for i in infos[:6])
            raise ConfigError(
                f"overrides pattern {pattern!r} matches no parameter; names look like: {sample}"
            )
        checked.append((pattern, values))
    return checked


def _group_names(keys: list[tuple[Any, ...]], keyed: dict[tuple[Any, ...], list[ParamInfo]]):
    """Role names, made unique by fan-in (matrices) or fan-out (vectors), then a counter."""
    per_role: dict[str, int] = {}
    for key in keys:
        per_role[key[0]] = per_role.get(key[0], 0) + 1
    names: dict[tuple[Any, ...], str] = {}
    for key in keys:
        role, override = key[0], key[3]
        label = role
        if per_role[role] > 1:
            first = keyed[key][0]
            dim = f"in{first.fan_in}" if first.is_matrix else f"out{first.fan_out}"
            label = f"{role}_{dim}" + (f"_o{override}" if override >= 0 else "")
        unique, n = label, 1
        while unique in names.values():
            n += 1
            unique = f"{label}_{n}"
        names[key] = unique
    return names


def _notes(model: nn.Module, infos: list[ParamInfo], base_width: int) -> tuple[str, ...]:
    notes = []
    others = [i.name for i in infos if i.role == "other"]
    if others:
        notes.append(
            f"unscaled 'other' parameters {others[:4]}: give them a role with roles={{...}}"
        )
    attention = attention_note(model, base_width)
    if attention is not None:
        notes.append(attention)
    if not any(i.role == "readout" for i in infos):
        notes.append("no readout layer found: pass readout='module name' if there is one")
    return tuple(notes)
