"""Workers trust only the cluster: the cluster credential, checked by a server interceptor.

A gateway authenticates clients; the worker behind it believes what the gateway says (the owner of a
session in ``x-cuvis-owner``, the instance a route points at). That is only safe when nobody else can
call the worker. So gateways send the cluster credential (``cluster_token_file``, the header
:data:`~cuvis_cluster.routing.metadata.CLUSTER_TOKEN_METADATA`) on every call, and a worker that has
the credential refuses calls without it:

* with a token file: every call needs the credential (UNAUTHENTICATED without it);
* with a token file and ``standalone``: CuvisAIService calls without it are served as anonymous, the
  control service (WorkerControlService: Drain, GetWorkerStatus) needs it;
* ``standalone`` without a token file: CuvisAIService calls are served as anonymous, the control
  service is always UNAUTHENTICATED (such a worker cannot be drained remotely);
* neither: every caller is trusted, as before the credential existed; the worker warns at start.

"Anonymous" means the call's ``x-cuvis-*`` metadata is hidden from the service: a client talking to a
standalone worker directly cannot claim to be someone else's gateway-authenticated identity. A call
that presents a credential which is not valid is refused in the first three modes. Health (kubelet
and container probes) and server reflection stay open.

The token file holds one credential per line. Every non-empty line is accepted, and gateways send the
first one, so a credential is rotated without refusing a call: add the new one as a second line
everywhere, wait until every worker has it, move it to the first line and restart the gateways (they
read the file at start), then remove the old line. Workers re-read the file when it changes (a
mounted Kubernetes Secret is updated in place), so they need no restart.
"""

from __future__ import annotations

import hmac
import logging
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, NamedTuple

import grpc

from cuvis_cluster.common.settings import WorkerSettings
from cuvis_cluster.common.telemetry import register_secret
from cuvis_cluster.errors import CuvisError, NotFound, Unauthenticated
from cuvis_cluster.routing.metadata import CLUSTER_TOKEN_METADATA, PREFIX
from cuvis_cluster.wire.pb import SERVICE_NAME, WORKER_CONTROL_SERVICE_NAME
from cuvis_cluster.wire.status import abort_with

log = logging.getLogger(__name__)

# Services every caller may use: probes must work without secrets, and reflection only describes.
OPEN_SERVICES = frozenset(
    {
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    }
)
CHECK_INTERVAL = 1.0  # at most one re-read of the token file per second
REFUSAL_LOG_INTERVAL = 10.0  # at most one warning about refused calls this often

NOT_THROUGH_CLUSTER = (
    "this worker accepts calls only through the cluster: call its gateway, not the worker directly "
    "(the call carries no cluster credential)"
)
INVALID_CREDENTIAL = (
    "this worker accepts calls only through the cluster: the cluster credential of this call is not valid"
)
CONTROL_NEEDS_CREDENTIAL = (
    f"{WORKER_CONTROL_SERVICE_NAME} needs the cluster credential, on a standalone worker too"
)
NO_CREDENTIAL_CONFIGURED = (
    f"{WORKER_CONTROL_SERVICE_NAME} is refused: this standalone worker has no cluster credential "
    "(--cluster-token-file), so it cannot be controlled remotely"
)


