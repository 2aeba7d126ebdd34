"""An in-process Engine for tests: the bundled configs, CPU, temporary data and output roots."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cuvis_cluster.engine.facade import Engine, EngineConfig

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@contextmanager
def bundled_engine(tmp_path: Path) -> Iterator[Engine]:
    """An Engine on ``configs/`` with ``tmp_path/data`` and ``tmp_path/outputs``; shut down afterwards."""
    (tmp_path / "data").mkdir()
    eng = Engine(
        EngineConfig(
            configs_dir=CONFIGS,
            data_dir=tmp_path / "data",
            output_dir=tmp_path / "outputs",
            plugin_dirs=[],
            extra_roots=[],
            max_sessions=8,
            device="cpu",
        )
    )
    try:
        yield eng
    finally:
        eng.shutdown()
