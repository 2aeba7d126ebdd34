"""The gateway's HTTP/2 engine against the ``h2`` library as the peer (in memory, no sockets)."""

from __future__ import annotations

import asyncio

import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cuvis_cluster.common.settings import GatewaySettings
from cuvis_cluster.gateway.h2frames import CANCEL, H2Limits, frame_header
from cuvis_cluster.gateway.h2link import Link
from cuvis_cluster.gateway.main import http2_limits


class Transport:
    def __init__(self) -> None:
        self.out: list[bytes] = []
        self.closed = False

    def write(self, data) -> None:
        self.out.append(bytes(data))

    def writelines(self, items) -> None:
        for item in items:
            self.write(item)

    def take(self) -> bytes:
        data, self.out = b"".join(self.out), []
        return data

    def get_extra_info(self, name, default=None):
        return default

    def set_write_buffer_limits(self, high=None, low=None) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0  # everything "written" is taken at once

    def can_write_eof(self) -> bool:
        return False

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True


class Echo:
    """Server-side handler: answers each request with its body, reversed in order of arrival."""

    def __init__(self) -> None:
        self.bodies: dict[int, bytearray] = {}
        self.resets: list[tuple[int, int]] = []

    def leg_started(self, leg, headers, ended) -> None:
        self.bodies[leg.sid] = bytearray()
        self.headers = headers
        if ended:
            self.leg_end(leg)

    def leg_data(self, leg, mv) -> None:
        self.bodies[leg.sid] += mv
        leg.link.credit(leg.sid, len(mv))

    def leg_end(self, leg) -> None:
        leg.send_headers([(b":status", b"200"), (b"x-echo", b"1")])
        leg.send_data(memoryview(bytes(self.bodies[leg.sid])))
        leg.send_trailers([(b"grpc-status", b"0")])

    def leg_headers(self, leg, headers, end, trailers) -> None:
        pass

    def leg_reset(self, leg, code) -> None:
        self.resets.append((leg.sid, code))

    def leg_lost(self, leg, exc) -> None:
        pass


def pair(handler):
    """(h2 client connection, our server Link, its transport, pump) — pump moves bytes both ways."""
    link = Link(client_side=False, on_request=lambda link, leg, headers: handler)
    transport = Transport()
    link.connection_made(transport)
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    client.initiate_connection()
    client.update_settings({h2.settings.SettingCodes.MAX_FRAME_SIZE: 1 << 20})
    events: list = []

    def pump(chunk: int = 1 << 30) -> None:
        for _ in range(200):
            moved = False
            data = client.data_to_send()
            view = memoryview(data)
            while view:  # arbitrary read boundaries on our side, as a socket would give them
                buf = link.get_buffer(chunk)
                n = min(len(buf), chunk, len(view))
                buf[:n] = view[:n]
                link.buffer_updated(n)
                view = view[n:]
                moved = True
            link._write_out()
            back = transport.take()
            if back:
                for ev in client.receive_data(back):
                    events.append(ev)
                    if isinstance(ev, h2.events.DataReceived):
                        client.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                moved = True
            if not moved:
                return

    return client, link, transport, pump, events


