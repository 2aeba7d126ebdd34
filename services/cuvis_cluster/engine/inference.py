"""Inference: check the inputs against the pipeline's ports, run it, and sort its outputs into tensors and
scalar metrics."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from cuvis_cluster.engine import session_pipeline
from cuvis_cluster.engine.nodes.base import TORCH_DTYPES, Stage
from cuvis_cluster.engine.pipeline import Pipeline, dtype_name
from cuvis_cluster.engine.sessions import Session
from cuvis_cluster.engine.types import InferenceResult
from cuvis_cluster.errors import InvalidArgument, ResourceExhausted

log = logging.getLogger(__name__)


def check_inputs(pipeline: Pipeline, batch: Mapping[str, Any]) -> None:
    """InvalidArgument naming the input when ``batch`` misses a required input or does not fit a port
    (dtype, rank, fixed sizes)."""
    for spec in pipeline.input_specs():
        if spec.required and batch.get(spec.name) is None:
            needers = ", ".join(n for n, _ in pipeline.input_ports_for(spec.name))
            raise InvalidArgument(
                f"inputs.{spec.name}: missing required input (needed by node {needers})",
                field=f"inputs.{spec.name}",
            )
    required = {spec.name for spec in pipeline.input_specs() if spec.required}
    for key, value in batch.items():
        if not isinstance(value, torch.Tensor):
            continue
        if key in required and value.dim() > 0 and 0 in value.shape:
            raise InvalidArgument(
                f"inputs.{key}: has an empty dimension (shape {tuple(value.shape)}); every dimension "
                "must be at least 1",
                field=f"inputs.{key}",
            )
        if key == "cube" and (value.dtype == torch.bool or value.is_complex()):
            raise InvalidArgument(
                "inputs.cube: expected a numeric dtype (uint16, float32, ...), "
                f"got {dtype_name(value.dtype)}",
                field="inputs.cube",
            )
        ports = pipeline.input_ports_for(key)
        for node_name, port in ports:
            if port.dtype != "any" and port.dtype in TORCH_DTYPES and TORCH_DTYPES[port.dtype] != value.dtype:
                raise InvalidArgument(
                    f"inputs.{key}: expected dtype {port.dtype}, got {dtype_name(value.dtype)} "
                    f"(input {key!r} of node {node_name!r})",
                    field=f"inputs.{key}",
                )
        if not ports:
            continue
        ranks = {len(p.shape) for _, p in ports}
        if len(ranks) == 1 and key == "cube" and value.dim() not in ranks:
            rank = ranks.pop()
            raise InvalidArgument(
                f"inputs.{key}: expected {rank} dimensions ([B,H,W,C]), got shape {tuple(value.shape)}",
                field=f"inputs.{key}",
            )
        for dim, (size, where) in pipeline.fixed_sizes(key, value.dim()).items():
            if value.shape[dim] != size:
                what = (
                    "channels"
                    if dim == value.dim() - 1 and value.dim() >= 3
                    else f"entries in dimension {dim}"
                )
                raise InvalidArgument(
                    f"inputs.{key}: expected {size} {what}, got {value.shape[dim]} (required by {where})",
                    field=f"inputs.{key}",
                )


def _wanted_outputs(pipeline: Pipeline, output_filter: list[str] | None) -> list[str]:
    """The stripped output filter; InvalidArgument when an entry matches no output ("node.port" or "port")."""
    wanted = [f.strip() for f in (output_filter or []) if f and f.strip()]
    if wanted:
        names = [s.name for s in pipeline.output_specs()]
        ports = {n.split(".", 1)[1] for n in names}
        unknown = [f for f in wanted if f not in names and f not in ports]
        if unknown:
            raise InvalidArgument(
                f"output_specs: {', '.join(map(repr, unknown))} match no output; outputs: {', '.join(names)}",
                field="output_specs",
            )
    return wanted


def infer(
    session: Session, inputs: Mapping[str, Any], output_filter: list[str] | None = None
) -> InferenceResult:
    """One forward pass in INFERENCE; outputs filtered by "node.port" or port name (none: all)."""
    with session.reading():
        # A running trainer updates buffers in place (statistical init, EMA centres): refuse rather
        # than answer from a half-fitted model.
        session.refuse_if_training("Inference")
        pipeline = session_pipeline.require(session)
    batch = {k: v for k, v in inputs.items() if v is not None}
    check_inputs(pipeline, batch)
    wanted = _wanted_outputs(pipeline, output_filter)
    try:
        with session.reading(), torch.no_grad():
            session.refuse_if_training("Inference")
            raw = pipeline(batch, Stage.INFERENCE)
    except torch.OutOfMemoryError as exc:
        raise ResourceExhausted(f"inference ran out of memory: {str(exc).splitlines()[0]}") from None
    tensors: dict[str, torch.Tensor] = {}
    metrics: dict[str, float] = {}
    for key, value in raw.items():
        if wanted and key not in wanted and key.split(".", 1)[1] not in wanted:
            continue
        collect(key, value, tensors, metrics)
    return InferenceResult(tensors, metrics)


def collect(key: str, value: Any, tensors: dict[str, torch.Tensor], metrics: dict[str, float]) -> None:
    """Sort one forward output into tensors (CPU) and scalar metrics."""
    node = key.split(".", 1)[0]
    if isinstance(value, torch.Tensor):
        if value.dim() == 0 and value.dtype != torch.bool:
            metrics[key] = float(value.detach().cpu())
        else:
            tensors[key] = value.detach().cpu().contiguous()
    elif isinstance(value, bool):
        tensors[key] = torch.tensor(value)
    elif isinstance(value, int | float):
        metrics[key] = float(value)
    elif isinstance(value, np.ndarray):
        if value.ndim == 0 and value.dtype != np.bool_:
            metrics[key] = float(value)
        else:
            tensors[key] = torch.from_numpy(np.ascontiguousarray(value))
    elif isinstance(value, Mapping):  # a "metrics" port: {name: 0-d tensor}
        for name, item in value.items():
            if isinstance(item, torch.Tensor) and item.numel() == 1 and item.dtype != torch.bool:
                metrics[f"{node}/{name}"] = float(item.detach().cpu().reshape(()))
            elif isinstance(item, int | float) and not isinstance(item, bool):
                metrics[f"{node}/{name}"] = float(item)
    elif isinstance(value, list | tuple):
        try:
            tensors[key] = torch.as_tensor(value).cpu()
        except (TypeError, ValueError, RuntimeError):
            log.debug("dropping output %s: not convertible to a tensor", key)
