"""Shared fixtures: a hypothesis profile that tolerates torch's warm-up, tiny models."""

from __future__ import annotations

import torch
from hypothesis import settings

settings.register_profile("trimtab", deadline=None, max_examples=60)
settings.load_profile("trimtab")


def tiny_regression(seed: int = 0, n: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded linear-regression data set with a little noise."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=gen)
    w = torch.randn(8, 1, generator=gen)
    y = x @ w + 0.1 * torch.randn(n, 1, generator=gen)
    return x, y


def tiny_mlp(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))


def batch(x: torch.Tensor, y: torch.Tensor, i: int, size: int = 32):
    start = (i * size) % len(x)
    return x[start : start + size], y[start : start + size]
