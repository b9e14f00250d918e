"""What the doctor says: a finding (symptom or lint) with the numbers behind it."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field


class Kind(str, enum.Enum):
    """A symptom is seen in the curves; a lint is read off the set-up."""

    SYMPTOM = "symptom"
    LINT = "lint"


class Severity(str, enum.Enum):
    """A warning may be the main finding of a run; a note never is (it is only listed)."""

    WARNING = "warning"
    NOTE = "note"


# Whether the next move after fixing a finding is still optimization (knobs, schedule,
# optimizer) or belongs to the data or the model structure.
OPTIMIZATION = "optimization"
DATA_OR_MODEL = "data or model structure"


@dataclass(frozen=True)
class Finding:
    """One diagnosis, symptom first, with the signal values it rests on.

    Attributes:
        code: stable identifier (``"aggressive_step"``, ``"adam_l2"``, ...).
        kind: symptom or lint.
        title: the symptom in a few plain words.
        evidence: one sentence that cites the signal values behind the verdict.
        advice: what to try first.
        values: the cited numbers, by signal name, for tools and tests.
        severity: whether it may be the run's main finding.
        target: where the next move belongs (optimization, or data/model structure).
        step: the step where it shows first, when one stands out.
    """

    code: str
    kind: Kind
    title: str
    evidence: str
    advice: str
    values: Mapping[str, float] = field(default_factory=dict)
    severity: Severity = Severity.WARNING
    target: str = OPTIMIZATION
    step: int | None = None

    def as_dict(self) -> dict[str, object]:
        return {
            "code": self.code,
            "kind": self.kind.value,
            "severity": self.severity.value,
            "title": self.title,
            "evidence": self.evidence,
            "advice": self.advice,
            "values": dict(self.values),
            "target": self.target,
            "step": self.step,
        }


def fmt(value: float) -> str:
    """Numbers as people read them in a diagnosis: 3 significant digits."""
    return f"{value:.3g}"
