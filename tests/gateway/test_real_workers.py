"""The acceptance scenarios with real ``cuvis-worker`` processes (torch, the engine) behind the gateways."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator

import grpc
import pytest
import redis
from conftest import start_gateway
from helpers import procs
from helpers.cuvis import (
    SMALL_DATA,
    cube_batch,
    resolve,
    set_trainrun,
    statistically_trained,
    synthetic_frame,
)

from cuvis_cluster.localcluster.supervisor import LocalCluster
from cuvis_cluster.routing import redis_schema as rs
from cuvis_cluster.wire.pb import pb, pb_grpc

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def real(tmp_path_factory) -> Iterator[tuple[LocalCluster, procs.ServerProcess]]:
    """Two real workers, gateway A (the local cluster's) and gateway B."""
    workdir = tmp_path_factory.mktemp("real")
    cluster = LocalCluster(
        workers=2,
        workdir=workdir,
        worker_args=["--device", "cpu", "--heartbeat-seconds", "0.5", "--heartbeat-ttl-seconds", "4"],
        gateway_args=["--heartbeat-ttl-seconds", "4"],
        grace_seconds=3,
    )
    cluster.start()
    second = None
    try:
        second = start_gateway(
            workdir, cluster.redis_url, "gwB", "--cluster-token-file", str(cluster.cluster_token_file)
        )
        yield cluster, second
    finally:
        if second is not None:
            second.stop()
        cluster.stop()


def stubs(real) -> tuple[pb_grpc.CuvisAIServiceStub, pb_grpc.CuvisAIServiceStub]:
    cluster, second = real
    options = [("grpc.max_receive_message_length", 1 << 30), ("grpc.max_send_message_length", 1 << 30)]
    a = pb_grpc.CuvisAIServiceStub(grpc.insecure_channel(cluster.address, options=options))
    return a, pb_grpc.CuvisAIServiceStub(second.channel())


def holder(cluster: LocalCluster, session: str) -> str:
    client = redis.Redis.from_url(cluster.redis_url, decode_responses=True)
    try:
        return client.hget(rs.route_key(session), "address") or ""
    finally:
        client.close()


def long_training(stub, session: str) -> None:
    """A gradient run that takes far longer than the test waits (cancelled or killed midway)."""
    trainrun = resolve(
        stub,
        session,
        "trainrun",
        "trainrun/channel_selector",
        [*SMALL_DATA, "training.max_epochs=10000"],
    )
    set_trainrun(stub, session, trainrun)
    events = list(stub.Train(pb.TrainRequest(session_id=session, trainer_type=pb.TRAINER_TYPE_STATISTICAL)))
    assert events[-1].status == pb.TRAIN_STATUS_COMPLETE


def test_workflow_across_two_gateways(real):
    cluster, _ = real
    a, b = stubs(real)
    sessions = [a.CreateSession(pb.CreateSessionRequest()).session_id for _ in range(2)]
    assert {holder(cluster, s) for s in sessions} == set(cluster.worker_addresses)  # spread
    session = sessions[0]
    statistically_trained(b, session)  # config and Train via gateway B
    reply = a.Inference(
        pb.InferenceRequest(session_id=session, inputs=cube_batch(synthetic_frame()))
    )  # via A
    assert "rx_detector.scores" in reply.outputs
    for s in sessions:
        a.CloseSession(pb.CloseSessionRequest(session_id=s))


def test_cancelled_train_frees_the_worker(real):
    a, b = stubs(real)
    session = a.CreateSession(pb.CreateSessionRequest()).session_id
    long_training(a, session)
    stream = b.Train(pb.TrainRequest(session_id=session, trainer_type=pb.TRAINER_TYPE_GRADIENT))
    next(stream)
    stream.cancel()

    def not_running() -> bool:
        status = a.GetTrainStatus(pb.GetTrainStatusRequest(session_id=session)).latest_progress.status
        return status != pb.TRAIN_STATUS_RUNNING

    procs.wait_for(not_running, timeout=60, what="the worker to stop the cancelled run")
    # The session is usable again: a new (statistical) run starts and completes.
    events = list(a.Train(pb.TrainRequest(session_id=session, trainer_type=pb.TRAINER_TYPE_STATISTICAL)))
    assert events[-1].status == pb.TRAIN_STATUS_COMPLETE
    a.CloseSession(pb.CloseSessionRequest(session_id=session))


def test_sigkill_during_train(real):
    """Runs last in this module: it kills one of the two workers."""
    cluster, _ = real
    a, b = stubs(real)
    # Placement weighs the load the workers last reported, and the previous test's cancelled run may
    # still count on one of them: open sessions until each worker holds one.
    by_address: dict[str, str] = {}
    for _ in range(8):
        session = a.CreateSession(pb.CreateSessionRequest()).session_id
        by_address.setdefault(holder(cluster, session), session)
        if len(by_address) == 2:
            break
    assert len(by_address) == 2, f"8 new sessions all went to {sorted(by_address)}"
    victim_address = cluster.worker_addresses[0]
    victim = next(w for w in cluster.worker_procs if w.address == victim_address)
    doomed, kept = by_address[victim_address], by_address[cluster.worker_addresses[1]]
    statistically_trained(a, kept)
    batch = cube_batch(synthetic_frame())
    long_training(a, doomed)

    errors: list[str] = []
    calls = [0]
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            for stub in (a, b):
                try:
                    stub.Inference(pb.InferenceRequest(session_id=kept, inputs=batch), timeout=30)
                    calls[0] += 1
                except grpc.RpcError as exc:
                    errors.append(f"{exc.code()}: {exc.details()}")

    thread = threading.Thread(target=hammer)
    thread.start()
    try:
        # A generous deadline: a stream left hanging ends DEADLINE_EXCEEDED instead of UNAVAILABLE.
        # The time to UNAVAILABLE is measured by bench/failover_bench.py, not asserted here.
        stream = b.Train(
            pb.TrainRequest(session_id=doomed, trainer_type=pb.TRAINER_TYPE_GRADIENT), timeout=120
        )
        next(stream)
        victim.proc.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
        with pytest.raises(grpc.RpcError) as info:
            for _ in stream:
                pass
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE, info.value.details()
        assert victim_address in info.value.details()
        time.sleep(1.0)
    finally:
        stop.set()
        thread.join(60)
    assert calls[0] > 0 and errors == []
    client = redis.Redis.from_url(cluster.redis_url)
    try:
        procs.wait_for(lambda: not client.exists(rs.route_key(doomed)), timeout=15, what="route purged")
    finally:
        client.close()
    with pytest.raises(grpc.RpcError) as info:
        a.Inference(pb.InferenceRequest(session_id=doomed, inputs=batch))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND and victim_address in info.value.details()
