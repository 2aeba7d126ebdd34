"""A real local cluster for the example and CLI tests: redis-server, workers and a gateway on loopback.

``module_cluster`` (registered by this folder's conftest.py) is module-scoped: every test of a module
shares one cluster. It is a ``cuvis_cluster.localcluster.LocalCluster`` when that API is importable,
otherwise the same processes started here through ``tests/helpers/procs.py``. :func:`start_cluster`
always starts the processes itself, so a test can kill and restart the gateway.

Every process is started through ``tests/helpers/procs.py`` (or ``LocalCluster``), in its own process
group and with a death signal, so an interrupted or killed test run leaves none behind.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from helpers.procs import (
    VENV_BIN,
    ServerProcess,
    free_port,
    kill_process_group,
    start_redis,
    start_server,
    start_worker,
    wait_for,
    wait_healthy,
)

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"


@dataclass
class Cluster:
    address: str
    workdir: Path
    output_dir: Path
    redis: ServerProcess | None = None
    workers: list[ServerProcess] = field(default_factory=list)
    gateway: ServerProcess | None = None
    _stack: contextlib.ExitStack | None = None

    def gateway_argv(self) -> list[str]:
        return [
            str(VENV_BIN / "cuvis-gateway"),
            "--listen",
            self.address,
            "--redis-url",
            f"redis://{self.redis.address}/0",
            "--grace-seconds",
            "2",
        ]

    def kill_gateway(self) -> None:
        assert self.gateway is not None, "this cluster's gateway is not managed by the test"
        kill_process_group(self.gateway.proc)

    def start_gateway(self, *, name: str = "gateway") -> ServerProcess:
        self.gateway = start_server(
            self.gateway_argv(), name=name, log_dir=self.workdir, address=self.address, timeout=90
        )
        return self.gateway

    def logs(self) -> str:
        procs = [p for p in [*self.workers, self.gateway] if p is not None]
        return "\n".join(f"--- {p.name} ---\n{p.log()[-4000:]}" for p in procs)

    def stop(self) -> None:
        for proc in [self.gateway, *self.workers, self.redis]:
            if proc is not None:
                proc.stop()
        if self._stack is not None:
            self._stack.close()


def _live_workers(address: str) -> int:
    from cuvis_cluster.client import connect, errors

    try:
        with connect(address, retry=False, timeout=2) as client:
            return len(client.list_workers())
    except errors.CuvisError:
        return 0


def start_cluster(workdir: Path, *, workers: int = 2, max_sessions: int = 8) -> Cluster:
    """Start redis, ``workers`` workers (in parallel) and a gateway; wait until the gateway sees them all."""
    workdir.mkdir(parents=True, exist_ok=True)
    output_dir = workdir / "outputs"  # shared by the workers, like the chart's shared outputs volume
    cluster = Cluster(address=f"127.0.0.1:{free_port()}", workdir=workdir, output_dir=output_dir)
    try:
        cluster.redis = start_redis(workdir)
        url = f"redis://{cluster.redis.address}/0"
        for i in range(workers):
            cluster.workers.append(
                start_worker(
                    workdir,
                    "--redis-url",
                    url,
                    "--max-sessions",
                    str(max_sessions),
                    name=f"worker{i}",
                    output_dir=output_dir,
                    metrics=False,
                    wait=False,
                )
            )
        for worker in cluster.workers:
            wait_healthy(worker)
        cluster.start_gateway()
        wait_for(lambda: _live_workers(cluster.address) == workers, timeout=60, what="all workers live")
    except BaseException:
        cluster.stop()
        raise
    return cluster


def local_cluster_api():
    """``cuvis_cluster.localcluster.LocalCluster`` when it exists, else None."""
    try:
        from cuvis_cluster.localcluster.supervisor import LocalCluster
    except ImportError:
        return None
    return LocalCluster


def _from_local_cluster(workdir: Path, workers: int) -> Cluster:
    local_cluster = local_cluster_api()
    output_dir = workdir / "outputs"  # shared by the workers, like the chart's shared outputs volume
    stack = contextlib.ExitStack()
    try:
        running = stack.enter_context(
            local_cluster(workers=workers, workdir=workdir, worker_args=["--output-dir", str(output_dir)])
        )
    except BaseException:
        stack.close()
        raise
    return Cluster(address=running.address, workdir=workdir, output_dir=output_dir, _stack=stack)


@pytest.fixture(scope="module")
def module_cluster(tmp_path_factory) -> Iterator[Cluster]:
    workdir = tmp_path_factory.mktemp("cluster")
    cluster = _from_local_cluster(workdir, 2) if local_cluster_api() else start_cluster(workdir, workers=2)
    try:
        yield cluster
    finally:
        cluster.stop()


def run_example(name: str, cluster: Cluster, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    """Run ``examples/<name>.py`` against the cluster as a user would (a subprocess, the venv's python)."""
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / f"{name}.py"), "--address", cluster.address, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=str(cluster.workdir),
        check=False,
    )
    proc.elapsed = time.monotonic() - started  # type: ignore[attr-defined]
    return proc
