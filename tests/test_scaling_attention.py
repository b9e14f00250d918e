"""muP's attention scale: the helper's arithmetic, its use with SDPA, and the recipe's note."""

import itertools
import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import trimtab


def test_scale_is_one_over_head_dim_and_standard_at_the_base():
    assert trimtab.attention_scale(64) == 1 / 64
    assert trimtab.attention_scale(4, base_head_dim=4) == pytest.approx(4**-0.5)
    scales = [trimtab.attention_scale(d, base_head_dim=8) for d in (8, 16, 32, 64)]
    # halves when head_dim doubles (1/d), where the standard rule only falls by sqrt(2)
    assert [a / b for a, b in itertools.pairwise(scales)] == pytest.approx([2.0] * 3)


@pytest.mark.parametrize(
    ("args", "kwargs", "error"),
    [
        ((0,), {}, trimtab.ConfigError),
        ((16.0,), {}, trimtab.ConfigTypeError),
        ((True,), {}, trimtab.ConfigTypeError),
        ((16,), {"base_head_dim": 0}, trimtab.ConfigError),
        ((16,), {"base_head_dim": "4"}, trimtab.ConfigTypeError),
    ],
)
def test_bad_dimensions_fail_with_the_value(args, kwargs, error):
    with pytest.raises(error, match="head_dim"):
        trimtab.attention_scale(*args, **kwargs)


def test_logits_of_aligned_queries_and_keys_stay_order_one_with_the_mup_scale():
    # After training, q and k correlate: q . k grows like head_dim, not sqrt(head_dim).
    gen = torch.Generator().manual_seed(0)
    mup, standard = [], []
    for d in (16, 64, 256, 1024):
        q = torch.randn(d, generator=gen)
        k = q + 0.1 * torch.randn(d, generator=gen)
        mup.append(float(q @ k) * trimtab.attention_scale(d, base_head_dim=16))
        standard.append(float(q @ k) / math.sqrt(d))
    assert max(mup) / min(mup) < 1.5  # flat across a 64x range of head_dim
    assert standard[-1] / standard[0] > 5  # grows like sqrt(head_dim)


def test_sdpa_with_the_scale_matches_the_written_out_attention():
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 4, 5, 32, generator=gen) for _ in range(3))
    scale = trimtab.attention_scale(32, base_head_dim=8)
    got = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
    logits = (q @ k.transpose(-1, -2)) * scale
    logits = logits.masked_fill(torch.ones(5, 5).triu(1).bool(), float("-inf"))
    torch.testing.assert_close(got, logits.softmax(-1) @ v)


def test_recipe_report_states_the_rule_for_multihead_attention():
    model = nn.Sequential(
        nn.Embedding(10, 64),
        nn.TransformerEncoderLayer(64, 4, 128, batch_first=True),
        nn.Linear(64, 10),
    )
    _, report = trimtab.recipe(model, lr=1e-2, total_steps=100, base_width=16)
    (note,) = [n for n in report.notes if n.startswith("attention")]
    assert "4 heads of 16" in note and "attention_scale" in note
    assert "base_head_dim 4" in note
    assert f"scale {trimtab.attention_scale(16, base_head_dim=4):.3g}" in note
    assert note in report.as_dict()["notes"] and note in str(report)


def test_no_attention_note_without_attention():
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 2))
    _, report = trimtab.recipe(model, lr=1e-2, total_steps=100, base_width=16)
    assert not any(n.startswith("attention") for n in report.notes)
