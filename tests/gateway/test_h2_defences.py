"""The gateway's HTTP/2 defences (issue 12), each driven with raw frames over a real socket against a
real ``cuvis-gateway`` process (redis-server and a stand-in worker behind it), or against a ``Link`` on a
real event loop where the gateway process cannot be made to show the behaviour quickly.

The raw client writes whatever frames a test builds, hostile ones included, with no HTTP/2 library
deciding for it; header blocks come from ``hpack``. Every attack ends with the attacker cut off (the
GOAWAY code is asserted) and a canary on another connection served.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass

import hpack
import pytest
from grpc_health.v1 import health_pb2
from helpers import procs
from helpers.gateways import standin_gateways

from cuvis_cluster.gateway.h2frames import (
    CONTINUATION,
    DATA,
    ENHANCE_YOUR_CALM,
    FLAG_ACK,
    FLAG_END_HEADERS,
    FLAG_END_STREAM,
    FRAME_SIZE_ERROR,
    GOAWAY,
    HEADERS,
    NO_ERROR,
    PING,
    PREFACE,
    PRIORITY,
    PROTOCOL_ERROR,
    REFUSED_STREAM,
    RST_STREAM,
    SETTINGS,
    STREAM_CLOSED,
    WINDOW_UPDATE,
    frame_header,
    settings_frame,
)

INFERENCE = "/cuvis_ai.v1.CuvisAIService/Inference"


def frame(ftype: int, flags: int, sid: int, payload: bytes = b"") -> bytes:
    return frame_header(len(payload), ftype, flags, sid) + payload


def rst(sid: int, code: int = 8) -> bytes:
    return frame(RST_STREAM, 0, sid, struct.pack(">I", code))


class RawClient:
    """One client connection; ``ack_pings`` answers the gateway's keepalive PINGs while reading."""

    def __init__(self, address: str, *, preface: bool = True, ack_pings: bool = True) -> None:
        host, _, port = address.rpartition(":")
        self.sock = socket.create_connection((host, int(port)), timeout=10)
        self.encoder = hpack.Encoder()
        self.ack_pings = ack_pings
        self.buf = b""
        self.frames: list[tuple[int, int, int, bytes]] = []
        self.closed = False
        if preface:
            self.send(PREFACE + settings_frame([]))

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, *frames: bytes) -> bool:
        """False once the gateway has closed the connection."""
        try:
            self.sock.sendall(b"".join(frames))
            return True
        except OSError:
            return False

    def block(self, path: str = INFERENCE) -> bytes:
        return self.encoder.encode(
            [
                (":method", "POST"),
                (":scheme", "http"),
                (":path", path),
                (":authority", "gateway"),
                ("content-type", "application/grpc"),
                ("te", "trailers"),
            ]
        )

    def headers(self, sid: int, *, end_stream: bool = False, path: str = INFERENCE) -> bytes:
        flags = FLAG_END_HEADERS | (FLAG_END_STREAM if end_stream else 0)
        return frame(HEADERS, flags, sid, self.block(path))

    def read(self, timeout: float) -> bool:
        """Read frames for up to ``timeout`` seconds; False once the connection is closed."""
        deadline = time.monotonic() + timeout
        while not self.closed and time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = self.sock.recv(1 << 16)
            except TimeoutError:
                break
            except OSError:
                data = b""
            if not data:
                self.closed = True
                break
            self.buf += data
            self._split()
        return not self.closed

    def _split(self) -> None:
        while len(self.buf) >= 9:
            length = int.from_bytes(self.buf[:3], "big")
            if len(self.buf) < 9 + length:
                return
            ftype, flags = self.buf[3], self.buf[4]
            sid = int.from_bytes(self.buf[5:9], "big") & 0x7FFFFFFF
            payload, self.buf = self.buf[9 : 9 + length], self.buf[9 + length :]
            self.frames.append((ftype, flags, sid, payload))
            if ftype == PING and not flags & FLAG_ACK and self.ack_pings:
                self.send(frame(PING, FLAG_ACK, 0, payload))

    def goaway(self) -> int | None:
        """The error code of the first GOAWAY received, or None."""
        for ftype, _flags, _sid, payload in self.frames:
            if ftype == GOAWAY:
                return int.from_bytes(payload[4:8], "big")
        return None

    def wait_goaway(self, timeout: float = 20.0) -> int | None:
        deadline = time.monotonic() + timeout
        while self.goaway() is None and not self.closed and time.monotonic() < deadline:
            self.read(0.2)
        return self.goaway()

    def wait_closed(self, timeout: float = 20.0) -> bool:
        deadline = time.monotonic() + timeout
        while not self.closed and time.monotonic() < deadline:
            self.read(0.2)
        return self.closed

    def resets(self) -> dict[int, int]:
        return {
            sid: int.from_bytes(payload, "big")
            for ftype, _f, sid, payload in self.frames
            if ftype == RST_STREAM
        }

    def pong(self, payload: bytes = b"liveness", timeout: float = 10.0) -> bool:
        """Send a PING and wait for its ack: the connection is alive and served."""
        self.send(frame(PING, 0, 0, payload))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.read(0.2):
            if any(f[0] == PING and f[1] & FLAG_ACK and f[3] == payload for f in self.frames):
                return True
        return False


