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
    """Keeps the last ``keep`` snapshots, taken every ``every`` healthy steps, and the first.

    The first snapshot (the state when trimtab started) is kept for good, so a run can
    start again from it (``restore_initial``); it costs one more copy of the weights on
    the CPU, and of the optimizer state as it was then (empty for a fresh optimizer).

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
        self._best: Snapshot | None = None
        self._initial: Snapshot | None = None
        self._started = False  # a first snapshot was taken (or a state loaded)

    @property
    def steps(self) -> tuple[int, ...]:
        return tuple(s.step for s in self._snapshots)

    def due(self, step: int) -> bool:
        return not self._snapshots or step - self._snapshots[-1].step >= self.every

    def take(self, step: int) -> None:
        """Snapshot the current state; the first one ever taken is also kept for good."""
        snap = self._capture(step)
        if not self._started:
            self._initial, self._started = snap, True
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
        self._load(snap)
        self._snapshots = self._snapshots[: index + 1]
        return snap.step

    @property
    def best_step(self) -> int | None:
        """Step of the weights kept by ``keep_best`` (``None``: none kept yet)."""
        return None if self._best is None else self._best.step

    def keep_best(self, step: int) -> None:
        """Keep the current state apart from the rolling snapshots: the best seen so far.

        Early stopping restores it; unlike rollback snapshots, it is never dropped by
        newer ones, only replaced by the next ``keep_best``.
        """
        self._best = self._capture(step)

    def restore_best(self) -> int:
        """Load the state kept by ``keep_best``; return the step it was taken at.

        The rolling snapshots are replaced by the restored state: those taken since
        belong to the abandoned trajectory, and a later rollback must not return to it.
        """
        if self._best is None:
            raise StateError("no best state to restore (keep_best was never called)")
        self._load(self._best)
        self._snapshots = [self._best]
        return self._best.step

    @property
    def initial_step(self) -> int | None:
        """Step of the first snapshot, where a restart returns to (``None``: none yet)."""
        return None if self._initial is None else self._initial.step

    def restore_initial(self) -> int:
        """Load the first state ever snapshotted (the run's start); return its step.

        A restart abandons everything since, the best state kept apart excepted: it
        stays the best until the new trajectory does better.
        """
        if self._initial is None:
            raise StateError("no initial state to restart from (take a snapshot first)")
        self._load(self._initial)
        self._snapshots = [self._initial]
        return self._initial.step

    def _capture(self, step: int) -> Snapshot:
        return Snapshot(
            step=step,
            model=_to_cpu(self.model.state_dict()),
            optimizers=tuple(_to_cpu(opt.state_dict()) for opt in self.optimizers),
        )

    def _load(self, snap: Snapshot) -> None:
        self.model.load_state_dict(snap.model)
        for optimizer, saved in zip(self.optimizers, snap.optimizers, strict=True):
            optimizer.load_state_dict(_to_cpu(saved))  # a copy: the step mutates state in place

    def state_dict(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "every": self.every,
            "snapshots": [_snapshot_record(s) for s in self._snapshots],
            "best": None if self._best is None else _snapshot_record(self._best),
            "initial": None if self._initial is None else _snapshot_record(self._initial),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("version") != STATE_VERSION:
            raise StateError(f"guard state version {state.get('version')!r} is unsupported")
        self._snapshots = [_snapshot_from(s) for s in state["snapshots"]]
        best = state.get("best")  # absent in states saved before early stopping existed
        self._best = None if best is None else _snapshot_from(best)
        # absent in states saved before restarts existed: such a run cannot restart (a
        # later snapshot is not its start)
        initial = state.get("initial")
        self._initial = None if initial is None else _snapshot_from(initial)
        self._started = True


def _snapshot_record(snap: Snapshot) -> dict[str, Any]:
    return {"step": snap.step, "model": snap.model, "optimizers": list(snap.optimizers)}


def _snapshot_from(record: Mapping[str, Any]) -> Snapshot:
    return Snapshot(int(record["step"]), dict(record["model"]), tuple(record["optimizers"]))
