"""Fixtures of the training/plugins/profiling tests: one real ``cuvis-worker`` for the whole folder.

The worker gets an allow-listed plugin root (``plugin_root``) that tests write tiny plugins into, and a
private output root. No ``--device`` flag: the worker trains on CUDA when the machine has it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import procs

from cuvis_cluster.wire.pb import pb_grpc


@pytest.fixture(scope="package")
def worker_dirs(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("training-worker")
    dirs = {
        "base": base,
        "plugins": base / "plugins",
        "outputs": base / "outputs",
        "outside": base / "outside",
    }
    for path in dirs.values():
        path.mkdir(parents=True, exist_ok=True)
    return dirs


@pytest.fixture(scope="package")
def worker(worker_dirs) -> Iterator[procs.ServerProcess]:
    server = procs.start_worker(
        worker_dirs["base"],
        "--plugin-dirs",
        str(worker_dirs["plugins"]),
        "--max-sessions",
        "32",
        output_dir=worker_dirs["outputs"],
    )
    yield server
    server.stop()


@pytest.fixture(scope="package")
def stub(worker) -> pb_grpc.CuvisAIServiceStub:
    return pb_grpc.CuvisAIServiceStub(worker.channel())


@pytest.fixture
def plugin_root(worker_dirs) -> Path:
    return worker_dirs["plugins"]


@pytest.fixture
def outside_root(worker_dirs) -> Path:
    return worker_dirs["outside"]
