"""``cuvis-cluster``: run a complete cuvis-ai cluster on this machine.

``cuvis-cluster up --workers 2 --listen 127.0.0.1:50050`` starts a real ``redis-server`` (from PATH),
the workers and one gateway on loopback, prints the gateway address, and stops everything cleanly on
Ctrl-C or SIGTERM. The workers serve only calls that come through the gateway: each ``up`` generates a
random cluster credential (``<workdir>/cluster-token``) that the gateway sends and the workers check.

Signals are handled in every phase (starting Redis, starting workers and the gateway, the readiness
wait, serving, stopping): the children are stopped in order (gateway, workers with their grace,
Redis), SIGKILLed after a bound, and a signal during the stop kills them at once. Interrupted before
the cluster serves, ``up`` exits 128 + the signal number with one line on stderr naming the phase;
a Ctrl-C while serving that stops everything within the grace exits 0. Children die with ``up`` even
when it is SIGKILLed (see :mod:`cuvis_cluster.localcluster.supervisor`).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path

from cuvis_cluster.localcluster import demo
from cuvis_cluster.localcluster.lifecycle import progress, run_cluster
from cuvis_cluster.localcluster.supervisor import LocalCluster

DESCRIPTION = "Run a local cuvis-ai cluster: redis-server, N workers and a gateway on loopback."


def _up(args: argparse.Namespace) -> int:
    cluster = LocalCluster(
        workers=args.workers,
        listen=args.listen,
        worker_command=shlex.split(args.worker_command) if args.worker_command else None,
        worker_args=args.worker_arg or (),
        gateway_args=args.gateway_arg or (),
        workdir=args.workdir,
        grace_seconds=args.grace_seconds,
        redis_server=args.redis_server,
        progress=progress("cuvis-cluster"),
    )
    return run_cluster(cluster, "cuvis-cluster up", lambda: _serve(cluster))


def _serve(cluster: LocalCluster) -> int:
    """Print the addresses, then watch the children until a signal (raises Interrupted) or a loss."""
    print(
        f"cuvis-cluster up: gateway on {cluster.address}\n"
        f"  workers: {', '.join(cluster.worker_addresses)}\n"
        f"  redis:   {cluster.redis_url}\n"
        f"  cluster credential: {cluster.cluster_token_file} (workers serve only calls through the gateway)\n"
        f"  metrics: {cluster.gateway_metrics_url}\n"
        f"  logs:    {cluster.workdir}\n"
        "Press Ctrl-C to stop.",
        flush=True,
    )
    reported: set[str] = set()
    while True:
        time.sleep(0.5)  # a signal interrupts it (Interrupted); the loop only polls for lost children
        for child in [cluster.redis, cluster.gateway, *cluster.worker_procs]:
            if child is None or child.alive() or child.name in reported:
                continue
            reported.add(child.name)
            print(f"cuvis-cluster: {child.name} exited unexpectedly:\n{child.tail()}", file=sys.stderr)
            if child is cluster.redis or child is cluster.gateway:
                # Without Redis or the gateway there is no cluster left to serve.
                print(f"cuvis-cluster up: {child.name} exited; stopping", file=sys.stderr, flush=True)
                return 1
            # A lost worker is what the gateway is built to handle: its sessions answer
            # NOT_FOUND naming it, everything else keeps working.
            print("cuvis-cluster: the other workers keep serving", file=sys.stderr, flush=True)


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {"up": _up, "demo": demo.run}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cuvis-cluster", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start redis-server, workers and a gateway; stop them on Ctrl-C")
    up.add_argument("--workers", type=int, default=2, help="number of cuvis-worker processes [2]")
    up.add_argument("--listen", default="127.0.0.1:50050", help="gateway HOST:PORT [127.0.0.1:50050]")
    up.add_argument(
        "--worker-arg",
        action="append",
        help="extra flag for every worker, e.g. --worker-arg=--device=cpu (repeatable)",
    )
    up.add_argument(
        "--gateway-arg",
        action="append",
        help="extra flag for the gateway, e.g. --gateway-arg=--log-level=DEBUG",
    )
    up.add_argument(
        "--worker-command",
        help="run this instead of cuvis-worker (it must take --listen, --redis-url and --metrics-port; "
        "the cluster credential file is named in CUVIS_CLUSTER_TOKEN_FILE)",
    )
    up.add_argument(
        "--workdir",
        type=Path,
        help="keep logs, outputs and the cluster credential here (default: a temporary dir)",
    )
    up.add_argument("--grace-seconds", type=float, default=10.0, help="shutdown grace period [10]")
    up.add_argument(
        "--redis-server",
        help="the redis-server executable (a path or a name on PATH) [redis-server from PATH]",
    )
    demo.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    sys.exit(COMMANDS[args.command](args))


if __name__ == "__main__":
    main()
