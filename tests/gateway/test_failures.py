"""Failure semantics: worker loss, Redis loss, restarted workers (fencing), graceful drain."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator

import grpc
import pytest
import redis
from conftest import Cluster, list_workers, start_gateway, start_standin, wait_workers
from grpc_health.v1 import health_pb2
from helpers import procs

from cuvis_cluster.routing import redis_schema as rs
from cuvis_cluster.wire.pb import pb, pb_grpc

pytestmark = pytest.mark.integration


@pytest.fixture
def fresh(tmp_path) -> Iterator[Cluster]:
    c = Cluster(tmp_path, procs.start_redis(tmp_path))
    try:
        for i in range(2):
            c.workers.append(start_standin(tmp_path, c.redis_url, f"worker{i}"))
        for name in ("gwA", "gwB"):
            c.gateways.append(start_gateway(tmp_path, c.redis_url, name))
        for gw in c.gateways:
            wait_workers(gw.address, 2)
        yield c
    finally:
        c.stop()


def holder(stub, session: str) -> str:
    metrics = stub.Inference(pb.InferenceRequest(session_id=session)).metrics
    return next(k for k in metrics if k.startswith("worker.")).removeprefix("worker.")


def sessions_by_worker(stub, n: int = 4) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for _ in range(n):
        s = stub.CreateSession(pb.CreateSessionRequest()).session_id
        out.setdefault(holder(stub, s), []).append(s)
    assert len(out) == 2
    return out


def test_sigkill_during_train(fresh):
    a, b = (pb_grpc.CuvisAIServiceStub(g.channel()) for g in fresh.gateways)
    by_worker = sessions_by_worker(a)
    statuses = [list_workers(fresh.gateways[0].address)]
    instances = {w.instance_id: w.address for w in statuses[0]}
    victim_instance, survivor_instance = sorted(by_worker)
    victim = next(w for w in fresh.workers if w.address == instances[victim_instance])
    doomed, kept = by_worker[victim_instance], by_worker[survivor_instance]

    # Keep the survivor's sessions busy through both gateways while the other worker dies.
    errors: list[str] = []
    calls = [0]
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            for stub in (a, b):
                for s in kept:
                    try:
                        stub.Inference(pb.InferenceRequest(session_id=s), timeout=10)
                        calls[0] += 1
                    except grpc.RpcError as exc:
                        errors.append(f"{exc.code()}: {exc.details()}")

    thread = threading.Thread(target=hammer)
    thread.start()
    try:
        # A generous deadline, so that a stream the gateway failed to end fails as DEADLINE_EXCEEDED
        # rather than hanging; how fast it ends is measured by bench/failover_bench.py, not here.
        stream = b.Train(pb.TrainRequest(session_id=doomed[0]), timeout=60)
        assert next(stream).status == pb.TRAIN_STATUS_RUNNING
        victim.proc.send_signal(signal.SIGKILL)
        with pytest.raises(grpc.RpcError) as info:
            for _ in stream:
                pass
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE, info.value.details()
        assert victim.address in info.value.details()
        assert victim.proc.wait(timeout=30) == -signal.SIGKILL
        time.sleep(1.0)
    finally:
        stop.set()
        thread.join(30)
    assert calls[0] > 0
    assert errors == []

    # The dead worker's routes are purged; its sessions answer NOT_FOUND naming it.
    client = redis.Redis.from_url(fresh.redis_url, decode_responses=True)
    try:
        procs.wait_for(
            lambda: not any(client.exists(rs.route_key(s)) for s in doomed), timeout=15, what="routes purged"
        )
        assert all(client.exists(rs.route_key(s)) for s in kept)
        assert client.hget(rs.lost_route_key(doomed[0]), "instance") == victim_instance
    finally:
        client.close()
    for stub in (a, b):
        with pytest.raises(grpc.RpcError) as info:
            stub.Inference(pb.InferenceRequest(session_id=doomed[1]))
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        assert victim.address in info.value.details() and victim_instance in info.value.details()
    # New sessions go to the survivor only.
    assert holder(a, a.CreateSession(pb.CreateSessionRequest()).session_id) == survivor_instance


def test_redis_restart_without_persistence(fresh):
    a, b = (pb_grpc.CuvisAIServiceStub(g.channel()) for g in fresh.gateways)
    sessions = [s for group in sessions_by_worker(a).values() for s in group]
    port = fresh.redis.address.rsplit(":", 1)[1]
    fresh.redis.stop()

    # Redis down: calls UNAVAILABLE with a clear message, health NOT_SERVING.
    def refused() -> bool:
        try:
            a.Inference(pb.InferenceRequest(session_id=sessions[0]), timeout=5)
        except grpc.RpcError as exc:
            return exc.code() == grpc.StatusCode.UNAVAILABLE and "Redis" in exc.details()
        return False

    procs.wait_for(refused, timeout=15, what="UNAVAILABLE while Redis is down")
    assert procs.health_status(fresh.gateways[0].address) == health_pb2.HealthCheckResponse.NOT_SERVING

    # Same port, empty data set: the workers re-announce, the sessions keep working.
    argv = ["redis-server", "--bind", "127.0.0.1", "--port", port, "--save", "", "--appendonly", "no"]
    argv += ["--dir", str(fresh.workdir / "redis-data")]
    fresh.redis = procs.start_server(
        argv, name="redis2", log_dir=fresh.workdir, address=fresh.redis.address, wait=False
    )
    for gw in fresh.gateways:
        procs.wait_healthy(gw, timeout=30)

    def all_work() -> bool:
        try:
            for stub in (a, b):
                for s in sessions:
                    stub.Inference(pb.InferenceRequest(session_id=s), timeout=5)
        except grpc.RpcError:
            return False
        return True

    procs.wait_for(all_work, timeout=15, what="sessions working after the Redis restart")
    client = redis.Redis.from_url(fresh.redis_url, decode_responses=True)
    try:
        assert all(client.exists(rs.route_key(s)) for s in sessions)
    finally:
        client.close()


def test_a_worker_restarted_at_the_same_address_is_fenced(fresh):
    a = pb_grpc.CuvisAIServiceStub(fresh.gateways[0].channel())
    by_worker = sessions_by_worker(a)
    instances = {w.instance_id: w.address for w in list_workers(fresh.gateways[0].address)}
    old_instance = sorted(by_worker)[0]
    address = instances[old_instance]
    old = next(w for w in fresh.workers if w.address == address)
    old.proc.send_signal(signal.SIGKILL)
    old.proc.wait(10)
    port = int(address.rsplit(":", 1)[1])
    fresh.workers.append(start_standin(fresh.workdir, fresh.redis_url, "reborn", port=port))
    session = by_worker[old_instance][0]
    # Whatever the gateway knows at this moment, the old session is never served by the new process.
    with pytest.raises(grpc.RpcError) as info:
        a.Inference(pb.InferenceRequest(session_id=session))
    assert info.value.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNAVAILABLE)
    procs.wait_for(
        lambda: _code(a, session) == grpc.StatusCode.NOT_FOUND,
        timeout=15,
        what="NOT_FOUND for the fenced session",
    )
    with pytest.raises(grpc.RpcError) as info:
        a.Inference(pb.InferenceRequest(session_id=session))
    assert old_instance in info.value.details()


def _code(stub, session: str):
    try:
        stub.Inference(pb.InferenceRequest(session_id=session), timeout=5)
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def test_drained_worker_gets_no_new_sessions_and_deregisters(fresh):
    from cuvis_cluster.wire.gen.cuvis_cluster.internal.v1 import control_pb2, control_pb2_grpc

    a = pb_grpc.CuvisAIServiceStub(fresh.gateways[0].channel())
    target = fresh.workers[0]
    control = control_pb2_grpc.WorkerControlServiceStub(target.channel())
    instance = control.GetWorkerStatus(control_pb2.GetWorkerStatusRequest()).status.instance_id
    session = ""
    for _ in range(4):  # placement alternates; make sure the drained worker holds a session
        session = a.CreateSession(pb.CreateSessionRequest()).session_id
        if holder(a, session) == instance:
            break
    assert holder(a, session) == instance
    reply = control.Drain(control_pb2.DrainRequest(grace_seconds=30))
    assert reply.accepted
    procs.wait_for(
        lambda: any(w.draining for w in list_workers(fresh.gateways[0].address)),
        timeout=10,
        what="draining flag",
    )
    new = [a.CreateSession(pb.CreateSessionRequest()).session_id for _ in range(3)]
    assert all(holder(a, s) != instance for s in new)
    a.Inference(pb.InferenceRequest(session_id=session))  # existing sessions keep working
    a.CloseSession(pb.CloseSessionRequest(session_id=session))
    # With no sessions left the drained worker shuts down and deregisters.
    procs.wait_for(lambda: target.proc.poll() is not None, timeout=30, what="drained worker exit")
    procs.wait_for(
        lambda: len(list_workers(fresh.gateways[0].address)) == 1, timeout=15, what="deregistration"
    )


def test_gateway_sigterm_finishes_running_streams(tmp_path):
    redis_server = procs.start_redis(tmp_path)
    url = f"redis://{redis_server.address}/0"
    worker = start_standin(tmp_path, url, "w", "--train-steps", "10", "--train-interval", "0.1")
    gateway = start_gateway(tmp_path, url, "gw")
    try:
        wait_workers(gateway.address, 1)
        a = pb_grpc.CuvisAIServiceStub(gateway.channel())
        session = a.CreateSession(pb.CreateSessionRequest()).session_id
        stream = a.Train(pb.TrainRequest(session_id=session))
        first = next(stream)
        gateway.proc.send_signal(signal.SIGTERM)
        rest = list(stream)
        assert first.status == pb.TRAIN_STATUS_RUNNING and rest[-1].status == pb.TRAIN_STATUS_COMPLETE
        assert gateway.proc.wait(15) == 0
    finally:
        gateway.stop()
        worker.stop()
        redis_server.stop()
