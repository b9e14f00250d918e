"""muP's attention rule: scale the logits by 1/head_dim instead of 1/sqrt(head_dim).

Standard attention divides ``q . k`` by ``sqrt(head_dim)``, which keeps the logits O(1)
while queries and keys are independent (a sum of ``head_dim`` zero-mean terms). Training
makes them correlated, so the sum grows like ``head_dim`` and the logits blow up as the
model widens; muP divides by ``head_dim`` instead (Yang et al., 2022, "Tensor Programs V",
Section 4 and Appendix D: "attention logit scaling"). With a fixed ``head_dim`` (more
heads as width grows) the two rules differ by a constant and nothing needs to change.

trimtab cannot change a model's forward pass: ``init_`` and ``recipe`` set weights and
optimizer groups only. The model must compute its own attention with this scale, e.g.
``F.scaled_dot_product_attention(q, k, v, scale=attention_scale(head_dim, base_head_dim=4))``.
``nn.MultiheadAttention`` and ``nn.TransformerEncoderLayer`` take no scale, so a model
built from them keeps 1/sqrt(head_dim); the recipe's report says so when it finds one.
"""

from __future__ import annotations

import math

from torch import nn

from trimtab import _checks


def attention_scale(head_dim: int, *, base_head_dim: int | None = None) -> float:
    """The muP factor on ``q . k``: ``sqrt(base_head_dim) / head_dim`` (1/head_dim if None).

    With ``base_head_dim`` set, the factor equals the standard ``1 / sqrt(head_dim)`` at
    the base model, so a base LR tuned there with ordinary attention still holds, and it
    falls like ``1 / head_dim`` as the heads widen (muP's rule up to a constant tuned at
    the base; Tensor Programs V, Appendix D).

    Args:
        head_dim: width of one head (``embed_dim // num_heads``) in this model.
        base_head_dim: width of one head in the model the LR was tuned on.

    Example:
        >>> attention_scale(64, base_head_dim=16)
        0.0625
        >>> attention_scale(16, base_head_dim=16) == 16**-0.5
        True
    """
    head_dim = _checks.count("head_dim", head_dim)
    if base_head_dim is None:
        return 1.0 / head_dim
    base_head_dim = _checks.count("base_head_dim", base_head_dim)
    return math.sqrt(base_head_dim) / head_dim


def attention_note(model: nn.Module, base_width: int) -> str | None:
    """The report's note for a model built on ``nn.MultiheadAttention`` (None without one)."""
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.MultiheadAttention)]
    if not found:
        return None
    name, module = found[0]
    heads, head_dim = module.num_heads, module.head_dim
    text = (
        f"attention: nn.MultiheadAttention ({len(found)} found, e.g. {name!r}: {heads} heads "
        f"of {head_dim}) fixes 1/sqrt(head_dim) logits; muP scales them by 1/head_dim "
        "(Tensor Programs V). trimtab cannot change the forward pass: compute attention with "
        "F.scaled_dot_product_attention(q, k, v, scale=trimtab.attention_scale(head_dim, "
        "base_head_dim=...))"
    )
    if base_width % heads == 0:
        base = base_width // heads
        scale = attention_scale(head_dim, base_head_dim=base)
        text += f"; with {heads} heads at base_width {base_width}: base_head_dim {base}, "
        text += f"scale {scale:.3g} here"
    return text + ". Not needed when head_dim stays fixed as the width grows"
