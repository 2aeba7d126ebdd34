"""The worker's Inference fast path: its engine inputs agree with protobuf's on every request.

The wire format itself (encoders, decoders, byte equality with protobuf) is tested in
tests/wire/test_fastwire.py.
"""

from __future__ import annotations

import numpy as np
import pytest
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cuvis_cluster.errors import InvalidArgument
from cuvis_cluster.wire import codec
from cuvis_cluster.wire.pb import pb
from cuvis_cluster.worker import fastpath, messages

RESERVED = {*messages.TENSOR_INPUTS, "bboxes", "points", "text_prompt"}
DTYPES = [np.float32, np.float64, np.int32, np.int64, np.uint8, np.bool_, np.float16, np.uint16]


@st.composite
def arrays(draw):
    dtype = draw(st.sampled_from(DTYPES))
    shape = tuple(draw(st.lists(st.integers(0, 4), min_size=0, max_size=4)))
    count = int(np.prod(shape)) if shape else 1
    raw = draw(
        st.binary(min_size=count * np.dtype(dtype).itemsize, max_size=count * np.dtype(dtype).itemsize)
    )
    if dtype is np.bool_:
        raw = bytes(b & 1 for b in raw)
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


names = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=12)


@st.composite
def requests(draw):
    batch = pb.InputBatch()
    for field in messages.TENSOR_INPUTS:
        if draw(st.booleans()):
            getattr(batch, field).CopyFrom(codec.encode(draw(arrays())))
    for key in draw(st.lists(names.filter(lambda n: n and n not in RESERVED), max_size=3)):
        batch.extra_inputs[key].CopyFrom(codec.encode(draw(arrays())))
    if draw(st.booleans()):
        box = batch.bboxes.boxes.add(element_id=draw(st.integers(0, 3)), x_min=1.5, y_max=7.0)
        if draw(st.booleans()):
            box.object_id = draw(st.integers(-5, 5))
    if draw(st.booleans()):
        batch.points.points.add(element_id=1, x=2.0, y=3.0, type=draw(st.sampled_from([0, 1, 2, 3])))
    batch.text_prompt = draw(names)
    return pb.InferenceRequest(
        session_id=draw(names), inputs=batch, output_specs=draw(st.lists(names, max_size=3))
    )


def _expected(message: pb.InferenceRequest) -> tuple:
    return (
        message.session_id,
        list(message.output_specs),
        {
            k: (list(v.shape), str(v.dtype), v.numpy().tobytes())
            for k, v in _inputs(message).items()
            if _is_t(v)
        },
        {k: v for k, v in _inputs(message).items() if not _is_t(v)},
    )


def _is_t(value) -> bool:
    return hasattr(value, "numpy")


def _inputs(message: pb.InferenceRequest) -> dict:
    return messages.inference_inputs(message.inputs)


def _actual(data: bytes) -> tuple:
    parsed = fastpath.parse_inference_request(data)
    if isinstance(parsed, pb.InferenceRequest):  # fell back to protobuf
        return _expected(parsed)
    inputs = fastpath.inference_inputs(parsed)
    return (
        parsed.session_id,
        parsed.output_specs,
        {k: (list(v.shape), str(v.dtype), v.numpy().tobytes()) for k, v in inputs.items() if _is_t(v)},
        {k: v for k, v in inputs.items() if not _is_t(v)},
    )


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests())
def test_fast_decoder_matches_protobuf(message):
    data = message.SerializeToString()
    assert _actual(data) == _expected(pb.InferenceRequest.FromString(data))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests(), st.data())
def test_corrupted_bytes_fail_or_agree_like_protobuf(message, data):
    raw = bytearray(message.SerializeToString())
    if not raw:
        return
    for _ in range(data.draw(st.integers(1, 3))):
        pos = data.draw(st.integers(0, len(raw) - 1))
        raw[pos] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(raw)))
    blob = bytes(raw[:cut])
    try:
        reference = pb.InferenceRequest.FromString(blob)
    except DecodeError:
        with pytest.raises(DecodeError):
            _decode_fully(blob)
        return
    try:
        expected = _expected(reference)
    except InvalidArgument as exc:  # e.g. a tensor whose byte count no longer matches its shape
        with pytest.raises(InvalidArgument) as info:
            _actual(blob)
        assert info.value.field == exc.field
        return
    assert _actual(blob) == expected


def _decode_fully(blob: bytes) -> None:
    parsed = fastpath.parse_inference_request(blob)
    if not isinstance(parsed, pb.InferenceRequest):
        fastpath.inference_inputs(parsed)


def test_cube_is_a_view_on_the_received_buffer_not_a_copy():
    cube = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)
    data = pb.InferenceRequest(
        session_id="s", inputs=pb.InputBatch(cube=codec.encode(cube))
    ).SerializeToString()
    parsed = fastpath.parse_inference_request(data)
    tensor = fastpath.inference_inputs(parsed)["cube"]
    assert np.array_equal(tensor.numpy(), cube)
    start = np.frombuffer(data, dtype=np.uint8).ctypes.data
    assert start <= tensor.data_ptr() and tensor.data_ptr() + cube.nbytes <= start + len(data)


def test_errors_name_the_field():
    bad = pb.Tensor(shape=[2, 2], dtype=pb.D_TYPE_FLOAT32, raw_data=b"\0" * 12)
    data = pb.InferenceRequest(inputs=pb.InputBatch(cube=bad)).SerializeToString()
    with pytest.raises(InvalidArgument) as info:
        fastpath.inference_inputs(fastpath.parse_inference_request(data))
    assert info.value.field == "inputs.cube"
    assert "16" in str(info.value) and "12" in str(info.value)

    shm = pb.Tensor(shape=[1], dtype=pb.D_TYPE_FLOAT32, shm_ref=pb.ShmRef(name="x", byte_size=4))
    data = pb.InferenceRequest(inputs=pb.InputBatch(extra_inputs={"aux": shm})).SerializeToString()
    with pytest.raises(InvalidArgument, match="shm_ref") as info:
        fastpath.inference_inputs(fastpath.parse_inference_request(data))
    assert info.value.field == "inputs.extra_inputs['aux']"


def test_merged_duplicate_fields_fall_back_to_protobuf():
    one = pb.InferenceRequest(
        session_id="a", inputs=pb.InputBatch(cube=codec.encode(np.zeros((1, 1, 1, 2), np.float32)))
    )
    two = pb.InferenceRequest(inputs=pb.InputBatch(text_prompt="hi"))
    data = one.SerializeToString() + two.SerializeToString()  # protobuf merges the two InputBatch fields
    parsed = fastpath.parse_inference_request(data)
    assert isinstance(parsed, pb.InferenceRequest)
    assert parsed.inputs.text_prompt == "hi" and parsed.inputs.HasField("cube")


def test_reply_carries_the_encoded_response():
    reply = fastpath.InferenceReply.build({"a": np.arange(3, dtype=np.int32)}, {"m": 2.0})
    message = reply.to_message()
    assert reply.SerializeToString() == message.SerializeToString(deterministic=True)
    assert np.array_equal(codec.decode(message.outputs["a"]), [0, 1, 2]) and message.metrics["m"] == 2.0
