"""Placement policy: least sessions, then most free device memory, among live non-draining workers."""

from __future__ import annotations

import grpc
import pytest

from cuvis_cluster.gateway.placement import NoWorker, PlacementPolicy
from cuvis_cluster.routing.membership import WorkerInfo
from cuvis_cluster.wire.status import status_for


def w(
    instance: str, sessions: int = 0, capacity: int = 4, free: int = 0, draining: bool = False
) -> WorkerInfo:
    return WorkerInfo(instance, f"10.0.0.{instance}:50051", capacity, sessions, "cpu", free, 0, draining)


def test_fewest_sessions_first():
    assert PlacementPolicy().choose([w("1", 3), w("2", 1), w("3", 2)]).instance == "2"


def test_then_most_free_device_memory():
    assert (
        PlacementPolicy().choose([w("1", 1, free=10), w("2", 1, free=30), w("3", 2, free=99)]).instance == "2"
    )


def test_ties_rotate_so_sessions_spread():
    policy = PlacementPolicy()
    picks = {policy.choose([w("1"), w("2")]).instance for _ in range(4)}
    assert picks == {"1", "2"}


def test_draining_and_full_workers_are_skipped():
    chosen = PlacementPolicy().choose([w("1", draining=True), w("2", 4, capacity=4), w("3", 3, capacity=4)])
    assert chosen.instance == "3"


def test_no_capacity_is_resource_exhausted_with_a_reason():
    with pytest.raises(NoWorker) as info:
        PlacementPolicy().choose([w("1", 4, capacity=4), w("2", draining=True)])
    assert status_for(info.value.error)[0] == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "1 at their session limit, 1 draining" in str(info.value)


def test_no_workers_is_unavailable():
    with pytest.raises(NoWorker) as info:
        PlacementPolicy().choose([])
    assert status_for(info.value.error)[0] == grpc.StatusCode.UNAVAILABLE


def test_the_policy_is_replaceable():
    class MostMemory(PlacementPolicy):
        def choose(self, workers):
            return max(self.candidates(workers), key=lambda x: x.device_free)

    assert MostMemory().choose([w("1", 0, free=1), w("2", 3, free=9)]).instance == "2"
