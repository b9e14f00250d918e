"""Bad input fails at construction (or at the call) with a message that says what to do."""

import math

import pytest
import torch
from tests.conftest import tiny_mlp

from trimtab import CallOrderError, ConfigError, ConfigTypeError, Regime, StabilityGuard


def adamw(model):
    return torch.optim.AdamW(model.parameters(), lr=1e-3)


def test_swapped_arguments_and_non_optimizers():
    model = tiny_mlp()
    with pytest.raises(TypeError, match="swap model and optimizer"):
        Regime(model, model)
    with pytest.raises(TypeError, match=r"model must be a torch\.nn\.Module"):
        Regime(adamw(model), adamw(model))
    with pytest.raises(ValueError, match="optimizer list is empty"):
        Regime(model, [])


def test_model_without_trainable_parameters():
    model = tiny_mlp()
    opt = adamw(model)
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        Regime(model, opt)


def test_optimizer_of_another_model():
    with pytest.raises(ValueError, match="not in the model"):
        Regime(tiny_mlp(), adamw(tiny_mlp()))


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"total_steps": 0}, ValueError, "total_steps must be >= 1"),
        ({"total_steps": 10.5}, TypeError, "total_steps must be an int"),
        ({"log_every": -1}, ValueError, "log_every"),
        ({"snapshot_every": 0}, ValueError, "snapshot_every"),
        (
            {"policies": ["stability_guard", "warp_drive"]},
            ValueError,
            "unknown policy 'warp_drive'",
        ),
        ({"policies": "plateau"}, TypeError, "list of names"),
        ({"probes": ["loss", "nope"]}, ValueError, "available: "),
        ({"probes": ["loss", "nonfinite"]}, ValueError, "not enabled"),
        ({"probes": ["loss", "grad_norm"]}, ValueError, "nonfinite. probe is required"),
        ({"policies": [StabilityGuard(), "stability_guard"]}, ValueError, "unique"),
        ({"arbiter": {"cooldown": 3}}, TypeError, "ArbiterConfig"),
    ],
)
def test_bad_settings(kwargs, error, message):
    model = tiny_mlp()
    with pytest.raises(error, match=message):
        Regime(model, adamw(model), **kwargs)


def test_non_finite_policy_setting():
    with pytest.raises(ValueError, match="finite"):
        StabilityGuard(cut=math.nan)


def test_duplicate_and_bad_group_names():
    model = tiny_mlp()
    params = list(model.parameters())
    opt = torch.optim.SGD(
        [{"params": params[:2], "name": "a"}, {"params": params[2:], "name": "a"}], lr=0.1
    )
    with pytest.raises(ValueError, match="named 'a'"):
        Regime(model, opt)
    opt = torch.optim.SGD([{"params": params, "name": "a/b"}], lr=0.1)
    with pytest.raises(ValueError, match="without '/'"):
        Regime(model, opt)


def test_errors_are_trimtab_errors_and_builtin_ones():
    assert issubclass(ConfigError, ValueError) and issubclass(ConfigTypeError, TypeError)


def test_call_order_and_loss_checks():
    model = tiny_mlp()
    regime = Regime(model, adamw(model))
    with pytest.raises(CallOrderError, match="backward"):
        regime.step()
    x = torch.randn(4, 8)
    with pytest.raises(TypeError, match="loss tensor"):
        regime.backward(model(x).sum().item())
    with pytest.raises(ValueError, match="scalar loss"):
        regime.backward(model(x))
    with torch.no_grad():
        detached = model(x).sum()
    with pytest.raises(ValueError, match="does not require grad"):
        regime.backward(detached)
    regime.backward(model(x).sum())
    with pytest.raises(CallOrderError, match="2 times without step"):
        regime.backward(model(x).sum())
    with pytest.raises(CallOrderError, match="step first"):
        regime.state_dict()
    regime.step()
    with pytest.raises(ValueError, match="no metrics"):
        regime.observe()
    with pytest.raises(TypeError, match="must be a number"):
        regime.observe(val_loss="low")
