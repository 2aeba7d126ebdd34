"""The gateway's front end: accepts client connections, starts a :class:`~cuvis_cluster.gateway.proxy.Call`
per stream, keeps the call metrics and drains on shutdown. It knows nothing about Redis."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import grpc

from cuvis_cluster.gateway import grpcwire
from cuvis_cluster.gateway.h2frames import H2Limits, SlabPool
from cuvis_cluster.gateway.h2link import DEFAULT_LIMITS, Leg, Link
from cuvis_cluster.gateway.proxy import Call
from cuvis_cluster.gateway.routes import Router
from cuvis_cluster.gateway.upstreams import Upstreams

log = logging.getLogger(__name__)

DRAIN_PING_BOUND = 1.0  # seconds the first phase of a drain waits for clients' PING acks


class FrontEnd:
    """Accepts client connections, runs calls, keeps metrics; knows nothing about Redis."""

    def __init__(
        self,
        router: Router,
        upstreams: Upstreams,
        *,
        metrics: Any = None,
        pool: SlabPool | None = None,
        identify: Callable[[Link, Call], str] | None = None,
        limits: H2Limits = DEFAULT_LIMITS,
    ) -> None:
        self.router = router
        self.upstreams = upstreams
        self.metrics = metrics
        self.pool = pool or upstreams.pool
        self.identify = identify
        self.limits = limits
        self.links: set[Link] = set()
        self.calls: set[Call] = set()
        self.accepting = True
        self._idle = asyncio.Event()
        self._idle.set()
        self._in_flight: dict[str, int] = {}
        self._finished: list[tuple[str, int, float, int, int]] = []
        self.refused_connections = 0  # closed at accept: http2_max_connections were open

    def protocol_factory(self) -> Link:
        link = Link(
            client_side=False,
            on_request=self._on_request,
            on_lost=self._on_lost,
            limits=self.limits,
            pool=self.pool,
        )
        if len(self.links) >= self.limits.max_connections:
            # The newest connection is closed at once; the ones already served keep their calls.
            link.over_capacity = True
            self.refused_connections += 1
            if self.refused_connections in (1, 10, 100) or not self.refused_connections % 1000:
                log.warning(
                    "%d client connections open (http2_max_connections); refused %d so far",
                    len(self.links),
                    self.refused_connections,
                )
            return link
        self.links.add(link)
        return link

    def _on_lost(self, link: Link, exc: BaseException | None) -> None:
        self.links.discard(link)

    def _on_request(self, link: Link, leg: Leg, headers: list[tuple[bytes, bytes]]) -> Call | None:
        if not self.accepting:
            return None
        call = Call(self, leg, headers)
        self.calls.add(call)
        self._idle.clear()
        return call

    # -- metrics ---------------------------------------------------------------------------------
    # Per-call work is a dict update and a list append; :meth:`flush_metrics` (called by the gateway
    # about twice a second and before shutdown) moves the totals into the Prometheus objects. This
    # keeps prometheus_client's locks off the per-call path.
    def metrics_start(self, call: Call) -> None:
        if self.metrics is not None and not call.counted:
            call.counted = True
            method = call.method
            count = self._in_flight.get(method)
            if count is None:
                self.metrics.in_flight.labels(method).set_function(lambda m=method: self._in_flight[m])
                count = 0
            self._in_flight[method] = count + 1

    def call_done(self, call: Call, message: str) -> None:
        if call not in self.calls:
            return
        self.calls.discard(call)
        if not self.calls:
            self._idle.set()
        plan = call.plan
        status = call.status if call.status is not None else grpc.StatusCode.UNKNOWN.value[0]
        if plan is not None and plan.after is not None:
            try:
                plan.after(call, status, message)
            except Exception:
                log.exception("after-call hook failed")
        if self.metrics is not None:
            if call.counted:
                self._in_flight[call.method] -= 1
            stats = call.stats
            self._finished.append(
                (call.method, status, time.perf_counter() - stats.started, stats.bytes_in, stats.bytes_out)
            )
            if len(self._finished) >= 10_000:
                self.flush_metrics()

    def flush_metrics(self) -> None:
        finished, self._finished = self._finished, []
        if not finished or self.metrics is None:
            return
        m = self.metrics
        counts: dict[tuple[str, int], int] = {}
        sizes: dict[str, list[int]] = {}
        for method, status, seconds, bytes_in, bytes_out in finished:
            counts[(method, status)] = counts.get((method, status), 0) + 1
            total = sizes.get(method)
            if total is None:
                sizes[method] = [bytes_in, bytes_out]
            else:
                total[0] += bytes_in
                total[1] += bytes_out
            m.latency.labels(method).observe(seconds)
        for (method, status), n in counts.items():
            m.requests.labels(method, grpcwire.CODE_NAME.get(status, "UNKNOWN")).inc(n)
        for method, (bytes_in, bytes_out) in sizes.items():
            m.bytes_in.labels(method).inc(bytes_in)
            m.bytes_out.labels(method).inc(bytes_out)

    def in_flight(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for call in self.calls:
            counts[call.method] = counts.get(call.method, 0) + 1
        return counts

    async def drain(self, grace: float) -> None:
        """Stop taking calls, tell clients (GOAWAY), let running calls finish within ``grace``.

        Two-phase GOAWAY (RFC 9113 section 6.8): first a GOAWAY that still admits every stream, with
        a PING; once the PING comes back (or after a bound), the client has seen it, and the final
        GOAWAY names the last stream served. Calls the client started meanwhile are served, not lost.
        """
        loop = asyncio.get_running_loop()
        started = loop.time()
        acks = [link.goaway_soon() for link in list(self.links)]
        if acks:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.gather(*acks), min(grace, DRAIN_PING_BOUND))
        self.accepting = False
        for link in list(self.links):
            link.goaway()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._idle.wait(), max(0.0, grace - (loop.time() - started)))
        for call in list(self.calls):
            call.fail(grpc.StatusCode.UNAVAILABLE, "the gateway is shutting down")
        for link in list(self.links):
            link.close()
        self.flush_metrics()
