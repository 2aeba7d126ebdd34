"""Where a new session goes. A small seam: pass another :class:`PlacementPolicy` to the router."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from cuvis_cluster import errors
from cuvis_cluster.routing.membership import WorkerInfo


class NoWorker(Exception):
    """Placement failed; ``error`` (a domain error) and ``reason`` (a metrics label) say why."""

    def __init__(self, kind: type[errors.CuvisError], reason: str, message: str) -> None:
        super().__init__(message)
        self.error = kind(message)
        self.reason = reason


class PlacementPolicy:
    """Least loaded first: fewest sessions, then most free device memory; ties rotate.

    Only live, non-draining workers with a free session slot are candidates. No candidates although
    workers exist: RESOURCE_EXHAUSTED; no workers at all: UNAVAILABLE.
    """

    def __init__(self) -> None:
        self._turn = itertools.count()

    def candidates(self, workers: Sequence[WorkerInfo]) -> list[WorkerInfo]:
        return [w for w in workers if not w.draining and w.has_room]

    def choose(self, workers: Sequence[WorkerInfo]) -> WorkerInfo:
        if not workers:
            raise NoWorker(errors.Unavailable, "no_workers", "no worker is registered with the cluster")
        pool = self.candidates(workers)
        if not pool:
            draining = sum(1 for w in workers if w.draining)
            full = len(workers) - draining
            raise NoWorker(
                errors.ResourceExhausted,
                "no_capacity",
                f"no worker can take a new session: {full} at their session limit, {draining} draining "
                f"(of {len(workers)} workers); close idle sessions or add workers",
            )
        best = min((w.sessions, -w.device_free) for w in pool)
        tied = [w for w in pool if (w.sessions, -w.device_free) == best]
        tied.sort(key=lambda w: w.instance)
        return tied[next(self._turn) % len(tied)]
