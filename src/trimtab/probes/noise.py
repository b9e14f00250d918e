"""Gradient noise scale (McCandlish et al., 2018, "An Empirical Model of Large-Batch
Training"): B_simple = tr(Sigma) / |G|^2, the batch size beyond which larger batches stop
paying off, and a per-group signal-to-noise ratio |G|^2 / (tr(Sigma) / B).

Two unbiased estimates come from gradient norms at two batch sizes b < B (their
appendix A.1): |G|^2 ~ (B |G_B|^2 - b |G_b|^2) / (B - b) and
tr(Sigma) ~ (|G_b|^2 - |G_B|^2) / (1/b - 1/B). Numerator and denominator are smoothed by
EMAs separately before dividing, as they recommend, since each single estimate is noisy.

- With gradient accumulation (N micro-batches of b samples) the small batch is each
  micro-batch and the big one their mean: exact, global only.
- Without it, the probe builds the big batch across steps: the mean gradient of a block
  of ``block`` consecutive steps stands for one batch ``block`` times larger. This is
  biased when the weights move much within a block (the drift adds to |G_B|^2 and lowers
  tr(Sigma)); keep the block short. It gives per-group figures too.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from trimtab import _checks
from trimtab.probes.base import Cost, Probe, StepContext


class NoiseProbe(Probe):
    """Emits ``noise/b_simple`` (in samples when the batch size is known, else in
    batches), ``noise/grad_sq``, ``noise/trace`` and ``noise/snr/<group>``.

    Args:
        block: steps averaged into the big batch when not accumulating (>= 2).
        beta: EMA factor for the two estimates.
    """

    name = "noise"
    cost = Cost.MODERATE
    needs_micro_batches = True

    def __init__(self, *, every: int = 1, block: int = 4, beta: float = 0.9) -> None:
        super().__init__(every=every)
        self.block = _checks.count("block", block, minimum=2)
        self.beta = _checks.in_open_unit("beta", beta)
        self._sum: dict[str, list[torch.Tensor]] = {}
        self._small_sq: dict[str, torch.Tensor] = {}
        self._seen = 0
        self._ema: dict[str, torch.Tensor] = {}

    def signals(self, groups: Sequence[str]) -> tuple[str, ...]:
        return (
            "noise/b_simple",
            "noise/grad_sq",
            "noise/trace",
            *(f"noise/snr/{g}" for g in groups),
        )

    def settings(self) -> dict[str, object]:
        return {**super().settings(), "block": self.block, "beta": self.beta}

    def _smooth(self, key: str, value: torch.Tensor) -> torch.Tensor:
        old = self._ema.get(key)
        if old is None:
            new = value
        else:
            old = old.to(value.device)
            blended = self.beta * old + (1 - self.beta) * value
            # A non-finite reading (a NaN batch the controller then vetoes) must not poison
            # the average for the rest of the run: keep the old one, and let a finite
            # reading replace an average that never became finite. On device, no sync.
            new = torch.where(
                torch.isfinite(value), torch.where(torch.isfinite(old), blended, value), old
            )
        self._ema[key] = new
        return new

    def _estimate(
        self, key: str, small_sq: torch.Tensor, big_sq: torch.Tensor, n: int, b: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        grad_sq = (n * big_sq - small_sq) / (n - 1)
        trace = b * n * (small_sq - big_sq) / (n - 1)
        return self._smooth(f"{key}/g", grad_sq), self._smooth(f"{key}/s", trace)

    def before_step(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        if len(ctx.micro_grad_sq_norms) >= 2:
            return self._from_micro_batches(ctx)
        return self._across_steps(ctx)

    def _from_micro_batches(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        n = len(ctx.micro_grad_sq_norms)
        b = float(ctx.micro_batch_size or 1)
        small_sq = torch.stack(list(ctx.micro_grad_sq_norms)).mean()
        big_sq = torch.stack(list(ctx.grad_norms().values())).pow(2).sum()
        grad_sq, trace = self._estimate("global", small_sq, big_sq, n, b)
        return {
            "noise/grad_sq": grad_sq,
            "noise/trace": trace,
            "noise/b_simple": trace / grad_sq.clamp_min(1e-30),
        }

    def _across_steps(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        norms = ctx.grad_norms()
        for group in ctx.groups:
            grads = [p.grad.detach() for p in group.params if p.grad is not None]
            if not grads:
                continue
            if group.name in self._sum:
                torch._foreach_add_(self._sum[group.name], grads)
                self._small_sq[group.name] = self._small_sq[group.name] + norms[group.name] ** 2
            else:
                self._sum[group.name] = [g.clone() for g in grads]
                self._small_sq[group.name] = norms[group.name] ** 2
        self._seen += 1
        if self._seen < self.block:
            return {}
        n, b = self.block, float(ctx.micro_batch_size or 1)
        out: dict[str, torch.Tensor] = {}
        total_g, total_s = [], []
        for name, summed in self._sum.items():
            big_sq = torch.stack(torch._foreach_norm(summed)).pow(2).sum() / n**2
            small_sq = self._small_sq[name] / n
            grad_sq, trace = self._estimate(name, small_sq, big_sq, n, b)
            out[f"noise/snr/{name}"] = grad_sq / (trace / b).clamp_min(1e-30)
            total_g.append(grad_sq)
            total_s.append(trace)
        grad_sq, trace = torch.stack(total_g).sum(), torch.stack(total_s).sum()
        out.update(
            {
                "noise/grad_sq": grad_sq,
                "noise/trace": trace,
                "noise/b_simple": trace / grad_sq.clamp_min(1e-30),
            }
        )
        self._sum, self._small_sq, self._seen = {}, {}, 0
        return out

    def state_dict(self) -> dict[str, object]:
        return {
            "sum": {k: [t.cpu().clone() for t in v] for k, v in self._sum.items()},
            "small_sq": {k: v.cpu().clone() for k, v in self._small_sq.items()},
            "seen": self._seen,
            "ema": {k: v.cpu().clone() for k, v in self._ema.items()},
        }

    def load_state_dict(self, state: dict[str, object]) -> None:
        self._sum = {k: list(v) for k, v in dict(state.get("sum", {})).items()}  # type: ignore[union-attr]
        self._small_sq = dict(state.get("small_sq", {}))  # type: ignore[arg-type]
        self._seen = int(state.get("seen", 0))  # type: ignore[arg-type]
        self._ema = dict(state.get("ema", {}))  # type: ignore[arg-type]
