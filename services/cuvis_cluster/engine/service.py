"""The dataplane facade (skeleton; being filled in)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from cuvis_cluster.errors import CuvisError, Unimplemented
from cuvis_cluster.engine.types import EngineConfig, ProgressEvent, TensorSpecInfo

__all__ = ["Engine", "EngineConfig", "ProgressEvent", "TensorSpecInfo", "TrainRun"]


class TrainRun:
    error: CuvisError | None = None

    def __iter__(self) -> Iterator[ProgressEvent]:
        raise Unimplemented("not yet")

    def cancel(self, reason: str = "cancelled by client") -> None:
        raise Unimplemented("not yet")


def _todo(*_a: Any, **_k: Any) -> Any:
    raise Unimplemented("engine method not implemented yet")


class Engine:
    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.device = torch.device("cpu")
        self.sessions = None

    def start(self) -> None: ...
    def shutdown(self) -> None: ...

    create_session = close_session = set_search_paths = _todo
    resolve_config = parameter_schema = validate_config = _todo
    load_pipeline = load_weights = save_pipeline = pipeline_inputs = pipeline_outputs = _todo
    list_pipelines = pipeline_info = visualize = _todo
    set_trainrun = train = stop_train = train_status = training_capabilities = _todo
    save_trainrun = restore_trainrun = infer = _todo
    load_plugin = list_plugins = plugin_info = list_nodes = clear_plugin_cache = _todo
    set_profiling = profiling_summary = _todo
