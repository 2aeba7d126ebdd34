"""Fixtures for the gateway tests: real redis-server, stand-in (or real) workers, real gateways.

The starters live in :mod:`helpers.gateways` (the fuzz tests use them too); the test modules here
import them from this conftest.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from helpers import procs
from helpers.gateways import (
    HEARTBEAT_TTL,
    STANDIN,
    list_workers,
    start_gateway,
    start_standin,
    wait_workers,
)

__all__ = [
    "HEARTBEAT_TTL",
    "STANDIN",
    "Cluster",
    "list_workers",
    "start_gateway",
    "start_standin",
    "wait_workers",
]


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
