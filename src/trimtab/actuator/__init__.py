"""The actuator: the only code that writes optimizer ``param_groups``.

Between optimizer steps each group holds the user's *base* values, so a user's LR
scheduler, or a loop that assigns ``group["lr"]`` every step, keeps working on the base.
Just before ``optimizer.step()`` the actuator writes the effective values the controller
planned (base x trimtab schedule x adaptive multiplier); right after it puts the base
back. Nothing compounds, and checkpoints hold the user's own values. How each optimizer
family stores its knobs and its algorithm state is in ``adapters``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from trimtab.actuator import adapters
from trimtab.errors import ConfigError
from trimtab.types import Knob


@dataclass(frozen=True)
class GroupHandle:
    """One param group of one optimizer, by its trimtab name."""

    name: str
    optimizer: torch.optim.Optimizer
    index: int

    @property
    def group(self) -> adapters.ParamGroup:
        return self.optimizer.param_groups[self.index]

    @property
    def family(self) -> adapters.Family:
        return adapters.family_of(self.optimizer)


class Actuator:
    """Writes effective values (base x multiplier) around each optimizer step."""

    def __init__(self, handles: Sequence[GroupHandle], knobs: Sequence[Knob]) -> None:
        self.handles = tuple(handles)
        self.knobs = tuple(knobs)
        self.families = {h.name: h.family for h in self.handles}
        for handle in self.handles:
            available = adapters.knobs_of(handle.group)
            missing = [
                k.value for k in self.knobs if k is not Knob.MAX_GRAD_NORM and k not in available
            ]
            if missing:
                family = self.families[handle.name]
                where = f"momentum lives in {family.momentum}; " if family.momentum else ""
                raise ConfigError(
                    f"{type(handle.optimizer).__name__} ({family.name} family) group "
                    f"{handle.name!r} has no {', '.join(missing)}; {where}it exposes "
                    f"{sorted(k.value for k in available)}. Remove those knobs from the "
                    "policies and the schedule, or use an optimizer that has them."
                )
        self._by_name = {h.name: h for h in self.handles}
        self._written: list[tuple[GroupHandle, Knob, float]] = []
        self._applied = False

    def handle(self, name: str) -> GroupHandle:
        """The handle of group ``name``."""
        return self._by_name[name]

    def lr_siblings(self, name: str) -> tuple[str, ...]:
        """Other groups whose lr must move with group ``name`` (same Prodigy optimizer).

        Prodigy raises at ``step()`` when groups hold different non-zero lrs, so a change
        to one group's lr multiplier must be applied to all of that optimizer's groups.
        """
        handle = self.handle(name)
        if not self.families[name].shared_lr:
            return ()
        return tuple(
            h.name for h in self.handles if h.optimizer is handle.optimizer and h.name != name
        )

    def bases(self) -> dict[tuple[Knob, str], float]:
        """The user's current values, read from the groups (valid between steps)."""
        return {
            (knob, h.name): adapters.read(h.group, knob)
            for h in self.handles
            for knob in self.knobs
            if knob is not Knob.MAX_GRAD_NORM
        }

    def apply(
        self,
        targets: Mapping[tuple[Knob, str], float],
        *,
        bases: Mapping[tuple[Knob, str], float] | None = None,
    ) -> None:
        """Write the effective values ``targets`` (knob, group) -> value; call right before
        the optimizer step. Values equal to the user's base are left untouched.

        ``bases`` are the groups' current values when the caller already read them this
        step (``bases()``), saving a second read.
        """
        if self._applied:
            raise RuntimeError("Actuator.apply called twice without restore()")
        current = self.bases() if bases is None else bases
        self._written = []
        for handle in self.handles:
            for knob in self.knobs:
                key = (knob, handle.name)
                if key in current and key in targets and targets[key] != current[key]:
                    adapters.write(handle.group, knob, targets[key])
                    self._written.append((handle, knob, current[key]))
        self._applied = True

    def restore(self) -> None:
        """Put back the base values ``apply`` replaced; call right after the optimizer step."""
        if not self._applied:
            return
        for handle, knob, base in self._written:
            adapters.write(handle.group, knob, base)
        self._written = []
        self._applied = False

    @contextmanager
    def keeping_hyperparameters(self) -> Iterator[None]:
        """Keep every group's hyperparameters across a block that reloads optimizer state.

        ``optimizer.load_state_dict`` also restores the saved param-group values; after a
        rollback the current ones (the user's schedule, trimtab's cut) must win. Keys a
        family uses for algorithm state (schedule-free's ``k``/``weight_sum``/``lr_max``,
        Prodigy's ``d`` estimate) are the exception: they come back from the snapshot
        with the moments they belong to.
        """
        saved = []
        for handle in self.handles:
            state_keys = self.families[handle.name].state_keys
            values = {
                k: v for k, v in handle.group.items() if k != "params" and k not in state_keys
            }
            saved.append((handle, values))
        yield
        for handle, values in saved:
            handle.group.update(values)
