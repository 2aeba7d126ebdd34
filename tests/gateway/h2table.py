"""The RFC 9113 table: one case per server-side MUST, each with the section it comes from.

Built from the pieces in h2cases.py; run by tests/gateway/test_h2_conformance.py and
bench/h2_attacks.py ``--conformance``.
"""

from __future__ import annotations

import struct

from h2cases import (
    ACK,
    ALIVE,
    COMPRESSION,
    CONT,
    DATA,
    END_HEADERS,
    END_STREAM,
    FCE,
    FSE,
    GOAWAY,
    HEADERS,
    MAX_WINDOW,
    PADDED,
    PE,
    PING,
    PRIO,
    PRIORITY,
    PUSH,
    RST,
    SCLOSED,
    SETTINGS,
    WINUP,
    Case,
    Expect,
    alive,
    answered,
    big_headers,
    connection_error,
    half_closed,
    hpack_int,
    initial_window_overflow,
    lower_id,
    malformed,
    max_frame,
    max_streams,
    open_block_then,
    open_stream,
    raw_block,
    refused_past_limit,
    request_whole,
    reuse_after_close,
    settings_raw,
    split_headers,
    stream_error,
    stream_window_overflow,
    table_size_over,
    too_many_streams,
    with_fields,
    without,
)
from h2peer import EMPTY_MESSAGE, PREFACE, raw_frame, request_headers
from hyperframe.frame import (
    DataFrame,
    PingFrame,
    PriorityFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

HB = raw_block(request_headers())
CASES = [
    # 3.4 connection preface
    Case(
        "3.4",
        "server preface is SETTINGS",
        lambda p: None,
        Expect("first frame SETTINGS", lambda o: o.first_frame == "SETTINGS"),
    ),
    Case(
        "3.4",
        "invalid preface: connection error PROTOCOL_ERROR (GOAWAY may be omitted)",
        lambda p: p.send(b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n", SettingsFrame(0)),
        Expect("close (GOAWAY PROTOCOL_ERROR or none)", lambda o: o.closed and o.goaway in (None, PE)),
        handshake=False,
    ),
    Case(
        "3.4",
        "preface not followed by SETTINGS: PROTOCOL_ERROR",
        lambda p: p.send(PREFACE, PingFrame(0, b"12345678")),
        Expect("close (GOAWAY PROTOCOL_ERROR or none)", lambda o: o.closed and o.goaway in (None, PE)),
        handshake=False,
    ),
    # 4.1 frame format
    Case("4.1", "unknown frame type is ignored", lambda p: p.send(raw_frame(0xFA, 0, 0, b"12345678")), ALIVE),
    Case(
        "4.1",
        "undefined flags are ignored",
        lambda p: p.send(raw_frame(PING, 0xFE, 0, b"unknownf")),
        Expect("PING acked", lambda o: alive(o) and b"unknownf" in o.ping_acks),
    ),
    Case(
        "4.1",
        "reserved bit of the stream id is ignored (PING)",
        lambda p: p.send(raw_frame(PING, 0, 1 << 31, b"reserved")),
        Expect("PING acked", lambda o: alive(o) and b"reserved" in o.ping_acks),
    ),
    Case(
        "4.1",
        "reserved bit of the stream id is ignored (request)",
        lambda p: p.send(
            raw_frame(HEADERS, END_HEADERS, (1 << 31) | 1, HB),
            DataFrame(1, EMPTY_MESSAGE, flags=["END_STREAM"]),
        ),
        answered(1),
    ),
    # 4.2 frame size
    Case(
        "4.2",
        "DATA over SETTINGS_MAX_FRAME_SIZE: FRAME_SIZE_ERROR",
        lambda p: (open_stream(p, 1), p.send(DataFrame(1, b"\x00" * (max_frame(p.outcome) + 1)))),
        stream_error(FSE, 1),
        applies=lambda o: max_frame(o) < (1 << 24) - 1,
    ),
    Case(
        "4.2",
        "HEADERS over SETTINGS_MAX_FRAME_SIZE: connection error FRAME_SIZE_ERROR",
        big_headers,
        connection_error(FSE),
        applies=lambda o: max_frame(o) < (1 << 24) - 1,
    ),
    # 4.3 field section compression
    Case(
        "4.3",
        "HPACK index 0: COMPRESSION_ERROR",
        lambda p: p.send(raw_frame(HEADERS, END_HEADERS, 1, b"\x80")),
        connection_error(COMPRESSION),
    ),
    Case(
        "4.3",
        "HPACK index past the tables: COMPRESSION_ERROR",
        lambda p: p.send(raw_frame(HEADERS, END_HEADERS, 1, hpack_int(500, 7, 0x80))),
        connection_error(COMPRESSION),
    ),
    Case(
        "4.3",
        "table size update over SETTINGS_HEADER_TABLE_SIZE: COMPRESSION_ERROR",
        table_size_over,
        connection_error(COMPRESSION),
    ),
    Case(
        "4.3",
        "PING inside a header block: PROTOCOL_ERROR",
        open_block_then(PingFrame(0, b"inblock!")),
        connection_error(PE),
    ),
    Case(
        "4.3",
        "HEADERS of another stream inside a header block: PROTOCOL_ERROR",
        open_block_then(raw_frame(HEADERS, END_HEADERS, 3, HB)),
        connection_error(PE),
    ),
    Case("4.3", "a block split over CONTINUATION frames is one block", split_headers, answered(1)),
    # 5.1 stream states
    Case(
        "5.1",
        "DATA on an idle stream: PROTOCOL_ERROR",
        lambda p: p.send(DataFrame(1, EMPTY_MESSAGE)),
        connection_error(PE),
    ),
    Case(
        "5.1",
        "RST_STREAM on an idle stream: PROTOCOL_ERROR",
        lambda p: p.send(RstStreamFrame(1, 8)),
        connection_error(PE),
    ),
    Case(
        "5.1",
        "WINDOW_UPDATE on an idle stream: PROTOCOL_ERROR",
        lambda p: p.send(WindowUpdateFrame(1, 100)),
        connection_error(PE),
    ),
    Case(
        "5.1",
        "CONTINUATION on an idle stream: PROTOCOL_ERROR",
        lambda p: p.send(raw_frame(CONT, END_HEADERS, 1, HB)),
        connection_error(PE),
    ),
    Case(
        "5.1",
        "DATA on a half-closed (remote) stream: STREAM_CLOSED",
        half_closed(lambda p: p.send(DataFrame(1, EMPTY_MESSAGE))),
        stream_error(SCLOSED, 1),
    ),
    Case(
        "5.1",
        "HEADERS on a half-closed (remote) stream: STREAM_CLOSED",
        half_closed(lambda p: p.send(p.headers_frame(1, [(b"x-more", b"1")], end_stream=True))),
        stream_error(SCLOSED, 1),
    ),
    Case(
        "5.1",
        "DATA after RST_STREAM: STREAM_CLOSED",
        lambda p: (open_stream(p, 1), p.send(RstStreamFrame(1, 8), DataFrame(1, EMPTY_MESSAGE))),
        stream_error(SCLOSED, 1),
    ),
    Case(
        "5.1",
        "PRIORITY on an idle stream is allowed",
        lambda p: p.send(PriorityFrame(9, depends_on=0, stream_weight=16)),
        ALIVE,
    ),
    # 5.1.1 stream identifiers
    Case(
        "5.1.1",
        "even stream id from a client: PROTOCOL_ERROR",
        lambda p: p.send(raw_frame(HEADERS, END_HEADERS, 2, HB)),
        connection_error(PE),
    ),
    Case("5.1.1", "stream id below a previous one: PROTOCOL_ERROR", lower_id, connection_error(PE)),
    # A new stream id must exceed every one opened (5.1.1: PROTOCOL_ERROR), but a HEADERS on a closed
    # stream is also a frame on a closed stream (5.1: STREAM_CLOSED may be a connection error); nginx
    # says PROTOCOL_ERROR, h2spec accepts STREAM_CLOSED. Either way the connection must end.
    Case(
        "5.1.1",
        "a closed stream's id reused: PROTOCOL_ERROR or STREAM_CLOSED",
        reuse_after_close,
        connection_error(PE, SCLOSED),
    ),
    Case(
        "5.1.1",
        "two calls on rising ids are answered",
        lambda p: (request_whole(p, 1), request_whole(p, 3)),
        answered(1, 3),
    ),
    # 5.1.2 concurrency
    Case(
        "5.1.2",
        "SETTINGS_MAX_CONCURRENT_STREAMS is advertised",
        lambda p: None,
        Expect("a SETTINGS_MAX_CONCURRENT_STREAMS value", lambda o: max_streams(o) is not None),
    ),
    Case(
        "5.1.2",
        "a stream past MAX_CONCURRENT_STREAMS: REFUSED_STREAM or PROTOCOL_ERROR",
        too_many_streams,
        Expect(
            "the stream past the limit reset REFUSED_STREAM/PROTOCOL_ERROR, the others not",
            refused_past_limit,
        ),
        applies=lambda o: (max_streams(o) or 1 << 20) <= 2000,
    ),
    # 5.3.1 / 5.5
    Case(
        "5.3.1",
        "HEADERS depending on its own stream: PROTOCOL_ERROR",
        lambda p: p.send(raw_frame(HEADERS, END_HEADERS | PRIO, 1, struct.pack(">IB", 1, 15) + HB)),
        stream_error(PE, 1),
    ),
    Case(
        "5.3.1",
        "PRIORITY depending on its own stream: PROTOCOL_ERROR",
        lambda p: p.send(raw_frame(PRIORITY, 0, 3, struct.pack(">IB", 3, 15))),
        stream_error(PE, 3),
    ),
    Case(
        "5.5",
        "an unknown frame inside a header block: PROTOCOL_ERROR",
        open_block_then(raw_frame(0xFA, 0, 0, b"x")),
        connection_error(PE),
    ),
    # 6.1 DATA
    Case(
        "6.1",
        "DATA on stream 0: PROTOCOL_ERROR",
        lambda p: p.send(raw_frame(DATA, 0, 0, b"abc")),
        connection_error(PE),
    ),
    Case(
        "6.1",
        "DATA padding longer than the payload: PROTOCOL_ERROR",
        lambda p: (open_stream(p, 1), p.send(raw_frame(DATA, PADDED, 1, b"\x05abc"))),
        connection_error(PE),
    ),
    # 6.2 HEADERS
    Case(
        "6.2",
        "HEADERS on stream 0: PROTOCOL_ERROR",
        lambda p: p.send(raw_frame(HEADERS, END_HEADERS, 0, HB)),
        connection_error(PE),
    ),
    Case(
        "6.2",
        "HEADERS padding longer than the payload: PROTOCOL_ERROR",
        lambda p: p.send(raw_frame(HEADERS, END_HEADERS | PADDED, 1, bytes([len(HB) + 5]) + HB)),
        connection_error(PE),
    ),
    # 6.3 PRIORITY
    Case(
        "6.3",
        "PRIORITY on stream 0: PROTOCOL_ERROR",
        lambda p: p.send(raw_frame(PRIORITY, 0, 0, struct.pack(">IB", 1, 15))),
        connection_error(PE),
    ),
    Case(
        "6.3",
        "PRIORITY of 4 bytes: FRAME_SIZE_ERROR",
        lambda p: p.send(raw_frame(PRIORITY, 0, 1, b"\x00\x00\x00\x03")),
        stream_error(FSE, 1),
    ),
    # 6.4 RST_STREAM
    Case(
        "6.4",
        "RST_STREAM on stream 0: PROTOCOL_ERROR",
        lambda p: p.send(raw_frame(RST, 0, 0, b"\x00\x00\x00\x08")),
        connection_error(PE),
    ),
    Case(
        "6.4",
        "RST_STREAM of 3 bytes: FRAME_SIZE_ERROR",
        lambda p: (open_stream(p, 1), p.send(raw_frame(RST, 0, 1, b"\x00\x00\x08"))),
        connection_error(FSE),
    ),
    # 6.5 SETTINGS
    Case(
        "6.5",
        "SETTINGS ack with a payload: FRAME_SIZE_ERROR",
        lambda p: p.send(raw_frame(SETTINGS, ACK, 0, b"\x00" * 6)),
        connection_error(FSE),
    ),
    Case(
        "6.5",
        "SETTINGS on a stream: PROTOCOL_ERROR",
        lambda p: p.send(raw_frame(SETTINGS, 0, 1, b"")),
        connection_error(PE),
    ),
    Case(
        "6.5",
        "SETTINGS of 5 bytes: FRAME_SIZE_ERROR",
        lambda p: p.send(raw_frame(SETTINGS, 0, 0, b"\x00" * 5)),
        connection_error(FSE),
    ),
    Case(
        "6.5.3",
        "SETTINGS is acknowledged",
        lambda p: (
            p.read_until(lambda o: o.settings_acks >= 1, 5),
            p.send(SettingsFrame(0, settings={0x4: 65535})),
        ),
        Expect("a second SETTINGS ack", lambda o: alive(o) and o.settings_acks >= 2),
    ),
    Case(
        "6.5.2",
        "SETTINGS_ENABLE_PUSH=2: PROTOCOL_ERROR",
        lambda p: p.send(settings_raw(0x2, 2)),
        connection_error(PE),
    ),
    Case(
        "6.5.2",
        "SETTINGS_INITIAL_WINDOW_SIZE=2^31: FLOW_CONTROL_ERROR",
        lambda p: p.send(settings_raw(0x4, 1 << 31)),
        connection_error(FCE),
    ),
    Case(
        "6.5.2",
        "SETTINGS_MAX_FRAME_SIZE=16383: PROTOCOL_ERROR",
        lambda p: p.send(settings_raw(0x5, 16383)),
        connection_error(PE),
    ),
    Case(
        "6.5.2",
        "SETTINGS_MAX_FRAME_SIZE=2^24: PROTOCOL_ERROR",
        lambda p: p.send(settings_raw(0x5, 1 << 24)),
        connection_error(PE),
    ),
    Case("6.5.2", "an unknown setting is ignored", lambda p: p.send(settings_raw(0xFF, 1)), ALIVE),
    # 6.6 / 8.4 PUSH_PROMISE
    Case(
        "8.4",
        "PUSH_PROMISE from a client: PROTOCOL_ERROR",
        lambda p: (open_stream(p, 1), p.send(raw_frame(PUSH, END_HEADERS, 1, struct.pack(">I", 2) + HB))),
        connection_error(PE),
    ),
    # 6.7 PING
    Case(
        "6.7",
        "PING is acked with the same payload",
        lambda p: p.send(PingFrame(0, b"\x01\x02\x03\x04\x05\x06\x07\x08")),
        Expect(
            "PING ack with the payload",
            lambda o: alive(o) and b"\x01\x02\x03\x04\x05\x06\x07\x08" in o.ping_acks,
        ),
    ),
    Case(
        "6.7",
        "a PING ack is not answered",
        lambda p: p.send(PingFrame(0, b"ackackac", flags=["ACK"])),
        Expect("only the sentinel acked", lambda o: alive(o) and b"ackackac" not in o.ping_acks),
    ),
    Case(
        "6.7",
        "PING on a stream: PROTOCOL_ERROR",
        lambda p: p.send(raw_frame(PING, 0, 1, b"12345678")),
        connection_error(PE),
    ),
    Case(
        "6.7",
        "PING of 7 bytes: FRAME_SIZE_ERROR",
        lambda p: p.send(raw_frame(PING, 0, 0, b"1234567")),
        connection_error(FSE),
    ),
    # 6.8 GOAWAY
    Case(
        "6.8",
        "GOAWAY on a stream: PROTOCOL_ERROR",
        lambda p: p.send(raw_frame(GOAWAY, 0, 1, b"\x00" * 8)),
        connection_error(PE),
    ),
    # 6.9 WINDOW_UPDATE
    Case(
        "6.9",
        "connection WINDOW_UPDATE of 0: PROTOCOL_ERROR",
        lambda p: p.send(raw_frame(WINUP, 0, 0, b"\x00" * 4)),
        connection_error(PE),
    ),
    Case(
        "6.9",
        "stream WINDOW_UPDATE of 0: PROTOCOL_ERROR",
        lambda p: (open_stream(p, 1), p.send(raw_frame(WINUP, 0, 1, b"\x00" * 4))),
        stream_error(PE, 1),
    ),
    Case(
        "6.9",
        "WINDOW_UPDATE of 3 bytes: FRAME_SIZE_ERROR",
        lambda p: p.send(raw_frame(WINUP, 0, 0, b"\x00\x00\x01")),
        connection_error(FSE),
    ),
    Case(
        "6.9.1",
        "connection window past 2^31-1: FLOW_CONTROL_ERROR",
        lambda p: p.send(WindowUpdateFrame(0, MAX_WINDOW)),
        connection_error(FCE),
    ),
    Case(
        "6.9.1", "stream window past 2^31-1: FLOW_CONTROL_ERROR", stream_window_overflow, stream_error(FCE, 1)
    ),
    Case(
        "6.9.2",
        "SETTINGS_INITIAL_WINDOW_SIZE pushing a window past 2^31-1: FLOW_CONTROL_ERROR",
        initial_window_overflow,
        connection_error(FCE),
    ),
    # 6.10 CONTINUATION
    Case(
        "6.10",
        "CONTINUATION after END_HEADERS: PROTOCOL_ERROR",
        lambda p: (open_stream(p, 1), p.send(raw_frame(CONT, END_HEADERS, 1, b""))),
        connection_error(PE),
    ),
    Case(
        "6.10",
        "CONTINUATION of another stream: PROTOCOL_ERROR",
        open_block_then(raw_frame(CONT, END_HEADERS, 3, b"")),
        connection_error(PE),
    ),
    Case(
        "6.10",
        "CONTINUATION on stream 0: PROTOCOL_ERROR",
        open_block_then(raw_frame(CONT, END_HEADERS, 0, b"")),
        connection_error(PE),
    ),
    # 8.1 message framing
    Case(
        "8.1",
        "a second HEADERS without END_STREAM: malformed",
        lambda p: (
            open_stream(p, 1),
            p.send(DataFrame(1, EMPTY_MESSAGE), p.headers_frame(1, [(b"x-trailer", b"1")])),
        ),
        stream_error(PE, 1),
    ),
    Case(
        "8.1.1",
        "content-length not matching the DATA: malformed",
        malformed(with_fields((b"content-length", b"10"))),
        stream_error(PE, 1),
    ),
    # 8.2 fields
    Case(
        "8.2",
        "an upper-case field name: malformed",
        malformed(with_fields((b"X-Upper", b"1"))),
        stream_error(PE, 1),
    ),
    Case(
        "8.2.1",
        "a field name with a space: malformed",
        malformed(with_fields((b"x bad", b"1"))),
        stream_error(PE, 1),
    ),
    Case(
        "8.2.1",
        "a field value with LF: malformed",
        malformed(with_fields((b"x-bad", b"a\nb"))),
        stream_error(PE, 1),
    ),
    Case(
        "8.2.1",
        "a field value with NUL: malformed",
        malformed(with_fields((b"x-bad", b"a\x00b"))),
        stream_error(PE, 1),
    ),
    Case(
        "8.2.1",
        "a field value with leading space: malformed",
        malformed(with_fields((b"x-bad", b" a"))),
        stream_error(PE, 1),
    ),
    Case(
        "8.2.2",
        "a connection-specific field: malformed",
        malformed(with_fields((b"connection", b"keep-alive"))),
        stream_error(PE, 1),
    ),
    Case(
        "8.2.2",
        "TE other than trailers: malformed",
        malformed([*without(b"te"), (b"te", b"gzip")]),
        stream_error(PE, 1),
    ),
    # 8.3 pseudo-header fields
    Case(
        "8.3",
        "an unknown pseudo-header: malformed",
        malformed(with_fields((b":foo", b"1"))),
        stream_error(PE, 1),
    ),
    Case(
        "8.3",
        "a response pseudo-header in a request: malformed",
        malformed(with_fields((b":status", b"200"))),
        stream_error(PE, 1),
    ),
    Case(
        "8.3",
        "a pseudo-header after a regular field: malformed",
        malformed([*without(b":authority"), (b":authority", b"127.0.0.1")]),
        stream_error(PE, 1),
    ),
    Case(
        "8.3.1",
        "a duplicate :path: malformed",
        malformed([*request_headers()[:3], (b":path", b"/x"), *request_headers()[3:]]),
        stream_error(PE, 1),
    ),
    Case("8.3.1", "no :method: malformed", malformed(without(b":method")), stream_error(PE, 1)),
    Case("8.3.1", "no :scheme: malformed", malformed(without(b":scheme")), stream_error(PE, 1)),
    Case("8.3.1", "no :path: malformed", malformed(without(b":path")), stream_error(PE, 1)),
    Case(
        "8.3.1",
        "an empty :path: malformed",
        malformed([(n, b"" if n == b":path" else v) for n, v in request_headers()]),
        stream_error(PE, 1),
    ),
    Case(
        "8.1",
        "a pseudo-header in trailers: malformed",
        lambda p: (
            open_stream(p, 1),
            p.send(
                DataFrame(1, EMPTY_MESSAGE),
                raw_frame(HEADERS, END_HEADERS | END_STREAM, 1, raw_block([(b":path", b"/x")])),
            ),
        ),
        stream_error(PE, 1),
    ),
    Case("8.1", "a whole call is answered", lambda p: request_whole(p, 1), answered(1)),
]
