"""One copy of the weights around one optimizer step, shared by every probe that needs it.

Both the alignment and the update-ratio probes need the update a step made. Copying the
weights once per step for all of them, and turning that copy in place into minus the
update (``before - after``), keeps the cost at one copy and one subtraction whatever the
number of probes, and the memory at one copy of the weights. Every operation is a
``torch._foreach_*`` call over a group's tensors: a fixed number of kernel launches
however many tensors the model has, and no host sync.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from trimtab.probes.base import GroupView


class UpdateSnapshot:
    """Weights of each group before a step; after ``finish``, minus the step's update.

    Example:
        >>> from trimtab.probes import GroupView
        >>> w = torch.nn.Parameter(torch.ones(3))
        >>> snap = UpdateSnapshot([GroupView("g0", (w,))])
        >>> with torch.no_grad():
        ...     _ = w.sub_(0.5)
        >>> snap.finish([GroupView("g0", (w,))])["g0"][0].tolist()
        [0.5, 0.5, 0.5]
    """

    def __init__(self, groups: Sequence[GroupView]) -> None:
        with torch.no_grad():
            self._buffers = {g.name: _clone(list(g.params)) for g in groups if g.params}
        self._finished = False

    def finish(self, groups: Sequence[GroupView]) -> dict[str, list[torch.Tensor]]:
        """Minus the update of each group (``before - after``), computed once, in place.

        Call after the optimizer step; later calls return the same tensors. A group whose
        tensors changed in number since the copy is left out.
        """
        if not self._finished:
            with torch.no_grad():
                for group in groups:
                    before = self._buffers.get(group.name)
                    if before is None or len(before) != len(group.params):
                        self._buffers.pop(group.name, None)
                        continue
                    torch._foreach_sub_(before, list(group.params))
            self._finished = True
        return self._buffers


def group_norm(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """L2 norm over a list of tensors (a 0-dim tensor; one fused reduction, no sync)."""
    with torch.no_grad():
        return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(list(tensors))))


def _clone(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    clone = getattr(torch, "_foreach_clone", None)  # not in every torch >= 2.3
    return clone(tensors) if clone is not None else [t.clone() for t in tensors]
