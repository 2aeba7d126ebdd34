"""Canonical configs: our validated configs written in the published ``cuvis_ai_schemas`` form.

Inside the engine a config is validated by the models in :mod:`.schemas` (which read both the canonical
form and our old dialect). Everything that leaves the engine (ResolveConfig, SavePipeline, SaveTrainRun,
RestoreTrainRun) goes through this module and validates under the published models:

- pipeline: ``{metadata, plugins, nodes: [{name, class_name, hparams}], connections:
  [{source: "<node>.outputs.<port>", target: "<node>.inputs.<port>"}]}``
  (:class:`cuvis_ai_schemas.pipeline.PipelineConfig`);
- data: ``{data_module, batch_size, num_workers, params, splits}`` where our frame-id lists become
  ``dir_indices`` selectors (:class:`cuvis_ai_schemas.training.data.DataConfig`);
- training: upstream's flat trainer keys beside ``optimizer``/``scheduler``/``callbacks``
  (:class:`cuvis_ai_schemas.training.config.TrainingConfig`);
- trainrun: ``pipeline`` is a path (:class:`cuvis_ai_schemas.training.run.TrainRunConfig`).

Settings of ours that the published models cannot hold are dropped with a warning naming them.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cuvis_ai_schemas.pipeline import PipelineConfig as PublishedPipeline
from cuvis_ai_schemas.pipeline.config import PipelineMetadata as PublishedMetadata
from cuvis_ai_schemas.training.callbacks import CallbacksConfig as PublishedCallbacks
from cuvis_ai_schemas.training.config import TrainingConfig as PublishedTraining
from cuvis_ai_schemas.training.data import DataConfig as PublishedData
from cuvis_ai_schemas.training.optimizer import OptimizerConfig as PublishedOptimizer
from cuvis_ai_schemas.training.run import TrainRunConfig as PublishedTrainRun
from cuvis_ai_schemas.training.scheduler import SchedulerConfig as PublishedScheduler
from pydantic import BaseModel, ValidationError

from cuvis_cluster.engine import schemas
from cuvis_cluster.engine.nodes.base import BUILTIN, preferred_name
from cuvis_cluster.errors import InvalidArgument

log = logging.getLogger(__name__)

BUILTIN_PLUGIN = "cuvis_ai_builtin"
PUBLISHED: dict[str, type[BaseModel]] = {
    "pipeline": PublishedPipeline,
    "trainrun": PublishedTrainRun,
    "data": PublishedData,
    "training": PublishedTraining,
}
PUBLISHED.update(
    {"optimizer": PublishedOptimizer, "scheduler": PublishedScheduler, "callbacks": PublishedCallbacks}
)
RESOLVED_DIR = "resolved"


def published_model(config_type: str) -> type[BaseModel]:
    """The ``cuvis_ai_schemas`` model of ``config_type``."""
    return PUBLISHED[(config_type or "").strip().lower()]


def old_dialect(config_type: str, data: Any) -> list[str]:
    """What in ``data`` is spelt in our old dialect (read for one release, converted to canonical)."""
    found: list[str] = []
    if not isinstance(data, dict):
        return found
    kind = (config_type or "").strip().lower()
    if kind == "pipeline":
        # Only a list is walked: this runs before validation, on whatever the client sent.
        for node in _list_of(data.get("nodes")):
            if isinstance(node, dict) and ("type" in node or "params" in node):
                found.append("nodes: 'type'/'params' (use 'class_name'/'hparams')")
                break
        for conn in _list_of(data.get("connections")):
            if isinstance(conn, dict) and any(
                isinstance(conn.get(k), str) and conn[k].count(".") == 1 for k in ("source", "target")
            ):
                found.append(
                    "connections: '<node>.<port>' (use '<node>.outputs.<port>' / '<node>.inputs.<port>')"
                )
                break
    elif kind == "data":
        if any(k in data for k in ("train_ids", "val_ids", "test_ids")):
            found.append("data: train_ids/val_ids/test_ids (use splits with 'dir_indices' selectors)")
    elif kind == "training":
        if "trainer" in data:
            found.append("training.trainer (use the flat trainer keys, e.g. training.max_epochs)")
    elif kind == "trainrun":
        if isinstance(data.get("pipeline"), dict):
            found.append("trainrun.pipeline: an inline pipeline (reference a pipeline file by path)")
            found += old_dialect("pipeline", data["pipeline"])
        if isinstance(data.get("tags"), list):
            found.append("trainrun.tags: a list (use a mapping)")
        found += old_dialect("data", data.get("data"))
        found += old_dialect("training", data.get("training"))
    return found


def _list_of(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def warn_old_dialect(config_type: str, data: Any, where: str = "") -> None:
    """Log one deprecation warning for a config spelt (partly) in the old dialect."""
    found = old_dialect(config_type, data)
    if found:
        log.warning(
            "deprecated config dialect in %s (read for one release, converted to the canonical form): %s",
            where or config_type,
            "; ".join(found),
        )


def class_name_of(type_or_class: str) -> str:
    """The full class name for a node type: a full name stays; a short native name maps to the
    upstream class the native class serves (or its own full name)."""
    if "." in type_or_class:
        return type_or_class
    cls = BUILTIN.get(type_or_class)
    return preferred_name(cls) if cls is not None else type_or_class


def _endpoint(text: str, side: str) -> str:
    node, port = text.split(".", 1)
    return f"{node}.{side}.{port}"


def pipeline(config: Mapping[str, Any] | schemas.PipelineConfig) -> dict[str, Any]:
    """The canonical form of a pipeline config (ours or canonical, as dict or model)."""
    model = (
        config if isinstance(config, schemas.PipelineConfig) else schemas.validate("pipeline", dict(config))
    )
    assert isinstance(model, schemas.PipelineConfig)
    meta = model.metadata.model_dump(mode="json")
    meta = {k: v for k, v in meta.items() if k in PublishedMetadata.model_fields}
    if not meta.get("name"):
        meta["name"] = "pipeline"
    if not meta.get("cuvis_ai_version"):
        meta.pop("cuvis_ai_version", None)
    plugins = list(dict.fromkeys([BUILTIN_PLUGIN, *model.plugins]))
    out = {
        "metadata": meta,
        "plugins": plugins,
        "nodes": [
            {"name": n.name, "class_name": class_name_of(n.type), "hparams": _json(n.params)}
            for n in model.nodes
        ],
        "connections": [
            {"source": _endpoint(c.source, "outputs"), "target": _endpoint(c.target, "inputs")}
            for c in model.connections
        ],
    }
    return check("pipeline", out)


def data(config: Mapping[str, Any] | schemas.DataConfig) -> dict[str, Any]:
    """The canonical form of a data config: frame-id lists become ``dir_indices`` split selectors."""
    model = (
        config if isinstance(config, schemas.DataConfig) else schemas.validate("data", dict(config), "data")
    )
    assert isinstance(model, schemas.DataConfig)
    out: dict[str, Any] = {
        "data_module": model.data_module,
        "batch_size": model.batch_size,
        "num_workers": model.num_workers,
        "params": _json(model.params),
    }
    # A stage that is left out takes the module's default share; an empty list is an empty split.
    splits = {
        stage: [{"kind": "dir_indices", "ids": list(ids)}] if ids else []
        for stage, ids in (("train", model.train_ids), ("val", model.val_ids), ("test", model.test_ids))
        if ids is not None
    }
    if splits:
        out["splits"] = splits
    checked = check("data", out)
    if "splits" in checked:  # only the stages given (the published dump fills in the others as [])
        checked["splits"] = {k: v for k, v in checked["splits"].items() if k in splits}
    return checked


_TRAINER_KEYS = (
    "max_epochs",
    "accelerator",
    "devices",
    "precision",
    "accumulate_grad_batches",
    "enable_progress_bar",
    "log_every_n_steps",
    "val_check_interval",
    "check_val_every_n_epoch",
    "limit_train_batches",
    "limit_val_batches",
    "num_sanity_val_steps",
    "gradient_clip_val",
)
_TRAINER_OURS_ONLY = ("max_steps", "gradient_clip_algorithm", "limit_test_batches", "fast_dev_run")
_OPTIMIZER_KEYS = ("name", "lr", "weight_decay", "momentum", "betas")
_SCHEDULER_KEYS = (
    "name",
    "t_max",
    "step_size",
    "gamma",
    "monitor",
    "mode",
    "factor",
    "patience",
    "threshold",
    "cooldown",
    "min_lr",
)


def _dropped(where: str, section: BaseModel, keys: tuple[str, ...], dropped: list[str]) -> None:
    defaults = type(section)()
    for key in keys:
        if getattr(section, key) != getattr(defaults, key):
            dropped.append(f"{where}.{key}")


def training(config: Mapping[str, Any] | schemas.TrainingConfig) -> dict[str, Any]:
    """The canonical (flat, upstream) form of a training config."""
    model = (
        config
        if isinstance(config, schemas.TrainingConfig)
        else schemas.validate("training", dict(config), "training")
    )
    assert isinstance(model, schemas.TrainingConfig)
    dropped: list[str] = []
    trainer = model.trainer
    out: dict[str, Any] = {"seed": model.seed}
    for key in _TRAINER_KEYS:
        value = getattr(trainer, key)
        if value is not None:
            out[key] = value
    out["deterministic"] = bool(trainer.deterministic)
    out["benchmark"] = bool(trainer.benchmark)
    if trainer.enable_checkpointing is not None:
        out["enable_checkpointing"] = trainer.enable_checkpointing
    _dropped("training.trainer", trainer, _TRAINER_OURS_ONLY, dropped)
    opt = model.optimizer
    out["optimizer"] = {k: getattr(opt, k) for k in _OPTIMIZER_KEYS if getattr(opt, k) is not None}
    _dropped("training.optimizer", opt, ("nesterov",), dropped)
    if model.scheduler is not None:
        sch = model.scheduler
        out["scheduler"] = {k: getattr(sch, k) for k in _SCHEDULER_KEYS if getattr(sch, k) is not None}
        if sch.name == "cosine" and sch.eta_min:
            out["scheduler"]["min_lr"] = sch.eta_min
        _dropped("training.scheduler", sch, ("interval", "frequency"), dropped)
    cbs = model.callbacks
    callbacks: dict[str, Any] = {}
    if cbs.early_stopping:
        callbacks["early_stopping"] = [es.model_dump(mode="json") for es in cbs.early_stopping]
    if cbs.checkpoint is not None:
        ckpt = {k: v for k, v in cbs.checkpoint.model_dump(mode="json").items() if v is not None}
        callbacks["checkpoint"] = ckpt
    if cbs.learning_rate_monitor is not None:
        callbacks["learning_rate_monitor"] = cbs.learning_rate_monitor.model_dump(mode="json")
    if callbacks:
        out["callbacks"] = callbacks
    if dropped:
        log.warning(
            "settings without a place in the published TrainingConfig are not written: %s", ", ".join(dropped)
        )
    return check("training", _json(out))


def trainrun(config: Mapping[str, Any] | schemas.TrainRunConfig, pipeline_ref: str | None) -> dict[str, Any]:
    """The canonical form of a train run whose pipeline is referenced by ``pipeline_ref`` (a path)."""
    model = (
        config if isinstance(config, schemas.TrainRunConfig) else schemas.validate("trainrun", dict(config))
    )
    assert isinstance(model, schemas.TrainRunConfig)
    out: dict[str, Any] = {
        "name": model.name or "trainrun",
        "pipeline": pipeline_ref,
        "data": data(model.data if model.data is not None else schemas.DataConfig.model_validate({})),
        "loss_nodes": list(model.loss_nodes),
        "metric_nodes": list(model.metric_nodes),
        "freeze_nodes": list(model.freeze_nodes),
        "unfreeze_nodes": list(model.unfreeze_nodes),
        "output_dir": model.output_dir or "./outputs",
        "tags": dict(model.tags),
    }
    if model.training is not None:
        out["training"] = training(model.training)
    if pipeline_ref is None:
        out.pop("pipeline")
    return check("trainrun", out)


def check(kind: str, data: dict[str, Any]) -> dict[str, Any]:
    """Validate ``data`` under the published model of ``kind``; the published model's JSON form."""
    try:
        model = PUBLISHED[kind].model_validate(data)
    except ValidationError as exc:
        raise InvalidArgument(
            f"{kind}: not expressible in the published {PUBLISHED[kind].__name__}: "
            + "; ".join(schemas.error_lines(exc)),
            field=kind,
        ) from None
    return model.model_dump(mode="json", exclude_none=True)


def _json(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def content_hash(config: Mapping[str, Any]) -> str:
    """The SHA-256 of a config's canonical JSON (sorted keys, no whitespace)."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def resolved_pipeline_path(output_dir: Path, config: Mapping[str, Any]) -> Path:
    """``<output root>/resolved/pipeline-<sha256[:16]>.yaml`` for a canonical pipeline."""
    return output_dir / RESOLVED_DIR / f"pipeline-{content_hash(config)[:16]}.yaml"


def to_canonical(kind: str, model: BaseModel) -> dict[str, Any]:
    """The canonical form of a validated pipeline, data or training model."""
    if isinstance(model, schemas.PipelineConfig):
        return pipeline(model)
    if isinstance(model, schemas.DataConfig):
        return data(model)
    if isinstance(model, schemas.TrainingConfig):
        return training(model)
    raise InvalidArgument(f"config_type: {kind!r} has no canonical form here", field="config_type")
