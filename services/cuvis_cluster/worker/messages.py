"""Translation between the engine's plain Python values and ``cuvis_ai.v1`` messages.

Pure functions, no grpc: the servicer calls them on the way in and out. Enum values are looked up by
name (``"statistical"`` -> ``TRAINER_TYPE_STATISTICAL``), so the engine never sees a wire number and an
unknown name degrades to the enum's UNSPECIFIED value instead of failing a reply.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any, Protocol, TypeVar, cast

from cuvis_cluster.engine import bounds
from cuvis_cluster.engine.types import (
    CalibrationOutcome,
    CheckpointRestore,
    DeciderCalibration,
    EvaluationOutcome,
    NodeInfo,
    NodeProfilingStats,
    ParamSpec,
    PipelineEntry,
    PipelineMetadata,
    PluginInfo,
    PortSpec,
    ProgressEvent,
    TensorSpecInfo,
    TrainingCapabilities,
)
from cuvis_cluster.errors import InvalidArgument
from cuvis_cluster.wire import codec
from cuvis_cluster.wire.pb import pb

TRAINER_TYPES: dict[int, str] = {
    pb.TRAINER_TYPE_STATISTICAL: "statistical",
    pb.TRAINER_TYPE_GRADIENT: "gradient",
    pb.TRAINER_TYPE_CALIBRATION: "calibration",
}
STAGE_TO_WIRE: dict[str, pb.ExecutionStage] = {
    "train": pb.EXECUTION_STAGE_TRAIN,
    "val": pb.EXECUTION_STAGE_VAL,
    "validation": pb.EXECUTION_STAGE_VAL,
    "test": pb.EXECUTION_STAGE_TEST,
    "inference": pb.EXECUTION_STAGE_INFERENCE,
}
WIRE_TO_STAGE: dict[int, str] = {
    pb.EXECUTION_STAGE_TRAIN: "train",
    pb.EXECUTION_STAGE_VAL: "val",
    pb.EXECUTION_STAGE_TEST: "test",
    pb.EXECUTION_STAGE_INFERENCE: "inference",
}
TRAIN_STATUS: dict[str, pb.TrainStatus] = {
    "running": pb.TRAIN_STATUS_RUNNING,
    "complete": pb.TRAIN_STATUS_COMPLETE,
    "error": pb.TRAIN_STATUS_ERROR,
    "cancelled": pb.TRAIN_STATUS_CANCELLED,
}
POINT_TYPES: dict[int, str] = {
    pb.POINT_TYPE_POSITIVE: "positive",
    pb.POINT_TYPE_NEGATIVE: "negative",
    pb.POINT_TYPE_NEUTRAL: "neutral",
    pb.POINT_TYPE_UNSPECIFIED: "neutral",
}


WireEnum = TypeVar("WireEnum", bound=int)


class _EnumLookup(Protocol):
    """A generated enum at run time (an ``EnumTypeWrapper``): values looked up by name."""

    def Value(self, name: str) -> int: ...


def enum_value(enum: type[WireEnum], prefix: str, name: str | None) -> WireEnum:
    """``enum_value(pb.TrainHook, "TRAIN_HOOK_", "fit_start")`` -> ``TRAIN_HOOK_FIT_START``; 0 (every proto3
    enum's UNSPECIFIED) if unknown."""
    number = 0
    if name:
        try:
            number = cast(_EnumLookup, enum).Value(prefix + str(name).upper())
        except ValueError:
            number = 0
    # The stubs type a looked-up value as a plain int; it is a value of ``enum``.
    return cast(WireEnum, number)


def stage(name: str | None) -> pb.ExecutionStage:
    return STAGE_TO_WIRE.get((name or "").lower(), pb.EXECUTION_STAGE_UNSPECIFIED)


def floats(values: Mapping[str, Any] | None) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in (values or {}).items():
        try:
            out[str(key)] = float(value)
        except (TypeError, ValueError):
            continue
    return out


# -------------------------------------------------------------------------------------------------
# requests -> engine


def json_config(payload: bytes, *, field: str) -> dict[str, Any] | None:
    """Parse an optional JSON config field: empty -> None; malformed, non-object, too big or too deeply
    nested (the engine's bounds on client documents) -> InvalidArgument naming ``field``."""
    if not payload:
        return None
    value = bounds.parse_json(payload, field)
    if not isinstance(value, dict):
        raise InvalidArgument(f"{field}: expected a JSON object, got {type(value).__name__}", field=field)
    return value


def trainer_type(value: int) -> str:
    name = TRAINER_TYPES.get(value)
    if name is None:
        raise InvalidArgument(
            "trainer_type: set TRAINER_TYPE_STATISTICAL, TRAINER_TYPE_GRADIENT or TRAINER_TYPE_CALIBRATION",
            field="trainer_type",
        )
    return name


TENSOR_INPUTS = ("cube", "wavelengths", "mask", "rgb_image", "frame_id", "mesu_index")


def bbox_dicts(boxes: pb.BoundingBoxes) -> list[dict[str, Any]]:
    return [
        {
            "element_id": box.element_id,
            "x_min": box.x_min,
            "y_min": box.y_min,
            "x_max": box.x_max,
            "y_max": box.y_max,
            "object_id": box.object_id if box.HasField("object_id") else None,
        }
        for box in boxes.boxes
    ]


def point_dicts(points: pb.Points) -> list[dict[str, Any]]:
    return [
        {"element_id": p.element_id, "x": p.x, "y": p.y, "type": POINT_TYPES.get(p.type, "neutral")}
        for p in points.points
    ]


def inference_inputs(batch: pb.InputBatch) -> dict[str, Any]:
    """The engine's input dict: tensors decoded without copying, prompts as plain dicts."""
    inputs: dict[str, Any] = {}
    for name in TENSOR_INPUTS:
        if batch.HasField(name):
            inputs[name] = codec.to_torch(getattr(batch, name), field=f"inputs.{name}")
    if batch.HasField("bboxes"):
        inputs["bboxes"] = bbox_dicts(batch.bboxes)
    if batch.HasField("points"):
        inputs["points"] = point_dicts(batch.points)
    if batch.text_prompt:
        inputs["text_prompt"] = batch.text_prompt
    for name, tensor in batch.extra_inputs.items():
        field = f"inputs.extra_inputs[{name!r}]"
        if not name or name in inputs or name in ("bboxes", "points", "text_prompt"):
            raise InvalidArgument(
                f"{field}: the name is empty or collides with a standard input field; use the field itself",
                field=field,
            )
        inputs[name] = codec.to_torch(tensor, field=field)
    return inputs


def metadata_from_wire(meta: pb.PipelineMetadata) -> PipelineMetadata:
    return PipelineMetadata(
        name=meta.name,
        description=meta.description,
        created=meta.created,
        tags=tuple(meta.tags),
        author=meta.author,
        cuvis_ai_version=meta.cuvis_ai_version,
    )


# -------------------------------------------------------------------------------------------------
# engine -> replies


def pipeline_metadata(meta: PipelineMetadata) -> pb.PipelineMetadata:
    return pb.PipelineMetadata(
        name=meta.name,
        description=meta.description,
        created=meta.created,
        cuvis_ai_version=meta.cuvis_ai_version,
        tags=list(meta.tags),
        author=meta.author,
    )


def pipeline_info(entry: PipelineEntry) -> pb.PipelineInfo:
    return pb.PipelineInfo(
        pipeline_path=entry.pipeline_path,
        resolved_path=entry.resolved_path,
        metadata=pipeline_metadata(entry.metadata),
        weights_path=entry.weights_path,
        yaml_content=entry.yaml_content,
    )


def tensor_spec(spec: TensorSpecInfo) -> pb.TensorSpec:
    return pb.TensorSpec(
        name=spec.name,
        shape=[int(d) if isinstance(d, int) else -1 for d in spec.shape],
        dtype=codec.spec_dtype(spec.dtype),
        required=bool(spec.required),
    )


def progress(event: ProgressEvent) -> pb.TrainResponse:
    """A ``ProgressEvent`` as a ``TrainResponse``; ``event`` is set only when the engine marked a hook."""
    reply = pb.TrainResponse(
        context=pb.Context(
            stage=stage(event.stage),
            epoch=int(event.epoch),
            batch_idx=int(event.batch_idx),
            global_step=int(event.global_step),
        ),
        losses=floats(event.losses),
        metrics=floats(event.metrics),
        status=TRAIN_STATUS.get(event.status, pb.TRAIN_STATUS_UNSPECIFIED),
        message=event.message or "",
    )
    detail = train_event(event)
    if detail is not None:
        reply.event.CopyFrom(detail)
    return reply


def train_event(event: ProgressEvent) -> pb.TrainEvent | None:
    details = (
        event.hook,
        event.split,
        event.progress,
        event.epochs,
        event.node,
        event.checkpoint,
        event.calibration,
        event.evaluation,
    )
    if not any(details) and not event.calibration_pending:
        return None
    out = pb.TrainEvent(
        hook=enum_value(pb.TrainHook, "TRAIN_HOOK_", event.hook),
        split=stage(event.split),
        calibration_pending=bool(event.calibration_pending),
        node=event.node or "",
    )
    if event.progress is not None:
        done, total = event.progress
        out.progress.CopyFrom(pb.FrameProgress(done=int(done), total=int(total or 0)))
    if event.epochs is not None:
        current, total = event.epochs
        out.epochs.CopyFrom(pb.EpochProgress(current=int(current), total=int(total or 0)))
    if event.checkpoint is not None:
        out.checkpoint.CopyFrom(checkpoint(event.checkpoint))
    if event.calibration is not None:
        out.calibration.CopyFrom(calibration(event.calibration))
    if event.evaluation is not None:
        out.evaluation.CopyFrom(evaluation(event.evaluation))
    return out


def checkpoint(info: CheckpointRestore) -> pb.CheckpointRestored:
    out = pb.CheckpointRestored(
        restored=info.restored,
        path=info.path,
        epoch=int(info.epoch),
        monitor=info.monitor,
        reason=info.reason,
    )
    if info.score is not None and math.isfinite(info.score):
        out.score = float(info.score)
    return out


def calibration(info: CalibrationOutcome) -> pb.CalibrationOutcome:
    return pb.CalibrationOutcome(
        split=stage(info.split),
        applicable=info.applicable,
        phase_skip=enum_value(pb.CalibrationPhaseSkip, "CALIBRATION_PHASE_SKIP_", info.phase_skip),
        phase_detail=info.phase_detail,
        frames=int(info.frames),
        anomalous_frames=int(info.anomalous_frames),
        deciders=[decider(d) for d in info.deciders],
    )


def decider(info: DeciderCalibration) -> pb.DeciderCalibration:
    thresholds = {}
    for name, change in info.thresholds.items():
        item = pb.ThresholdChange(after=float(change.after))
        if change.before is not None:
            item.before = float(change.before)
        thresholds[name] = item
    return pb.DeciderCalibration(
        name=info.name,
        class_name=info.class_name,
        status=enum_value(pb.DeciderCalibrationStatus, "DECIDER_CALIBRATION_STATUS_", info.status),
        skip=enum_value(pb.DeciderSkip, "DECIDER_SKIP_", info.skip),
        skip_detail=info.skip_detail,
        thresholds=thresholds,
        metrics=floats(info.metrics),
        thresholds_present=info.thresholds_present,
    )


def evaluation(info: EvaluationOutcome) -> pb.EvaluationOutcome:
    return pb.EvaluationOutcome(
        split=stage(info.split),
        status=enum_value(pb.EvaluationStatus, "EVALUATION_STATUS_", info.status),
        frames=int(info.frames),
        metrics=floats(info.metrics),
        error=info.error,
    )


def param_spec(spec: ParamSpec) -> pb.ParamSpec:
    return pb.ParamSpec(
        name=spec.name,
        type=spec.type,
        required=spec.required,
        default_value=spec.default_value,
        description=spec.description,
        validation=spec.validation,
    )


def capabilities(caps: TrainingCapabilities) -> pb.GetTrainingCapabilitiesResponse:
    return pb.GetTrainingCapabilitiesResponse(
        supported_optimizers=list(caps.optimizers),
        supported_schedulers=list(caps.schedulers),
        supported_callbacks=[
            pb.CallbackTypeInfo(
                type=cb.type,
                description=cb.description,
                parameters=[param_spec(p) for p in cb.parameters],
            )
            for cb in caps.callbacks
        ],
        optimizer_params=pb.OptimizerParamsSchema(parameters=[param_spec(p) for p in caps.optimizer_params]),
        scheduler_params=pb.SchedulerParamsSchema(parameters=[param_spec(p) for p in caps.scheduler_params]),
    )


def plugin_info(info: PluginInfo) -> pb.PluginInfo:
    return pb.PluginInfo(
        name=info.name,
        type=info.type,
        source=info.source,
        tag=info.tag,
        capabilities=list(info.capabilities),
    )


def _port_spec(port: PortSpec) -> pb.PortSpec:
    return pb.PortSpec(
        name=port.name,
        dtype=codec.spec_dtype(port.dtype),
        shape=list(port.shape),
        optional=port.optional,
        description=port.description,
        variadic=port.variadic,
    )


def _ports(ports: Mapping[str, PortSpec]) -> dict[str, pb.PortSpec]:
    return {name: _port_spec(port) for name, port in ports.items()}


def node_info(info: NodeInfo) -> pb.NodeInfo:
    return pb.NodeInfo(
        class_name=info.class_name,
        full_path=info.full_path or info.class_name,
        source=info.source,
        plugin_name=info.plugin_name,
        input_specs=_ports(info.inputs),
        output_specs=_ports(info.outputs),
        icon_svg=info.icon_svg,
        category=enum_value(pb.NodeCategory, "NODE_CATEGORY_", info.category),
        tags=[t for t in (enum_value(pb.NodeTag, "NODE_TAG_", tag) for tag in info.tags) if t],
    )


def profiling_stats(items: Iterable[NodeProfilingStats]) -> list[pb.NodeProfilingStats]:
    return [
        pb.NodeProfilingStats(
            node_name=item.node_name,
            stage=stage(item.stage),
            count=item.count,
            mean_ms=item.mean_ms,
            median_ms=item.median_ms,
            std_ms=item.std_ms,
            min_ms=item.min_ms,
            max_ms=item.max_ms,
            total_ms=item.total_ms,
            last_ms=item.last_ms,
        )
        for item in items
    ]
