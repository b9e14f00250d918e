"""The width sweep's transformer: ``_TinyLM``'s architecture with its attention scale exposed.

``nn.TransformerEncoderLayer`` hard-codes 1/sqrt(head_dim) logits, so muP's 1/head_dim
rule (``trimtab.attention_scale``) cannot be tried on ``benchmarks.tasks._TinyLM``. This
model has the same pieces (token embedding + learned positions, pre-norm blocks of causal
self-attention and a 4x ReLU MLP, a final LayerNorm and an untied readout) and computes
attention with ``F.scaled_dot_product_attention(..., scale=scale)``. Its default init
matches ``nn.TransformerEncoderLayer``'s (Xavier-uniform packed q/k/v, zero attention
biases, PyTorch's Linear init elsewhere), so the standard arm sees the same model as before.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

# init_ cannot read an activation off these (they are not in an nn.Sequential with one):
# q/k/v feed a dot product, the output projections feed the residual stream.
INIT_ACTIVATIONS = {"blocks.*.attn.qkv": "linear", "blocks.*.attn.out": "residual",
                    "blocks.*.mlp.2": "residual"}  # fmt: skip


class Attention(nn.Module):
    """Causal multi-head self-attention with an explicit logit scale (None: 1/sqrt(d))."""

    def __init__(self, width: int, heads: int, scale: float | None) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not a multiple of heads {heads}")
        self.heads, self.scale = heads, scale
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)
        nn.init.xavier_uniform_(self.qkv.weight)
        nn.init.zeros_(self.qkv.bias)
        nn.init.zeros_(self.out.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        batch, n, width = h.shape
        q, k, v = self.qkv(h).view(batch, n, 3, self.heads, width // self.heads).unbind(2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        mixed = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scale)
        return self.out(mixed.transpose(1, 2).reshape(batch, n, width))


class Block(nn.Module):
    def __init__(self, width: int, heads: int, scale: float | None) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.attn = Attention(width, heads, scale)
        hidden = 4 * width
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, width))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = h + self.attn(self.norm1(h))
        return h + self.mlp(self.norm2(h))


class WidthLM(nn.Module):
    """Character LM: ``blocks`` pre-norm blocks of ``heads`` heads at ``width``."""

    def __init__(
        self,
        vocab: int,
        width: int,
        context: int,
        *,
        heads: int = 4,
        blocks: int = 2,
        scale: float | None = None,
    ) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.position = nn.Parameter(torch.zeros(context, width))
        self.blocks = nn.ModuleList(Block(width, heads, scale) for _ in range(blocks))
        self.norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.embed(tokens) + self.position[: tokens.shape[1]]
        for block in self.blocks:
            h = block(h)
        return self.out(self.norm(h))
