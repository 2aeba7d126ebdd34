"""Our engine, in-process through the Engine facade (what the worker's gRPC servicer calls):
LoadPipeline (YAML as shipped), LoadPipelineWeights (.pt, strict), Inference, SavePipeline."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from cuvis_cluster.engine.facade import Engine, EngineConfig

REPO = Path(__file__).resolve().parents[2]


class Ours:
    """An Engine on CPU with temporary roots; ``extra`` directories (upstream's files) are readable."""

    def __init__(self, root: Path, extra: list[Path] | None = None) -> None:
        (root / "data").mkdir(parents=True, exist_ok=True)
        self.output_dir = root / "outputs"
        self.engine = Engine(
            EngineConfig(
                configs_dir=REPO / "configs",
                data_dir=root / "data",
                output_dir=self.output_dir,
                plugin_dirs=[],
                extra_roots=list(extra or []),
                max_sessions=64,
                device="cpu",
            )
        )

    def close(self) -> None:
        self.engine.shutdown()

    def __enter__(self) -> Ours:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def load(self, yaml_text: str) -> str:
        """A new session with the YAML loaded (as LoadPipeline receives it: the file's text)."""
        sid = self.engine.create_session()
        try:
            self.engine.load_pipeline(sid, yaml_text)
        except BaseException:
            self.engine.close_session(sid)
            raise
        return sid

    def load_weights(self, sid: str, path: Path, strict: bool = True) -> None:
        self.engine.load_weights(sid, str(path), None, strict)

    def infer(self, sid: str, batch: Mapping[str, torch.Tensor]) -> dict[str, Any]:
        """Every output: tensors by ``node.port`` plus scalar metrics."""
        result = self.engine.infer(sid, dict(batch), [])
        return {**result.tensors, **result.metrics}

    def save(self, sid: str, name: str) -> tuple[Path, Path]:
        saved = self.engine.save_pipeline(sid, str(self.output_dir / name), None)
        return Path(saved.pipeline_path), Path(saved.weights_path)

    def close_session(self, sid: str) -> None:
        self.engine.close_session(sid)
