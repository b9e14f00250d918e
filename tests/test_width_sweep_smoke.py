"""Keep ``benchmarks.width_sweep`` from rotting: its three sweeps at toy sizes, in seconds."""

import math

import pytest
import torch
from benchmarks import width_lm, width_report, width_sweep
from benchmarks.tasks import _TinyLM

import trimtab

TINY = width_sweep.Plan(
    widths=(8, 16),
    depths=(2, 3),
    lm_widths=(8, 16),
    lrs=(1e-3, 1e-2, 1e-1),
    lm_lrs=(1e-3, 1e-2),
    mlp_steps=4,
    lm_steps=3,
    seeds=(0, 1),
    lm_seeds=(0, 1),
)
ARMS = ("standard", "recipe")


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    out = tmp_path_factory.mktemp("cells")
    results, seconds = width_sweep.measure(TINY, ARMS, out=out, workers=1)
    return results, seconds, out


def test_every_cell_is_trained_once_per_seed_with_finite_losses(measured):
    results, seconds, _ = measured
    assert [r.name for r in results] == ["mlp_width", "mlp_depth", "transformer_width"]
    assert seconds[0] > 0 and seconds[1] == 0.0  # nothing was cached yet
    for result in results:
        assert result.arms == ARMS
        assert result.seeds == (0, 1)
        expected = len(ARMS) * len(result.sizes) * len(result.lrs)
        assert len(result.runs) == expected
        for (arm, size, lr), losses in result.runs.items():
            assert len(losses) == 2, (arm, size, lr)
            assert all(math.isfinite(v) and v > 0 for v in losses), (arm, size, lr, losses)
            assert result.loss(arm, size, lr) == pytest.approx(sum(losses) / 2)
        for arm in ARMS:
            assert all(result.best_lr(arm, s) in result.lrs for s in result.sizes)
            assert result.shift(arm) >= 1.0
    assert results[2].sizes == TINY.lm_widths and results[2].lrs == TINY.lm_lrs


def test_the_cache_is_read_back_instead_of_retraining(measured, monkeypatch):
    results, _, out = measured

    def refuse(cell):
        raise AssertionError(f"cell {cell} was retrained")

    monkeypatch.setattr(width_sweep, "run_cell", refuse)
    again, seconds = width_sweep.measure(TINY, ARMS, out=out, workers=1)
    assert [r.runs for r in again] == [r.runs for r in results]
    assert seconds[0] == pytest.approx(seconds[1]) and seconds[1] > 0


def test_report_tables_verdicts_section_and_plots(measured, tmp_path):
    results, seconds, _ = measured
    for result in results:
        lines = width_report.table(result)
        assert len(lines) == 2 + len(result.sizes) + 1
        assert all(line.count("|") == lines[0].count("|") for line in lines[1:-1])
        assert any("target" in v for v in width_report.verdict(result))
    text = width_sweep.section(
        results, plan=TINY, seconds=seconds, wall=1.0, workers=1, mup="absent"
    )
    assert text.startswith(width_report.START) and text.endswith(width_report.END)
    assert "mean of 2 seed(s)" in text and "### transformer_width" in text
    path = tmp_path / "RESULTS.md"
    path.write_text(f"# Results\n\nkept\n\n{width_report.START}\nold\n{width_report.END}\ntail\n")
    width_report.write_section(path, text)
    written = path.read_text()
    assert "kept" in written and written.endswith("tail\n") and "old" not in written
    pytest.importorskip("matplotlib", reason="needs the 'dev' or 'bench' extra")
    pngs = [p for r in results for p in width_report.plot(r, tmp_path / "plots")]
    assert len(pngs) == 3 * len(ARMS) and all(p.stat().st_size > 1000 for p in pngs)


def test_a_censored_optimum_is_never_called_met():
    result = width_report.Sweep("toy", "width", (8, 16), (0.1, 0.2, 0.4), ("recipe",), (0,))
    for size in (8, 16):
        for lr, loss in ((0.1, 3.0), (0.2, 2.0), (0.4, 1.0)):
            result.runs[("recipe", size, lr)] = [loss]
    assert result.shift("recipe") == 1.0 and result.at_edge("recipe") == [8, 16]
    first = width_report.verdict(result)[0]
    assert "NOT met" in first and "Censored" in first
    result.runs[("recipe", 16, 0.2)] = [math.inf]
    assert result.loss("recipe", 16, 0.2) == math.inf


