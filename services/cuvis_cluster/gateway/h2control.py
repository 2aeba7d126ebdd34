"""The control frames of an HTTP/2 connection and the stream-state rules (RFC 9113 sections 5.1, 6).

:class:`LinkControl` is a base class of :class:`~cuvis_cluster.gateway.h2link.Link`: SETTINGS, PING,
WINDOW_UPDATE, RST_STREAM, GOAWAY and PRIORITY are handled here, and so are frames that name a stream
which is not open. Every control frame a client sends counts against its budget
(:meth:`~cuvis_cluster.gateway.h2guard.LinkGuard.count_control`).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING

from cuvis_cluster.gateway.h2frames import (
    FLAG_ACK,
    FLOW_CONTROL_ERROR,
    FRAME_SIZE_ERROR,
    GOAWAY,
    GOAWAY_BODY,
    MAX_FRAME,
    MAX_WINDOW,
    MIN_MAX_FRAME,
    PING,
    PRIORITY,
    PROTOCOL_ERROR,
    RST_STREAM,
    S_ENABLE_PUSH,
    S_INITIAL_WINDOW_SIZE,
    S_MAX_CONCURRENT_STREAMS,
    S_MAX_FRAME_SIZE,
    SETTING,
    SETTINGS,
    SETTINGS_ACK,
    STREAM_CLOSED,
    U32,
    WINDOW_UPDATE,
    LinkError,
    rst_stream,
)
from cuvis_cluster.gateway.h2guard import LinkGuard, ack_ping
from cuvis_cluster.gateway.h2stream import Leg

RESETS_REMEMBERED = 256  # reset streams remembered, to tell "reset by us" from "closed" (section 5.1)


class LinkControl(LinkGuard):
    """Control frames and stream states; the state lives on the ``Link``."""

    out_conn_window: int
    remote_initial_window: int
    remote_max_frame: int
    remote_max_streams: int
    pings_outstanding: int
    _next_sid: int
    _resets_seen: OrderedDict[int, bool]
    _closed_ring: list[int]

    if TYPE_CHECKING:  # provided by LinkOutput and Link

        def pump(self, leg: Leg) -> None: ...
        def _pump_blocked(self) -> None: ...
        def _drop(self, sid: int) -> None: ...
        def _stream_error(self, leg: Leg, code: int) -> None: ...
        def _goaway(self, last: int, code: int) -> None: ...

    def _control(self, ftype: int, flags: int, sid: int, payload: memoryview) -> None:
        if ftype == SETTINGS:
            self.count_control()
            if sid:
                raise LinkError(PROTOCOL_ERROR, "SETTINGS on a stream")  # section 6.5
            if flags & FLAG_ACK:
                if payload:
                    raise LinkError(FRAME_SIZE_ERROR, "SETTINGS ack with a payload")  # section 6.5
                return
            if len(payload) % 6:
                raise LinkError(FRAME_SIZE_ERROR, "SETTINGS length")
            for off in range(0, len(payload), 6):
                key, value = SETTING.unpack_from(payload, off)
                self._setting(key, value)
            self.settings_seen()
            self.send_control(SETTINGS_ACK)
            self._pump_blocked()
        elif ftype == WINDOW_UPDATE:
            self.count_control()
            self._window_update(sid, payload)
        elif ftype == PING:
            self.count_control()
            if sid:
                raise LinkError(PROTOCOL_ERROR, "PING on a stream")  # section 6.7
            if len(payload) != 8:
                raise LinkError(FRAME_SIZE_ERROR, "PING length")
            if flags & FLAG_ACK:
                self.pings_outstanding = max(0, self.pings_outstanding - 1)
                self.ping_acked(bytes(payload))
            else:
                ack_ping(self, payload)
        elif ftype == RST_STREAM:
            self._rst_stream(sid, payload)
        elif ftype == GOAWAY:
            if sid:
                raise LinkError(PROTOCOL_ERROR, "GOAWAY on a stream")  # section 6.8
            if len(payload) < 8:
                raise LinkError(FRAME_SIZE_ERROR, "GOAWAY length")
            last, code = GOAWAY_BODY.unpack_from(payload)
            self._goaway(last & 0x7FFFFFFF, code)
        elif ftype == PRIORITY:
            self.count_control()
            if not sid:
                raise LinkError(PROTOCOL_ERROR, "PRIORITY on stream 0")  # section 6.3
            if len(payload) != 5:
                self._refuse(sid, FRAME_SIZE_ERROR)  # section 6.3: a stream error
            elif U32.unpack_from(payload)[0] & 0x7FFFFFFF == sid:
                self._refuse(sid, PROTOCOL_ERROR)  # section 5.3.1: a stream cannot depend on itself
        else:
            # Unknown frame types are ignored (section 5.5), but they are not free.
            self.count_control()

    def _window_update(self, sid: int, payload: memoryview) -> None:
        if len(payload) != 4:
            raise LinkError(FRAME_SIZE_ERROR, "WINDOW_UPDATE length")  # section 6.9
        inc = U32.unpack_from(payload)[0] & 0x7FFFFFFF
        if sid == 0:
            if inc == 0:
                raise LinkError(PROTOCOL_ERROR, "WINDOW_UPDATE of 0")  # section 6.9
            self.out_conn_window += inc
            if self.out_conn_window > MAX_WINDOW:
                raise LinkError(FLOW_CONTROL_ERROR, "connection window overflow")  # section 6.9.1
            self._pump_blocked()
            return
        leg = self.legs.get(sid)
        if leg is None:
            if self.is_idle(sid):
                raise LinkError(PROTOCOL_ERROR, f"WINDOW_UPDATE on idle stream {sid}")  # section 5.1
            return  # a closed stream: WINDOW_UPDATE may still arrive (section 5.1, "closed")
        if inc == 0:
            self._stream_error(leg, PROTOCOL_ERROR)
            return
        leg.out_window += inc
        if leg.out_window > MAX_WINDOW:
            self._stream_error(leg, FLOW_CONTROL_ERROR)
            return
        if leg.queue or leg.end_queued or leg.trailers_queued is not None:
            self.pump(leg)

    def _rst_stream(self, sid: int, payload: memoryview) -> None:
        if sid == 0:
            raise LinkError(PROTOCOL_ERROR, "RST_STREAM on stream 0")  # section 6.4
        if len(payload) != 4:
            raise LinkError(FRAME_SIZE_ERROR, "RST_STREAM length")  # section 6.4
        code = U32.unpack_from(payload)[0]
        leg = self.legs.get(sid)
        if not self.client_side:
            # Only a reset before we answered is the rapid-reset pattern (CVE-2023-44487). A reset of
            # a stream we already answered or ended (grpc-go sends RST_STREAM NO_ERROR when the
            # server ends a bidi call first; a client cancels a long stream) is an ordinary frame.
            if leg is None or leg.closed or leg.answered:
                self.count_control()
            else:
                self.count_reset()
        if leg is None:
            if self.is_idle(sid):
                raise LinkError(PROTOCOL_ERROR, f"RST_STREAM on idle stream {sid}")  # section 6.4
            return
        self.remember(sid, False)
        self._drop(sid)
        was_open = not (leg.closed and leg.remote_closed)
        leg.closed = leg.remote_closed = True
        leg.queue.clear()
        if was_open and leg.handler is not None:
            leg.handler.leg_reset(leg, code)

    def _setting(self, key: int, value: int) -> None:
        if key == S_INITIAL_WINDOW_SIZE:
            if value > MAX_WINDOW:
                raise LinkError(FLOW_CONTROL_ERROR, "initial window too large")  # section 6.5.2
            delta = value - self.remote_initial_window
            self.remote_initial_window = value
            for leg in self.legs.values():
                leg.out_window += delta
                if leg.out_window > MAX_WINDOW:
                    raise LinkError(FLOW_CONTROL_ERROR, "a stream window passed 2^31-1")  # 6.9.2
        elif key == S_MAX_FRAME_SIZE:
            if not MIN_MAX_FRAME <= value <= MAX_FRAME:
                raise LinkError(PROTOCOL_ERROR, "bad max frame size")  # section 6.5.2
            self.remote_max_frame = value
        elif key == S_MAX_CONCURRENT_STREAMS:
            self.remote_max_streams = value
        elif key == S_ENABLE_PUSH and value > 1:
            raise LinkError(PROTOCOL_ERROR, "bad ENABLE_PUSH")  # section 6.5.2
        # HEADER_TABLE_SIZE: our encoder never uses the dynamic table. MAX_HEADER_LIST_SIZE: advisory.

    # -- stream states (section 5.1) ----------------------------------------------------------------
    def is_idle(self, sid: int) -> bool:
        """Not yet opened by either side (section 5.1, "idle")."""
        if self.client_side:
            return sid % 2 == 0 or sid >= self._next_sid  # we open odd streams; servers may not push
        return sid % 2 == 0 or sid > self.highest_inbound

    def remember(self, sid: int, we_reset: bool) -> None:
        """A stream was reset (by us, or by the peer); the last few hundred are remembered."""
        seen = self._resets_seen
        seen[sid] = we_reset
        if len(seen) > RESETS_REMEMBERED:
            seen.popitem(last=False)

    def _refuse(self, sid: int, code: int) -> None:
        """RST_STREAM for a stream we will not serve; later frames on it are ignored."""
        self.remember(sid, True)
        self.send_control(rst_stream(sid, code))

    def data_not_open(self, sid: int, leg: Leg | None) -> None:
        """A DATA frame for a stream that is not open for receiving."""
        if leg is not None:  # half-closed (remote): section 5.1 and 6.1, a stream error
            self._stream_error(leg, STREAM_CLOSED)
        elif self.is_idle(sid):
            raise LinkError(PROTOCOL_ERROR, f"DATA on idle stream {sid}")  # section 5.1, "idle"
        elif not self._resets_seen.get(sid):
            # Closed, and not by a RST_STREAM of ours (whose stragglers we must ignore): section 6.1.
            self._refuse(sid, STREAM_CLOSED)

    def headers_not_open(self, sid: int) -> None:
        """A HEADERS frame naming a stream id at or below the highest one the client opened."""
        we_reset = self._resets_seen.get(sid)
        if we_reset:
            return  # section 5.1, "closed": frames after our RST_STREAM are ignored
        if we_reset is None and sid not in self._closed_ring:
            # Never opened (or long forgotten): section 5.1.1, an unexpected stream identifier.
            raise LinkError(PROTOCOL_ERROR, f"HEADERS reuses stream id {sid}")
        raise LinkError(STREAM_CLOSED, f"HEADERS on closed stream {sid}")  # section 5.1, "closed"
