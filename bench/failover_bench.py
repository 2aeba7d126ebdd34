"""Failover timing: how soon clients learn that a worker died (SIGKILL), over several repetitions.

    .venv/bin/python bench/failover_bench.py                     # 5 repetitions
    .venv/bin/python bench/failover_bench.py --repeat 10 --heartbeat-ttl 4

The gateway tests assert what happens when a worker is killed (status codes, messages naming the
worker); this measures how long it takes, which depends on the machine's load and so is no test.

Each repetition starts a fresh local cluster on 127.0.0.1 with the same supervisor that
``cuvis-cluster up`` uses (:class:`cuvis_cluster.localcluster.supervisor.LocalCluster`: a real
``redis-server`` and ``cuvis-gateway``), whose two workers are the gateway tests' stand-in worker
(tests/gateway/standin_worker.py: a real gRPC server with the real cluster membership, no torch). It
opens a Train stream on a session of worker 0, SIGKILLs that worker and measures, from the kill:

* ``stream``: until the open Train stream ends UNAVAILABLE (the gateway sees the connection drop);
* ``not_found``: until a call on another session of the dead worker answers NOT_FOUND naming it (the
  gateway has probed the address, declared the instance lost and purged its routes).

Reported per measure: median, min, max and standard deviation over the repetitions. Every wait is
bounded by ``--deadline``, and each cluster is stopped (SIGTERM, then SIGKILL) whatever happens, Ctrl-C
and SIGTERM to the bench included.
"""

from __future__ import annotations

import argparse
import signal
import statistics
import sys
import time
from pathlib import Path

import grpc
import redis

from cuvis_cluster.localcluster.supervisor import LocalCluster
from cuvis_cluster.routing import redis_schema as rs
from cuvis_cluster.wire.pb import pb, pb_grpc

REPO = Path(__file__).resolve().parents[1]
STANDIN = REPO / "tests" / "gateway" / "standin_worker.py"


class BenchError(RuntimeError):
    """A repetition did not behave as the gateway tests require; its timing would mean nothing."""


def holder(client: redis.Redis, session: str) -> str:
    """The address of the worker that holds ``session``, from its route in Redis."""
    address = client.hget(rs.route_key(session), "address")
    return rs.text(address) if address is not None else ""


def sessions_on(stub: pb_grpc.CuvisAIServiceStub, client: redis.Redis, address: str, n: int) -> list[str]:
    """Create sessions until ``n`` of them live on the worker at ``address``."""
    found: list[str] = []
    for _ in range(8 * n):
        session = stub.CreateSession(pb.CreateSessionRequest(), timeout=30).session_id
        if holder(client, session) == address:
            found.append(session)
            if len(found) == n:
                return found
    raise BenchError(f"placement never chose {address} for {n} sessions")


def one_repetition(args: argparse.Namespace) -> dict[str, float]:
    ttl = str(args.heartbeat_ttl)
    cluster = LocalCluster(
        workers=2,
        worker_command=[sys.executable, str(STANDIN)],
        # A Train stream far longer than any measurement (100000 steps of 0.1 s).
        worker_args=["--heartbeat-seconds", "0.5", "--heartbeat-ttl-seconds", ttl, "--train-steps", "100000"],
        gateway_args=["--heartbeat-ttl-seconds", ttl],
        grace_seconds=3,
        startup_timeout=args.deadline,
    )
    with cluster:
        victim = cluster.worker_procs[0]
        client = redis.Redis.from_url(cluster.redis_url)
        channel = grpc.insecure_channel(cluster.address)
        try:
            stub = pb_grpc.CuvisAIServiceStub(channel)
            streamed, probed = sessions_on(stub, client, victim.address, 2)
            stream = stub.Train(pb.TrainRequest(session_id=streamed), timeout=args.deadline)
            next(stream)
            killed = time.monotonic()
            victim.signal(signal.SIGKILL)
            code = grpc.StatusCode.OK
            try:
                for _ in stream:
                    pass
            except grpc.RpcError as exc:
                code = exc.code()
            stream_s = time.monotonic() - killed
            if code != grpc.StatusCode.UNAVAILABLE:
                raise BenchError(f"the Train stream ended {code.name}, not UNAVAILABLE")
            while True:
                try:
                    stub.Inference(pb.InferenceRequest(session_id=probed), timeout=args.deadline)
                except grpc.RpcError as exc:
                    if exc.code() == grpc.StatusCode.NOT_FOUND and victim.address in (exc.details() or ""):
                        break
                if time.monotonic() - killed > args.deadline:
                    raise BenchError(f"no NOT_FOUND naming {victim.address} within {args.deadline:.0f}s")
                time.sleep(0.02)
            not_found_s = time.monotonic() - killed
        finally:
            channel.close()
            client.close()
    return {"stream": stream_s, "not_found": not_found_s}


def report(results: list[dict[str, float]]) -> None:
    print(f"\n{'measure':<10} {'n':>3} {'median':>9} {'min':>9} {'max':>9} {'stdev':>9}   (seconds)")
    for name in ("stream", "not_found"):
        values = [r[name] for r in results]
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        print(
            f"{name:<10} {len(values):>3} {statistics.median(values):>9.3f} {min(values):>9.3f} "
            f"{max(values):>9.3f} {spread:>9.3f}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--repeat", type=int, default=5, help="repetitions, each on a fresh cluster [5]")
    parser.add_argument("--heartbeat-ttl", type=float, default=4.0, help="workers' heartbeat TTL, s [4]")
    parser.add_argument("--deadline", type=float, default=60.0, help="bound on every wait, s [60]")
    args = parser.parse_args(argv)
    # A SIGTERM unwinds like Ctrl-C, so the running repetition's ``with cluster:`` stops the cluster.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    results: list[dict[str, float]] = []
    for i in range(args.repeat):
        result = one_repetition(args)
        print(f"repetition {i + 1}/{args.repeat}: " + ", ".join(f"{k} {v:.3f}s" for k, v in result.items()))
        results.append(result)
    report(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
