"""Property-based fuzz of every request of ``cuvis_ai.v1.CuvisAIService``, sent through the gateway to a
real worker.

For every method the service descriptor lists (a new RPC is fuzzed without a change here), Hypothesis
builds requests field by field (:mod:`rpc_strategies`) and each one must:

* end with a status other than INTERNAL and UNKNOWN (bad input is the client's fault, and says so);
* leave redis-server, the worker and the gateway running;
* write nothing outside the output root (checked after each method against a snapshot of the other
  roots, the directory the traversal strings aim at, and the servers' working directory).

A second property sends raw request bodies a normal client cannot produce: random bytes, and each string
field filled with invalid UTF-8.

Bounded for CI: ``CUVIS_FUZZ_EXAMPLES`` examples per method (default 25), derandomized so that every run
tries the same requests; set ``CUVIS_FUZZ_EXAMPLES=500`` (and ``CUVIS_FUZZ_RANDOM=1`` for fresh seeds) to
run longer. Train streams get a short deadline, so a request that starts real training ends quickly.
"""

from __future__ import annotations

import os
from collections import Counter
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rpc_strategies import RequestStrategies, corpus

from cuvis_cluster.wire.pb import SERVICE_NAME, pb

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SERVICE = pb.DESCRIPTOR.services_by_name["CuvisAIService"]
METHODS = [m.name for m in SERVICE.methods]
EXAMPLES = int(os.environ.get("CUVIS_FUZZ_EXAMPLES", "25"))
FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=not os.environ.get("CUVIS_FUZZ_RANDOM"),
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
    print_blob=True,
)
UNARY_DEADLINE = 60.0  # Hydra compose on a busy 2-core machine can take seconds
STREAM_DEADLINE = 3.0  # a Train that really starts is cut off here (DEADLINE_EXCEEDED is fine)
BAD = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}
# (method, status) -> count, printed at the end of the module for the record
SEEN: Counter[tuple[str, str]] = Counter()


@pytest.fixture(scope="module")
def baseline(fuzz_cluster):
    """The snapshot of everything the worker must not touch, taken before the first fuzzed call."""
    fuzz_cluster.trained_session()
    return fuzz_cluster.tree.snapshot()


@pytest.fixture(scope="module", autouse=True)
def _report_statuses():
    yield
    if SEEN:
        lines = [f"{method:28} {code:20} {count}" for (method, code), count in sorted(SEEN.items())]
        print("\nfuzz statuses (method, status, requests):\n" + "\n".join(lines))


def call(fuzz_cluster, method: str, request: Any) -> tuple[grpc.StatusCode, str, Any]:
    """Send ``request`` through the gateway; (status, details, request) for the assertion message."""
    descriptor = SERVICE.methods_by_name[method]
    path = f"/{SERVICE_NAME}/{method}"
    serialize = request.SerializeToString if hasattr(request, "SerializeToString") else None
    try:
        if descriptor.server_streaming:
            stream = fuzz_cluster.channel.unary_stream(path, request_serializer=serialize)
            responses = stream(request, timeout=STREAM_DEADLINE)
            for _ in responses:
                pass
        else:
            unary = fuzz_cluster.channel.unary_unary(path, request_serializer=serialize)
            unary(request, timeout=UNARY_DEADLINE)
        code, details = grpc.StatusCode.OK, ""
    except grpc.RpcError as exc:
        code, details = exc.code(), exc.details() or ""
    SEEN[(method, code.name)] += 1
    return code, details, request


def check(fuzz_cluster, outcome: tuple[grpc.StatusCode, str, Any]) -> None:
    code, details, request = outcome
    shown = repr(request)[:400]
    assert code not in BAD, f"{code.name}: {details}\nrequest: {shown}\n{_logged(fuzz_cluster, details)}"
    dead = fuzz_cluster.dead()
    assert not dead, f"{', '.join(dead)} died after: {shown}"


