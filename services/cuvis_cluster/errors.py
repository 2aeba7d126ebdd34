"""Domain errors shared by every layer.

The engine, the gateway and the codec raise these; only ``cuvis_cluster.wire.status`` knows how each
one maps to a gRPC status code. Nothing here imports grpc, so the engine stays protocol-free.

Messages are written for the person reading the client-side error: name the field, the node, the
session or the path that is wrong, and what would be right.
"""

from __future__ import annotations


class CuvisError(Exception):
    """Base class of every error that has a defined status code."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def __str__(self) -> str:  # keep the message exactly as written
        return self.message


class NotFound(CuvisError):
    """A named thing (session, file, plugin, config, node) does not exist or is not visible to the caller."""


class InvalidArgument(CuvisError):
    """The request itself is wrong: a bad field, tensor, config or path."""


class FailedPrecondition(CuvisError):
    """The request is well formed but the session is not in a state that allows it."""


class ResourceExhausted(CuvisError):
    """A configured limit was reached (sessions per worker, worker capacity, message size)."""


class PermissionDenied(CuvisError):
    """The caller may not do this: a path outside the roots, a plugin that is not allow-listed."""


class Unauthenticated(CuvisError):
    """The caller could not be identified although the server requires it."""


class Unavailable(CuvisError):
    """A dependency is gone or not reachable right now (a worker, Redis); retrying later may succeed."""


class Cancelled(CuvisError):
    """The operation was stopped on request (StopTrain, client cancellation)."""


class DeadlineExceeded(CuvisError):
    """The operation ran past its deadline."""


class Unimplemented(CuvisError):
    """The method exists in the contract but this server does not provide it."""
