"""One HTTP/2 stream of a :class:`~cuvis_cluster.gateway.h2link.Link`: its state and its send queue."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from cuvis_cluster.gateway.h2frames import CANCEL, Headers

if TYPE_CHECKING:
    from cuvis_cluster.gateway.h2link import Link


class Leg:
    """One HTTP/2 stream of a link, as the proxy sees it.

    ``handler`` receives the stream's events. What is sent on the leg is queued here and leaves as
    the peer's flow-control windows allow; ``on_sent(n)`` is called after ``n`` payload bytes were
    handed to the transport (where the proxy credits the other side).
    """

    __slots__ = (
        "answered",
        "closed",
        "end_queued",
        "expect",
        "handler",
        "headers_seen",
        "link",
        "on_sent",
        "out_window",
        "queue",
        "queued_bytes",
        "remote_closed",
        "sid",
        "trailers_queued",
    )

    def __init__(self, link: Link, sid: int, handler: Any = None) -> None:
        self.link = link
        self.sid = sid
        self.handler = handler
        self.on_sent: Callable[[int], None] | None = None
        self.queue: deque[memoryview] = deque()
        self.queued_bytes = 0
        self.end_queued = False
        self.trailers_queued: Headers | None = None
        self.closed = False  # we sent END_STREAM (or RST)
        self.remote_closed = False  # the peer sent END_STREAM (or RST)
        self.headers_seen = False
        self.answered = False  # we sent HEADERS on it (a response, or our request)
        self.expect = -1  # DATA bytes still due under a content-length; -1: none declared
        self.out_window = link.remote_initial_window

    def send_headers(self, headers: Headers, end_stream: bool = False) -> None:
        if self.closed:
            return
        self.link.send_headers(self, headers, end_stream)

    def send_data(self, chunk: memoryview) -> None:
        if self.closed or not chunk:
            return
        self.queue.append(chunk)
        self.queued_bytes += len(chunk)
        self.link.pump(self)

    def send_end(self) -> None:
        """END_STREAM after everything queued."""
        if self.closed:
            return
        self.end_queued = True
        self.link.pump(self)

    def send_trailers(self, headers: Headers) -> None:
        """Trailers (with END_STREAM) after everything queued."""
        if self.closed:
            return
        self.trailers_queued = headers
        self.link.pump(self)

    def reset(self, code: int = CANCEL) -> None:
        """RST_STREAM, unless both sides already finished."""
        if self.closed and self.remote_closed:
            return
        self.link.reset_stream(self.sid, code)
