"""Tensor codec: numpy / torch arrays <-> ``cuvis_ai.v1.Tensor``.

Decoding is zero-copy: the array is a read-only ``np.frombuffer`` view on the message's bytes.
Encoding makes exactly one copy (``tobytes`` of a contiguous array), which protobuf needs because a
``bytes`` field only accepts ``bytes``. Payloads are little-endian, C order, as the published API
sends them.

Every malformed tensor raises :class:`TensorError` (an ``InvalidArgument``) naming the field and the
problem, so servers answer INVALID_ARGUMENT, never INTERNAL.
"""

from __future__ import annotations

import math
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np

from cuvis_cluster.errors import InvalidArgument
from cuvis_cluster.wire.pb import pb

if TYPE_CHECKING:  # torch is optional: the gateway and light clients don't install it
    import torch

# The wire dtype enum and its little-endian numpy equivalent.
WIRE_TO_NUMPY: dict[int, np.dtype] = {
    pb.D_TYPE_FLOAT32: np.dtype("<f4"),
    pb.D_TYPE_FLOAT64: np.dtype("<f8"),
    pb.D_TYPE_INT32: np.dtype("<i4"),
    pb.D_TYPE_INT64: np.dtype("<i8"),
    pb.D_TYPE_UINT8: np.dtype("u1"),
    pb.D_TYPE_BOOL: np.dtype("?"),
    pb.D_TYPE_FLOAT16: np.dtype("<f2"),
    pb.D_TYPE_UINT16: np.dtype("<u2"),
}
# Short dtype names as the engine and the TensorSpec messages use them.
NAME_TO_WIRE: dict[str, pb.DType] = {
    "float32": pb.D_TYPE_FLOAT32,
    "float64": pb.D_TYPE_FLOAT64,
    "int32": pb.D_TYPE_INT32,
    "int64": pb.D_TYPE_INT64,
    "uint8": pb.D_TYPE_UINT8,
    "bool": pb.D_TYPE_BOOL,
    "float16": pb.D_TYPE_FLOAT16,
    "uint16": pb.D_TYPE_UINT16,
}
WIRE_TO_NAME: dict[int, str] = {v: k for k, v in NAME_TO_WIRE.items()}
# Native-order numpy dtype name -> wire code (built from the enum members, which NAME_TO_WIRE lists).
NUMPY_TO_WIRE: dict[str, pb.DType] = {
    WIRE_TO_NUMPY[code].newbyteorder("=").name: code for code in NAME_TO_WIRE.values()
}

# No real tensor has more dims than this; it also bounds the work spent validating a hostile shape.
MAX_RANK = 32
# Protobuf messages cannot exceed 2 GiB, so no valid payload is larger.
MAX_PAYLOAD_BYTES = (1 << 31) - 1


class TensorError(InvalidArgument):
    """A tensor message that cannot be decoded, or an array that cannot be encoded."""


def _dtype_label(code: int) -> str:
    try:
        return pb.DType.Name(code)
    except ValueError:
        return str(code)


def element_count(shape: Any, *, field: str = "tensor") -> int:
    """Validate ``shape`` and return the number of elements; refuses negative, huge or too many dims."""
    dims = list(shape)
    if len(dims) > MAX_RANK:
        raise TensorError(f"{field}: rank {len(dims)} exceeds the maximum of {MAX_RANK}", field=field)
    for axis, dim in enumerate(dims):
        if dim < 0:
            raise TensorError(f"{field}: shape[{axis}] is {dim}; dimensions must be >= 0", field=field)
        if dim > MAX_PAYLOAD_BYTES:  # even beside a zero dim, numpy cannot shape such an array
            raise TensorError(
                f"{field}: shape[{axis}] is {dim}, larger than any message can carry", field=field
            )
    count = math.prod(dims)
    if count > MAX_PAYLOAD_BYTES:
        raise TensorError(
            f"{field}: shape {dims} has {count} elements, more than any message can carry", field=field
        )
    return count


