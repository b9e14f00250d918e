"""Regime: the thin shell that drops trimtab into a plain PyTorch loop.

    regime = trimtab.Regime(model, optimizer, total_steps=1000, log="runs/a.jsonl")
    for x, y in loader:
        regime.backward(loss_fn(model(x), y))   # instead of loss.backward()
        outcome = regime.step()                  # instead of optimizer.step(); zero_grad()
        if regime.should_stop:
            break

Everything it decides lives in the ``Controller``; this class checks its inputs, keeps
the call order straight and adds checkpointing of model and optimizers.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from trimtab import _checks
from trimtab.actuator import GroupHandle
from trimtab.arbiter import ArbiterConfig
from trimtab.controller import Controller
from trimtab.errors import CallOrderError, ConfigError, ConfigTypeError, StateError
from trimtab.log import EventLog, Sink
from trimtab.policies import DEFAULT_POLICIES, POLICIES, Policy
from trimtab.probes import DEFAULT_PROBES, PROBES, Probe
from trimtab.types import Event, Outcome

STATE_VERSION = 1


class Regime:
    """Adaptive, bounded, audited control of an optimizer inside a plain training loop.

    Args:
        model: the module being trained.
        optimizer: a ``torch.optim.Optimizer`` or a list of them (driven as one).
        total_steps: planned optimizer steps; ``should_stop`` turns true after them.
        policies: policy names (see ``trimtab.POLICIES``) or instances.
        probes: probe names (see ``trimtab.PROBES``) or instances.
        log: path of the JSONL audit trail, or ``None`` to keep events in memory only.
        log_every: steps between signal snapshots in the log.
        snapshot_every: steps between known-good snapshots (kept on the CPU).
        arbiter: bounds, rate limits and cooldowns for knob changes.
        reporters: extra receivers of the audit trail (see ``trimtab.log.Sink``).

    Example:
        >>> model = torch.nn.Linear(4, 1)
        >>> opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        >>> regime = Regime(model, opt, total_steps=10)
        >>> regime.backward(model(torch.randn(8, 4)).pow(2).mean())
        >>> regime.step()
        <Outcome.STEPPED: 'stepped'>
    """

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer | Sequence[torch.optim.Optimizer],
        *,
        total_steps: int | None = None,
        policies: Sequence[str | Policy] = DEFAULT_POLICIES,
        probes: Sequence[str | Probe] = DEFAULT_PROBES,
        log: str | os.PathLike[str] | None = None,
        log_every: int = 10,
        snapshot_every: int = 25,
        arbiter: ArbiterConfig | None = None,
        reporters: Sequence[Sink] = (),
    ) -> None:
        if not isinstance(model, torch.nn.Module):
            raise ConfigTypeError(
                f"model must be a torch.nn.Module, got {type(model).__name__}; "
                "call Regime(model, optimizer, ...)"
            )
        self.model = model
        self.optimizers = _optimizers(optimizer)
        _check_params(model, self.optimizers)
        if total_steps is not None:
            total_steps = _checks.count("total_steps", total_steps)
        if arbiter is not None and not isinstance(arbiter, ArbiterConfig):
            raise ConfigTypeError(
                f"arbiter must be a trimtab.ArbiterConfig, got {type(arbiter).__name__}"
            )
        built_probes = _resolve(probes, PROBES, Probe, "probe")
        built_policies = _resolve(policies, POLICIES, Policy, "policy")
        present = {p.name for p in built_probes}
        if "nonfinite" not in present:
            raise ConfigError(
                "the 'nonfinite' probe is required: it keeps NaN and inf out of the weights; "
                f"add it to probes= (got {sorted(present)})"
            )
        for policy in built_policies:
            missing = [r for r in policy.requires if r not in present]
            if missing:
                raise ConfigError(
                    f"policy {policy.name!r} reads signals of probes {missing}, which are "
                    f"not enabled (enabled: {sorted(present)}); add them to probes="
                )
        self._controller = Controller(
            model,
            self.optimizers,
            _handles(self.optimizers),
            probes=built_probes,
            policies=built_policies,
            total_steps=total_steps,
            arbiter=arbiter,
            log=EventLog(log),
            log_every=log_every,
            snapshot_every=snapshot_every,
        )
        self._loss: torch.Tensor | None = None

    # -- the loop ----------------------------------------------------------------------
    def backward(self, loss: torch.Tensor) -> None:
        """Record ``loss`` and back-propagate it (replaces ``loss.backward()``)."""
        if not isinstance(loss, torch.Tensor):
            raise ConfigTypeError(
                f"backward() needs the loss tensor, got {type(loss).__name__}; "
                "pass the tensor before calling .item() on it"
            )
        if loss.numel() != 1:
            raise ConfigError(
                f"backward() needs a scalar loss, got shape {tuple(loss.shape)}; "
                "reduce it first (e.g. loss.mean())"
            )
        if not loss.requires_grad:
            raise ConfigError(
                "the loss does not require grad: was it computed under torch.no_grad() "
                "or from detached outputs?"
            )
        if self._loss is not None:
            raise CallOrderError(
                "backward() was called twice without step(); call regime.step() after each backward"
            )
        loss.backward()
        self._loss = loss.detach().reshape(())

    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> Outcome:
        """Measure, decide, then step, skip or roll back; always clears the gradients.

        Args:
            closure: optional function that recomputes the loss on the current batch;
                only expensive probes (e.g. curvature) call it, on their cadence.

        Syncs host and device once per call (all due signals in one transfer).
        """
        if self._loss is None:
            raise CallOrderError("step() needs a loss: call regime.backward(loss) first")
        loss, self._loss = self._loss, None
        outcome = self._controller.before_step(loss, closure=closure)
        try:
            if outcome is Outcome.STEPPED:
                for optimizer in self.optimizers:
                    optimizer.step()
        finally:
            self._controller.after_step(outcome)
            for optimizer in self.optimizers:
                optimizer.zero_grad(set_to_none=True)
        return outcome

    def observe(self, val_loss: float | None = None, **metrics: float) -> None:
        """Feed validation results (e.g. ``val_loss``, ``accuracy``) to the policies."""
        values = dict(metrics)
        if val_loss is not None:
            values["val_loss"] = val_loss
        if not values:
            raise ConfigError("observe() got no metrics; pass e.g. val_loss=0.42")
        clean: dict[str, float] = {}
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                if value.numel() != 1:
                    raise ConfigError(f"metric {name!r} must be a scalar, got {tuple(value.shape)}")
                value = value.item()
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigTypeError(
                    f"metric {name!r} must be a number, got {type(value).__name__}"
                )
            clean[name] = float(value)
        self._controller.observe(clean)

    def close(self) -> None:
        """Remove probe hooks and close reporters (the JSONL log needs no closing)."""
        self._controller.close()

    def __enter__(self) -> Regime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- what happened -----------------------------------------------------------------
    @property
    def step_count(self) -> int:
        """Completed optimizer updates (skipped and rolled-back steps do not count)."""
        return self._controller.step

    @property
    def should_stop(self) -> bool:
        total = self._controller.total_steps
        reached = total is not None and self._controller.step >= total
        return reached or self._controller.stop_requested

    @property
    def events(self) -> tuple[Event, ...]:
        return tuple(self._controller.events)

    @property
    def signals(self):
        """The run's Signals store (read it; do not write it)."""
        return self._controller.signals

    def hyperparameters(self) -> dict[str, float]:
        """Effective knob values as ``{"lr/<group>": value, ...}`` (base x multiplier)."""
        return self._controller.effective()

    # -- checkpoints -------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Model, optimizers and trimtab state: everything needed to resume exactly."""
        if self._loss is not None:
            raise CallOrderError("state_dict() between backward() and step(): step first")
        return {
            "version": STATE_VERSION,
            "model": self.model.state_dict(),
            "optimizers": [o.state_dict() for o in self.optimizers],
            "controller": self._controller.state_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what ``state_dict()`` saved into a Regime built the same way."""
        if not isinstance(state, Mapping) or state.get("version") != STATE_VERSION:
            raise StateError(
                "not a trimtab Regime checkpoint (expected a dict from Regime.state_dict() "
                f"with version {STATE_VERSION})"
            )
        if len(state["optimizers"]) != len(self.optimizers):
            raise StateError(
                f"checkpoint has {len(state['optimizers'])} optimizers, this Regime has "
                f"{len(self.optimizers)}"
            )
        self.model.load_state_dict(state["model"])
        for optimizer, saved in zip(self.optimizers, state["optimizers"], strict=True):
            optimizer.load_state_dict(saved)
        self._controller.load_state_dict(state["controller"])


def _optimizers(optimizer: Any) -> tuple[torch.optim.Optimizer, ...]:
    items = list(optimizer) if isinstance(optimizer, (list, tuple)) else [optimizer]
    if not items:
        raise ConfigError("optimizer list is empty; pass at least one torch.optim.Optimizer")
    for item in items:
        if not isinstance(item, torch.optim.Optimizer):
            hint = (
                " (did you swap model and optimizer?)" if isinstance(item, torch.nn.Module) else ""
            )
            raise ConfigTypeError(
                f"optimizer must be a torch.optim.Optimizer, got {type(item).__name__}{hint}"
            )
        if not item.param_groups:
            raise ConfigError(f"{type(item).__name__} has no param groups")
    return tuple(items)


def _check_params(model: torch.nn.Module, optimizers: Sequence[torch.optim.Optimizer]) -> None:
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise ConfigError(
            f"{type(model).__name__} has no trainable parameters (all requires_grad=False); "
            "unfreeze some before training"
        )
    in_model = {id(p) for p in model.parameters()}
    for optimizer in optimizers:
        for group in optimizer.param_groups:
            if any(id(p) not in in_model for p in group["params"]):
                raise ConfigError(
                    f"{type(optimizer).__name__} updates parameters that are not in the "
                    "model, so rollback could not restore them; pass the model that owns "
                    "every optimized parameter"
                )


def _handles(optimizers: Sequence[torch.optim.Optimizer]) -> list[GroupHandle]:
    handles: list[GroupHandle] = []
    for optimizer in optimizers:
        for index, group in enumerate(optimizer.param_groups):
            name = group.get("name", f"g{len(handles)}")
            if not isinstance(name, str) or not name or "/" in name:
                raise ConfigError(
                    f"param group name must be a non-empty string without '/', got {name!r}"
                )
            if any(h.name == name for h in handles):
                raise ConfigError(f"two param groups are named {name!r}; names must be unique")
            handles.append(GroupHandle(name, optimizer, index))
    return handles


def _resolve(items: Any, registry: Mapping[str, type], base: type, kind: str) -> list[Any]:
    if isinstance(items, (str, bytes)) or not isinstance(items, Sequence):
        raise ConfigTypeError(
            f"{kind} list must be a list of names or {base.__name__} objects, got {items!r}"
        )
    built = []
    for item in items:
        if isinstance(item, base):
            built.append(item)
        elif isinstance(item, str) and item in registry:
            built.append(registry[item]())
        elif isinstance(item, str):
            raise ConfigError(f"unknown {kind} {item!r}; available: {', '.join(sorted(registry))}")
        else:
            raise ConfigTypeError(
                f"each {kind} must be a name or a {base.__name__}, got {type(item).__name__}"
            )
    names = [b.name for b in built]
    if len(set(names)) != len(names):
        raise ConfigError(f"{kind} names must be unique, got {names}")
    return built
