"""The demo: the same classifier trained at a learning rate 100x too high, with and
without trimtab, on scikit-learn's bundled digits (no download).

Plain AdamW at that rate blows the loss up on its first step and the network never
recovers; trimtab sees the divergence in the loss, rolls back, cuts the rate and brings
it back up to a level the run tolerates.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn import functional as F

from trimtab.regime import Regime
from trimtab.types import EventKind

Progress = Callable[[int, float, float], None]  # (step, loss, lr) after every step


@dataclass(frozen=True)
class DemoResult:
    name: str
    val_accuracy: float
    steps: int
    skipped: int
    rollbacks: int
    events: int
    log: Path


def load_digits_split(seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Digits scaled to [0, 1], split 1400 train / 397 validation."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise ImportError("the demo needs scikit-learn: pip install 'trimtab[demo]'") from exc
    features, labels = load_digits(return_X_y=True)
    x = torch.tensor(features / 16.0, dtype=torch.float32)
    y = torch.tensor(labels, dtype=torch.long)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    train, val = order[:1400], order[1400:]
    return x[train], y[train], x[val], y[val]


def make_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(64, 128),
        torch.nn.ReLU(),
        torch.nn.Linear(128, 128),
        torch.nn.ReLU(),
        torch.nn.Linear(128, 10),
    )


def train(
    *,
    adaptive: bool,
    lr: float,
    epochs: int,
    log: Path,
    seed: int = 0,
    batch_size: int = 64,
    progress: Progress | None = None,
) -> DemoResult:
    """Train the digits MLP with AdamW; ``adaptive=False`` runs it with no policies."""
    x_train, y_train, x_val, y_val = load_digits_split(seed)
    model = make_model(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    steps_per_epoch = -(-len(x_train) // batch_size)
    regime = Regime(
        model,
        optimizer,
        total_steps=epochs * steps_per_epoch,
        policies=("stability_guard", "plateau") if adaptive else (),
        log=log,
    )
    shuffle = torch.Generator().manual_seed(seed + 1)
    for _ in range(epochs):
        order = torch.randperm(len(x_train), generator=shuffle)
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            loss = F.cross_entropy(model(x_train[batch]), y_train[batch])
            regime.backward(loss)
            regime.step()
            if progress is not None:
                lr_now = regime.hyperparameters().get("lr/g0", lr)
                progress(regime.step_count, loss.item(), lr_now)
        with torch.no_grad():
            logits = model(x_val)
            regime.observe(val_loss=F.cross_entropy(logits, y_val).item())
    with torch.no_grad():
        accuracy = (model(x_val).argmax(dim=1) == y_val).float().mean().item()
    kinds = [e.kind for e in regime.events]
    return DemoResult(
        name="AdamW + trimtab" if adaptive else "AdamW",
        val_accuracy=accuracy,
        steps=regime.step_count,
        skipped=kinds.count(EventKind.SKIP),
        rollbacks=kinds.count(EventKind.ROLLBACK),
        events=len(kinds),
        log=log,
    )
