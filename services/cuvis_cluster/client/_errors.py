"""gRPC failures -> :mod:`cuvis_cluster.errors` domain exceptions, plus the CLI's exit codes and hints.

Every error the SDK raises for a failed call is an instance of the domain class that
:data:`cuvis_cluster.wire.status.ERROR_FOR_CODE` assigns to the status code (``NotFound`` for NOT_FOUND,
...), so ``except cuvis_cluster.errors.NotFound`` works the same in client and server code. The exception
also carries what the server said:

* ``exc.code``    the :class:`grpc.StatusCode`,
* ``exc.details`` the server's message (also ``str(exc)``),
* ``exc.method``  the RPC that failed, e.g. ``"Inference"``.

Codes without a domain class (INTERNAL, UNKNOWN, ABORTED, DATA_LOSS, ...) raise :class:`ServerError`.
"""

from __future__ import annotations

import grpc

from cuvis_cluster import errors
from cuvis_cluster.wire.status import ERROR_FOR_CODE


class ServerError(errors.CuvisError):
    """A status with no domain meaning: INTERNAL (a server bug, see its request id), UNKNOWN, DATA_LOSS..."""


def _attach(exc: errors.CuvisError, code: grpc.StatusCode, details: str, method: str) -> errors.CuvisError:
    # errors.CuvisError stays free of grpc (errors imports nothing), so the SDK adds these attributes to the
    # instance; `status_code()` and the docs describe them.
    exc.code = code  # type: ignore[attr-defined]
    exc.details = details  # type: ignore[attr-defined]
    exc.method = method  # type: ignore[attr-defined]
    return exc


def from_rpc_error(exc: grpc.RpcError, method: str) -> errors.CuvisError:
    """The domain exception for a failed call (``exc`` is a ``grpc.Call`` as every real RpcError is)."""
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    details = (exc.details() if hasattr(exc, "details") else None) or ""
    cls = ERROR_FOR_CODE.get(code, ServerError)
    message = details or f"{method} failed with {code.name}"
    return _attach(cls(message), code, details, method)


def local_error(
    cls: type[errors.CuvisError], message: str, *, field: str | None = None, method: str = ""
) -> errors.CuvisError:
    """A domain error raised by the SDK itself (e.g. an unreadable input file); ``method`` stays empty
    unless the error stands for a call's outcome (e.g. the connection check)."""
    exc = cls(message, field=field)
    return _attach(exc, _code_for_class(cls), message, method)


def _code_for_class(cls: type[errors.CuvisError]) -> grpc.StatusCode:
    for code, klass in ERROR_FOR_CODE.items():
        if issubclass(cls, klass):
            return code
    return grpc.StatusCode.UNKNOWN


def status_code(exc: BaseException) -> grpc.StatusCode | None:
    """The status code an SDK exception carries, or ``None`` for anything else."""
    return getattr(exc, "code", None) if isinstance(exc, errors.CuvisError) else None


# ---------------------------------------------------------------------------------------------------------
# CLI exit codes: 10 + the numeric gRPC status code, so every code has its own exit status.
EXIT_OK = 0
EXIT_LOCAL_ERROR = 1  # a problem found on the client side (missing input file, bad --override)
EXIT_USAGE = 2  # argparse's own code for bad command lines
EXIT_NOT_SERVING = 3  # `cuvis-ai health`: reachable, but the health status is not SERVING
EXIT_INTERRUPTED = 130  # Ctrl-C


def exit_code_for(code: grpc.StatusCode) -> int:
    return 0 if code is grpc.StatusCode.OK else 10 + int(code.value[0])


#: What usually causes each status and what to do about it; used by the CLI and docs/troubleshooting.md.
HINTS: dict[grpc.StatusCode, str] = {
    grpc.StatusCode.CANCELLED: "the call was cancelled (Ctrl-C, an early stop, or StopTrain); nothing to fix",
    grpc.StatusCode.UNKNOWN: "the server failed without a status; check the gateway and worker logs",
    grpc.StatusCode.INVALID_ARGUMENT: "the request is wrong; the message names the field, node or input",
    grpc.StatusCode.DEADLINE_EXCEEDED: "the call ran past its deadline; raise --timeout or send less",
    grpc.StatusCode.NOT_FOUND: (
        "an unknown session, config, file or plugin; sessions expire when idle and die with their worker, "
        "so create a new session"
    ),
    grpc.StatusCode.ALREADY_EXISTS: "the thing being created exists already",
    grpc.StatusCode.PERMISSION_DENIED: "a server path outside the allowed roots, or a plugin not allowed",
    grpc.StatusCode.RESOURCE_EXHAUSTED: (
        "every worker is at its session limit, or a message exceeds the size limit; close idle sessions, "
        "add workers, or raise the message size limit on both sides"
    ),
    grpc.StatusCode.FAILED_PRECONDITION: (
        "the session is not ready for this call (no pipeline loaded, no train-run config, training in "
        "progress); do the missing step first"
    ),
    grpc.StatusCode.ABORTED: "the operation was aborted by a conflict; try again",
    grpc.StatusCode.OUT_OF_RANGE: "a value is outside its valid range",
    grpc.StatusCode.UNIMPLEMENTED: "the server does not provide this method (too old, or not a gateway)",
    grpc.StatusCode.INTERNAL: "a server bug; report it with the request id from the message",
    grpc.StatusCode.UNAVAILABLE: (
        "the gateway or the worker holding the session is not reachable; check --address and that the "
        "cluster is up (cuvis-ai health), then retry"
    ),
    grpc.StatusCode.DATA_LOSS: "data was lost or corrupted in transit; retry and report it",
    grpc.StatusCode.UNAUTHENTICATED: "no or wrong credentials; pass --token / a client certificate (mTLS)",
}
