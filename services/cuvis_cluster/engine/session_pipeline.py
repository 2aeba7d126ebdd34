"""A session's pipeline: build it from a config, install it, load and save its weights and config files."""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping
from typing import Any

import torch

from cuvis_cluster.engine import canonical, checkpoints, configs, schemas
from cuvis_cluster.engine.pipeline import Pipeline
from cuvis_cluster.engine.roots import Roots, atomic_write, yaml_bytes
from cuvis_cluster.engine.sessions import Session
from cuvis_cluster.engine.types import PipelineMetadata, SavedPipeline, TensorSpecInfo
from cuvis_cluster.engine.weights import read_weights, weights_bytes
from cuvis_cluster.errors import FailedPrecondition, InvalidArgument


def metadata_of(meta: Any) -> PipelineMetadata:
    """The :class:`PipelineMetadata` of a config's ``metadata`` block (defaults where it is malformed)."""
    try:
        model = schemas.PipelineMetadata.model_validate(meta or {})
    except Exception:
        model = schemas.PipelineMetadata()
    return from_mapping(model.model_dump(mode="json"))


def from_mapping(meta: Mapping[str, Any]) -> PipelineMetadata:
    """A metadata mapping (a pipeline's, or a validated block) as :class:`PipelineMetadata`."""
    tags = meta.get("tags") or []
    if isinstance(tags, str):
        tags = [tags]
    return PipelineMetadata(
        name=str(meta.get("name") or ""),
        description=str(meta.get("description") or ""),
        created=str(meta.get("created") or ""),
        tags=tuple(str(t) for t in tags),
        author=str(meta.get("author") or ""),
        cuvis_ai_version=str(meta.get("cuvis_ai_version") or ""),
    )


def build(session: Session, config: Any, device: torch.device) -> Pipeline:
    """A pipeline for ``config`` with the session's node registry, on ``device``, in eval mode.

    The pipeline's ``plugins:`` must be built in or loaded in the session (FailedPrecondition otherwise).
    """
    model = config if isinstance(config, schemas.PipelineConfig) else schemas.validate("pipeline", config)
    assert isinstance(model, schemas.PipelineConfig)
    session.registry.require_plugins(model.plugins)
    pipeline = Pipeline.from_config(model, session.registry)
    pipeline.to_device(device)
    pipeline.eval()
    return pipeline


def build_from_reference(session: Session, ref: str, roots: Roots, device: torch.device) -> Pipeline:
    """A pipeline from a config file named by ``ref`` (looked up in the session's search paths; an
    absolute path must lie inside the allowed roots, e.g. a resolved pipeline under the output root)."""
    data = configs.resolve(
        "pipeline", ref, [], session.search_paths, roots.allowed, output_dir=roots.output_dir
    )
    return build(session, data, device)


def install(session: Session, pipeline: Pipeline) -> None:
    """Make ``pipeline`` the session's (caller holds the write lock)."""
    if session.profiler is not None:
        pipeline.profiler = session.profiler
    session.pipeline = pipeline


def require(session: Session) -> Pipeline:
    """The session's pipeline; FailedPrecondition when none is loaded."""
    pipeline = session.pipeline
    if pipeline is None:
        raise FailedPrecondition(
            f"no pipeline is loaded in session {session.id}; call LoadPipeline "
            "(or SetTrainRunConfig with a pipeline) first"
        )
    return pipeline


def load(session: Session, config: bytes | str | Mapping[str, Any], device: torch.device) -> PipelineMetadata:
    """LoadPipeline: build the config and make it the session's; returns its metadata."""
    session.refuse_if_training("LoadPipeline")
    data = configs.parse_payload(config, "config")
    canonical.warn_old_dialect("pipeline", data, "LoadPipeline")
    pipeline = build(session, data, device)
    with session.mutating("LoadPipeline"):
        install(session, pipeline)
    return from_mapping(pipeline.metadata)


def load_weights(session: Session, roots: Roots, path: str | None, data: bytes | None, strict: bool) -> str:
    """LoadPipelineWeights from a server-side file (returns its resolved path) or from bytes (returns "")."""
    session.refuse_if_training("LoadPipelineWeights")
    if path and data:
        raise InvalidArgument(
            "weights_source: give weights_path or weights_bytes, not both", field="weights_source"
        )
    if not path and not data:
        raise InvalidArgument(
            "weights_source: weights_path or weights_bytes is required", field="weights_source"
        )
    require(session)
    resolved = ""
    if path:
        file = roots.find_file(path, [*session.search_paths, roots.output_dir], "weights_path", ".pt")
        payload = read_weights(file.read_bytes(), "weights_path")
        resolved = str(file)
    else:
        payload = read_weights(bytes(data or b""), "weights_bytes")
    with session.mutating("LoadPipelineWeights"):
        pipeline = require(session)
        pipeline.load_weights_payload(payload, strict=bool(strict))
        checkpoints.remember(pipeline, checkpoints.source_of(payload, resolved))
    return resolved


def _merged_metadata(current: Mapping[str, Any], given: PipelineMetadata | None) -> dict[str, Any]:
    """The pipeline's metadata with every non-empty field of ``given`` written over it."""
    meta = dict(current)
    if given is not None:
        for key, value in vars(given).items():
            if value not in (None, "", (), [], {}):
                meta[key] = list(value) if key == "tags" else value
    return meta


def save(session: Session, roots: Roots, path: str, metadata: PipelineMetadata | None) -> SavedPipeline:
    """SavePipeline: the config as YAML and the weights as ``.pt`` next to it, under the output root."""
    yaml_path = roots.output_file(path, "pipeline_path")
    pt_path = roots.sibling(yaml_path, f"{yaml_path.stem}.pt", "pipeline_path", path)
    with session.reading():
        session.refuse_if_training("SavePipeline")
        pipeline = require(session)
        meta = _merged_metadata(pipeline.metadata, metadata)
        if not meta.get("created"):
            meta["created"] = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
        if not meta.get("name"):
            meta["name"] = yaml_path.stem
        pipeline.metadata = meta
        config = pipeline.to_config()
        weights = weights_bytes(pipeline.weights_payload())
    atomic_write(yaml_path, yaml_bytes(config))
    atomic_write(pt_path, weights)
    return SavedPipeline(pipeline_path=str(yaml_path), weights_path=str(pt_path))


def inputs(session: Session) -> list[TensorSpecInfo]:
    with session.reading():
        return require(session).input_specs()


def outputs(session: Session) -> list[TensorSpecInfo]:
    with session.reading():
        return require(session).output_specs()
