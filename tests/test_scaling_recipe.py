"""trimtab.recipe: groups by role, muP learning rates, decay by timescale, errors."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

import trimtab
from trimtab.scaling import classify


def _mlp(width: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(8, width),
        nn.ReLU(),
        nn.Linear(width, width),
        nn.LayerNorm(width),
        nn.ReLU(),
        nn.Linear(width, 3),
    )


class _LM(nn.Module):
    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.embed = nn.Embedding(20, width)
        self.block = nn.Linear(width, width)
        self.head = nn.Linear(width, 20)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.block(self.embed(tokens))))


def test_roles_follow_the_structure():
    roles = {p.name: p.role for p in classify(_mlp(16))}
    assert roles == {
        "0.weight": "input",
        "0.bias": "bias",
        "2.weight": "hidden",
        "2.bias": "bias",
        "3.weight": "norm",
        "3.bias": "norm",
        "5.weight": "readout",
        "5.bias": "bias",
    }
    lm = {p.name: p.role for p in classify(_LM())}
    assert lm["embed.weight"] == "embedding" and lm["block.weight"] == "hidden"
    assert lm["head.weight"] == "readout"
    single = classify(nn.Linear(4, 1))
    assert single[0].role == "input"  # one matrix, no embedding: nothing to scale


@pytest.mark.parametrize("width", [32, 128])
def test_adamw_learning_rates_follow_mup_and_decay_follows_the_timescale(width):
    opt, report = trimtab.recipe(_mlp(width), "adamw", lr=1e-3, total_steps=500, base_width=32)
    groups = {g["name"]: g for g in opt.param_groups}
    assert groups["hidden"]["lr"] == pytest.approx(1e-3 * 32 / width)
    assert groups["readout"]["lr"] == pytest.approx(1e-3 * 32 / width)
    assert groups["input"]["lr"] == groups["bias"]["lr"] == groups["norm"]["lr"] == 1e-3
    assert groups["bias"]["weight_decay"] == groups["norm"]["weight_decay"] == 0.0
    for name in ("input", "hidden", "readout"):
        g = groups[name]  # the EMA timescale 1/(lr*wd) is the whole run for every group
        assert 1.0 / (g["lr"] * g["weight_decay"]) == pytest.approx(500)
    assert all(g["max_grad_norm"] == report.max_grad_norm for g in opt.param_groups)
    assert report.max_grad_norm == pytest.approx(0.5 * math.sqrt(3))


def test_sgd_scales_vectors_by_fan_out_and_keeps_hidden_matrices():
    opt, report = trimtab.recipe(_mlp(64), "sgd", lr=0.1, total_steps=100, base_width=32)
    by_param = {id(p): g for g in opt.param_groups for p in g["params"]}
    lrs = {c.name: c.lr for c in report.groups}
    assert lrs["hidden"] == pytest.approx(0.1)
    assert lrs["input"] == pytest.approx(0.2)  # fan_out 64 / base 32
    assert lrs["readout"] == pytest.approx(0.05)  # base 32 / fan_in 64
    assert lrs["bias_out3"] == pytest.approx(0.1)  # the readout's bias does not grow
    assert lrs["bias_out64"] == pytest.approx(0.2)
    assert len(by_param) == sum(c.tensors for c in report.groups)
    hidden = report.group("hidden")  # SGD: (1 - momentum) / (lr * wd) = 100 steps
    assert (1 - 0.9) / (hidden.lr * hidden.weight_decay) == pytest.approx(100)
    _, short = trimtab.recipe(_mlp(64), "sgd", lr=0.1, total_steps=100, decay_fraction=0.2)
    assert short.group("hidden").weight_decay == pytest.approx(5 * hidden.weight_decay)


def test_embeddings_are_unscaled_and_undecayed_unless_asked():
    _, report = trimtab.recipe(_LM(64), lr=1e-3, total_steps=100, base_width=32)
    assert report.group("embedding").lr == 1e-3
    assert report.group("embedding").weight_decay == 0.0
    assert report.group("hidden").lr == pytest.approx(5e-4)
    _, decayed = trimtab.recipe(
        _LM(64), lr=1e-3, total_steps=100, base_width=32, decay_embeddings=True
    )
    assert decayed.group("embedding").weight_decay > 0


def test_overrides_by_pattern_roles_and_explicit_values():
    opt, report = trimtab.recipe(
        _mlp(64),
        lr=1e-3,
        total_steps=100,
        base_width=32,
        weight_decay=0.05,
        max_grad_norm=2.0,
        warmup_steps=7,
        readout_multiplier=0.5,
        overrides={"0.*": {"lr": 3e-2}, "2.weight": {"lr_scale": 2.0, "weight_decay": 0.0}},
    )
    groups = {g["name"]: g for g in opt.param_groups}
    hidden = next(g for g in report.groups if g.role == "hidden")
    assert hidden.lr == pytest.approx(1e-3) and hidden.weight_decay == 0.0  # 0.5e-3 x 2
    assert report.group("readout").lr == pytest.approx(1e-3 * 0.5 * 0.5)
    assert report.group("readout").weight_decay == 0.05
    overridden = [g for g in opt.param_groups if g["lr"] == 3e-2]
    assert sum(len(g["params"]) for g in overridden) == 2  # 0.weight and 0.bias
    assert report.max_grad_norm == 2.0 and report.warmup_steps == 7
    assert all(g["max_grad_norm"] == 2.0 for g in groups.values())


def test_report_prints_serialises_and_gives_a_warmup_schedule():
    _, report = trimtab.recipe(_mlp(32), lr=1e-3, total_steps=1000, base_width=32)
    text = str(report)
    assert "readout" in text and "32/fan_in(32)" in text and "max_grad_norm" in text
    data = json.loads(json.dumps(report.as_dict()))
    assert {g["name"] for g in data["groups"]} == {g.name for g in report.groups}
    assert report.warmup_steps == 20  # 2 % of 1000 for a model under 1e5 parameters
    schedule = report.schedule()
    assert schedule.lr_factor(0, 1000) == pytest.approx(1 / 20)
    assert schedule.lr_factor(19, 1000) == pytest.approx(1.0)


def test_size_rules_grow_with_the_model():
    _, small = trimtab.recipe(_mlp(16), total_steps=1000)
    _, large = trimtab.recipe(_mlp(1024), total_steps=1000)
    assert large.warmup_steps > small.warmup_steps
    _, deep = trimtab.recipe(nn.Sequential(*[nn.Linear(16, 16) for _ in range(12)]), total_steps=9)
    assert deep.max_grad_norm > small.max_grad_norm


def test_the_optimizer_trains():
    torch.manual_seed(0)
    model = _mlp(32)
    opt, _ = trimtab.recipe(model, lr=1e-2, total_steps=50, base_width=32)
    x, y = torch.randn(64, 8), torch.randint(3, (64,))
    first = nn.functional.cross_entropy(model(x), y).item()
    for _ in range(30):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    assert nn.functional.cross_entropy(model(x), y).item() < 0.7 * first


def test_bad_input_says_what_to_do():
    with pytest.raises(trimtab.ConfigError, match="no trainable parameters"):
        trimtab.recipe(_mlp(8).requires_grad_(False), total_steps=10)
    with pytest.raises(trimtab.ConfigError, match="build_optimizer"):
        trimtab.recipe(_mlp(8), "lion", total_steps=10)
    with pytest.raises(trimtab.ConfigError, match="unknown optimizer 'nope'"):
        trimtab.recipe(_mlp(8), "nope", total_steps=10)
    with pytest.raises(trimtab.ConfigError, match="total_steps must be >= 1, got 0"):
        trimtab.recipe(_mlp(8), total_steps=0)
    with pytest.raises(trimtab.ConfigError, match="warmup_steps"):
        trimtab.recipe(_mlp(8), total_steps=10, warmup_steps=10)
    with pytest.raises(trimtab.ConfigError, match="matches no parameter"):
        trimtab.recipe(_mlp(8), total_steps=10, overrides={"head.*": {"lr": 1.0}})
    with pytest.raises(trimtab.ConfigError, match="unknown keys"):
        trimtab.recipe(_mlp(8), total_steps=10, overrides={"0.*": {"momentum": 0.5}})
    with pytest.raises(trimtab.ConfigError, match="is not a role"):
        trimtab.recipe(_mlp(8), total_steps=10, roles={"0.*": "head"})
    with pytest.raises(trimtab.ConfigError, match="not a module"):
        trimtab.recipe(_mlp(8), total_steps=10, readout="head")
    with pytest.raises(trimtab.ConfigError, match="lr must be > 0"):
        trimtab.recipe(_mlp(8), total_steps=10, lr=-1.0)
