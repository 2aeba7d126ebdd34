"""How one HTTP/2 connection defends itself: abuse budgets, timers, keepalive, the control queue.

:class:`LinkGuard` is a base class of :class:`~cuvis_cluster.gateway.h2link.Link` (like
:class:`~cuvis_cluster.gateway.h2output.LinkOutput`); :meth:`LinkGuard._guard_init` sets its state.
The defences and their settings are described in docs/gateway-design.md ("Defences").

Cost on the fast path: one addition per DATA frame (``_moved``, the DATA that earns control frames
back); one counter per socket read (``_reads``); a counter per control frame or reset, with a clock read
only when a counter passes its limit. Everything that needs the time runs in one timer per connection
(:meth:`LinkGuard._tick`), a few times per timeout.

Progress of the output is measured as bytes that left the transport's buffer: ``_handed`` (every byte
given to the transport, counted by :class:`~cuvis_cluster.gateway.h2output.LinkOutput`) minus the
buffer's size. That number grows whenever the kernel takes bytes, also while the buffer is being
refilled as fast as it drains, which an unchanged buffer size would hide.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from cuvis_cluster.gateway.h2frames import (
    ENHANCE_YOUR_CALM,
    FLAG_ACK,
    MAX_WINDOW,
    NO_ERROR,
    PING,
    H2Limits,
    LinkError,
    frame_header,
    goaway_frame,
)
from cuvis_cluster.gateway.h2stream import Leg

log = logging.getLogger(__name__)

KEEPALIVE_PING = b"cuvis-ka"  # payload of our keepalive PINGs
DRAIN_PING = b"cuvis-dr"  # payload of the PING that follows the first GOAWAY of a drain
MAX_TICK = 2.0  # the timer never sleeps longer: timeouts are precise to about this
# DATA moved either way earns control frames back: one per 16 KiB (and one per DATA frame we send,
# which ``LinkOutput.pump`` adds as 16 KiB). A client's WINDOW_UPDATEs and BDP PINGs follow the DATA
# it reads, so a real transfer never runs out of budget; a flood of them with no DATA still does.
EARN_SHIFT = 14


class LinkGuard:
    """Abuse accounting and timers of one connection; the state lives on the ``Link``."""

    client_side: bool
    closed: bool
    name: str
    limits: H2Limits
    transport: asyncio.Transport | None
    legs: dict[int, Leg]
    highest_inbound: int
    goaway_sent: bool
    _hb_parts: list[bytes]
    _out: list[Any]
    _loop: asyncio.AbstractEventLoop
    _write_paused: bool

    if TYPE_CHECKING:  # provided by LinkOutput

        def _write_raw(self, data: bytes) -> None: ...
        def abort(self) -> None: ...
        def _fail(self, code: int, message: str = "") -> None: ...

    def _guard_init(self, limits: H2Limits) -> None:
        now = time.monotonic()
        self._born = now
        self._settings_seen = self.client_side  # a server waits for the client's first SETTINGS
        self._resets = 0
        self._controls = 0
        self._window_start = now
        # Budgets apply to clients; workers are trusted peers (their BDP pings are not abuse).
        unlimited = 1 << 62
        self._max_resets = unlimited if self.client_side else limits.max_resets_per_window
        self._max_controls = unlimited if self.client_side else limits.max_control_frames_per_window
        self._reads = 0
        self._reads_seen = 0
        self._last_read = now
        self._ka_sent = 0.0  # when our unanswered keepalive PING left; 0: none outstanding
        self._idle_since = now
        self._hb_since = 0.0
        self._moved = 0  # DATA bytes moved since control frames were last earned (see EARN_SHIFT)
        self._appended = 0  # bytes queued for the transport so far (LinkOutput counts them)
        self._handed = 0  # of those, bytes given to the transport
        self._ctl_queued = 0  # control bytes queued since the transport last made progress
        self._ctl_flushed = 0  # bytes that had left the transport's buffer when last looked at
        self._flushed_seen = 0  # the same, as the timer saw it last
        self._size_seen = 0  # the transport's buffer size, as the timer saw it last
        self._unread_since = 0.0
        self._drain_acked: asyncio.Future[None] | None = None
        self.lost_reason: BaseException | None = None
        timeouts = [limits.keepalive, limits.keepalive_timeout]
        if not self.client_side:
            timeouts += [limits.handshake_timeout, limits.header_timeout, limits.slow_reader_timeout]
            timeouts += [limits.idle_timeout, limits.abuse_window]
        self._tick_every = min(MAX_TICK, max(0.02, min(timeouts) / 4))
        self._tick_handle: asyncio.TimerHandle | None = None

    def _guard_start(self) -> None:
        self._tick_handle = self._loop.call_later(self._tick_every, self._tick)

    def _guard_stop(self) -> None:
        if self._tick_handle is not None:
            self._tick_handle.cancel()
            self._tick_handle = None
        if self._drain_acked is not None and not self._drain_acked.done():
            self._drain_acked.set_result(None)

    # -- budgets (RFC 9113 section 10.5: "An endpoint MAY treat activity that is suspicious ... as a
    #    connection error of type ENHANCE_YOUR_CALM") ----------------------------------------------
    def _new_window(self) -> bool:
        """Start a new counting window if the current one is over; False while it still runs."""
        now = time.monotonic()
        if now - self._window_start < self.limits.abuse_window:
            return False
        self._window_start = now
        self._resets = self._controls = self._moved = 0
        return True

    def count_control(self) -> None:
        """A frame that carries no request data (SETTINGS, PING, PRIORITY, WINDOW_UPDATE, empty...)."""
        self._controls += 1
        if self._controls > self._max_controls:
            # Only now is the DATA moved in this window converted into frames earned back.
            earned = self._moved >> EARN_SHIFT
            self._moved -= earned << EARN_SHIFT
            self._controls -= earned
            if self._controls > self._max_controls and not self._new_window():
                raise LinkError(ENHANCE_YOUR_CALM, "too many control frames")

    def count_reset(self) -> None:
        """A stream the client reset before it was answered, or one we refused (rapid reset,
        CVE-2023-44487: streams that cost the server work and never let it finish)."""
        self._resets += 1
        if self._resets > self._max_resets and not self._new_window():
            raise LinkError(ENHANCE_YOUR_CALM, "too many streams reset or refused")

    def stream_opened(self) -> None:
        # Each real call may bring a WINDOW_UPDATE or PING of its own; a busy client earns room.
        self._controls -= 1

    def stream_finished(self) -> None:
        # A call that ran to its end earns one reset back: a busy client may cancel some of its calls
        # (deadlines, users), a rapid-reset attacker finishes none.
        self._resets -= 1

    # -- the control queue ---------------------------------------------------------------------------
    def send_control(self, frame: bytes) -> None:
        """Queue an ack or a reset; a client that reads none of them is cut off at the cap.

        What counts is an estimate of what is still queued: each byte that left the transport's
        buffer since the last control frame takes one off. A client that reads, however slowly,
        never reaches the cap; one that reads a byte now and then to look alive still does.
        """
        transport = self.transport
        size = transport.get_write_buffer_size() if transport is not None else 0
        if size or self._write_paused:
            flushed = self._handed - size
            if flushed > self._ctl_flushed:
                self._ctl_queued = max(0, self._ctl_queued - (flushed - self._ctl_flushed))
                self._ctl_flushed = flushed
            self._ctl_queued += len(frame)
            if self._ctl_queued > self.limits.max_control_queue:
                raise LinkError(ENHANCE_YOUR_CALM, "control frames not read")
        else:
            self._ctl_queued = 0
        self._write_raw(frame)

    def output_progressed(self) -> None:
        """The transport drained below its low-water mark: what was queued is being read."""
        self._ctl_queued = 0

    # -- PING ------------------------------------------------------------------------------------
    def ping_acked(self, payload: bytes) -> None:
        if payload == KEEPALIVE_PING:
            self._ka_sent = 0.0
        elif payload == DRAIN_PING and self._drain_acked is not None and not self._drain_acked.done():
            self._drain_acked.set_result(None)

    def settings_seen(self) -> None:
        self._settings_seen = True

    # -- two-phase GOAWAY (RFC 9113 section 6.8) ---------------------------------------------------
    def goaway_soon(self) -> asyncio.Future[None]:
        """First half of a graceful shutdown: GOAWAY with the largest stream id, then a PING.

        Streams the client opens before it sees the GOAWAY are still served; the future resolves when
        the PING comes back (then the client has seen the GOAWAY) or the connection is gone. The owner
        then sends the real GOAWAY (:meth:`~cuvis_cluster.gateway.h2output.LinkOutput.goaway`).
        """
        fut = self._drain_acked = self._loop.create_future()
        if self.closed or self.goaway_sent:
            fut.set_result(None)
            return fut
        self._write_raw(goaway_frame(MAX_WINDOW, NO_ERROR) + frame_header(8, PING, 0, 0) + DRAIN_PING)
        return fut

    # -- the timer -------------------------------------------------------------------------------
    def _tick(self) -> None:
        self._tick_handle = None
        if self.closed or self.transport is None:
            return
        now = time.monotonic()
        limits = self.limits
        try:
            self._check(now, limits)
        except LinkError as exc:
            log.info("%s: %s", self.name or "http/2 connection", exc)
            self._fail(exc.code, str(exc))
        if not self.closed and not (self.transport is None or self.transport.is_closing()):
            self._tick_handle = self._loop.call_later(self._tick_every, self._tick)

    def _check(self, now: float, limits: H2Limits) -> None:
        assert self.transport is not None
        size = self.transport.get_write_buffer_size()
        flushed = self._handed - size
        progressed = flushed > self._flushed_seen
        if progressed:
            self._flushed_seen = flushed
        # Bytes left a buffer that was not empty: the kernel's send buffer was full (asyncio buffers
        # only then), so the peer acknowledged data. That proves it alive as much as a read does, and
        # our PING would only queue behind that data.
        draining = progressed and self._size_seen > 0
        self._size_seen = size
        if self._reads != self._reads_seen or draining:
            # Anything read proves the peer alive: no PING needed, an outstanding one is forgiven.
            self._reads_seen = self._reads
            self._last_read = now
            self._ka_sent = 0.0
        if now - self._window_start >= limits.abuse_window:
            self._window_start = now
            self._resets = self._controls = self._moved = 0
        if self._ka_sent and now - self._ka_sent > limits.keepalive_timeout:
            self._lost(f"no answer to a keepalive PING within {limits.keepalive_timeout:g} s")
            return
        # Towards workers only while calls are open: an idle pooled connection needs no PINGs.
        quiet = not self._ka_sent and now - self._last_read >= limits.keepalive
        if quiet and (not self.client_side or self.legs):
            self._ka_sent = now
            self._write_raw(frame_header(8, PING, 0, 0) + KEEPALIVE_PING)
        if self.client_side:
            return
        if not self._settings_seen and now - self._born > limits.handshake_timeout:
            self._lost(f"no HTTP/2 preface and SETTINGS within {limits.handshake_timeout:g} s")
            return
        if self._hb_parts and now - self._hb_since > limits.header_timeout:
            raise LinkError(ENHANCE_YOUR_CALM, "header block not finished in time")
        if self.legs:
            self._idle_since = now
        elif now - self._idle_since > limits.idle_timeout:
            log.info("%s: idle for %g s; closing", self.name or "client connection", limits.idle_timeout)
            self._fail(NO_ERROR, "idle")
            return
        self._check_reader(now, limits, size, progressed)

    def _check_reader(self, now: float, limits: H2Limits, size: int, progressed: bool) -> None:
        """A client that takes nothing of what is buffered for it is cut off after the timeout.

        Slow is fine: one byte leaving the buffer between two ticks restarts the timeout.
        """
        if not size or progressed:
            self._unread_since = 0.0
        elif not self._unread_since:
            self._unread_since = now
        elif now - self._unread_since > limits.slow_reader_timeout:
            self._lost(f"read nothing of {size} buffered bytes for {limits.slow_reader_timeout:g} s")

    def _lost(self, why: str) -> None:
        log.info("%s: %s; closing", self.name or "http/2 connection", why)
        self.lost_reason = TimeoutError(why)
        self.abort()


def ack_ping(link: LinkGuard, payload: memoryview) -> None:
    link.send_control(frame_header(8, PING, FLAG_ACK, 0) + bytes(payload))
