"""Translation between the engine's plain Python values and ``cuvis_ai.v1`` messages.

Pure functions, no grpc: the servicer calls them on the way in and out. Enum values are looked up by
name (``"statistical"`` -> ``TRAINER_TYPE_STATISTICAL``), so the engine never sees a wire number and an
unknown name degrades to the enum's UNSPECIFIED value instead of failing a reply.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from typing import Any

from cuvis_cluster.errors import InvalidArgument
from cuvis_cluster.wire import codec
from cuvis_cluster.wire.pb import pb

TRAINER_TYPES: dict[int, str] = {
    pb.TRAINER_TYPE_STATISTICAL: "statistical",
    pb.TRAINER_TYPE_GRADIENT: "gradient",
    pb.TRAINER_TYPE_CALIBRATION: "calibration",
}
STAGE_TO_WIRE: dict[str, int] = {
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
TRAIN_STATUS: dict[str, int] = {
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


def enum_value(enum: Any, prefix: str, name: str | None) -> int:
    """``enum_value(pb.TrainHook, "TRAIN_HOOK_", "fit_start")`` -> ``TRAIN_HOOK_FIT_START``; 0 if unknown."""
    if not name:
        return 0
    try:
        return enum.Value(prefix + str(name).upper())
    except ValueError:
        return 0


def stage(name: str | None) -> int:
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
    """Parse an optional JSON config field: empty -> None, malformed or non-object -> InvalidArgument."""
    if not payload:
        return None
    try:
        value = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidArgument(f"{field}: not valid UTF-8 JSON: {exc}", field=field) from exc
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


def metadata_dict(meta: pb.PipelineMetadata) -> dict[str, Any]:
    return {
        "name": meta.name,
        "description": meta.description,
        "created": meta.created,
        "cuvis_ai_version": meta.cuvis_ai_version,
        "tags": list(meta.tags),
        "author": meta.author,
    }


# -------------------------------------------------------------------------------------------------
# engine -> replies


def pipeline_metadata(meta: Mapping[str, Any] | None) -> pb.PipelineMetadata:
    meta = meta or {}
    tags = meta.get("tags") or []
    if isinstance(tags, str):
        tags = [tags]
    return pb.PipelineMetadata(
        name=str(meta.get("name") or ""),
        description=str(meta.get("description") or ""),
        created=str(meta.get("created") or ""),
        cuvis_ai_version=str(meta.get("cuvis_ai_version") or ""),
        tags=[str(t) for t in tags],
        author=str(meta.get("author") or ""),
    )


def pipeline_info(info: Mapping[str, Any]) -> pb.PipelineInfo:
    return pb.PipelineInfo(
        pipeline_path=str(info.get("pipeline_path") or ""),
        resolved_path=str(info.get("resolved_path") or ""),
        metadata=pipeline_metadata(info.get("metadata")),
        weights_path=str(info.get("weights_path") or ""),
        yaml_content=str(info.get("yaml_content") or ""),
    )


def tensor_spec(spec: Any) -> pb.TensorSpec:
    return pb.TensorSpec(
        name=spec.name,
        shape=[int(d) if isinstance(d, int) else -1 for d in spec.shape],
        dtype=codec.spec_dtype(spec.dtype),
        required=bool(spec.required),
    )


def progress(event: Any) -> pb.TrainResponse:
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


def train_event(event: Any) -> pb.TrainEvent | None:
    has_detail = any(
        getattr(event, name, None)
        for name in ("hook", "split", "progress", "epochs", "node", "checkpoint", "calibration", "evaluation")
    )
    if not has_detail and not event.calibration_pending:
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
    if event.checkpoint:
        out.checkpoint.CopyFrom(checkpoint(event.checkpoint))
    if event.calibration:
        out.calibration.CopyFrom(calibration(event.calibration))
    if event.evaluation:
        out.evaluation.CopyFrom(evaluation(event.evaluation))
    return out


def checkpoint(info: Mapping[str, Any]) -> pb.CheckpointRestored:
    out = pb.CheckpointRestored(
        restored=bool(info.get("restored")),
        path=str(info.get("path") or ""),
        epoch=int(info.get("epoch") or 0),
        monitor=str(info.get("monitor") or ""),
        reason=str(info.get("reason") or ""),
    )
    score = info.get("score")
    if score is not None and math.isfinite(float(score)):
        out.score = float(score)
    return out


def calibration(info: Mapping[str, Any]) -> pb.CalibrationOutcome:
    return pb.CalibrationOutcome(
        split=stage(info.get("split")),
        applicable=bool(info.get("applicable")),
        phase_skip=enum_value(pb.CalibrationPhaseSkip, "CALIBRATION_PHASE_SKIP_", info.get("phase_skip")),
        phase_detail=str(info.get("phase_detail") or ""),
        frames=int(info.get("frames") or 0),
        anomalous_frames=int(info.get("anomalous_frames") or 0),
        deciders=[decider(d) for d in info.get("deciders") or []],
    )


def decider(info: Mapping[str, Any]) -> pb.DeciderCalibration:
    thresholds = {}
    for name, change in (info.get("thresholds") or {}).items():
        item = pb.ThresholdChange(after=float(change.get("after") or 0.0))
        if change.get("before") is not None:
            item.before = float(change["before"])
        thresholds[str(name)] = item
    return pb.DeciderCalibration(
        name=str(info.get("name") or ""),
        class_name=str(info.get("class_name") or ""),
        status=enum_value(pb.DeciderCalibrationStatus, "DECIDER_CALIBRATION_STATUS_", info.get("status")),
        skip=enum_value(pb.DeciderSkip, "DECIDER_SKIP_", info.get("skip")),
        skip_detail=str(info.get("skip_detail") or ""),
        thresholds=thresholds,
        metrics=floats(info.get("metrics")),
        thresholds_present=bool(info.get("thresholds_present")),
    )


def evaluation(info: Mapping[str, Any]) -> pb.EvaluationOutcome:
    return pb.EvaluationOutcome(
        split=stage(info.get("split")),
        status=enum_value(pb.EvaluationStatus, "EVALUATION_STATUS_", info.get("status")),
        frames=int(info.get("frames") or 0),
        metrics=floats(info.get("metrics")),
        error=str(info.get("error") or ""),
    )


def param_spec(info: Mapping[str, Any]) -> pb.ParamSpec:
    default = info.get("default_value", info.get("default"))
    return pb.ParamSpec(
        name=str(info.get("name") or ""),
        type=str(info.get("type") or ""),
        required=bool(info.get("required")),
        default_value="" if default is None else str(default),
        description=str(info.get("description") or ""),
        validation=str(info.get("validation") or ""),
    )


def capabilities(caps: Mapping[str, Any]) -> pb.GetTrainingCapabilitiesResponse:
    return pb.GetTrainingCapabilitiesResponse(
        supported_optimizers=[str(o) for o in caps.get("optimizers") or []],
        supported_schedulers=[str(s) for s in caps.get("schedulers") or []],
        supported_callbacks=[
            pb.CallbackTypeInfo(
                type=str(cb.get("type") or ""),
                description=str(cb.get("description") or ""),
                parameters=[param_spec(p) for p in cb.get("parameters") or []],
            )
            for cb in caps.get("callbacks") or []
        ],
        optimizer_params=pb.OptimizerParamsSchema(
            parameters=[param_spec(p) for p in caps.get("optimizer_params") or []]
        ),
        scheduler_params=pb.SchedulerParamsSchema(
            parameters=[param_spec(p) for p in caps.get("scheduler_params") or []]
        ),
    )


def plugin_info(info: Mapping[str, Any]) -> pb.PluginInfo:
    return pb.PluginInfo(
        name=str(info.get("name") or ""),
        type=str(info.get("type") or ""),
        source=str(info.get("source") or ""),
        tag=str(info.get("tag") or ""),
        capabilities=[str(c) for c in info.get("capabilities") or []],
    )


def _port_spec(name: str, port: Any) -> pb.PortSpec:
    if not isinstance(port, Mapping):  # a nodes.base.Port
        port = {
            "dtype": getattr(port, "wire_dtype", getattr(port, "dtype", "float32")),
            "shape": getattr(port, "shape", ()),
            "optional": getattr(port, "optional", False),
            "description": getattr(port, "description", ""),
        }
    dtype = str(port.get("dtype") or "float32")
    return pb.PortSpec(
        name=str(port.get("name") or name),
        dtype=codec.spec_dtype("float32" if dtype == "any" else dtype),
        shape=[int(d) if isinstance(d, int) else -1 for d in port.get("shape") or ()],
        optional=bool(port.get("optional")),
        description=str(port.get("description") or ""),
        variadic=bool(port.get("variadic")),
    )


def _ports(ports: Any) -> dict[str, pb.PortSpec]:
    if isinstance(ports, Mapping):
        return {str(name): _port_spec(str(name), port) for name, port in ports.items()}
    return {str(p["name"]): _port_spec(str(p["name"]), p) for p in ports or []}


def node_info(info: Mapping[str, Any]) -> pb.NodeInfo:
    icon = info.get("icon_svg") or b""
    return pb.NodeInfo(
        class_name=str(info.get("class_name") or ""),
        full_path=str(info.get("full_path") or info.get("class_name") or ""),
        source=str(info.get("source") or ""),
        plugin_name=str(info.get("plugin_name") or ""),
        input_specs=_ports(info.get("inputs", info.get("input_specs"))),
        output_specs=_ports(info.get("outputs", info.get("output_specs"))),
        icon_svg=icon.encode() if isinstance(icon, str) else bytes(icon),
        category=enum_value(pb.NodeCategory, "NODE_CATEGORY_", info.get("category")),
        tags=[t for t in (enum_value(pb.NodeTag, "NODE_TAG_", tag) for tag in info.get("tags") or []) if t],
    )


def profiling_stats(items: Iterable[Mapping[str, Any]]) -> list[pb.NodeProfilingStats]:
    out = []
    for item in items:
        out.append(
            pb.NodeProfilingStats(
                node_name=str(item.get("node_name") or item.get("node") or ""),
                stage=stage(item.get("stage")),
                count=int(item.get("count") or 0),
                **{
                    key: float(item.get(key) or 0.0)
                    for key in ("mean_ms", "median_ms", "std_ms", "min_ms", "max_ms", "total_ms", "last_ms")
                },
            )
        )
    return out
