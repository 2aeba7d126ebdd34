"""HTTP/2 wire format for the gateway's engine: codes, frame encoders, limits, receive buffers.

Everything here is fixed by RFC 9113 except :class:`H2Limits`, the knobs a deployer may tune (the
gateway builds it from :class:`~cuvis_cluster.common.settings.GatewaySettings`).
"""

from __future__ import annotations

import struct
import sys
from dataclasses import dataclass

# Frame types (RFC 9113 section 6).
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = (
    range(10)
)
# Flags.
FLAG_END_STREAM = 0x1
FLAG_ACK = 0x1
FLAG_END_HEADERS = 0x4
FLAG_PADDED = 0x8
FLAG_PRIORITY = 0x20
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# Error codes (RFC 9113 section 7).
NO_ERROR = 0x0
PROTOCOL_ERROR = 0x1
INTERNAL_ERROR = 0x2
FLOW_CONTROL_ERROR = 0x3
STREAM_CLOSED = 0x5
FRAME_SIZE_ERROR = 0x6
REFUSED_STREAM = 0x7
CANCEL = 0x8
COMPRESSION_ERROR = 0x9
ENHANCE_YOUR_CALM = 0xB

# Settings identifiers.
S_HEADER_TABLE_SIZE, S_ENABLE_PUSH, S_MAX_CONCURRENT_STREAMS = 0x1, 0x2, 0x3
S_INITIAL_WINDOW_SIZE, S_MAX_FRAME_SIZE, S_MAX_HEADER_LIST_SIZE = 0x4, 0x5, 0x6

# Protocol bounds.
MIN_MAX_FRAME = 1 << 14  # the smallest SETTINGS_MAX_FRAME_SIZE allowed, and the initial value
MAX_FRAME = (1 << 24) - 1  # the largest frame payload the protocol can express
MAX_WINDOW = (1 << 31) - 1
INITIAL_WINDOW = 65535  # every window's size until SETTINGS / WINDOW_UPDATE change it

U32 = struct.Struct(">I")
SETTING = struct.Struct(">HI")
GOAWAY_BODY = struct.Struct(">II")

Headers = list[tuple[bytes, bytes]]


def frame_header(length: int, ftype: int, flags: int, stream_id: int) -> bytes:
    return struct.pack(">BHBBI", length >> 16, length & 0xFFFF, ftype, flags, stream_id)


def window_update(stream_id: int, increment: int) -> bytes:
    return struct.pack(">BHBBII", 0, 4, WINDOW_UPDATE, 0, stream_id, increment)


def rst_stream(stream_id: int, code: int) -> bytes:
    return struct.pack(">BHBBII", 0, 4, RST_STREAM, 0, stream_id, code)


def settings_frame(settings: list[tuple[int, int]]) -> bytes:
    body = b"".join(SETTING.pack(key, value) for key, value in settings)
    return frame_header(len(body), SETTINGS, 0, 0) + body


def goaway_frame(last_stream: int, code: int, debug: bytes = b"") -> bytes:
    return frame_header(8 + len(debug), GOAWAY, 0, 0) + GOAWAY_BODY.pack(last_stream, code) + debug


SETTINGS_ACK = frame_header(0, SETTINGS, FLAG_ACK, 0)


class LinkError(Exception):
    """A connection error (RFC 9113 section 5.4.1): the link sends GOAWAY with ``code`` and closes."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class H2Limits:
    """What one HTTP/2 connection of the gateway advertises, accepts and buffers.

    The defaults are the gateway's defaults; :mod:`cuvis_cluster.gateway.main` fills them from the
    ``http2_*`` settings. All sizes are in bytes.
    """

    stream_window: int = 16 << 20  # receive window of each stream (SETTINGS_INITIAL_WINDOW_SIZE)
    connection_window: int = 64 << 20  # receive window of the whole connection
    max_frame: int = 1 << 20  # largest frame accepted (SETTINGS_MAX_FRAME_SIZE); only DATA is this big
    max_header_list: int = 1 << 16  # largest decoded header list (SETTINGS_MAX_HEADER_LIST_SIZE)
    max_header_block: int = 1 << 20  # largest encoded header block (HEADERS + CONTINUATION)
    max_concurrent_streams: int = 1000  # streams a peer may open at once (SETTINGS_MAX_CONCURRENT_STREAMS)
    write_high_water: int = 4 << 20  # the transport pauses the sending of DATA above this
    write_low_water: int = 1 << 20  # ... and resumes it below this
    read_buffer: int = 1 << 20  # size of one receive slab
    min_read: int = 64 << 10  # a read gets at least this much room (else a fresh slab is taken)
    pooled_buffers: int = 32  # idle receive slabs kept for reuse
    # Defences (docs/gateway-design.md, "Defences"); times in seconds.
    max_connections: int = 10000  # client connections held at once (the front end closes the rest)
    handshake_timeout: float = 10.0  # TLS handshake + client preface + first SETTINGS
    header_timeout: float = 10.0  # a started header block (HEADERS + CONTINUATION) must end within this
    idle_timeout: float = 3600.0  # a client connection without open streams is closed (GOAWAY) after this
    keepalive: float = 30.0  # a connection quiet this long gets a PING
    keepalive_timeout: float = 20.0  # ... which must be answered within this
    slow_reader_timeout: float = 60.0  # output may sit unread by the client this long
    abuse_window: float = 10.0  # the window over which resets and control frames are counted
    max_resets_per_window: int = 200  # streams reset by the client or refused by us, per window
    max_control_frames_per_window: int = 1000  # SETTINGS, PING, PRIORITY, WINDOW_UPDATE, empty frames...
    max_control_queue: int = 256 << 10  # acks and resets queued for a client that does not read


_DEFAULTS = H2Limits()


class SlabPool:
    """Receive buffers. A slab goes back into use only when no memoryview of it is alive."""

    def __init__(self, size: int = _DEFAULTS.read_buffer, keep: int = _DEFAULTS.pooled_buffers) -> None:
        self.size = size
        self.keep = keep
        self._slabs: list[bytearray] = []

    def take(self, at_least: int) -> bytearray:
        if at_least <= self.size:
            for i, slab in enumerate(self._slabs):
                # References: the list, the loop variable, getrefcount's argument.
                if sys.getrefcount(slab) <= 3:
                    del self._slabs[i]
                    return slab
        return bytearray(max(at_least, self.size))

    def give(self, slab: bytearray) -> None:
        if len(slab) == self.size and len(self._slabs) < self.keep:
            self._slabs.append(slab)
