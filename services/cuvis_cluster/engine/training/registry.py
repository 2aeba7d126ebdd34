"""The one registry of optimizers, schedulers and callbacks.

The gradient trainer builds its torch optimizer, LR scheduler and Lightning callbacks from the entries
here, and GetTrainingCapabilities is generated from the same entries: the names, the descriptions, and
the parameters (ParamSpec) derived from the pydantic config models in :mod:`cuvis_cluster.engine.schemas`.
Adding an optimizer means adding one entry; nothing else lists them.
"""

from __future__ import annotations

import json
import types
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from cuvis_cluster.engine import schemas
from cuvis_cluster.engine.types import CallbackInfo, ParamSpec, TrainingCapabilities
from cuvis_cluster.errors import InvalidArgument


@dataclass(frozen=True)
class Entry:
    """One buildable thing: its public name, a description, the config fields it reads, and a builder."""

    name: str
    description: str
    fields: tuple[str, ...]
    build: Callable[..., Any]


# -------------------------------------------------------------------------------------------------
# optimizers: build(params, cfg: OptimizerConfig) -> torch.optim.Optimizer
# -------------------------------------------------------------------------------------------------
def _adam_kwargs(cfg: schemas.OptimizerConfig) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"lr": cfg.lr, "weight_decay": cfg.weight_decay}
    if cfg.betas is not None:
        kwargs["betas"] = tuple(cfg.betas)
    return kwargs


def _sgd(params: Iterable[torch.nn.Parameter], cfg: schemas.OptimizerConfig) -> torch.optim.Optimizer:
    if cfg.nesterov and cfg.momentum <= 0:
        raise InvalidArgument(
            "training.optimizer.nesterov needs a momentum > 0", field="training.optimizer.momentum"
        )
    return torch.optim.SGD(
        params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=cfg.nesterov
    )


OPTIMIZERS: dict[str, Entry] = {
    e.name: e
    for e in (
        Entry(
            "adam",
            "Adam (adaptive moments); weight_decay is L2 added to the gradient.",
            ("lr", "weight_decay", "betas"),
            lambda params, cfg: torch.optim.Adam(params, **_adam_kwargs(cfg)),
        ),
        Entry(
            "adamw",
            "AdamW (Adam with decoupled weight decay).",
            ("lr", "weight_decay", "betas"),
            lambda params, cfg: torch.optim.AdamW(params, **_adam_kwargs(cfg)),
        ),
        Entry(
            "sgd",
            "Stochastic gradient descent with optional (Nesterov) momentum.",
            ("lr", "weight_decay", "momentum", "nesterov"),
            _sgd,
        ),
    )
}


# -------------------------------------------------------------------------------------------------
# schedulers: build(optimizer, cfg: SchedulerConfig, max_epochs, steps_per_epoch) -> Lightning lr dict
# -------------------------------------------------------------------------------------------------
def _cosine_period(cfg: schemas.SchedulerConfig, max_epochs: int, steps_per_epoch: int) -> int:
    if cfg.t_max is not None:
        return cfg.t_max
    return max(1, max_epochs * (steps_per_epoch if cfg.interval == "step" else 1))


def _plateau(optimizer: torch.optim.Optimizer, cfg: schemas.SchedulerConfig, *_: Any) -> Any:
    return torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer,
        mode=cfg.mode,
        factor=cfg.factor,
        patience=cfg.patience,
        threshold=cfg.threshold,
        cooldown=cfg.cooldown,
        min_lr=cfg.min_lr,
    )


SCHEDULERS: dict[str, Entry] = {
    e.name: e
    for e in (
        Entry(
            "step",
            "Multiply the learning rate by gamma every step_size epochs (or steps).",
            ("interval", "frequency", "step_size", "gamma"),
            lambda opt, cfg, *_: torch.optim.lr_scheduler.StepLR(
                opt, step_size=cfg.step_size, gamma=cfg.gamma
            ),
        ),
        Entry(
            "cosine",
            "Cosine annealing from the initial learning rate to eta_min over t_max (default: max_epochs).",
            ("interval", "frequency", "t_max", "eta_min"),
            lambda opt, cfg, epochs, steps: torch.optim.lr_scheduler.CosineAnnealingLR(
                opt, T_max=_cosine_period(cfg, epochs, steps), eta_min=cfg.eta_min
            ),
        ),
        Entry(
            "exponential",
            "Multiply the learning rate by gamma every epoch (or step).",
            ("interval", "frequency", "gamma"),
            lambda opt, cfg, *_: torch.optim.lr_scheduler.ExponentialLR(opt, gamma=cfg.gamma),
        ),
        Entry(
            "reduce_on_plateau",
            "Reduce the learning rate by factor when the monitored value stops improving for patience "
            "epochs.",
            ("monitor", "mode", "patience", "factor", "threshold", "cooldown", "min_lr", "frequency"),
            _plateau,
        ),
    )
}


