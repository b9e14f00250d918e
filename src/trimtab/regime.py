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

import contextlib
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Literal

import torch

from trimtab import _checks
from trimtab.actuator import GroupHandle
from trimtab.arbiter import ArbiterConfig
from trimtab.averaging import WeightAverage, decay_for
from trimtab.controller import Controller
from trimtab.errors import CallOrderError, ConfigError, ConfigTypeError, StateError
from trimtab.log import EventLog, Sink
from trimtab.policies import DEFAULT_POLICIES, POLICIES, Policy
from trimtab.probes import DEFAULT_PROBES, PRESETS, PROBES, Probe
from trimtab.scaling.report import RecipeReport
from trimtab.schedules import Schedule
from trimtab.types import Event, Outcome

STATE_VERSION = 1
Precision = Literal["fp32", "bf16", "fp16"]
_DTYPES: dict[str, torch.dtype | None] = {
    "fp32": None,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}


class Regime:
    """Adaptive, bounded, audited control of an optimizer inside a plain training loop.

    Args:
        model: the module being trained.
        optimizer: a ``torch.optim.Optimizer`` or a list of them (driven as one).
        total_steps: planned optimizer steps; ``should_stop`` turns true after them.
        policies: policy names (see ``trimtab.POLICIES``) or instances.
        probes: probe names (see ``trimtab.PROBES``) or instances, or a preset name
            (``"cheap"``, ``"standard"``, ``"thorough"``; see ``trimtab.probes.PRESETS``).
            Left at the default, the probes a requested policy ``requires`` are added.
        log: path of the JSONL audit trail, or ``None`` to keep events in memory only.
        log_every: steps between signal snapshots in the log.
        snapshot_every: steps between known-good snapshots (kept on the CPU).
        arbiter: bounds, rate limits and cooldowns for knob changes; by default
            ``ArbiterConfig.for_model_size(trainable parameters)``: today's defaults up
            to 1e6 parameters, gentler speed-ups and a lower LR ceiling above.
        reporters: extra receivers of the audit trail (see ``trimtab.log.Sink``).
        schedule: a base schedule from ``trimtab.schedules`` (needs ``total_steps``);
            effective LR = group lr x schedule x adaptive multiplier.
        precision: ``"fp32"``, ``"bf16"`` (autocast, no scaler) or ``"fp16"`` (autocast
            and dynamic loss scaling with ``torch.amp.GradScaler``); wrap the forward
            pass in ``with regime.autocast():``.
        accumulate: micro-batches per optimizer step; ``backward`` divides each loss by
            this and ``step`` returns ``Outcome.ACCUMULATING`` until the last one.
        recipe: the report of ``trimtab.recipe`` that built the optimizer; it is written
            to the run header as ``header["recipe"]``.
        max_grad_norm: clip each param group's gradient norm to this before every step
            (after the probes read it); the ``clipping`` policy moves it with the running
            distribution of gradient norms. ``recipe().max_grad_norm`` is a size-aware
            value. ``None`` (default): no clipping.
        average: keep an exponential moving average of the weights and evaluate it
            inside ``with regime.averaged():``. ``True`` spans 4 % of ``total_steps``;
            a float is the decay itself (e.g. 0.999). It restarts from the live weights
            after a rollback and when the data changes; a restored best brings back the
            average that scored best. Costs one copy of the weights and one fused update
            per step. ``False`` (default): no average.

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
        probes: str | Sequence[str | Probe] = DEFAULT_PROBES,
        log: str | os.PathLike[str] | None = None,
        log_every: int = 10,
        snapshot_every: int = 25,
        arbiter: ArbiterConfig | None = None,
        reporters: Sequence[Sink] = (),
        schedule: Schedule | None = None,
        precision: Precision = "fp32",
        accumulate: int = 1,
        recipe: RecipeReport | None = None,
        max_grad_norm: float | None = None,
        average: bool | float = False,
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
        if precision not in _DTYPES:
            raise ConfigError(f"precision must be one of {sorted(_DTYPES)}, got {precision!r}")
        self.precision = precision
        self.accumulate = _checks.count("accumulate", accumulate)
        self.device_type = next(model.parameters()).device.type
        if precision == "fp16":
            _check_fp32_master_weights(self.optimizers)
        self._scaler = torch.amp.GradScaler(self.device_type) if precision == "fp16" else None
        if arbiter is not None and not isinstance(arbiter, ArbiterConfig):
            raise ConfigTypeError(
                f"arbiter must be a trimtab.ArbiterConfig, got {type(arbiter).__name__}"
            )
        if recipe is not None and not isinstance(recipe, RecipeReport):
            raise ConfigTypeError(
                f"recipe must be the report from trimtab.recipe(), got {type(recipe).__name__}; "
                "use: optimizer, report = trimtab.recipe(model, ...)"
            )
        run_info: dict[str, Any] = {}  # arbiter=None: the Controller sizes it to the model
        if recipe is not None:
            run_info["recipe"] = recipe.as_dict()
        # left at the default, the probe set grows by what the requested policies read;
        # a set the user chose is theirs, and a missing probe there is an error below
        default_probes = probes is DEFAULT_PROBES
        if isinstance(probes, str):
            if probes not in PRESETS:
                raise ConfigError(f"unknown probe preset {probes!r}; presets: {', '.join(PRESETS)}")
            probes = PRESETS[probes]
        built_probes = _resolve(probes, PROBES, Probe, "probe")
        built_policies = _resolve(policies, POLICIES, Policy, "policy")
        present = {p.name for p in built_probes}
        for policy in built_policies:
            if default_probes or policy.adds_probes:
                for name in policy.requires:
                    if name not in present and name in PROBES:
                        built_probes.append(PROBES[name]())
                        present.add(name)
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
        self._params = [p for p in model.parameters() if p.requires_grad]
        self._controller = Controller(
            model,
            self.optimizers,
            _handles(self.optimizers),
            probes=built_probes,
            policies=built_policies,
            total_steps=total_steps,
            arbiter=arbiter,
            log=EventLog(log),
            sinks=tuple(reporters),
            log_every=log_every,
            snapshot_every=snapshot_every,
            schedule=schedule,
            max_grad_norm=max_grad_norm,
            run_info={
                "precision": precision,
                "loss_scaling": self._scaler is not None,
                "accumulate": self.accumulate,
                **run_info,
            },
        )
        decay = decay_for(average, total_steps)
        self._average = None if decay is None else WeightAverage(model, decay)
        self._losses: list[torch.Tensor] = []
        self._micro_sq_norms: list[torch.Tensor] = []
        self._micro_batch_size: int | None = None

    # -- the loop ----------------------------------------------------------------------
    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """Context for the forward pass at the Regime's precision (a no-op for fp32)."""
        dtype = _DTYPES[self.precision]
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=dtype)

    def backward(self, loss: torch.Tensor, *, batch_size: int | None = None) -> None:
        """Record ``loss`` and back-propagate it (replaces ``loss.backward()``).

        With ``accumulate=N`` the loss is divided by N; with fp16 it is scaled by the
        GradScaler. ``batch_size`` (samples in this micro-batch) lets the gradient-noise
        probe express its estimate in samples.
        """
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
        if len(self._losses) >= self.accumulate:
            raise CallOrderError(
                f"backward() was called {len(self._losses) + 1} times without step() "
                f"(accumulate={self.accumulate}); call regime.step() after each backward"
            )
        if batch_size is not None:
            self._micro_batch_size = _checks.count("batch_size", batch_size)
        scaled = loss / self.accumulate if self.accumulate > 1 else loss
        if self._scaler is not None:
            scaled = self._scaler.scale(scaled)
        before = self._grads_if_measuring()
        scaled.backward()
        if before is not None:
            self._micro_sq_norms.append(self._micro_sq_norm(before))
        self._losses.append(loss.detach().reshape(()).float())

    def _grads_if_measuring(self) -> list[torch.Tensor] | None:
        """A copy of the accumulated gradients, only when a due probe wants micro-batches."""
        if self.accumulate == 1 or not self._controller.wants_micro_batches():
            return None
        return [
            p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p)
            for p in self._params
        ]

    def _micro_sq_norm(self, before: list[torch.Tensor]) -> torch.Tensor:
        """Squared norm of this micro-batch's own (unscaled, undivided) gradient."""
        after = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self._params]
        diffs = torch._foreach_sub(after, before)
        squared = torch.stack(torch._foreach_norm(diffs)).pow(2).sum()
        factor = float(self.accumulate) ** 2
        if self._scaler is not None:
            # The loss scale as a device tensor: GradScaler.scale multiplies on the device,
            # where get_scale() would read the value to the host (a sync per micro-batch).
            scale = self._scaler.scale(torch.ones((), device=squared.device))
            squared = squared / scale.float() ** 2
        return squared * factor

    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> Outcome:
        """Measure, decide, then step, skip or roll back; clears the gradients after.

        With ``accumulate=N`` the first N-1 calls only return ``Outcome.ACCUMULATING``.

        Args:
            closure: optional function that recomputes the loss on the current batch;
                only expensive probes (e.g. curvature) call it, on their cadence.

        Syncs host and device once per optimizer step (all due signals in one transfer).
        """
        if not self._losses:
            raise CallOrderError("step() needs a loss: call regime.backward(loss) first")
        if len(self._losses) < self.accumulate:
            return Outcome.ACCUMULATING
        for optimizer in self.optimizers:
            if any(group.get("train_mode") is False for group in optimizer.param_groups):
                raise CallOrderError(
                    f"{type(optimizer).__name__} is in eval mode; call optimizer.train() "
                    "before training steps (and optimizer.eval() only to evaluate)"
                )
        losses, self._losses = self._losses, []
        micro, self._micro_sq_norms = self._micro_sq_norms, []
        loss = losses[0] if len(losses) == 1 else torch.stack(losses).mean()
        scaler = self._scaler
        if scaler is not None:
            for optimizer in self.optimizers:
                scaler.unscale_(optimizer)  # probes must read true gradients
        outcome = self._controller.before_step(
            loss,
            closure=closure,
            micro_grad_sq_norms=micro,
            micro_batch_size=self._micro_batch_size,
            scaler=scaler,
        )
        try:
            if outcome is Outcome.STEPPED:
                for optimizer in self.optimizers:
                    if scaler is None:
                        optimizer.step()
                    elif _has_grads(optimizer):
                        # GradScaler asserts on an optimizer none of whose parameters got
                        # a gradient (e.g. the head a multi-task batch did not use); such
                        # an optimizer.step() would not update anything anyway.
                        scaler.step(optimizer)
        finally:
            self._controller.after_step(outcome)
            if scaler is not None:
                scaler.update()
            for optimizer in self.optimizers:
                optimizer.zero_grad(set_to_none=True)
        if self._average is not None:
            self._follow(outcome)
        return outcome

    def _follow(self, outcome: Outcome) -> None:
        """Keep the weight average in step with what this step did to the weights."""
        average = self._average
        assert average is not None
        effects = self._controller.effects
        if effects.kept_best:
            # the weights just kept as the best were evaluated through the average:
            # keep the average that scored, to come back to it with them
            average.keep()
        if effects.restored == "best":
            average.recall()
        elif effects.restored or effects.rescaled or effects.data_changed:
            average.restart()  # the weights jumped, or they now fit other data
        elif outcome is Outcome.STEPPED:
            average.update()

    @contextlib.contextmanager
    def averaged(self) -> Iterator[None]:
        """Evaluate the averaged weights: the model holds them inside the block.

            with torch.no_grad(), regime.averaged():
                val_loss = evaluate(model)
            regime.observe(val_loss=val_loss)

        Needs ``Regime(..., average=True)``. Save ``model.state_dict()`` inside the
        block to keep the averaged weights.
        """
        if self._average is None:
            raise ConfigError(
                "this Regime keeps no weight average; build it with average=True "
                "(or a decay such as average=0.999) to evaluate one"
            )
        with self._average.swapped_in():
            yield

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
        if self._losses and self.accumulate > 1:
            raise CallOrderError(
                f"state_dict() in the middle of an update ({len(self._losses)} of "
                f"{self.accumulate} micro-batches back-propagated): save right after the "
                "step() that completes an update"
            )
        if self._losses:
            raise CallOrderError("state_dict() between backward() and step(): step first")
        return {
            "version": STATE_VERSION,
            "model": self.model.state_dict(),
            "optimizers": [o.state_dict() for o in self.optimizers],
            "controller": self._controller.state_dict(),
            "grad_scaler": None if self._scaler is None else self._scaler.state_dict(),
            "average": None if self._average is None else self._average.state_dict(),
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
        saved_average = state.get("average")
        if (saved_average is None) != (self._average is None):
            raise StateError(
                "checkpoint and Regime disagree on weight averaging; build the Regime with "
                "the average= setting the checkpoint was saved with"
            )
        self.model.load_state_dict(state["model"])
        for optimizer, saved in zip(self.optimizers, state["optimizers"], strict=True):
            optimizer.load_state_dict(saved)
        self._controller.load_state_dict(state["controller"])
        saved_scaler = state.get("grad_scaler")
        if (saved_scaler is None) != (self._scaler is None):
            raise StateError(
                "checkpoint and Regime disagree on fp16 loss scaling; build the Regime "
                "with the precision the checkpoint was saved with"
            )
        if self._scaler is not None:
            self._scaler.load_state_dict(saved_scaler)
        if self._average is not None:
            self._average.load_state_dict(saved_average)


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


def _has_grads(optimizer: torch.optim.Optimizer) -> bool:
    return any(p.grad is not None for g in optimizer.param_groups for p in g["params"])


def _check_fp32_master_weights(optimizers: Sequence[torch.optim.Optimizer]) -> None:
    """fp16 loss scaling needs fp32 weights (autocast runs the fp16 compute).

    GradScaler cannot unscale fp16 gradients; without this check the first step fails
    with torch's "Attempting to unscale FP16 gradients".
    """
    for optimizer in optimizers:
        for group in optimizer.param_groups:
            if any(p.dtype == torch.float16 for p in group["params"]):
                raise ConfigError(
                    f"{type(optimizer).__name__} holds float16 parameters, but "
                    "precision='fp16' keeps the weights in float32 and runs the forward pass "
                    "under regime.autocast(); drop model.half() (or use precision='bf16' "
                    "with model.to(torch.bfloat16) for pure low-precision weights)"
                )


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
