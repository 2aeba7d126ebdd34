"""Routing through real gateways to (stand-in) workers over a real redis-server."""

from __future__ import annotations

import threading
import zlib

import grpc
import pytest
import redis
from conftest import list_workers, start_gateway, start_standin, wait_workers
from helpers import procs

from cuvis_cluster.routing import redis_schema as rs
from cuvis_cluster.wire.pb import pb, pb_grpc

pytestmark = pytest.mark.integration


def stub_of(server: procs.ServerProcess) -> pb_grpc.CuvisAIServiceStub:
    return pb_grpc.CuvisAIServiceStub(server.channel())


def worker_of(stub, session: str) -> str:
    metrics = stub.Inference(pb.InferenceRequest(session_id=session)).metrics
    return next(k for k in metrics if k.startswith("worker."))


def test_a_session_created_via_one_gateway_works_via_another(cluster):
    a, b = (stub_of(g) for g in cluster.gateways)
    session = a.CreateSession(pb.CreateSessionRequest()).session_id
    assert worker_of(b, session) == worker_of(a, session)
    b.CloseSession(pb.CloseSessionRequest(session_id=session))
    with pytest.raises(grpc.RpcError) as info:
        a.Inference(pb.InferenceRequest(session_id=session))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_sessions_spread_over_the_workers(cluster):
    a = stub_of(cluster.gateways[0])
    sessions = [a.CreateSession(pb.CreateSessionRequest()).session_id for _ in range(4)]
    try:
        holders = [worker_of(a, s) for s in sessions]
        assert len(set(holders)) == 2
        assert sorted(holders.count(h) for h in set(holders)) == [2, 2]
    finally:
        for s in sessions:
            a.CloseSession(pb.CloseSessionRequest(session_id=s))


def test_sessionless_calls_round_robin(cluster):
    a = stub_of(cluster.gateways[0])
    seen = {
        a.ListAvailablePipelines(pb.ListAvailablePipelinesRequest()).pipelines[0].pipeline_path
        for _ in range(4)
    }
    assert len(seen) == 2


def test_routes_live_in_redis_with_owner_and_instance(cluster):
    a = stub_of(cluster.gateways[0])
    session = a.CreateSession(pb.CreateSessionRequest()).session_id
    client = redis.Redis.from_url(cluster.redis_url, decode_responses=True)
    try:
        route = client.hgetall(rs.route_key(session))
        assert set(route) >= {"instance", "address", "owner", "created", "last_used"}
        assert route["address"] in [w.address for w in cluster.workers]
        assert 0 < client.pttl(rs.route_key(session)) <= 3600 * 1000
        a.CloseSession(pb.CloseSessionRequest(session_id=session))
        assert not client.exists(rs.route_key(session))
    finally:
        client.close()


def test_train_streams_through_the_gateway(cluster):
    b = stub_of(cluster.gateways[1])
    session = b.CreateSession(pb.CreateSessionRequest()).session_id
    events = list(b.Train(pb.TrainRequest(session_id=session)))
    assert events[-1].status == pb.TRAIN_STATUS_COMPLETE
    assert len(events) == 51
    b.CloseSession(pb.CloseSessionRequest(session_id=session))


def test_cancelling_train_at_the_client_cancels_it_on_the_worker(cluster):
    a = stub_of(cluster.gateways[0])
    session = a.CreateSession(pb.CreateSessionRequest()).session_id
    stream = a.Train(pb.TrainRequest(session_id=session))
    assert next(stream).status == pb.TRAIN_STATUS_RUNNING
    stream.cancel()

    def status():
        return a.GetTrainStatus(pb.GetTrainStatusRequest(session_id=session)).latest_progress.status

    procs.wait_for(lambda: status() == pb.TRAIN_STATUS_CANCELLED, timeout=10, what="worker-side cancellation")
    a.CloseSession(pb.CloseSessionRequest(session_id=session))


def test_large_inference_passes_unchanged(cluster):
    a = stub_of(cluster.gateways[0])
    session = a.CreateSession(pb.CreateSessionRequest()).session_id
    request = pb.InferenceRequest(session_id=session, output_specs=["crc"])
    request.inputs.cube.raw_data = bytes(range(256)) * (24 << 12)  # 24 MiB
    reply = a.Inference(request)
    assert list(reply.outputs["request"].shape) == [
        request.ByteSize(),
        zlib.crc32(request.inputs.cube.raw_data),
    ]
    a.CloseSession(pb.CloseSessionRequest(session_id=session))


def test_raw_bytes_and_concurrent_calls(cluster):
    """Many parallel calls on one connection, each with its own payload, all answered correctly."""
    channel = cluster.gateways[1].channel()
    a = pb_grpc.CuvisAIServiceStub(channel)
    sessions = [a.CreateSession(pb.CreateSessionRequest()).session_id for _ in range(2)]
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            for j in range(20):
                request = pb.InferenceRequest(
                    session_id=sessions[(i + j) % 2], output_specs=[str(i)] * (j + 1)
                )
                reply = a.Inference(request)
                assert reply.outputs["request"].shape[0] == request.ByteSize()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    for s in sessions:
        a.CloseSession(pb.CloseSessionRequest(session_id=s))