def decode(tensor: pb.Tensor, *, field: str = "tensor") -> np.ndarray:
    """Return a read-only numpy view of ``tensor`` without copying its payload."""
    payload = tensor.WhichOneof("payload")
    if payload == "shm_ref":
        raise TensorError(
            f"{field}: shm_ref payloads are not supported: shared memory does not cross hosts between the "
            "client, the gateway and the GPU workers; send the data inline in raw_data",
            field=field,
        )
    dtype = WIRE_TO_NUMPY.get(tensor.dtype)
    if dtype is None:
        raise TensorError(
            f"{field}: dtype {_dtype_label(tensor.dtype)} is not a concrete type; use one of "
            + ", ".join(pb.DType.Name(c) for c in WIRE_TO_NUMPY),
            field=field,
        )
    count = element_count(tensor.shape, field=field)
    raw = tensor.raw_data
    expected = count * dtype.itemsize
    if len(raw) != expected:
        raise TensorError(
            f"{field}: raw_data has {len(raw)} bytes but shape {list(tensor.shape)} of "
            f"{WIRE_TO_NAME[tensor.dtype]} needs {expected}",
            field=field,
        )
    array = np.frombuffer(raw, dtype=dtype, count=count)
    return array.reshape(tuple(tensor.shape))


def wire_array(array: Any, *, field: str = "tensor") -> tuple[pb.DType, np.ndarray]:
    """The wire dtype code and a C-contiguous little-endian array for ``array`` (copied only if needed).

    Accepts numpy arrays, torch tensors (moved to the CPU) and anything ``np.asarray`` accepts; raises
    :class:`TensorError` for dtypes without a wire equivalent and payloads over the 2 GiB limit.
    """
    if type(array).__module__.startswith("torch"):
        array = array.detach().to("cpu").numpy()
    array = np.asarray(array)
    code = NUMPY_TO_WIRE.get(array.dtype.newbyteorder("=").name)
    if code is None:
        raise TensorError(
            f"{field}: numpy dtype {array.dtype} has no wire equivalent; supported: "
            + ", ".join(NAME_TO_WIRE),
            field=field,
        )
    wire_dtype = WIRE_TO_NUMPY[code]
    if array.dtype != wire_dtype:  # big-endian input: convert once to the wire byte order
        array = array.astype(wire_dtype)
    if array.nbytes > MAX_PAYLOAD_BYTES:
        raise TensorError(
            f"{field}: {array.nbytes} bytes exceed the 2 GiB protobuf message limit", field=field
        )
    if not array.flags.c_contiguous:  # (ascontiguousarray would also turn a 0-d array into 1-d)
        array = np.ascontiguousarray(array)
    return code, array


def encode(array: Any, *, field: str = "tensor") -> pb.Tensor:
    """Encode a numpy array, a torch tensor or anything ``np.asarray`` accepts."""
    code, array = wire_array(array, field=field)
    return pb.Tensor(shape=array.shape, dtype=code, raw_data=array.tobytes())


def to_torch(tensor: pb.Tensor, *, field: str = "tensor", device: Any = None) -> torch.Tensor:
    """Decode into a torch tensor sharing the message's memory (copied only when moved to ``device``)."""
    import torch  # optional (see the TYPE_CHECKING import above), so imported on use

    array = decode(tensor, field=field)
    with warnings.catch_warnings():
        # The view is read-only by construction; the engine never writes into its inputs.
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        result = torch.from_numpy(array)
    return result if device is None else result.to(device)


def spec_dtype(name: str) -> pb.DType:
    """Wire dtype code for an engine dtype name (``"float32"`` ...)."""
    try:
        return NAME_TO_WIRE[name]
    except KeyError:
        return pb.D_TYPE_FLOAT32


# The names the published client helpers use, so SDK users find them.
numpy_to_proto = encode
proto_to_numpy = decode
tensor_to_proto = encode
