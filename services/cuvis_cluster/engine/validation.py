"""ValidateConfig: check a config against its schema and, for pipelines, build it; no session is touched."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cuvis_cluster.engine import canonical, configs, schemas
from cuvis_cluster.engine.nodes.base import NodeRegistry
from cuvis_cluster.engine.pipeline import Pipeline
from cuvis_cluster.engine.types import ValidationResult
from cuvis_cluster.errors import CuvisError, InvalidArgument

_NODE_LISTS = ("loss_nodes", "metric_nodes", "freeze_nodes", "unfreeze_nodes")


def _trainrun_warnings(model: schemas.TrainRunConfig) -> list[str]:
    warnings: list[str] = []
    if isinstance(model.pipeline, str):
        warnings.append("pipeline: a path reference; SetTrainRunConfig reads it (inside the allowed roots)")
    elif not isinstance(model.pipeline, schemas.PipelineConfig):
        warnings.append("pipeline: none given; SetTrainRunConfig needs a pipeline already loaded")
    if model.data is None:
        warnings.append("data: none given; Train needs a data config")
    if model.training is not None and not model.loss_nodes:
        warnings.append("loss_nodes: empty; gradient training needs at least one loss node")
    return warnings


def validate_config(config_type: str, payload: bytes | str | Mapping[str, Any]) -> ValidationResult:
    """Errors make the config invalid; warnings name what a later call will still need.

    InvalidArgument only for an unknown ``config_type``; a bad config is a result, not an error.
    """
    kind = (config_type or "").strip().lower()
    if kind not in schemas.CONFIG_MODELS:
        raise InvalidArgument(
            f"config_type: unknown config type {config_type!r}; known: {', '.join(schemas.CONFIG_MODELS)}",
            field="config_type",
        )
    try:
        data = configs.parse_payload(payload, "config")
        model = schemas.validate(kind, data)
    except InvalidArgument as exc:
        return ValidationResult(False, tuple(p.strip() for p in exc.message.split("; ") if p.strip()))
    errors: list[str] = []
    warnings: list[str] = [f"deprecated: {item}" for item in canonical.old_dialect(kind, data)]
    pipeline_cfg = None
    if isinstance(model, schemas.PipelineConfig):
        pipeline_cfg = model
    elif isinstance(model, schemas.TrainRunConfig):
        if isinstance(model.pipeline, schemas.PipelineConfig):
            pipeline_cfg = model.pipeline
        warnings.extend(_trainrun_warnings(model))
    if pipeline_cfg is not None:
        prefix = "pipeline: " if kind == "trainrun" else ""
        try:
            built = Pipeline.from_config(pipeline_cfg, NodeRegistry())
            if isinstance(model, schemas.TrainRunConfig):
                for field in _NODE_LISTS:
                    try:
                        built.resolve_names(getattr(model, field), field)
                    except InvalidArgument as exc:
                        errors.append(exc.message)
        except CuvisError as exc:
            errors.append(prefix + exc.message)
    return ValidationResult(not errors, tuple(errors), tuple(warnings))
