"""Small robust statistics used by policies: median/MAD ranges and a slope trend test.

Pure Python on short windows of floats: the windows are tens of values, so numpy's call
overhead would cost more than it saves and the results stay bit-stable across platforms.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

# One-sided 95 % quantiles of Student's t for 1..30 degrees of freedom.
_T95 = (
    6.314, 2.920, 2.353, 2.132, 2.015, 1.943, 1.895, 1.860, 1.833, 1.812,
    1.796, 1.782, 1.771, 1.761, 1.753, 1.746, 1.740, 1.734, 1.729, 1.725,
    1.721, 1.717, 1.714, 1.711, 1.708, 1.706, 1.703, 1.701, 1.699, 1.697,
)  # fmt: skip
_MAD_TO_SIGMA = 1.4826  # MAD of a normal sample times this estimates its sigma
_Z90 = 1.2816  # the 90th percentile of a standard normal


def median(values: Sequence[float]) -> float:
    return _median_sorted(sorted(values))


def _median_sorted(ordered: Sequence[float]) -> float:
    n = len(ordered)
    if n == 0:
        raise ValueError("median of an empty sequence")
    mid = n // 2
    return ordered[mid] if n % 2 else 0.5 * (ordered[mid - 1] + ordered[mid])


def robust_range(values: Sequence[float]) -> tuple[float, float]:
    """Return (median, sigma estimated from the MAD): a centre and scale outliers barely move."""
    centre = median(values)
    mad = median([abs(v - centre) for v in values])
    return centre, _MAD_TO_SIGMA * mad


def quantile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated ``q``-quantile (0 <= q <= 1) of a non-empty sequence."""
    return _quantile_sorted(sorted(values), q)


def _quantile_sorted(ordered: Sequence[float], q: float) -> float:
    if not ordered:
        raise ValueError("quantile of an empty sequence")
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (position - low) * (ordered[high] - ordered[low])


def upper_range(values: Sequence[float]) -> tuple[float, float]:
    """Return (median, sigma of the upper tail): the larger of the MAD-based sigma and the
    90th-percentile distance, so a right-skewed loss (many easy batches, a few hard ones)
    does not make ordinary hard batches look like spikes."""
    ordered = sorted(values)  # once: the guard calls this every step
    centre = _median_sorted(ordered)
    sigma = _MAD_TO_SIGMA * median([abs(v - centre) for v in ordered])
    tail = (_quantile_sorted(ordered, 0.9) - centre) / _Z90
    return centre, max(sigma, tail)


def t_quantile_95(dof: int) -> float:
    if dof < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {dof}")
    return _T95[dof - 1] if dof <= len(_T95) else 1.645


@dataclass(frozen=True)
class Trend:
    """Least-squares slope per observation with a one-sided 95 % band."""

    slope: float
    halfwidth: float
    mean: float
    n: int

    @property
    def upper(self) -> float:
        return self.slope + self.halfwidth

    @property
    def lower(self) -> float:
        return self.slope - self.halfwidth


def trend(values: Sequence[float]) -> Trend:
    """Fit ``values[i] = a + slope * i`` and bound the slope (needs at least 3 values)."""
    n = len(values)
    if n < 3:
        raise ValueError(f"a trend needs at least 3 values, got {n}")
    xs = range(n)
    x_mean = (n - 1) / 2
    y_mean = sum(values) / n
    sxx = sum((x - x_mean) ** 2 for x in xs)
    slope = sum((x - x_mean) * (y - y_mean) for x, y in zip(xs, values, strict=True)) / sxx
    intercept = y_mean - slope * x_mean
    residual = sum((y - intercept - slope * x) ** 2 for x, y in zip(xs, values, strict=True))
    stderr = math.sqrt(residual / (n - 2) / sxx)
    return Trend(slope=slope, halfwidth=t_quantile_95(n - 2) * stderr, mean=y_mean, n=n)
