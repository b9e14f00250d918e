"""Probes never read a value to the host: every probe runs on meta tensors.

A meta tensor has a shape and a dtype but no data, so anything that would sync a GPU
(``.item()``, ``float()``, ``bool()``, ``.tolist()``, ``.cpu()``, data-dependent shapes)
raises on it. Running each probe's ``before_step``/``after_step`` through a few
optimizer steps on the meta device checks the probe contract on a machine without a
GPU: the controller's one transfer per step is the only place values reach the host.
"""

import pytest
import torch

from trimtab.probes import PROBES, GroupView, StepContext


def meta_run(name: str, steps: int = 7) -> tuple[dict[str, torch.Tensor], tuple[str, ...]]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(4, 8),
        torch.nn.ReLU(),
        torch.nn.Linear(8, 8),
        torch.nn.Tanh(),
        torch.nn.Linear(8, 1),
    ).to("meta")
    x, y = torch.empty(16, 4, device="meta"), torch.empty(16, 1, device="meta")
    params = tuple(model.parameters())
    groups = [GroupView("body", params[:4]), GroupView("head", params[4:])]
    optimizer = torch.optim.AdamW(params, lr=1e-3)

    def loss_fn() -> torch.Tensor:
        return torch.nn.functional.mse_loss(model(x), y)

    probe = PROBES[name](every=1)
    probe.attach(model)
    declared = tuple(probe.signals([g.name for g in groups]))  # per layer once attached
    emitted: dict[str, torch.Tensor] = {}
    try:
        for step in range(steps):
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn()
            loss.backward()
            ctx = StepContext(
                step=step,
                loss=loss,
                groups=groups,
                model=model,
                optimizers=(optimizer,),
                closure=loss_fn,
            )
            emitted.update(probe.before_step(ctx))
            optimizer.step()
            emitted.update(probe.after_step(ctx))
    finally:
        probe.detach()
    return emitted, declared


def test_meta_tensors_refuse_every_host_read():
    """The premise of this file: each way of reading a value fails on meta."""
    value = torch.ones((), device="meta")
    for read in (value.item, lambda: float(value), lambda: bool(value > 0), value.tolist):
        with pytest.raises((RuntimeError, NotImplementedError)):
            read()


@pytest.mark.parametrize("name", sorted(PROBES))
def test_probe_runs_without_reading_values(name):
    emitted, declared = meta_run(name)
    assert emitted, f"{name} emitted nothing in 7 steps at every=1"
    for signal, value in emitted.items():
        assert isinstance(value, torch.Tensor) and value.device.type == "meta", signal
        assert signal in declared, f"{signal} is not among the declared {declared}"
