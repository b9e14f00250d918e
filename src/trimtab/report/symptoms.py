"""Symptoms read off the curves of one run, each rule a small pure function.

Every rule returns a ``Finding`` or ``None`` and cites the values it used. Thresholds
are module constants so the corpus (benchmarks/doctor_corpus.py) measures exactly these.
Losses are read from the ``signals`` snapshots (one every ``log_every`` steps), so each
rule compares robust summaries (medians of a few snapshots), never single batches.
"""

from __future__ import annotations

import math
import statistics

from trimtab.report.findings import DATA_OR_MODEL, Finding, Kind, fmt
from trimtab.report.runlog import RunLog

SPIKE_RATIO = 1.5  # loss above 1.5x its starting value: the step overshoots
DIED_FRACTION = 0.6  # ReLU units dead at the end ...
DIED_RISE = 0.4  # ... having been alive at the start: killed by large steps
DEAD_AT_START = 0.5  # most ReLU units silent from the first batch: init or inputs
SATURATED = 0.5  # half of the tanh outputs beyond |0.99|
SHIFT_RATIO = 2.0  # one jump to 2x the loss level just before it, after real progress,
SHIFT_UNDONE = 0.5  # ... that undoes at least half of the progress made until then
OVERFIT_RISE = 0.10  # validation loss 10 % above its best while training loss still falls
SLOW_PROGRESS = 0.5  # training loss lost less than half of its starting value
HUGE_UPDATE = 0.5  # one step moved a group by half of its weights' norm
SMALL_UPDATE = 2e-3  # update/weight ratio per step; ~1e-3 to 1e-2 is the usual range
DRIFT_UPDATE = 1e-3  # a pretrained group moving more than this per step ...
DRIFT_SHARE = 0.3  # ... and at least 0.3x as fast as the freshly trained head
BACKBONE_WORDS = ("backbone", "encoder", "base", "body", "features", "pretrained", "trunk")


_SHIFT_ADVICE = (
    "check the data pipeline at that step (shuffling, a new shard, augmentation, label "
    "mapping); the optimizer settings are not the cause"
)


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else math.nan


def _losses(run: RunLog) -> list[tuple[int, float]]:
    return run.finite("loss/train")


def is_backbone(name: str) -> bool:
    """Whether a param group's name says it holds pretrained weights."""
    return any(word in name.lower() for word in BACKBONE_WORDS)


def nonfinite(run: RunLog) -> Finding | None:
    """NaN or inf in the loss or gradients: the step is too aggressive (or overflows)."""
    bad = sorted(
        {s for s, v in run.series("nonfinite/any") if v > 0}
        | {s for s, v in run.series("loss/train") if not math.isfinite(v)}
    )
    if not bad:
        return None
    return Finding(
        code="aggressive_step",
        kind=Kind.SYMPTOM,
        title="the loss or the gradients went NaN/inf",
        evidence=f"non-finite values in {len(bad)} logged snapshots (first at step {bad[0]})",
        advice="lower the learning rate (3-10x), inspect gradients per layer, clip if needed",
        values={"nonfinite_snapshots": float(len(bad))},
        step=bad[0],
    )


def _data_changes(run: RunLog) -> list[dict]:
    """trimtab's verdicts that the data changed (marked ``new_data`` in their signals)."""
    return [
        e
        for e in run.events
        if e.get("kind") == "verdict" and (e.get("signals") or {}).get("new_data") == 1.0
    ]


def interventions(run: RunLog) -> Finding | None:
    """trimtab skipped or rolled back steps: the loss diverged or went non-finite.

    The guard's skips and rollback that ended in a data-change verdict (at that step or
    the one before) were the new data, not divergence, and do not count."""
    changed = {int(e["step"]) for e in _data_changes(run)}
    incidents = [
        e
        for e in run.events
        if e.get("kind") in ("skip", "rollback")
        and not (
            e.get("policy") == "stability_guard" and {int(e["step"]), int(e["step"]) + 1} & changed
        )
    ]
    if not incidents:
        return None
    first = incidents[0]
    return Finding(
        code="aggressive_step",
        kind=Kind.SYMPTOM,
        title="the loss diverged and trimtab had to skip or roll back steps",
        evidence=(
            f"{len(incidents)} skipped or rolled-back steps, the first at step {first['step']} "
            f"({first.get('reason')})"
        ),
        advice="start from a lower learning rate (the rate trimtab settled on is a good "
        "guess), inspect gradients, clip if needed",
        values={"incidents": float(len(incidents))},
        step=int(first["step"]),
    )


