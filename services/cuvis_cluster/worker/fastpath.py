"""Zero-copy decoding of ``InferenceRequest``; one-copy encoding of ``InferenceResponse`` (and requests).

A 1x512x512x61 float32 cube is a 64 MB request. Parsing it with protobuf copies the payload twice
(into the message arena, then into a fresh ``bytes`` on ``tensor.raw_data``), which on a CPU worker
costs as much as the RX forward itself. This module walks the protobuf wire format of the request
instead and returns the tensors as read-only numpy views on the received buffer: the only copy left is
the one grpc makes when it hands the message to Python.

Scope is deliberately narrow. Only the tensor fields are walked by hand; prompts (bboxes, points) are
parsed by protobuf from their own small byte ranges. Anything unusual (a tensor field repeated,
which protobuf would merge; a group wire type) falls back to the regular protobuf parse, so the result
is always what ``InferenceRequest.FromString`` would give. Truncated or malformed input raises
``DecodeError`` exactly like protobuf; tensor validation uses the codec's rules and messages.

The encoders at the end write the same wire format from numpy/torch arrays with a single copy of each
payload (the final ``b"".join``), where building protobuf messages costs three or four.
"""

from __future__ import annotations

import struct
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from google.protobuf.message import DecodeError

from cuvis_cluster.wire import codec
from cuvis_cluster.wire.pb import pb

# Wire types.
_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5

# InferenceRequest
_REQ_SESSION, _REQ_INPUTS, _REQ_OUTPUTS = 1, 2, 3
# InputBatch tensor fields by number, and the other fields.
_BATCH_TENSORS = {1: "wavelengths", 2: "cube", 3: "mask", 8: "mesu_index", 9: "rgb_image", 10: "frame_id"}
_BATCH_BBOXES, _BATCH_POINTS, _BATCH_TEXT, _BATCH_EXTRA = 4, 5, 6, 7
# Tensor
_T_SHAPE, _T_DTYPE, _T_RAW, _T_SHM = 1, 2, 3, 4


class _Fallback(Exception):
    """The request uses a legal but unusual encoding; let protobuf parse it."""


@dataclass
class TensorView:
    """A tensor field located in the request buffer, not yet validated."""

    shape: list[int] = field(default_factory=list)
    dtype: int = 0
    payload: str | None = None  # "raw_data" | "shm_ref" | None
    start: int = 0
    length: int = 0


@dataclass
class FastInferenceRequest:
    """What the Inference handler needs, decoded from the wire without copying tensor payloads."""

    buffer: Any
    session_id: str = ""
    output_specs: list[str] = field(default_factory=list)
    tensors: dict[str, TensorView] = field(default_factory=dict)  # batch key -> view
    extra: dict[str, TensorView] = field(default_factory=dict)  # extra_inputs
    bboxes: pb.BoundingBoxes | None = None
    points: pb.Points | None = None
    text_prompt: str = ""


