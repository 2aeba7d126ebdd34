"""One HTTP/2 connection of the gateway: a small, purpose-built HTTP/2 engine for a gRPC proxy.

Why not ``h2``'s connection object: measured on this machine it spends about 450 us of CPU per
forwarded unary call (frame objects, event objects, two state machines per frame), which alone
exceeds the +0.4 ms budget. This engine does only what a gRPC proxy needs (RFC 9113):

* frames are parsed in place from receive slabs; HEADERS/CONTINUATION are decoded with
  :mod:`cuvis_cluster.gateway.hpackfast`; the control frames and the stream-state rules are in
  :mod:`~cuvis_cluster.gateway.h2control`; server push is refused;
* it defends itself (:mod:`~cuvis_cluster.gateway.h2guard`): concurrent streams, resets and control
  frames per window, header blocks, frame sizes, the control queue, timeouts and keepalive;
* **DATA is copy-free.** The kernel reads straight into a receive slab (``BufferedProtocol``). A DATA
  payload is handed to the stream as ``memoryview`` slices *as it arrives*, before its frame is
  complete, and leaves on the other connection as raw frames (9-byte header + the slice) through
  ``writelines`` without a Python-level copy. A slab is reused only once nothing references it
  (``sys.getrefcount``): queued chunks and the transport's write buffer hold views of it.
* flow control is explicit both ways: the peer's windows limit what :meth:`Link.pump` sends; our
  windows are re-opened (WINDOW_UPDATE) only through :meth:`Link.credit`, which the proxy calls when
  it has passed bytes on, so a slow reader slows the writer end to end;
* everything written while handling one read (or one callback) leaves in a single ``writev``.

The engine in pieces: :mod:`~cuvis_cluster.gateway.h2frames` (wire format, :class:`H2Limits`, receive
slabs), :mod:`~cuvis_cluster.gateway.h2stream` (a stream, :class:`Leg`),
:mod:`~cuvis_cluster.gateway.h2control` (control frames, stream states),
:mod:`~cuvis_cluster.gateway.h2guard` (defences),
:mod:`~cuvis_cluster.gateway.h2output` (the sending half) and this module (the connection: its state and
the receiving half). Sizes and limits come from :class:`H2Limits` (the gateway's ``http2_*`` settings).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, cast

from cuvis_cluster.gateway.h2control import LinkControl
from cuvis_cluster.gateway.h2fields import check_request, trailers_problem
from cuvis_cluster.gateway.h2frames import (
    COMPRESSION_ERROR,
    CONTINUATION,
    DATA,
    ENHANCE_YOUR_CALM,
    FLAG_ACK,
    FLAG_END_HEADERS,
    FLAG_END_STREAM,
    FLAG_PADDED,
    FLAG_PRIORITY,
    FLOW_CONTROL_ERROR,
    FRAME_SIZE_ERROR,
    HEADERS,
    INITIAL_WINDOW,
    MAX_WINDOW,
    MIN_MAX_FRAME,
    NO_ERROR,
    PREFACE,
    PROTOCOL_ERROR,
    PUSH_PROMISE,
    REFUSED_STREAM,
    S_ENABLE_PUSH,
    S_INITIAL_WINDOW_SIZE,
    S_MAX_CONCURRENT_STREAMS,
    S_MAX_FRAME_SIZE,
    S_MAX_HEADER_LIST_SIZE,
    SETTINGS,
    STREAM_CLOSED,
    U32,
    H2Limits,
    Headers,
    LinkError,
    SlabPool,
    settings_frame,
    window_update,
)
from cuvis_cluster.gateway.h2output import (
    CLOSED_RING_MASK,
    LinkOutput,
    dirty_links,
    dispatch_depth,
    flush_dirty,
)
from cuvis_cluster.gateway.h2stream import Leg
from cuvis_cluster.gateway.hpackfast import Decoder, Encoder, HpackError

log = logging.getLogger(__name__)

DEFAULT_LIMITS = H2Limits()


class Link(LinkOutput, LinkControl, asyncio.BufferedProtocol):
    """An HTTP/2 connection, server side (clients connect to us) or client side (we connect out).

    Callbacks from the owner:

    * ``on_request(link, leg, headers) -> handler | None`` (server side): a new stream; the returned
      handler gets the leg's events, ``None`` refuses the stream;
    * ``on_lost(link, exc)``: the connection is gone (each open leg also gets ``leg_lost``).

    A handler implements ``leg_started(leg, headers, ended)`` (server side),
    ``leg_headers(leg, headers, end, trailers)``, ``leg_data(leg, mv)``, ``leg_end(leg)``,
    ``leg_reset(leg, code)`` and ``leg_lost(leg, exc)``.
    """

    def __init__(
        self,
        *,
        client_side: bool,
        on_request: Callable[[Link, Leg, Headers], Any] | None = None,
        on_lost: Callable[[Link, BaseException | None], None] | None = None,
        limits: H2Limits = DEFAULT_LIMITS,
        pool: SlabPool | None = None,
        name: str = "",
    ) -> None:
        self.client_side = client_side
        self.name = name
        self.on_request = on_request
        self.on_lost = on_lost
        self.limits = limits
        self.stream_window = limits.stream_window
        # Read on every frame: plain attributes, not lookups through ``limits``.
        self.max_frame = limits.max_frame
        self._max_header_block = limits.max_header_block
        self._max_streams = limits.max_concurrent_streams
        # A real peer fills CONTINUATION frames (at least 16 KiB each, section 4.2); a few spare.
        self._max_continuations = 2 * limits.max_header_block // MIN_MAX_FRAME + 16
        self._min_read = limits.min_read
        self.decoder = Decoder(4096, limits.max_header_list)
        self.encoder = Encoder()
        self.transport: asyncio.Transport | None = None
        self.legs: dict[int, Leg] = {}
        self.pool = pool or SlabPool(limits.read_buffer, limits.pooled_buffers)
        self._slab = self.pool.take(self.pool.size)
        self._mv = memoryview(self._slab)
        self._rpos = 0
        self._wpos = 0
        self._need = 0
        self._preface_left = 0 if client_side else len(PREFACE)
        self._data_sid = 0
        self._data_left = -1
        self._data_pad = 0
        self._data_flags = 0
        self._data_pad_pending = False
        # Header block being assembled from HEADERS + CONTINUATION frames.
        self._hb_sid = 0
        self._hb_flags = 0
        self._hb_parts: list[bytes] = []
        self._hb_size = 0
        self._hb_frames = 0
        self._resets_seen: OrderedDict[int, bool] = OrderedDict()  # reset streams: True if by us
        self._closed_ring = [0] * (CLOSED_RING_MASK + 1)
        self._closed_pos = 0
        # Peer settings and our outbound windows.
        self.remote_initial_window = INITIAL_WINDOW
        self.remote_max_frame = MIN_MAX_FRAME
        self.remote_max_streams = 1 << 31
        self.out_conn_window = INITIAL_WINDOW
        # Inbound flow control: our windows as the peer sees them, and consumed-but-uncredited bytes.
        self._in_conn = INITIAL_WINDOW
        self._in_streams: dict[int, int] = {}
        self._credit_conn = 0
        self._credit_streams: dict[int, int] = {}
        self._credit_threshold = max(min(limits.stream_window, limits.connection_window) // 4, 1)
        self._write_paused = False
        self._out: list[Any] = []
        self._write_scheduled = False
        self._out_done = False  # half-closed after a GOAWAY for an error: nothing more is written
        self._loop = asyncio.get_event_loop()
        self._blocked: dict[int, Leg] = {}
        self._next_sid = 1
        self.highest_inbound = 0
        self.closed = False
        self.goaway_received = False
        self.goaway_sent = False
        self.peer_cert: dict | None = None
        self.ssl_object: Any = None
        self.extra: dict[str, Any] = {}
        self.pings_outstanding = 0
        self.over_capacity = False  # set by the owner: close at once (too many connections)
        self._guard_init(limits)

    # -- asyncio protocol ------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream protocol is always given a (read/write) Transport.
        transport = self.transport = cast(asyncio.Transport, transport)
        if self.over_capacity:
            transport.abort()
            return
        limits = self.limits
        transport.set_write_buffer_limits(high=limits.write_high_water, low=limits.write_low_water)
        self.ssl_object = transport.get_extra_info("ssl_object")
        if self.ssl_object is not None:
            if self.ssl_object.selected_alpn_protocol() != "h2":
                log.info("%s: TLS peer did not negotiate h2 (ALPN); closing", self.name or "connection")
                transport.close()
                return
            self.peer_cert = self.ssl_object.getpeercert()
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        settings = [
            (S_MAX_CONCURRENT_STREAMS, limits.max_concurrent_streams),
            (S_INITIAL_WINDOW_SIZE, self.stream_window),
            (S_MAX_FRAME_SIZE, limits.max_frame),
            (S_MAX_HEADER_LIST_SIZE, limits.max_header_list),
        ]
        if self.client_side:
            settings.append((S_ENABLE_PUSH, 0))
        out = [PREFACE] if self.client_side else []
        out.append(settings_frame(settings))
        bump = limits.connection_window - INITIAL_WINDOW
        if bump > 0:
            out.append(window_update(0, bump))
            self._in_conn += bump
        transport.writelines(out)
        self._guard_start()
        if self._wpos > self._rpos:
            self._process()

    def connection_lost(self, exc: BaseException | None) -> None:
        self.closed = True
        self._guard_stop()
        exc = exc or self.lost_reason
        legs = list(self.legs.values())
        self.legs.clear()
        self._blocked.clear()
        for leg in legs:
            leg.closed = leg.remote_closed = True
            leg.queue.clear()
            if leg.handler is not None:
                try:
                    leg.handler.leg_lost(leg, exc)
                except Exception:
                    log.exception("leg_lost handler failed")
        if self.on_lost is not None:
            cb, self.on_lost = self.on_lost, None
            cb(self, exc)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self.output_progressed()
        self._pump_blocked()

    def get_buffer(self, sizehint: int) -> memoryview:
        free = len(self._slab) - self._wpos
        if free < self._min_read or self._need > len(self._slab) - self._rpos:
            self._rotate()
        return self._mv[self._wpos :]

    def _rotate(self) -> None:
        keep = self._wpos - self._rpos
        need = max(self._need, keep + self._min_read)
        old_slab, old_mv = self._slab, self._mv
        slab = self.pool.take(need)
        mv = memoryview(slab)
        if keep:
            mv[:keep] = old_mv[self._rpos : self._wpos]
        old_mv.release()
        self.pool.give(old_slab)
        self._slab, self._mv = slab, mv
        self._rpos, self._wpos = 0, keep

    def buffer_updated(self, nbytes: int) -> None:
        self._wpos += nbytes
        self._reads += 1
        if self.closed:
            self._rpos = self._wpos  # a peer we closed on (lingering close): drop what it sends
            return
        if self.transport is None:
            return  # TLS: bytes that arrived before start_tls handed us the transport
        dispatch_depth[0] += 1
        try:
            self._process()
        finally:
            dispatch_depth[0] -= 1
            if not dispatch_depth[0] and dirty_links:
                flush_dirty()

    def _process(self) -> None:
        try:
            self._parse()
        except LinkError as exc:
            log.info("%s: %s", self.name or "http/2 connection", exc)
            self._fail(exc.code, str(exc))
        except HpackError as exc:
            log.info("%s: bad header block: %s", self.name or "http/2 connection", exc)
            self._fail(COMPRESSION_ERROR, "bad header block")

    def eof_received(self) -> bool:
        return False

    # -- parsing ---------------------------------------------------------------------------------
    def _parse(self) -> None:
        mv = self._mv
        max_frame = self.max_frame
        while not self.closed:
            avail = self._wpos - self._rpos
            if self._preface_left:
                take = min(avail, self._preface_left)
                if not take:
                    return
                start = len(PREFACE) - self._preface_left
                if mv[self._rpos : self._rpos + take] != PREFACE[start : start + take]:
                    raise LinkError(PROTOCOL_ERROR, "not an HTTP/2 connection preface")
                self._rpos += take
                self._preface_left -= take
                continue
            if self._data_left >= 0:
                if not self._take_data(avail):
                    return
                continue
            if avail < 9:
                return
            r = self._rpos
            length = (mv[r] << 16) | (mv[r + 1] << 8) | mv[r + 2]
            ftype = mv[r + 3]
            flags = mv[r + 4]
            sid = U32.unpack_from(mv, r + 5)[0] & 0x7FFFFFFF
            if length > max_frame:
                raise LinkError(FRAME_SIZE_ERROR, f"frame of {length} bytes")
            if not self._settings_seen and (ftype != SETTINGS or flags & FLAG_ACK):
                raise LinkError(PROTOCOL_ERROR, "the preface is not followed by SETTINGS")  # 3.4
            if self._hb_parts and ftype != CONTINUATION:
                raise LinkError(PROTOCOL_ERROR, "header block interrupted")
            if ftype == DATA:
                if sid == 0:
                    raise LinkError(PROTOCOL_ERROR, "DATA on stream 0")  # section 6.1
                leg = self.legs.get(sid)
                if leg is None or leg.remote_closed:
                    self.data_not_open(sid, leg)
                if length:
                    self._moved += length  # earns control frames back (h2guard.EARN_SHIFT)
                elif not flags & FLAG_END_STREAM:
                    self.count_control()  # an empty DATA frame moves nothing
                self._data_sid = sid
                self._data_flags = flags
                self._data_left = length
                self._data_pad = 0
                self._data_pad_pending = bool(flags & FLAG_PADDED)
                self._rpos = r + 9
                self._account_inbound(sid, length)
                if length == 0:
                    self._finish_data_frame()
                continue
            if length > MIN_MAX_FRAME and (
                ftype not in (HEADERS, CONTINUATION) or length > self._max_header_block
            ):
                # Non-DATA frames are buffered whole before parsing: refuse a huge one before that.
                raise LinkError(FRAME_SIZE_ERROR, f"frame of type {ftype} and {length} bytes")  # 4.2
            if avail < 9 + length:
                self._need = 9 + length
                return
            self._need = 0
            payload = mv[r + 9 : r + 9 + length]
            self._rpos = r + 9 + length
            self._frame(ftype, flags, sid, payload)

    def _take_data(self, avail: int) -> bool:
        """Consume DATA payload bytes; False when more input is needed."""
        if self._data_pad_pending:
            if not avail:
                return False
            self._data_pad = self._mv[self._rpos]
            self._rpos += 1
            self._data_left -= 1
            avail -= 1
            self._data_pad_pending = False
            self.credit(self._data_sid, 1)
            if self._data_pad > self._data_left:
                raise LinkError(PROTOCOL_ERROR, "DATA padding longer than the frame")
        payload_left = self._data_left - self._data_pad
        if payload_left > 0:
            n = min(avail, payload_left)
            if not n:
                return False
            chunk = self._mv[self._rpos : self._rpos + n]
            self._rpos += n
            self._data_left -= n
            leg = self.legs.get(self._data_sid)
            if leg is not None and leg.expect >= 0:
                leg.expect -= n
                if leg.expect < 0:  # section 8.1.1: more DATA than the content-length said
                    self._stream_error(leg, PROTOCOL_ERROR)
            if leg is not None and not leg.remote_closed and leg.handler is not None:
                leg.handler.leg_data(leg, chunk)
            else:
                self.credit(self._data_sid, n)
            return True
        if self._data_left > 0:  # padding
            n = min(avail, self._data_left)
            if not n:
                return False
            self._rpos += n
            self._data_left -= n
            self.credit(self._data_sid, n)
            if self._data_left:
                return False
        self._finish_data_frame()
        return True

    def _finish_data_frame(self) -> None:
        self._data_left = -1
        if self._data_flags & FLAG_END_STREAM:
            leg = self.legs.get(self._data_sid)
            if leg is not None and leg.expect > 0:  # section 8.1.1: less DATA than announced
                self._stream_error(leg, PROTOCOL_ERROR)
            elif leg is not None and not leg.remote_closed:
                self._remote_end(leg)

    def _account_inbound(self, sid: int, length: int) -> None:
        self._in_conn -= length
        if self._in_conn < 0:
            raise LinkError(FLOW_CONTROL_ERROR, "peer overran the connection window")
        window = self._in_streams.get(sid)
        if window is not None:
            window -= length
            self._in_streams[sid] = window
            if window < 0:
                raise LinkError(FLOW_CONTROL_ERROR, f"peer overran the window of stream {sid}")

    def _frame(self, ftype: int, flags: int, sid: int, payload: memoryview) -> None:
        if ftype == HEADERS:
            if sid == 0:
                raise LinkError(PROTOCOL_ERROR, "HEADERS on stream 0")  # section 6.2
            pos, end = 0, len(payload)
            if flags & FLAG_PADDED:
                if not end:
                    raise LinkError(PROTOCOL_ERROR, "bad padding")
                end -= payload[0]
                pos = 1
            if flags & FLAG_PRIORITY:
                if end >= pos + 5 and U32.unpack_from(payload, pos)[0] & 0x7FFFFFFF == sid:
                    raise LinkError(PROTOCOL_ERROR, "stream depends on itself")  # section 5.3.1
                pos += 5
            if end < pos:
                raise LinkError(PROTOCOL_ERROR, "bad HEADERS padding")
            fragment = bytes(payload[pos:end])
            if flags & FLAG_END_HEADERS:
                self._headers(sid, flags, fragment)
            else:
                if not fragment:
                    self.count_control()  # an empty first fragment only opens a CONTINUATION flood
                self._hb_sid, self._hb_flags, self._hb_parts = sid, flags, [fragment]
                self._hb_size, self._hb_frames, self._hb_since = len(fragment), 0, time.monotonic()
        elif ftype == CONTINUATION:
            # CVE-2024-27316: every CONTINUATION counts, a block has at most so many of them and
            # at most max_header_block bytes in all (the first fragment included).
            self.count_control()
            if not self._hb_parts or sid != self._hb_sid:
                raise LinkError(PROTOCOL_ERROR, "unexpected CONTINUATION")  # section 6.10
            self._hb_frames += 1
            if self._hb_frames > self._max_continuations:
                raise LinkError(ENHANCE_YOUR_CALM, "too many CONTINUATION frames")
            self._hb_parts.append(bytes(payload))
            self._hb_size += len(payload)
            if self._hb_size > self._max_header_block:
                raise LinkError(PROTOCOL_ERROR, "header block too large")
            if flags & FLAG_END_HEADERS:
                parts, self._hb_parts = self._hb_parts, []
                self._headers(self._hb_sid, self._hb_flags, b"".join(parts))
        elif ftype == PUSH_PROMISE:
            raise LinkError(PROTOCOL_ERROR, "server push is not accepted")  # section 8.4
        else:
            self._control(ftype, flags, sid, payload)

    def _headers(self, sid: int, flags: int, block: bytes) -> None:
        headers = self.decoder.decode(block)  # always decode: the HPACK state must stay in step
        end = bool(flags & FLAG_END_STREAM)
        leg = self.legs.get(sid)
        if leg is None:
            if self.client_side or sid <= self.highest_inbound:
                if self.is_idle(sid):
                    raise LinkError(PROTOCOL_ERROR, f"HEADERS on idle stream {sid}")  # section 5.1
                if not self.client_side:
                    self.headers_not_open(sid)
                return  # a stream we already reset or finished
            if sid % 2 == 0:
                raise LinkError(PROTOCOL_ERROR, "even stream id from a client")  # section 5.1.1
            self.highest_inbound = sid
            if self.goaway_sent:
                self._refuse(sid, REFUSED_STREAM)
                return
            if len(self.legs) >= self._max_streams:
                # Section 5.1.2: past SETTINGS_MAX_CONCURRENT_STREAMS, REFUSED_STREAM; it counts as
                # a reset (a client that keeps trying is cut off) and never reaches a worker.
                self._refuse(sid, REFUSED_STREAM)
                self.count_reset()
                return
            problem, expect = check_request(headers)
            if problem is not None:
                # Section 8.1.1: a malformed request is a stream error; it never reaches a worker.
                log.info("%s: stream %d: malformed request: %s", self.name or "client", sid, problem)
                self._refuse(sid, PROTOCOL_ERROR)
                self.count_reset()
                return
            self.stream_opened()
            leg = Leg(self, sid)
            leg.expect = expect
            leg.headers_seen = True
            self.legs[sid] = leg
            self._in_streams[sid] = self.stream_window
            if end:
                leg.remote_closed = True
            handler = self.on_request(self, leg, headers) if self.on_request else None
            if handler is None:
                self.reset_stream(sid, REFUSED_STREAM)
                return
            leg.handler = handler
            handler.leg_started(leg, headers, end)
            if end and leg.closed:
                self.stream_finished()
                self._drop(sid)
            return
        if leg.remote_closed:
            self._stream_error(leg, STREAM_CLOSED)  # section 5.1, "half-closed (remote)"
            return
        trailers = leg.headers_seen
        if not self.client_side:
            trailers = True
            problem = trailers_problem(headers) or (None if end else "trailers without END_STREAM")
            if problem is None and end and leg.expect > 0:
                problem = "less DATA than its content-length"
            if problem is not None:  # sections 8.1, 8.1.1: a stream error
                log.info("%s: stream %d: malformed request: %s", self.name or "client", sid, problem)
                self._stream_error(leg, PROTOCOL_ERROR)
                return
        if not trailers and headers and headers[0][0] == b":status" and headers[0][1][:1] == b"1":
            return  # 1xx informational response
        leg.headers_seen = True
        if end:
            leg.remote_closed = True
        if leg.handler is not None:
            leg.handler.leg_headers(leg, headers, end, trailers)
        if end and leg.closed:
            self.stream_finished()
            self._drop(sid)

    def _remote_end(self, leg: Leg) -> None:
        leg.remote_closed = True
        if leg.handler is not None:
            leg.handler.leg_end(leg)
        if leg.closed:
            self.stream_finished()
            self._drop(leg.sid)

    def _stream_error(self, leg: Leg, code: int) -> None:
        handler = leg.handler
        self.reset_stream(leg.sid, code)
        if handler is not None:
            handler.leg_reset(leg, code)

    def _goaway(self, last: int, code: int) -> None:
        self.goaway_received = True
        if self.client_side:
            # Streams the peer never processed may be retried elsewhere: report them as refused.
            for sid in [s for s in self.legs if s > last]:
                leg = self.legs[sid]
                self._drop(sid)
                leg.closed = leg.remote_closed = True
                if leg.handler is not None:
                    leg.handler.leg_reset(leg, REFUSED_STREAM)
        if code != NO_ERROR or not self.legs:
            self.close()

    def open_stream(self, headers: Headers, handler: Any, end_stream: bool = False) -> Leg:
        sid = self._next_sid
        self._next_sid += 2
        leg = Leg(self, sid, handler)
        self.legs[sid] = leg
        self._in_streams[sid] = self.stream_window
        self.send_headers(leg, headers, end_stream)
        return leg

    def can_open(self) -> bool:
        return (
            not self.closed
            and not self.goaway_received
            and len(self.legs) < self.remote_max_streams
            and self._next_sid < MAX_WINDOW - 1000
        )
