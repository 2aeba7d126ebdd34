"""Test-suite wide setup.

* makes ``tests/helpers`` importable as ``helpers`` from every test folder;
* a SIGTERM to pytest unwinds like Ctrl-C, so fixtures stop the processes they started (their
  ``finally`` blocks run; children also die with pytest through their parent-death signal);
* ``session``: a fresh session on the folder's own ``stub`` fixture (a worker or gateway stub), closed
  afterwards unless the test closed it itself.
"""

from __future__ import annotations

import faulthandler
import os
import signal
import sys

# Before grpc is imported: no gRPC fork handlers in the test process, which starts servers with
# Popen(preexec_fn=...) while channels are busy (see cuvis_cluster/__init__.py).
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")
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


# pytest-timeout's signal method cannot interrupt a thread blocked in C (a fork waiting on a lock, say),
# nor a teardown that hangs after its alarm has fired. Past twice the per-test timeout, this backstop
# prints every thread's stack and ends the run, so that a hang fails in minutes instead of using up CI.
@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None):  # type: ignore[no-untyped-def]
    limit = float(item.config.getini("timeout") or 0) * 2
    if limit > 0:
        faulthandler.dump_traceback_later(limit, exit=True)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()


@pytest.fixture
def session(stub) -> Iterator[str]:
    session_id = stub.CreateSession(pb.CreateSessionRequest()).session_id
    yield session_id
    try:
        stub.CloseSession(pb.CloseSessionRequest(session_id=session_id))
    except grpc.RpcError as exc:
        assert exc.code() == grpc.StatusCode.NOT_FOUND
