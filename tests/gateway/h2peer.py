"""An independent HTTP/2 client peer for conformance and hostile-client tests (and bench/h2_attacks.py).

Frames are built with ``hyperframe`` and header blocks with ``hpack`` (the ``h2`` project's libraries,
not the gateway's engine), or as raw bytes where a test must send something those libraries refuse to
build (a DATA frame on stream 0, a PING of 7 bytes). Everything runs on a plain blocking socket with
timeouts, so no read or write can hang a test: each wait is bounded by a deadline.

The verdict of an exchange is an :class:`Outcome`: what the server sent back (GOAWAY and its code,
RST_STREAM per stream, PING acks, response headers) and whether it closed the connection.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import hpack
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    ExtensionFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# RFC 9113 section 7 error codes, by name so that failures read well.
ERRORS = {
    0x0: "NO_ERROR",
    0x1: "PROTOCOL_ERROR",
    0x2: "INTERNAL_ERROR",
    0x3: "FLOW_CONTROL_ERROR",
    0x4: "SETTINGS_TIMEOUT",
    0x5: "STREAM_CLOSED",
    0x6: "FRAME_SIZE_ERROR",
    0x7: "REFUSED_STREAM",
    0x8: "CANCEL",
    0x9: "COMPRESSION_ERROR",
    0xA: "CONNECT_ERROR",
    0xB: "ENHANCE_YOUR_CALM",
    0xC: "INADEQUATE_SECURITY",
    0xD: "HTTP_1_1_REQUIRED",
}
CODES = {name: code for code, name in ERRORS.items()}

HEALTH_CHECK = b"/grpc.health.v1.Health/Check"
# An empty HealthCheckRequest as one uncompressed gRPC message: flag 0, length 0.
EMPTY_MESSAGE = b"\x00\x00\x00\x00\x00"
# Set on the sentinel PING that marks "the server has read everything sent before it".
SENTINEL = b"sentinel"


def name_of(code: int | None) -> str:
    return "none" if code is None else ERRORS.get(code, hex(code))


def raw_frame(
    ftype: int, flags: int, stream_id: int, payload: bytes = b"", length: int | None = None
) -> bytes:
    """One frame as bytes, any field allowed (the reserved bit is bit 31 of ``stream_id``)."""
    n = len(payload) if length is None else length
    return struct.pack(">BHBBI", n >> 16, n & 0xFFFF, ftype, flags, stream_id) + payload


FRAME_NAMES = [
    "DATA",
    "HEADERS",
    "PRIORITY",
    "RST_STREAM",
    "SETTINGS",
    "PUSH_PROMISE",
    "PING",
    "GOAWAY",
    "WINDOW_UPDATE",
    "CONTINUATION",
]


def describe(frame: Frame | bytes) -> str:
    """A short line for a frame sent: type, stream, flags, payload length."""
    if isinstance(frame, bytes | bytearray):
        if frame.startswith(PREFACE):
            return "preface" + (f" + {len(frame) - len(PREFACE)}B" if len(frame) > len(PREFACE) else "")
        if len(frame) < 9:
            return f"raw {bytes(frame)!r}"
        length, ftype, flags, sid = int.from_bytes(frame[:3], "big"), frame[3], frame[4], frame[5:9]
        kind = FRAME_NAMES[ftype] if ftype < len(FRAME_NAMES) else f"type {ftype:#x}"
        return f"raw {kind} stream={int.from_bytes(sid, 'big'):#x} flags={flags:#x} len={length}"
    flags = "|".join(sorted(frame.flags))
    kind = type(frame).__name__.removesuffix("Frame").upper()
    return f"{kind} {frame.stream_id}{' ' + flags if flags else ''} {len(frame.serialize()) - 9}B"


def request_headers(path: bytes = HEALTH_CHECK, extra: Iterable[tuple[bytes, bytes]] = ()) -> list:
    """A well-formed gRPC request header list (RFC 9113 section 8.3.1 plus the gRPC ones)."""
    return [
        (b":method", b"POST"),
        (b":scheme", b"http"),
        (b":path", path),
        (b":authority", b"127.0.0.1"),
        (b"content-type", b"application/grpc"),
        (b"te", b"trailers"),
        *extra,
    ]


@dataclass
class Outcome:
    """What came back from the server on one connection, in order of arrival."""

    goaway: int | None = None  # error code of the first GOAWAY
    goaway_last_stream: int | None = None
    closed: bool = False  # the server closed (or reset) the TCP connection
    # Closed by a TCP reset: the kernel then drops whatever the server sent that was not read yet (a
    # GOAWAY included). A server that closes with the client's frames still unread causes one, unless
    # it half-closes and drains first ("lingering close").
    reset: bool = False
    stalled: bool = False  # a send timed out: the server stopped reading without closing
    resets: dict[int, int] = field(default_factory=dict)  # stream -> RST_STREAM code
    headers: dict[int, list[list[tuple[bytes, bytes]]]] = field(default_factory=dict)
    ended: set[int] = field(default_factory=set)  # streams the server ended (END_STREAM)
    ping_acks: list[bytes] = field(default_factory=list)
    settings: dict[int, int] = field(default_factory=dict)  # the server's SETTINGS (not acks)
    settings_seen: bool = False
    settings_acks: int = 0
    first_frame: str | None = None
    window_updates: dict[int, int] = field(default_factory=dict)  # stream (0: connection) -> credit
    received: int = 0  # frames received in all
    log: deque[str] = field(default_factory=lambda: deque(maxlen=64))  # the latest frames, in short

    def grpc_status(self, stream_id: int) -> int | None:
        for block in self.headers.get(stream_id, []):
            for name, value in block:
                if name == b"grpc-status":
                    return int(value)
        return None

    def http_status(self, stream_id: int) -> int | None:
        for block in self.headers.get(stream_id, []):
            for name, value in block:
                if name == b":status":
                    return int(value)
        return None

    def summary(self) -> str:
        tail = list(self.log)[-12:]
        more = f"(+{self.received - len(tail)} earlier) " if self.received > len(tail) else ""
        return (
            f"GOAWAY {name_of(self.goaway)}, closed={self.closed}{' by TCP reset' if self.reset else ''}"
            f"{', stalled (stopped reading)' if self.stalled else ''}, "
            f"RST {{{', '.join(f'{s}: {name_of(c)}' for s, c in list(self.resets.items())[:8])}}}, "
            f"frames: {more}{'; '.join(tail) or 'none'}"
        )


class Peer:
    """One client connection to an HTTP/2 server over prior-knowledge cleartext (h2c)."""

    def __init__(self, address: str, timeout: float = 10.0, receive_buffer: int | None = None) -> None:
        """``receive_buffer``: a small SO_RCVBUF (set before connecting) for a client that does not read,
        so that what the server sends backs up in the server rather than in this side's kernel."""
        host, port = address.rsplit(":", 1)
        self.timeout = timeout
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if receive_buffer is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        self.sock.settimeout(timeout)
        self.sock.connect((host, int(port)))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.encoder = hpack.Encoder()
        self.decoder = hpack.Decoder()
        self.decoder.max_header_list_size = 1 << 20
        self.outcome = Outcome()
        self._buf = bytearray()
        self._block: tuple[int, int, bytearray] | None = None  # stream, flags, fragments of a block
        self.frames_sent = 0
        self.bytes_sent = 0
        self.sent_log: list[str] = []  # a short line per send, for failure messages

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def __enter__(self) -> Peer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------------------------- sending

    def send(self, *frames: Frame | bytes) -> bool:
        """Send frames; False if the server has closed the connection or stopped reading."""
        data = b"".join(f if isinstance(f, bytes | bytearray) else f.serialize() for f in frames)
        try:
            self.sock.sendall(data)
        except TimeoutError:  # the server stopped reading but kept the connection: not a cut-off
            self.outcome.stalled = True
            return False
        except (BrokenPipeError, ConnectionResetError) as exc:
            self.outcome.closed = True
            self.outcome.reset = isinstance(exc, ConnectionResetError)
            return False
        self.frames_sent += len(frames)
        self.bytes_sent += len(data)
        if len(self.sent_log) < 32:
            self.sent_log.extend(describe(f) for f in frames[: 32 - len(self.sent_log)])
        return True

    def handshake(self, settings: dict[int, int] | None = None, wait: float = 10.0) -> Outcome:
        """Preface and SETTINGS; wait for the server's SETTINGS, acknowledge it."""
        self.send(PREFACE, SettingsFrame(0, settings=settings or {}))
        self.read_until(lambda o: o.settings_seen, wait)
        return self.outcome

    def headers_frame(
        self,
        stream_id: int,
        headers: list | None = None,
        *,
        end_stream: bool = False,
        end_headers: bool = True,
    ) -> HeadersFrame:
        flags = (["END_STREAM"] if end_stream else []) + (["END_HEADERS"] if end_headers else [])
        data = self.encoder.encode(headers if headers is not None else request_headers())
        return HeadersFrame(stream_id, data, flags=flags)

    def request(self, stream_id: int, *, headers: list | None = None, body: bytes = EMPTY_MESSAGE) -> bool:
        """A whole unary health-check call on ``stream_id``."""
        return self.send(
            self.headers_frame(stream_id, headers), DataFrame(stream_id, body, flags=["END_STREAM"])
        )

    # ---------------------------------------------------------------------------------- receiving

    def poll(self, timeout: float) -> bool:
        """Read what arrives within ``timeout`` seconds; False once the connection is closed."""
        if self.outcome.closed:
            return False
        self.sock.settimeout(timeout if timeout > 0 else 0.0)
        try:
            chunk = self.sock.recv(1 << 16)
        except (BlockingIOError, TimeoutError):
            return True
        except OSError as exc:
            self.outcome.closed = True
            self.outcome.reset = isinstance(exc, ConnectionResetError)
            return False
        finally:
            self.sock.settimeout(self.timeout)  # sends stay blocking, with their own bound
        if not chunk:
            self.outcome.closed = True
            return False
        self._buf += chunk
        self._parse()
        return True

    def read_until(self, done: Callable[[Outcome], bool], timeout: float) -> Outcome:
        deadline = time.monotonic() + timeout
        while not done(self.outcome) and not self.outcome.closed:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self.poll(min(left, 0.5))
        return self.outcome

    def drain(self, rounds: int = 64) -> None:
        """Read whatever is already waiting, without blocking (at most ``rounds`` reads)."""
        for _ in range(rounds):
            before = len(self._buf), len(self.outcome.log), self.outcome.closed
            if not self.poll(0) or (len(self._buf), len(self.outcome.log), self.outcome.closed) == before:
                return

    def settle(
        self, done: Callable[[Outcome], bool] | None = None, timeout: float = 5.0, grace: float = 0.5
    ) -> Outcome:
        """Send a sentinel PING; read until ``done``, a GOAWAY (then the close), or the ack plus ``grace``.

        A server handles a connection's frames in order, so once the sentinel is acked everything sent
        before it has been seen; ``grace`` leaves room for answers that take a trip to a backend.
        """
        want = done or (lambda o: False)
        self.send(PingFrame(0, SENTINEL))
        o = self.read_until(lambda o: want(o) or SENTINEL in o.ping_acks or o.goaway is not None, timeout)
        if o.goaway is not None:
            return self.read_until(lambda o: False, 3.0)  # the close that must follow a GOAWAY
        if not want(o):
            self.read_until(lambda o: want(o) or o.goaway is not None, grace)
            if o.goaway is not None:
                self.read_until(lambda o: False, 3.0)
        return o

    def _parse(self) -> None:
        while len(self._buf) >= 9:
            length = int.from_bytes(self._buf[:3], "big")
            if len(self._buf) < 9 + length:
                return
            head, body = bytes(self._buf[:9]), bytes(self._buf[9 : 9 + length])
            del self._buf[: 9 + length]
            frame, _ = Frame.parse_frame_header(memoryview(head), strict=False)
            try:
                frame.parse_body(memoryview(body))
            except Exception as exc:  # a malformed frame from the server: record it, it fails the test
                self.outcome.log.append(f"unparsable {type(frame).__name__}: {exc}")
                continue
            self._on_frame(frame)

    def _on_frame(self, frame: Frame) -> None:
        o = self.outcome
        kind = type(frame).__name__.removesuffix("Frame").upper()
        o.received += 1
        if o.first_frame is None:
            o.first_frame = kind
        sid = frame.stream_id
        if isinstance(frame, GoAwayFrame):
            # A graceful GOAWAY (NO_ERROR) may come first and the reason after it: keep the error.
            if o.goaway is None or o.goaway == 0:
                o.goaway, o.goaway_last_stream = frame.error_code, frame.last_stream_id
            o.log.append(f"GOAWAY {name_of(frame.error_code)} last={frame.last_stream_id}")
        elif isinstance(frame, RstStreamFrame):
            o.resets.setdefault(sid, frame.error_code)
            o.log.append(f"RST_STREAM {sid} {name_of(frame.error_code)}")
        elif isinstance(frame, PingFrame):
            if "ACK" in frame.flags:
                o.ping_acks.append(frame.opaque_data)
                o.log.append(f"PING ack {frame.opaque_data!r}")
            else:  # answer the server's keepalive like a well-behaved client
                self.send(PingFrame(0, frame.opaque_data, flags=["ACK"]))
        elif isinstance(frame, SettingsFrame):
            if "ACK" in frame.flags:
                o.settings_acks += 1
                o.log.append("SETTINGS ack")
            else:
                o.settings.update(frame.settings)
                o.settings_seen = True
                o.log.append(f"SETTINGS {dict(frame.settings)}")
                self.send(SettingsFrame(0, flags=["ACK"]))
        elif isinstance(frame, HeadersFrame | ContinuationFrame):
            if isinstance(frame, HeadersFrame):
                self._block = (sid, int("END_STREAM" in frame.flags), bytearray())
            if self._block is not None:
                self._block[2].extend(frame.data)
                if "END_HEADERS" in frame.flags:
                    stream, ended, data = self._block
                    self._block = None
                    decoded = [(bytes(n), bytes(v)) for n, v in self.decoder.decode(bytes(data), raw=True)]
                    o.headers.setdefault(stream, []).append(decoded)
                    o.log.append(f"HEADERS {stream} {dict(decoded)}")
                    if ended:
                        o.ended.add(stream)
        elif isinstance(frame, DataFrame):
            if "END_STREAM" in frame.flags:
                o.ended.add(sid)
            if frame.flow_controlled_length:  # give the credit back so long answers can flow
                self.send(
                    WindowUpdateFrame(0, frame.flow_controlled_length),
                    WindowUpdateFrame(sid, frame.flow_controlled_length),
                )
            o.log.append(f"DATA {sid} {len(frame.data)}B")
        elif isinstance(frame, WindowUpdateFrame):
            o.window_updates[sid] = o.window_updates.get(sid, 0) + frame.window_increment
            o.log.append(f"WINDOW_UPDATE {sid} +{frame.window_increment}")
        elif isinstance(frame, ExtensionFrame):
            o.log.append(f"EXTENSION type={frame.type}")
        else:
            o.log.append(f"{kind} {sid}")


# ---------------------------------------------------------------------------------------------------
# process memory, for the hostile tests and the bench


def rss_kib(pid: int, key: str = "VmRSS") -> int:
    """``VmRSS`` (or ``VmHWM``) of a process in KiB, from /proc/<pid>/status; 0 once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def children_of(pid: int) -> list[int]:
    """Direct children of ``pid`` (nginx's workers under its master)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                stat = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
                if int(stat[1]) == pid:
                    out.append(int(entry))
    return out


class MemoryWatch:
    """Samples the summed RSS of some processes every few ms; ``peak_growth_kib`` is max minus start."""

    def __init__(self, pids: list[int], interval: float = 0.01) -> None:
        self.pids = pids
        self.interval = interval
        self.start_kib = self._total()
        self.peak_kib = self.start_kib
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _total(self) -> int:
        return sum(rss_kib(p) for p in self.pids)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak_kib = max(self.peak_kib, self._total())

    def __enter__(self) -> MemoryWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.peak_kib = max(self.peak_kib, self._total())

    @property
    def peak_growth_kib(self) -> int:
        return self.peak_kib - self.start_kib
