"""The Inference messages without protobuf's copies: zero-copy decoders and one-copy encoders.

A 1x512x512x61 float32 cube is a 64 MB ``InferenceRequest``. Building it as a protobuf message copies
the payload three times (``tobytes``, into the message, into the serialisation) and parsing it copies it
twice more (into the message arena, then into a fresh ``bytes`` on ``tensor.raw_data``); on a CPU that
costs as much as an RX forward. This module reads and writes the protobuf wire format of the two
Inference messages directly:

* :func:`encode_inference_request` / :func:`encode_inference_response` write the exact bytes of
  ``SerializeToString(deterministic=True)`` (fields in number order, map entries in upb's sorted order;
  with at most one entry per map that is also plain ``SerializeToString()``), copying each array once,
  in the final ``b"".join``;
* :func:`parse_inference_request` / :func:`parse_inference_response` locate the tensors in the received
  buffer; :func:`view_array` validates one like :func:`codec.decode` and returns a read-only numpy view
  on that buffer.

Only tensors and map entries are walked by hand; prompts (bboxes, points) are parsed by protobuf from
their own small byte ranges. Anything unusual (a sub-message repeated, which protobuf would merge; a
known field with a foreign wire type; a group) falls back to the protobuf parse, so the result is
always what ``FromString`` would give. Truncated or malformed input raises ``DecodeError`` like protobuf.
Used by the worker (:mod:`cuvis_cluster.worker.fastpath`) and the client SDK.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from google.protobuf.message import DecodeError

from cuvis_cluster.wire import codec
from cuvis_cluster.wire.pb import pb

# Wire types.
_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5
_MAX_FIELD_NUMBER = (1 << 29) - 1

# InferenceRequest
_REQ_SESSION, _REQ_INPUTS, _REQ_OUTPUTS = 1, 2, 3
# InputBatch tensor fields by number, and the other fields.
BATCH_TENSORS: dict[int, str] = {
    1: "wavelengths",
    2: "cube",
    3: "mask",
    8: "mesu_index",
    9: "rgb_image",
    10: "frame_id",
}
_BATCH_NUMBERS = {name: number for number, name in BATCH_TENSORS.items()}
_BATCH_BBOXES, _BATCH_POINTS, _BATCH_TEXT, _BATCH_EXTRA = 4, 5, 6, 7
# Tensor
_T_SHAPE, _T_DTYPE, _T_RAW, _T_SHM = 1, 2, 3, 4
# InferenceResponse
_RESP_OUTPUTS, _RESP_METRICS = 1, 2
# Map entries
_KEY, _VALUE = 1, 2


class _Fallback(Exception):
    """The message uses a legal but unusual encoding; let protobuf parse it."""


@dataclass
class TensorView:
    """A ``Tensor`` located in a received buffer, not yet validated."""

    shape: list[int] = field(default_factory=list)
    dtype: int = 0
    payload: str | None = None  # "raw_data" | "shm_ref" | None
    start: int = 0
    length: int = 0


@dataclass
class FastInferenceRequest:
    """An ``InferenceRequest`` decoded without copying tensor payloads (they stay in ``buffer``)."""

    buffer: Any
    session_id: str = ""
    output_specs: list[str] = field(default_factory=list)
    tensors: dict[str, TensorView] = field(default_factory=dict)  # InputBatch field -> view
    extra: dict[str, TensorView] = field(default_factory=dict)  # extra_inputs
    bboxes: pb.BoundingBoxes | None = None
    points: pb.Points | None = None
    text_prompt: str = ""


@dataclass
class FastInferenceResponse:
    """An ``InferenceResponse`` decoded without copying tensor payloads (they stay in ``buffer``)."""

    buffer: Any
    outputs: dict[str, TensorView] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------
# reading


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


def _fields(buf: memoryview, pos: int, end: int) -> Iterator[tuple[int, int, Any]]:
    """Yield (field number, wire type, value): an int for varints, (start, stop) for LEN fields and
    the start offset for fixed32/fixed64 fields."""
    value: int | tuple[int, int]
    while pos < end:
        key, pos = _varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise DecodeError("field number 0")
        if number > _MAX_FIELD_NUMBER:
            raise _Fallback  # protobuf decides what an out-of-range tag means
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
            value, pos = pos, pos + 8
        elif wire == _I32:
            if pos + 4 > end:
                raise DecodeError("truncated fixed32")
            value, pos = pos, pos + 4
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


def _tensor_entry(buf: memoryview, start: int, end: int) -> tuple[str, TensorView]:
    """One ``map<string, Tensor>`` entry; a missing key is "" and a missing value an empty Tensor."""
    key, tensor = "", None
    for number, wire, value in _fields(buf, start, end):
        if number not in (_KEY, _VALUE) or wire != _LEN:
            raise _Fallback  # protobuf keeps an entry with a foreign field as an unknown field
        if number == _KEY:
            key = _text(buf, value)
        elif number == _VALUE:
            if tensor is not None:
                raise _Fallback  # a repeated message value is merged by protobuf
            tensor = _tensor(buf, *value)
    return key, tensor if tensor is not None else TensorView()


def parse_inference_request(data: bytes) -> FastInferenceRequest | pb.InferenceRequest:
    """Decode a serialized ``InferenceRequest``; returns the protobuf message for unusual encodings."""
    try:
        return _parse_request(data)
    except _Fallback:
        return pb.InferenceRequest.FromString(data)


def _parse_request(data: bytes) -> FastInferenceRequest:
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
        _parse_batch(buf, *batches[0], request)
    return request


def _parse_batch(buf: memoryview, start: int, end: int, request: FastInferenceRequest) -> None:
    bboxes: list[bytes] = []
    points: list[bytes] = []
    for number, wire, value in _fields(buf, start, end):
        name = BATCH_TENSORS.get(number)
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
            key, tensor = _tensor_entry(buf, *value)
            request.extra[key] = tensor
    # Concatenated serializations merge exactly like repeated occurrences of the field.
    if bboxes:
        request.bboxes = pb.BoundingBoxes.FromString(b"".join(bboxes))
    if points:
        request.points = pb.Points.FromString(b"".join(points))


def parse_inference_response(data: bytes) -> FastInferenceResponse | pb.InferenceResponse:
    """Decode a serialized ``InferenceResponse``; returns the protobuf message for unusual encodings."""
    try:
        return _parse_response(data)
    except _Fallback:
        return pb.InferenceResponse.FromString(data)


def _parse_response(data: bytes) -> FastInferenceResponse:
    buf = memoryview(data)
    response = FastInferenceResponse(buffer=data)
    for number, wire, value in _fields(buf, 0, len(buf)):
        if number in (_RESP_OUTPUTS, _RESP_METRICS) and wire != _LEN:
            raise _Fallback
        if number == _RESP_OUTPUTS:
            key, tensor = _tensor_entry(buf, *value)
            response.outputs[key] = tensor
        elif number == _RESP_METRICS:
            key, metric = "", 0.0
            for entry_number, entry_wire, entry_value in _fields(buf, *value):
                if entry_number == _KEY:
                    if entry_wire != _LEN:
                        raise _Fallback
                    key = _text(buf, entry_value)
                elif entry_number == _VALUE:
                    if entry_wire != _I32:
                        raise _Fallback
                    metric = float(np.frombuffer(buf, dtype="<f4", count=1, offset=entry_value)[0])
                else:  # protobuf keeps an entry with a foreign field as an unknown field, not a metric
                    raise _Fallback
            response.metrics[key] = metric
    return response


def view_array(buffer: Any, view: TensorView, *, field: str) -> np.ndarray:
    """Validate ``view`` like :func:`codec.decode` and return a read-only numpy view into ``buffer``."""
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
    array = np.frombuffer(buffer, dtype=dtype, count=count, offset=view.start if count else 0)
    if array.flags.writeable:  # a bytearray or writable memoryview: keep the read-only contract
        array.flags.writeable = False
    return array.reshape(view.shape)


def view_torch(buffer: Any, view: TensorView, *, field: str) -> Any:
    """:func:`view_array` as a CPU torch tensor sharing the buffer's memory."""
    import torch  # optional (the gateway and light clients don't install it), so imported on use

    array = view_array(buffer, view, field=field)
    with warnings.catch_warnings():
        # Read-only by construction; the engine never writes into its inputs.
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(array)


