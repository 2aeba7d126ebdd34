"""The worker's side of the Inference fast path; the wire format is in :mod:`cuvis_cluster.wire.fastwire`.

The servicer registers :func:`parse_inference_request` as the Inference request deserializer, so a
64 MB cube reaches the engine as a read-only torch view on the buffer grpc received, and it answers with
an :class:`InferenceReply`, which grpc sends as it is: the outputs are serialized once, inside the
handler. This module adds what only the worker needs: the engine's input dict
(:func:`inference_inputs`, same names and rules as :func:`messages.inference_inputs`) and the reply type.
The names the worker and its tests used before the move are re-exported.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from cuvis_cluster.errors import InvalidArgument
from cuvis_cluster.wire.fastwire import (
    FastInferenceRequest,
    TensorView,
    encode_inference_request,
    encode_inference_response,
    parse_inference_request,
    view_array,
    view_torch,
)
from cuvis_cluster.wire.pb import pb
from cuvis_cluster.worker import messages

__all__ = [
    "FastInferenceRequest",
    "InferenceReply",
    "TensorView",
    "encode_inference_request",
    "encode_inference_response",
    "inference_inputs",
    "parse_inference_request",
    "to_array",
    "to_torch",
]

_PROMPT_FIELDS = ("bboxes", "points", "text_prompt")


def to_array(request: FastInferenceRequest, view: TensorView, *, field: str) -> np.ndarray:
    """Validate like :func:`codec.decode` and return a read-only numpy view into the request buffer."""
    return view_array(request.buffer, view, field=field)


def to_torch(request: FastInferenceRequest, view: TensorView, *, field: str) -> torch.Tensor:
    """A CPU tensor sharing the request buffer's memory (read-only), validated like :func:`to_array`."""
    tensor: torch.Tensor = view_torch(request.buffer, view, field=field)
    return tensor


def inference_inputs(request: FastInferenceRequest) -> dict[str, Any]:
    """The engine's input dict, with the same names and rules as ``messages.inference_inputs``."""
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


@dataclass
class InferenceReply:
    """A serialized ``InferenceResponse`` that grpc sends as it is (built inside the handler, so an
    output that cannot be encoded is an error of the call, not of grpc's serializer)."""

    data: bytes

    @classmethod
    def build(cls, tensors: dict[str, torch.Tensor], metrics: dict[str, float]) -> InferenceReply:
        return cls(encode_inference_response(tensors, metrics))

    def SerializeToString(self) -> bytes:  # the name grpc's generated serializers use
        return self.data

    def to_message(self) -> pb.InferenceResponse:
        return pb.InferenceResponse.FromString(self.data)