def _varint(buf: memoryview, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end:
            raise DecodeError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise DecodeError("varint too long")


def _signed64(value: int) -> int:
    value &= (1 << 64) - 1
    return value - (1 << 64) if value >= 1 << 63 else value


def _fields(buf: memoryview, pos: int, end: int):
    """Yield (field number, wire type, value) with value = int or (start, stop) for LEN fields."""
    while pos < end:
        key, pos = _varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise DecodeError("field number 0")
        if wire == _VARINT:
            value, pos = _varint(buf, pos, end)
        elif wire == _LEN:
            size, pos = _varint(buf, pos, end)
            if pos + size > end:
                raise DecodeError("truncated length-delimited field")
            value = (pos, pos + size)
            pos += size
        elif wire == _I64:
            if pos + 8 > end:
                raise DecodeError("truncated fixed64")
            value, pos = None, pos + 8
        elif wire == _I32:
            if pos + 4 > end:
                raise DecodeError("truncated fixed32")
            value, pos = None, pos + 4
        else:  # groups (3, 4) are legal but never produced for this schema
            raise _Fallback
        yield number, wire, value
    if pos != end:
        raise DecodeError("field overruns its message")


def _text(buf: memoryview, span: tuple[int, int]) -> str:
    try:
        return bytes(buf[span[0] : span[1]]).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DecodeError(f"string field is not valid UTF-8: {exc}") from exc


def _tensor(buf: memoryview, start: int, end: int) -> TensorView:
    view = TensorView()
    for number, wire, value in _fields(buf, start, end):
        if number == _T_SHAPE:
            if wire == _LEN:  # packed
                pos, stop = value
                while pos < stop:
                    dim, pos = _varint(buf, pos, stop)
                    view.shape.append(_signed64(dim))
            elif wire == _VARINT:
                view.shape.append(_signed64(value))
            else:
                raise _Fallback
        elif number == _T_DTYPE and wire == _VARINT:
            view.dtype = _signed64(value)
        elif number == _T_RAW and wire == _LEN:
            view.payload, (view.start, stop) = "raw_data", value
            view.length = stop - view.start
        elif number == _T_SHM and wire == _LEN:
            view.payload = "shm_ref"
        elif number in (_T_SHAPE, _T_DTYPE, _T_RAW, _T_SHM):
            raise _Fallback  # protobuf keeps a known field with a foreign wire type as an unknown field
    return view


def parse_inference_request(data: bytes) -> FastInferenceRequest | pb.InferenceRequest:
    """Decode a serialized ``InferenceRequest``; returns the protobuf message for unusual encodings."""
    try:
        return _parse(data)
    except _Fallback:
        return pb.InferenceRequest.FromString(data)


def _parse(data: bytes) -> FastInferenceRequest:
    buf = memoryview(data)
    request = FastInferenceRequest(buffer=data)
    batches: list[tuple[int, int]] = []
    for number, wire, value in _fields(buf, 0, len(buf)):
        if wire != _LEN and number in (_REQ_SESSION, _REQ_INPUTS, _REQ_OUTPUTS):
            raise _Fallback
        if number == _REQ_SESSION:
            request.session_id = _text(buf, value)
        elif number == _REQ_OUTPUTS:
            request.output_specs.append(_text(buf, value))
        elif number == _REQ_INPUTS:
            batches.append(value)
    if len(batches) > 1:
        raise _Fallback  # a split sub-message is merged by protobuf; rare enough to not reimplement
    if batches:
        _batch(buf, *batches[0], request)
    return request


def _batch(buf: memoryview, start: int, end: int, request: FastInferenceRequest) -> None:
    bboxes: list[bytes] = []
    points: list[bytes] = []
    for number, wire, value in _fields(buf, start, end):
        name = _BATCH_TENSORS.get(number)
        known = name is not None or number in (_BATCH_BBOXES, _BATCH_POINTS, _BATCH_TEXT, _BATCH_EXTRA)
        if known and wire != _LEN:
            raise _Fallback
        if name is not None:
            if name in request.tensors:
                raise _Fallback
            request.tensors[name] = _tensor(buf, *value)
        elif number == _BATCH_BBOXES:
            bboxes.append(bytes(buf[value[0] : value[1]]))
        elif number == _BATCH_POINTS:
            points.append(bytes(buf[value[0] : value[1]]))
        elif number == _BATCH_TEXT:
            request.text_prompt = _text(buf, value)
        elif number == _BATCH_EXTRA:
            key, tensor = "", None
            for entry_number, entry_wire, entry_value in _fields(buf, *value):
                if entry_wire != _LEN and entry_number in (1, 2):
                    raise _Fallback
                if entry_number == 1 and entry_wire == _LEN:
                    key = _text(buf, entry_value)
                elif entry_number == 2 and entry_wire == _LEN:
                    if tensor is not None:
                        raise _Fallback
                    tensor = _tensor(buf, *entry_value)
            request.extra[key] = tensor if tensor is not None else TensorView()
    # Concatenated serializations merge exactly like repeated occurrences of the field.
    if bboxes:
        request.bboxes = pb.BoundingBoxes.FromString(b"".join(bboxes))
    if points:
        request.points = pb.Points.FromString(b"".join(points))


def to_array(request: FastInferenceRequest, view: TensorView, *, field: str) -> np.ndarray:
    """Validate like :func:`codec.decode` and return a read-only view into the request buffer."""
    if view.payload == "shm_ref":
        raise codec.TensorError(
            f"{field}: shm_ref payloads are not supported: shared memory does not cross hosts between the "
            "client, the gateway and the GPU workers; send the data inline in raw_data",
            field=field,
        )
    dtype = codec.WIRE_TO_NUMPY.get(view.dtype)
    if dtype is None:
        label = pb.DType.Name(view.dtype) if view.dtype in pb.DType.values() else str(view.dtype)
        raise codec.TensorError(
            f"{field}: dtype {label} is not a concrete type; use one of "
            + ", ".join(pb.DType.Name(c) for c in codec.WIRE_TO_NUMPY),
            field=field,
        )
    count = codec.element_count(view.shape, field=field)
    expected = count * dtype.itemsize
    if view.length != expected:
        raise codec.TensorError(
            f"{field}: raw_data has {view.length} bytes but shape {view.shape} of "
            f"{codec.WIRE_TO_NAME[view.dtype]} needs {expected}",
            field=field,
        )
    if count == 0:
        return np.zeros(view.shape, dtype=dtype)
    array = np.frombuffer(request.buffer, dtype=dtype, count=count, offset=view.start)
    return array.reshape(view.shape)


def to_torch(request: FastInferenceRequest, view: TensorView, *, field: str) -> Any:
    import torch

    array = to_array(request, view, field=field)
    with warnings.catch_warnings():
        # Read-only by construction; the engine never writes into its inputs.
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(array)


_PROMPT_FIELDS = ("bboxes", "points", "text_prompt")


def inference_inputs(request: FastInferenceRequest) -> dict[str, Any]:
    """The engine's input dict, with the same names and rules as ``messages.inference_inputs``."""
    from cuvis_cluster.errors import InvalidArgument
    from cuvis_cluster.worker import messages

    inputs: dict[str, Any] = {}
    for name in messages.TENSOR_INPUTS:
        view = request.tensors.get(name)
        if view is not None:
            inputs[name] = to_torch(request, view, field=f"inputs.{name}")
    if request.bboxes is not None:
        inputs["bboxes"] = messages.bbox_dicts(request.bboxes)
    if request.points is not None:
        inputs["points"] = messages.point_dicts(request.points)
    if request.text_prompt:
        inputs["text_prompt"] = request.text_prompt
    for name, view in request.extra.items():
        field = f"inputs.extra_inputs[{name!r}]"
        if not name or name in inputs or name in _PROMPT_FIELDS:
            raise InvalidArgument(
                f"{field}: the name is empty or collides with a standard input field; use the field itself",
                field=field,
            )
        inputs[name] = to_torch(request, view, field=field)
    return inputs


# --------------------------------------------------------------------------------------------------
# the client side of the same idea


def _put_varint(value: int) -> bytes:
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _key(number: int, wire: int) -> bytes:
    return _put_varint(number << 3 | wire)


def _tensor_parts(array: np.ndarray, *, field: str) -> list[Any]:
    """Header bytes and the payload buffer of one Tensor message (payload not copied)."""
    code = codec.NUMPY_TO_WIRE.get(array.dtype.newbyteorder("=").name)
    if code is None:
        raise codec.TensorError(f"{field}: numpy dtype {array.dtype} has no wire equivalent", field=field)
    wire_dtype = codec.WIRE_TO_NUMPY[code]
    if array.dtype != wire_dtype or not array.flags.c_contiguous:
        array = np.ascontiguousarray(array, dtype=wire_dtype)
    payload = memoryview(array).cast("B") if array.size else b""
    shape = b"".join(_put_varint(d) for d in array.shape)
    head = b""
    if shape:
        head += _key(_T_SHAPE, _LEN) + _put_varint(len(shape)) + shape
    head += _key(_T_DTYPE, _VARINT) + _put_varint(code)
    head += _key(_T_RAW, _LEN) + _put_varint(len(payload))
    return [head, payload]


def _length(parts: list[Any]) -> int:
    return sum(len(p) for p in parts)


def encode_inference_request(
    session_id: str, tensors: dict[str, Any], output_specs: list[str] | tuple[str, ...] = ()
) -> bytes:
    """Serialize an ``InferenceRequest`` with tensor inputs, copying each array exactly once.

    ``tensors`` maps InputBatch tensor fields (``cube``, ``wavelengths``, ``mask``, ...) and any other
    name (sent as ``extra_inputs``) to numpy arrays or CPU torch tensors. The result parses with
    ``InferenceRequest.FromString`` like a protobuf-built message; building that message instead costs
    three copies of every payload (into the message, the serialisation, and the join grpc needs).
    """
    numbers = {name: number for number, name in _BATCH_TENSORS.items()}
    batch: list[Any] = []
    for name, value in tensors.items():
        if type(value).__module__.startswith("torch"):
            value = value.detach().cpu().numpy()
        parts = _tensor_parts(np.asarray(value), field=f"inputs.{name}")
        if name in numbers:
            batch += [_key(numbers[name], _LEN), _put_varint(_length(parts)), *parts]
        else:
            key = name.encode("utf-8")
            entry = [
                _key(1, _LEN) + _put_varint(len(key)) + key,
                _key(2, _LEN) + _put_varint(_length(parts)),
                *parts,
            ]
            batch += [_key(_BATCH_EXTRA, _LEN), _put_varint(_length(entry)), *entry]
    out: list[Any] = []
    if session_id:
        sid = session_id.encode("utf-8")
        out += [_key(_REQ_SESSION, _LEN) + _put_varint(len(sid)) + sid]
    out += [_key(_REQ_INPUTS, _LEN) + _put_varint(_length(batch)), *batch]
    for spec in output_specs:
        text = spec.encode("utf-8")
        out.append(_key(_REQ_OUTPUTS, _LEN) + _put_varint(len(text)) + text)
    return b"".join(out)


def encode_inference_response(tensors: dict[str, Any], metrics: dict[str, float]) -> bytes:
    """Serialize an ``InferenceResponse``, copying each output tensor exactly once (in the final join)."""
    out: list[Any] = []
    for name, value in tensors.items():
        if type(value).__module__.startswith("torch"):
            value = value.detach().cpu().numpy()
        parts = _tensor_parts(np.asarray(value), field=f"outputs[{name!r}]")
        key = name.encode("utf-8")
        entry = [
            _key(1, _LEN) + _put_varint(len(key)) + key,
            _key(2, _LEN) + _put_varint(_length(parts)),
            *parts,
        ]
        out += [_key(1, _LEN), _put_varint(_length(entry)), *entry]
    for name, value in metrics.items():
        key = name.encode("utf-8")
        entry = _key(1, _LEN) + _put_varint(len(key)) + key + _key(2, _I32) + struct.pack("<f", float(value))
        out.append(_key(2, _LEN) + _put_varint(len(entry)) + entry)
    return b"".join(out)


@dataclass
class InferenceReply:
    """A serialized ``InferenceResponse`` that grpc sends as it is (built inside the handler, so an
    output that cannot be encoded is an error of the call, not of grpc's serializer)."""

    data: bytes

    @classmethod
    def build(cls, tensors: dict[str, Any], metrics: dict[str, float]) -> InferenceReply:
        return cls(encode_inference_response(tensors, metrics))

    def SerializeToString(self) -> bytes:  # the name grpc's generated serializers use
        return self.data

    def to_message(self) -> pb.InferenceResponse:
        return pb.InferenceResponse.FromString(self.data)
