"""A client that cancels its CreateSession calls cannot dodge its session quota.

A worker's CreateSession handler runs to its end even when the call is cancelled, so a client that
resets the stream just after sending it may still get a session, one that nobody hears of. Each such
session must count for the client at once: otherwise a loop of cancelled creates fills every slot of
the cluster. Real gateway, real redis-server, stand-in workers running the real membership code (with
a slow create, so that a cancel can land while the worker creates: tests/gateway/slow_standin.py).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import grpc
import pytest
import redis
from conftest import HEARTBEAT_TTL, start_gateway, wait_workers
from helpers import procs
from test_quotas import _code, _Relay, list_workers_as

from cuvis_cluster.routing import redis_schema as rs
from cuvis_cluster.wire.pb import pb, pb_grpc

pytestmark = pytest.mark.integration

ATTEMPTS = 60
SLOW_STANDIN = Path(__file__).resolve().parent / "slow_standin.py"


def _start_slow_standin(workdir: Path, redis_url: str, name: str, max_sessions: int):
    """A stand-in worker that takes 50 ms to create a session, so that cancels land mid-create."""
    port, metrics_port = procs.free_port(), procs.free_port()
    argv = [sys.executable, str(SLOW_STANDIN), "--create-delay", "0.05", "--listen", f"127.0.0.1:{port}"]
    argv += ["--redis-url", redis_url, "--metrics-port", str(metrics_port), "--heartbeat-seconds", "0.5"]
    argv += ["--heartbeat-ttl-seconds", HEARTBEAT_TTL, "--max-sessions", str(max_sessions)]
    return procs.start_server(
        argv, name=name, log_dir=workdir, address=f"127.0.0.1:{port}", metrics_port=metrics_port, timeout=60
    )


def _cancel_loop(stub, metadata=()) -> None:
    """Start CreateSession calls and cancel each a moment later (0 to 20 ms): the cancels land before
    the gateway forwards the call, or while the worker creates the session."""
    for i in range(ATTEMPTS):
        future = stub.CreateSession.future(pb.CreateSessionRequest(), metadata=metadata, timeout=30)
        time.sleep((i % 11) * 0.002)
        future.cancel()


def _held_on_workers(store: redis.Redis) -> set[bytes]:
    """Every session the workers hold (they record each one as they create it)."""
    held: set[bytes] = set()
    for instance in rs.registered_workers(store):
        held |= store.smembers(rs.worker_key(instance) + ":sessions")
    return held


def _settled_count(store: redis.Redis, subject: str) -> set[bytes]:
    """The subject's counted sessions once they match what the workers hold (creates in flight ended)."""
    return procs.wait_for(
        lambda: (counted := store.smembers(rs.quota_key(subject))) == _held_on_workers(store) and counted,
        timeout=30,
        what=f"{subject}'s count to match the sessions the workers hold",
    )


def _fill(stub, metadata, full: str) -> int:
    """Create sessions until the gateway refuses with ``full`` (reservations of cancelled calls may
    still be lingering a few seconds); the number created."""
    created = 0
    deadline = time.monotonic() + 40
    while True:
        code, details = _code(lambda: stub.CreateSession(pb.CreateSessionRequest(), metadata=metadata))
        if code == grpc.StatusCode.OK:
            created += 1
            continue
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, (code, details)
        if full in details:
            return created
        assert time.monotonic() < deadline, f"still refused with: {details}"
        time.sleep(0.5)


def test_cancelled_creates_count_for_the_identity(tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text("tok-alice alice\ntok-bob bob\n")
    redis_server = procs.start_redis(tmp_path)
    url = f"redis://{redis_server.address}/0"
    servers = [redis_server]
    store = redis.Redis.from_url(url)
    try:
        servers += [_start_slow_standin(tmp_path, url, f"w{i}", 4) for i in range(2)]
        gateway = start_gateway(
            tmp_path,
            url,
            "gw",
            *("--auth-token-file", str(tokens), "--max-sessions-per-identity", "3"),
            *("--identity-capacity-share", "1"),
        )
        servers.append(gateway)
        procs.wait_for(
            lambda: len(list_workers_as(gateway.address, "tok-alice")) == 2, timeout=30, what="2 workers"
        )
        stub = pb_grpc.CuvisAIServiceStub(gateway.channel())
        alice = [("authorization", "Bearer tok-alice")]
        bob = [("authorization", "Bearer tok-bob")]

        _cancel_loop(stub, alice)
        # Each session a cancelled call created counts for alice: never more than her quota of 3,
        # out of the 8 slots of the cluster.
        counted = _settled_count(store, "id:alice")
        assert 1 <= len(counted) <= 3, counted

        # Someone else can still create a session, and use it.
        bobs = stub.CreateSession(pb.CreateSessionRequest(), metadata=bob, timeout=10).session_id
        stub.Inference(pb.InferenceRequest(session_id=bobs), metadata=bob, timeout=10)

        # Alice gets the rest of her quota, and not one session more.
        created = _fill(stub, alice, "identity alice holds 3 sessions;")
        assert created == 3 - len(counted)
        assert len(_held_on_workers(store)) == 3 + 1
    finally:
        store.close()
        for server in reversed(servers):
            server.stop()


def test_cancelled_creates_count_for_an_anonymous_client(tmp_path):
    redis_server = procs.start_redis(tmp_path)
    url = f"redis://{redis_server.address}/0"
    store = redis.Redis.from_url(url)
    worker = _start_slow_standin(tmp_path, url, "w", 8)
    gateway = start_gateway(tmp_path, url, "gw", "--max-sessions-per-identity", "2")
    relay = _Relay(gateway.address, "127.0.0.2")
    try:
        wait_workers(gateway.address, 1)
        here = pb_grpc.CuvisAIServiceStub(gateway.channel())

        _cancel_loop(here)
        counted = _settled_count(store, "ip:127.0.0.1")
        assert 1 <= len(counted) <= 2, counted

        # Another client host still gets a session.
        with grpc.insecure_channel(relay.address) as channel:
            there = pb_grpc.CuvisAIServiceStub(channel)
            theirs = there.CreateSession(pb.CreateSessionRequest(), timeout=10).session_id
            there.Inference(pb.InferenceRequest(session_id=theirs), timeout=10)

        created = _fill(here, (), "client 127.0.0.1 holds 2 sessions;")
        assert created == 2 - len(counted)
        assert len(_held_on_workers(store)) == 2 + 1
    finally:
        store.close()
        relay.close()
        gateway.stop()
        worker.stop()
        redis_server.stop()
