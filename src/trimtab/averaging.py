"""An exponential moving average of the weights, to evaluate instead of the last step's.

At a learning rate high enough to train fast, the last iterate carries the noise of its
last few dozen steps; their average sits nearer the bottom of the valley, which is what
annealing the learning rate would reach, but without giving up the speed. The average
is read through ``swapped_in()``: the model's own tensors take the averaged values for
the length of the block (an evaluation) and get their live values back after it, so an
evaluation loop needs no second model.

The average restarts from the live weights whenever they jump back (a rollback, a
restart) and when the data changes: averaging across such a jump would mix two
trajectories. A restored best is the exception: the best was judged on the average, so
the average kept with it (``keep``) comes back with it (``recall``). The decay warms up
as ``(1 + n) / (10 + n)`` over the ``n`` updates since the last restart, so a young
average is not dominated by its first value.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

import torch

from trimtab.errors import ConfigError, StateError

# The horizon of ``average=True``: the share of the planned steps the average spans.
AUTO_HORIZON = 0.04
_MIN_HORIZON = 10


def decay_for(average: bool | float, total_steps: int | None) -> float | None:
    """The decay that ``Regime(average=...)`` asks for; ``None`` means no averaging."""
    if average is False or average is None:
        return None
    if average is True:
        if total_steps is None:
            raise ConfigError(
                "average=True sizes the average's horizon from total_steps (4 % of the "
                "run), but total_steps is None; pass total_steps=... or a decay such as "
                "average=0.999"
            )
        return 1.0 - 1.0 / max(_MIN_HORIZON, AUTO_HORIZON * total_steps)
    if isinstance(average, (int, float)) and 0.0 < float(average) < 1.0:
        return float(average)
    raise ConfigError(
        f"average must be True, False or a decay in (0, 1) such as 0.999, got {average!r}"
    )


class WeightAverage:
    """EMA of a model's floating-point parameters and buffers.

    Args:
        model: the module whose weights are averaged (the tensors are read in place).
        decay: the EMA decay once warmed up, in (0, 1).
    """

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ConfigError(f"decay must be in (0, 1), got {decay}")
        self.decay = decay
        named = list(_floating(model))
        self._names = [name for name, _ in named]
        self._live = [t for _, t in named]
        # 16-bit weights are averaged in float32: a bf16 average moved by 5 % of a
        # small difference per step would round back to itself and never move
        self._average = [t.detach().to(_average_dtype(t), copy=True) for t in self._live]
        self.updates = 0  # since the last restart
        self._best: list[torch.Tensor] | None = None
        self._best_updates = 0

    def update(self) -> None:
        """Fold the live weights into the average (call after each optimizer step)."""
        self.updates += 1
        weight = min(self.decay, self.updates / (9.0 + self.updates))
        with torch.no_grad():
            torch._foreach_lerp_(self._average, self._live_as_average(), 1.0 - weight)

    def restart(self) -> None:
        """Start again from the live weights (after they jumped: rollback, new data)."""
        with torch.no_grad():
            torch._foreach_copy_(self._average, self._live_as_average())
        self.updates = 0

    def _live_as_average(self) -> list[torch.Tensor]:
        return [
            t.detach() if t.dtype == a.dtype else t.detach().to(a.dtype)
            for t, a in zip(self._live, self._average, strict=True)
        ]

    def keep(self) -> None:
        """Keep a CPU copy of the average as the best one (it was what scored best)."""
        self._best = [a.detach().to("cpu", copy=True) for a in self._average]
        self._best_updates = self.updates

    def recall(self) -> None:
        """Go back to the kept best average, or restart when none was kept."""
        if self._best is None:
            self.restart()
            return
        with torch.no_grad():
            torch._foreach_copy_(self._average, self._best)
        self.updates = self._best_updates

    @contextlib.contextmanager
    def swapped_in(self) -> Iterator[None]:
        """The model holds the averaged weights inside the block, its own after it."""
        with torch.no_grad():
            saved = [t.detach().clone() for t in self._live]
            torch._foreach_copy_(self._live, self._average)
        try:
            yield
        finally:
            with torch.no_grad():
                torch._foreach_copy_(self._live, saved)

    def state_dict(self) -> dict[str, Any]:
        best = None if self._best is None else dict(zip(self._names, self._best, strict=True))
        return {
            "decay": self.decay,
            "updates": self.updates,
            "average": dict(zip(self._names, self._average, strict=True)),
            "best": best,
            "best_updates": self._best_updates,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        saved = state["average"]
        if list(saved) != self._names:
            raise StateError(
                "the checkpoint's weight average covers other tensors than this model's "
                f"({len(saved)} saved, {len(self._names)} here); load it into the model "
                "it was saved from"
            )
        with torch.no_grad():
            torch._foreach_copy_(self._average, [saved[name] for name in self._names])
        self.updates = int(state["updates"])
        best = state.get("best")
        self._best = None if best is None else [best[n].to("cpu", copy=True) for n in self._names]
        self._best_updates = int(state.get("best_updates", 0))


def _floating(model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """Parameters and buffers whose values can be averaged (not e.g. a step counter);
    a tensor shared under two names (tied embeddings) once."""
    seen: set[int] = set()
    for name, tensor in model.state_dict(keep_vars=True).items():
        if torch.is_floating_point(tensor) and id(tensor) not in seen:
            seen.add(id(tensor))
            yield name, tensor


def _average_dtype(tensor: torch.Tensor) -> torch.dtype:
    return torch.float32 if tensor.dtype in (torch.float16, torch.bfloat16) else tensor.dtype
