"""The one table that maps domain errors to gRPC status codes.

Both servers route every handler through :func:`status_for`. Anything that is not a
:class:`~cuvis_cluster.errors.CuvisError` is a bug: it becomes INTERNAL with a request id that also
appears in the server log, so an operator can find the traceback.
"""

from __future__ import annotations

import logging
import uuid

import grpc

from cuvis_cluster import errors

log = logging.getLogger(__name__)

STATUS_TABLE: dict[type[errors.CuvisError], grpc.StatusCode] = {
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.Cancelled: grpc.StatusCode.CANCELLED,
    errors.DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    errors.Unimplemented: grpc.StatusCode.UNIMPLEMENTED,
}

# Inverse direction, for clients that want domain errors back from a status code.
ERROR_FOR_CODE: dict[grpc.StatusCode, type[errors.CuvisError]] = {v: k for k, v in STATUS_TABLE.items()}


def status_for(exc: BaseException, *, method: str = "") -> tuple[grpc.StatusCode, str]:
    """Return the status code and human-readable details for ``exc``.

    Domain errors keep their message verbatim. Anything else is logged with a fresh request id and
    reported as INTERNAL carrying that id, never the raw exception text of an unexpected failure.
    """
    for cls in type(exc).__mro__:
        code = STATUS_TABLE.get(cls)
        if code is not None:
            return code, str(exc)
    request_id = uuid.uuid4().hex[:12]
    log.error("internal error in %s (request id %s)", method or "rpc", request_id, exc_info=exc)
    return grpc.StatusCode.INTERNAL, f"internal error (request id {request_id}); see the server log"


def abort_with(context: grpc.ServicerContext, exc: BaseException, *, method: str = "") -> None:
    """Abort a sync servicer call with the status that the table assigns to ``exc``."""
    code, details = status_for(exc, method=method)
    context.abort(code, details)
