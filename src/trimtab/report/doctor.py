"""The training doctor: the main symptom of a run, its evidence, and set-up lints.

    diagnosis = trimtab.report.diagnose("runs/exp1.jsonl")
    print(diagnosis.text())

Symptom rules (``symptoms.RULES``) are tried in order of urgency and the first that
fires is the main symptom; set-up lints (``lints.LINTS``) are all checked. When a lint
is a known cause of the symptom (fp16 without loss scaling behind NaNs, Adam's L2 decay
behind a stalled loss) the lint is named as the main finding, with the symptom as its
evidence, because fixing it is the first thing to try. The accuracy of these choices is
measured on a labelled corpus by ``benchmarks/doctor_corpus.py``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from trimtab.report.findings import Finding, Kind, Severity
from trimtab.report.lints import LINTS
from trimtab.report.runlog import RunLog, load_run
from trimtab.report.symptoms import RULES

# lint code -> symptom codes it can cause on its own
EXPLAINS: dict[str, frozenset[str]] = {
    "fp16_no_loss_scaling": frozenset({"aggressive_step", "too_blunt", "dead_units"}),
    "adam_l2": frozenset({"aggressive_step", "too_blunt", "memorization"}),
    "decay_on_norms": frozenset({"too_blunt"}),
    "eval_in_train_mode": frozenset({"memorization"}),
    "no_warmup": frozenset({"aggressive_step"}),
    "clipping_every_step": frozenset({"too_blunt"}),
}


@dataclass(frozen=True)
class Diagnosis:
    """What the doctor found in one run.

    Attributes:
        run: the run's name.
        main: the main finding, or ``None`` for a run with nothing to report.
        symptoms: every symptom that fired, most urgent first.
        lints: every set-up lint that fired.
    """

    run: str
    main: Finding | None
    symptoms: tuple[Finding, ...] = ()
    lints: tuple[Finding, ...] = ()
    explained: Finding | None = field(default=None)

    @property
    def healthy(self) -> bool:
        return self.main is None

    def as_dict(self) -> dict[str, Any]:
        return {
            "run": self.run,
            "main": None if self.main is None else self.main.as_dict(),
            "explains": None if self.explained is None else self.explained.as_dict(),
            "symptoms": [f.as_dict() for f in self.symptoms],
            "lints": [f.as_dict() for f in self.lints],
        }

    def text(self) -> str:
        """A plain-words report, symptom first, for the console."""
        lines = [f"trimtab doctor: {self.run}"]
        if self.main is None:
            lines.append("No symptom found: the run looks healthy.")
        else:
            lines += [
                f"Main finding: {self.main.title} [{self.main.code}]",
                f"  evidence: {self.main.evidence}",
            ]
            if self.explained is not None:
                lines.append(
                    f"  it explains the symptom: {self.explained.title} ({self.explained.evidence})"
                )
            lines.append(f"  try first: {self.main.advice}")
        others = [f for f in (*self.symptoms, *self.lints) if f not in (self.main, self.explained)]
        if others:
            lines.append("Also:")
            lines += [f"  - {f.title} [{f.code}, {f.severity.value}]: {f.evidence}" for f in others]
        return "\n".join(lines)


def diagnose(run: RunLog | str | os.PathLike[str]) -> Diagnosis:
    """Diagnose a finished (or running) run from its log.

    Args:
        run: a ``RunLog`` or the path of a trimtab JSONL log.

    Example:
        >>> d = diagnose("runs/exp1.jsonl")          # doctest: +SKIP
        >>> d.main.code, d.main.evidence              # doctest: +SKIP
        ('aggressive_step', 'loss/train reached 9.1 at step 40, 3.9x its starting 2.3')
    """
    if not isinstance(run, RunLog):
        run = load_run(run)
    symptoms: list[Finding] = []
    for rule in RULES:
        found = rule(run)
        if found is not None and all(f.code != found.code for f in symptoms):
            symptoms.append(found)
    lints = [f for f in (lint(run) for lint in LINTS) if f is not None]
    warnings = [f for f in lints if f.severity is Severity.WARNING]
    main: Finding | None = None
    explained: Finding | None = None
    if symptoms:
        main = symptoms[0]
        cause = next((f for f in warnings if main.code in EXPLAINS.get(f.code, ())), None)
        if cause is not None:
            main, explained = cause, symptoms[0]
    elif warnings:
        main = warnings[0]
    assert main is None or main.kind in (Kind.SYMPTOM, Kind.LINT)
    return Diagnosis(
        run=run.name, main=main, symptoms=tuple(symptoms), lints=tuple(lints), explained=explained
    )
