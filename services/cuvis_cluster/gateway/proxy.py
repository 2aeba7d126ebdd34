"""Cut-through gRPC forwarding: one :class:`Call` pairs a client stream with a worker stream.

A call goes through three phases:

1. **Head.** The request HEADERS give the method (``:path``). The router
   (:class:`~cuvis_cluster.gateway.routes.Router`) says what the call needs: nothing (session-less,
   placement, local services) or the value of a request field (the session id).
2. **Scan.** Request DATA is fed to a :class:`~cuvis_cluster.gateway.scan.FieldScanner` and kept
   (as memoryviews of the receive slabs) until the field is known, usually within the first DATA
   frame. The router then answers from its cache at once, or after one Redis round trip.
3. **Forward.** A stream is opened on a pooled connection to the chosen worker
   (:mod:`cuvis_cluster.gateway.upstreams`); what was kept is
   sent, and from then on every DATA piece is forwarded as it arrives. Client bytes are credited back
   to the client (WINDOW_UPDATE) only once written towards the worker, so the worker's pace limits the
   client end to end. Responses travel the other way the same way.

Errors that the gateway itself decides are sent as trailers-only responses with a percent-encoded
``grpc-message``; the worker's own statuses pass through untouched. Client connections are accepted
by :class:`~cuvis_cluster.gateway.frontend.FrontEnd`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import grpc

from cuvis_cluster import errors
from cuvis_cluster.gateway import grpcwire
from cuvis_cluster.gateway.h2frames import CANCEL, NO_ERROR, REFUSED_STREAM
from cuvis_cluster.gateway.h2link import Leg, Link
from cuvis_cluster.gateway.routes import Plan, Route
from cuvis_cluster.gateway.scan import FieldScanner, ScanError, message_too_large
from cuvis_cluster.gateway.upstreams import reason
from cuvis_cluster.routing.metadata import CLUSTER_TOKEN_HEADER, PREFIX
from cuvis_cluster.wire.status import status_for

# Metadata a client may not set: the gateway drops it and adds its own (routing.metadata).
_RESERVED_PREFIX = PREFIX.encode("ascii")

if TYPE_CHECKING:
    from cuvis_cluster.gateway.frontend import FrontEnd

log = logging.getLogger(__name__)

UNAVAILABLE = grpc.StatusCode.UNAVAILABLE

# RST_STREAM codes from a worker, as the status the client should see (gRPC HTTP/2 spec).
_RST_STATUS = {
    NO_ERROR: grpc.StatusCode.INTERNAL,
    REFUSED_STREAM: grpc.StatusCode.UNAVAILABLE,
    CANCEL: grpc.StatusCode.CANCELLED,
}


@dataclass(slots=True)
class CallStats:
    bytes_in: int = 0
    bytes_out: int = 0
    started: float = field(default_factory=time.perf_counter)


class Call:
    """One forwarded RPC: the client leg ``down`` and, once routed, the worker leg ``up``."""

    __slots__ = (
        "buffered",
        "closed",
        "counted",
        "deadline",
        "deadline_handle",
        "down",
        "down_credited",
        "down_ended",
        "fe",
        "headers",
        "identity",
        "method",
        "path",
        "plan",
        "precredited",
        "prefix",
        "response_started",
        "route",
        "scanner",
        "session",
        "stats",
        "status",
        "task",
        "up",
        "up_credited",
        "value",
    )

    def __init__(self, fe: FrontEnd, down: Leg, headers: list[tuple[bytes, bytes]]) -> None:
        self.fe = fe
        self.down = down
        self.up: Leg | None = None
        self.headers = headers
        self.path = b""
        self.method = "unknown"
        self.identity = ""
        self.plan: Plan | None = None
        self.route: Route | None = None
        self.scanner: FieldScanner | None = None
        self.prefix: bytearray | None = None  # first bytes of a request not scanned, for the size limit
        self.buffered: list[memoryview] = []
        self.precredited = 0
        self.down_credited = 0
        self.up_credited = 0
        self.counted = False
        self.down_ended = False
        self.response_started = False
        self.closed = False
        self.status: int | None = None
        self.deadline: float | None = None
        self.deadline_handle: asyncio.TimerHandle | None = None
        self.task: asyncio.Task | None = None
        self.session = ""
        self.value = ""
        self.stats = CallStats()

    # -- header helpers --------------------------------------------------------------------------
    def header(self, name: bytes) -> bytes | None:
        for k, v in self.headers:
            if k == name:
                return v
        return None

    # -- client leg events -----------------------------------------------------------------------
    def leg_started(self, leg: Leg, headers: list[tuple[bytes, bytes]], ended: bool) -> None:
        try:
            self._head(headers)
        except errors.CuvisError as exc:
            self.fail_error(exc)
            return
        if ended:
            self.leg_end(leg)

    def _head(self, headers: list[tuple[bytes, bytes]]) -> None:
        method = path = ctype = None
        for k, v in headers:
            if k == b":path":
                path = v
            elif k == b":method":
                method = v
            elif k == b"content-type":
                ctype = v
            elif k == b"grpc-timeout":
                timeout = grpcwire.parse_timeout(v)
                if timeout is None:
                    raise errors.InvalidArgument(f"malformed grpc-timeout {v!r}")
                self.deadline = time.monotonic() + timeout
                self.deadline_handle = asyncio.get_running_loop().call_later(timeout, self._deadline_hit)
        if method != b"POST" or path is None:
            raise errors.Unimplemented("only gRPC (POST) requests are served")
        if ctype is None or not ctype.startswith(b"application/grpc"):
            raise errors.Unimplemented(f"unsupported content-type {ctype!r}")
        self.path = path
        plan = self.fe.router.plan(self)
        self.plan = plan
        self.method = plan.method
        self.fe.metrics_start(self)
        if plan.error is not None:
            raise plan.error
        if plan.max_message and not plan.field_number:
            self.prefix = bytearray()
        if plan.route is not None:
            self._routed(plan.route)
        elif plan.field_number:
            encoding = self.header(b"grpc-encoding")
            try:
                self.scanner = FieldScanner(
                    plan.field_number,
                    encoding=encoding.decode("ascii", "replace") if encoding else None,
                    field_name=plan.field_name,
                    max_message=plan.max_message,
                )
            except ScanError as exc:
                raise exc.error from None
        else:
            self._resolve("")

    def leg_data(self, leg: Leg, mv: memoryview) -> None:
        if leg is not self.down:
            self._up_data(mv)
            return
        self.stats.bytes_in += len(mv)
        if self.closed:
            self._give_down(len(mv))
            return
        scanner = self.scanner
        if scanner is not None:
            deciding = not scanner.decided
            try:
                scanner.feed(mv)
            except ScanError as exc:
                self.fail_error(exc.error)
                return
            if deciding:
                # Until routed, let the client keep sending: the field may come late in the message.
                self._give_down(len(mv))
                self.precredited += len(mv)
                self.buffered.append(mv)
                if scanner.decided:
                    self._field_known()
                return
        elif self.prefix is not None:
            self._check_size(mv)
            if self.closed:
                return
        if self.up is not None:
            self.up.send_data(mv)
        else:
            self.buffered.append(mv)

    def _check_size(self, mv: memoryview) -> None:
        prefix = self.prefix
        assert prefix is not None and self.plan is not None
        prefix += mv[: 5 - len(prefix)]
        if len(prefix) == 5:
            self.prefix = None
            size = int.from_bytes(prefix[1:5], "big")
            if size > self.plan.max_message:
                self.fail(grpc.StatusCode.RESOURCE_EXHAUSTED, message_too_large(size, self.plan.max_message))

    def leg_end(self, leg: Leg) -> None:
        if leg is not self.down:
            self._up_end()
            return
        self.down_ended = True
        if self.closed:
            return
        if self.scanner is not None:
            try:
                self.scanner.finish()
            except ScanError as exc:
                self.fail_error(exc.error)
                return
        if self.up is not None:
            self.up.send_end()

    def leg_reset(self, leg: Leg, code: int) -> None:
        if leg is self.down:
            # The client cancelled: cancel the worker's stream too.
            self.status = grpc.StatusCode.CANCELLED.value[0]
            if self.up is not None:
                self.up.reset(CANCEL)
            self._finish("client cancelled")
            return
        status = _RST_STATUS.get(code, grpc.StatusCode.INTERNAL)
        if code == REFUSED_STREAM:
            msg = f"worker {self._where()} refused the stream"
        else:
            msg = f"worker {self._where()} reset the stream (HTTP/2 error {code})"
        self.fail(status, msg, reset_up=False)

    def leg_lost(self, leg: Leg, exc: BaseException | None) -> None:
        if leg is self.down:
            if self.up is not None:
                self.up.reset(CANCEL)
            self.status = grpc.StatusCode.CANCELLED.value[0]
            self._finish("client connection lost")
            return
        if self.route is not None:
            self.fe.router.upstream_lost(self.route, exc)
        self.fail(
            UNAVAILABLE, f"lost the connection to worker {self._where()} during the call: {reason(exc)}"
        )

    # -- worker leg events -----------------------------------------------------------------------
    def leg_headers(self, leg: Leg, headers: list[tuple[bytes, bytes]], end: bool, trailers: bool) -> None:
        if self.closed:
            return
        if not trailers and not self.response_started:
            self.response_started = True
            out = grpcwire.response_headers(headers)
            if end:  # trailers-only response from the worker
                self._note_status(headers)
                self.down.send_headers(out, end_stream=True)
                self._after_response()
                return
            self.down.send_headers(out)
            return
        self._note_status(headers)
        self.down.send_trailers([(k, v) for k, v in headers if k not in grpcwire.HOP_BY_HOP])
        self._after_response()

    def _up_data(self, mv: memoryview) -> None:
        self.stats.bytes_out += len(mv)
        if self.closed:
            self._give_up(len(mv))
            return
        self.down.send_data(mv)

    def _up_end(self) -> None:
        # END_STREAM without trailers: not valid gRPC; report it as the spec asks.
        if not self.closed:
            self.fail(grpc.StatusCode.INTERNAL, f"worker {self._where()} ended the stream without a status")

    def _note_status(self, headers: list[tuple[bytes, bytes]]) -> None:
        for k, v in headers:
            if k == b"grpc-status":
                try:
                    self.status = int(v)
                except ValueError:
                    self.status = grpc.StatusCode.UNKNOWN.value[0]
                return
        self.status = grpc.StatusCode.UNKNOWN.value[0]

    def _after_response(self) -> None:
        self.closed = True
        if not self.down_ended and not self.down.remote_closed:
            # The worker answered before the request finished: stop the upload.
            self.down.reset(NO_ERROR)
        self._finish("")

    # -- routing ---------------------------------------------------------------------------------
    def _field_known(self) -> None:
        assert self.scanner is not None
        try:
            value = self.scanner.value
        except ScanError as exc:
            self.fail_error(exc.error)
            return
        self._resolve(value)

    def _resolve(self, value: str) -> None:
        self.value = value
        plan = self.plan
        assert plan is not None and plan.resolve is not None
        try:
            result = plan.resolve(self, value)
        except errors.CuvisError as exc:
            self.fail_error(exc)
            return
        if isinstance(result, Route):
            self._routed(result)
        else:
            self.task = asyncio.ensure_future(self._resolve_async(result))

    async def _resolve_async(self, pending: Awaitable[Route]) -> None:
        try:
            route = await pending
        except errors.CuvisError as exc:
            self.fail_error(exc)
            return
        except asyncio.CancelledError:
            return
        except Exception as exc:
            log.exception("routing failed for %s", self.method)
            self.fail(grpc.StatusCode.INTERNAL, f"gateway routing error: {type(exc).__name__}")
            return
        if not self.closed:
            self._routed(route)

    def _routed(self, route: Route) -> None:
        if self.closed:
            return
        self.route = route
        link = self.fe.upstreams.ready(route.address)
        if link is not None:
            self._open(link)
        else:
            self.task = asyncio.ensure_future(self._connect_then_open(route))

    async def _connect_then_open(self, route: Route) -> None:
        try:
            link = await self.fe.upstreams.get(route.address)
        except errors.CuvisError as exc:
            if not route.local:
                self.fe.router.upstream_lost(route, None)
            self.fail_error(exc)
            return
        except asyncio.CancelledError:
            return
        if not self.closed:
            self._open(link)

    def _open(self, link: Link) -> None:
        route = self.route
        assert route is not None
        headers = self._upstream_headers(route, link)
        try:
            up = link.open_stream(headers, self)
        except Exception as exc:
            self.fail(UNAVAILABLE, f"cannot open a stream to worker {route.address}: {exc}")
            return
        self.up = up
        up.on_sent = self._credit_down
        self.down.on_sent = self._credit_up
        buffered, self.buffered = self.buffered, []
        for mv in buffered:
            up.send_data(mv)
        if self.down_ended:
            up.send_end()

    def _upstream_headers(self, route: Route, link: Link) -> list[tuple[bytes, bytes]]:
        scheme = b"https" if link.ssl_object is not None else b"http"
        out = [(b":method", b"POST"), (b":scheme", scheme), (b":path", self.path)]
        rest = []
        for k, v in self.headers:
            if k[0] == 58:  # ':'
                if k == b":authority":
                    out.append((k, v))
                continue
            if k in grpcwire.HOP_BY_HOP or k.startswith(_RESERVED_PREFIX) or k == b"authorization":
                continue
            if k == b"grpc-timeout":
                continue
            rest.append((k, v))
        out.extend(rest)
        out.append((b"te", b"trailers"))
        if self.deadline is not None:
            out.append((b"grpc-timeout", grpcwire.format_timeout(self.deadline - time.monotonic())))
        out.extend(route.extra_headers)
        if not route.local and self.fe.router.cluster_token is not None:
            out.append((CLUSTER_TOKEN_HEADER, self.fe.router.cluster_token))
        return out

    def _credit_down(self, n: int) -> None:
        """``n`` client bytes left towards the worker: let the client send as much again."""
        if self.precredited:
            k = min(n, self.precredited)
            self.precredited -= k
            n -= k
        if n:
            self._give_down(n)

    def _give_down(self, n: int) -> None:
        room = self.stats.bytes_in - self.down_credited
        n = min(n, room)
        if n > 0:
            self.down_credited += n
            self.down.link.credit(self.down.sid, n)

    def _credit_up(self, n: int) -> None:
        self._give_up(n)

    def _give_up(self, n: int) -> None:
        up = self.up
        if up is None:
            return
        room = self.stats.bytes_out - self.up_credited
        n = min(n, room)
        if n > 0:
            self.up_credited += n
            up.link.credit(up.sid, n)

    # -- ending ----------------------------------------------------------------------------------
    def _deadline_hit(self) -> None:
        self.deadline_handle = None
        if not self.closed:
            self.fail(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded (enforced by the gateway)")

    def fail_error(self, exc: BaseException, *, reset_up: bool = True) -> None:
        """End the call with the status that the shared error table assigns to ``exc``."""
        code, message = status_for(exc)
        self.fail(code, message, reset_up=reset_up)

    def fail(self, code: grpc.StatusCode, message: str, *, reset_up: bool = True) -> None:
        """End the call with a status decided by the gateway."""
        if self.closed:
            return
        self.closed = True
        self.status = code.value[0]
        if reset_up and self.up is not None:
            self.up.reset(CANCEL)
        down = self.down
        if not down.closed:
            down.queue.clear()
            down.queued_bytes = 0
            if self.response_started:
                down.send_headers(grpcwire.trailers(code.value[0], message), end_stream=True)
            else:
                down.send_headers(grpcwire.trailers_only(code.value[0], message), end_stream=True)
            if not down.remote_closed:
                down.reset(NO_ERROR)
        self._finish(message)

    def _finish(self, message: str) -> None:
        self.closed = True
        if self.deadline_handle is not None:
            self.deadline_handle.cancel()
            self.deadline_handle = None
        if self.task is not None and not self.task.done():
            self.task.cancel()
        self.buffered = []
        # Request bytes that will never reach the worker still count against the client's connection
        # window: give them back. (Response bytes still queued for the client are credited as sent.)
        self._give_down(self.stats.bytes_in)
        if not self.down.queue:
            self._give_up(self.stats.bytes_out)
        self.fe.call_done(self, message)

    def _where(self) -> str:
        r = self.route
        if r is None:
            return "?"
        return f"{r.address} (instance {r.instance})" if r.instance else r.address