def build_optimizer(params: list[torch.nn.Parameter], cfg: schemas.OptimizerConfig) -> torch.optim.Optimizer:
    entry = OPTIMIZERS.get(cfg.name)
    if entry is None:
        raise InvalidArgument(
            f"training.optimizer.name: unknown optimizer {cfg.name!r}; supported: {', '.join(OPTIMIZERS)}",
            field="training.optimizer.name",
        )
    return entry.build(params, cfg)


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: schemas.SchedulerConfig, max_epochs: int, steps_per_epoch: int
) -> dict[str, Any]:
    """The ``lr_scheduler`` dict Lightning's ``configure_optimizers`` returns."""
    entry = SCHEDULERS.get(cfg.name)
    if entry is None:
        raise InvalidArgument(
            f"training.scheduler.name: unknown scheduler {cfg.name!r}; supported: {', '.join(SCHEDULERS)}",
            field="training.scheduler.name",
        )
    scheduler = entry.build(optimizer, cfg, max_epochs, steps_per_epoch)
    out: dict[str, Any] = {"scheduler": scheduler, "interval": cfg.interval, "frequency": cfg.frequency}
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        out["monitor"] = cfg.monitor
        out["strict"] = True
    return out


# -------------------------------------------------------------------------------------------------
# callbacks: build(cfg_item, ctx: CallbackContext) -> list[lightning Callback]
# -------------------------------------------------------------------------------------------------
@dataclass
class CallbackContext:
    """What callback builders need besides their own config."""

    checkpoint_dir: Path  # already confined to the output root


def _early_stopping(items: list[schemas.EarlyStoppingConfig], ctx: CallbackContext) -> list[Any]:
    from lightning.pytorch.callbacks import EarlyStopping

    return [
        EarlyStopping(
            monitor=item.monitor,
            patience=item.patience,
            mode=item.mode,
            min_delta=item.min_delta,
            stopping_threshold=item.stopping_threshold,
            divergence_threshold=item.divergence_threshold,
            check_finite=item.check_finite,
            verbose=False,
        )
        for item in items
    ]


def _checkpoint(item: schemas.CheckpointConfig | None, ctx: CallbackContext) -> list[Any]:
    if item is None:
        return []
    from lightning.pytorch.callbacks import ModelCheckpoint

    filename = item.filename
    if filename is not None and ("/" in filename or "\\" in filename or ".." in filename):
        raise InvalidArgument(
            "training.callbacks.checkpoint.filename must be a plain file name (no directories)",
            field="training.callbacks.checkpoint.filename",
        )
    return [
        ModelCheckpoint(
            dirpath=str(ctx.checkpoint_dir),
            filename=filename,
            monitor=item.monitor,
            mode=item.mode,
            save_top_k=item.save_top_k,
            save_last=item.save_last or None,
            every_n_epochs=item.every_n_epochs,
            verbose=False,
        )
    ]


def _lr_monitor(item: schemas.LearningRateMonitorConfig | None, ctx: CallbackContext) -> list[Any]:
    if item is None:
        return []
    from lightning.pytorch.callbacks import LearningRateMonitor

    return [LearningRateMonitor(logging_interval=item.logging_interval, log_momentum=item.log_momentum)]


@dataclass(frozen=True)
class CallbackEntry:
    name: str  # the key in CallbacksConfig
    description: str
    model: type[BaseModel]
    build: Callable[[Any, CallbackContext], list[Any]]


