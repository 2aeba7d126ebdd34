"""The quota reservation a gateway sends with a call that may create a session.

A gateway that lets a CreateSession (or a placing RestoreTrainRun) through has reserved a slot of
the caller's session quota (:mod:`cuvis_cluster.gateway.quotas`) and names it in
:data:`~cuvis_cluster.routing.metadata.QUOTA_METADATA`. The worker writes it into the route of the
session the call creates, in the same Redis script, which swaps the reservation for the session in the
caller's count. So the session counts from the moment it exists, even when the client or the gateway
gave up on the call before the worker answered (a sync handler runs to its end regardless).

The tag travels from the call's metadata to the session listener through a context variable, set for
as long as the handler runs: the engine creates the session and calls its listeners in that thread.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from typing import Any, NamedTuple

import grpc

from cuvis_cluster.routing.metadata import QUOTA_METADATA


class QuotaTag(NamedTuple):
    subject: str  # the quota subject's key, e.g. "id:alice" or "ip:10.1.2.3"
    ticket: str  # the gateway's reservation for this call


_current: contextvars.ContextVar[QuotaTag | None] = contextvars.ContextVar("cuvis_quota_tag", default=None)


def current() -> QuotaTag | None:
    """The tag of the call this thread is handling, if it has one."""
    return _current.get()


def parse(value: str | bytes) -> QuotaTag | None:
    """``<ticket> <subject>`` (the ticket is hex, the subject may hold spaces); None when malformed."""
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    ticket, _, subject = text.partition(" ")
    if not ticket or not subject:
        return None
    return QuotaTag(subject, ticket)


def from_metadata(metadata: Any) -> QuotaTag | None:
    for key, value in metadata or ():
        if key == QUOTA_METADATA:
            return parse(value)
    return None


def tagged_handler(handler: grpc.RpcMethodHandler, tag: QuotaTag) -> grpc.RpcMethodHandler:
    """``handler`` running with ``tag`` current (unary and server-streaming handlers: the ones that
    can create a session)."""
    kwargs = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary is not None:
        behaviour = handler.unary_unary

        def unary(request: Any, context: grpc.ServicerContext) -> Any:
            token = _current.set(tag)
            try:
                return behaviour(request, context)
            finally:
                _current.reset(token)

        return grpc.unary_unary_rpc_method_handler(unary, **kwargs)
    if handler.unary_stream is not None:
        stream = handler.unary_stream

        def streaming(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            # The generator runs in the handler's thread between yields; the tag stays set for all of it.
            token = _current.set(tag)
            try:
                yield from stream(request, context)
            finally:
                _current.reset(token)

        return grpc.unary_stream_rpc_method_handler(streaming, **kwargs)
    return handler
