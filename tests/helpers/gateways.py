"""Starting the gateway tests' servers: a stand-in worker (``tests/gateway/standin_worker.py``: a real
grpc server with the real cluster membership) and ``cuvis-gateway``, each a real process on 127.0.0.1.

Used by ``tests/gateway`` (through its conftest) and by ``tests/fuzz``.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import grpc

from cuvis_cluster.wire.gen.cuvis_cluster.internal.v1 import control_pb2, control_pb2_grpc
from helpers import procs

STANDIN = Path(__file__).resolve().parents[1] / "gateway" / "standin_worker.py"
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


@contextlib.contextmanager
def standin_gateways(
    workdir: Path, gateways: dict[str, Sequence[str]]
) -> Iterator[dict[str, procs.ServerProcess]]:
    """redis-server, one stand-in worker, and a gateway per entry of ``gateways`` (name -> its extra
    arguments), each serving once it sees the worker; all stopped, newest first, on the way out."""
    redis = procs.start_redis(workdir)
    url = f"redis://{redis.address}/0"
    servers = [redis]
    try:
        servers.append(start_standin(workdir, url, "worker"))
        started: dict[str, procs.ServerProcess] = {}
        for name, args in gateways.items():
            started[name] = start_gateway(workdir, url, name, *args)
            servers.append(started[name])
        for gateway in started.values():
            wait_workers(gateway.address, 1)
        yield started
    finally:
        for server in reversed(servers):
            server.stop()