def huge_updates(run: RunLog) -> Finding | None:
    """A step that moves weights by half their norm throws away what was learned."""
    peaks = [
        (v, s, key)
        for key in run.signals
        if key.startswith("update_ratio/")
        for s, v in run.finite(key)
    ]
    if not peaks:
        return None
    ratio, step, key = max(peaks)
    if ratio < HUGE_UPDATE:
        return None
    return Finding(
        code="aggressive_step",
        kind=Kind.SYMPTOM,
        title="single steps move the weights by a large share of their norm",
        evidence=f"{key} reached {fmt(ratio)} at step {step} (healthy steps are ~1e-3 to 1e-2)",
        advice="lower the learning rate (3-10x) or add warmup; clip if spikes are rare",
        values={key: ratio},
        step=step,
    )


def _restores(run: RunLog) -> list[int]:
    """Steps where trimtab put earlier weights back on purpose (a rewind to the best
    validation state, or a restart from the run's start): the training loss rises there
    because of the weights, not the data."""
    return sorted(int(e["step"]) for e in run.events if e.get("kind") == "restore")


def distribution_shift(run: RunLog) -> Finding | None:
    """One sustained jump of the loss after real progress: the data changed mid-run."""
    losses = _losses(run)
    if len(losses) < 8:
        return None
    start = losses[0][1]
    restores = _restores(run)
    best: tuple[float, int, int] | None = None  # (ratio, index, step)
    for i in range(3, len(losses) - 2):
        before = _median([v for _, v in losses[i - 3 : i]])
        if before <= 0 or before > 0.5 * start:
            continue
        if any(losses[i - 3][0] <= s <= losses[i][0] for s in restores):
            continue  # trimtab's own rewind or restart explains the jump
        ratio = losses[i][1] / before
        # Sustained: the next two snapshots stay above the old level as well.
        held = all(v > 1.5 * before for _, v in losses[i + 1 : i + 3])
        undone = (losses[i][1] - before) / (start - before)
        big = undone >= SHIFT_UNDONE and ratio >= SHIFT_RATIO
        if held and big and (best is None or ratio > best[0]):
            best = (ratio, i, losses[i][0])
    if best is None:
        return _announced_shift(run)
    ratio, index, step = best
    before = _median([v for _, v in losses[index - 3 : index]])
    return Finding(
        code="distribution_shift",
        kind=Kind.SYMPTOM,
        title="the loss jumped once mid-run and stayed up: the data changed",
        evidence=(
            f"loss/train went from {fmt(before)} to {fmt(losses[index][1])} "
            f"({fmt(ratio)}x) at step {step}, after falling from {fmt(start)}, "
            "and stayed above the old level"
        ),
        advice=_SHIFT_ADVICE,
        values={"loss_before": before, "loss_after": losses[index][1], "jump": ratio},
        target=DATA_OR_MODEL,
        step=step,
    )


def _announced(
    events: list[dict], *, code: str, title: str, advice: str, counted: str
) -> Finding | None:
    """A symptom the curves miss but trimtab's own events record: the first one cited,
    all of them counted (under ``counted``)."""
    if not events:
        return None
    first = events[0]
    more = f" ({len(events)} in all)" if len(events) > 1 else ""
    return Finding(
        code=code,
        kind=Kind.SYMPTOM,
        title=title,
        evidence=f"{first.get('policy')} at step {first['step']}: {first.get('reason')}{more}",
        advice=advice,
        values={counted: float(len(events))},
        target=DATA_OR_MODEL,
        step=int(first["step"]),
    )


def _announced_shift(run: RunLog) -> Finding | None:
    """No jump in the logged snapshots, but trimtab found new data during the run."""
    return _announced(
        _data_changes(run),
        code="distribution_shift",
        title="trimtab found that the data changed mid-run",
        advice=_SHIFT_ADVICE,
        counted="data_changes",
    )


