"""Plain data types that cross the engine boundary (shared by the facade, the trainers and the servicer)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch


@dataclass
class EngineConfig:
    """Built by the worker from ``WorkerSettings``."""

    configs_dir: Path
    data_dir: Path
    output_dir: Path
    plugin_dirs: list[Path] = field(default_factory=list)
    extra_roots: list[Path] = field(default_factory=list)
    # top-level packages whose cuvis_ai_core Node subclasses a pipeline may name by class_name
    class_packages: list[str] = field(default_factory=lambda: ["cuvis_ai"])
    max_sessions: int = 16
    idle_timeout_seconds: float = 3600.0
    device: str = "auto"  # auto | cpu | cuda
    # additive: how often the reaper looks for idle sessions
    reap_interval_seconds: float = 30.0


@dataclass
class TensorSpecInfo:
    name: str
    shape: tuple[int, ...]
    dtype: str
    required: bool


# A JSON document (a resolved config, a JSON schema): its shape is the config's, not the engine's.
JsonObject = dict[str, Any]


@dataclass(frozen=True)
class PipelineMetadata:
    """The metadata block of a pipeline config (``PipelineMetadata`` on the wire)."""

    name: str = ""
    description: str = ""
    created: str = ""
    tags: tuple[str, ...] = ()
    author: str = ""
    cuvis_ai_version: str = ""


@dataclass(frozen=True)
class PipelineEntry:
    """One pipeline config under ``configs_dir/pipeline`` (ListAvailablePipelines, GetPipelineInfo)."""

    pipeline_path: str  # relative to the pipeline configs root, '/'-separated
    resolved_path: str
    metadata: PipelineMetadata
    weights_path: str = ""  # the .pt next to it, when there is one
    yaml_content: str = ""  # only filled by GetPipelineInfo


@dataclass(frozen=True)
class SearchPaths:
    """SetSessionSearchPaths: the session's search paths after the call, and the inputs refused."""

    current: tuple[str, ...]
    rejected: tuple[str, ...]


@dataclass(frozen=True)
class ValidationResult:
    valid: bool
    errors: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class SavedPipeline:
    pipeline_path: str
    weights_path: str


@dataclass(frozen=True)
class SavedTrainRun:
    trainrun_path: str
    pipeline_path: str
    weights_path: str = ""  # empty when the weights were not saved


@dataclass(frozen=True)
class RestoredTrainRun:
    session_id: str
    config: JsonObject  # the resolved TrainRunConfig, pipeline inlined


@dataclass(frozen=True)
class InferenceResult:
    tensors: dict[str, torch.Tensor]  # "node.port" -> CPU tensor
    metrics: dict[str, float]  # scalar outputs and "node/metric" entries


@dataclass(frozen=True)
class StopResult:
    accepted: bool
    message: str


@dataclass(frozen=True)
class Visualization:
    image: bytes
    format: str


@dataclass(frozen=True)
class PluginLoad:
    """LoadPlugin: the registered name on success, or the error for a bad manifest or plugin."""

    name: str
    error: str


class TrainResources(Protocol):
    """What a trainer may use besides its pipeline and configs: the output root and data modules."""

    @property
    def output_dir(self) -> Path: ...

    def build_datamodule(self, data_config: Mapping[str, Any] | None) -> Any: ...


TERMINAL_STATUSES = frozenset({"complete", "error", "cancelled"})


@dataclass
class ProgressEvent:
    """One TrainResponse."""

    status: str  # "running" | "complete" | "error" | "cancelled"
    stage: str = "train"  # "train" | "val" | "test" | "inference"
    epoch: int = 0
    batch_idx: int = 0
    global_step: int = 0
    losses: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    message: str = ""
    hook: str | None = None
    split: str | None = None
    progress: tuple[int, int] | None = None
    epochs: tuple[int, int] | None = None
    node: str | None = None
    checkpoint: CheckpointRestore | None = None
    calibration: CalibrationOutcome | None = None
    evaluation: EvaluationOutcome | None = None
    calibration_pending: bool = False

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES


# --- training, plugins, profiling (boundary types) ---
# The engine builds these; the worker's messages module turns them into replies field by field, so a
# misspelt field is an error (for mypy and at runtime), never a silently empty string on the wire.


@dataclass(frozen=True)
class CheckpointRestore:
    """After fit: whether the best checkpoint was restored into the pipeline (``checkpoint_restored``)."""

    restored: bool
    path: str
    epoch: int
    monitor: str
    reason: str
    score: float | None = None  # the monitored value of the restored checkpoint, when known


@dataclass(frozen=True)
class ThresholdChange:
    """One threshold of a decider: its value before calibration and the value it holds afterwards."""

    before: float | None
    after: float


@dataclass(frozen=True)
class DeciderCalibration:
    """What calibration did to one decider."""

    name: str
    class_name: str
    status: str  # "calibrated" | "skipped"
    skip: str  # "none" | "nothing_wired" | "no_scores" | "calibrate_failed" | "no_report"
    skip_detail: str
    thresholds: Mapping[str, ThresholdChange]
    metrics: Mapping[str, float]  # "<metric>_before" / "<metric>_after"
    thresholds_present: bool


@dataclass(frozen=True)
class CalibrationOutcome:
    """The calibration phase on one split (``calibration_end``)."""

    split: str
    applicable: bool
    phase_skip: str  # "none" | "no_split" | "inference_failed" | "ambiguous_mask" | "single_class"
    phase_detail: str
    frames: int
    anomalous_frames: int
    deciders: tuple[DeciderCalibration, ...] = ()


@dataclass(frozen=True)
class EvaluationOutcome:
    """The pipeline evaluated on one split after fit (``evaluation_end``)."""

    split: str
    status: str  # "evaluated" | "no_split" | "failed"
    frames: int
    metrics: Mapping[str, float] = field(default_factory=dict)
    error: str = ""


@dataclass(frozen=True)
class ParamSpec:
    """One configurable parameter (GetTrainingCapabilities); ``default_value`` is JSON text or ""."""

    name: str
    type: str
    required: bool
    default_value: str
    description: str
    validation: str


@dataclass(frozen=True)
class CallbackInfo:
    """One Lightning callback type a TrainingConfig can configure."""

    type: str
    description: str
    parameters: tuple[ParamSpec, ...]


@dataclass(frozen=True)
class TrainingCapabilities:
    """GetTrainingCapabilities: what the gradient trainer can build."""

    optimizers: tuple[str, ...]
    schedulers: tuple[str, ...]
    callbacks: tuple[CallbackInfo, ...] = ()
    optimizer_params: tuple[ParamSpec, ...] = ()
    scheduler_params: tuple[ParamSpec, ...] = ()
    optimizer_descriptions: Mapping[str, str] = field(default_factory=dict)
    scheduler_descriptions: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class PluginInfo:
    """One plugin loaded into a session."""

    name: str
    type: str  # "local"
    source: str
    tag: str
    capabilities: tuple[str, ...]  # the node types it registered


@dataclass(frozen=True)
class PortSpec:
    """One input or output of a node type as discovery reports it (symbolic dims are -1)."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    optional: bool
    description: str
    variadic: bool = False


@dataclass(frozen=True)
class NodeInfo:
    """One node type a session can instantiate (ListAvailableNodes)."""

    class_name: str
    full_path: str
    source: str  # "builtin" | "plugin"
    plugin_name: str
    inputs: Mapping[str, PortSpec]
    outputs: Mapping[str, PortSpec]
    category: str
    tags: tuple[str, ...]
    description: str = ""
    icon_svg: bytes = b""


@dataclass(frozen=True)
class NodeProfilingStats:
    """Timing statistics of one (node, stage), in milliseconds."""

    node_name: str
    stage: str
    count: int
    mean_ms: float
    median_ms: float
    std_ms: float
    min_ms: float
    max_ms: float
    total_ms: float
    last_ms: float
