"""Plain data types that cross the engine boundary (shared by the facade, the trainers and the servicer)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class EngineConfig:
    """Built by the worker from ``WorkerSettings``."""

    configs_dir: Path
    data_dir: Path
    output_dir: Path
    plugin_dirs: list[Path] = field(default_factory=list)
    extra_roots: list[Path] = field(default_factory=list)
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
    checkpoint: dict | None = None
    calibration: dict | None = None
    evaluation: dict | None = None
    calibration_pending: bool = False

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)
