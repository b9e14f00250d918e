"""Benchmark tasks: small, seeded, offline training problems, each a different regime.

A task builds a fresh ``Setup`` for a seed: the model, its parameter groups, a function
that returns the batch for a step (deterministic in the step, so every method sees the
same data), and evaluation. Everything fits two CPU cores.
"""

from __future__ import annotations

import itertools
import math
import sysconfig
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass
class Setup:
    model: nn.Module
    groups: list[dict]  # optimizer param groups (named)
    batch: Callable[[int], Batch]  # step -> batch
    loss: Callable[[nn.Module, Batch], torch.Tensor]
    evaluate: Callable[[nn.Module], tuple[float, float]]  # -> (metric, val_loss)
    faults: dict[int, str] = field(default_factory=dict)  # step -> fault applied


@dataclass(frozen=True)
class Size:
    """Where and how big: ``factor`` multiplies widths and batch sizes (GPU runs use 4)."""

    device: str = "cpu"
    factor: int = 1


@dataclass(frozen=True)
class Task:
    name: str
    metric: str
    higher_is_better: bool
    steps: int
    quick_steps: int
    build: Callable[..., Setup]  # (seed, steps, size=Size()) -> Setup
    description: str

    def tolerance(self, oracle: float) -> float:
        """Within 1 accuracy point, or 5 % relative for losses."""
        return 0.01 if self.higher_is_better else 0.05 * abs(oracle)