def _logged(fuzz_cluster, details: str) -> str:
    """The worker's log from the line with the reply's request id on (the traceback of the failure)."""
    if "request id " not in details:
        return ""
    request_id = details.split("request id ")[1].split(")")[0]
    lines = fuzz_cluster.worker.log().splitlines()
    start = next((i for i, line in enumerate(lines) if request_id in line), None)
    return "" if start is None else "worker log:\n" + "\n".join(lines[start : start + 40])


def close_created(fuzz_cluster, method: str, known: str) -> None:
    """Close what a fuzzed CreateSession/RestoreTrainRun opened, so the worker does not fill up."""
    if method not in ("CreateSession", "RestoreTrainRun"):
        return
    for session in _open_sessions(fuzz_cluster):
        if session != known:
            try:
                fuzz_cluster.stub.CloseSession(pb.CloseSessionRequest(session_id=session), timeout=30)
            except grpc.RpcError:
                pass


def _open_sessions(fuzz_cluster) -> list[str]:
    import redis

    from cuvis_cluster.routing import redis_schema as rs

    client = redis.Redis.from_url(f"redis://{fuzz_cluster.redis.address}/0", decode_responses=True)
    try:
        prefix = rs.route_key("")
        return [key[len(prefix) :] for key in client.scan_iter(match=prefix + "*")]
    finally:
        client.close()


@pytest.mark.parametrize("method", METHODS)
def test_fuzzed_requests_never_fail_as_internal(fuzz_cluster, baseline, method):
    session = fuzz_cluster.trained_session()
    strategies = RequestStrategies(fuzz_cluster.tree.outside, st.just(session))
    descriptor = SERVICE.methods_by_name[method].input_type

    @FUZZ_SETTINGS
    @given(request=strategies.request(descriptor))
    def fuzz(request: Any) -> None:
        check(fuzz_cluster, call(fuzz_cluster, method, request))
        close_created(fuzz_cluster, method, session)

    fuzz()
    assert fuzz_cluster.tree.snapshot() == baseline, f"{method} changed files outside the output root"


@pytest.mark.parametrize("method", METHODS)
def test_the_bad_input_corpus_never_fails_as_internal(fuzz_cluster, baseline, method):
    """Every fixed hostile path in every text field, every hostile document in every bytes field, on an
    otherwise plausible request (the real session, a known config type): the deterministic floor under
    the random search above, which covers issue 12's corpus (long paths, deep JSON) in every RPC."""
    session = fuzz_cluster.trained_session()
    failures = []
    for label, request in corpus(
        SERVICE.methods_by_name[method].input_type, session, fuzz_cluster.tree.outside
    ):
        code, details, _ = call(fuzz_cluster, method, request)
        if code in BAD:
            failures.append(f"{label}: {code.name} {details}\n{_logged(fuzz_cluster, details)}")
        assert not fuzz_cluster.dead(), f"{', '.join(fuzz_cluster.dead())} died after {method} {label}"
        close_created(fuzz_cluster, method, session)
    assert not failures, f"{len(failures)} requests failed as INTERNAL/UNKNOWN:\n" + "\n".join(failures[:5])
    assert fuzz_cluster.tree.snapshot() == baseline, f"{method} changed files outside the output root"


def _invalid_utf8_bodies(method: str) -> list[bytes]:
    """One body per string field of the request: that field holds bytes that are not UTF-8."""
    bodies = []
    for f in SERVICE.methods_by_name[method].input_type.fields:
        if f.type == f.TYPE_STRING:
            tag = (f.number << 3) | 2
            bodies.append(_varint(tag) + _varint(3) + b"\xff\xfe\xc0")
    return bodies


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


@pytest.mark.parametrize("method", METHODS)
def test_raw_request_bodies_never_fail_as_internal(fuzz_cluster, baseline, method):
    bodies = st.one_of(st.sampled_from(_invalid_utf8_bodies(method) or [b"\xff"]), st.binary(max_size=64))

    @FUZZ_SETTINGS
    @given(body=bodies)
    def fuzz(body: bytes) -> None:
        check(fuzz_cluster, call(fuzz_cluster, method, body))

    fuzz()
    assert fuzz_cluster.tree.snapshot() == baseline, f"{method} changed files outside the output root"