class ClusterCredential:
    """The accepted cluster credentials: every non-empty line of ``path``, re-read when it changes.

    The file is read again at most once per ``check_interval`` while calls arrive (it is a few bytes;
    comparing contents also catches an edit that keeps size and modification time). A file that
    cannot be read at start is an error (``OSError`` or ``ValueError``). One that becomes unreadable
    or empty later keeps the credentials already loaded, with a warning: a half-written rotation must
    not lock the gateways out. The credentials are never logged.
    """

    def __init__(self, path: Path, *, check_interval: float = CHECK_INTERVAL) -> None:
        self.path = Path(path)
        self.check_interval = check_interval
        self._lock = threading.Lock()
        self._content = self.path.read_bytes()
        self._tokens = self._parse(self._content)
        self._checked = time.monotonic()
        self._failure: str | None = None  # the last problem with the file, warned about once

    def _parse(self, content: bytes) -> tuple[bytes, ...]:
        tokens = tuple(line for line in (raw.strip() for raw in content.splitlines()) if line)
        if not tokens:
            raise ValueError(f"the cluster token file {self.path} holds no credential")
        for token in tokens:  # masked in every log line and error text from now on
            register_secret(token)
        return tokens

    @property
    def count(self) -> int:
        return len(self._tokens)

    def _refresh(self) -> None:
        now = time.monotonic()
        # One thread looks at the file; the others keep using the credentials they have.
        if now - self._checked < self.check_interval or not self._lock.acquire(blocking=False):
            return
        try:
            self._checked = now
            try:
                content = self.path.read_bytes()  # follows the link a Secret volume swaps on update
                if content == self._content:
                    return
                self._tokens, self._content = self._parse(content), content
            except (OSError, ValueError) as exc:
                if str(exc) != self._failure:  # once per problem, not once a second
                    self._failure = str(exc)
                    log.warning(
                        "cluster token file cannot be re-read (%s); keeping the current credentials", exc
                    )
                return
            self._failure = None
            log.info("cluster token file %s reloaded: %d accepted credential(s)", self.path, self.count)
        finally:
            self._lock.release()

    def accepts(self, presented: bytes) -> bool:
        """Whether ``presented`` is one of the credentials, compared in constant time."""
        self._refresh()
        found = False
        for token in self._tokens:  # no early exit: the time taken does not say which one matched
            found |= hmac.compare_digest(token, presented)
        return found


class _CallDetails(NamedTuple):
    """What a server interceptor passes down the chain (``grpc.HandlerCallDetails``)."""

    method: str
    invocation_metadata: tuple[Any, ...]


class _AnonymousContext:
    """A servicer context that hides the caller's ``x-cuvis-*`` metadata (owner, instance, credential)."""

    def __init__(self, context: grpc.ServicerContext) -> None:
        self._context = context

    def invocation_metadata(self) -> tuple[Any, ...]:
        return _without_cluster_keys(self._context.invocation_metadata() or ())

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


def _without_cluster_keys(metadata: Iterable[Any]) -> tuple[Any, ...]:
    return tuple(item for item in metadata if not item[0].startswith(PREFIX))


def _presented(metadata: Iterable[Any]) -> bytes | None:
    for key, value in metadata or ():
        if key == CLUSTER_TOKEN_METADATA:
            return value if isinstance(value, bytes) else value.encode("utf-8", "replace")
    return None


