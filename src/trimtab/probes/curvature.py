"""Top Hessian eigenvalue by power iteration on Hessian-vector products, and where the
run sits against the optimizer's stability threshold (edge of stability).

Thresholds on the sharpness lambda (Cohen et al., 2021, "Gradient Descent on Neural
Networks Typically Occurs at the Edge of Stability"; Cohen et al., 2022, "Adaptive
Gradient Methods at the Edge of Stability"):

- plain gradient descent is stable while lr * lambda < 2;
- heavy-ball momentum beta: lr * lambda < 2 + 2 beta;
- Adam: the *preconditioned* sharpness (of P^-1 H with P = diag(sqrt(v_hat) + eps))
  against (2 + 2 beta1) / (1 - beta1), i.e. 38 / lr at beta1 = 0.9.

The probe emits ``curvature/lambda`` (lambda of H, or of P^-1 H for Adam-family
optimizers) and ``curvature/coefficient`` (2, 2+2b or 38-like), so a policy can compare
``lr_effective * lambda`` with the coefficient; ``curvature/ratio`` is that ratio at the
user's base LR. It needs ``regime.step(closure=...)`` (a function recomputing the loss on
the current batch): without a closure it emits nothing. The eigenvector is warm-started
from the previous reading, so a few iterations per reading suffice.

The closure's forward pass runs with PyTorch's math attention kernel: the fused
``scaled_dot_product_attention`` kernels (flash, memory-efficient) have no second
derivative, and the Hessian-vector products need one.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from trimtab import _checks
from trimtab.probes.base import Cost, Probe, StepContext


def _dot(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> torch.Tensor:
    return sum(torch.sum(x * y) for x, y in zip(a, b, strict=True))  # type: ignore[return-value]


def _normalize(v: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    norm = torch.sqrt(_dot(v, v)).clamp_min(1e-30)
    return [x / norm for x in v]


class CurvatureProbe(Probe):
    """Emits ``curvature/lambda``, ``curvature/coefficient`` and ``curvature/ratio``.

    Args:
        every: cadence (each reading costs ``iterations`` Hessian-vector products).
        iterations: power-iteration steps per reading.
    """

    name = "curvature"
    cost = Cost.EXPENSIVE

    def __init__(self, *, every: int = 50, iterations: int = 5) -> None:
        super().__init__(every=every)
        self.iterations = _checks.count("iterations", iterations)
        self._vector: list[torch.Tensor] | None = None

    def signals(self, groups: Sequence[str]) -> tuple[str, ...]:
        return ("curvature/lambda", "curvature/coefficient", "curvature/ratio")

    def settings(self) -> dict[str, object]:
        return {**super().settings(), "iterations": self.iterations}

    def before_step(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        if ctx.closure is None:
            return {}
        params = [p for g in ctx.groups for p in g.params]
        precondition, coefficient, lr = self._optimizer_terms(ctx, params)
        with torch.enable_grad(), sdpa_kernel(SDPBackend.MATH):  # twice differentiable
            loss = ctx.closure()
            grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
        grads = [
            g if g is not None else torch.zeros_like(p) for g, p in zip(grads, params, strict=True)
        ]
        vector = self._vector
        if vector is None or any(v.shape != p.shape for v, p in zip(vector, params, strict=False)):
            generator = torch.Generator(device="cpu").manual_seed(0)
            vector = [torch.randn(p.shape, generator=generator).to(p) for p in params]
        vector = _normalize([v.to(p.device) for v, p in zip(vector, params, strict=True)])
        eigenvalue = torch.zeros((), device=params[0].device)
        for i in range(self.iterations):
            # symmetric form P^-1/2 H P^-1/2 keeps the power iteration well defined
            probe = [v * s for v, s in zip(vector, precondition, strict=True)]
            hv = torch.autograd.grad(
                grads,
                params,
                grad_outputs=probe,
                retain_graph=i < self.iterations - 1,
                allow_unused=True,
            )
            hv = [
                h if h is not None else torch.zeros_like(p) for h, p in zip(hv, params, strict=True)
            ]
            hv = [h * s for h, s in zip(hv, precondition, strict=True)]
            eigenvalue = _dot(vector, hv).detach()
            vector = _normalize([h.detach() for h in hv])
        self._vector = vector
        return {
            "curvature/lambda": eigenvalue,
            "curvature/coefficient": torch.tensor(coefficient, device=eigenvalue.device),
            "curvature/ratio": lr * eigenvalue / coefficient,
        }

    def _optimizer_terms(
        self, ctx: StepContext, params: Sequence[torch.Tensor]
    ) -> tuple[list[torch.Tensor], float, float]:
        """Per-parameter P^-1/2 scaling, the stability coefficient and the base LR."""
        ones = [torch.ones_like(p) for p in params]
        if not ctx.optimizers:
            return ones, 2.0, 0.0
        optimizer = ctx.optimizers[0]
        group = optimizer.param_groups[0]
        lr = (
            float(group["lr"])
            if not isinstance(group["lr"], torch.Tensor)
            else float(group["lr"].item())
        )
        if "betas" in group:
            beta1, beta2 = group["betas"][0], group["betas"][1]
            eps = float(group.get("eps", 1e-8))
            scale = []
            for p in params:
                state = optimizer.state.get(p, {})
                if "exp_avg_sq" not in state:
                    return ones, (2 + 2 * beta1) / (1 - beta1), lr
                step = float(state["step"])
                v_hat = state["exp_avg_sq"] / (1 - beta2**step)
                scale.append((v_hat.sqrt() + eps).rsqrt())
            return scale, (2 + 2 * beta1) / (1 - beta1), lr
        momentum = float(group.get("momentum", 0.0))
        return ones, 2 + 2 * momentum, lr

    def state_dict(self) -> dict[str, object]:
        return {"vector": None if self._vector is None else [v.cpu().clone() for v in self._vector]}

    def load_state_dict(self, state: dict[str, object]) -> None:
        vector = state.get("vector")
        self._vector = None if vector is None else list(vector)  # type: ignore[arg-type]
