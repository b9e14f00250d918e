"""Set-up lints: mistakes read off the run header and the observe records.

A lint needs no curve: Adam with L2 decay is a mistake whether or not it hurt this run.
Fields that older logs lack (e.g. ``vector_tensors``) simply switch the matching lint off.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from trimtab.report.findings import DATA_OR_MODEL, Finding, Kind, Severity, fmt
from trimtab.report.runlog import RunLog
from trimtab.report.symptoms import is_backbone

DECAY_WARNING = 0.05  # decaying norms/biases by at least this much is worth a warning
CLIP_SHARE = 0.9  # clipped on 90 % of logged steps: the threshold is the real LR
_MODAL = ("Dropout", "BatchNorm", "InstanceNorm")  # layers that act differently in train mode
ADAM_FAMILY = ("Adam", "AdamW", "NAdam", "Adamax", "AdamWScheduleFree", "Lamb", "LAMB")
WARMUP_FREE = ("RAdam", "Prodigy", "AdamWScheduleFree")  # warm themselves up


def _hyper(group: dict, key: str, default: float = 0.0) -> float:
    value = group.get("hyperparameters", {}).get(key, default)
    return float(value) if isinstance(value, (int, float)) else default


def eval_in_train_mode(run: RunLog) -> Finding | None:
    """Validation measured with dropout/batch norm still in training mode."""
    flagged = [o for o in run.observations if o.model_training]
    if not flagged:
        return None
    modules = run.header.get("model", {}).get("modules")
    stochastic = {k: v for k, v in (modules or {}).items() if any(m in k for m in _MODAL)}
    if modules is not None and not stochastic:
        return None  # no layer behaves differently in training mode: nothing changes
    # Logs older than the module census cannot say whether it mattered: only a note.
    severity = Severity.WARNING if stochastic else Severity.NOTE
    what = ", ".join(f"{v} {k}" for k, v in sorted(stochastic.items())) or "unknown layers"
    return Finding(
        code="eval_in_train_mode",
        kind=Kind.LINT,
        title="validation ran with the model in training mode",
        evidence=(
            f"{len(flagged)} of {len(run.observations)} observe() calls had "
            f"model_training=true (first at step {flagged[0].step}); the model has {what}"
        ),
        advice="call model.eval() before evaluating and model.train() after",
        values={"observations_in_train_mode": float(len(flagged))},
        severity=severity,
        target=DATA_OR_MODEL,
        step=flagged[0].step,
    )


def adam_l2(run: RunLog) -> Finding | None:
    """torch.optim.Adam's weight_decay is L2 in the gradient, scaled away by Adam."""
    hits = [g for g in run.groups if g.get("optimizer") == "Adam" and _hyper(g, "weight_decay")]
    if not hits:
        return None
    decay = max(_hyper(g, "weight_decay") for g in hits)
    return Finding(
        code="adam_l2",
        kind=Kind.LINT,
        title="Adam with L2 weight decay where AdamW is meant",
        evidence=(
            f"optimizer Adam with weight_decay={fmt(decay)} in groups "
            f"{[g.get('name') for g in hits]}: the decay is added to the gradient and then "
            "divided by Adam's second moment, so it is not a decoupled decay"
        ),
        advice="use torch.optim.AdamW with the same weight_decay (then retune it)",
        values={"weight_decay": decay},
    )


def decay_on_norms(run: RunLog) -> Finding | None:
    """Weight decay applied to 1-D tensors (norm scales and biases)."""
    hits = [
        g for g in run.groups if g.get("vector_tensors", 0) > 0 and _hyper(g, "weight_decay") > 0
    ]
    if not hits:
        return None
    decay = max(_hyper(g, "weight_decay") for g in hits)
    tensors = sum(int(g["vector_tensors"]) for g in hits)
    return Finding(
        code="decay_on_norms",
        kind=Kind.LINT,
        title="weight decay on norm layers and biases",
        evidence=(
            f"{tensors} one-dimensional tensors (norm scales, biases) sit in groups with "
            f"weight_decay up to {fmt(decay)} ({[g.get('name') for g in hits]})"
        ),
        advice="put 1-D parameters in a param group with weight_decay=0",
        values={"vector_tensors": float(tensors), "weight_decay": decay},
        severity=Severity.WARNING if decay >= DECAY_WARNING else Severity.NOTE,
    )


def fp16_without_scaling(run: RunLog) -> Finding | None:
    """fp16 weights or autocast without a loss scaler lose small gradients to underflow.

    The precision comes from the Regime's ``precision`` and ``loss_scaling`` header
    fields (or ``header["amp"]`` from other writers); otherwise from the parameter
    dtypes, assuming no loss scaling.
    """
    amp = run.header.get("amp") or {}
    dtypes = run.header.get("model", {}).get("dtypes", {})
    half = int(dtypes.get("float16", 0))
    fp16_autocast = amp.get("dtype") == "float16" or run.header.get("precision") == "fp16"
    if not (fp16_autocast or half > 0):
        return None
    if amp.get("loss_scaling") or run.header.get("loss_scaling"):
        return None
    source = "fp16 autocast" if fp16_autocast else f"{half} fp16 parameters"
    return Finding(
        code="fp16_no_loss_scaling",
        kind=Kind.LINT,
        title="fp16 training without loss scaling",
        evidence=f"the run header records {source} and no loss scaling",
        advice="use torch.amp.GradScaler (or bf16, which needs no scaling) and keep "
        "master weights in fp32",
        values={"fp16_parameters": float(half)},
    )


