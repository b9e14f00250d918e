"""Known-good snapshots of model and optimizer state, and rollback to them.

Snapshots live on the CPU so they cost no accelerator memory. A rollback restores the
weights and optimizer state (moments, step counts); the controller wraps it in
``Actuator.keeping_hyperparameters`` so the *current* param-group hyperparameters stay:
the user's schedule has moved on, and trimtab's LR cut must stick.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from trimtab import _checks
from trimtab.errors import StateError

STATE_VERSION = 1


@dataclass(frozen=True)
class Snapshot:
    step: int
    model: dict[str, torch.Tensor]
    optimizers: tuple[dict[str, Any], ...]


def _to_cpu(tree: Any) -> Any:
    """Deep copy of a state tree with every tensor cloned onto the CPU."""
    if isinstance(tree, torch.Tensor):
        return tree.detach().to("cpu", copy=True)
    if isinstance(tree, Mapping):
        return {k: _to_cpu(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(_to_cpu(v) for v in tree)
    return copy.deepcopy(tree)


class Guard:
    """Keeps the last ``keep`` snapshots, taken every ``every`` healthy steps.

    Args:
        model: the module whose ``state_dict`` is saved.
        optimizers: the optimizers whose ``state_dict`` is saved.
        every: snapshot cadence in optimizer steps.
        keep: how many snapshots to keep (the oldest is dropped first).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        optimizers: Sequence[torch.optim.Optimizer],
        *,
        every: int = 25,
        keep: int = 2,
    ) -> None:
        self.model = model
        self.optimizers = tuple(optimizers)
        self.every = _checks.count("snapshot_every", every)
        self.keep = _checks.count("snapshot_keep", keep)
        self._snapshots: list[Snapshot] = []

    @property
    def steps(self) -> tuple[int, ...]:
        return tuple(s.step for s in self._snapshots)

    def due(self, step: int) -> bool:
        return not self._snapshots or step - self._snapshots[-1].step >= self.every

    def take(self, step: int) -> None:
        snap = Snapshot(
            step=step,
            model=_to_cpu(self.model.state_dict()),
            optimizers=tuple(_to_cpu(opt.state_dict()) for opt in self.optimizers),
        )
        self._snapshots = [*self._snapshots, snap][-self.keep :]

    def restore(self, *, before: int) -> int:
        """Restore the newest snapshot taken before step ``before``; return its step.

        Falls back to the oldest snapshot when none is that old. Snapshots newer than
        the one restored are dropped: they belong to the trajectory being abandoned.
        """
        if not self._snapshots:
            raise StateError("no snapshot to roll back to (take one before training)")
        eligible = [i for i, s in enumerate(self._snapshots) if s.step < before]
        index = eligible[-1] if eligible else 0
        snap = self._snapshots[index]
        self.model.load_state_dict(snap.model)
        for optimizer, saved in zip(self.optimizers, snap.optimizers, strict=True):
            optimizer.load_state_dict(_to_cpu(saved))  # a copy: the step mutates state in place
        self._snapshots = self._snapshots[: index + 1]
        return snap.step

    def state_dict(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "every": self.every,
            "snapshots": [
                {"step": s.step, "model": s.model, "optimizers": list(s.optimizers)}
                for s in self._snapshots
            ],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("version") != STATE_VERSION:
            raise StateError(f"guard state version {state.get('version')!r} is unsupported")
        self._snapshots = [
            Snapshot(int(s["step"]), dict(s["model"]), tuple(s["optimizers"]))
            for s in state["snapshots"]
        ]
