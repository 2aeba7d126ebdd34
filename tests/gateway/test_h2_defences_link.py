"""Defences that need a client which stops reading, or a drain: a server ``Link`` on a real event loop
and a real socket pair with small kernel buffers (so that output backs up within kilobytes), driven
with raw frames from the other end."""

from __future__ import annotations

import asyncio
import socket
import struct

import hpack

from cuvis_cluster.gateway.h2frames import (
    FLAG_ACK,
    FLAG_END_HEADERS,
    FLAG_END_STREAM,
    GOAWAY,
    HEADERS,
    MAX_WINDOW,
    PING,
    PREFACE,
    H2Limits,
    frame_header,
    settings_frame,
)
from cuvis_cluster.gateway.h2guard import DRAIN_PING
from cuvis_cluster.gateway.h2link import Link

SMALL = 4096


def frame(ftype: int, flags: int, sid: int, payload: bytes = b"") -> bytes:
    return frame_header(len(payload), ftype, flags, sid) + payload


def request(sid: int) -> bytes:
    block = hpack.Encoder().encode([(":method", "POST"), (":path", "/a/b"), (":scheme", "http")])
    return frame(HEADERS, FLAG_END_HEADERS | FLAG_END_STREAM, sid, block)


class Answer:
    """Answers every request with ``size`` bytes of DATA."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.started: list[int] = []

    def leg_started(self, leg, headers, ended) -> None:
        self.started.append(leg.sid)
        leg.send_headers([(b":status", b"200")])
        leg.send_data(memoryview(bytes(self.size)))

    def leg_reset(self, leg, code) -> None:
        pass

    def leg_lost(self, leg, exc) -> None:
        pass


async def serve(limits: H2Limits, handler: Answer) -> tuple[Link, socket.socket]:
    ours, theirs = socket.socketpair()
    for sock in (ours, theirs):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL)
    theirs.setblocking(False)
    link = Link(client_side=False, on_request=lambda link, leg, headers: handler, limits=limits)
    await asyncio.get_running_loop().connect_accepted_socket(lambda: link, ours)
    return link, theirs


async def until(condition, timeout: float = 10.0) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition() and loop.time() < deadline:
        await asyncio.sleep(0.02)
    return condition()


async def send(sock: socket.socket, data: bytes) -> None:
    try:
        await asyncio.get_running_loop().sock_sendall(sock, data)
    except OSError:
        pass  # the gateway side closed: what the test waits for


def test_a_client_that_reads_nothing_is_disconnected():
    async def main() -> None:
        link, client = await serve(H2Limits(slow_reader_timeout=0.5), Answer(1 << 20))
        await send(client, PREFACE + settings_frame([]) + request(1))
        assert await until(lambda: link.closed)
        assert "read nothing" in str(link.lost_reason)
        client.close()

    asyncio.run(main())


def test_a_client_that_reads_keeps_its_connection():
    async def main() -> None:
        link, client = await serve(H2Limits(slow_reader_timeout=0.5), Answer(60000))
        await send(client, PREFACE + settings_frame([]) + request(1))
        loop = asyncio.get_running_loop()
        got = 0
        while got < 60000:  # reads slowly, a little at a time, for longer than the timeout
            got += len(await loop.sock_recv(client, 2048))
            await asyncio.sleep(0.01)
        assert not link.closed
        client.close()

    asyncio.run(main())


def test_control_frames_queued_for_a_client_that_does_not_read_are_capped():
    async def main() -> None:
        limits = H2Limits(max_control_queue=SMALL, max_control_frames_per_window=10**9)
        link, client = await serve(limits, Answer(0))
        await send(client, PREFACE + settings_frame([]))
        ping = frame(PING, 0, 0, b"12345678")
        for _ in range(200):  # up to 200 * 1000 PINGs, never reading an ack
            if link.closed:
                break
            await send(client, ping * 1000)
        assert await until(lambda: link.closed)
        # Closed for real (aborted after a short linger), although the client never reads a byte.
        assert await until(lambda: link.transport is None or link.transport.is_closing())
        assert await until(lambda: link.transport is None or link.transport.get_write_buffer_size() == 0)
        client.close()

    asyncio.run(main())


def test_drain_is_a_two_phase_goaway():
    async def main() -> None:
        handler = Answer(0)
        link, client = await serve(H2Limits(), handler)
        loop = asyncio.get_running_loop()
        await send(client, PREFACE + settings_frame([]) + request(1))
        assert await until(lambda: handler.started == [1])
        acked = link.goaway_soon()
        frames = b""
        while DRAIN_PING not in frames:
            frames += await loop.sock_recv(client, 1 << 16)
        first = frames.index(frame_header(8, GOAWAY, 0, 0))
        assert struct.unpack_from(">I", frames, first + 9)[0] == MAX_WINDOW  # every stream still welcome
        # A stream the client opened before it saw the GOAWAY is served; then the PING comes back.
        await send(client, request(3) + frame(PING, FLAG_ACK, 0, DRAIN_PING))
        await asyncio.wait_for(acked, 10)
        assert handler.started == [1, 3]
        link.goaway()
        frames = b""
        marker = frame_header(8, GOAWAY, 0, 0)
        while marker not in frames or len(frames) < frames.index(marker) + 17:
            frames += await loop.sock_recv(client, 1 << 16)
        assert struct.unpack_from(">I", frames, frames.index(marker) + 9)[0] == 3
        client.close()

    asyncio.run(main())
