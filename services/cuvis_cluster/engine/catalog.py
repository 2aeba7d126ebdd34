"""The pipeline configs a worker ships (``configs_dir/pipeline``): ListAvailablePipelines, GetPipelineInfo."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from pathlib import Path

import yaml

from cuvis_cluster.engine.bounds import check_path, client_path, shown
from cuvis_cluster.engine.roots import inside
from cuvis_cluster.engine.session_pipeline import metadata_of
from cuvis_cluster.engine.types import PipelineEntry
from cuvis_cluster.errors import InvalidArgument, NotFound

log = logging.getLogger(__name__)


def _entry(root: Path, file: Path) -> PipelineEntry | None:
    """The entry for one YAML file; None when it is unreadable or not a pipeline config."""
    try:
        raw = yaml.safe_load(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        log.warning("skipping unreadable pipeline config %s", file)
        return None
    if not isinstance(raw, Mapping) or "nodes" not in raw:
        return None
    weights = file.with_suffix(".pt")
    return PipelineEntry(
        pipeline_path=file.relative_to(root).as_posix(),
        resolved_path=str(file),
        metadata=metadata_of(raw.get("metadata")),
        weights_path=str(weights) if weights.is_file() else "",
    )


def list_pipelines(root: Path, filter_tag: str | None = None) -> list[PipelineEntry]:
    """Every pipeline config below ``root`` (sorted), optionally only those tagged ``filter_tag``."""
    if not root.is_dir():
        return []
    real_root = root.resolve()
    tag = (filter_tag or "").strip().lower()
    out = []
    for file in sorted(root.rglob("*.yaml")):
        if not inside(file.resolve(), [real_root]) or not file.is_file():
            continue
        entry = _entry(root, file)
        if entry is None:
            continue
        if tag and tag not in (t.lower() for t in entry.metadata.tags):
            continue
        out.append(entry)
    return out


def pipeline_info(root: Path, pipeline_path: str) -> PipelineEntry:
    """The entry for ``pipeline_path`` (relative to ``root``, a leading ``pipeline/`` allowed), with the
    file's text."""
    text = (pipeline_path or "").strip()
    field = "pipeline_path"
    if not text:
        raise InvalidArgument(f"{field}: a path relative to the pipeline configs is required", field=field)
    check_path(text, field)
    with client_path(field, text):
        return _pipeline_info(root, text, field)


def _pipeline_info(root: Path, text: str, field: str) -> PipelineEntry:
    p = Path(text)
    if p.is_absolute() or "\\" in text or text.startswith("~"):
        raise InvalidArgument(f"{field}: {shown(text)} must be a relative '/'-separated path", field=field)
    if any(part in ("..", ".") for part in p.parts):
        raise InvalidArgument(f"{field}: {shown(text)} must not contain '.' or '..' components", field=field)
    if p.suffix not in (".yaml", ".yml"):
        raise InvalidArgument(f"{field}: {shown(text)} must name a .yaml file", field=field)
    candidates = [root / p]
    if p.parts[0] == "pipeline" and len(p.parts) > 1:
        candidates.append(root / Path(*p.parts[1:]))
    real_root = root.resolve()
    for cand in candidates:
        real = cand.resolve()
        if not inside(real, [real_root]):
            raise InvalidArgument(f"{field}: {shown(text)} escapes the pipeline configs root", field=field)
        if real.is_file():
            entry = _entry(root, cand)
            if entry is None:
                raise InvalidArgument(f"{field}: {shown(text)} is not a pipeline config", field=field)
            return dataclasses.replace(entry, yaml_content=real.read_text(encoding="utf-8"))
    raise NotFound(f"{field}: pipeline {shown(text)} not found", field=field)
