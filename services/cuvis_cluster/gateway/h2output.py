"""The sending half of an HTTP/2 connection: frames out, outbound flow control, batched writes.

:class:`LinkOutput` is a base class of :class:`~cuvis_cluster.gateway.h2link.Link`; it holds no state
of its own (``Link.__init__`` sets every attribute annotated here). What it queues in ``_out`` leaves
in one ``writev`` per connection: after the read being handled, or at the end of the loop iteration.

Every byte queued is counted (``_appended``, once per frame or header block, never per byte), so that
the guard can tell how much has left the transport (:mod:`~cuvis_cluster.gateway.h2guard`).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

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
from cuvis_cluster.gateway.h2guard import EARN_SHIFT
from cuvis_cluster.gateway.h2stream import Leg
from cuvis_cluster.gateway.hpackfast import Encoder

CLOSED_RING_MASK = 63  # the last 64 closed stream ids are remembered
FAIL_LINGER = 1.0  # seconds a connection closed for an error may take to flush its GOAWAY

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
    _out_done: bool
    _loop: asyncio.AbstractEventLoop
    _blocked: dict[int, Leg]
    _next_sid: int
    _closed_ring: list[int]
    _closed_pos: int
    _appended: int
    _handed: int
    _moved: int

    if TYPE_CHECKING:  # provided by LinkControl

        def remember(self, sid: int, we_reset: bool) -> None: ...
        def stream_finished(self) -> None: ...

    def send_headers(self, leg: Leg, headers: Headers, end_stream: bool) -> None:
        if self.closed:
            return
        block = self.encoder.encode(headers)
        flags = FLAG_END_STREAM if end_stream else 0
        out = self._out
        limit = self.remote_max_frame
        leg.answered = True
        self._appended += len(block) + 9
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
                self._appended += 9
        self._schedule()
        if end_stream:
            self.local_done(leg)

    def reset_stream(self, sid: int, code: int) -> None:
        leg = self.legs.get(sid)
        if leg is not None:
            leg.closed = leg.remote_closed = True
            leg.queue.clear()
        self._drop(sid)
        self.remember(sid, True)  # frames the peer sent before it saw the reset are ignored
        if not self.closed:
            self._write_raw(rst_stream(sid, code))

    def local_done(self, leg: Leg) -> None:
        """We sent END_STREAM on ``leg``; forget it once the peer has finished too."""
        leg.closed = True
        self._blocked.pop(leg.sid, None)
        if leg.remote_closed:
            self.stream_finished()
            self._drop(leg.sid)

    def _drop(self, sid: int) -> None:
        if self.legs.pop(sid, None) is not None:
            pos = self._closed_pos  # the last few closed streams (section 5.1: "closed" vs "idle")
            self._closed_ring[pos] = sid
            self._closed_pos = (pos + 1) & CLOSED_RING_MASK
        self._blocked.pop(sid, None)
        self._in_streams.pop(sid, None)
        self._credit_streams.pop(sid, None)
        if self.goaway_received and not self.legs:
            self._loop.call_soon(self.close)

    def _write_raw(self, data: bytes) -> None:
        self._out.append(data)
        self._appended += len(data)
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
            sent = frames = 0
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
                frames += 1
            if sent:
                self._schedule()
                self._appended += sent + 9 * frames
                # A frame sent counts as 16 KiB moved: a client may answer each with a PING (BDP).
                self._moved += sent + (frames << EARN_SHIFT)
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
            self._appended += 13
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
            self._appended += 13
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
        if out and self.transport is not None and not self.transport.is_closing() and not self._out_done:
            self._handed = self._appended
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
        self._write_out()
        self.closed = True  # parse nothing more from this peer; what it still sends is discarded
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        # Lingering close: closing a socket with unread input makes the kernel send a TCP reset,
        # which can destroy the GOAWAY on its way. So: half-close after the GOAWAY, keep reading
        # (and dropping) the peer's bytes, and abort after FAIL_LINGER, also for a peer that reads
        # nothing (the abusers this is mostly for), which would otherwise hold its buffers for ever.
        if transport.can_write_eof():
            transport.write_eof()
        self._out_done = True
        self._loop.call_later(FAIL_LINGER, self.abort)
