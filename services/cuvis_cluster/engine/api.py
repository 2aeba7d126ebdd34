"""What the worker's servicer may call on the engine: one method per RPC, plain values in and out.

:class:`~cuvis_cluster.engine.facade.Engine` implements it; tests and other front ends may pass anything
that does. The values are defined in :mod:`cuvis_cluster.engine.types`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, Protocol

from cuvis_cluster.engine.types import (
    InferenceResult,
    JsonObject,
    NodeInfo,
    NodeProfilingStats,
    PipelineEntry,
    PipelineMetadata,
    PluginInfo,
    PluginLoad,
    ProgressEvent,
    RestoredTrainRun,
    SavedPipeline,
    SavedTrainRun,
    SearchPaths,
    StopResult,
    TensorSpecInfo,
    TrainingCapabilities,
    ValidationResult,
    Visualization,
)


class TrainStream(Protocol):
    """A started train run as the servicer streams it (a :class:`~.training.run.TrainRun`)."""

    @property
    def error(self) -> BaseException | None: ...

    def __iter__(self) -> Iterator[ProgressEvent]: ...

    def cancel(self, reason: str = ...) -> None: ...


class EngineAPI(Protocol):
    # discovery
    def list_pipelines(self, filter_tag: str | None = None) -> list[PipelineEntry]: ...

    def pipeline_info(self, pipeline_path: str) -> PipelineEntry: ...

    # sessions
    def create_session(self, owner: str | None = None) -> str: ...

    def set_search_paths(self, session_id: str, paths: list[str], append: bool) -> SearchPaths: ...

    def close_session(self, session_id: str, owner: str | None = None) -> None: ...

    # configs
    def resolve_config(
        self, session_id: str | None, config_type: str, path: str, overrides: list[str] | None = None
    ) -> JsonObject: ...

    def parameter_schema(self, config_type: str) -> JsonObject: ...

    def validate_config(
        self, config_type: str, payload: bytes | str | Mapping[str, Any]
    ) -> ValidationResult: ...

    # pipelines
    def load_pipeline(self, session_id: str, config: bytes | str | Mapping[str, Any]) -> PipelineMetadata: ...

    def load_weights(
        self, session_id: str, path: str | None, data: bytes | None, strict: bool = True
    ) -> str: ...

    def save_pipeline(
        self, session_id: str, path: str, metadata: PipelineMetadata | None = None
    ) -> SavedPipeline: ...

    def pipeline_inputs(self, session_id: str) -> list[TensorSpecInfo]: ...

    def pipeline_outputs(self, session_id: str) -> list[TensorSpecInfo]: ...

    def visualize(
        self, session_id: str | None, fmt: str, config_content: str | bytes | None = None
    ) -> Visualization: ...

    # training
    def set_trainrun(self, session_id: str, config: bytes | str | Mapping[str, Any]) -> bool: ...

    def train(
        self,
        session_id: str,
        trainer_type: str,
        data: Mapping[str, Any] | bytes | str | None = None,
        training: Mapping[str, Any] | bytes | str | None = None,
    ) -> TrainStream: ...

    def stop_train(self, session_id: str, wait_seconds: float = 10.0) -> StopResult: ...

    def train_status(self, session_id: str) -> ProgressEvent | None: ...

    def training_capabilities(self) -> TrainingCapabilities: ...

    # train runs
    def save_trainrun(self, session_id: str, path: str, save_weights: bool = False) -> SavedTrainRun: ...

    def restore_trainrun(
        self,
        path: str,
        weights_path: str | None = None,
        strict: bool = True,
        session_id: str | None = None,
        owner: str | None = None,
    ) -> RestoredTrainRun: ...

    # inference
    def infer(
        self, session_id: str, inputs: Mapping[str, Any], output_filter: list[str] | None = None
    ) -> InferenceResult: ...

    # plugins
    def load_plugin(self, session_id: str, manifest: bytes) -> PluginLoad: ...

    def list_plugins(self, session_id: str) -> list[PluginInfo]: ...

    def plugin_info(self, session_id: str, name: str) -> PluginInfo: ...

    def list_nodes(self, session_id: str | None) -> list[NodeInfo]: ...

    def clear_plugin_cache(self, plugin_name: str | None = None) -> int: ...

    # profiling
    def set_profiling(
        self,
        session_id: str,
        enabled: bool,
        synchronize_cuda: bool | None = None,
        reset: bool | None = None,
        skip_first_n: int | None = None,
    ) -> bool: ...

    def profiling_summary(self, session_id: str, stage: str | None = None) -> list[NodeProfilingStats]: ...
