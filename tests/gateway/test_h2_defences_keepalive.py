"""Keepalive towards the workers: a hung (SIGSTOPped) worker is noticed within the keepalive timeout,
and a worker that is merely quiet during a long call is not disturbed by the PINGs.

Real processes: redis-server, a stand-in worker (a real grpc server), a real ``cuvis-gateway`` with
``--worker-keepalive-seconds 0.5 --worker-keepalive-timeout-seconds 1``.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import pytest
from conftest import start_gateway, start_standin, wait_workers
from helpers import procs

from cuvis_cluster.wire.gen.cuvis_ai.v1 import cuvis_ai_pb2 as pb
from cuvis_cluster.wire.gen.cuvis_ai.v1 import cuvis_ai_pb2_grpc as pb_grpc

KEEPALIVE_TIMEOUT = 1.0


@dataclass
class Setup:
    worker: procs.ServerProcess
    gateway: procs.ServerProcess


def start(tmp_path, *worker_args: str) -> Iterator[Setup]:
    redis = procs.start_redis(tmp_path)
    url = f"redis://{redis.address}/0"
    servers = [redis]
    try:
        servers.append(start_standin(tmp_path, url, "worker", *worker_args))
        servers.append(
            start_gateway(
                tmp_path,
                url,
                "gateway",
                "--worker-keepalive-seconds",
                "0.5",
                "--worker-keepalive-timeout-seconds",
                str(KEEPALIVE_TIMEOUT),
            )
        )
        wait_workers(servers[2].address, 1)
        yield Setup(servers[1], servers[2])
    finally:
        for server in reversed(servers):
            with_cont(server)
            server.stop()


def with_cont(server: procs.ServerProcess) -> None:
    if server.proc.poll() is None:
        os.kill(server.pid, signal.SIGCONT)


@pytest.fixture
def busy(tmp_path) -> Iterator[Setup]:
    yield from start(tmp_path, "--train-steps", "1000", "--train-interval", "0.1")


@pytest.fixture
def quiet(tmp_path) -> Iterator[Setup]:
    yield from start(tmp_path, "--train-steps", "2", "--train-interval", "4")


def test_a_stopped_worker_fails_its_calls_within_the_keepalive_timeout(busy):
    stub = pb_grpc.CuvisAIServiceStub(busy.gateway.channel())
    session = stub.CreateSession(pb.CreateSessionRequest()).session_id
    stream = stub.Train(pb.TrainRequest(session_id=session), timeout=60)
    next(stream)  # the call runs through the gateway
    os.kill(busy.worker.pid, signal.SIGSTOP)
    stopped = time.monotonic()
    try:
        with pytest.raises(grpc.RpcError) as info:
            for _ in stream:
                pass
        took = time.monotonic() - stopped
    finally:
        os.kill(busy.worker.pid, signal.SIGCONT)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE, info.value.details()
    assert "keepalive" in (info.value.details() or "")
    print(f"stopped worker noticed after {took:.2f} s")  # the figure the report quotes


def test_a_quiet_worker_keeps_its_long_call(quiet):
    # 4 s between messages: the gateway PINGs the quiet worker about 8 times per gap; a grpc server
    # must neither answer with GOAWAY (too many pings) nor be declared lost.
    stub = pb_grpc.CuvisAIServiceStub(quiet.gateway.channel())
    session = stub.CreateSession(pb.CreateSessionRequest()).session_id
    replies = list(stub.Train(pb.TrainRequest(session_id=session), timeout=60))
    assert replies[-1].status == pb.TRAIN_STATUS_COMPLETE
