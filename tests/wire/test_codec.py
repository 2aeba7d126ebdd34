"""Tensor codec: round trips for every wire dtype, and a clear INVALID_ARGUMENT for every bad tensor."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from cuvis_cluster.wire import codec
from cuvis_cluster.wire.pb import pb
from cuvis_cluster.wire.status import status_for

WIRE_DTYPES = [np.float32, np.float64, np.int32, np.int64, np.uint8, np.bool_, np.float16, np.uint16]

shapes = hnp.array_shapes(min_dims=0, max_dims=5, min_side=0, max_side=6)


@settings(max_examples=200, deadline=None)
@given(data=st.data(), dtype=st.sampled_from(WIRE_DTYPES), shape=shapes)
def test_numpy_round_trip_is_exact(data, dtype, shape):
    array = data.draw(hnp.arrays(dtype, shape))
    message = codec.encode(array)
    again = pb.Tensor.FromString(message.SerializeToString())
    decoded = codec.decode(again)
    assert decoded.dtype == np.dtype(dtype)
    assert decoded.shape == array.shape
    # Byte equality also covers NaN payloads and -0.0.
    assert decoded.tobytes() == np.ascontiguousarray(array).tobytes()


@settings(max_examples=100, deadline=None)
@given(data=st.data(), dtype=st.sampled_from(WIRE_DTYPES), shape=shapes)
def test_torch_round_trip_is_exact(data, dtype, shape):
    array = data.draw(hnp.arrays(dtype, shape))
    tensor = torch.from_numpy(array.copy())
    decoded = codec.to_torch(codec.encode(tensor))
    assert decoded.dtype == tensor.dtype
    assert decoded.shape == tensor.shape
    assert decoded.numpy().tobytes() == array.tobytes()


@given(st.sampled_from(WIRE_DTYPES), shapes)
def test_non_contiguous_and_big_endian_inputs_encode_as_little_endian_c_order(dtype, shape):
    array = np.arange(int(np.prod(shape)) * 2).astype(dtype).reshape((*shape, 2))[..., 0]
    decoded = codec.decode(codec.encode(array))
    np.testing.assert_array_equal(decoded, array)
    if np.dtype(dtype).itemsize > 1:
        swapped = array.astype(np.dtype(dtype).newbyteorder(">"))
        np.testing.assert_array_equal(codec.decode(codec.encode(swapped)), array)


def test_decode_is_zero_copy_view_of_the_message_bytes():
    message = codec.encode(np.arange(1000, dtype=np.float32))
    decoded = codec.decode(message)
    assert not decoded.flags.writeable
    assert not decoded.flags.owndata  # a view on the payload, not a copy


def _code_and_details(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    return status_for(exc)


@pytest.mark.parametrize(
    ("tensor", "expected"),
    [
        (
            pb.Tensor(shape=[2, 3], dtype=pb.D_TYPE_FLOAT32, raw_data=b"\0" * 20),
            "raw_data has 20 bytes but shape",
        ),
        (pb.Tensor(shape=[2, -3], dtype=pb.D_TYPE_FLOAT32), "shape[1] is -3"),
        (pb.Tensor(shape=[1 << 20, 1 << 20], dtype=pb.D_TYPE_UINT8), "more than any message can carry"),
        (pb.Tensor(shape=[0, 1 << 40, 1 << 40, 61], dtype=pb.D_TYPE_FLOAT32), "shape[1] is 1099511627776"),
        (pb.Tensor(shape=[1] * 40, dtype=pb.D_TYPE_UINT8, raw_data=b"\0"), "rank 40 exceeds"),
        (
            pb.Tensor(shape=[2], dtype=pb.D_TYPE_UNSPECIFIED, raw_data=b"\0\0"),
            "D_TYPE_UNSPECIFIED is not a concrete",
        ),
        (pb.Tensor(shape=[2], dtype=77, raw_data=b"\0\0"), "dtype 77 is not a concrete"),
        (
            pb.Tensor(shape=[4], dtype=pb.D_TYPE_FLOAT32, shm_ref=pb.ShmRef(name="x", byte_size=16)),
            "shm_ref payloads are not supported",
        ),
    ],
)
def test_bad_tensors_map_to_invalid_argument_naming_the_problem(tensor, expected):
    with pytest.raises(codec.TensorError) as info:
        codec.decode(tensor, field="inputs.cube")
    code, details = _code_and_details(info.value)
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith("inputs.cube: ")
    assert expected in details


@given(st.binary(max_size=64), st.lists(st.integers(-(1 << 62), 1 << 62), max_size=6), st.integers(-5, 12))
def test_decode_never_fails_with_anything_but_tensor_error(raw, shape, dtype):
    tensor = pb.Tensor(shape=shape, dtype=dtype, raw_data=raw)
    try:
        decoded = codec.decode(tensor)
    except codec.TensorError:
        return
    assert decoded.nbytes == len(raw)


def test_unsupported_numpy_dtype_is_invalid_argument():
    with pytest.raises(codec.TensorError, match="complex128 has no wire equivalent"):
        codec.encode(np.zeros(2, dtype=np.complex128))
