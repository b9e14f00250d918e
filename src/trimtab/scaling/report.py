"""What a recipe chose and why: a printable table and a JSON-ready record for the log."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from trimtab.schedules import LinearWarmup, Schedule, WarmupCosine


@dataclass(frozen=True)
class GroupChoice:
    """One param group of the recipe: its settings and the rule behind each."""

    name: str
    role: str
    tensors: int
    params: int
    lr: float
    lr_rule: str
    weight_decay: float
    decay_rule: str
    names: tuple[str, ...]


@dataclass(frozen=True)
class RecipeReport:
    """Every choice ``trimtab.recipe`` made; ``str(report)`` prints it as a table.

    Pass it to ``Regime(..., recipe=report)`` so it becomes ``header["recipe"]`` in the
    run log, and ``report.schedule()`` as the Regime's schedule to get its warmup.
    """

    optimizer: str
    base_lr: float
    base_width: int
    total_steps: int
    parameters: int
    matrices: int
    decay_fraction: float
    max_grad_norm: float
    clip_rule: str
    warmup_steps: int
    warmup_rule: str
    groups: tuple[GroupChoice, ...]
    notes: tuple[str, ...] = ()

    def schedule(self, kind: Literal["cosine", "constant"] = "cosine") -> Schedule:
        """The base schedule with this recipe's warmup: warmup + cosine, or warmup + hold."""
        warmup = self.warmup_steps / self.total_steps
        return WarmupCosine(warmup=warmup) if kind == "cosine" else LinearWarmup(warmup=warmup)

    def group(self, name: str) -> GroupChoice:
        """The group called ``name`` (a KeyError lists the names there are)."""
        for choice in self.groups:
            if choice.name == name:
                return choice
        raise KeyError(f"no group {name!r}; groups: {[g.name for g in self.groups]}")

    def as_dict(self) -> dict[str, Any]:
        """Plain data for the run header (``header["recipe"]``)."""
        data = asdict(self)
        data["groups"] = [{**asdict(g), "names": list(g.names)} for g in self.groups]
        data["notes"] = list(self.notes)
        return data

    def table(self) -> str:
        """A fixed-width table of the groups, then the run-wide choices."""
        head = ("group", "role", "tensors", "params", "lr", "lr rule", "wd", "wd rule")
        rows = [
            (
                g.name,
                g.role,
                str(g.tensors),
                str(g.params),
                f"{g.lr:.3g}",
                g.lr_rule,
                f"{g.weight_decay:.3g}",
                g.decay_rule,
            )
            for g in self.groups
        ]
        widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
        lines = [
            f"recipe: {self.optimizer}, base lr {self.base_lr:.3g} at width {self.base_width}, "
            f"{self.parameters} parameters, {self.total_steps} steps",
            "  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)),
            "  ".join("-" * w for w in widths),
        ]
        lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
        lines.append(f"max_grad_norm {self.max_grad_norm:.3g} ({self.clip_rule})")
        lines.append(f"warmup {self.warmup_steps} steps ({self.warmup_rule})")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(line.rstrip() for line in lines)

    def __str__(self) -> str:
        return self.table()