def request(client, body: bytes, *, pad: int | None = None, big_header: bytes = b"") -> int:
    sid = client.get_next_available_stream_id()
    headers = [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/x.Y/Z"), (b":authority", b"h")]
    if big_header:
        headers.append((b"x-big", big_header))
    client.send_headers(sid, headers)
    view = memoryview(body)
    while view:
        n = min(len(view), client.local_flow_control_window(sid), client.max_outbound_frame_size - 256)
        if n <= 0:
            break
        client.send_data(sid, view[:n].tobytes(), pad_length=pad)
        view = view[n:]
    if not view:
        client.end_stream(sid)
    return sid


@pytest.fixture(autouse=True)
def loop():
    new = asyncio.new_event_loop()
    asyncio.set_event_loop(new)
    yield new
    new.close()


def responses(events) -> dict[int, bytes]:
    out: dict[int, bytearray] = {}
    for ev in events:
        if isinstance(ev, h2.events.DataReceived):
            out.setdefault(ev.stream_id, bytearray()).extend(ev.data)
    return {k: bytes(v) for k, v in out.items()}


@settings(max_examples=40, deadline=None)
@given(
    bodies=st.lists(st.binary(max_size=5000), min_size=1, max_size=4),
    pad=st.one_of(st.none(), st.integers(0, 255)),
    chunk=st.integers(1, 70000),
)
def test_echo_with_padding_and_arbitrary_reads(bodies, pad, chunk):
    handler = Echo()
    client, _link, _transport, pump, events = pair(handler)
    sids = [request(client, body, pad=pad) for body in bodies]
    pump(chunk)
    got = responses(events)
    for sid, body in zip(sids, bodies, strict=True):
        assert got.get(sid, b"") == body
    ended = {ev.stream_id for ev in events if isinstance(ev, h2.events.StreamEnded)}
    assert ended == set(sids)


def test_large_body_flow_control_and_continuation():
    handler = Echo()
    client, link, _transport, pump, events = pair(handler)
    body = bytes(range(256)) * (40 << 10)  # 10 MiB: more than the initial windows of both sides
    big = b"v" * 40000  # header block larger than h2's 16 KiB frames: HEADERS + CONTINUATION
    sid = client.get_next_available_stream_id()
    client.send_headers(
        sid,
        [
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":path", b"/x.Y/Z"),
            (b":authority", b"h"),
            (b"x-big", big),
        ],
    )
    sent = 0
    for _ in range(10_000):
        pump()
        if sent == len(body):
            break
        n = min(len(body) - sent, client.local_flow_control_window(sid), client.max_outbound_frame_size)
        if n:
            client.send_data(sid, body[sent : sent + n], end_stream=sent + n == len(body))
            sent += n
    pump()
    assert (b"x-big", big) in handler.headers
    assert responses(events)[sid] == body
    assert not link.legs  # both sides finished: nothing left behind


def test_reset_and_ping_and_goaway():
    handler = Echo()
    client, link, _transport, pump, events = pair(handler)
    sid = client.get_next_available_stream_id()
    client.send_headers(
        sid, [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/a/b"), (b":authority", b"h")]
    )
    pump()
    client.reset_stream(sid, CANCEL)
    client.ping(b"12345678")
    pump()
    assert handler.resets == [(sid, CANCEL)]
    assert any(isinstance(ev, h2.events.PingAckReceived) and ev.ping_data == b"12345678" for ev in events)
    link.goaway()
    pump()
    assert any(isinstance(ev, h2.events.ConnectionTerminated) for ev in events)


def test_the_limits_are_advertised_and_enforced():
    limits = H2Limits(
        stream_window=1 << 20, max_concurrent_streams=7, max_frame=1 << 15, max_header_list=8192
    )
    link = Link(client_side=False, on_request=lambda link, leg, headers: Echo(), limits=limits)
    transport = Transport()
    link.connection_made(transport)
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    client.initiate_connection()
    client.receive_data(transport.take())
    remote = client.remote_settings
    assert remote.initial_window_size == 1 << 20
    assert remote.max_concurrent_streams == 7
    assert remote.max_frame_size == 1 << 15
    assert remote.max_header_list_size == 8192
    # A frame larger than what we advertised is a connection error (GOAWAY FRAME_SIZE_ERROR).
    data = client.data_to_send() + frame_header((1 << 15) + 1, 0, 0, 1)
    buf = link.get_buffer(len(data))
    buf[: len(data)] = data
    link.buffer_updated(len(data))
    link._write_out()
    events = client.receive_data(transport.take())
    assert any(isinstance(ev, h2.events.ConnectionTerminated) and ev.error_code == 6 for ev in events)


def test_the_gateway_settings_fill_every_limit():
    assert http2_limits(GatewaySettings()) == H2Limits(), "settings defaults differ from the engine's"
    fields = [f for f in GatewaySettings.model_fields if f.startswith("http2_")]
    assert len(fields) == len(H2Limits.__dataclass_fields__)
    custom = {f: GatewaySettings.model_fields[f].default + 1 for f in fields}
    custom["http2_max_frame_bytes"] -= 2  # the default is the protocol's maximum
    limits = http2_limits(GatewaySettings(**custom))
    values = sorted(getattr(limits, name) for name in H2Limits.__dataclass_fields__)
    assert values == sorted(custom.values())
