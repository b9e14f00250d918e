"""The scale rules themselves: pure arithmetic, each with the reason and its source.

Learning rate by width (muP, the maximal-update parametrization: Yang & Hu, "Feature
Learning in Infinite-Width Neural Networks", 2021; Yang et al., "Tensor Programs V:
Tuning Large Neural Networks via Zero-Shot Hyperparameter Transfer", 2022, Table 3).
With ``r = fan_in / base_width`` (or ``fan_out / base_width`` where it says so), the
multiplier on the base learning rate is:

==============  =====================  ==============================
role            Adam / AdamW           SGD
==============  =====================  ==============================
hidden          1 / r                  1
readout         1 / r                  1 / r
input           1                      fan_out / base_width
embedding       1                      fan_out / base_width
bias, norm      1                      fan_out / base_width (readout's bias: 1)
other           1                      1
==============  =====================  ==============================

Adam normalises the gradient, so an entry's step is ~lr whatever the width; a matrix
whose fan-in grows sums ``fan_in`` such steps coherently, hence 1/fan_in. SGD's raw
gradient already shrinks with the width for hidden matrices, so they keep the base rate
while vector-like parameters (input weights, biases, gains) need a rate that grows with
their fan-out. ``base_width`` is the width at which the base rate was tuned; layers whose
fan-in is a multiple of the width (a transformer's 4x MLP) get that multiple's share.

Weight decay by timescale (Wang & Aitchison, "How to set AdamW's weight decay as you
scale model and dataset size", 2024): AdamW's weights are an exponential moving average
of updates with timescale ``tau = 1 / (lr * wd)`` iterations; holding ``tau`` at a fixed
fraction of the run gives ``wd = 1 / (lr * fraction * total_steps)`` per group, using the
group's own (width-scaled) learning rate. SGD's coupled decay shrinks weights by
``lr * wd / (1 - momentum)`` per step in the steady state, so its rule carries
``(1 - momentum)``.
"""

from __future__ import annotations

import math

from trimtab.scaling.structure import ParamInfo

# Clip: per matrix of O(1) gradient norm (muP keeps each one O(1) as width grows), the
# global norm of L independent contributions grows like sqrt(L); 0.5 * sqrt(4) = 1.0.
CLIP_PER_MATRIX = 0.5
# Warmup: 2 % of the run at 1e5 parameters, +2 points per decade, at most 10 %.
WARMUP_BASE, WARMUP_PER_DECADE, WARMUP_MAX, WARMUP_FROM = 0.02, 0.02, 0.10, 1e5


def lr_multiplier(family: str, info: ParamInfo, base_width: int) -> tuple[float, str]:
    """The muP multiplier on the base LR for one parameter, and the rule in words."""
    adam = family in ("adam", "adamw")
    if info.role in ("hidden", "readout"):
        if adam or info.role == "readout":
            return base_width / info.fan_in, f"{base_width}/fan_in({info.fan_in})"
        return 1.0, "SGD hidden: width-independent"
    if adam or info.role == "other" or info.in_readout:
        return 1.0, "unscaled"
    return info.fan_out / base_width, f"fan_out({info.fan_out})/{base_width}"


def timescale_decay(lr: float, total_steps: int, fraction: float, momentum: float = 0.0) -> float:
    """Weight decay whose EMA timescale is ``fraction`` of the run (Wang & Aitchison, 2024)."""
    return (1.0 - momentum) / (lr * fraction * total_steps)


def clip_threshold(matrices: int) -> float:
    """Global-norm clip threshold for a model with ``matrices`` weight matrices."""
    return CLIP_PER_MATRIX * math.sqrt(max(matrices, 1))


def warmup_fraction(parameters: int) -> float:
    """Share of the run spent warming up: grows with log parameter count.

    Larger models take larger early steps relative to their curvature and Adam's second
    moments need ~1/(1-beta2) steps to settle; both argue for a longer warmup as the
    model grows (a heuristic, not a theorem: override with ``warmup_steps=``).
    """
    decades = max(0.0, math.log10(max(parameters, 1) / WARMUP_FROM))
    return min(WARMUP_MAX, WARMUP_BASE + WARMUP_PER_DECADE * decades)
