"""Fencing: a restarted worker refuses calls meant for the process that held the address before it.

Session state lives in the worker process; when that process dies and a new one starts at the same
address, a gateway may still route a session's call there. The gateway names the instance it expects
(:data:`cuvis_cluster.routing.metadata.INSTANCE_METADATA`), and this server interceptor answers
NOT_FOUND for any other, naming the lost instance.

The same interceptor, being the one every clustered worker installs, also carries the gateway's quota
reservation of a session-creating call to the session's route (:mod:`cuvis_cluster.worker.quota_tag`).
"""

from __future__ import annotations

from typing import Any

import grpc

from cuvis_cluster.errors import NotFound
from cuvis_cluster.routing.metadata import INSTANCE_METADATA
from cuvis_cluster.wire.status import abort_with
from cuvis_cluster.worker import quota_tag


class _Fencing(grpc.ServerInterceptor):
    """Rejects calls that a gateway routed to an *earlier* process at this address.

    The gateway sends ``x-cuvis-worker-instance: <id>`` (:data:`INSTANCE_METADATA`) with every session
    call, naming the instance its route points at. A different id means the process that held the
    session is gone, and the session state with it. Answer NOT_FOUND naming the lost instance; never
    touch a same-named session here.
    """

    def __init__(self, instance_id: str) -> None:
        self.instance_id = instance_id

    def intercept_service(self, continuation, handler_call_details):
        metadata = handler_call_details.invocation_metadata
        expected = None
        for key, value in metadata or ():
            if key == INSTANCE_METADATA:
                expected = value
                break
        handler = continuation(handler_call_details)
        if handler is None:
            return handler
        if expected is not None and expected != self.instance_id:
            return _refusing_handler(handler, expected)
        tag = quota_tag.from_metadata(metadata)
        return handler if tag is None else quota_tag.tagged_handler(handler, tag)


def _refusing_handler(handler: grpc.RpcMethodHandler, expected: str) -> grpc.RpcMethodHandler:
    def message(request: Any) -> str:
        session = getattr(request, "session_id", "") if not isinstance(request, bytes) else ""
        return (
            f"Session {session} not found: it was held by worker instance {expected}, "
            "which was lost or restarted"
        )

    def unary(request: Any, context: grpc.ServicerContext) -> Any:
        abort_with(context, NotFound(message(request)))

    def streaming(request: Any, context: grpc.ServicerContext) -> Any:
        abort_with(context, NotFound(message(request)))
        yield  # pragma: no cover - abort raises

    kwargs = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(unary, **kwargs)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(streaming, **kwargs)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(lambda it, ctx: unary(None, ctx), **kwargs)
    return grpc.stream_stream_rpc_method_handler(lambda it, ctx: streaming(None, ctx), **kwargs)


def fencing_interceptor(instance_id: str) -> grpc.ServerInterceptor:
    """Server interceptor for ``cuvis-worker``: see :class:`_Fencing`."""
    return _Fencing(instance_id)
