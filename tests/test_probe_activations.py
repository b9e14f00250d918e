"""The activations probe's pooled fractions against a hand count, and eval passes ignored."""

from __future__ import annotations

import torch

from trimtab.probes import ActivationProbe, GroupView, StepContext


def test_pooled_fractions_match_a_hand_count_and_eval_passes_are_ignored():
    torch.manual_seed(0)
    relu_in = torch.nn.Linear(4, 6)
    with torch.no_grad():
        relu_in.bias[:2] = -100.0  # two units can never fire
        relu_in.bias[2:] = 100.0  # the others always do
    to_tanh = torch.nn.Linear(6, 3)
    with torch.no_grad():
        to_tanh.weight.zero_()
        to_tanh.bias.copy_(torch.tensor([50.0, 0.0, -50.0]))  # two of three pinned
    model = torch.nn.Sequential(relu_in, torch.nn.ReLU(), to_tanh, torch.nn.Tanh())
    probe = ActivationProbe(every=1)
    probe.attach(model)
    x = torch.randn(32, 4)
    model(x)
    hidden = torch.relu(relu_in(x))
    dead = (~(hidden > 0).any(dim=0)).float().mean()
    with torch.no_grad():
        relu_in.bias.fill_(100.0)
        model(x)  # a validation pass must not overwrite the training reading
    got = probe.before_step(StepContext(step=0, loss=None, groups=[GroupView("g0", ())]))
    assert got["activations/dead"].item() == dead.item() == torch.tensor(2 / 6).item()
    assert abs(got["activations/saturated"].item() - 2 / 3) < 1e-6  # 2 of 3 outputs pinned
    assert got["activations/1/dead"].item() == dead.item()
    probe.detach()
    assert not model[1]._forward_hooks and not model[3]._forward_hooks
