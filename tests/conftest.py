"""Test-suite wide setup.

* makes ``tests/helpers`` importable as ``helpers`` from every test folder;
* ``session``: a fresh session on the folder's own ``stub`` fixture (a worker or gateway stub), closed
  afterwards unless the test closed it itself.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from cuvis_cluster.wire.pb import pb

_TESTS = str(Path(__file__).resolve().parent)
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)


@pytest.fixture
def session(stub) -> Iterator[str]:
    session_id = stub.CreateSession(pb.CreateSessionRequest()).session_id
    yield session_id
    try:
        stub.CloseSession(pb.CloseSessionRequest(session_id=session_id))
    except grpc.RpcError as exc:
        assert exc.code() == grpc.StatusCode.NOT_FOUND
