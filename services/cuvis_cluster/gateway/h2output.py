"""The sending half of an HTTP/2 connection: frames out, outbound flow control, batched writes.

:class:`LinkOutput` is a base class of :class:`~cuvis_cluster.gateway.h2link.Link`; it holds no state
of its own (``Link.__init__`` sets every attribute annotated here). What it queues in ``_out`` leaves
in one ``writev`` per connection: after the read being handled, or at the end of the loop iteration.
"""

from __future__ import annotations

import asyncio
from typing import Any

from cuvis_cluster.gateway.h2frames import (
    CONTINUATION,
    DATA,
    FLAG_END_HEADERS,
    FLAG_END_STREAM,
    HEADERS,
    NO_ERROR,
    PING,
    Headers,
    frame_header,
    goaway_frame,
    rst_stream,
    window_update,
)
from cuvis_cluster.gateway.h2stream import Leg
from cuvis_cluster.gateway.hpackfast import Encoder

# Links with output produced while a read is being handled; written when the read is done.
dirty_links: list[LinkOutput] = []
dispatch_depth = [0]


def flush_dirty() -> None:
    while dirty_links:
        links = dirty_links[:]
        dirty_links.clear()
        for link in links:
            link._write_out()


class LinkOutput:
    """Sending on one connection; the receiving side lives in the subclass ``Link``."""

    closed: bool
    transport: asyncio.Transport | None
    legs: dict[int, Leg]
    encoder: Encoder
    stream_window: int
    remote_initial_window: int
    remote_max_frame: int
    remote_max_streams: int
    out_conn_window: int
    highest_inbound: int
    goaway_received: bool
    goaway_sent: bool
    pings_outstanding: int
    _in_conn: int
    _in_streams: dict[int, int]
    _credit_conn: int
    _credit_streams: dict[int, int]
    _credit_threshold: int
    _write_paused: bool
    _out: list[Any]
    _write_scheduled: bool
    _loop: asyncio.AbstractEventLoop
    _blocked: dict[int, Leg]
    _next_sid: int

    def send_headers(self, leg: Leg, headers: Headers, end_stream: bool) -> None:
        if self.closed:
            return
        block = self.encoder.encode(headers)
        flags = FLAG_END_STREAM if end_stream else 0
        out = self._out
        limit = self.remote_max_frame
        if len(block) <= limit:
            out.append(frame_header(len(block), HEADERS, flags | FLAG_END_HEADERS, leg.sid))
            out.append(block)
        else:
            first, rest = block[:limit], block[limit:]
            out.append(frame_header(len(first), HEADERS, flags, leg.sid))
            out.append(first)
            while rest:
                piece, rest = rest[:limit], rest[limit:]
                out.append(frame_header(len(piece), CONTINUATION, 0 if rest else FLAG_END_HEADERS, leg.sid))
                out.append(piece)
        self._schedule()
        if end_stream:
            self.local_done(leg)

    def reset_stream(self, sid: int, code: int) -> None:
        leg = self.legs.get(sid)
        if leg is not None:
            leg.closed = leg.remote_closed = True
            leg.queue.clear()
        self._drop(sid)
        if not self.closed:
            self._write_raw(rst_stream(sid, code))

    def local_done(self, leg: Leg) -> None:
        """We sent END_STREAM on ``leg``; forget it once the peer has finished too."""
        leg.closed = True
        self._blocked.pop(leg.sid, None)
        if leg.remote_closed:
            self._drop(leg.sid)

    def _drop(self, sid: int) -> None:
        self.legs.pop(sid, None)
        self._blocked.pop(sid, None)
        self._in_streams.pop(sid, None)
        self._credit_streams.pop(sid, None)
        if self.goaway_received and not self.legs:
            self._loop.call_soon(self.close)

    def _write_raw(self, data: bytes) -> None:
        self._out.append(data)
        self._schedule()

    def pump(self, leg: Leg) -> None:
        """Send what ``leg`` has queued, as far as windows and the transport allow."""
        if self.closed or leg.closed:
            return
        if self._write_paused:
            self._blocked[leg.sid] = leg
            return
        queue = leg.queue
        if queue:
            out = self._out
            max_frame = self.remote_max_frame
            sid = leg.sid
            sent = 0
            while queue:
                window = min(self.out_conn_window, leg.out_window)
                if window <= 0:
                    break
                chunk = queue[0]
                n = len(chunk)
                if n > window or n > max_frame:
                    n = min(window, max_frame)
                    queue[0] = chunk[n:]
                    chunk = chunk[:n]
                else:
                    queue.popleft()
                out.append(frame_header(n, DATA, 0, sid))
                out.append(chunk)
                self.out_conn_window -= n
                leg.out_window -= n
                sent += n
            if sent:
                self._schedule()
                leg.queued_bytes -= sent
                if leg.on_sent is not None:
                    leg.on_sent(sent)
            if queue:
                self._blocked[leg.sid] = leg
                return
        self._blocked.pop(leg.sid, None)
        if leg.closed:
            return
        if leg.trailers_queued is not None:
            headers, leg.trailers_queued = leg.trailers_queued, None
            self.send_headers(leg, headers, True)
        elif leg.end_queued:
            leg.end_queued = False
            self._write_raw(frame_header(0, DATA, FLAG_END_STREAM, leg.sid))
            self.local_done(leg)

    def _pump_blocked(self) -> None:
        if not self._blocked:
            return
        for leg in list(self._blocked.values()):
            if self._write_paused:
                return
            self.pump(leg)

    def credit(self, sid: int, n: int) -> None:
        """The proxy passed on ``n`` bytes received on stream ``sid``: let the peer send more.

        WINDOW_UPDATEs go out once a quarter of a window has been consumed, per stream and for the
        connection; only the stream at hand and the connection are looked at (constant time).
        """
        threshold = self._credit_threshold
        conn = self._credit_conn + n
        if conn >= threshold and not self.closed:
            self._out.append(window_update(0, conn))
            self._in_conn += conn
            conn = 0
            self._schedule()
        self._credit_conn = conn
        window = self._in_streams.get(sid)
        if window is None:
            return
        pending = self._credit_streams.get(sid, 0) + n
        if pending >= threshold and not self.closed:
            self._out.append(window_update(sid, pending))
            self._in_streams[sid] = window + pending
            self._credit_streams.pop(sid, None)
            self._schedule()
        else:
            self._credit_streams[sid] = pending

    def _schedule(self) -> None:
        # Everything produced while handling one read leaves in one writev per connection when that
        # read has been handled (no extra loop iteration); from other callbacks, at the end of this
        # loop iteration.
        if not self._write_scheduled:
            self._write_scheduled = True
            if dispatch_depth[0]:
                dirty_links.append(self)
            else:
                self._loop.call_soon(self._write_out)

    def _write_out(self) -> None:
        self._write_scheduled = False
        out, self._out = self._out, []
        if out and self.transport is not None and not self.transport.is_closing():
            if len(out) == 1:
                self.transport.write(out[0])
            else:
                self.transport.writelines(out)

    def ping(self, payload: bytes = b"cuvisgw!") -> None:
        if not self.closed:
            self.pings_outstanding += 1
            self._write_raw(frame_header(8, PING, 0, 0) + payload[:8].ljust(8, b"\0"))

    def goaway(self, code: int = NO_ERROR) -> None:
        """Tell the peer that no new streams will be accepted (graceful shutdown)."""
        if self.closed or self.goaway_sent:
            return
        self.goaway_sent = True
        self._write_raw(goaway_frame(self.highest_inbound, code))

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self._write_out()
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def _fail(self, code: int, message: str = "") -> None:
        if self.closed:
            return
        debug = message.encode("utf-8", "replace")[:200]
        self._write_raw(goaway_frame(self.highest_inbound, code, debug))
        self.close()
