"""Running a :class:`~cuvis_cluster.localcluster.supervisor.LocalCluster` from a command line.

Shared by ``cuvis-cluster up`` and ``cuvis-cluster demo``: start the cluster, run the command's body
against it, stop it, and turn signals into one line on stderr and an exit status.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable

from cuvis_cluster.localcluster.supervisor import (
    PHASE_IDLE,
    PHASE_SERVING,
    ClusterError,
    Interrupted,
    LocalCluster,
)


def progress(prog: str) -> Callable[[str], None]:
    """A ``LocalCluster(progress=...)`` that prints each start-up phase as ``<prog>: <phase> ...``."""

    def show(phase: str) -> None:
        if phase != PHASE_SERVING:  # serving is announced by the command itself
            print(f"{prog}: {phase} ...", flush=True)

    return show


def run_cluster(cluster: LocalCluster, prog: str, body: Callable[[], int]) -> int:
    """Start ``cluster``, run ``body`` against it, stop it; SIGINT/SIGTERM handled in every phase.

    A signal while starting, waiting for readiness or inside ``body`` stops every child (gateway,
    workers with their grace, Redis) and returns 128 + the signal number, after one line on stderr:
    ``<prog>: interrupted by SIGTERM while <phase>; stopped N children``. A second signal (or one
    during the stop) SIGKILLs the remaining children at once.
    """
    status = 1
    interrupted: Interrupted | None = None
    stopped = 0
    try:
        with cluster.handle_signals():
            try:
                cluster.start()
                status = body()
            except Interrupted as exc:
                interrupted = exc
            except ClusterError as exc:
                print(f"{prog}: {exc}", file=sys.stderr, flush=True)
                status = 1
            finally:
                if cluster.phase != PHASE_IDLE:
                    print("cuvis-cluster: stopping ...", flush=True)
                stopped = cluster.stop()
    except Interrupted as exc:  # the first signal landed in the finally above, before stop() began
        interrupted = exc
        stopped = cluster.stop()
    if interrupted is not None:
        line = f"{prog}: {interrupted}; stopped {stopped} children"
        if cluster.killed:
            line += f"; SIGKILLed {', '.join(dict.fromkeys(cluster.killed))}"
        print(line, file=sys.stderr, flush=True)
        # 128 + N in every phase, the shell's convention for "ended by signal N": a script can tell a
        # stop it asked for from a cluster that failed (1) or one that ran to its end (0).
        status = 128 + interrupted.signum
    elif cluster.signal_received is not None:  # a signal while stopping for another reason
        name = signal.Signals(cluster.signal_received).name
        line = f"{prog}: {name} while stopping; stopped {stopped} children"
        if cluster.killed:
            line += f"; SIGKILLed {', '.join(dict.fromkeys(cluster.killed))}"
        print(line, file=sys.stderr, flush=True)
        status = status or 128 + cluster.signal_received
    print("cuvis-cluster: stopped", flush=True)
    return status
