"""Request and trailer validation (RFC 9113 section 8): what a malformed request is, and that the
validator never fails on arbitrary input (the bytes come straight from a client's header block)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cuvis_cluster.gateway.h2fields import check_request, trailers_problem

GRPC = [
    (b":method", b"POST"),
    (b":scheme", b"http"),
    (b":path", b"/cuvis_ai.v1.CuvisAIService/Inference"),
    (b":authority", b"gateway:50051"),
    (b"content-type", b"application/grpc"),
    (b"te", b"trailers"),
    (b"grpc-accept-encoding", b"identity,deflate,gzip"),
    (b"user-agent", b"grpc-python/1.70.0 grpc-c/45.0.0 (linux; chttp2)"),
]


def test_a_grpc_request_is_well_formed_and_its_verdict_is_cached():
    headers = list(GRPC)
    assert check_request(headers) == (None, -1)
    assert check_request(headers) == (None, -1)
    assert check_request([*GRPC, (b"content-length", b"12")]) == (None, 12)


@pytest.mark.parametrize(
    ("change", "why"),
    [
        (lambda h: [*h, (b"X-Upper", b"1")], "lower-case"),
        (lambda h: [*h, (b"x-bad", b"a\nb")], "NUL, CR, LF"),
        (lambda h: [*h, (b"x-bad", b" padded")], "whitespace"),
        (lambda h: [*h, (b"connection", b"close")], "connection-specific"),
        (lambda h: [*h, (b"te", b"gzip")], "TE"),
        (lambda h: [*h, (b":status", b"200")], "pseudo-header"),
        (lambda h: [(b":path", b"/a"), *h], "twice"),
        (lambda h: [p for p in h if p[0] != b":scheme"], "needs"),
        (lambda h: [(n, b"" if n == b":path" else v) for n, v in h], "empty :path"),
        (lambda h: [*h, (b"content-length", b"x")], "content-length"),
    ],
)
def test_malformed_requests_say_why(change, why):
    problem, _length = check_request(change(list(GRPC)))
    assert problem is not None and why in problem


def test_trailers():
    assert trailers_problem([(b"x-checksum", b"1")]) is None
    assert "pseudo-header" in (trailers_problem([(b":path", b"/x")]) or "")


header = st.tuples(st.binary(max_size=12), st.binary(max_size=12))


@settings(max_examples=300, deadline=None)
@given(st.lists(header, max_size=12))
def test_the_validator_never_fails_on_arbitrary_fields(headers):
    problem, length = check_request(headers)
    assert problem is None or isinstance(problem, str)
    assert length >= -1
    trailers_problem(headers)