def response_arrays(
    response: FastInferenceResponse | pb.InferenceResponse,
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """The outputs (read-only numpy views, fields named ``outputs[name]``) and metrics of a response."""
    if isinstance(response, pb.InferenceResponse):
        outputs = {
            name: codec.decode(tensor, field=f"outputs[{name}]") for name, tensor in response.outputs.items()
        }
        return outputs, dict(response.metrics)
    outputs = {
        name: view_array(response.buffer, view, field=f"outputs[{name}]")
        for name, view in response.outputs.items()
    }
    return outputs, dict(response.metrics)


# --------------------------------------------------------------------------------------------------
# writing


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


def _length(parts: list[Any]) -> int:
    return sum(len(p) for p in parts)


def _len_field(number: int, parts: list[Any]) -> list[Any]:
    return [_key(number, _LEN) + _put_varint(_length(parts)), *parts]


def _string_field(number: int, text: str) -> bytes:
    data = text.encode("utf-8")
    return _key(number, _LEN) + _put_varint(len(data)) + data


def tensor_parts(array: Any, *, field: str) -> list[Any]:
    """A ``Tensor`` message as [header bytes, payload buffer]; the payload is not copied (unless the
    array must first be made contiguous or little-endian)."""
    code, array = codec.wire_array(array, field=field)
    payload = memoryview(array).cast("B") if array.size else b""
    shape = b"".join(_put_varint(d) for d in array.shape)
    head = b""
    if shape:
        head += _key(_T_SHAPE, _LEN) + _put_varint(len(shape)) + shape
    head += _key(_T_DTYPE, _VARINT) + _put_varint(code)
    head += _key(_T_RAW, _LEN) + _put_varint(len(payload))
    return [head, payload]


def _sorted_keys(mapping: Mapping[str, Any]) -> list[str]:
    # The order of upb's (protobuf's default backend's) deterministic serialisation: by UTF-8 bytes,
    # except that a key comes after the keys it is a prefix of ("ab", "a", "b", ""), as if every key
    # ended in a sentinel above any byte. Any order decodes the same; this one makes the bytes equal.
    return sorted(mapping, key=lambda k: (*k.encode("utf-8"), 256))


def _tensor_map(number: int, entries: dict[str, list[Any]]) -> list[Any]:
    out: list[Any] = []
    for name in _sorted_keys(entries):
        out += _len_field(number, [_string_field(_KEY, name), *_len_field(_VALUE, entries[name])])
    return out


def encode_inference_request(
    session_id: str,
    tensors: Mapping[str, Any],
    output_specs: Iterable[str] = (),
    *,
    extra_inputs: Mapping[str, Any] | None = None,
    bboxes: pb.BoundingBoxes | None = None,
    points: pb.Points | None = None,
    text_prompt: str = "",
) -> bytes:
    """Serialize an ``InferenceRequest``, copying each array exactly once.

    ``tensors`` maps ``InputBatch`` tensor fields (``cube``, ``wavelengths``, ``mask``, ``rgb_image``,
    ``mesu_index``, ``frame_id``) to numpy arrays, CPU/GPU torch tensors or anything ``np.asarray``
    takes; any other name there is sent as an ``extra_inputs`` entry, as is everything in
    ``extra_inputs`` (which wins on a clash). The result equals
    ``InferenceRequest(...).SerializeToString(deterministic=True)`` of the same request with ``inputs``
    set. Invalid arrays raise :class:`codec.TensorError` naming ``inputs.<field>`` or
    ``inputs.extra_inputs[<name>]``.
    """
    fields: dict[int, list[Any]] = {}
    extra: dict[str, list[Any]] = {}
    for name, value in tensors.items():
        if name in _BATCH_NUMBERS:
            fields[_BATCH_NUMBERS[name]] = tensor_parts(value, field=f"inputs.{name}")
        else:
            extra[name] = tensor_parts(value, field=f"inputs.extra_inputs[{name}]")
    for name, value in (extra_inputs or {}).items():
        extra[name] = tensor_parts(value, field=f"inputs.extra_inputs[{name}]")
    if bboxes is not None:
        fields[_BATCH_BBOXES] = [bboxes.SerializeToString(deterministic=True)]
    if points is not None:
        fields[_BATCH_POINTS] = [points.SerializeToString(deterministic=True)]
    batch: list[Any] = []
    for number in sorted(fields):
        if number > _BATCH_TEXT and text_prompt:  # field 6 goes between points and extra_inputs
            batch.append(_string_field(_BATCH_TEXT, text_prompt))
            text_prompt = ""
        if number > _BATCH_EXTRA and extra:
            batch += _tensor_map(_BATCH_EXTRA, extra)
            extra = {}
        batch += _len_field(number, fields[number])
    if text_prompt:
        batch.append(_string_field(_BATCH_TEXT, text_prompt))
    batch += _tensor_map(_BATCH_EXTRA, extra)

    out: list[Any] = []
    if session_id:
        out.append(_string_field(_REQ_SESSION, session_id))
    out += _len_field(_REQ_INPUTS, batch)
    out += [_string_field(_REQ_OUTPUTS, spec) for spec in output_specs]
    return b"".join(out)


def _float32_bits(value: float) -> bytes:
    # Like protobuf's double -> float conversion: out-of-range values become +-inf, NaN stays NaN.
    with np.errstate(over="ignore", invalid="ignore"):
        return np.float32(value).astype("<f4").tobytes()


def encode_inference_response(tensors: Mapping[str, Any], metrics: Mapping[str, float]) -> bytes:
    """Serialize an ``InferenceResponse``, copying each output tensor exactly once (in the final join).

    The result equals ``InferenceResponse(...).SerializeToString(deterministic=True)``; outputs that
    cannot be encoded raise :class:`codec.TensorError` naming ``outputs['<name>']``.
    """
    entries = {name: tensor_parts(value, field=f"outputs[{name!r}]") for name, value in tensors.items()}
    out = _tensor_map(_RESP_OUTPUTS, entries)
    for name in _sorted_keys(metrics):
        entry = _string_field(_KEY, name) + _key(_VALUE, _I32) + _float32_bits(float(metrics[name]))
        out.append(_key(_RESP_METRICS, _LEN) + _put_varint(len(entry)) + entry)
    return b"".join(out)


def identity(data: bytes) -> bytes:
    """A grpc serializer for requests that are already bytes."""
    return data
