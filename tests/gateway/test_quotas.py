"""Per-identity session quotas: one client cannot take every session slot of the cluster.

Real gateways, a real redis-server and stand-in workers (which run the real membership code, so the
workers' own route scripts keep the per-identity counts).
"""

from __future__ import annotations

import re
import socket
import threading
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
import redis
from conftest import list_workers, start_gateway, start_standin, wait_workers
from helpers import procs

from cuvis_cluster.gateway.quotas import quota_limit
from cuvis_cluster.routing import redis_schema as rs
from cuvis_cluster.wire.pb import control_pb2, control_pb2_grpc, pb, pb_grpc

pytestmark = pytest.mark.integration


def test_the_quota_is_the_smaller_of_the_count_and_the_share():
    assert quota_limit(8, 0.5, 32) == 8  # two workers of 16: the count limits
    assert quota_limit(8, 0.5, 6) == 3  # a small cluster: half of it
    assert quota_limit(8, 0.5, 1) == 1  # never below one session
    assert quota_limit(0, 0.25, 40) == 10  # 0: the share alone
    assert quota_limit(3, 1.0, 0) == 1


def _code(fn) -> tuple[grpc.StatusCode, str]:
    try:
        fn()
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


def _holder(stub, session: str, metadata=()) -> str:
    metrics = stub.Inference(pb.InferenceRequest(session_id=session), metadata=metadata).metrics
    return next(k for k in metrics if k.startswith("worker."))


