"""Shared helpers for the report tests: tiny logged runs and the doctor corpus module."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import torch

import trimtab
from conftest import batch, tiny_mlp, tiny_regression

ROOT = Path(__file__).resolve().parents[1]


def corpus() -> ModuleType:
    """benchmarks/doctor_corpus.py as a module (it is a script, not a package)."""
    if "doctor_corpus" not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            "doctor_corpus", ROOT / "benchmarks" / "doctor_corpus.py"
        )
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["doctor_corpus"] = module
        spec.loader.exec_module(module)
    return sys.modules["doctor_corpus"]


def logged_run(path: Path, *, lr: float = 0.05, steps: int = 60, reporters=()) -> Path:
    """A seeded regression run with the default policies, observed every 10 steps."""
    x, y = tiny_regression(0)
    model = tiny_mlp(0)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    regime = trimtab.Regime(
        model, opt, total_steps=steps, log=path, log_every=5, reporters=reporters
    )
    i = 0
    while not regime.should_stop:
        xb, yb = batch(x, y, i)
        regime.backward(torch.nn.functional.mse_loss(model(xb), yb))
        regime.step()
        i += 1
        if regime.step_count % 10 == 0:
            with torch.no_grad():
                regime.observe(val_loss=torch.nn.functional.mse_loss(model(x), y).item())
    regime.close()
    return path
