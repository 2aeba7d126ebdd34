"""Fixtures for tests that talk to a real ``cuvis-worker`` process over gRPC."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from helpers import procs
from helpers.cuvis import statistically_trained

from cuvis_cluster.wire.pb import pb, pb_grpc


@pytest.fixture(scope="module")
def worker(tmp_path_factory) -> Iterator[procs.ServerProcess]:
    """One worker per test module (CPU, default limits)."""
    server = procs.start_worker(tmp_path_factory.mktemp("worker"), "--device", "cpu")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def stub(worker) -> pb_grpc.CuvisAIServiceStub:
    return pb_grpc.CuvisAIServiceStub(worker.channel())


@pytest.fixture(scope="module")
def trained_session(stub) -> Iterator[str]:
    """A module-wide session holding a statistically trained RX pipeline."""
    session_id = stub.CreateSession(pb.CreateSessionRequest()).session_id
    statistically_trained(stub, session_id)
    yield session_id
    try:
        stub.CloseSession(pb.CloseSessionRequest(session_id=session_id))
    except grpc.RpcError:
        pass
