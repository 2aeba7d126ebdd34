"""RFC 9113 server requirements as a table of cases: frames to send and the answer the RFC demands.

Used by tests/gateway/test_h2_conformance.py (against a real gateway) and bench/h2_attacks.py
``--conformance`` (the same table against nginx, side by side). Each case runs on a fresh connection
(:func:`run_case`); frames are built with ``hyperframe``/``hpack`` through :class:`h2peer.Peer`, or as
raw bytes where the rule under test is one those libraries will not break.

Vocabulary of the expectations (RFC 9113 section 5.4):

* connection error X: a GOAWAY carrying X, then the TCP connection closed (section 5.4.1);
* stream error X: RST_STREAM carrying X on that stream, or a connection error X (an endpoint may
  always escalate a stream error, section 5.4.1); a response before the reset is allowed;
* alive: no error, and a PING sent after the case is acknowledged.

Limits (SETTINGS_MAX_FRAME_SIZE, SETTINGS_MAX_CONCURRENT_STREAMS) are read from the server's SETTINGS;
a case that needs a limit the server does not set low enough to cross does not apply.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

from h2peer import (
    CODES,
    EMPTY_MESSAGE,
    SENTINEL,
    Outcome,
    Peer,
    name_of,
    raw_frame,
    request_headers,
)
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    HeadersFrame,
    WindowUpdateFrame,
)

WATCH = b"/grpc.health.v1.Health/Watch"  # a server-streaming call: the stream stays open
MAX_WINDOW = (1 << 31) - 1

PE, FSE, FCE = CODES["PROTOCOL_ERROR"], CODES["FRAME_SIZE_ERROR"], CODES["FLOW_CONTROL_ERROR"]
SCLOSED, COMPRESSION, REFUSED = CODES["STREAM_CLOSED"], CODES["COMPRESSION_ERROR"], CODES["REFUSED_STREAM"]
# Frame type numbers and flags for raw frames.
DATA, HEADERS, PRIORITY, RST, SETTINGS, PUSH, PING, GOAWAY, WINUP, CONT = range(10)
END_STREAM, ACK, END_HEADERS, PADDED, PRIO = 0x1, 0x1, 0x4, 0x8, 0x20


# ---------------------------------------------------------------------------------------------------
# expectations: a predicate on the outcome, and what it means in words


@dataclass(frozen=True)
class Expect:
    says: str
    met: Callable[[Outcome], bool]


def connection_error(*codes: int) -> Expect:
    says = " or ".join(name_of(c) for c in codes)
    return Expect(f"GOAWAY {says}, then close", lambda o: o.goaway in codes and o.closed)


def stream_error(code: int, sid: int) -> Expect:
    return Expect(
        f"RST_STREAM {name_of(code)} on stream {sid} (or GOAWAY {name_of(code)})",
        lambda o: o.resets.get(sid) == code or (o.goaway == code and o.closed),
    )


def alive(o: Outcome) -> bool:
    return o.goaway is None and not o.closed and SENTINEL in o.ping_acks


ALIVE = Expect("no error; the next PING is acked", lambda o: alive(o) and not o.resets)


def answered(*sids: int) -> Expect:
    return Expect(
        f"a 200 response with grpc-status 0 on stream(s) {sids}",
        lambda o: alive(o) and all(o.http_status(s) == 200 and o.grpc_status(s) == 0 for s in sids),
    )


# ---------------------------------------------------------------------------------------------------
# building blocks of the cases


def hpack_int(value: int, prefix_bits: int, high: int) -> bytes:
    """An HPACK integer (RFC 7541 section 5.1) with ``high`` in the bits above the prefix."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([high | value])
    out, value = bytearray([high | limit]), value - limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    return bytes([*out, value])


def literal(name: bytes, value: bytes) -> bytes:
    """A literal field without indexing, new name, no Huffman: carries any bytes unchanged."""
    return b"\x00" + hpack_int(len(name), 7, 0) + name + hpack_int(len(value), 7, 0) + value


def raw_block(headers: list[tuple[bytes, bytes]]) -> bytes:
    """A header block that keeps each field exactly as given (an encoder may refuse or normalise)."""
    return b"".join(literal(n, v) for n, v in headers)


def open_stream(p: Peer, sid: int, path: bytes = b"/grpc.health.v1.Health/Check") -> None:
    """HEADERS without END_STREAM: the server waits for the request message, the stream stays open."""
    p.send(p.headers_frame(sid, request_headers(path)))


def malformed(headers: list[tuple[bytes, bytes]], body: bool = True) -> Callable[[Peer], None]:
    """A request on stream 1 whose header list breaks a rule of RFC 9113 section 8."""

    def send(p: Peer) -> None:
        p.send(raw_frame(HEADERS, END_HEADERS, 1, raw_block(headers)))
        if body:
            p.send(DataFrame(1, EMPTY_MESSAGE, flags=["END_STREAM"]))

    return send


def without(name: bytes) -> list[tuple[bytes, bytes]]:
    return [(n, v) for n, v in request_headers() if n != name]