@pytest.fixture
def token_cluster(tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text("tok-alice alice\ntok-bob bob\n")
    redis_server = procs.start_redis(tmp_path)
    url = f"redis://{redis_server.address}/0"
    servers = [redis_server]
    try:
        workers = [start_standin(tmp_path, url, f"w{i}", "--max-sessions", "4") for i in range(2)]
        servers += workers
        # The count limits (3); the share (all of the cluster) does not, even with a worker lost.
        flags = (
            "--auth-token-file",
            str(tokens),
            "--max-sessions-per-identity",
            "3",
            "--identity-capacity-share",
            "1",
        )
        gateways = [start_gateway(tmp_path, url, name, *flags) for name in ("gwA", "gwB")]
        servers += gateways
        for gw in gateways:
            procs.wait_for(
                lambda gw=gw: len(list_workers_as(gw.address, "tok-alice")) == 2,
                timeout=30,
                what="2 workers registered",
            )
        yield workers, gateways, url
    finally:
        for server in reversed(servers):
            server.stop()


def list_workers_as(address: str, token: str) -> list:
    with grpc.insecure_channel(address) as channel:
        stub = control_pb2_grpc.ClusterStatusServiceStub(channel)
        try:
            reply = stub.ListWorkers(
                control_pb2.ListWorkersRequest(), metadata=[("authorization", f"Bearer {token}")], timeout=2
            )
        except grpc.RpcError:
            return []
        return list(reply.workers)


def test_one_identity_cannot_fill_the_cluster(token_cluster):
    _workers, gateways, _url = token_cluster
    a, b = (pb_grpc.CuvisAIServiceStub(g.channel()) for g in gateways)
    alice = [("authorization", "Bearer tok-alice")]
    bob = [("authorization", "Bearer tok-bob")]

    # Alice fills her quota of 3 through both gateways; they agree on her count (it lives in Redis).
    held = [s.CreateSession(pb.CreateSessionRequest(), metadata=alice).session_id for s in (a, b, a)]
    code, details = _code(lambda: b.CreateSession(pb.CreateSessionRequest(), metadata=alice))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    # Her third session may still be counted as being created (its call has just ended).
    assert re.search(r"identity alice holds (3 sessions|2 sessions \(and is creating 1\))", details), details
    assert "may hold 3 (max_sessions_per_identity 3" in details
    assert "tok-alice" not in details

    # The acceptance criterion: someone else can still create a session.
    bobs = b.CreateSession(pb.CreateSessionRequest(), metadata=bob).session_id
    b.Inference(pb.InferenceRequest(session_id=bobs), metadata=bob)

    # Closing one of hers frees a slot, through either gateway.
    b.CloseSession(pb.CloseSessionRequest(session_id=held.pop()), metadata=alice)
    held.append(a.CreateSession(pb.CreateSessionRequest(), metadata=alice).session_id)
    assert _code(lambda: a.CreateSession(pb.CreateSessionRequest(), metadata=alice))[0] == (
        grpc.StatusCode.RESOURCE_EXHAUSTED
    )

    # Concurrent calls through both gateways cannot overshoot: the check reserves the slot atomically.
    for session in held:
        a.CloseSession(pb.CloseSessionRequest(session_id=session), metadata=alice)
    with ThreadPoolExecutor(8) as pool:
        results = list(
            pool.map(
                lambda i: _code(
                    lambda: (a, b)[i % 2].CreateSession(pb.CreateSessionRequest(), metadata=alice, timeout=20)
                )[0],
                range(8),
            )
        )
    assert results.count(grpc.StatusCode.OK) == 3, results
    assert results.count(grpc.StatusCode.RESOURCE_EXHAUSTED) == 5, results


@pytest.mark.slow
def test_the_count_survives_redis_losing_its_data(token_cluster):
    _workers, gateways, url = token_cluster
    a = pb_grpc.CuvisAIServiceStub(gateways[0].channel())
    alice = [("authorization", "Bearer tok-alice")]
    held = [a.CreateSession(pb.CreateSessionRequest(), metadata=alice).session_id for _ in range(3)]
    store = redis.Redis.from_url(url)
    try:
        store.flushall()
        # The workers' heartbeats re-announce the routes, and with them each owner's sessions.
        procs.wait_for(
            lambda: store.smembers(rs.quota_key("id:alice")) == {s.encode() for s in held},
            timeout=30,
            what="heartbeats to count alice's settled sessions again",
        )
    finally:
        store.close()
    procs.wait_for(
        lambda: len(list_workers_as(gateways[0].address, "tok-alice")) == 2,
        timeout=20,
        what="the gateway to see both workers again",
    )
    assert _code(lambda: a.CreateSession(pb.CreateSessionRequest(), metadata=alice))[0] == (
        grpc.StatusCode.RESOURCE_EXHAUSTED
    )


def test_sessions_of_a_lost_worker_stop_counting(token_cluster):
    workers, gateways, url = token_cluster
    a = pb_grpc.CuvisAIServiceStub(gateways[0].channel())
    alice = [("authorization", "Bearer tok-alice")]
    held = [a.CreateSession(pb.CreateSessionRequest(), metadata=alice).session_id for _ in range(3)]
    assert _code(lambda: a.CreateSession(pb.CreateSessionRequest(), metadata=alice))[0] == (
        grpc.StatusCode.RESOURCE_EXHAUSTED
    )
    holders = [_holder(a, s, alice) for s in held]
    victim = workers[0]
    victim_instance = next(
        w.instance_id
        for w in list_workers_as(gateways[0].address, "tok-alice")
        if w.address == victim.address
    )
    lost = holders.count(f"worker.{victim_instance}")
    assert 0 < lost < 3  # placement spreads her sessions over both workers
    victim.stop()  # SIGKILL: no deregistration; the gateway purges its routes once it is declared lost
    procs.wait_for(
        lambda: len(list_workers_as(gateways[0].address, "tok-alice")) == 1,
        timeout=30,
        what="the killed worker to be declared lost",
    )
    # Its routes go a moment after its registration (once the gateway's probe finds it gone).
    store = redis.Redis.from_url(url)
    try:
        procs.wait_for(
            lambda: store.exists(*(rs.route_key(s) for s in held)) == 3 - lost,
            timeout=30,
            what="the lost worker's routes to be purged",
        )
    finally:
        store.close()
    created = 0
    while (result := _code(lambda: a.CreateSession(pb.CreateSessionRequest(), metadata=alice)))[0] == (
        grpc.StatusCode.OK
    ):
        created += 1
        assert created <= 3
    assert created == lost, result


class _Relay:
    """A TCP relay on 127.0.0.1 that reaches ``target`` from another loopback address, so that the
    gateway sees a second client host."""

    def __init__(self, target: str, source_ip: str) -> None:
        host, port = target.rsplit(":", 1)
        self.target = (host, int(port))
        self.source_ip = source_ip
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.sockets: list[socket.socket] = [self.listener]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target, source_address=(self.source_ip, 0))
            self.sockets += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        for s in self.sockets:
            s.close()


