"""``trimtab.coord_check``: does the activation scale stay put as the width grows?

The coordinate check of Tensor Programs V (Yang et al., 2022, §D.1): train the same
architecture at several widths for a few steps on the same data and record the RMS of
every layer's output. Under a parametrization that transfers (muP: ``trimtab.recipe``
with ``trimtab.init_``) each layer's line is flat in width; under the standard one at a
large learning rate the hidden and output activations grow with width after a few
Adam steps (each update adds ~lr per entry, summed over a fan-in that grows).

Measuring never imports plotting: ``CoordCheck.plot`` imports matplotlib lazily.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from torch.nn import functional as F

from trimtab import _checks
from trimtab.errors import ConfigError, ConfigTypeError
from trimtab.optimizers import build_optimizer
from trimtab.scaling.init import init_
from trimtab.scaling.recipe import RecipeOptimizer, recipe
from trimtab.scaling.structure import EMBEDDINGS

Batch = tuple[torch.Tensor, torch.Tensor]
Parametrization = Literal["recipe", "standard"]


@dataclass(frozen=True)
class CoordCheck:
    """RMS of each layer's output: ``rms[layer][i][t]`` at ``widths[i]``, step ``t``.

    Step 0 is the initial forward pass; step ``t`` follows ``t`` updates.
    """

    widths: tuple[int, ...]
    steps: int
    parametrization: str
    rms: dict[str, list[list[float]]]

    def slopes(self, step: int = -1) -> dict[str, float]:
        """Least-squares slope of log RMS against log width per layer (0 = flat)."""
        xs = [math.log(w) for w in self.widths]
        mean_x = sum(xs) / len(xs)
        out: dict[str, float] = {}
        for layer, rows in self.rms.items():
            ys = [math.log(max(row[step], 1e-30)) for row in rows]
            mean_y = sum(ys) / len(ys)
            num = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True))
            out[layer] = num / sum((x - mean_x) ** 2 for x in xs)
        return out

    def is_flat(
        self, tolerance: float = 0.2, *, layers: Sequence[str] | None = None, step: int = -1
    ) -> bool:
        """True when every chosen layer's |slope| is below ``tolerance``."""
        slopes = self.slopes(step)
        chosen = list(slopes) if layers is None else list(layers)
        missing = [name for name in chosen if name not in slopes]
        if missing:
            raise ConfigError(f"no layers {missing} in the coord check; layers: {list(slopes)}")
        return all(abs(slopes[name]) < tolerance for name in chosen)

    def plot(self, path: str | Path, *, step: int = -1) -> Path:
        """RMS against width, one line per layer, log-log, saved to ``path``."""
        try:
            import matplotlib

            matplotlib.use("Agg")
            from matplotlib import pyplot as plt
        except ImportError as exc:
            raise ImportError(
                "CoordCheck.plot needs matplotlib: pip install 'trimtab[bench]'"
            ) from exc
        fig, ax = plt.subplots(figsize=(6, 4))
        for layer, rows in self.rms.items():
            ax.plot(self.widths, [row[step] for row in rows], marker="o", label=layer)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("width")
        ax.set_ylabel("activation RMS")
        ax.set_title(f"coord check ({self.parametrization}), step {step % (self.steps + 1)}")
        ax.legend(fontsize=6)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100, bbox_inches="tight")
        plt.close(fig)
        return path


