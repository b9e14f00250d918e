"""A fixed-size ring buffer of scalars kept on the training device (no host sync)."""

from __future__ import annotations

import torch


class DeviceRing:
    """The last ``size`` values of a scalar signal, as a device tensor.

    ``values()`` returns them oldest first; ``count`` is how many are valid. Everything
    stays on the device, so reading a window costs no synchronisation.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._data: torch.Tensor | None = None
        self.count = 0  # a host-side int: how many pushes, which the host already knows

    def push(self, value: torch.Tensor) -> None:
        value = value.detach().reshape(()).float()
        if self._data is None:
            self._data = torch.zeros(self.size, device=value.device)
        elif self._data.device != value.device:  # e.g. loaded from a CPU checkpoint
            self._data = self._data.to(value.device)
        self._data[self.count % self.size] = value
        self.count += 1

    def values(self) -> torch.Tensor:
        assert self._data is not None, "push before reading"
        n = min(self.count, self.size)
        if self.count <= self.size:
            return self._data[:n]
        start = self.count % self.size
        return torch.cat([self._data[start:], self._data[:start]])

    def state_dict(self) -> dict[str, object]:
        return {
            "data": None if self._data is None else self._data.detach().cpu().clone(),
            "count": self.count,
        }

    def load_state_dict(self, state: dict[str, object]) -> None:
        data = state.get("data")
        self._data = None if data is None else data.clone()  # type: ignore[union-attr]
        self.count = int(state.get("count", 0))  # type: ignore[arg-type]