def test_anonymous_clients_are_counted_by_address(tmp_path):
    redis_server = procs.start_redis(tmp_path)
    url = f"redis://{redis_server.address}/0"
    worker = start_standin(tmp_path, url, "w", "--max-sessions", "8")
    gateway = start_gateway(tmp_path, url, "gw", "--max-sessions-per-identity", "2")
    relay = _Relay(gateway.address, "127.0.0.2")
    try:
        wait_workers(gateway.address, 1)
        here = pb_grpc.CuvisAIServiceStub(gateway.channel())
        mine = [here.CreateSession(pb.CreateSessionRequest()).session_id for _ in range(2)]
        code, details = _code(lambda: here.CreateSession(pb.CreateSessionRequest()))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert re.search(r"client 127\.0\.0\.1 holds (2 sessions|1 session \(and is creating 1\))", details)

        with grpc.insecure_channel(relay.address) as channel:
            there = pb_grpc.CuvisAIServiceStub(channel)
            theirs = there.CreateSession(pb.CreateSessionRequest(), timeout=10).session_id
            # Ownership is unchanged on an anonymous gateway: a session id is all it takes.
            there.Inference(pb.InferenceRequest(session_id=mine[0]), timeout=10)
            here.Inference(pb.InferenceRequest(session_id=theirs))

        here.CloseSession(pb.CloseSessionRequest(session_id=mine.pop()))
        here.CreateSession(pb.CreateSessionRequest())
        assert _code(lambda: here.CreateSession(pb.CreateSessionRequest()))[0] == (
            grpc.StatusCode.RESOURCE_EXHAUSTED
        )
        procs.wait_for(
            lambda: list_workers(gateway.address)[0].sessions == 3, timeout=10, what="3 sessions held"
        )
    finally:
        relay.close()
        gateway.stop()
        worker.stop()
        redis_server.stop()


@pytest.mark.slow
def test_a_session_reaped_idle_by_a_real_worker_frees_its_slot(tmp_path):
    """The deployment's idle timeout, end to end: the worker reaps the session, its route goes, and
    the identity's quota counts it no more."""
    tokens = tmp_path / "tokens"
    tokens.write_text("tok-alice alice\n")
    redis_server = procs.start_redis(tmp_path)
    url = f"redis://{redis_server.address}/0"
    idle = ("--idle-timeout-seconds", "2")
    worker = gateway = None
    try:
        worker = procs.start_worker(
            tmp_path,
            *("--device", "cpu", "--redis-url", url, "--max-sessions", "4", "--reap-interval-seconds", "0.2"),
            *("--heartbeat-seconds", "0.5", *idle),
        )
        gateway = start_gateway(
            tmp_path, url, "gw", "--auth-token-file", str(tokens), "--max-sessions-per-identity", "1", *idle
        )
        stub = pb_grpc.CuvisAIServiceStub(gateway.channel())
        alice = [("authorization", "Bearer tok-alice")]
        procs.wait_for(
            lambda: list_workers_as(gateway.address, "tok-alice"), timeout=30, what="the worker registered"
        )
        first = stub.CreateSession(pb.CreateSessionRequest(), metadata=alice).session_id
        assert _code(lambda: stub.CreateSession(pb.CreateSessionRequest(), metadata=alice))[0] == (
            grpc.StatusCode.RESOURCE_EXHAUSTED
        )
        procs.wait_for(
            lambda: (
                _code(lambda: stub.CreateSession(pb.CreateSessionRequest(), metadata=alice))[0]
                == grpc.StatusCode.OK
            ),
            timeout=30,
            what="the idle session to be reaped",
        )
        code, _ = _code(lambda: stub.CloseSession(pb.CloseSessionRequest(session_id=first), metadata=alice))
        assert code == grpc.StatusCode.NOT_FOUND
    finally:
        for server in (gateway, worker, redis_server):
            if server is not None:
                server.stop()
