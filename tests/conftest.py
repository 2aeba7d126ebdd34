"""Test-suite wide setup.

* makes ``tests/helpers`` importable as ``helpers`` from every test folder;
* a SIGTERM to pytest unwinds like Ctrl-C, so fixtures stop the processes they started (their
  ``finally`` blocks run; children also die with pytest through their parent-death signal);
* ``session``: a fresh session on the folder's own ``stub`` fixture (a worker or gateway stub), closed
  afterwards unless the test closed it itself.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from cuvis_cluster.wire.pb import pb

_TESTS = str(Path(__file__).resolve().parent)
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"pytest received {signal.Signals(signum).name}")


def pytest_configure(config: pytest.Config) -> None:
    signal.signal(signal.SIGTERM, _interrupt)


@pytest.fixture
def session(stub) -> Iterator[str]:
    session_id = stub.CreateSession(pb.CreateSessionRequest()).session_id
    yield session_id
    try:
        stub.CloseSession(pb.CloseSessionRequest(session_id=session_id))
    except grpc.RpcError as exc:
        assert exc.code() == grpc.StatusCode.NOT_FOUND
