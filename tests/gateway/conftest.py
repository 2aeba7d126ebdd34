"""Fixtures for the gateway tests: real redis-server, stand-in (or real) workers, real gateways."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from helpers import procs

from cuvis_cluster.wire.gen.cuvis_cluster.internal.v1 import control_pb2, control_pb2_grpc

STANDIN = Path(__file__).resolve().parent / "standin_worker.py"
# Short enough for quick failure tests, long enough for a heartbeat thread on a busy 2-core machine.
HEARTBEAT_TTL = "4"


def start_standin(
    workdir: Path, redis_url: str, name: str, *args: str, port: int | None = None, credentials=None
):
    port = port or procs.free_port()
    metrics_port = procs.free_port()
    argv = [
        sys.executable,
        str(STANDIN),
        "--listen",
        f"127.0.0.1:{port}",
        "--redis-url",
        redis_url,
        "--metrics-port",
        str(metrics_port),
        "--heartbeat-seconds",
        "0.5",
        "--heartbeat-ttl-seconds",
        HEARTBEAT_TTL,
        *args,
    ]
    return procs.start_server(
        argv,
        name=name,
        log_dir=workdir,
        address=f"127.0.0.1:{port}",
        metrics_port=metrics_port,
        timeout=60,
        credentials=credentials,
    )


def start_gateway(workdir: Path, redis_url: str, name: str, *args: str, wait: bool = True, credentials=None):
    port = procs.free_port()
    metrics_port = procs.free_port()
    argv = [
        str(procs.VENV_BIN / "cuvis-gateway"),
        "--listen",
        f"127.0.0.1:{port}",
        "--redis-url",
        redis_url,
        "--metrics-port",
        str(metrics_port),
        "--heartbeat-ttl-seconds",
        HEARTBEAT_TTL,
        "--grace-seconds",
        "3",
        *args,
    ]
    return procs.start_server(
        argv,
        name=name,
        log_dir=workdir,
        address=f"127.0.0.1:{port}",
        metrics_port=metrics_port,
        wait=wait,
        timeout=60,
        credentials=credentials,
    )


def list_workers(address: str, credentials=None) -> list:
    channel = grpc.secure_channel(address, credentials) if credentials else grpc.insecure_channel(address)
    try:
        stub = control_pb2_grpc.ClusterStatusServiceStub(channel)
        return list(stub.ListWorkers(control_pb2.ListWorkersRequest(), timeout=2).workers)
    except grpc.RpcError:
        return []
    finally:
        channel.close()


def wait_workers(address: str, n: int, timeout: float = 30.0, credentials=None) -> list:
    return procs.wait_for(
        lambda: (w := list_workers(address, credentials)) and len(w) == n and w,
        timeout=timeout,
        what=f"{n} workers registered",
    )


@dataclass
class Cluster:
    workdir: Path
    redis: procs.ServerProcess
    workers: list[procs.ServerProcess] = field(default_factory=list)
    gateways: list[procs.ServerProcess] = field(default_factory=list)

    @property
    def redis_url(self) -> str:
        return f"redis://{self.redis.address}/0"

    def stop(self) -> None:
        for server in [*self.gateways, *self.workers, self.redis]:
            server.stop()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[Cluster]:
    """Redis, two stand-in workers and two gateways, shared by a test module."""
    workdir = tmp_path_factory.mktemp("cluster")
    c = Cluster(workdir, procs.start_redis(workdir))
    try:
        for i in range(2):
            c.workers.append(start_standin(workdir, c.redis_url, f"worker{i}"))
        for name in ("gwA", "gwB"):
            c.gateways.append(start_gateway(workdir, c.redis_url, name))
        for gw in c.gateways:
            wait_workers(gw.address, 2)
        yield c
    finally:
        c.stop()
