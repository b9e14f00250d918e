"""trimtab.coord_check: flat activation scales with the recipe, growing ones without it."""

from __future__ import annotations

import pytest
from torch import nn

import trimtab


def _mlp(width: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(16, width),
        nn.ReLU(),
        nn.Linear(width, width),
        nn.ReLU(),
        nn.Linear(width, width),
        nn.ReLU(),
        nn.Linear(width, 4),
    )


HIDDEN = ["2", "3", "4", "5"]  # the hidden matrices' outputs and their activations
WIDTHS = (32, 64, 128, 256)


def test_recipe_keeps_hidden_activations_flat_where_standard_ones_grow():
    mup = trimtab.coord_check(_mlp, WIDTHS, steps=4, lr=3e-2, parametrization="recipe")
    sp = trimtab.coord_check(_mlp, WIDTHS, steps=4, lr=3e-2, parametrization="standard")
    mup_slopes, sp_slopes = mup.slopes(), sp.slopes()
    assert max(abs(mup_slopes[k]) for k in HIDDEN) < 0.2
    assert max(sp_slopes[k] for k in HIDDEN) > 0.5  # ~ width^0.8 after 4 Adam steps
    assert mup.is_flat(0.2, layers=HIDDEN) and not sp.is_flat(0.2, layers=HIDDEN)
    assert len(mup.rms["2"]) == len(WIDTHS) and len(mup.rms["2"][0]) == 5  # init + 4 steps
    assert mup.is_flat(0.2, layers=HIDDEN, step=0)  # init_ is width-consistent too


def test_embedding_models_get_token_data_and_bad_input_is_refused():
    def lm(width: int) -> nn.Sequential:
        return nn.Sequential(nn.Embedding(30, width), nn.Linear(width, width), nn.Linear(width, 30))

    check = trimtab.coord_check(lm, (16, 32), steps=2, lr=1e-2)
    assert set(check.rms) == {"0", "1", "2"}
    with pytest.raises(trimtab.ConfigError, match="two distinct"):
        trimtab.coord_check(lm, (16,))
    with pytest.raises(trimtab.ConfigError, match="no layers"):
        check.is_flat(layers=["head"])
    with pytest.raises(trimtab.ConfigError, match="parametrization"):
        trimtab.coord_check(lm, (16, 32), parametrization="ntk")


def test_plot_writes_a_file(tmp_path):
    pytest.importorskip("matplotlib", reason="needs the 'dev' or 'bench' extra")
    check = trimtab.coord_check(_mlp, (16, 32), steps=1)
    path = check.plot(tmp_path / "coord.png")
    assert path.exists() and path.stat().st_size > 1000
