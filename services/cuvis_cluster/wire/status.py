"""The one table that maps domain errors to gRPC status codes.

Both servers route every handler through :func:`status_for`. Anything that is not a
:class:`~cuvis_cluster.errors.CuvisError` is a bug: it becomes INTERNAL with a request id that also
appears in the server log, so an operator can find the traceback. One exception: an OSError that only a
bad path causes (too long, a symlink loop, a file where a directory should be) is the client's fault
even when no check named its field first, so it is INVALID_ARGUMENT (see ``CLIENT_PATH_ERRNOS``).
"""

from __future__ import annotations

import errno
import logging
import os
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

# File-system errors that only a bad path causes. The engine checks client paths at its boundary
# (``engine/bounds.py``) and names the field; an OSError like these that still escapes carries a path
# the request named, so it is the client's fault too: INVALID_ARGUMENT, logged as a missed check.
CLIENT_PATH_ERRNOS = frozenset({errno.ENAMETOOLONG, errno.ELOOP, errno.ENOTDIR, errno.EINVAL, errno.EILSEQ})
_SHOWN_PATH = 120

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
    if isinstance(exc, OSError) and exc.filename is not None and exc.errno in CLIENT_PATH_ERRNOS:
        log.warning("unchecked path error in %s (request id %s): %s", method or "rpc", request_id, exc)
        return grpc.StatusCode.INVALID_ARGUMENT, f"a path in the request: {_describe(exc)}"
    log.error("internal error in %s (request id %s)", method or "rpc", request_id, exc_info=exc)
    return grpc.StatusCode.INTERNAL, f"internal error (request id {request_id}); see the server log"


def _describe(exc: OSError) -> str:
    # Only the last component: the whole name is the server's resolved path, which would show the
    # worker's directory layout to the client.
    name = os.path.basename(os.fsdecode(exc.filename).rstrip("/")) or "/"
    if len(name) > _SHOWN_PATH:
        name = f"{name[: _SHOWN_PATH // 2]}...{name[-_SHOWN_PATH // 2 :]} ({len(name)} characters)"
    return f"{exc.strerror or os.strerror(exc.errno or 0)}: {name!r}"


def abort_with(context: grpc.ServicerContext, exc: BaseException, *, method: str = "") -> None:
    """Abort a sync servicer call with the status that the table assigns to ``exc``."""
    code, details = status_for(exc, method=method)
    context.abort(code, details)
