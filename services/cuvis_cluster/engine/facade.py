"""The dataplane facade: one method per RPC of ``cuvis_ai.v1.CuvisAIService``.

Protocol-free: plain Python and torch types in and out (the result types are in
:mod:`cuvis_cluster.engine.types`), only :mod:`cuvis_cluster.errors` raised for problems a user can cause.
The gRPC servicer decodes a request, calls one method here and encodes the result; what it may call is
:class:`cuvis_cluster.engine.api.EngineAPI`.

Each method looks up the session and delegates to the module that holds the work: path confinement in
:mod:`.roots`, a session's pipeline in :mod:`.session_pipeline`, the shipped pipeline configs in
:mod:`.catalog`, ValidateConfig in :mod:`.validation`, train runs in :mod:`.trainruns`, Inference in
:mod:`.inference`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

# Imported for its side effect: it registers the built-in node catalogue.
import cuvis_cluster.engine.nodes  # noqa: F401
from cuvis_cluster.engine import (
    catalog,
    configs,
    inference,
    schemas,
    session_pipeline,
    trainruns,
    validation,
)
from cuvis_cluster.engine import visualize as viz
from cuvis_cluster.engine.data import DataModule
from cuvis_cluster.engine.nodes.base import NodeRegistry
from cuvis_cluster.engine.plugins import PluginManager
from cuvis_cluster.engine.profiling import Profiler
from cuvis_cluster.engine.roots import Roots
from cuvis_cluster.engine.sessions import Session, SessionManager
from cuvis_cluster.engine.training.registry import capabilities
from cuvis_cluster.engine.training.run import TrainRun
from cuvis_cluster.engine.types import (
    EngineConfig,
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
from cuvis_cluster.errors import InvalidArgument

__all__ = ["Engine", "EngineConfig", "ProgressEvent", "TensorSpecInfo", "TrainRun", "pick_device"]


def pick_device(setting: str) -> torch.device:
    """The torch device for a ``device`` setting: ``auto`` (CUDA when there is one), ``cpu`` or ``cuda``."""
    choice = (setting or "auto").strip().lower()
    if choice == "cpu":
        return torch.device("cpu")
    if choice == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device=cuda was requested but CUDA is not available on this machine")
        return torch.device("cuda")
    if choice != "auto":
        raise ValueError(f"unknown device setting {setting!r}; use auto, cpu or cuda")
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


class Engine:
    """See the module docstring."""

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.roots = Roots(config)
        self.plugin_dirs = [Path(p).expanduser().resolve() for p in config.plugin_dirs]
        self.device = pick_device(config.device)
        self.sessions = SessionManager(
            max_sessions=config.max_sessions,
            idle_timeout_seconds=config.idle_timeout_seconds,
            reap_interval_seconds=config.reap_interval_seconds,
            default_search_paths=self.roots.default_search_paths,
            registry_factory=self._new_registry,
        )
        self._plugins: PluginManager | None = None

    def _new_registry(self) -> NodeRegistry:
        """A session's node registry: allow-listed class packages, hosted nodes' files under output_dir."""
        return NodeRegistry(packages=self.config.class_packages, output_root=self.roots.output_dir)

    # ----------------------------------------------------------------------------------------------
    # lifecycle and roots
    # ----------------------------------------------------------------------------------------------
    def start(self) -> None:
        self.sessions.start()

    def cancel_all_training(self, reason: str) -> int:
        """Cancel every running train run (worker shutdown); returns how many were running."""
        runs = [s.train_run for s in self.sessions.list() if s.train_run is not None and not s.train_run.done]
        for run in runs:
            run.cancel(reason)
        return len(runs)

    def shutdown(self) -> None:
        self.sessions.set_draining(True)
        self.sessions.stop()
        self.sessions.close_all()

    @property
    def output_dir(self) -> Path:
        """Where server-side files are written (part of :class:`~.types.TrainResources`)."""
        return self.roots.output_dir

    def build_datamodule(self, data_config: Mapping[str, Any] | None) -> DataModule:
        """The data module for a DataConfig (JSON form), confined to the data roots."""
        return self.roots.build_datamodule(data_config)

    def session(self, session_id: str, owner: str | None = None) -> Session:
        return self.sessions.get(session_id, owner)

    # ----------------------------------------------------------------------------------------------
    # sessions
    # ----------------------------------------------------------------------------------------------
    def create_session(self, owner: str | None = None) -> str:
        return self.sessions.create(owner).id

    def close_session(self, session_id: str, owner: str | None = None) -> None:
        self.sessions.close(session_id, owner)

    def set_search_paths(self, session_id: str, paths: list[str], append: bool) -> SearchPaths:
        session = self.session(session_id)
        accepted, rejected = self.roots.search_dirs(paths)
        current = [*session.search_paths, *accepted] if append else accepted
        current = list(dict.fromkeys(current))
        if not current:
            # Every path was rejected on a replace: keep the bundled configs rather than nothing.
            current = self.roots.default_search_paths()
        session.search_paths = current
        session.touch()
        return SearchPaths(current=tuple(str(p) for p in current), rejected=tuple(rejected))

    # ----------------------------------------------------------------------------------------------
    # configs
    # ----------------------------------------------------------------------------------------------
    def resolve_config(
        self, session_id: str | None, config_type: str, path: str, overrides: list[str] | None = None
    ) -> JsonObject:
        search = (
            list(self.session(session_id).search_paths) if session_id else self.roots.default_search_paths()
        )
        return configs.resolve(
            config_type,
            path,
            list(overrides or []),
            search,
            self.roots.allowed,
            output_dir=self.roots.output_dir,
        )

    def parameter_schema(self, config_type: str) -> JsonObject:
        return schemas.json_schema(config_type)

    def validate_config(self, config_type: str, payload: bytes | str | Mapping[str, Any]) -> ValidationResult:
        return validation.validate_config(config_type, payload)

    # ----------------------------------------------------------------------------------------------
    # pipelines
    # ----------------------------------------------------------------------------------------------
    def load_pipeline(self, session_id: str, config: bytes | str | Mapping[str, Any]) -> PipelineMetadata:
        return session_pipeline.load(self.session(session_id), config, self.device)

    def load_weights(self, session_id: str, path: str | None, data: bytes | None, strict: bool = True) -> str:
        return session_pipeline.load_weights(self.session(session_id), self.roots, path, data, strict)

    def save_pipeline(
        self, session_id: str, path: str, metadata: PipelineMetadata | None = None
    ) -> SavedPipeline:
        return session_pipeline.save(self.session(session_id), self.roots, path, metadata)

    def pipeline_inputs(self, session_id: str) -> list[TensorSpecInfo]:
        return session_pipeline.inputs(self.session(session_id))

    def pipeline_outputs(self, session_id: str) -> list[TensorSpecInfo]:
        return session_pipeline.outputs(self.session(session_id))

    def list_pipelines(self, filter_tag: str | None = None) -> list[PipelineEntry]:
        return catalog.list_pipelines(self.roots.pipeline_configs, filter_tag)

    def pipeline_info(self, pipeline_path: str) -> PipelineEntry:
        return catalog.pipeline_info(self.roots.pipeline_configs, pipeline_path)

    def visualize(
        self, session_id: str | None, fmt: str, config_content: str | bytes | None = None
    ) -> Visualization:
        if config_content:
            return Visualization(*viz.visualize_content(config_content, fmt))
        if not session_id:
            raise InvalidArgument("session_id or config_content is required", field="session_id")
        session = self.session(session_id)
        with session.reading():
            pipeline = session_pipeline.require(session)
            return Visualization(*viz.visualize_pipeline(pipeline, fmt))

    # ----------------------------------------------------------------------------------------------
    # training and train runs
    # ----------------------------------------------------------------------------------------------
    def set_trainrun(self, session_id: str, config: bytes | str | Mapping[str, Any]) -> bool:
        return trainruns.set_trainrun(self.session(session_id), config, self.roots, self.device)

    def train(
        self,
        session_id: str,
        trainer_type: str,
        data: Mapping[str, Any] | bytes | str | None = None,
        training: Mapping[str, Any] | bytes | str | None = None,
    ) -> TrainRun:
        return trainruns.start(
            self.session(session_id), trainer_type, data, training, self.roots, self.device
        )

    def stop_train(self, session_id: str, wait_seconds: float = 10.0) -> StopResult:
        return trainruns.stop(self.session(session_id), wait_seconds)

    def train_status(self, session_id: str) -> ProgressEvent | None:
        return self.session(session_id).last_event

    def training_capabilities(self) -> TrainingCapabilities:
        return capabilities()

    def save_trainrun(self, session_id: str, path: str, save_weights: bool = False) -> SavedTrainRun:
        return trainruns.save(self.session(session_id), self.roots, path, save_weights)

    def restore_trainrun(
        self,
        path: str,
        weights_path: str | None = None,
        strict: bool = True,
        session_id: str | None = None,
        owner: str | None = None,
    ) -> RestoredTrainRun:
        return trainruns.restore(
            self.sessions, self.roots, self.device, path, weights_path, strict, session_id, owner
        )

    # ----------------------------------------------------------------------------------------------
    # inference
    # ----------------------------------------------------------------------------------------------
    def infer(
        self, session_id: str, inputs: Mapping[str, Any], output_filter: list[str] | None = None
    ) -> InferenceResult:
        return inference.infer(self.session(session_id), inputs, output_filter)

    # ----------------------------------------------------------------------------------------------
    # plugins and profiling (implementations in engine/plugins.py and engine/profiling.py)
    # ----------------------------------------------------------------------------------------------
    @property
    def plugins(self) -> PluginManager:
        if self._plugins is None:
            self._plugins = PluginManager(self.plugin_dirs)
        return self._plugins

    def load_plugin(self, session_id: str, manifest: bytes) -> PluginLoad:
        session = self.session(session_id)
        session.refuse_if_training("LoadPlugin")
        name, error = self.plugins.load(session, manifest)
        return PluginLoad(name=name, error=error)

    def list_plugins(self, session_id: str) -> list[PluginInfo]:
        return self.plugins.list(self.session(session_id))

    def plugin_info(self, session_id: str, name: str) -> PluginInfo:
        return self.plugins.info(self.session(session_id), name)

    def list_nodes(self, session_id: str | None) -> list[NodeInfo]:
        session = self.session(session_id) if session_id else None
        return self.plugins.list_nodes(session)

    def clear_plugin_cache(self, plugin_name: str | None = None) -> int:
        return self.plugins.clear_cache(plugin_name or None)

    def _profiler(self, session: Session) -> Profiler:
        """The session's profiler (created on first use), attached to its pipeline."""
        profiler = session.profiler
        if profiler is None:
            profiler = session.profiler = Profiler()
        if session.pipeline is not None:
            session.pipeline.profiler = profiler
        return profiler

    def set_profiling(
        self,
        session_id: str,
        enabled: bool,
        synchronize_cuda: bool | None = None,
        reset: bool | None = None,
        skip_first_n: int | None = None,
    ) -> bool:
        session = self.session(session_id)
        session_pipeline.require(session)
        return self._profiler(session).configure(enabled, synchronize_cuda, reset, skip_first_n)

    def profiling_summary(self, session_id: str, stage: str | None = None) -> list[NodeProfilingStats]:
        session = self.session(session_id)
        session_pipeline.require(session)
        return self._profiler(session).summary(stage or None)