def loss_spike(run: RunLog) -> Finding | None:
    """The loss climbs well above where it started: the step overshoots."""
    losses = _losses(run)
    if len(losses) < 3:
        return None
    start = losses[0][1]
    peak_step, peak = max(losses[1:], key=lambda sv: sv[1])
    if start <= 0 or peak < SPIKE_RATIO * start:
        return None
    return Finding(
        code="aggressive_step",
        kind=Kind.SYMPTOM,
        title="the loss oscillates above its starting value",
        evidence=(
            f"loss/train reached {fmt(peak)} at step {peak_step}, {fmt(peak / start)}x its "
            f"starting {fmt(start)}"
        ),
        advice="lower the learning rate (3-10x) or add warmup; inspect gradients, clip if needed",
        values={"loss_start": start, "loss_peak": peak},
        step=peak_step,
    )


def units_killed(run: RunLog) -> Finding | None:
    """ReLU units alive at the start and dead later: large steps knocked them out."""
    dead = run.finite("activations/dead")
    if len(dead) < 4:
        return None
    early = dead[0][1]
    late = _median([v for _, v in dead[len(dead) // 2 :]])
    if late < DIED_FRACTION or late - early < DIED_RISE:
        return None
    return Finding(
        code="aggressive_step",
        kind=Kind.SYMPTOM,
        title="large steps killed most ReLU units",
        evidence=(
            f"activations/dead rose from {fmt(early)} at step {dead[0][0]} to "
            f"{fmt(late)} (median of the second half)"
        ),
        advice="lower the learning rate (3-10x) or add warmup; the units died during training",
        values={"dead_relu_start": early, "dead_relu_late": late},
    )


def dead_units(run: RunLog) -> Finding | None:
    """Most ReLU units silent from the first batch: initialisation or input scale."""
    dead = run.finite("activations/dead")
    if not dead or dead[0][1] < DEAD_AT_START:
        return None
    return Finding(
        code="dead_units",
        kind=Kind.SYMPTOM,
        title="most ReLU units are dead from the start",
        evidence=(
            f"activations/dead = {fmt(dead[0][1])} at step {dead[0][0]} and "
            f"{fmt(dead[-1][1])} at step {dead[-1][0]}"
        ),
        advice="fix the initialisation (biases, He init) or the input scale, or use a leaky "
        "activation; a larger learning rate will not revive them",
        values={"dead_relu_start": dead[0][1], "dead_relu_end": dead[-1][1]},
        target=DATA_OR_MODEL,
    )


def saturation(run: RunLog) -> Finding | None:
    """Tanh units pinned near +-1 pass almost no gradient."""
    sat = run.finite("activations/saturated")
    level = _median([v for _, v in sat])
    if not sat or level < SATURATED:
        return None
    return Finding(
        code="saturation",
        kind=Kind.SYMPTOM,
        title="tanh units are saturated",
        evidence=f"activations/saturated median {fmt(level)} over {len(sat)} snapshots",
        advice="scale the initial weights down (Xavier init) or normalise the inputs; "
        "add normalisation layers",
        values={"saturated_tanh": level},
        target=DATA_OR_MODEL,
    )


def memorization(run: RunLog) -> Finding | None:
    """Validation loss turns up early while training loss keeps falling."""
    val = run.metric("val_loss")
    if len(val) < 4:
        return None
    best_index = min(range(len(val)), key=lambda i: val[i][1])
    best_step, best = val[best_index]
    tail = _median([v for _, v in val[-3:]])
    if best_index >= len(val) // 2 or best <= 0 or tail < best * (1 + OVERFIT_RISE):
        return _announced_memorization(run)
    train = _losses(run)
    at_best = [v for s, v in train if s <= best_step][-1:] or [math.nan]
    train_end = _median([v for _, v in train[-3:]])
    if not train_end < at_best[0]:
        return _announced_memorization(run)
    return Finding(
        code="memorization",
        kind=Kind.SYMPTOM,
        title="training improves while validation degrades: memorization",
        evidence=(
            f"val_loss was best at step {best_step} ({fmt(best)}) and ended at {fmt(tail)} "
            f"(+{(tail / best - 1) * 100:.0f} %), while loss/train fell from "
            f"{fmt(at_best[0])} to {fmt(train_end)}"
        ),
        advice="regularize (weight decay, dropout, augmentation, more data) or stop near "
        f"step {best_step}",
        values={
            "val_best": best,
            "val_end": tail,
            "train_at_best": at_best[0],
            "train_end": train_end,
        },
        target=DATA_OR_MODEL,
        step=best_step,
    )


def _announced_memorization(run: RunLog) -> Finding | None:
    """The curves do not show it, but trimtab found memorization and acted: its rewinds
    and restarts put the best weights back, which keeps validation near its best."""
    acts = [
        e
        for e in run.events
        if e.get("policy") == "regularization" and e.get("kind") in ("restore", "stop")
    ]
    return _announced(
        acts,
        code="memorization",
        title="trimtab found the model memorizing and rewound or restarted it",
        advice="regularize (weight decay, dropout, augmentation, more data), a smaller "
        "learning rate, or stop earlier",
        counted="regularization_acts",
    )


def backbone_drift(run: RunLog) -> Finding | None:
    """A pretrained group updates about as fast as the fresh head: it forgets."""
    ratios = {
        key.split("/", 1)[1]: _median([v for _, v in run.finite(key)])
        for key in run.signals
        if key.startswith("update_ratio/")
    }
    backbone = {g: r for g, r in ratios.items() if is_backbone(g) and math.isfinite(r)}
    heads = [r for g, r in ratios.items() if not is_backbone(g) and math.isfinite(r)]
    if not backbone or not heads:
        return None
    group, ratio = max(backbone.items(), key=lambda kv: kv[1])
    head = max(heads)
    if ratio < DRIFT_UPDATE or ratio < DRIFT_SHARE * head:
        return None
    return Finding(
        code="backbone_drift",
        kind=Kind.SYMPTOM,
        title="the pretrained backbone moves too much",
        evidence=(
            f"update_ratio/{group} median {fmt(ratio)} per step, {fmt(ratio / head)}x the "
            f"head's {fmt(head)}"
        ),
        advice="give the backbone a 10-100x smaller learning rate than the head, or unfreeze "
        "it in stages after the head has settled",
        values={f"update_ratio/{group}": ratio, "update_ratio/head_max": head},
    )


def too_blunt(run: RunLog) -> Finding | None:
    """Stable but slow: the loss barely falls and steps are tiny."""
    losses = _losses(run)
    if len(losses) < 6:
        return None
    start = losses[0][1]
    end = _median([v for _, v in losses[-3:]])
    ratios = [
        v for key in run.signals if key.startswith("update_ratio/") for _, v in run.finite(key)
    ]
    step_size = _median(ratios)
    progress = 1 - end / start if start > 0 else math.nan
    if not progress < SLOW_PROGRESS:
        return None
    values = {"loss_start": start, "loss_end": end, "progress": progress}
    detail = ""
    if ratios:
        values["update_ratio"] = step_size
        detail = f"; median update_ratio {fmt(step_size)} per step"
    advice = (
        "raise the learning rate (try 3-10x) or use a better schedule/optimizer"
        if not ratios or step_size < SMALL_UPDATE
        else "the steps are not small: check the schedule, the optimizer and the data"
    )
    if not any(key.startswith("activations/") for key in run.signals):
        advice += "; add the 'activations' probe to rule out dead or saturated units"
    return Finding(
        code="too_blunt",
        kind=Kind.SYMPTOM,
        title="training is stable but slow",
        evidence=(
            f"loss/train went from {fmt(start)} to {fmt(end)} over {losses[-1][0]} steps "
            f"({-progress * 100:+.0f} %){detail}"
        ),
        advice=advice,
        values=values,
    )


# In order of urgency: the first rule that fires names the run's main symptom.
RULES = (
    nonfinite,
    interventions,
    distribution_shift,
    loss_spike,
    units_killed,
    huge_updates,
    dead_units,
    saturation,
    backbone_drift,
    memorization,
    too_blunt,
)