CALLBACKS: dict[str, CallbackEntry] = {
    e.name: e
    for e in (
        CallbackEntry(
            "early_stopping",
            "Stop training when a monitored value (e.g. val/bce) stops improving; a list, one per monitor.",
            schemas.EarlyStoppingConfig,
            _early_stopping,
        ),
        CallbackEntry(
            "checkpoint",
            "Save checkpoints under the output root; with a monitor, the best one is restored into the "
            "pipeline after fit.",
            schemas.CheckpointConfig,
            _checkpoint,
        ),
        CallbackEntry(
            "learning_rate_monitor",
            "Report the learning rate of each parameter group as a metric (lr-<Optimizer>).",
            schemas.LearningRateMonitorConfig,
            _lr_monitor,
        ),
    )
}


def build_callbacks(cfg: schemas.CallbacksConfig, ctx: CallbackContext) -> list[Any]:
    out: list[Any] = []
    for name, entry in CALLBACKS.items():
        out.extend(entry.build(getattr(cfg, name), ctx))
    return out


# -------------------------------------------------------------------------------------------------
# capabilities (GetTrainingCapabilities), generated from the entries and the pydantic models
# -------------------------------------------------------------------------------------------------
def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is Literal:
        return "string" if all(isinstance(a, str) for a in args) else "enum"
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        names = list(dict.fromkeys(_type_name(a) for a in inner))
        text = " | ".join(names)
        return f"{text} | null" if len(inner) < len(args) else text
    if origin in (list, tuple):
        inner = list(dict.fromkeys(_type_name(a) for a in args if a is not Ellipsis))
        return f"list[{' | '.join(inner)}]" if inner else "list"
    return {bool: "bool", int: "int", float: "float", str: "string"}.get(
        annotation, getattr(annotation, "__name__", "any")
    )


def _validation(annotation: Any, info: FieldInfo) -> str:
    parts: list[str] = []
    for meta in info.metadata:
        for attr, symbol in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")):
            value = getattr(meta, attr, None)
            if value is not None:
                parts.append(f"{symbol} {value}")
        if getattr(meta, "min_length", None) is not None:
            parts.append(f"min_length {meta.min_length}")
    literals = _literals(annotation)
    if literals:
        parts.append("one of: " + ", ".join(str(v) for v in literals))
    return "; ".join(parts)


def _literals(annotation: Any) -> list[Any]:
    if typing.get_origin(annotation) is Literal:
        return list(typing.get_args(annotation))
    out: list[Any] = []
    for arg in typing.get_args(annotation):
        out.extend(_literals(arg))
    return out


def _default_text(info: FieldInfo) -> str:
    if info.is_required():
        return ""
    default = info.get_default(call_default_factory=True)
    if isinstance(default, BaseModel):
        default = default.model_dump(mode="json")
    return json.dumps(default)


def param_specs(model: type[BaseModel], only: Iterable[str] | None = None) -> list[ParamSpec]:
    """The ParamSpecs of a model's fields (all of them, or those named in ``only``)."""
    wanted = list(only) if only is not None else list(model.model_fields)
    out = []
    for name in wanted:
        info = model.model_fields[name]
        out.append(
            ParamSpec(
                name=name,
                type=_type_name(info.annotation),
                required=info.is_required(),
                default_value=_default_text(info),
                description=info.description or "",
                validation=_validation(info.annotation, info),
            )
        )
    return out


def _used_by(entries: dict[str, Entry], field_name: str) -> str:
    users = [e.name for e in entries.values() if field_name in e.fields]
    return "" if len(users) == len(entries) else f" (used by: {', '.join(users)})"


def _with_users(specs: list[ParamSpec], entries: dict[str, Entry]) -> tuple[ParamSpec, ...]:
    """Each spec's description followed by the entries that read the field, unless all of them do."""
    return tuple(replace(p, description=(p.description + _used_by(entries, p.name)).strip()) for p in specs)


def capabilities() -> TrainingCapabilities:
    """The GetTrainingCapabilities payload."""
    return TrainingCapabilities(
        optimizers=tuple(OPTIMIZERS),
        optimizer_descriptions={e.name: e.description for e in OPTIMIZERS.values()},
        schedulers=tuple(SCHEDULERS),
        scheduler_descriptions={e.name: e.description for e in SCHEDULERS.values()},
        callbacks=tuple(
            CallbackInfo(type=e.name, description=e.description, parameters=tuple(param_specs(e.model)))
            for e in CALLBACKS.values()
        ),
        optimizer_params=_with_users(param_specs(schemas.OptimizerConfig), OPTIMIZERS),
        scheduler_params=_with_users(param_specs(schemas.SchedulerConfig), SCHEDULERS),
    )
