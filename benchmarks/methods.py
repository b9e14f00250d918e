"""The methods compared: the recipes users pick today, each as its documentation suggests,
and trimtab on top of AdamW.

A method wraps the optimizer machinery for one run: ``step(loss)`` does backward and the
update, ``observe(val_loss)`` feeds validation, ``eval_mode()``/``train_mode()`` bracket
evaluation (schedule-free evaluates its averaged weights).
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

import trimtab
from benchmarks.tasks import Setup


def _warmup_cosine(steps: int, warmup: float = 0.05) -> Callable[[int], float]:
    w = max(1, int(warmup * steps))

    def factor(step: int) -> float:
        if step < w:
            return (step + 1) / w
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - w) / max(1, steps - w))))

    return factor


class Method:
    """Plain loop: backward, optional clipping, optimizer step, optional scheduler step."""

    def __init__(self, setup: Setup, lr: float, steps: int) -> None:
        self.setup = setup
        self.events: list[dict] = []
        self.skipped = 0
        self.optimizer = self.make_optimizer(setup.groups, lr, steps)
        self.scheduler = self.make_scheduler(steps)

    def make_optimizer(self, groups, lr, steps) -> torch.optim.Optimizer:
        return torch.optim.AdamW(groups, lr=lr)

    def make_scheduler(self, steps: int):
        return None

    def clip(self) -> None:
        """Hook between backward and step."""

    def step(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.clip()
        self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()

    def observe(self, val_loss: float) -> None:
        """Validation result after each evaluation."""

    def eval_mode(self) -> None: ...

    def train_mode(self) -> None: ...

    def close(self) -> None: ...

    @property
    def should_stop(self) -> bool:
        """Whether the method asks to end the run early (early stopping)."""
        return False


class AdamWCosine(Method):
    def make_scheduler(self, steps):
        return torch.optim.lr_scheduler.LambdaLR(self.optimizer, _warmup_cosine(steps))


class AdamWCosineClip(AdamWCosine):
    def clip(self) -> None:
        torch.nn.utils.clip_grad_norm_(self.setup.model.parameters(), 1.0)


class AdamWCosineZClip(AdamWCosine):
    def __init__(self, setup, lr, steps):
        from zclip import ZClip

        super().__init__(setup, lr, steps)
        self.zclip = ZClip()  # its README defaults: alpha 0.97, z 2.5, adaptive scaling

    def clip(self) -> None:
        self.zclip.step(self.setup.model)


class AdamWSkipNonFinite(AdamWCosine):
    """What many training scripts do by hand: skip a step whose gradients are not finite."""

    def step(self, loss):
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        params = [p for p in self.setup.model.parameters() if p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(params, 1.0)
        if torch.isfinite(norm):
            self.optimizer.step()
        else:
            self.skipped += 1
        self.scheduler.step()


class AdamWPlateau(Method):
    def make_scheduler(self, steps):
        return None

    def __init__(self, setup, lr, steps):
        super().__init__(setup, lr, steps)
        self.plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.optimizer, factor=0.5, patience=2
        )

    def observe(self, val_loss):
        self.plateau.step(val_loss if math.isfinite(val_loss) else 1e9)


class SGDNesterovCosine(Method):
    def make_optimizer(self, groups, lr, steps):
        return torch.optim.SGD(groups, lr=lr * 10, momentum=0.9, nesterov=True)

    def make_scheduler(self, steps):
        return torch.optim.lr_scheduler.LambdaLR(self.optimizer, _warmup_cosine(steps))


class ScheduleFree(Method):
    """schedulefree.AdamWScheduleFree; evaluates the averaged weights in eval mode."""

    betas = (0.9, 0.999)
    weight_decay = 0.0
    warmup = 0.05

    def make_optimizer(self, groups, lr, steps):
        from schedulefree import AdamWScheduleFree

        opt = AdamWScheduleFree(
            groups,
            lr=self.fixed_lr or lr,
            betas=self.betas,
            weight_decay=self.weight_decay,
            warmup_steps=int(self.warmup * steps),
        )
        opt.train()
        return opt

    fixed_lr: float | None = None

    def eval_mode(self):
        self.optimizer.eval()

    def train_mode(self):
        self.optimizer.train()


class ScheduleFreeAlgoPerf(ScheduleFree):
    """The fixed configuration that won the AlgoPerf 2024 self-tuning track."""

    fixed_lr = 0.0025
    betas = (0.9, 0.9955)
    weight_decay = 0.08121616522670176
    warmup = 0.02


class ProdigyCosine(Method):
    """prodigyopt.Prodigy at lr=1 with cosine annealing, as its README recommends."""

    def make_optimizer(self, groups, lr, steps):
        from prodigyopt import Prodigy

        return Prodigy(groups, lr=1.0, weight_decay=0.0)

    def make_scheduler(self, steps):
        return torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=steps)


class DoG(Method):
    def make_optimizer(self, groups, lr, steps):
        from dog import DoG as DoGOptimizer

        return DoGOptimizer(groups, lr=1.0)


class Trimtab(Method):
    """AdamW given the grid's LR, driven by trimtab's default policies and evaluated on
    its moving average of the weights (``Regime(average=True)``, the README's loop)."""

    fixed_lr: float | None = None
    without: str | None = None  # a default policy switched off (the ablation)
    extra: str | None = None  # a policy added to the defaults (a candidate)
    wants_closure: bool = False  # the harness passes a loss closure to ``step``
    schedule: trimtab.schedules.Schedule | None = None  # a trimtab schedule on the base LR
    # evaluated on its moving average of the weights, as the README's loop does
    average: bool = True

    def __init__(self, setup, lr, steps):
        super().__init__(setup, self.fixed_lr or lr, steps)
        policies = tuple(p for p in trimtab.policies.DEFAULT_POLICIES if p != self.without)
        policies += (self.extra,) if self.extra else ()
        # the clipping policy acts only where the run clips: start from the common 1.0
        clip = 1.0 if self.extra == "clipping" else None
        self.regime = trimtab.Regime(
            setup.model,
            self.optimizer,
            total_steps=steps,
            policies=policies,
            max_grad_norm=clip,
            schedule=self.schedule,
            average=self.average,
        )
        self._evaluating = contextlib.ExitStack()

    def eval_mode(self):
        if self.average:
            self._evaluating.enter_context(self.regime.averaged())

    def train_mode(self):
        self._evaluating.close()

    def step(self, loss, closure=None):
        self.regime.backward(loss)
        if self.regime.step(closure=closure) is trimtab.Outcome.SKIPPED:
            self.skipped += 1

    def observe(self, val_loss):
        self.regime.observe(val_loss=val_loss)

    @property
    def should_stop(self) -> bool:
        return self.regime.should_stop

    def close(self):
        self.events = [e.to_record() for e in self.regime.events]
        self.regime.close()


class TrimtabCooldown(Trimtab):
    """trimtab with a linear cooldown to zero over the last 20 % of the steps (the decay of
    warmup-stable-decay; trimtab's early phase is the warmup)."""

    schedule = trimtab.schedules.WarmupStableDecay(warmup=0.0, decay=0.2)


class TrimtabAuto(Trimtab):
    """trimtab given no learning rate: AdamW's library default (1e-3) as the start."""

    fixed_lr = 1e-3


def _ablated(policy: str) -> type[Trimtab]:
    return type(f"TrimtabWithout_{policy}", (Trimtab,), {"without": policy})


def _extended(policy: str) -> type[Trimtab]:
    # a policy reading the curvature probe needs the loss closure for its HVPs
    closure = "curvature" in trimtab.policies.POLICIES[policy].requires
    return type(f"TrimtabWith_{policy}", (Trimtab,), {"extra": policy, "wants_closure": closure})


ABLATIONS = {f"trimtab-no-{p}": p for p in trimtab.policies.DEFAULT_POLICIES}
CANDIDATES = {
    f"trimtab-plus-{p}": p for p in trimtab.policies.POLICIES if p not in ABLATIONS.values()
}


# Candidates that only make sense on some tasks: fine_tuning refuses a model without a
# backbone group, and only the finetune task has one.
CANDIDATE_TASKS: dict[str, tuple[str, ...]] = {"fine_tuning": ("finetune",)}


@dataclass(frozen=True)
class MethodSpec:
    name: str
    build: type[Method]
    uses_lr: bool
    needs: str | None = None  # importable module the method requires
    tasks: tuple[str, ...] | None = None  # the only tasks it runs on; None: every task

    def available(self) -> bool:
        return self.needs is None or importlib.util.find_spec(self.needs) is not None

    def runs_on(self, task: str) -> bool:
        """Whether the suite plans this method on ``task``."""
        return self.tasks is None or task in self.tasks


METHODS: dict[str, MethodSpec] = {
    m.name: m
    for m in [
        MethodSpec("adamw", Method, True),
        MethodSpec("adamw_cosine", AdamWCosine, True),
        MethodSpec("adamw_cosine_clip", AdamWCosineClip, True),
        MethodSpec("adamw_cosine_zclip", AdamWCosineZClip, True, "zclip"),
        MethodSpec("adamw_skip_nonfinite", AdamWSkipNonFinite, True),
        MethodSpec("adamw_plateau", AdamWPlateau, True),
        MethodSpec("sgd_nesterov_cosine", SGDNesterovCosine, True),
        MethodSpec("schedulefree", ScheduleFree, True, "schedulefree"),
        MethodSpec("schedulefree_algoperf", ScheduleFreeAlgoPerf, False, "schedulefree"),
        MethodSpec("prodigy", ProdigyCosine, False, "prodigyopt"),
        MethodSpec("dog", DoG, False, "dog"),
        MethodSpec("trimtab", Trimtab, True),
        MethodSpec("trimtab_auto", TrimtabAuto, False),
        MethodSpec("trimtab_cooldown", TrimtabCooldown, True),
        *(MethodSpec(name, _ablated(p), True) for name, p in ABLATIONS.items()),
        *(
            MethodSpec(name, _extended(p), True, tasks=CANDIDATE_TASKS.get(p))
            for name, p in CANDIDATES.items()
        ),
    ]
}
# trimtab_cooldown was measured on 2026-11-30 and rerun on 2026-12-01 (+1 grid cell on
# 2 seeds, no speed gain: RESULTS.md); reproducible with --methods, not part of every run
MAIN_METHODS = tuple(
    n
    for n in METHODS
    if n not in ("adamw_skip_nonfinite", "trimtab_cooldown")
    and n not in {**ABLATIONS, **CANDIDATES}
)
QUICK_METHODS = (
    "adamw",
    "adamw_cosine",
    "adamw_plateau",
    "schedulefree_algoperf",
    "prodigy",
    "trimtab",
    "trimtab_auto",
)
