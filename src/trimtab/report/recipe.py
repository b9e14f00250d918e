"""The recipe note: a short Markdown summary written after each run.

It answers four questions in order: what is wrong (the doctor's main finding), what was
tried first (trimtab's first knob change, if any), what actually moved (the loss and the
validation metrics around that change, or over the run), and whether the next move
should still target optimization or go back to the data or the model.
"""

from __future__ import annotations

import math
import os
import statistics
from pathlib import Path

from trimtab.report.doctor import Diagnosis, diagnose
from trimtab.report.findings import DATA_OR_MODEL, OPTIMIZATION, fmt
from trimtab.report.runlog import RunLog, Series, load_run

_WINDOW = 3  # snapshots (or observations) averaged on each side of a change


def _level(series: Series, *, before: int | None = None, after: int | None = None) -> float:
    if before is not None:
        values = [v for s, v in series if s <= before][-_WINDOW:]
    elif after is not None:
        values = [v for s, v in series if s > after][-_WINDOW:]
    else:
        values = [v for _, v in series]
    return statistics.median(values) if values else math.nan


def _moves(run: RunLog, at: int | None) -> list[str]:
    """How the loss and each validation metric moved across ``at`` (or the whole run)."""
    curves = {"loss/train": run.finite("loss/train")}
    curves.update({name: run.metric(name) for name in run.metric_names()})
    lines = []
    for name, series in curves.items():
        if len(series) < 2:
            continue
        if at is None:
            old = statistics.median([v for _, v in series[:_WINDOW]])
            new = _level(series, after=series[0][0])
            where = f"from the first to the last {_WINDOW} records"
        else:
            old, new = _level(series, before=at), _level(series, after=at)
            where = f"before vs after step {at}"
        if not (math.isfinite(old) and math.isfinite(new)):
            continue
        change = (new - old) / abs(old) * 100 if old else math.nan
        lines.append(f"- `{name}`: {fmt(old)} → {fmt(new)} ({change:+.0f} %), {where}")
    return lines


def recipe_note(run: RunLog | str | os.PathLike[str], diagnosis: Diagnosis | None = None) -> str:
    """Markdown recipe note for one run.

    Example:
        >>> print(recipe_note("runs/exp1.jsonl"))          # doctest: +SKIP
        # Recipe note: exp1
        ...
    """
    if not isinstance(run, RunLog):
        run = load_run(run)
    diagnosis = diagnosis or diagnose(run)
    main = diagnosis.main
    lines = [f"# Recipe note: {run.name}", "", "**Main symptom.** "]
    if main is None:
        lines[-1] += "none found; the run looks healthy."
    else:
        lines[-1] += f"{main.title} (`{main.code}`): {main.evidence}."
        if diagnosis.explained is not None:
            lines[-1] += f" It explains: {diagnosis.explained.title}."
    changes = [e for e in run.events if e.get("kind") == "change"]
    incidents = [e for e in run.events if e.get("kind") in ("skip", "rollback", "stop")]
    at: int | None = None
    lines.append("")
    if changes:
        first = changes[0]
        at = int(first["step"])
        lines.append(
            f"**Change tried first.** step {at}: `{first['knob']}` of group "
            f"`{first['group']}` {fmt(float(first['old']))} → {fmt(float(first['new']))} by "
            f"`{first['policy']}` ({first['reason']}); {len(changes)} knob changes and "
            f"{len(incidents)} skips/rollbacks in all."
        )
    elif main is not None:
        lines.append(f"**Change to try first.** {main.advice} (trimtab changed no knob).")
    else:
        lines.append("**Change tried first.** none: trimtab changed no knob.")
    lines += ["", "**What moved.**", *(_moves(run, at) or ["- nothing was logged"])]
    target = OPTIMIZATION if main is None else main.target
    why = "nothing to fix; change one knob at a time if you tune further" if main is None else {
        OPTIMIZATION: "the symptom is in how the optimizer steps; tune the knobs it names",
        DATA_OR_MODEL: "the optimizer is not the bottleneck; look at the data, the "
        "initialisation or the architecture",
    }[target]  # fmt: skip
    lines += ["", f"**Next move.** target {target}: {why}."]
    notes = [f for f in diagnosis.lints if f is not main]
    if notes:
        lines += ["", "**Set-up lints.**"]
        lines += [f"- {f.title} (`{f.code}`): {f.evidence}" for f in notes]
    return "\n".join(lines) + "\n"


def write_recipe_note(run: RunLog | str | os.PathLike[str], path: str | os.PathLike[str]) -> Path:
    """Write the recipe note of ``run`` to ``path`` (Markdown) and return the path."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(recipe_note(run), encoding="utf-8")
    return out
