"""Fixtures of the SDK/CLI unit tests: a real gRPC server with scripted behaviour (``fake_server.py``)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fake_server import FakeServer

from cuvis_cluster.client import connect


@pytest.fixture
def fake():
    server = FakeServer().start()
    yield server
    server.stop()


@pytest.fixture
def client(fake):
    with connect(fake.address, timeout=10) as c:
        yield c
