"""Base schedules: the planned shape of the learning rate over a run.

A schedule is a pure function of (step, total_steps). trimtab composes it with the user's
base values and its own adaptive multiplier, per param group::

    effective lr = user's base lr x schedule.lr_factor(step, total) x adaptive multiplier

One-cycle also plans momentum (the inverse cycle of Smith & Topin, 2018); when a schedule
returns a momentum it replaces the base momentum, and the adaptive momentum multiplier
still applies on top. Schedules hold no state: the step count lives in the controller,
so checkpoints resume them exactly.

Example:
    >>> regime = Regime(model, opt, total_steps=1000, schedule=WarmupCosine(warmup=0.05))
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from trimtab import _checks
from trimtab.errors import ConfigError


def _fraction(name: str, value: float) -> float:
    value = _checks.real(name, value)
    if not 0.0 <= value < 1.0:
        raise ConfigError(f"{name} must be in [0, 1), got {value}")
    return value


def _progress(step: int, total: int) -> float:
    return min(max(step / max(total, 1), 0.0), 1.0)


class Schedule:
    """Base class: ``lr_factor`` multiplies the base LR; ``momentum`` may replace it."""

    name = "schedule"

    def lr_factor(self, step: int, total: int) -> float:
        raise NotImplementedError

    def momentum(self, step: int, total: int) -> float | None:
        return None

    def settings(self) -> dict[str, Any]:
        return {"name": self.name, **asdict(self)}  # type: ignore[call-overload]


@dataclass(frozen=True)
class Constant(Schedule):
    """The base LR throughout."""

    name = "constant"

    def lr_factor(self, step: int, total: int) -> float:
        return 1.0


@dataclass(frozen=True)
class LinearWarmup(Schedule):
    """Ramp linearly from ~0 to the base over ``warmup`` of the run, then hold it."""

    warmup: float = 0.05
    name = "linear_warmup"

    def __post_init__(self) -> None:
        _fraction("warmup", self.warmup)

    def lr_factor(self, step: int, total: int) -> float:
        length = max(1, round(self.warmup * total))
        return min(1.0, (step + 1) / length) if self.warmup > 0 else 1.0


@dataclass(frozen=True)
class WarmupCosine(Schedule):
    """Linear warmup, then a half cosine from the base down to ``final`` x base."""

    warmup: float = 0.05
    final: float = 0.0
    name = "warmup_cosine"

    def __post_init__(self) -> None:
        _fraction("warmup", self.warmup)
        _fraction("final", self.final)

    def lr_factor(self, step: int, total: int) -> float:
        length = round(self.warmup * total)
        if step < length:
            return (step + 1) / length
        progress = _progress(step - length, total - length)
        return self.final + (1 - self.final) * 0.5 * (1 + math.cos(math.pi * progress))


@dataclass(frozen=True)
class OneCycle(Schedule):
    """Smith & Topin's one-cycle: LR up from base/div to base, then down to base/final_div;
    momentum moves the opposite way between ``max_momentum`` and ``base_momentum``."""

    peak: float = 0.3
    div: float = 25.0
    final_div: float = 1e4
    base_momentum: float = 0.85
    max_momentum: float = 0.95
    name = "one_cycle"

    def __post_init__(self) -> None:
        _checks.in_open_unit("peak", self.peak)
        _checks.positive("div", self.div)
        _checks.positive("final_div", self.final_div)
        _checks.in_open_unit("base_momentum", self.base_momentum)
        _checks.in_open_unit("max_momentum", self.max_momentum)
        if self.base_momentum > self.max_momentum:
            raise ConfigError(
                f"base_momentum ({self.base_momentum}) must not exceed max_momentum "
                f"({self.max_momentum})"
            )

    def _phase(self, step: int, total: int) -> tuple[float, bool]:
        progress = _progress(step, total)
        if progress < self.peak:
            return progress / self.peak, True
        return (progress - self.peak) / (1 - self.peak), False

    def lr_factor(self, step: int, total: int) -> float:
        t, rising = self._phase(step, total)
        cos = 0.5 * (1 - math.cos(math.pi * t))  # 0 -> 1
        if rising:
            start = 1 / self.div
            return start + (1 - start) * cos
        end = 1 / (self.div * self.final_div)
        return 1 - (1 - end) * cos

    def momentum(self, step: int, total: int) -> float:
        t, rising = self._phase(step, total)
        cos = 0.5 * (1 - math.cos(math.pi * t))
        low, high = self.base_momentum, self.max_momentum
        return high - (high - low) * cos if rising else low + (high - low) * cos


@dataclass(frozen=True)
class StepDecay(Schedule):
    """Multiply the LR by ``gamma`` at each of ``milestones`` (fractions of the run)."""

    milestones: tuple[float, ...] = (0.5, 0.75)
    gamma: float = 0.1
    name = "step_decay"

    def __post_init__(self) -> None:
        for m in self.milestones:
            _fraction("milestone", m)
        if list(self.milestones) != sorted(self.milestones):
            raise ConfigError(f"milestones must be increasing, got {self.milestones}")
        _checks.in_open_unit("gamma", self.gamma)

    def lr_factor(self, step: int, total: int) -> float:
        passed = sum(step >= round(m * total) for m in self.milestones)
        return self.gamma**passed


@dataclass(frozen=True)
class WarmupStableDecay(Schedule):
    """Warmup, a long constant stretch, then a linear decay over the last ``decay``."""

    warmup: float = 0.05
    decay: float = 0.2
    final: float = 0.0
    name = "warmup_stable_decay"

    def __post_init__(self) -> None:
        _fraction("warmup", self.warmup)
        _fraction("decay", self.decay)
        _fraction("final", self.final)
        if self.warmup + self.decay > 1:
            raise ConfigError(f"warmup + decay must not exceed 1, got {self.warmup} + {self.decay}")

    def lr_factor(self, step: int, total: int) -> float:
        warm = round(self.warmup * total)
        decay_start = total - round(self.decay * total)
        if step < warm:
            return (step + 1) / warm
        if step < decay_start:
            return 1.0
        progress = _progress(step - decay_start, total - decay_start)
        return 1 - (1 - self.final) * progress
