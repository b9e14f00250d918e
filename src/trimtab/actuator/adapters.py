"""Where each knob lives in an optimizer's param groups, per optimizer family.

SGD keeps momentum under ``momentum``; Adam-family optimizers keep it as ``betas[0]``;
some optimizers hold ``lr`` (or ``betas``) as tensors (for compiled or capturable steps)
which must be written in place. Some families also keep *algorithm state* in their param
groups: schedule-free's step count ``k``, ``weight_sum`` and ``lr_max`` (its averaging),
Prodigy's running sums ``d_numerator`` and ``k``. Those keys are not hyperparameters: a
rollback must restore them with the moments they summarise, or the next step mixes two
points in time (schedule-free would average with weights from the abandoned trajectory;
Prodigy would divide a late numerator by an early denominator and inflate its estimate).
Prodigy's estimate itself (``d``, ``d_max``) is its learned step size and is kept across a
rollback, like the lr, so trimtab's cut applies to the step ``d x lr``. And
Prodigy refuses different non-zero ``lr`` values across its groups, so its groups must move
together. A ``Family`` records all of this, so the actuator and the controller can act on
each optimizer correctly and refuse, at construction, a knob it does not have.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Any

import torch

from trimtab.types import Knob

ParamGroup = MutableMapping[str, Any]


@dataclass(frozen=True)
class Family:
    """What trimtab knows about one optimizer family.

    Attributes:
        name: short family name, used in messages and in the run header.
        momentum: where momentum lives: ``"momentum"``, ``"betas[0]"`` or ``None``.
        state_keys: param-group keys that hold algorithm state, restored by a rollback.
        shared_lr: every group with a non-zero lr must have the same lr (Prodigy).
        warmup_key: group key of the optimizer's own lr warmup, if it has one.
        note: how trimtab's knobs act on this family.
    """

    name: str
    momentum: str | None
    state_keys: frozenset[str] = frozenset()
    shared_lr: bool = False
    warmup_key: str | None = None
    note: str = ""


# ``train_mode`` is left out on purpose: a rollback keeps the mode the user set (the
# first snapshot is taken before the user's optimizer.train() call may have happened).
SCHEDULE_FREE_STATE = frozenset({"k", "weight_sum", "lr_max", "scheduled_lr"})
# d and d_max are left out on purpose: see the module docstring. d_denom and d_hat appear
# after the first step (they are recomputed each step; restored for a consistent log).
PRODIGY_STATE = frozenset({"d_numerator", "d_denom", "d_hat", "k"})


def family_of(optimizer: Any) -> Family:
    """The family of ``optimizer``, from its class and the keys of its param groups.

    Third-party optimizers are told by their top-level package name, so none of those
    packages is imported here.
    """
    cls = type(optimizer)
    package = cls.__module__.split(".")[0]
    keys = set(optimizer.param_groups[0]) if optimizer.param_groups else set()
    momentum = "momentum" if "momentum" in keys else "betas[0]" if "betas" in keys else None
    if package == "schedulefree":
        return Family(
            "schedule_free",
            momentum,
            SCHEDULE_FREE_STATE,
            warmup_key="warmup_steps",
            note=(
                "lr is the peak its warmup scales; each iterate's averaging weight is "
                "lr_max**weight_lr_power, so a cut shrinks steps but not the averaging "
                "weight, and a raise above the previous maximum lifts it for good"
            ),
        )
    if package == "prodigyopt":
        return Family(
            "prodigy",
            momentum,
            PRODIGY_STATE,
            shared_lr=True,
            note=(
                "lr multiplies the estimated step size d (the step is d x lr); a rollback "
                "keeps d and restores its running sums"
            ),
        )
    if package == "pytorch_optimizer" and cls.__name__ == "Lion":
        return Family("lion", momentum, note="momentum is betas[0], the sign-update blend")
    if package == "pytorch_optimizer" and cls.__name__ == "Lamb":
        return Family("lamb", momentum, note="layer-wise trust ratio on an Adam update")
    if isinstance(optimizer, torch.optim.SGD):
        return Family("sgd", momentum)
    if package == "torch" and cls.__name__ == "Muon":
        return Family("muon", momentum, note="2-D weights only; pair with AdamW")
    if isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)):
        return Family("adam", momentum)
    return Family(cls.__name__.lower(), momentum)


def knobs_of(group: ParamGroup) -> frozenset[Knob]:
    """The knobs this param group exposes (``max_grad_norm`` is trimtab's own)."""
    found = {Knob.LR} if "lr" in group else set()
    if "momentum" in group or "betas" in group:
        found.add(Knob.MOMENTUM)
    if "weight_decay" in group:
        found.add(Knob.WEIGHT_DECAY)
    return frozenset(found)


def read(group: ParamGroup, knob: Knob) -> float:
    """Current value of ``knob`` in ``group`` as a float (a tensor value syncs)."""
    if knob is Knob.MOMENTUM and "momentum" not in group:
        return _float(group["betas"][0])
    return _float(group[knob.value])


def _float(value: Any) -> float:
    return float(value.item()) if isinstance(value, torch.Tensor) else float(value)


def write(group: ParamGroup, knob: Knob, value: float) -> None:
    """Set ``knob`` in ``group``, keeping the stored type (float, tensor or betas tuple)."""
    if knob is Knob.MOMENTUM and "momentum" not in group:
        betas = tuple(group["betas"])
        if isinstance(betas[0], torch.Tensor):
            betas[0].fill_(value)  # tensor betas (capturable/compiled steps) stay tensors
        else:
            group["betas"] = (value, *betas[1:])
        return
    current = group[knob.value]
    if isinstance(current, torch.Tensor):
        current.fill_(value)
    else:
        group[knob.value] = value
