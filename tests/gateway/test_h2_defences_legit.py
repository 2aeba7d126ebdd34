"""Legitimate clients the defences must leave alone (review of issue 12), and the attacks next to them
that must still be cut off.

Each test drives a server ``Link`` on a real event loop over a real socket pair with small kernel
buffers (so that output backs up within kilobytes), with raw frames written the way real gRPC clients
write them: grpc-java's WINDOW_UPDATEs during a download, grpc-go's BDP PINGs and its RST_STREAM
NO_ERROR after a call the server ended, clients that cancel some calls, and slow readers.
"""

from __future__ import annotations

import asyncio
import socket
import struct

import hpack
from test_h2_defences_link import Answer, frame, send, serve, until

from cuvis_cluster.gateway.h2frames import (
    CANCEL,
    DATA,
    ENHANCE_YOUR_CALM,
    FLAG_ACK,
    FLAG_END_HEADERS,
    FLAG_END_STREAM,
    GOAWAY,
    HEADERS,
    MAX_WINDOW,
    NO_ERROR,
    PING,
    PREFACE,
    RST_STREAM,
    S_INITIAL_WINDOW_SIZE,
    WINDOW_UPDATE,
    H2Limits,
    settings_frame,
)
from cuvis_cluster.gateway.h2link import Link

BIG_WINDOWS = settings_frame([(S_INITIAL_WINDOW_SIZE, MAX_WINDOW)]) + frame(
    WINDOW_UPDATE, 0, 0, struct.pack(">I", MAX_WINDOW - 65535)
)


def window_update(sid: int, n: int) -> bytes:
    return frame(WINDOW_UPDATE, 0, sid, struct.pack(">I", n))


def rst(sid: int, code: int) -> bytes:
    return frame(RST_STREAM, 0, sid, struct.pack(">I", code))


def call(sid: int, *, end_stream: bool) -> bytes:
    block = hpack.Encoder().encode([(":method", "POST"), (":path", "/a/b"), (":scheme", "http")])
    return frame(HEADERS, FLAG_END_HEADERS | (FLAG_END_STREAM if end_stream else 0), sid, block)


