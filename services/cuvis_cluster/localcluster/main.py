"""``cuvis-cluster``: run a complete cuvis-ai cluster on this machine.

``cuvis-cluster up --workers 2 --listen 127.0.0.1:50050`` starts a real ``redis-server`` (from PATH),
the workers and one gateway on loopback, prints the gateway address, and stops everything cleanly on
Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from cuvis_cluster.localcluster import demo
from cuvis_cluster.localcluster.supervisor import ClusterError, LocalCluster

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
    )
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    print(f"cuvis-cluster: starting redis-server, {args.workers} worker(s) and a gateway ...", flush=True)
    try:
        cluster.start()
    except ClusterError as exc:
        print(f"cuvis-cluster: {exc}", file=sys.stderr, flush=True)
        return 1
    print(
        f"cuvis-cluster up: gateway on {cluster.address}\n"
        f"  workers: {', '.join(cluster.worker_addresses)}\n"
        f"  redis:   {cluster.redis_url}\n"
        f"  metrics: {cluster.gateway_metrics_url}\n"
        f"  logs:    {cluster.workdir}\n"
        "Press Ctrl-C to stop.",
        flush=True,
    )
    try:
        reported: set[str] = set()
        while not stop.wait(0.5):
            for child in [cluster.redis, cluster.gateway, *cluster.worker_procs]:
                if child is None or child.alive() or child.name in reported:
                    continue
                reported.add(child.name)
                print(f"cuvis-cluster: {child.name} exited unexpectedly:\n{child.tail()}", file=sys.stderr)
                if child is cluster.redis or child is cluster.gateway:
                    stop.set()  # without Redis or the gateway there is no cluster left to serve
                else:
                    # A lost worker is what the gateway is built to handle: its sessions answer
                    # NOT_FOUND naming it, everything else keeps working.
                    print("cuvis-cluster: the other workers keep serving", file=sys.stderr, flush=True)
    finally:
        print("cuvis-cluster: stopping ...", flush=True)
        cluster.stop()
        print("cuvis-cluster: stopped", flush=True)
    return 0


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
        help="run this instead of cuvis-worker (it must take --listen, --redis-url and --metrics-port)",
    )
    up.add_argument("--workdir", type=Path, help="keep logs and outputs here (default: a temporary dir)")
    up.add_argument("--grace-seconds", type=float, default=10.0, help="shutdown grace period [10]")
    demo.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    sys.exit(COMMANDS[args.command](args))


if __name__ == "__main__":
    main()