def coord_check(
    make_model: Callable[[int], nn.Module],
    widths: Sequence[int] = (64, 128, 256, 512),
    *,
    steps: int = 4,
    lr: float = 1e-2,
    optimizer: RecipeOptimizer = "adamw",
    parametrization: Parametrization = "recipe",
    base_width: int | None = None,
    batch: Callable[[int], Batch] | None = None,
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    batch_size: int = 32,
    seed: int = 0,
) -> CoordCheck:
    """Train ``make_model(width)`` for ``steps`` updates per width; record layer RMS.

    ``parametrization="recipe"`` runs ``init_`` then ``recipe`` (base width: the first
    width unless given); ``"standard"`` keeps PyTorch's init and one learning rate.
    Weight decay is off in both, so the check isolates the learning-rate rule. Without
    ``batch``, synthetic data is drawn: Gaussian inputs and targets with an MSE loss
    for a model that starts with a Linear, random tokens and next-token cross entropy
    for one that starts with an Embedding.

    Example:
        >>> check = coord_check(lambda w: nn.Sequential(nn.Linear(8, w), nn.ReLU(),
        ...                     nn.Linear(w, 1)), widths=(16, 32, 64))
        >>> check.is_flat(0.3)
        True
    """
    if not callable(make_model):
        raise ConfigTypeError("make_model must be a function width -> nn.Module")
    widths = tuple(_checks.count("width", w) for w in widths)
    if len(widths) < 2 or len(set(widths)) != len(widths):
        raise ConfigError(f"widths must hold at least two distinct values, got {widths}")
    steps = _checks.count("steps", steps)
    lr = _checks.positive("lr", lr)
    if parametrization not in ("recipe", "standard"):
        raise ConfigError(
            f"parametrization must be 'recipe' or 'standard', got {parametrization!r}"
        )
    rms: dict[str, list[list[float]]] = {}
    for width in widths:
        torch.manual_seed(seed)
        model = make_model(width)
        if not isinstance(model, nn.Module):
            raise ConfigTypeError(f"make_model({width}) returned {type(model).__name__}")
        if parametrization == "recipe":
            init_(model)
            opt, _ = recipe(
                model,
                optimizer,
                lr=lr,
                total_steps=steps,
                weight_decay=0.0,
                base_width=base_width or widths[0],
                warmup_steps=0,
            )
        else:
            opt = build_optimizer(optimizer, model, lr=lr, weight_decay=0.0)
        draw, loss_fn = (batch, loss) if batch is not None else _synthetic(model, batch_size, seed)
        if loss_fn is None:
            loss_fn = F.mse_loss
        per_layer = _train(model, opt, draw, loss_fn, steps)  # type: ignore[arg-type]
        for layer, values in per_layer.items():
            rms.setdefault(layer, []).append(values)
    rms = {k: v for k, v in rms.items() if len(v) == len(widths)}
    return CoordCheck(widths, steps, parametrization, rms)


def _train(model, opt, draw, loss_fn, steps: int) -> dict[str, list[float]]:
    seen: dict[str, list[float]] = {}
    handles = []
    for name, module in model.named_modules():
        if name and not list(module.children()):

            def hook(_m: nn.Module, _i: Any, out: Any, name: str = name) -> None:
                if isinstance(out, torch.Tensor) and out.is_floating_point():
                    seen.setdefault(name, []).append(out.detach().pow(2).mean().sqrt().item())

            handles.append(module.register_forward_hook(hook))
    try:
        for t in range(steps + 1):
            x, y = draw(t)
            if t == steps:
                with torch.no_grad():
                    model(x)
                break
            opt.zero_grad()
            loss_fn(model(x), y).backward()
            opt.step()
    finally:
        for handle in handles:
            handle.remove()
    return seen


def _synthetic(model: nn.Module, batch_size: int, seed: int):
    leaves = [m for m in model.modules() if isinstance(m, (nn.Linear, *EMBEDDINGS))]
    if not leaves:
        raise ConfigError("coord_check cannot make data for this model; pass batch= and loss=")
    first, last = leaves[0], leaves[-1]
    if isinstance(first, EMBEDDINGS):
        vocab, classes = first.num_embeddings, last.out_features
        if not isinstance(last, nn.Linear):
            raise ConfigError("no output Linear after the embedding; pass batch= and loss=")

        def tokens(t: int) -> Batch:
            g = torch.Generator().manual_seed(seed * 7919 + t)
            x = torch.randint(vocab, (batch_size, 16), generator=g)
            return x, torch.randint(classes, (batch_size, 16), generator=g)

        return tokens, lambda out, y: F.cross_entropy(out.flatten(0, -2), y.flatten())

    def gaussian(t: int) -> Batch:
        g = torch.Generator().manual_seed(seed * 7919 + t)
        x = torch.randn(batch_size, first.in_features, generator=g)
        return x, torch.randn(batch_size, last.out_features, generator=g)

    return gaussian, F.mse_loss