def no_warmup_transformer(run: RunLog) -> Finding | None:
    """Adam on attention layers from full LR at step 0 is a classic early divergence."""
    modules = run.header.get("model", {}).get("modules", {})
    if not any("Attention" in k or "Transformer" in k for k in modules):
        return None
    optimizers = set(run.header.get("optimizers", []))
    if not optimizers & set(ADAM_FAMILY) or optimizers & set(WARMUP_FREE):
        return None
    lrs = [series for key, series in run.knobs.items() if key.startswith("lr/") and series]
    if not lrs:
        return None
    series = lrs[0]
    cutoff = series[0][0] + max(1, (series[-1][0] - series[0][0]) // 5)
    early = [v for s, v in series if s <= cutoff]
    if len(early) < 2 or series[0][1] < 0.5 * max(early):
        return None
    return Finding(
        code="no_warmup",
        kind=Kind.LINT,
        title="no warmup for a transformer trained with Adam",
        evidence=(
            f"lr starts at {fmt(series[0][1])} at step {series[0][0]}, already "
            f"{fmt(series[0][1] / max(early))}x its peak over the first steps"
        ),
        advice="warm the learning rate up linearly over the first 1-5 % of steps",
        values={"lr_start": series[0][1], "lr_early_peak": max(early)},
    )


def same_lr_finetune(run: RunLog) -> Finding | None:
    """A pretrained backbone trained at the head's learning rate."""
    groups = run.groups
    backbone = [g for g in groups if is_backbone(str(g.get("name", "")))]
    heads = [g for g in groups if not is_backbone(str(g.get("name", "")))]
    if not backbone or not heads:
        return None
    b, h = max(_hyper(g, "lr") for g in backbone), max(_hyper(g, "lr") for g in heads)
    if not (h > 0 and math.isclose(b, h, rel_tol=0.5)):
        return None
    return Finding(
        code="same_lr_finetune",
        kind=Kind.LINT,
        title="the same learning rate for backbone and head when fine-tuning",
        evidence=f"backbone lr {fmt(b)} vs head lr {fmt(h)}",
        advice="train the backbone 10-100x slower than the head, or unfreeze it in stages",
        values={"lr_backbone": b, "lr_head": h},
        severity=Severity.NOTE,
    )


def clipping_every_step(run: RunLog) -> Finding | None:
    """A clip threshold below the gradient norm on nearly every step."""
    norms = dict(run.finite("grad_norm/global"))
    thresholds: dict[int, float] = {}
    for key, series in run.knobs.items():
        if key.startswith("max_grad_norm/"):
            for step, value in series:
                thresholds[step] = min(value, thresholds.get(step, math.inf))
    if not thresholds:
        for group in run.groups:
            limit = _hyper(group, "max_grad_norm", math.nan)
            if math.isfinite(limit):
                thresholds = dict.fromkeys(norms, limit)
    steps = [s for s in norms if s in thresholds]
    if len(steps) < 5:
        return None
    clipped = sum(norms[s] > thresholds[s] for s in steps) / len(steps)
    if clipped < CLIP_SHARE:
        return None
    return Finding(
        code="clipping_every_step",
        kind=Kind.LINT,
        title="gradients are clipped on nearly every step",
        evidence=(
            f"grad_norm/global exceeded max_grad_norm in {clipped * 100:.0f} % of "
            f"{len(steps)} logged steps"
        ),
        advice="raise the clip threshold (clipping should catch outliers) or lower the LR",
        values={"clipped_share": clipped},
    )


def shift_without_guard(run: RunLog) -> Finding | None:
    """The shift policy without the stability guard: its fast confirmation needs the
    guard's rollback, and its 20-loss test alone cannot tell weights that diverged from
    new data (both keep the loss high)."""
    names = [p.get("name") for p in run.header.get("policies", []) if isinstance(p, dict)]
    if "shift" not in names or "stability_guard" in names:
        return None
    return Finding(
        code="shift_without_guard",
        kind=Kind.LINT,
        title="the shift policy runs without the stability guard",
        evidence=(
            f"policies {names}: without the guard's rollback the shift policy confirms new "
            "data only after 20 high losses, a test that weights which diverged pass too, "
            "and then it raises the LR"
        ),
        advice="put stability_guard back in policies=, or leave shift out",
        values={"shift": 1.0, "stability_guard": 0.0},
    )


LINTS: tuple[Callable[[RunLog], Finding | None], ...] = (
    fp16_without_scaling,
    eval_in_train_mode,
    adam_l2,
    decay_on_norms,
    no_warmup_transformer,
    clipping_every_step,
    same_lr_finetune,
    shift_without_guard,
)