def test_gateway_statuses(cluster):
    channel = cluster.gateways[0].channel()
    a = pb_grpc.CuvisAIServiceStub(channel)
    cases = [
        (
            lambda: a.Inference(pb.InferenceRequest(session_id="no-such-session")),
            grpc.StatusCode.NOT_FOUND,
            "Session no-such-session not found",
        ),
        (
            lambda: a.Inference(pb.InferenceRequest()),
            grpc.StatusCode.INVALID_ARGUMENT,
            "session_id is required",
        ),
        (
            lambda: channel.unary_unary("/cuvis_ai.v1.CuvisAIService/NoSuchMethod")(b""),
            grpc.StatusCode.UNIMPLEMENTED,
            "NoSuchMethod",
        ),
        (
            lambda: channel.unary_unary("/other.Service/Call")(b""),
            grpc.StatusCode.UNIMPLEMENTED,
            "unknown service",
        ),
        (
            lambda: channel.unary_unary("/cuvis_ai.v1.CuvisAIService/Inference")(b"\x0a\x05ab"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "malformed request",
        ),
    ]
    for call, code, text in cases:
        with pytest.raises(grpc.RpcError) as info:
            call()
        assert info.value.code() == code, info.value.details()
        assert text in info.value.details()


def test_deadline_passes_through_and_is_enforced(cluster):
    a = stub_of(cluster.gateways[0])
    session = a.CreateSession(pb.CreateSessionRequest()).session_id
    with pytest.raises(grpc.RpcError) as info:
        list(a.Train(pb.TrainRequest(session_id=session), timeout=0.5))
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED

    # Enforced on the worker too: the run stops there (the stand-in's run would take 5 s to complete).
    def status():
        return a.GetTrainStatus(pb.GetTrainStatusRequest(session_id=session)).latest_progress.status

    procs.wait_for(lambda: status() == pb.TRAIN_STATUS_CANCELLED, timeout=30, what="worker-side deadline")
    a.CloseSession(pb.CloseSessionRequest(session_id=session))


def test_worker_status_details_and_metadata_pass_through(cluster):
    a = stub_of(cluster.gateways[0])
    session = a.CreateSession(pb.CreateSessionRequest()).session_id
    a.CloseSession(pb.CloseSessionRequest(session_id=session))
    # The worker's own NOT_FOUND (route already gone from the cache? then the gateway's): same text.
    with pytest.raises(grpc.RpcError) as info:
        a.CloseSession(pb.CloseSessionRequest(session_id=session))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert info.value.details() == f"Session {session} not found"
    # Response metadata from the worker reaches the client (grpc adds its own headers; check one).
    _, call = a.ListAvailablePipelines.with_call(pb.ListAvailablePipelinesRequest())
    assert call.code() == grpc.StatusCode.OK


def test_placement_reports_resource_exhausted(tmp_path):
    redis_server = procs.start_redis(tmp_path)
    url = f"redis://{redis_server.address}/0"
    worker = start_standin(tmp_path, url, "full", "--max-sessions", "1")
    gateway = start_gateway(tmp_path, url, "gw")
    try:
        wait_workers(gateway.address, 1)
        a = stub_of(gateway)
        a.CreateSession(pb.CreateSessionRequest())
        procs.wait_for(
            lambda: list_workers(gateway.address)[0].sessions == 1,
            timeout=10,
            what="session count in the registry",
        )
        with pytest.raises(grpc.RpcError) as info:
            a.CreateSession(pb.CreateSessionRequest())
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "session limit" in info.value.details()
        worker.stop()
        with pytest.raises(grpc.RpcError) as info:
            procs.wait_for(
                lambda: not list_workers(gateway.address),
                timeout=15,
                what="no workers",
            )
            a.CreateSession(pb.CreateSessionRequest())
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        gateway.stop()
        worker.stop()
        redis_server.stop()


def test_message_size_limit(cluster):
    gateway = start_gateway(cluster.workdir, cluster.redis_url, "gwSmall", "--max-message-bytes", "2000")
    try:
        wait_workers(gateway.address, 2)
        stub = stub_of(gateway)
        session = stub.CreateSession(pb.CreateSessionRequest()).session_id
        small = pb.InferenceRequest(session_id=session)
        small.inputs.cube.raw_data = b"x" * 1000
        stub.Inference(small)
        big = pb.InferenceRequest(session_id=session)
        big.inputs.cube.raw_data = b"x" * 5000
        for call in (
            lambda: stub.Inference(big),
            lambda: stub.ListAvailablePipelines(pb.ListAvailablePipelinesRequest(filter_tag="t" * 3000)),
        ):
            with pytest.raises(grpc.RpcError) as info:
                call()
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "max_message_bytes" in info.value.details()
        stub.CloseSession(pb.CloseSessionRequest(session_id=session))
    finally:
        gateway.stop()
