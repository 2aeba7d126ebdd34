"""Per-node, per-stage timing of pipeline forwards (SetProfiling / GetProfilingSummary).

Each session owns one :class:`Profiler`. The pipeline asks it, per node call, whether to time the call
(:attr:`Profiler.enabled`) and wraps the call in :meth:`Profiler.measure`. Nothing is recorded and nothing
is synchronised while profiling is off, so the hook costs one attribute read per node call.

Statistics are streaming and O(1) in memory per (node, stage): count, mean and standard deviation by
Welford's update, min, max, total and last. The median is a P² estimate (Jain & Chlamtac, 1985): five
markers whose heights are adjusted with a piecewise-parabolic formula as observations arrive; exact for
the first five observations, and within a few percent of the sample median for the unimodal timing
distributions seen in practice. It never stores the observations.

``synchronize_cuda`` waits for the CUDA stream before and after each timed call so that the time covers
the kernels the node launched, not only their queueing; it is ignored when CUDA is not in use.
``skip_first_n`` drops the first ``n`` calls of every (node, stage) (warm-up, lazy allocation).
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from cuvis_cluster.engine.types import NodeProfilingStats
from cuvis_cluster.errors import InvalidArgument

STAGE_NAMES = ("train", "val", "test", "inference")


class P2Median:
    """Streaming median estimate with the P² algorithm (five markers, no stored samples)."""

    __slots__ = ("_desired", "_dn", "_heights", "_initial", "_positions")

    def __init__(self) -> None:
        self._initial: list[float] = []
        self._heights: list[float] = []
        self._positions: list[float] = []
        self._desired: list[float] = []
        p = 0.5
        self._dn = (0.0, p / 2, p, (1 + p) / 2, 1.0)

    def add(self, x: float) -> None:
        if len(self._initial) < 5:
            self._initial.append(x)
            if len(self._initial) == 5:
                self._heights = sorted(self._initial)
                self._positions = [1.0, 2.0, 3.0, 4.0, 5.0]
                self._desired = [1.0, 2.0, 3.0, 4.0, 5.0]
            return
        q, n = self._heights, self._positions
        if x < q[0]:
            q[0] = x
            k = 0
        elif x >= q[4]:
            q[4] = x
            k = 3
        else:
            k = 0
            while k < 3 and x >= q[k + 1]:
                k += 1
        for i in range(k + 1, 5):
            n[i] += 1
        for i in range(5):
            self._desired[i] += self._dn[i]
        for i in (1, 2, 3):
            d = self._desired[i] - n[i]
            if (d >= 1 and n[i + 1] - n[i] > 1) or (d <= -1 and n[i - 1] - n[i] < -1):
                step = 1 if d > 0 else -1
                candidate = self._parabolic(i, step)
                if not q[i - 1] < candidate < q[i + 1]:
                    candidate = q[i] + step * (q[i + step] - q[i]) / (n[i + step] - n[i])
                q[i] = candidate
                n[i] += step

    def _parabolic(self, i: int, d: int) -> float:
        q, n = self._heights, self._positions
        return q[i] + d / (n[i + 1] - n[i - 1]) * (
            (n[i] - n[i - 1] + d) * (q[i + 1] - q[i]) / (n[i + 1] - n[i])
            + (n[i + 1] - n[i] - d) * (q[i] - q[i - 1]) / (n[i] - n[i - 1])
        )

    @property
    def value(self) -> float:
        if len(self._initial) < 5:
            if not self._initial:
                return 0.0
            ordered = sorted(self._initial)
            mid = len(ordered) // 2
            return ordered[mid] if len(ordered) % 2 else 0.5 * (ordered[mid - 1] + ordered[mid])
        return self._heights[2]


@dataclass
class NodeStats:
    """Streaming timing statistics of one (node, stage), in milliseconds."""

    count: int = 0
    mean: float = 0.0
    m2: float = 0.0
    min: float = math.inf
    max: float = 0.0
    total: float = 0.0
    last: float = 0.0
    median: P2Median = field(default_factory=P2Median)

    def add(self, ms: float) -> None:
        self.count += 1
        delta = ms - self.mean
        self.mean += delta / self.count
        self.m2 += delta * (ms - self.mean)
        self.min = min(self.min, ms)
        self.max = max(self.max, ms)
        self.total += ms
        self.last = ms
        self.median.add(ms)

    @property
    def std(self) -> float:
        return math.sqrt(self.m2 / (self.count - 1)) if self.count > 1 else 0.0


def _stage_name(stage: object) -> str:
    value = getattr(stage, "value", stage)
    return str(value).lower()


class Profiler:
    """The timing collector of one session; thread-safe (concurrent Inference calls record into it)."""

    def __init__(self) -> None:
        self.enabled = False
        self.synchronize_cuda = False
        self.skip_first_n = 0
        self._lock = threading.Lock()
        self._seen: dict[tuple[str, str], int] = {}
        self._stats: dict[tuple[str, str], NodeStats] = {}

    def configure(
        self,
        enabled: bool,
        synchronize_cuda: bool | None = None,
        reset: bool | None = None,
        skip_first_n: int | None = None,
    ) -> bool:
        """Apply a SetProfiling request; unset options keep their current value. Returns ``enabled``."""
        if skip_first_n is not None and int(skip_first_n) < 0:
            raise InvalidArgument(f"skip_first_n must be >= 0, got {skip_first_n}", field="skip_first_n")
        with self._lock:
            if skip_first_n is not None:
                self.skip_first_n = int(skip_first_n)
            if synchronize_cuda is not None:
                self.synchronize_cuda = bool(synchronize_cuda)
            if reset:
                self._seen.clear()
                self._stats.clear()
            self.enabled = bool(enabled)
        return self.enabled

    def reset(self) -> None:
        with self._lock:
            self._seen.clear()
            self._stats.clear()

    def _sync(self) -> None:
        if self.synchronize_cuda and torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()

    @contextlib.contextmanager
    def measure(self, node_name: str, stage: object) -> Iterator[None]:
        """Time the enclosed node call (when enabled) and record it under ``(node_name, stage)``."""
        if not self.enabled:
            yield
            return
        self._sync()
        start = time.perf_counter()
        yield
        self._sync()
        self.record(node_name, stage, (time.perf_counter() - start) * 1000.0)

    def record(self, node_name: str, stage: object, ms: float) -> None:
        key = (node_name, _stage_name(stage))
        with self._lock:
            seen = self._seen.get(key, 0) + 1
            self._seen[key] = seen
            if seen <= self.skip_first_n:
                return
            stats = self._stats.get(key)
            if stats is None:
                stats = self._stats[key] = NodeStats()
            stats.add(ms)

    def summary(self, stage: object | None = None) -> list[NodeProfilingStats]:
        """One row per recorded (node, stage), optionally only for ``stage``, in first-seen order."""
        wanted = None if stage is None else _stage_name(stage)
        if wanted is not None and wanted not in STAGE_NAMES:
            raise InvalidArgument(
                f"unknown stage {stage!r}; expected one of {', '.join(STAGE_NAMES)}", field="stage"
            )
        with self._lock:
            rows = []
            for (node, stage_name), s in self._stats.items():
                if wanted is not None and stage_name != wanted:
                    continue
                rows.append(
                    NodeProfilingStats(
                        node_name=node,
                        stage=stage_name,
                        count=s.count,
                        mean_ms=s.mean,
                        median_ms=s.median.value,
                        std_ms=s.std,
                        min_ms=s.min if s.count else 0.0,
                        max_ms=s.max,
                        total_ms=s.total,
                        last_ms=s.last,
                    )
                )
        return rows
