"""Hostile HTTP/2 clients against a real gateway: each is cut off, memory stays bounded, others see nothing.

One gateway (with a stand-in worker and Redis) runs with small limits so that every defence trips in
well under a second of attack. For each attack (tests/gateway/h2attacks.py):

* the attacker is cut off: GOAWAY with the code the defence should give (ENHANCE_YOUR_CALM for floods),
  then the connection closed; the compression bomb's call is refused instead;
* the gateway's resident memory never grows by more than ``MEMORY_BOUND_KIB`` during the attack,
  sampled every 10 ms from /proc/<pid>/status;
* a canary (a grpc-python channel on its own connection, health checks every 20 ms with a 5 s deadline)
  sees 0 errors from before the attack starts until after it ends.

Each attack is bounded by a frame count and a few seconds, whatever the gateway does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import h2attacks
import pytest
from h2attacks import AttackResult, Canary
from h2peer import CODES, MemoryWatch, name_of
from helpers import procs
from helpers.gateways import standin_gateways

pytestmark = pytest.mark.integration

MIB = 1 << 20
MAX_STREAMS = 16
MAX_RESETS = 100
MAX_CONTROL = 500
HEADER_BLOCK = 64 * 1024
CONTROL_QUEUE = 64 * 1024
HEADER_TIMEOUT = 2.0
MAX_MESSAGE = 4 * MIB
READ_BUFFER = 1 * MIB
POOLED = 4
SETTINGS = [
    "--http2-max-concurrent-streams", str(MAX_STREAMS),
    "--http2-abuse-window-seconds", "10",
    "--http2-max-resets-per-window", str(MAX_RESETS),
    "--http2-max-control-frames-per-window", str(MAX_CONTROL),
    "--http2-max-header-block-bytes", str(HEADER_BLOCK),
    "--http2-header-timeout-seconds", str(HEADER_TIMEOUT),
    "--http2-max-control-queue-bytes", str(CONTROL_QUEUE),
    "--http2-read-buffer-bytes", str(READ_BUFFER),
    "--http2-pooled-buffers", str(POOLED),
    "--max-message-bytes", str(MAX_MESSAGE),
]  # fmt: skip
# What an attacker may make the gateway hold: its receive buffers (pooled ones included), one message
# (the largest a call may carry, also the bound on an inflated one), one header block and the control
# frames queued for it; plus 16 MiB for the interpreter's own churn (allocator arenas, frames of objects
# made and freed while it handles tens of thousands of frames). The engine before issue 12 grew 38 MB on a
# CONTINUATION flood; a bounded one stays under this whatever the attack's length.
MEMORY_BOUND_KIB = (POOLED * READ_BUFFER + MAX_MESSAGE + HEADER_BLOCK + CONTROL_QUEUE + 16 * MIB) // 1024
CALM, PROTOCOL, FRAME_SIZE = CODES["ENHANCE_YOUR_CALM"], CODES["PROTOCOL_ERROR"], CODES["FRAME_SIZE_ERROR"]
UNIMPLEMENTED, RESOURCE_EXHAUSTED = 12, 8


@pytest.fixture(scope="module")
def gateway(tmp_path_factory) -> Iterator[procs.ServerProcess]:
    with standin_gateways(tmp_path_factory.mktemp("h2hostile"), {"gateway": SETTINGS}) as started:
        yield started["gateway"]


@pytest.fixture(scope="module")
def lax_gateway(tmp_path_factory) -> Iterator[procs.ServerProcess]:
    """A gateway whose control-frame budget is out of reach: only the control queue can stop a flood."""
    budget = ["--http2-max-control-frames-per-window", "100000000"]
    with standin_gateways(tmp_path_factory.mktemp("h2lax"), {"gateway": [*SETTINGS, *budget]}) as started:
        yield started["gateway"]


@pytest.fixture(scope="module")
def bomb() -> bytes:
    return h2attacks.gzip_bomb()


def attacked(gateway: procs.ServerProcess, attack: Callable[[str], AttackResult]) -> AttackResult:
    """Run ``attack`` with the canary and the memory watch on; check the three things every attack shares.

    The canary is running (a few calls made) before the attack starts and must make a few more after
    it ends: an attack a defence stops in milliseconds is still judged by what the bystander saw.
    """
    with Canary(gateway.address) as canary, MemoryWatch([gateway.pid]) as memory:
        procs.wait_for(lambda: len(canary.latencies) + len(canary.errors) >= 5, timeout=30, what="canary")
        before = len(canary.latencies) + len(canary.errors)
        result = attack(gateway.address)
        after = len(canary.latencies) + len(canary.errors)
        procs.wait_for(
            lambda: len(canary.latencies) + len(canary.errors) >= after + 5, timeout=30, what="canary after"
        )
    growth = memory.peak_growth_kib
    report = (
        f"{result.name}: {result.how} after {result.frames_sent} frames written ({result.handled} handled) "
        f"in {result.seconds:.2f}s; "
        f"{result.note}; memory +{growth} KiB (bound {MEMORY_BOUND_KIB}); canary {len(canary.latencies)} "
        f"calls ({after - before} during the attack), {len(canary.errors)} errors {canary.errors[:3]}"
        f"\n  came back: {result.detail}"
    )
    assert gateway.alive(), f"the gateway died during the attack\n{report}\n{gateway.log()[-3000:]}"
    assert canary.errors == [], f"the canary saw errors\n{report}"
    assert growth <= MEMORY_BOUND_KIB, f"memory grew too much\n{report}"
    result.detail = report
    return result


def assert_cut_off(result: AttackResult, *codes: int) -> None:
    """GOAWAY with one of ``codes``, then the connection closed.

    A server that closes while the attacker's frames are still arriving makes the kernel answer with a
    TCP reset, which discards the GOAWAY from the attacker's receive queue unless the server lingers
    (half-closes and drains for a moment, as nginx does). The GOAWAY is what tells a legitimate but
    misbehaving client why; it is required here.
    """
    assert result.goaway in codes and result.closed, (
        f"expected GOAWAY {' or '.join(map(name_of, codes))} then close, got {result.how}\n{result.detail}"
    )


def test_rapid_reset(gateway: procs.ServerProcess) -> None:
    """CVE-2023-44487: up to 20k HEADERS + RST_STREAM; more than the reset budget is abuse."""
    result = attacked(gateway, lambda a: h2attacks.rapid_reset(a, streams=20000, seconds=5.0))
    assert_cut_off(result, CALM)
    # Streams the gateway took in before its GOAWAY (its last stream id): the reset budget, not 20k.
    assert result.handled is not None and result.handled <= MAX_RESETS + MAX_STREAMS, result.detail


def test_stream_flood(gateway: procs.ServerProcess) -> None:
    """3000 streams opened at once on one connection, MAX_CONCURRENT_STREAMS advertised as 16."""
    result = attacked(gateway, lambda a: h2attacks.stream_flood(a, streams=3000, seconds=5.0))
    assert result.extra["limit"] == MAX_STREAMS, result.detail
    accepted = result.extra["accepted"]
    assert accepted is not None and accepted <= MAX_STREAMS, (
        f"more streams than the limit ran\n{result.detail}"
    )
    # Refused streams count as resets (--http2-max-resets-per-window): a client that keeps going is abusive.
    assert_cut_off(result, CALM)


def test_continuation_flood(gateway: procs.ServerProcess) -> None:
    """CVE-2024-27316 style: a header block carried on endless empty CONTINUATION frames."""
    result = attacked(gateway, lambda a: h2attacks.continuation_flood(a, frames=2_000_000, seconds=5.0))
    assert_cut_off(result, CALM)


def test_settings_flood(gateway: procs.ServerProcess) -> None:
    result = attacked(gateway, lambda a: h2attacks.settings_flood(a, frames=200_000, seconds=5.0))
    assert_cut_off(result, CALM)
    # What the gateway answered, not what the attacker wrote (loopback buffers hold megabytes).
    assert result.handled is not None and result.handled <= MAX_CONTROL, (
        f"more frames acked than --http2-max-control-frames-per-window\n{result.detail}"
    )


def test_ping_flood(gateway: procs.ServerProcess) -> None:
    result = attacked(gateway, lambda a: h2attacks.ping_flood(a, frames=200_000, seconds=5.0))
    assert_cut_off(result, CALM)
    # What the gateway answered, not what the attacker wrote (loopback buffers hold megabytes).
    assert result.handled is not None and result.handled <= MAX_CONTROL, (
        f"more frames acked than --http2-max-control-frames-per-window\n{result.detail}"
    )


def test_unread_acks(lax_gateway: procs.ServerProcess) -> None:
    """A PING flood whose acks are never read: --http2-max-control-queue-bytes (64 KiB) ends it.

    The attacker's receive buffer is 4 KiB, so the acks back up in the gateway; past the cap the
    gateway disconnects (it cannot be told why: the client reads nothing). Without the cap, the
    gateway would queue 17 bytes per PING, 6.8 MB for this flood, and grow with it.
    """
    result = attacked(lax_gateway, lambda a: h2attacks.unread_ping_flood(a, frames=400_000, seconds=8.0))
    assert result.closed, f"the connection was kept open\n{result.detail}"
    assert result.goaway in (None, CALM), f"GOAWAY {name_of(result.goaway)}\n{result.detail}"


def test_oversized_frame(gateway: procs.ServerProcess) -> None:
    """A 2^24-1 byte frame: the default SETTINGS_MAX_FRAME_SIZE must be sane, and the frame refused."""
    result = attacked(gateway, lambda a: h2attacks.oversized_frame(a, seconds=5.0))
    assert (
        result.extra["advertised"] is not None and result.extra["advertised"] < h2attacks.MAX_FRAME_FIELD
    ), f"the gateway advertises SETTINGS_MAX_FRAME_SIZE {result.extra['advertised']}\n{result.detail}"
    assert_cut_off(result, FRAME_SIZE)


def test_compression_bomb(gateway: procs.ServerProcess, bomb: bytes) -> None:
    """1 MB of gzip that inflates to 1 GiB, as a compressed gRPC message: refused, never inflated whole."""
    assert len(bomb) < 2 * MIB
    result = attacked(gateway, lambda a: h2attacks.compression_bomb(a, bomb, seconds=15.0))
    status, reset = result.extra["grpc_status"], result.extra["reset"]
    assert status in (UNIMPLEMENTED, RESOURCE_EXHAUSTED) or reset is not None, (
        f"the bomb's call was not refused (UNIMPLEMENTED or RESOURCE_EXHAUSTED)\n{result.detail}"
    )


def test_unfinished_header_block(gateway: procs.ServerProcess) -> None:
    """A header block started and never finished is dropped after --http2-header-timeout-seconds."""
    result = attacked(gateway, lambda a: h2attacks.header_timeout(a, wait=HEADER_TIMEOUT + 8))
    assert result.cut_off, f"the connection was kept open\n{result.detail}"


def test_stream_id_reuse(gateway: procs.ServerProcess) -> None:
    """A new HEADERS on a stream id already used and closed: the connection ends.

    RFC 9113 5.1.1 makes a stream id not above every earlier one a PROTOCOL_ERROR (nginx's answer); 5.1
    lets a frame on a closed stream be a connection error STREAM_CLOSED (h2spec accepts it). Either way
    the client is told and cut off; silently ignoring it (the engine before issue 12) is the failure.
    """
    result = attacked(gateway, h2attacks.stream_id_reuse)
    assert_cut_off(result, PROTOCOL, CODES["STREAM_CLOSED"])


def test_responses_advertise_only_the_encoding_the_gateway_accepts(gateway: procs.ServerProcess) -> None:
    """The gateway refuses compressed requests, so it must not pass on a worker's offer of gzip: a client
    that follows ``grpc-accept-encoding`` would compress its next call and be refused."""
    from h2peer import Peer, request_headers

    create = b"/cuvis_ai.v1.CuvisAIService/CreateSession"
    with Peer(gateway.address) as peer:
        peer.handshake()
        peer.request(1, headers=request_headers(create, [(b"grpc-accept-encoding", b"identity, gzip")]))
        # A call routed by its session id: the gateway reads its message, so it sees the compression.
        close = b"/cuvis_ai.v1.CuvisAIService/CloseSession"
        gzipped = request_headers(close, [(b"grpc-encoding", b"gzip")])
        peer.request(3, headers=gzipped, body=b"\x01\x00\x00\x00\x00")
        outcome = peer.read_until(lambda o: {1, 3} <= o.ended, 30.0)
    assert outcome.grpc_status(1) == 0, outcome.summary()  # the worker answered: a session was created
    assert outcome.grpc_status(3) == 12, outcome.summary()  # UNIMPLEMENTED, naming the encoding
    for stream in (1, 3):
        offered = [v for block in outcome.headers[stream] for k, v in block if k == b"grpc-accept-encoding"]
        assert offered == [b"identity"], (stream, offered)
