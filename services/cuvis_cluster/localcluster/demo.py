"""``cuvis-cluster demo``: a local cluster running the complete workflow end to end.

Starts the same cluster as ``cuvis-cluster up`` (real redis-server, N workers, one gateway on loopback),
then runs ``examples/complete_workflow.py`` as an ordinary client process against the gateway:
resolve the train-run config, statistical training, save, inference, and the anomaly map as a PNG.
The cluster is stopped afterwards whatever the outcome; the exit status is the client's. SIGINT or
SIGTERM at any point stops the client, then the cluster (as ``cuvis-cluster up`` does), and the demo
exits 128 + the signal number.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import cuvis_cluster
from cuvis_cluster.common.children import popen_kwargs, stop_children
from cuvis_cluster.localcluster.lifecycle import progress, run_cluster
from cuvis_cluster.localcluster.supervisor import LocalCluster

PHASE_WORKFLOW = "running the complete workflow"
EXAMPLE = Path(cuvis_cluster.__file__).resolve().parents[2] / "examples" / "complete_workflow.py"


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    demo = sub.add_parser("demo", help="start a local cluster and run the complete workflow through it")
    demo.add_argument("--workers", type=int, default=2, help="number of cuvis-worker processes [2]")
    demo.add_argument("--listen", default="127.0.0.1:0", help="gateway HOST:PORT [a free loopback port]")
    demo.add_argument("--out", type=Path, default=Path("outputs/demo"), help="output folder [outputs/demo]")
    demo.add_argument("--size", type=int, default=48, help="synthetic frame size in pixels [48]")
    return demo


def run(args: argparse.Namespace) -> int:
    if not EXAMPLE.exists():
        print(f"cuvis-cluster demo: {EXAMPLE} is missing (run from a source checkout)", file=sys.stderr)
        return 1
    out = args.out.resolve()
    print(f"cuvis-cluster demo: starting redis-server, {args.workers} worker(s), a gateway", flush=True)
    cluster = LocalCluster(
        workers=args.workers,
        listen=args.listen,
        workdir=out / "cluster",
        progress=progress("cuvis-cluster demo"),
    )
    status = run_cluster(cluster, "cuvis-cluster demo", lambda: _workflow(cluster, args, out))
    outcome = "done" if status == 0 else f"failed ({status})"
    print(f"cuvis-cluster demo: {outcome}; cluster stopped", flush=True)
    return status


def _workflow(cluster: LocalCluster, args: argparse.Namespace, out: Path) -> int:
    """The example as a child process (own group, dies with us); stopped first on a signal."""
    cluster.phase = PHASE_WORKFLOW
    print(f"cuvis-cluster demo: gateway on {cluster.address}; running {EXAMPLE.name}", flush=True)
    command = [sys.executable, str(EXAMPLE), "--address", cluster.address, "--out", str(out)]
    command += ["--size", str(args.size)]
    # Shielded: a signal between the fork and the try below would leave the client unknown to both
    # stops; it is deferred until the client is started and watched.
    with cluster._shielded():
        client = subprocess.Popen(command, **popen_kwargs())
        cluster.watch(client)
    try:
        return client.wait()
    finally:
        # On a signal (Interrupted raised in wait) the client goes before the cluster does.
        stop_children([client], grace=5.0, kill_after=5.0)