# -- the gateways under test -------------------------------------------------------------------------
BUDGETS = [
    "--http2-max-concurrent-streams", "8",
    "--http2-max-resets-per-window", "20",
    "--http2-max-control-frames-per-window", "50",
    "--http2-abuse-window-seconds", "60",
    "--http2-max-header-block-bytes", str(32 << 10),
]  # fmt: skip
TIMERS = [
    "--http2-handshake-timeout-seconds", "1",
    "--http2-header-timeout-seconds", "1",
    "--http2-idle-timeout-seconds", "1.5",
    "--http2-keepalive-seconds", "1",
    "--http2-keepalive-timeout-seconds", "1",
    "--http2-max-connections", "3",
]  # fmt: skip


@dataclass
class Gateways:
    budgets: procs.ServerProcess
    timers: procs.ServerProcess


@pytest.fixture(scope="module")
def gateways(tmp_path_factory) -> Iterator[Gateways]:
    with standin_gateways(
        tmp_path_factory.mktemp("defences"), {"budgets": BUDGETS, "timers": TIMERS}
    ) as started:
        yield Gateways(started["budgets"], started["timers"])


def canary_served(address: str) -> None:
    """Another client on another connection is served while (and after) the attack."""
    assert procs.health_status(address, timeout=10) == health_pb2.HealthCheckResponse.SERVING


# -- streams ------------------------------------------------------------------------------------------
def test_streams_past_the_concurrency_limit_are_refused(gateways):
    with RawClient(gateways.budgets.address) as c:
        c.send(*(c.headers(sid) for sid in range(1, 19, 2)))  # 9 streams, 8 allowed
        c.read(1.0)
        assert c.resets() == {17: REFUSED_STREAM}
        assert c.pong(), "refusing a stream is a stream error, not a connection error"
        # A finished stream makes room again.
        c.send(rst(1), c.headers(19))
        assert c.pong(b"second!!")
        assert 19 not in c.resets()


def test_rapid_reset_is_cut_off_with_enhance_your_calm(gateways):
    with RawClient(gateways.budgets.address) as c:
        for sid in range(1, 400, 2):
            if not c.send(c.headers(sid), rst(sid)):
                break
        assert c.wait_goaway() == ENHANCE_YOUR_CALM
        assert c.wait_closed()
    canary_served(gateways.budgets.address)


def test_refused_streams_count_towards_the_reset_budget(gateways):
    with RawClient(gateways.budgets.address) as c:
        # 8 open streams, then a flood of streams that are all refused.
        for sid in range(1, 400, 2):
            if not c.send(c.headers(sid)):
                break
        assert c.wait_goaway() == ENHANCE_YOUR_CALM
    canary_served(gateways.budgets.address)


# -- control-frame floods -------------------------------------------------------------------------------
FLOODS = {
    "SETTINGS": frame(SETTINGS, 0, 0, b""),
    "PING": frame(PING, 0, 0, b"flooding"),
    "PRIORITY": frame(PRIORITY, 0, 3, struct.pack(">IB", 0, 16)),
    "WINDOW_UPDATE": frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", 1)),
    "empty DATA": frame(DATA, 0, 1, b""),
    "unknown type": frame(0x42, 0, 0, b"x" * 8),
}


@pytest.mark.parametrize("kind", FLOODS)
def test_control_frame_floods_are_cut_off(gateways, kind):
    with RawClient(gateways.budgets.address) as c:
        c.send(c.headers(1))  # an open stream for the empty DATA frames
        c.send(FLOODS[kind] * 200)
        assert c.wait_goaway() == ENHANCE_YOUR_CALM
        acks = [f for f in c.frames if f[0] == PING and f[1] & FLAG_ACK]
        assert len(acks) <= 60, "the flood was answered far past the budget"
    canary_served(gateways.budgets.address)


def test_continuation_flood_is_cut_off(gateways):
    """CVE-2024-27316: HEADERS without END_HEADERS, then empty CONTINUATION frames without end."""
    with RawClient(gateways.budgets.address) as c:
        c.send(frame(HEADERS, 0, 1, c.block()))
        for _ in range(20):
            if not c.send(frame(CONTINUATION, 0, 1) * 1000):
                break
        assert c.wait_goaway() == ENHANCE_YOUR_CALM
    canary_served(gateways.budgets.address)


def test_the_whole_header_block_is_bounded(gateways):
    big = 20 << 10  # two of these exceed the 32 KiB header block limit
    with RawClient(gateways.budgets.address) as c:
        c.send(frame(HEADERS, 0, 1, b"\x00" * big), frame(CONTINUATION, 0, 1, b"\x00" * big))
        assert c.wait_goaway() == PROTOCOL_ERROR
    with RawClient(gateways.budgets.address) as c:
        # One HEADERS frame larger than the header block limit: refused from its 9-byte header.
        c.send(frame_header((1 << 24) - 1, HEADERS, FLAG_END_HEADERS, 1))
        assert c.wait_goaway() == FRAME_SIZE_ERROR


