"""One copy of the weights around one optimizer step, shared by every probe that needs it.

Both the alignment and the update-ratio probes need the update a step made. Copying the
weights once per step for all of them, into one flat buffer per group, and turning that
copy in place into minus the update (``before - after``) keeps the cost at one copy and
one fused subtraction whatever the number of probes, and the memory at one copy of the
weights. The flat buffer makes every later reduction (norms, the dot product with the
next gradient) one operation over the group, however many tensors it has.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from trimtab.probes.base import GroupView


class FlatCopy:
    """A group's tensors copied into one flat buffer, with views shaped like them.

    Example:
        >>> copy = FlatCopy([torch.ones(2, 2), torch.zeros(3)])
        >>> copy.flat.tolist(), [tuple(v.shape) for v in copy.views]
        ([1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0], [(2, 2), (3,)])
    """

    def __init__(self, tensors: Sequence[torch.Tensor]) -> None:
        dtype = functools.reduce(torch.promote_types, {t.dtype for t in tensors})
        self.flat = torch.empty(
            sum(t.numel() for t in tensors), dtype=dtype, device=tensors[0].device
        )
        self.views, offset = [], 0
        for t in tensors:  # as_strided is the cheapest way to cut a view (no split, no view)
            strides = t.stride() if t.is_contiguous() else _contiguous_strides(t.shape)
            self.views.append(self.flat.as_strided(t.shape, strides, offset))
            offset += t.numel()
        with torch.no_grad():
            torch._foreach_copy_(self.views, list(tensors))

    def norm(self) -> torch.Tensor:
        return torch.linalg.vector_norm(self.flat)

    def tensor_norms(self) -> torch.Tensor:
        """L2 norm of each tensor, in order (a 1-D tensor; no host sync)."""
        return torch.stack(torch._foreach_norm(self.views))


class UpdateSnapshot:
    """Weights of each group before a step; after ``finish``, minus the step's update.

    Example:
        >>> from trimtab.probes import GroupView
        >>> w = torch.nn.Parameter(torch.ones(3))
        >>> snap = UpdateSnapshot([GroupView("g0", (w,))])
        >>> with torch.no_grad():
        ...     _ = w.sub_(0.5)
        >>> snap.finish([GroupView("g0", (w,))])["g0"].flat.tolist()
        [0.5, 0.5, 0.5]
    """

    def __init__(self, groups: Sequence[GroupView]) -> None:
        self._copies = {g.name: FlatCopy(g.params) for g in groups if g.params}
        self._finished = False

    def weight_norms(self) -> dict[str, torch.Tensor]:
        """L2 norm of each tensor of each group before the step, one 1-D tensor per
        group (call before ``finish``)."""
        if self._finished:
            raise RuntimeError("weight_norms() after finish(): the copy now holds the update")
        return {name: copy.tensor_norms() for name, copy in self._copies.items()}

    def finish(self, groups: Sequence[GroupView]) -> dict[str, FlatCopy]:
        """Minus the update of each group (``before - after``), computed once, in place.

        Call after the optimizer step; later calls return the same buffers. A group whose
        tensors changed in number since the copy is left out.
        """
        if not self._finished:
            done = {}
            with torch.no_grad():
                for group in groups:
                    copy = self._copies.get(group.name)
                    if copy is not None and len(copy.views) == len(group.params):
                        torch._foreach_sub_(copy.views, list(group.params))
                        done[group.name] = copy
            self._copies, self._finished = done, True
        return self._copies


def _contiguous_strides(shape: torch.Size) -> tuple[int, ...]:
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= max(size, 1)
    return tuple(reversed(strides))
