"""The session-id scanner: random protobuf messages, the field anywhere, chunked arbitrarily."""

from __future__ import annotations

import gzip
import itertools
import zlib

import grpc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cuvis_cluster.gateway.scan import FieldScanner, ScanError
from cuvis_cluster.wire.pb import pb
from cuvis_cluster.wire.status import status_for


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def tag(field: int, wire: int) -> bytes:
    return varint(field << 3 | wire)


def frame(message: bytes, flag: int = 0) -> bytes:
    return bytes([flag]) + len(message).to_bytes(4, "big") + message


# Any top-level field except the target (number 1 here): varint, fixed64, fixed32, bytes, or a group.
other_field = st.one_of(
    st.tuples(st.integers(2, 2000), st.integers(0, 2**64 - 1)).map(lambda t: tag(t[0], 0) + varint(t[1])),
    st.tuples(st.integers(2, 2000), st.binary(min_size=8, max_size=8)).map(lambda t: tag(t[0], 1) + t[1]),
    st.tuples(st.integers(2, 2000), st.binary(min_size=4, max_size=4)).map(lambda t: tag(t[0], 5) + t[1]),
    st.tuples(st.integers(2, 2000), st.binary(max_size=300)).map(
        lambda t: tag(t[0], 2) + varint(len(t[1])) + t[1]
    ),
    st.tuples(st.integers(2, 2000), st.integers(0, 2**32)).map(
        # A group with one inner varint field numbered 1: must not be mistaken for the target.
        lambda t: tag(t[0], 3) + tag(1, 0) + varint(t[1]) + tag(t[0], 4)
    ),
)
session_ids = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=0, max_size=64)


def feed_chunked(scanner: FieldScanner, data: bytes, cuts: list[int]) -> None:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    for a, b in itertools.pairwise(points):
        scanner.feed(memoryview(data)[a:b])


@settings(max_examples=300, deadline=None)
@given(
    before=st.lists(other_field, max_size=6),
    after=st.lists(other_field, max_size=6),
    session=session_ids,
    present=st.booleans(),
    cuts=st.lists(st.integers(0, 10_000), max_size=12),
)
def test_finds_the_field_wherever_it_is(before, after, session, present, cuts):
    value = session.encode()
    field = tag(1, 2) + varint(len(value)) + value if present else b""
    message = b"".join(before) + field + b"".join(after)
    scanner = FieldScanner(1)
    feed_chunked(scanner, frame(message), cuts)
    scanner.finish()
    assert scanner.decided and scanner.complete
    assert scanner.value == (session if present else "")


@settings(max_examples=100, deadline=None)
@given(session=session_ids, extra=st.binary(max_size=2000), cuts=st.lists(st.integers(0, 5000), max_size=8))
def test_real_messages_of_the_published_api(session, extra, cuts):
    inference = pb.InferenceRequest(session_id=session, output_specs=["a", "b"])
    inference.inputs.cube.raw_data = extra
    restore = pb.RestoreTrainRunRequest(trainrun_path="runs/x.yaml", weights_path="w.pt", session_id=session)
    for message, number in ((inference, 1), (restore, 4)):
        scanner = FieldScanner(number)
        feed_chunked(scanner, frame(message.SerializeToString()), cuts)
        scanner.finish()
        assert scanner.value == session


def test_decided_before_the_rest_of_a_large_message_arrives():
    big = pb.InferenceRequest(session_id="abc")
    big.inputs.cube.raw_data = b"\0" * (1 << 20)
    data = frame(big.SerializeToString())
    scanner = FieldScanner(1)
    scanner.feed(data[:64])
    assert scanner.decided and scanner.value == "abc"
    scanner.feed(data[64:])
    assert scanner.complete


@settings(max_examples=50, deadline=None)
@given(first=session_ids, second=session_ids, cuts=st.lists(st.integers(0, 500), max_size=6))
def test_a_second_different_session_id_is_refused(first, second, cuts):
    a, b = first.encode(), second.encode()
    message = tag(1, 2) + varint(len(a)) + a + tag(7, 0) + varint(5) + tag(1, 2) + varint(len(b)) + b
    scanner = FieldScanner(1)
    if first == second:
        feed_chunked(scanner, frame(message), cuts)
        assert scanner.value == first
    else:
        with pytest.raises(ScanError, match="more than once"):
            feed_chunked(scanner, frame(message), cuts)


@pytest.mark.parametrize(
    "message, error",
    [
        (tag(1, 0) + varint(5), "not a string"),
        (tag(0, 0) + varint(5), "field number 0"),
        (tag(2, 2) + varint(10) + b"abc", "ends inside a field"),
        (tag(3, 3) + tag(4, 4), "unbalanced group"),
        (b"\xff" * 11, "varint longer"),
        (tag(2, 6), "wire type 6"),
    ],
)
def test_malformed_requests_are_invalid_argument(message, error):
    scanner = FieldScanner(1)
    with pytest.raises(ScanError, match=error) as info:
        scanner.feed(frame(message))
        scanner.finish()
    assert status_for(info.value.error)[0] == grpc.StatusCode.INVALID_ARGUMENT


def test_truncated_and_repeated_messages():
    data = frame(pb.InferenceRequest(session_id="s").SerializeToString())
    scanner = FieldScanner(1)
    scanner.feed(data[:-1])
    with pytest.raises(ScanError, match="middle of its message"):
        scanner.finish()
    scanner = FieldScanner(1)
    with pytest.raises(ScanError, match="more than one request message"):
        scanner.feed(data + data)
    with pytest.raises(ScanError, match="no message"):
        FieldScanner(1).finish()


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "snappy"])
def test_compressed_requests_are_unimplemented_naming_the_encoding(encoding):
    message = pb.InferenceRequest(session_id="zipped", output_specs=["x"] * 50).SerializeToString()
    packed = gzip.compress(message) if encoding == "gzip" else zlib.compress(message)
    scanner = FieldScanner(1, encoding=encoding)
    data = frame(packed, flag=1)
    with pytest.raises(ScanError, match=f"grpc-encoding: {encoding}") as info:
        scanner.feed(data[:5])  # refused at the prefix: not one byte is inflated
    assert status_for(info.value.error)[0] == grpc.StatusCode.UNIMPLEMENTED


def test_an_uncompressed_message_under_a_grpc_encoding_header_is_routed():
    # grpc-encoding names what compressed messages would use; flag 0 messages are plain.
    scanner = FieldScanner(1, encoding="gzip")
    scanner.feed(frame(pb.InferenceRequest(session_id="plain").SerializeToString()))
    scanner.finish()
    assert scanner.value == "plain"