@pytest.mark.parametrize("ftype", [SETTINGS, 0x42, GOAWAY])
def test_huge_control_frames_are_refused_before_they_are_buffered(gateways, ftype):
    with RawClient(gateways.budgets.address) as c:
        c.send(frame_header(1 << 20, ftype, 0, 0), b"\x00" * 1000)  # the rest never comes
        assert c.wait_goaway() == FRAME_SIZE_ERROR


# -- stream states (RFC 9113 section 5.1) ---------------------------------------------------------------
def test_data_on_an_idle_stream_is_a_protocol_error(gateways):
    with RawClient(gateways.budgets.address) as c:
        c.send(frame(DATA, FLAG_END_STREAM, 7, b"hello"))
        assert c.wait_goaway() == PROTOCOL_ERROR


@pytest.mark.parametrize("kind", ["WINDOW_UPDATE", "RST_STREAM"])
def test_window_update_and_reset_on_an_idle_stream_are_protocol_errors(gateways, kind):
    with RawClient(gateways.budgets.address) as c:
        c.send(c.headers(1))
        bad = frame(WINDOW_UPDATE, 0, 5, struct.pack(">I", 1)) if kind == "WINDOW_UPDATE" else rst(5)
        c.send(bad)
        assert c.wait_goaway() == PROTOCOL_ERROR


def test_reusing_a_closed_stream_id_is_a_connection_error(gateways):
    with RawClient(gateways.budgets.address) as c:
        c.send(c.headers(1), rst(1))
        assert c.pong()
        c.send(c.headers(1))
        assert c.wait_goaway() == STREAM_CLOSED
    with RawClient(gateways.budgets.address) as c:
        c.send(c.headers(5))
        assert c.pong()
        c.send(c.headers(3))  # lower than a stream already opened: never usable again
        assert c.wait_goaway() == PROTOCOL_ERROR
    with RawClient(gateways.budgets.address) as c:
        c.send(c.headers(1, end_stream=True))  # no message: answered with an error status, closed
        deadline = time.monotonic() + 10
        while not any(f[0] == HEADERS and f[1] & FLAG_END_STREAM for f in c.frames):
            assert c.read(0.2) and time.monotonic() < deadline
        c.send(c.headers(1))
        assert c.wait_goaway() == STREAM_CLOSED


def test_data_after_end_stream_is_a_stream_error(gateways):
    with RawClient(gateways.budgets.address) as c:
        c.send(c.headers(1, end_stream=True))
        c.send(frame(DATA, 0, 1, b"late"))
        c.read(1.0)
        assert c.resets().get(1) == STREAM_CLOSED
        assert c.pong(), "a stream error leaves the connection up"


# -- timers and the connection cap ---------------------------------------------------------------------
def test_a_client_that_never_sends_the_preface_is_closed(gateways):
    with RawClient(gateways.timers.address, preface=False) as c:
        assert c.wait_closed(timeout=30)


def test_an_unfinished_header_block_times_out(gateways):
    with RawClient(gateways.timers.address) as c:
        c.send(frame(HEADERS, 0, 1, c.block()))
        assert c.wait_goaway(timeout=30) == ENHANCE_YOUR_CALM


def test_an_idle_connection_gets_goaway_no_error(gateways):
    with RawClient(gateways.timers.address) as c:
        started = time.monotonic()
        assert c.wait_goaway(timeout=30) == NO_ERROR
        assert time.monotonic() - started >= 1.0  # not before the idle timeout (1.5 s)


def test_a_client_that_does_not_answer_keepalive_pings_is_disconnected(gateways):
    with RawClient(gateways.timers.address, ack_pings=False) as c:
        c.send(c.headers(1))  # an open stream: the connection is not idle
        assert c.wait_closed(timeout=30)
        assert any(f[0] == PING and not f[1] & FLAG_ACK for f in c.frames)
    with RawClient(gateways.timers.address, ack_pings=True) as c:
        c.send(c.headers(1))
        c.read(3.0)  # three keepalive timeouts, all answered
        assert c.pong()


def test_connections_past_the_cap_are_closed_at_accept(gateways):
    address = gateways.timers.address
    clients = [RawClient(address) for _ in range(3)]
    try:
        for c in clients:
            c.send(c.headers(1))  # keep them busy: no idle timeout
            assert c.pong()
        extra = RawClient(address)
        try:
            assert extra.wait_closed(timeout=10)
        finally:
            extra.close()
    finally:
        for c in clients:
            c.close()
    # Once the others are gone, a new connection is served again.
    procs.wait_for(
        lambda: procs.health_status(address, timeout=2) == health_pb2.HealthCheckResponse.SERVING,
        timeout=20,
        what="a connection served after the others closed",
    )