class Reader:
    """The client's side of the socket: splits what arrives into frames and acks PINGs (as any client
    does); ``data`` counts the DATA payload received, ``goaway`` holds a GOAWAY's error code."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""
        self.data = 0
        self.ended = False
        self.goaway: int | None = None
        self.closed = False
        self.pongs: list[bytes] = []

    async def read(self, size: int) -> int:
        """Read at most ``size`` bytes; the DATA payload bytes among them."""
        try:
            got = await asyncio.wait_for(asyncio.get_running_loop().sock_recv(self.sock, size), 10)
        except (OSError, TimeoutError):
            got = b""
        if not got:
            self.closed = True
            return 0
        self.buf += got
        before = self.data
        acks = b""
        while len(self.buf) >= 9:
            length = int.from_bytes(self.buf[:3], "big")
            if len(self.buf) < 9 + length:
                break
            ftype, flags = self.buf[3], self.buf[4]
            payload, self.buf = self.buf[9 : 9 + length], self.buf[9 + length :]
            if ftype == DATA:
                self.data += length
                self.ended = self.ended or bool(flags & FLAG_END_STREAM)
            elif ftype == GOAWAY:
                self.goaway = int.from_bytes(payload[4:8], "big")
            elif ftype == PING and flags & FLAG_ACK:
                self.pongs.append(payload)
            elif ftype == PING:
                acks += frame(PING, FLAG_ACK, 0, payload)
        if acks:
            await send(self.sock, acks)
        return self.data - before


class Calls:
    """Answers a call when its request has ended (headers, trailers); leaves an open one running."""

    def __init__(self) -> None:
        self.reset: list[int] = []

    def leg_started(self, leg, headers, ended) -> None:
        if ended:
            leg.send_headers([(b":status", b"200"), (b"content-type", b"application/grpc")])
            leg.send_trailers([(b"grpc-status", b"0")])

    def leg_end(self, leg) -> None:
        pass

    def leg_reset(self, leg, code) -> None:
        self.reset.append(leg.sid)

    def leg_lost(self, leg, exc) -> None:
        pass


class Bidi(Calls):
    """Ends every call at once, before the client has ended its side (a server-ended bidi call)."""

    def leg_started(self, leg, headers, ended) -> None:
        super().leg_started(leg, headers, True)


async def serve_calls(limits: H2Limits, handler: Calls) -> tuple[Link, socket.socket]:
    ours, theirs = socket.socketpair()
    theirs.setblocking(False)
    link = Link(client_side=False, on_request=lambda link, leg, headers: handler, limits=limits)
    await asyncio.get_running_loop().connect_accepted_socket(lambda: link, ours)
    return link, theirs


async def still_served(link: Link, reader: Reader) -> bool:
    """A PING is answered: the connection is up and was not sent a GOAWAY."""
    await send(reader.sock, frame(PING, 0, 0, b"liveness"))
    while b"liveness" not in reader.pongs and not reader.closed and reader.goaway is None:
        await reader.read(1 << 16)
    return not link.closed and reader.goaway is None and not reader.closed


# -- the control-frame budget ---------------------------------------------------------------------------
def test_a_download_with_window_updates_and_bdp_pings_is_not_cut_off():
    # grpc-java returns window as it reads; grpc-go adds a BDP PING to each round trip. Every 32 KiB
    # read here: connection and stream WINDOW_UPDATE plus a PING, 192 control frames for 2 MiB, far
    # past a budget of 50 per window: the DATA earns them back.
    size = 2 << 20

    async def main() -> None:
        link, client = await serve(H2Limits(max_control_frames_per_window=50, abuse_window=60), Answer(size))
        reader = Reader(client)
        await send(client, PREFACE + settings_frame([]) + call(1, end_stream=True))
        unreturned = 0
        while reader.data < size and not reader.closed and reader.goaway is None:
            unreturned += await reader.read(1 << 16)
            if unreturned >= 32 << 10:
                await send(
                    client,
                    window_update(0, unreturned)
                    + window_update(1, unreturned)
                    + frame(PING, 0, 0, b"bdp-ping"),
                )
                unreturned = 0
        assert reader.goaway is None, f"GOAWAY {reader.goaway} after {reader.data} of {size} bytes"
        assert reader.data == size
        assert await still_served(link, reader)
        client.close()

    asyncio.run(main())


def test_window_updates_and_pings_without_data_are_still_cut_off():
    async def main() -> None:
        link, client = await serve(H2Limits(max_control_frames_per_window=50, abuse_window=60), Answer(0))
        reader = Reader(client)
        await send(client, PREFACE + settings_frame([]) + call(1, end_stream=False))
        await send(
            client,
            (window_update(0, 1 << 19) + window_update(1, 1 << 19) + frame(PING, 0, 0, b"flooding")) * 40,
        )
        while reader.goaway is None and not reader.closed:
            await reader.read(1 << 16)
        assert reader.goaway == ENHANCE_YOUR_CALM
        assert await until(lambda: link.closed)
        client.close()

    asyncio.run(main())


# -- the reset budget -------------------------------------------------------------------------------------
def test_a_reset_after_the_server_ended_the_call_is_not_rapid_reset():
    # grpc-go sends RST_STREAM NO_ERROR when the server ends a bidi call before the client has: 60
    # such calls, three times the reset budget.
    async def main() -> None:
        handler = Bidi()
        link, client = await serve_calls(H2Limits(max_resets_per_window=20, abuse_window=60), handler)
        reader = Reader(client)
        await send(client, PREFACE + settings_frame([]))
        for sid in range(1, 121, 2):
            await send(client, call(sid, end_stream=False) + rst(sid, NO_ERROR))
        assert await still_served(link, reader)
        client.close()

    asyncio.run(main())


def test_a_client_that_cancels_some_of_its_calls_keeps_its_connection():
    # 40 calls cancelled before they were answered (twice the reset budget), between 40 that completed.
    async def main() -> None:
        handler = Calls()
        link, client = await serve_calls(H2Limits(max_resets_per_window=20, abuse_window=60), handler)
        reader = Reader(client)
        await send(client, PREFACE + settings_frame([]))
        for sid in range(1, 161, 4):
            await send(
                client, call(sid, end_stream=True) + call(sid + 2, end_stream=False) + rst(sid + 2, CANCEL)
            )
        assert await still_served(link, reader)
        assert len(handler.reset) == 40
        client.close()

    asyncio.run(main())


def test_rapid_reset_is_still_cut_off():
    # CVE-2023-44487: every stream reset right after its HEADERS, none ever answered.
    async def main() -> None:
        link, client = await serve_calls(H2Limits(max_resets_per_window=20, abuse_window=60), Calls())
        reader = Reader(client)
        await send(client, PREFACE + settings_frame([]))
        await send(
            client, b"".join(call(sid, end_stream=False) + rst(sid, CANCEL) for sid in range(1, 81, 2))
        )
        while reader.goaway is None and not reader.closed:
            await reader.read(1 << 16)
        assert reader.goaway == ENHANCE_YOUR_CALM
        assert await until(lambda: link.closed)
        client.close()

    asyncio.run(main())


# -- output that drains slowly ------------------------------------------------------------------------------
def test_a_slow_download_with_many_pings_is_not_cut_off():
    # About 1000 PING acks (17 KiB) queued over the whole download, while the output is never empty:
    # the control queue is what the client has not read, not all it was ever sent.
    size = 1 << 20

    async def main() -> None:
        limits = H2Limits(max_control_queue=4096, max_control_frames_per_window=10**9)
        link, client = await serve(limits, Answer(size))
        reader = Reader(client)
        await send(client, PREFACE + BIG_WINDOWS + call(1, end_stream=True))
        while reader.data < size and not reader.closed and reader.goaway is None:
            await reader.read(1024)
            await send(client, frame(PING, 0, 0, b"rtt-ping"))
        assert reader.goaway is None, f"GOAWAY {reader.goaway} after {reader.data} of {size} bytes"
        assert reader.data == size
        assert await still_served(link, reader)
        client.close()

    asyncio.run(main())


def test_a_slow_reader_whose_output_is_refilled_as_it_reads_is_not_cut_off():
    # The client reads 1 KiB every 10 ms and returns twice the window it read, so the gateway
    # refills its buffer as fast as it drains: the buffer never shrinks, yet bytes leave all the time.
    async def main() -> None:
        link, client = await serve(H2Limits(slow_reader_timeout=0.3), Answer(1 << 20))
        reader = Reader(client)
        await send(client, PREFACE + settings_frame([]) + call(1, end_stream=True))
        loop = asyncio.get_running_loop()
        until_time = loop.time() + 1.5  # five timeouts
        while loop.time() < until_time and not reader.closed:
            if await reader.read(1024):
                await send(client, window_update(0, 2048) + window_update(1, 2048))
            await asyncio.sleep(0.01)
        assert not reader.closed and not link.closed, link.lost_reason
        client.close()

    asyncio.run(main())


def test_a_keepalive_ping_queued_behind_a_download_does_not_cut_off_the_reader():
    # The client sends nothing while it reads a 1 MiB answer slowly (its windows are large); a
    # keepalive PING would wait behind the DATA for longer than the keepalive timeout.
    size = 1 << 20

    async def main() -> None:
        link, client = await serve(H2Limits(keepalive=0.2, keepalive_timeout=0.3), Answer(size))
        reader = Reader(client)
        await send(client, PREFACE + BIG_WINDOWS + call(1, end_stream=True))
        while reader.data < size and not reader.closed:
            await reader.read(8192)
            await asyncio.sleep(0.01)
        assert reader.data == size, link.lost_reason
        assert await still_served(link, reader)
        client.close()

    asyncio.run(main())