# -- data --------------------------------------------------------------------------------
def _digits(device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    return (
        torch.tensor(x / 16.0, dtype=torch.float32, device=device),
        torch.tensor(y, device=device),
    )


def _split(n: int, n_train: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order[:n_train], order[n_train:]


def _sampler(n: int, batch_size: int, seed: int) -> Callable[[int], torch.Tensor]:
    """Index batches for step i: a fixed permutation per epoch, deterministic in i."""
    per_epoch = max(n // batch_size, 1)

    def indices(step: int) -> torch.Tensor:
        epoch, k = divmod(step, per_epoch)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 7919 + epoch))
        return order[k * batch_size : (k + 1) * batch_size]

    return indices


def _classification_eval(model: nn.Module, x: torch.Tensor, y: torch.Tensor):
    def evaluate(m: nn.Module) -> tuple[float, float]:
        with torch.no_grad():
            logits = m(x)
            loss = F.cross_entropy(logits, y).item()
            acc = (logits.argmax(1) == y).float().mean().item()
        return (acc if math.isfinite(loss) else 0.0), loss

    return evaluate


def _ce(model: nn.Module, batch: Batch) -> torch.Tensor:
    return F.cross_entropy(model(batch[0]), batch[1])


def _mse(model: nn.Module, batch: Batch) -> torch.Tensor:
    return F.mse_loss(model(batch[0]), batch[1])


def _mlp(sizes: list[int], act: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(act())
    return nn.Sequential(*layers)


def _one_group(model: nn.Module) -> list[dict]:
    return [{"params": list(model.parameters()), "name": "all"}]


def _classifier(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    train: torch.Tensor,
    val: torch.Tensor,
    batch_size: int,
    seed: int,
) -> Setup:
    """A classification setup drawing shuffled mini-batches from ``x[train]``."""
    pick = _sampler(len(train), batch_size, seed)

    def batch(step: int) -> Batch:
        idx = train[pick(step)]
        return x[idx], y[idx]

    return Setup(model, _one_group(model), batch, _ce, _classification_eval(model, x[val], y[val]))


# -- tasks -------------------------------------------------------------------------------
def digits_mlp(
    seed: int, steps: int, size: Size = Size(), width: int = 128, faults: bool = False
) -> Setup:
    x, y = _digits(size.device)
    train, val = _split(len(x), 1400, seed)
    torch.manual_seed(seed)
    width *= size.factor
    model = _mlp([64, width, width, 10]).to(size.device)
    pick = _sampler(len(train), 64 * size.factor, seed)
    fault_steps: dict[int, str] = {}
    if faults:
        fault_steps = {
            steps // 4: "nan inputs",
            steps // 2: "inputs x1000",
            steps // 2 + 1: "inputs x1000",
            **{steps * 3 // 4 + k: "shuffled labels" for k in range(3)},
        }

    def batch(step: int) -> Batch:
        idx = train[pick(step)]
        bx, by = x[idx], y[idx]
        fault = fault_steps.get(step)
        if fault == "nan inputs":
            bx = bx * math.nan
        elif fault == "inputs x1000":
            bx = bx * 1000.0
        elif fault == "shuffled labels":
            by = by[torch.randperm(len(by), generator=torch.Generator().manual_seed(step))]
        return bx, by

    return Setup(
        model,
        _one_group(model),
        batch,
        _ce,
        _classification_eval(model, x[val], y[val]),
        fault_steps,
    )


class _SmallCNN(nn.Module):
    def __init__(self, factor: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16 * factor, 3, padding=1)
        self.conv2 = nn.Conv2d(16 * factor, 32 * factor, 3, padding=1)
        self.head = nn.Linear(32 * factor * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.view(-1, 1, 8, 8)
        x = F.relu(self.conv1(x))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.head(x.flatten(1))


def digits_cnn(seed: int, steps: int, size: Size = Size()) -> Setup:
    x, y = _digits(size.device)
    train, val = _split(len(x), 1400, seed)
    torch.manual_seed(seed)
    model = _SmallCNN(size.factor).to(size.device)
    return _classifier(model, x, y, train, val, 64 * size.factor, seed)


def tabular(seed: int, steps: int, size: Size = Size()) -> Setup:
    from sklearn.datasets import load_breast_cancer

    features, labels = load_breast_cancer(return_X_y=True)
    x = torch.tensor(features, dtype=torch.float32, device=size.device)
    x = (x - x.mean(0)) / x.std(0)
    y = torch.tensor(labels, device=size.device)
    train, val = _split(len(x), 400, seed)
    torch.manual_seed(seed)
    model = _mlp([30, 64 * size.factor, 64 * size.factor, 2]).to(size.device)
    return _classifier(model, x, y, train, val, 32 * size.factor, seed)


def overfit_regression(seed: int, steps: int, size: Size = Size()) -> Setup:
    """Diabetes progression from 60 training rows with a 130k-parameter MLP."""
    from sklearn.datasets import load_diabetes

    features, target = load_diabetes(return_X_y=True)
    x = torch.tensor(features, dtype=torch.float32, device=size.device)
    x = (x - x.mean(0)) / x.std(0)
    y = torch.tensor(target, dtype=torch.float32, device=size.device).unsqueeze(1)
    y = (y - y.mean()) / y.std()
    train, val = _split(len(x), 60, seed)
    torch.manual_seed(seed)
    hidden = 256 * size.factor
    model = _mlp([10, hidden, hidden, hidden, 1]).to(size.device)
    pick = _sampler(len(train), 20, seed)

    def evaluate(m: nn.Module) -> tuple[float, float]:
        with torch.no_grad():
            loss = F.mse_loss(m(x[val]), y[val]).item()
        return (loss if math.isfinite(loss) else 1e9), loss

    return Setup(
        model, _one_group(model), lambda s: (x[train[pick(s)]], y[train[pick(s)]]), _mse, evaluate
    )


def shifting_blobs(
    seed: int, dim: int, classes: int, device: str = "cpu"
) -> Callable[[int, bool, torch.Generator], Batch]:
    """Gaussian-blob classes, and the same classes rotated and moved (the shift): a
    rotation and a translation keep the Bayes accuracy. Returns ``draw(n, shifted, g)``."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=gen) * 1.5
    rotation, _ = torch.linalg.qr(torch.randn(dim, dim, generator=gen))
    offset = torch.randn(dim, generator=gen) * 2.0

    def draw(n: int, shifted: bool, g: torch.Generator) -> Batch:
        labels = torch.randint(classes, (n,), generator=g)
        points = centres[labels] + torch.randn(n, dim, generator=g)
        if shifted:
            points = points @ rotation + offset
        return points.to(device), labels.to(device)

    return draw


def shift(seed: int, steps: int, size: Size = Size()) -> Setup:
    """Gaussian-blob classes whose inputs rotate and move halfway through the run."""
    dim, classes = 20, 5
    draw = shifting_blobs(seed, dim, classes, size.device)
    val_x, val_y = draw(1000, True, torch.Generator().manual_seed(seed + 99))
    torch.manual_seed(seed)
    model = _mlp([dim, 64 * size.factor, 64 * size.factor, classes]).to(size.device)

    def batch(step: int) -> Batch:
        generator = torch.Generator().manual_seed(seed * 100003 + step)
        return draw(64 * size.factor, step >= steps // 2, generator)

    return Setup(
        model,
        _one_group(model),
        batch,
        _ce,
        _classification_eval(model, val_x, val_y),
        {steps // 2: "distribution shift"},
    )


def finetune(seed: int, steps: int, size: Size = Size()) -> Setup:
    """A backbone pretrained on digits 0-4, a new head for 5-9: two param groups."""
    x, y = _digits(size.device)
    hidden = 128 * size.factor
    old, new = y < 5, y >= 5
    torch.manual_seed(seed)
    backbone = _mlp([64, hidden, hidden])
    backbone.append(nn.ReLU())
    pre_head = nn.Linear(hidden, 5)
    pre = nn.Sequential(backbone, pre_head).to(size.device)
    opt = torch.optim.AdamW(pre.parameters(), lr=3e-3)
    xo, yo = x[old], y[old]
    pick_old = _sampler(len(xo), 64, seed)
    for step in range(150):
        idx = pick_old(step)
        opt.zero_grad()
        F.cross_entropy(pre(xo[idx]), yo[idx]).backward()
        opt.step()
    xn, yn = x[new], y[new] - 5
    train, val = _split(len(xn), 500, seed)
    model = nn.Sequential(backbone, nn.Linear(hidden, 5)).to(size.device)
    pick = _sampler(len(train), 32, seed)
    groups = [
        {"params": list(backbone.parameters()), "name": "backbone"},
        {"params": list(model[1].parameters()), "name": "head"},
    ]
    return Setup(
        model,
        groups,
        lambda s: (xn[train[pick(s)]], yn[train[pick(s)]]),
        _ce,
        _classification_eval(model, xn[val], yn[val]),
    )


def _corpus() -> str:
    """Text that ships with Python: a few standard-library modules' source."""
    root = Path(sysconfig.get_paths()["stdlib"])
    names = ("textwrap.py", "string.py", "heapq.py", "bisect.py", "fnmatch.py", "glob.py")
    return "\n".join((root / n).read_text(encoding="utf-8") for n in names if (root / n).exists())


class _TinyLM(nn.Module):
    def __init__(self, vocab: int, width: int = 64, context: int = 64) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.position = nn.Parameter(torch.zeros(context, width))
        layer = nn.TransformerEncoderLayer(
            width, 4, 4 * width, dropout=0.0, batch_first=True, norm_first=True
        )
        self.blocks = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, vocab)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(context))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        n = tokens.shape[1]
        h = self.embed(tokens) + self.position[:n]
        h = self.blocks(h, mask=self.mask[:n, :n], is_causal=True)
        return self.out(self.norm(h))


def char_lm(seed: int, steps: int, size: Size = Size()) -> Setup:
    text = _corpus()
    vocab = sorted(set(text))
    index = {c: i for i, c in enumerate(vocab)}
    data = torch.tensor([index[c] for c in text], dtype=torch.long, device=size.device)
    split = int(0.9 * len(data))
    train, val = data[:split], data[split:]
    context = 64
    torch.manual_seed(seed)
    model = _TinyLM(len(vocab), width=64 * size.factor, context=context).to(size.device)
    gen_val = torch.Generator().manual_seed(12345)
    starts = torch.randint(len(val) - context - 1, (64,), generator=gen_val)
    val_x = torch.stack([val[s : s + context] for s in starts])
    val_y = torch.stack([val[s + 1 : s + context + 1] for s in starts])

    def batch(step: int) -> Batch:
        g = torch.Generator().manual_seed(seed * 100003 + step)
        s = torch.randint(len(train) - context - 1, (32 * size.factor,), generator=g)
        bx = torch.stack([train[i : i + context] for i in s])
        by = torch.stack([train[i + 1 : i + context + 1] for i in s])
        return bx, by

    def loss(m: nn.Module, b: Batch) -> torch.Tensor:
        return F.cross_entropy(m(b[0]).flatten(0, 1), b[1].flatten())

    def evaluate(m: nn.Module) -> tuple[float, float]:
        with torch.no_grad():
            value = loss(m, (val_x, val_y)).item()
        return (value if math.isfinite(value) else 1e9), value

    return Setup(model, _one_group(model), batch, loss, evaluate)


TASKS: dict[str, Task] = {
    t.name: t
    for t in [
        Task(
            "digits_cnn",
            "accuracy",
            True,
            600,
            200,
            digits_cnn,
            "small CNN on sklearn digits (8x8 images)",
        ),
        Task(
            "tabular", "accuracy", True, 400, 150, tabular, "MLP on sklearn breast-cancer features"
        ),
        Task(
            "char_lm",
            "val loss",
            False,
            400,
            120,
            char_lm,
            "2-layer causal transformer, characters of stdlib source",
        ),
        Task(
            "overfit",
            "val mse",
            False,
            400,
            150,
            overfit_regression,
            "diabetes regression, 60 training rows, 130k-parameter MLP",
        ),
        Task(
            "shift",
            "accuracy",
            True,
            600,
            200,
            shift,
            "Gaussian classes whose inputs rotate and move at mid-run",
        ),
        Task(
            "faults",
            "accuracy",
            True,
            600,
            200,
            lambda seed, steps, size=Size(): digits_mlp(seed, steps, size, faults=True),
            "digits MLP with a NaN batch, two x1000 batches, 3 shuffled-label batches",
        ),
        Task(
            "finetune",
            "accuracy",
            True,
            400,
            150,
            finetune,
            "backbone pretrained on digits 0-4, new head for 5-9, two groups",
        ),
        *[
            Task(
                f"width_{w}",
                "accuracy",
                True,
                500,
                150,
                lambda seed, steps, size=Size(), w=w: digits_mlp(seed, steps, size, width=w),
                f"digits MLP at width {w} (same recipe, widths 8x apart)",
            )
            for w in (32, 64, 128, 256)
        ],
    ]
}
QUICK_TASKS = ("digits_cnn", "tabular", "faults", "finetune")
