"""The probe contract: what a probe measures, how often, and what it costs.

A probe turns the live training state into 0-dim tensors on the training device. It
never calls ``.item()``: the controller gathers every due reading and moves them to the
host in one transfer, so a probe on a GPU adds no synchronisation of its own.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from trimtab.probes._update import UpdateSnapshot


class Cost(str, enum.Enum):
    """Rough price of one measurement, used by presets and the cost table."""

    FREE = "free"  # reads a value the loop already computed
    CHEAP = "cheap"  # one pass of fused reductions over the gradients
    MODERATE = "moderate"  # copies or extra reductions over parameters
    EXPENSIVE = "expensive"  # extra forward/backward passes


@dataclass(frozen=True)
class GroupView:
    """A parameter group as probes see it: its name and its trainable tensors."""

    name: str
    params: tuple[torch.Tensor, ...]


@dataclass
class StepContext:
    """Everything a probe may read at one optimizer step.

    ``grad_norms()`` is computed once per step and shared, so several probes that need
    gradient norms pay for one reduction.
    """

    step: int
    loss: torch.Tensor | None
    groups: Sequence[GroupView]
    model: torch.nn.Module | None = None
    # The optimizers, to *read* hyperparameters and state (e.g. Adam's second moments
    # for preconditioned curvature). Only the actuator writes them.
    optimizers: tuple[torch.optim.Optimizer, ...] = ()
    # Recomputes the loss on this step's batch (for probes that need extra passes, such
    # as Hessian-vector products); None when the loop did not pass one to step().
    closure: Callable[[], torch.Tensor] | None = None
    # With gradient accumulation: the squared L2 norm of each micro-batch's own gradient
    # and the micro-batch size in samples (None when unknown), for noise-scale estimates.
    micro_grad_sq_norms: tuple[torch.Tensor, ...] = ()
    micro_batch_size: int | None = None
    _grad_norms: dict[str, torch.Tensor] | None = field(default=None, repr=False)
    _global_grad_norm: torch.Tensor | None = field(default=None, repr=False)
    _update: UpdateSnapshot | None = field(default=None, repr=False)

    def grad_norms(self) -> dict[str, torch.Tensor]:
        """L2 norm of the gradients of each group (0-dim tensors; no host sync)."""
        if self._grad_norms is None:
            norms: dict[str, torch.Tensor] = {}
            for group in self.groups:
                grads = [p.grad for p in group.params if p.grad is not None]
                if grads:
                    per_tensor = torch._foreach_norm(grads)
                    norms[group.name] = torch.linalg.vector_norm(torch.stack(per_tensor))
            self._grad_norms = norms
        return self._grad_norms

    def global_grad_norm(self) -> torch.Tensor | None:
        """L2 norm of all gradients (a 0-dim tensor; None without gradients; no sync)."""
        if self._global_grad_norm is None:
            norms = list(self.grad_norms().values())
            if len(norms) == 1:
                self._global_grad_norm = norms[0]  # one group: its norm is the global one
            elif norms:
                self._global_grad_norm = torch.linalg.vector_norm(torch.stack(norms))
        return self._global_grad_norm

    def update_snapshot(self) -> UpdateSnapshot:
        """The weights before this step, copied once for every probe that asks (call it
        in ``before_step``; ``finish`` it in ``after_step`` to get minus the update)."""
        if self._update is None:
            self._update = UpdateSnapshot(self.groups)
        return self._update


class Probe:
    """Base class: override ``before_step`` and/or ``after_step``.

    Attributes:
        name: prefix of every signal this probe emits (``"<name>/<quantity>"``).
        every: cadence in optimizer steps (1 = every step).
        cost: what one measurement costs.
    """

    name: str = "probe"
    cost: Cost = Cost.CHEAP

    def __init__(self, *, every: int = 1) -> None:
        from trimtab import _checks

        self.every = _checks.count(f"{self.name} probe cadence 'every'", every)

    def attach(self, model: torch.nn.Module) -> None:
        """Called once when the controller is built (e.g. to register forward hooks)."""

    def detach(self) -> None:
        """Called by ``Controller.close()``: remove hooks, free buffers."""

    def due(self, step: int) -> bool:
        return step % self.every == 0

    def signals(self, groups: Sequence[str]) -> tuple[str, ...]:
        """Names of the signals this probe emits for these group names."""
        raise NotImplementedError

    def before_step(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        """Measure after backward, before the optimizer updates the weights."""
        return {}

    def after_step(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        """Measure after the update (only called on steps that were applied)."""
        return {}

    def settings(self) -> dict[str, object]:
        return {"every": self.every, "cost": self.cost.value}

    def state_dict(self) -> dict[str, object]:
        """State carried across steps (tensors allowed); saved with the Regime."""
        return {}

    def load_state_dict(self, state: dict[str, object]) -> None:
        """Restore what ``state_dict`` returned."""