def _anonymous(handler: grpc.RpcMethodHandler, owned: Callable[[str], bool]) -> grpc.RpcMethodHandler:
    """``handler`` with its behaviour called on an :class:`_AnonymousContext`.

    The servicer leaves ownership checks to the gateway, which only forwards a call for a session to
    the identity that owns it. An anonymous caller bypasses the gateway, so it is kept off every session
    that has an owner here: such a session does not exist for it (NOT_FOUND, as for another identity).
    No CuvisAIService method streams requests, so the session id is in the one request message.
    """

    def wrap(behavior: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
        def anonymous(request: Any, context: grpc.ServicerContext) -> Any:
            session_id = getattr(request, "session_id", "")
            if session_id and owned(session_id):
                abort_with(context, NotFound(f"Session {session_id} not found"))
            return behavior(request, _AnonymousContext(context))

        return anonymous

    kwargs = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(wrap(handler.unary_unary), **kwargs)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(wrap(handler.unary_stream), **kwargs)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(wrap(handler.stream_unary), **kwargs)
    return grpc.stream_stream_rpc_method_handler(wrap(handler.stream_stream), **kwargs)


class ClusterAuth(grpc.ServerInterceptor):
    """Refuses calls that do not come through the cluster (see the module docstring for the table).

    ``credential`` None with ``standalone`` False would trust everyone: :func:`cluster_auth` installs
    no interceptor then.
    """

    def __init__(self, credential: ClusterCredential | None, *, standalone: bool) -> None:
        self.credential = credential
        self.standalone = standalone
        # Whether a live session has an owner (set once the engine exists; until then none has one).
        self.session_owned: Callable[[str], bool] = lambda session_id: False
        self._anonymous: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}
        self._refusals: dict[str, grpc.RpcMethodHandler] = {}
        self._refused = 0
        self._refusal_logged = 0.0
        self._lock = threading.Lock()

    def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method
        service = method.lstrip("/").partition("/")[0]
        if service in OPEN_SERVICES:
            return continuation(handler_call_details)
        metadata = handler_call_details.invocation_metadata or ()
        presented = _presented(metadata)
        if presented is not None and self.credential is not None and self.credential.accepts(presented):
            return continuation(handler_call_details)
        # Not authenticated by the cluster. Nothing below sees the call's x-cuvis-* metadata, and an
        # unknown method stays UNIMPLEMENTED (so the metrics only ever label served methods).
        inner = continuation(_CallDetails(method, _without_cluster_keys(metadata)))
        if inner is None:
            return None
        if presented is not None:
            return self._refusal(INVALID_CREDENTIAL)
        if self.standalone and service == SERVICE_NAME:
            return self._anonymous_handler(method, inner)
        if self.standalone and service == WORKER_CONTROL_SERVICE_NAME:
            return self._refusal(CONTROL_NEEDS_CREDENTIAL if self.credential else NO_CREDENTIAL_CONFIGURED)
        return self._refusal(NOT_THROUGH_CLUSTER)

    def _anonymous_handler(self, method: str, inner: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        # Wrapped once per method, so that the metrics interceptor above sees a stable handler.
        cached = self._anonymous.get(method)
        if cached is not None and cached[0] is inner:
            return cached[1]
        handler = _anonymous(inner, lambda session_id: self.session_owned(session_id))
        with self._lock:
            self._anonymous[method] = (inner, handler)
        return handler

    def _refusal(self, message: str) -> grpc.RpcMethodHandler:
        """A handler that answers UNAUTHENTICATED without reading the request.

        Any handler kind can refuse any call (the client only sees the status), and a streaming one
        leaves the request body undecoded.
        """
        handler = self._refusals.get(message)
        if handler is None:

            def refuse(requests: Any, context: grpc.ServicerContext) -> Any:
                self._note_refusal(context)
                abort_with(context, Unauthenticated(message))
                yield  # pragma: no cover - abort raises

            handler = grpc.stream_stream_rpc_method_handler(refuse)
            self._refusals[message] = handler
        return handler

    def _note_refusal(self, context: grpc.ServicerContext) -> None:
        """Log refused calls, at most one line per :data:`REFUSAL_LOG_INTERVAL` (a flood must not flood
        the log)."""
        now = time.monotonic()
        with self._lock:
            self._refused += 1
            if now - self._refusal_logged < REFUSAL_LOG_INTERVAL:
                return
            count, self._refused, self._refusal_logged = self._refused, 0, now
        log.warning(
            "refused %d call(s) without a valid cluster credential (latest from %s)", count, context.peer()
        )


def session_owned(engine: Any) -> Callable[[str], bool]:
    """For :attr:`ClusterAuth.session_owned`: whether ``engine`` holds a live session with an owner."""

    def owned(session_id: str) -> bool:
        try:
            return bool(engine.session(session_id).owner)
        except CuvisError:  # unknown or closed: the servicer answers NOT_FOUND itself
            return False

    return owned


def cluster_auth(settings: WorkerSettings) -> ClusterAuth | None:
    """The interceptor for ``settings`` (None: trust any caller), with one log line saying which mode.

    Raises ``OSError`` or ``ValueError`` when the token file cannot be read.
    """
    credential = ClusterCredential(settings.cluster_token_file) if settings.cluster_token_file else None
    if settings.standalone:
        log.info(
            "standalone: calls without the cluster credential are served as anonymous; control RPCs %s",
            "need the credential" if credential else "are refused (no --cluster-token-file)",
        )
        return ClusterAuth(credential, standalone=True)
    if credential is None:
        log.warning(
            "this worker trusts any caller that reaches %s: anyone there can use, close and drain every "
            "session. Behind a gateway, set --cluster-token-file (CUVIS_CLUSTER_TOKEN_FILE) to the "
            "gateways' credential file; serving clients directly, use --standalone",
            settings.listen,
        )
        return None
    log.info(
        "only calls that carry the cluster credential are served (%d accepted, from %s)",
        credential.count,
        credential.path,
    )
    return ClusterAuth(credential, standalone=False)
