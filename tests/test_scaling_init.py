"""trimtab.init_: the rule per module follows its activation, depth and the readout rule."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import trimtab


def _by_module(records):
    return {r.module: r for r in records}


def test_activation_after_each_matrix_picks_the_rule():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(64, 512),
        nn.ReLU(),
        nn.Linear(512, 512),
        nn.Dropout(0.1),
        nn.Tanh(),
        nn.Linear(512, 512),
        nn.LayerNorm(512),
        nn.Sigmoid(),
        nn.Linear(512, 10),
    )
    records = _by_module(trimtab.init_(model))
    assert records["0"].rule == "kaiming (relu)"
    assert records["2"].rule == "xavier (tanh)"  # past the dropout
    assert records["5"].rule == "xavier (sigmoid)"  # past the norm
    assert records["8"].rule == "readout: zero"
    assert records["6"].rule == "weight 1, bias 0"
    assert model[0].weight.std().item() == pytest.approx(math.sqrt(2 / 64), rel=0.05)
    assert model[2].weight.std().item() == pytest.approx(5 / 3 * math.sqrt(2 / 1024), rel=0.05)
    assert model[8].weight.abs().sum().item() == 0.0
    assert all(m.bias.abs().sum().item() == 0.0 for m in model if isinstance(m, nn.Linear))
    assert "kaiming (relu)" in str(records["0"]) and "std" in str(records["0"])


def test_transformer_residual_projections_are_scaled_by_depth():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(128, 4, 512, dropout=0.0, batch_first=True)
    model = nn.Sequential(
        nn.Embedding(50, 128), nn.TransformerEncoder(layer, 3, enable_nested_tensor=False)
    )
    model.append(nn.Linear(128, 50))
    records = _by_module(trimtab.init_(model, readout_init="small"))
    block = "1.layers.2"
    assert records[f"{block}.linear1"].rule == "kaiming (relu)"
    residual = records[f"{block}.linear2"]
    assert residual.rule.startswith("residual projection") and "2 x 3" in residual.rule
    assert residual.std == pytest.approx(512**-0.5 / math.sqrt(6))
    assert records[f"{block}.self_attn.out_proj"].std == pytest.approx(128**-0.5 / math.sqrt(6))
    assert records[f"{block}.self_attn"].rule.startswith("input projections")
    assert records["2"].std == pytest.approx(1 / 128)
    weight = model[1].layers[2].linear2.weight
    assert weight.std().item() == pytest.approx(512**-0.5 / math.sqrt(6), rel=0.05)


def test_unknown_modules_are_refused_with_the_fix():
    class Odd(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.scale = nn.Parameter(torch.ones(3))
            self.proj = nn.Linear(3, 3)
            self.head = nn.Linear(3, 1)

    with pytest.raises(trimtab.ConfigError, match=r"module '<model>' \(Odd.*skip="):
        trimtab.init_(Odd())
    with pytest.raises(trimtab.ConfigError, match=r"which activation follows 'proj'.*activations="):
        trimtab.init_(Odd(), skip=("",))
    records = _by_module(trimtab.init_(Odd(), skip=("",), activations={"proj": "tanh"}))
    assert records[""].rule.startswith("skipped")
    assert records["proj"].rule == "xavier (tanh)" and records["head"].rule == "readout: zero"
    forced = _by_module(trimtab.init_(Odd(), "kaiming", skip=("",), readout_init="standard"))
    assert forced["proj"].rule == "kaiming (relu)" and forced["head"].std == pytest.approx(3**-0.5)


def test_bad_arguments():
    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1))
    with pytest.raises(trimtab.ConfigError, match="scheme"):
        trimtab.init_(model, "orthogonal")
    with pytest.raises(trimtab.ConfigError, match="known"):
        trimtab.init_(model, activations={"0": "swishy"})
    with pytest.raises(trimtab.ConfigTypeError):
        trimtab.init_("model")
