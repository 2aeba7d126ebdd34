"""RFC 9113 conformance of the gateway's HTTP/2 front door, one case per server-side MUST.

No independent conformance suite can run here: h2spec is a Go binary fetched from GitHub, and PyPI,
npm and Debian have no package of it or of an equivalent (npm ``h2spec``: 404; PyPI ``h2spec``: none;
apt: no ``h2spec``; nghttp2's h2load is a load generator, not a conformance suite). So this is the
table h2spec would run, written from the RFC (tests/gateway/h2table.py, built from h2cases.py): each
case sends raw frames built with ``hyperframe``/``hpack`` on a fresh TCP connection to a real
``cuvis-gateway`` and checks what the RFC says a server must answer. ``bench/h2_attacks.py
--conformance`` runs the same table against nginx.

The gateway runs with the smallest SETTINGS_MAX_FRAME_SIZE and a small MAX_CONCURRENT_STREAMS so that
the limits can be crossed cheaply. Calls go to the gateway's own grpc.health.v1 service, so no worker
is needed.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from conftest import start_gateway
from h2cases import Case, run_case
from h2peer import Peer
from h2table import CASES
from helpers import procs

pytestmark = pytest.mark.integration

MAX_FRAME = 16384  # --http2-max-frame-bytes: the smallest value the RFC allows
MAX_STREAMS = 8  # --http2-max-concurrent-streams


def listening(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=1).close()
    except OSError:
        return False
    return True


@pytest.fixture(scope="module")
def gateway(tmp_path_factory) -> Iterator[procs.ServerProcess]:
    """A gateway with no workers: its health service (served by itself) answers every call here."""
    workdir = tmp_path_factory.mktemp("h2conf")
    redis = procs.start_redis(workdir)
    gw = None
    try:
        # Without workers the gateway reports NOT_SERVING, so wait for its port, not for SERVING.
        gw = start_gateway(
            workdir,
            f"redis://{redis.address}/0",
            "gateway",
            "--http2-max-frame-bytes",
            str(MAX_FRAME),
            "--http2-max-concurrent-streams",
            str(MAX_STREAMS),
            wait=False,
        )
        procs.wait_for(lambda: listening(gw.address) or not gw.alive(), timeout=60, what="gateway port")
        assert gw.alive(), gw.log()
        yield gw
    finally:
        if gw is not None:
            gw.stop()
        redis.stop()


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_rfc9113(gateway: procs.ServerProcess, case: Case) -> None:
    verdict = run_case(gateway.address, case)
    assert verdict.applicable, f"the gateway's settings do not let this case run: {verdict.outcome.summary()}"
    if not verdict.passed:
        pytest.fail(verdict.explain(), pytrace=False)
    assert gateway.alive(), f"the gateway died:\n{gateway.log()[-3000:]}"


def test_advertised_limits(gateway: procs.ServerProcess) -> None:
    """The flags reach the wire: SETTINGS_MAX_FRAME_SIZE and SETTINGS_MAX_CONCURRENT_STREAMS."""
    with Peer(gateway.address) as peer:
        settings = peer.handshake().settings
    assert settings.get(0x5, 16384) == MAX_FRAME and settings.get(0x3) == MAX_STREAMS, settings