def test_width_lm_is_tiny_lm_with_the_scale_exposed():
    torch.manual_seed(0)
    old, new = _TinyLM(30, width=32, context=8), width_lm.WidthLM(30, 32, 8)
    renames = {
        "blocks.layers.": "blocks.",
        "self_attn.in_proj_weight": "attn.qkv.weight",
        "self_attn.in_proj_bias": "attn.qkv.bias",
        "self_attn.out_proj": "attn.out",
        "linear1": "mlp.0",
        "linear2": "mlp.2",
    }
    state = {}
    for key, value in old.state_dict().items():
        for a, b in renames.items():
            key = key.replace(a, b)
        state[key] = value
    del state["mask"]
    new.load_state_dict(state)
    tokens = torch.randint(30, (2, 8))
    torch.testing.assert_close(new(tokens), old(tokens))
    for block in new.blocks:
        block.attn.scale = 8**-0.5  # head_dim 8: the standard scale, written out
    torch.testing.assert_close(new(tokens), old(tokens))


@pytest.mark.parametrize("arm", sorted(width_sweep.LM_ARMS))
def test_every_transformer_arm_trains(arm):
    assert math.isfinite(width_sweep.run_lm(arm, 16, 1e-2, 2, 0))


def test_the_recipe_arm_uses_the_mup_attention_scale():
    _, vocab = width_sweep._lm_data()
    model = width_sweep._lm_model(width_sweep.LM_ARMS["recipe"], vocab, 64, 8)
    base = width_sweep.LM_BASE // width_sweep.HEADS
    assert model.blocks[0].attn.scale == trimtab.attention_scale(16, base_head_dim=base)
    standard = width_sweep._lm_model(width_sweep.LM_ARMS["standard"], vocab, 64, 8)
    assert standard.blocks[0].attn.scale is None


def test_confirmatory_seeds_rerun_the_tuned_lr_and_decide_the_growth_verdict(tmp_path):
    plan = width_sweep.Plan(**{**TINY.__dict__, "confirm_seeds": (0, 1, 2)})
    results, _ = width_sweep.measure(
        plan, ARMS, sweeps=("mlp_width", "mlp_depth"), out=tmp_path, workers=1
    )
    width, depth = results
    assert not depth.confirm  # a depth sweep has no width rule to confirm
    tuned = width.tuned_lr("recipe")
    assert sorted(width.confirm) == list(width.sizes)
    for size, losses in width.confirm.items():
        assert len(losses) == 3
        assert losses[:2] == width.runs[("recipe", size, tuned)]  # grid seeds reused
    assert width.trained() == sum(len(v) for v in width.runs.values()) + len(width.sizes)
    assert len(width_report.confirm_table(width)) == 2 + len(width.sizes)
    assert "confirmed with 3 seeds" in width_report.verdict(width)[-1]


def test_growth_verdict_reads_the_confirmed_means_with_paired_errors():
    sweep = width_report.Sweep("transformer_width", "width", (16, 32), (0.1,), ("recipe",), (0,))
    sweep.runs = {("recipe", 16, 0.1): [2.0], ("recipe", 32, 0.1): [1.9]}
    sweep.confirm = {16: [2.0, 2.1, 2.2], 32: [2.05, 2.15, 2.25]}  # worse by 0.05 each seed
    lines = width_report.verdict(sweep)
    assert "never gets worse" in lines[1]  # the single grid seed says better ...
    assert "32: 2.150 > 16: 2.100 (+0.0500 +- 0.0000)" in lines[2]  # ... the seeds disagree
    assert lines[2].endswith("(target NOT met).")
    sweep.confirm[32] = [1.9, 2.3, 2.0]
    assert width_report.verdict(sweep)[2].endswith(
        "never gets worse as the width grows (target met)."
    )
