"""The gateway's HPACK codec against the reference ``hpack`` implementation."""

from __future__ import annotations

import hpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cuvis_cluster.gateway.hpackfast import Decoder, Encoder, HpackError

names = st.one_of(
    st.sampled_from([b":path", b":status", b"content-type", b"grpc-status", b"grpc-message", b"te", b"x-a"]),
    st.binary(min_size=1, max_size=20).map(lambda b: bytes(c % 26 + 97 for c in b)),
)
headers = st.lists(st.tuples(names, st.binary(max_size=300)), max_size=20)


@settings(max_examples=200, deadline=None)
@given(blocks=st.lists(headers, min_size=1, max_size=5), huffman=st.booleans())
def test_decoder_follows_the_reference_encoder(blocks, huffman):
    reference, ours = hpack.Encoder(), Decoder()
    for block in blocks:
        data = reference.encode(block, huffman=huffman)
        assert ours.decode(data) == [(bytes(n), bytes(v)) for n, v in block]


@settings(max_examples=200, deadline=None)
@given(blocks=st.lists(headers, min_size=1, max_size=5))
def test_reference_decoder_reads_our_encoder(blocks):
    ours, reference = Encoder(), hpack.Decoder()
    for block in blocks:
        assert reference.decode(ours.encode(block), raw=True) == block


def test_cached_blocks_follow_table_changes():
    reference, ours = hpack.Encoder(), Decoder()
    first = reference.encode([(b"x-k", b"one")])
    assert ours.decode(first) == [(b"x-k", b"one")]
    indexed = reference.encode([(b"x-k", b"one")])  # now a one-byte reference to the dynamic table
    assert ours.decode(indexed) == [(b"x-k", b"one")]
    reference.encode([(b"x-k", b"two")])  # not given to our decoder: simulate a fresh pair instead
    again = Decoder()
    again.decode(first)
    assert again.decode(indexed) == [(b"x-k", b"one")]


def test_rejects_bad_blocks():
    with pytest.raises(HpackError):
        Decoder().decode(b"\xff\xff\xff\xff\xff\xff\x7f")  # index far beyond both tables
    with pytest.raises(HpackError):
        Decoder(max_table_size=100).decode(b"\x3f\xe1\x1f")  # table size update above the limit
    with pytest.raises(HpackError):
        Decoder(max_header_list=50).decode(hpack.Encoder().encode([(b"a", b"b" * 100)]))
