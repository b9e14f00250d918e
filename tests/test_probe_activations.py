"""The activations probe against a hand count of dead ReLU and saturated tanh units."""

from __future__ import annotations

import torch

from trimtab.probes import ActivationsProbe, GroupView, StepContext


def test_fractions_match_a_hand_count_and_eval_passes_are_ignored():
    torch.manual_seed(0)
    relu_in = torch.nn.Linear(4, 6)
    with torch.no_grad():
        relu_in.bias[:2] = -100.0  # two units can never fire
    model = torch.nn.Sequential(relu_in, torch.nn.ReLU(), torch.nn.Linear(6, 3), torch.nn.Tanh())
    probe = ActivationsProbe()
    probe.attach(model)
    x = torch.randn(32, 4)
    out = model(x)
    hidden = torch.relu(relu_in(x))
    dead = (~(hidden > 0).any(dim=0)).float().mean()
    saturated = (out.abs() > 0.99).float().mean()
    with torch.no_grad():
        model(100 * x)  # a validation pass must not overwrite the training reading
    got = probe.before_step(StepContext(step=0, loss=None, groups=[GroupView("g0", ())]))
    assert got["activations/dead_relu"].item() == dead.item() and dead.item() >= 2 / 6
    assert got["activations/saturated_tanh"].item() == saturated.item()
    probe.detach()
    assert not model[1]._forward_hooks and not model[3]._forward_hooks
