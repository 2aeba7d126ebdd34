"""Profiling over gRPC: per-node, per-stage timings grow with Inference; reset, skip and stage filter work."""

from __future__ import annotations

import grpc
import pytest
from trainlib import frame, infer, prepared, rpc_code

from cuvis_cluster.wire.pb import pb

pytestmark = pytest.mark.integration

RX_NODES = {"data", "normalizer", "rx_detector", "logit", "decider"}


def summary(stub, session_id: str, stage=None) -> dict[str, pb.NodeProfilingStats]:
    request = pb.GetProfilingSummaryRequest(session_id=session_id)
    if stage is not None:
        request.stage = stage
    stats = stub.GetProfilingSummary(request).node_stats
    return {s.node_name: s for s in stats}


def test_profiling_counts_grow_with_inference_and_reset_works(stub, session):
    code = rpc_code(lambda: stub.SetProfiling(pb.SetProfilingRequest(session_id=session, enabled=True)))
    assert code == grpc.StatusCode.FAILED_PRECONDITION  # no pipeline yet
    prepared(stub, session, "rx_statistical")
    assert summary(stub, session) == {}

    assert stub.SetProfiling(pb.SetProfilingRequest(session_id=session, enabled=True)).profiling_enabled
    for _ in range(3):
        infer(stub, session, [frame(6)])
    first = summary(stub, session)
    assert set(first) >= RX_NODES
    for name in RX_NODES:
        stats = first[name]
        assert stats.stage == pb.EXECUTION_STAGE_INFERENCE and stats.count == 3
        assert 0 < stats.min_ms <= stats.median_ms <= stats.max_ms
        assert stats.min_ms <= stats.mean_ms <= stats.max_ms
        assert stats.total_ms == pytest.approx(3 * stats.mean_ms, rel=1e-6)
        assert stats.std_ms >= 0 and stats.last_ms > 0

    for _ in range(2):
        infer(stub, session, [frame(7)])
    assert all(summary(stub, session)[name].count == 5 for name in RX_NODES)
    assert summary(stub, session, pb.EXECUTION_STAGE_INFERENCE)["rx_detector"].count == 5
    assert summary(stub, session, pb.EXECUTION_STAGE_TRAIN) == {}  # stage filter

    # reset, then skip the first two calls of every node
    stub.SetProfiling(pb.SetProfilingRequest(session_id=session, enabled=True, reset=True, skip_first_n=2))
    assert summary(stub, session) == {}
    for _ in range(3):
        infer(stub, session, [frame(6)])
    assert summary(stub, session)["rx_detector"].count == 1

    # disabled: nothing more is recorded
    assert not stub.SetProfiling(pb.SetProfilingRequest(session_id=session, enabled=False)).profiling_enabled
    infer(stub, session, [frame(6)])
    assert summary(stub, session)["rx_detector"].count == 1

    code = rpc_code(
        lambda: stub.SetProfiling(pb.SetProfilingRequest(session_id=session, enabled=True, skip_first_n=-1))
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT


def test_training_stages_are_profiled_separately(stub, session):
    prepared(
        stub,
        session,
        "channel_selector",
        ["training.trainer.max_epochs=1", "unfreeze_nodes=[channel_selector]"],
    )
    stub.SetProfiling(pb.SetProfilingRequest(session_id=session, enabled=True))
    request = pb.TrainRequest(session_id=session, trainer_type=pb.TRAINER_TYPE_GRADIENT)
    assert list(stub.Train(request, timeout=300))[-1].status == pb.TRAIN_STATUS_COMPLETE
    train_stats = summary(stub, session, pb.EXECUTION_STAGE_TRAIN)
    val_stats = summary(stub, session, pb.EXECUTION_STAGE_VAL)
    assert train_stats["rx_detector"].count == 2  # two train batches
    assert val_stats["bce"].count >= 1 and "bce" not in summary(stub, session, pb.EXECUTION_STAGE_INFERENCE)
