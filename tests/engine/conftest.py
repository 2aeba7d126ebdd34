"""Fixtures shared by the engine tests: an Engine on the bundled configs, CPU, temporary roots."""

from __future__ import annotations

from pathlib import Path

import pytest

from cuvis_cluster.engine.facade import Engine, EngineConfig

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.fixture
def engine(tmp_path):
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
    yield eng
    eng.shutdown()