def with_fields(*fields: tuple[bytes, bytes]) -> list[tuple[bytes, bytes]]:
    return [*request_headers(), *fields]


def settings_raw(ident: int, value: int) -> bytes:
    return raw_frame(SETTINGS, 0, 0, struct.pack(">HI", ident, value))


def request_whole(p: Peer, sid: int) -> None:
    p.request(sid)


def reuse_after_close(p: Peer) -> None:
    p.request(1)
    p.read_until(lambda o: 1 in o.ended or o.closed, 10)
    p.request(1)


def lower_id(p: Peer) -> None:
    p.request(5)
    p.read_until(lambda o: 5 in o.ended or o.closed, 10)
    p.request(3)


def half_closed(then: Callable[[Peer], None]) -> Callable[[Peer], None]:
    """A Watch call, request side ended (the server keeps streaming): stream 1 is half-closed (remote)."""

    def send(p: Peer) -> None:
        p.send(p.headers_frame(1, request_headers(WATCH)), DataFrame(1, EMPTY_MESSAGE, flags=["END_STREAM"]))
        p.read_until(lambda o: 1 in o.headers or o.closed, 10)
        then(p)

    return send


def max_frame(o: Outcome) -> int:
    return o.settings.get(0x5, 16384)


def max_streams(o: Outcome) -> int | None:
    return o.settings.get(0x3)


def too_many_streams(p: Peer) -> None:
    for i in range((max_streams(p.outcome) or 0) + 1):
        open_stream(p, 1 + 2 * i)


def refused_past_limit(o: Outcome) -> bool:
    limit = max_streams(o) or 0
    first_open = not any(s in o.resets for s in range(1, 2 * limit, 2))
    return o.resets.get(1 + 2 * limit) in (REFUSED, PE) and first_open


def stream_window_overflow(p: Peer) -> None:
    open_stream(p, 1)
    p.send(WindowUpdateFrame(1, MAX_WINDOW))  # 65535 + (2^31 - 1) > 2^31 - 1


def initial_window_overflow(p: Peer) -> None:
    open_stream(p, 1)  # nothing sent on it yet: its send window is exactly 65535
    p.send(WindowUpdateFrame(1, MAX_WINDOW - 65535), settings_raw(0x4, 65536))


def big_headers(p: Peer) -> None:
    # Literal, not Huffman: the frame must really exceed the limit (a run of one letter packs 8:5).
    block = raw_block(with_fields((b"x-big", b"v" * (max_frame(p.outcome) + 100))))
    p.send(raw_frame(HEADERS, END_HEADERS, 1, block))


def table_size_over(p: Peer) -> None:
    allowed = p.outcome.settings.get(0x1, 4096)
    update = hpack_int(allowed + 1, 5, 0x20)  # dynamic table size update (RFC 7541 section 6.3)
    p.send(raw_frame(HEADERS, END_HEADERS, 1, update + raw_block(request_headers())))


def split_headers(p: Peer) -> None:
    block = p.encoder.encode(request_headers())
    p.send(
        HeadersFrame(1, block[:5]),
        ContinuationFrame(1, block[5:10]),
        ContinuationFrame(1, block[10:], flags=["END_HEADERS"]),
        DataFrame(1, EMPTY_MESSAGE, flags=["END_STREAM"]),
    )


def open_block_then(*frames: bytes | object) -> Callable[[Peer], None]:
    """HEADERS on stream 1 without END_HEADERS (a header block left open), then ``frames``."""

    def send(p: Peer) -> None:
        block = p.encoder.encode(request_headers())
        p.send(HeadersFrame(1, block[:4]), *frames)  # type: ignore[arg-type]

    return send


# ---------------------------------------------------------------------------------------------------
# the table


@dataclass(frozen=True)
class Case:
    section: str
    must: str
    send: Callable[[Peer], None]
    expect: Expect
    handshake: bool = True
    applies: Callable[[Outcome], bool] = lambda o: True  # on the server's SETTINGS: can it be crossed?

    @property
    def id(self) -> str:
        return f"{self.section} {self.must}"


@dataclass
class Verdict:
    case: Case
    applicable: bool
    passed: bool
    sent: list[str]
    outcome: Outcome

    def explain(self) -> str:
        c = self.case
        return (
            f"RFC 9113 section {c.section}: {c.must}\n"
            f"  sent:     {' | '.join(self.sent)}\n"
            f"  expected: {c.expect.says}\n"
            f"  got:      {self.outcome.summary()}"
        )


def run_case(address: str, case: Case) -> Verdict:
    """One case on a fresh connection: handshake, the case's frames, then read until a verdict."""
    with Peer(address, timeout=10) as peer:
        if case.handshake:
            peer.handshake()
            if not peer.outcome.settings_seen:
                return Verdict(case, True, False, peer.sent_log, peer.outcome)
            if not case.applies(peer.outcome):
                return Verdict(case, False, False, peer.sent_log, peer.outcome)
        case.send(peer)
        outcome = peer.settle(case.expect.met, timeout=8.0, grace=0.5)
        return Verdict(case, True, case.expect.met(outcome), peer.sent_log, outcome)
