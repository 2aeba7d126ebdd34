"""gRPC server bootstrap shared by ``cuvis-worker`` and ``cuvis-gateway``.

One :class:`GrpcServer` owns everything a production gRPC server needs besides the services
themselves:

* channel options: message-size limits (both directions), keepalive, no ``SO_REUSEPORT`` so that
  a port already in use is an error instead of a silently shared socket;
* plaintext, TLS or mTLS credentials from PEM files, re-read when the files change;
* ``grpc.health.v1`` with an overall status (``""``) and one status per served service;
* server reflection under both ``grpc.reflection.v1`` and ``grpc.reflection.v1alpha``;
* the RPC metrics interceptor (:class:`RpcMetricsInterceptor`);
* graceful shutdown on SIGTERM/SIGINT (:class:`ShutdownSignal`, :meth:`GrpcServer.shutdown`).

Typical use::

    server = GrpcServer(settings, metrics=metrics)
    server.add_service(SERVICE_NAME, lambda s: pb_grpc.add_CuvisAIServiceServicer_to_server(servicer, s))
    server.start()
    ShutdownSignal.install().wait()
    server.shutdown(settings.grace_seconds)
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent import futures
from pathlib import Path
from typing import Any, Protocol

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from grpc_reflection.v1alpha import reflection_pb2 as reflection_v1alpha_pb2

from cuvis_cluster.common.telemetry import RedactingFilter, RpcMetrics
from cuvis_cluster.wire.descriptors import documented_pool

log = logging.getLogger(__name__)

HEALTH_SERVICE_NAME = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
REFLECTION_V1ALPHA_SERVICE_NAME = reflection.SERVICE_NAME
REFLECTION_V1_SERVICE_NAME = "grpc.reflection.v1.ServerReflection"
OVERALL = ""  # the health service name that stands for the whole server

# Keepalive: the server pings a silent connection every KEEPALIVE_TIME_S and drops it when the ping is
# not answered within KEEPALIVE_TIMEOUT_S, so a vanished client of a long Train stream is noticed.
KEEPALIVE_TIME_S = 60.0
KEEPALIVE_TIMEOUT_S = 20.0
# Peers may ping this often without being sent GOAWAY "too_many_pings". Gateways ping each worker
# connection with calls open every ``worker_keepalive_seconds`` (1 s by default, at least this), so that
# a hung worker is declared lost within seconds; the SDK's own keepalive pings far less often.
CLIENT_MIN_PING_INTERVAL_S = 0.5


class ServerSettings(Protocol):
    """The subset of ``WorkerSettings`` / ``GatewaySettings`` the bootstrap reads."""

    listen: str
    max_message_bytes: int
    tls_cert: Path | None
    tls_key: Path | None
    tls_client_ca: Path | None


# --------------------------------------------------------------------------------------------------
# options and credentials


def server_options(
    max_message_bytes: int,
    *,
    keepalive_time_s: float = KEEPALIVE_TIME_S,
    keepalive_timeout_s: float = KEEPALIVE_TIMEOUT_S,
    client_min_ping_interval_s: float = CLIENT_MIN_PING_INTERVAL_S,
) -> list[tuple[str, Any]]:
    """Channel arguments of every server we run."""
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", int(keepalive_time_s * 1000)),
        ("grpc.keepalive_timeout_ms", int(keepalive_timeout_s * 1000)),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", int(client_min_ping_interval_s * 1000)),
        ("grpc.http2.max_pings_without_data", 0),
        # Linux grpc binds with SO_REUSEPORT by default, which lets two servers share one port unnoticed.
        ("grpc.so_reuseport", 0),
    ]


class _PemFiles:
    """Certificate, key and optional client CA read from disk; re-read when any file changes."""

    def __init__(self, cert: Path, key: Path, client_ca: Path | None) -> None:
        self.paths = [Path(cert), Path(key)] + ([Path(client_ca)] if client_ca else [])
        self._stamp = self._stat()
        self._lock = threading.Lock()

    def _stat(self) -> tuple[tuple[int, int], ...]:
        stamps = []
        for path in self.paths:
            try:
                st = path.stat()
            except OSError as exc:
                raise ValueError(f"TLS file {path} cannot be read: {exc.strerror}") from exc
            stamps.append((st.st_mtime_ns, st.st_size))
        return tuple(stamps)

    def configuration(self) -> grpc.ServerCertificateConfiguration:
        cert, key, *ca = (p.read_bytes() for p in self.paths)
        return grpc.ssl_server_certificate_configuration(
            [(key, cert)], root_certificates=ca[0] if ca else None
        )

    def fetch_if_changed(self) -> grpc.ServerCertificateConfiguration | None:
        """Called by grpc before each handshake; ``None`` keeps the current configuration."""
        with self._lock:
            try:
                stamp = self._stat()
                if stamp == self._stamp:
                    return None
                config = self.configuration()
            except (OSError, ValueError) as exc:  # half-written rotation: keep serving the old files
                log.warning("TLS files changed but cannot be loaded yet (%s); keeping the current ones", exc)
                return None
            self._stamp = stamp
            log.info("TLS certificate files changed; new handshakes use the new ones")
            return config


def server_credentials(
    cert: Path | None, key: Path | None, client_ca: Path | None = None
) -> grpc.ServerCredentials | None:
    """TLS credentials from PEM files, or ``None`` for plaintext.

    With ``client_ca`` clients must present a certificate signed by it (mTLS). The files are checked
    before every handshake and reloaded when they change, so certificate rotation needs no restart.
    """
    if cert is None and key is None:
        if client_ca is not None:
            raise ValueError("tls_client_ca needs tls_cert and tls_key: mTLS runs on top of TLS")
        return None
    if cert is None or key is None:
        raise ValueError("tls_cert and tls_key must be given together")
    files = _PemFiles(cert, key, client_ca)
    return grpc.dynamic_ssl_server_credentials(
        files.configuration(), files.fetch_if_changed, require_client_authentication=client_ca is not None
    )


# --------------------------------------------------------------------------------------------------
# reflection


def _reflection_v1_file() -> None:
    """Make ``grpc.reflection.v1`` known to the default descriptor pool.

    grpcio-reflection ships only the v1alpha protocol. v1 is the same protocol (identical messages and
    field numbers) in another package, so its descriptor is derived from v1alpha's; this lets
    ``describe grpc.reflection.v1.ServerReflection`` work like for any other service.
    """
    pool = descriptor_pool.Default()
    name = "grpc/reflection/v1/reflection.proto"
    try:
        pool.FindFileByName(name)
        return
    except KeyError:
        pass
    proto = descriptor_pb2.FileDescriptorProto()
    reflection_v1alpha_pb2.DESCRIPTOR.CopyToProto(proto)
    old, new = ".grpc.reflection.v1alpha.", ".grpc.reflection.v1."
    proto.name = name
    proto.package = "grpc.reflection.v1"
    proto.ClearField("options")
    for message in proto.message_type:
        for field in message.field:
            if field.type_name.startswith(old):
                field.type_name = new + field.type_name[len(old) :]
    for service in proto.service:
        for method in service.method:
            method.input_type = new + method.input_type[len(old) :]
            method.output_type = new + method.output_type[len(old) :]
    pool.Add(proto)


def enable_reflection(server: grpc.Server, service_names: Iterable[str]) -> list[str]:
    """Serve reflection (v1 and v1alpha) listing ``service_names`` plus both reflection services."""
    _reflection_v1_file()
    names = list(dict.fromkeys([*service_names, REFLECTION_V1_SERVICE_NAME, REFLECTION_V1ALPHA_SERVICE_NAME]))
    # The documented pool serves the descriptors with their proto comments, so `grpcurl describe`
    # shows them, and resolves `Service.Method` symbols.
    pool = documented_pool()
    servicer = reflection.ReflectionServicer(names, pool=pool)
    reflection.enable_server_reflection(names, server, pool=pool)
    # v1 and v1alpha messages are byte-identical on the wire, so the v1alpha codec serves v1 as well.
    v1_handler = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_v1alpha_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_v1alpha_pb2.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                REFLECTION_V1_SERVICE_NAME, {"ServerReflectionInfo": v1_handler}
            ),
        )
    )
    return names


# --------------------------------------------------------------------------------------------------
# metrics interceptor


class _BadRequest:
    """Stands in for a request body that is not a valid protobuf message."""

    __slots__ = ("error",)

    def __init__(self, error: Exception) -> None:
        self.error = error


class RpcMetricsInterceptor(grpc.ServerInterceptor):
    """Counts every RPC by method and status code, with latency, in-flight calls and payload bytes.

    It also turns an undecodable request body into INVALID_ARGUMENT (grpc's own answer would be
    INTERNAL "Exception deserializing request!", which hides a client error as a server bug).

    Labels are the full method name without the leading slash, e.g.
    ``cuvis_ai.v1.CuvisAIService/Inference``; only registered methods are counted, so the label set is
    bounded by the services the server offers.
    """

    def __init__(self, metrics: RpcMetrics) -> None:
        self.metrics = metrics
        self._cache: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}
        self._lock = threading.Lock()

    def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method
        inner = continuation(handler_call_details)
        if inner is None:
            return None
        # Registered handlers are wrapped once and reused. An interceptor further down the chain may
        # answer with a per-call handler (fencing does); that one is wrapped and the cache follows it,
        # so the next regular call re-wraps once. Both are rare.
        cached = self._cache.get(method)
        if cached is not None and cached[0] is inner:
            return cached[1]
        handler = self._wrap(inner, method.lstrip("/"))
        with self._lock:
            self._cache[method] = (inner, handler)
        return handler

    def _wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        m = self.metrics
        requests, latency, in_flight = m.requests, m.latency.labels(method), m.in_flight.labels(method)
        bytes_in, bytes_out = m.bytes_in.labels(method), m.bytes_out.labels(method)
        deserialize, serialize = handler.request_deserializer, handler.response_serializer
        request_type = method.rsplit("/", 1)[-1]

        def request_deserializer(data: bytes) -> Any:
            bytes_in.inc(len(data))
            if deserialize is None:
                return data
            try:
                return deserialize(data)
            except DecodeError as exc:
                return _BadRequest(exc)

        def response_serializer(message: Any) -> bytes:
            data = serialize(message) if serialize is not None else message
            bytes_out.inc(len(data))
            return data

        def check(request: Any, context: grpc.ServicerContext) -> None:
            if isinstance(request, _BadRequest):
                context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"the request body is not a valid {request_type} request message: {request.error}",
                )

        def finish(context: grpc.ServicerContext, started: float, failed: bool) -> None:
            code = context.code()
            if code is None:
                if failed:
                    code = grpc.StatusCode.UNKNOWN
                elif not context.is_active():
                    code = grpc.StatusCode.CANCELLED
                else:
                    code = grpc.StatusCode.OK
            requests.labels(method, code.name).inc()
            latency.observe(time.perf_counter() - started)
            in_flight.dec()

        def unary_response(behavior):
            def wrapped(request_or_iterator, context):
                started = time.perf_counter()
                in_flight.inc()
                failed = True
                try:
                    if not handler.request_streaming:
                        check(request_or_iterator, context)
                    response = behavior(request_or_iterator, context)
                    failed = False
                    return response
                finally:
                    finish(context, started, failed)

            return wrapped

        def stream_response(behavior):
            def wrapped(request_or_iterator, context):
                started = time.perf_counter()
                in_flight.inc()
                failed = True
                try:
                    if not handler.request_streaming:
                        check(request_or_iterator, context)
                    yield from behavior(request_or_iterator, context)
                    failed = False
                except GeneratorExit:  # the client went away; grpc closes the generator
                    failed = False
                    raise
                finally:
                    finish(context, started, failed)

            return wrapped

        if handler.unary_unary is not None:
            factory, behavior, wrap = grpc.unary_unary_rpc_method_handler, handler.unary_unary, unary_response
        elif handler.unary_stream is not None:
            factory, behavior, wrap = (
                grpc.unary_stream_rpc_method_handler,
                handler.unary_stream,
                stream_response,
            )
        elif handler.stream_unary is not None:
            factory, behavior, wrap = (
                grpc.stream_unary_rpc_method_handler,
                handler.stream_unary,
                unary_response,
            )
        else:
            factory, behavior = grpc.stream_stream_rpc_method_handler, handler.stream_stream
            wrap = stream_response
        if getattr(behavior, "experimental_non_blocking", False):
            # Callback-style handlers (health Watch) manage their own threads; count bytes only.
            return factory(
                behavior, request_deserializer=request_deserializer, response_serializer=response_serializer
            )
        return factory(
            wrap(behavior), request_deserializer=request_deserializer, response_serializer=response_serializer
        )


# --------------------------------------------------------------------------------------------------
# signals


class StartupInterrupted(BaseException):
    """A SIGTERM/SIGINT that arrived while the server was still starting.

    :class:`ShutdownSignal` raises it in the main thread (where Python runs signal handlers), so a
    blocking start-up step (an import, a Redis round trip with retries, a bind) is abandoned at once
    instead of running to its end. It derives from ``BaseException`` like ``KeyboardInterrupt``, so
    ``except Exception`` in library code does not swallow it. ``exit_code`` is the shell convention
    128 + signal number.
    """

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.signal_name = signal.Signals(signum).name
        super().__init__(f"{self.signal_name} during start-up")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class ShutdownSignal:
    """SIGTERM/SIGINT latch: the first signal starts a graceful shutdown, a second one hurries it.

    Installed with ``starting=True`` (first thing in a ``main()``), the first signal raises
    :class:`StartupInterrupted` in the main thread until :meth:`started` is called: a server that is not
    serving yet has nothing to drain, so it abandons its start-up and cleans up what it had opened.
    From :meth:`started` on, signals only set the latch (graceful drain).
    """

    def __init__(self) -> None:
        self.requested = threading.Event()
        self.hurry = threading.Event()
        self.signal_name: str | None = None
        self.starting = False

    @classmethod
    def install(
        cls, signals: Sequence[int] = (signal.SIGTERM, signal.SIGINT), *, starting: bool = False
    ) -> ShutdownSignal:
        latch = cls()
        latch.starting = starting
        for sig in signals:
            signal.signal(sig, latch._handle)
        return latch

    def started(self) -> None:
        """The server is serving: from now on a signal drains it gracefully instead of interrupting."""
        self.starting = False

    def _handle(self, signum: int, _frame: Any) -> None:
        name = signal.Signals(signum).name
        if self.requested.is_set():
            log.warning("%s again: stopping without waiting for running calls", name)
            self.hurry.set()
            return
        self.signal_name = name
        self.requested.set()
        if self.starting:
            raise StartupInterrupted(signum)
        log.info("%s received: shutting down gracefully", name)

    def trigger(self, reason: str = "requested") -> None:
        """Start the shutdown from code (e.g. a Drain RPC or a fatal background error)."""
        self.signal_name = self.signal_name or reason
        self.requested.set()

    def wait(self, timeout: float | None = None) -> bool:
        # Event.wait without a timeout blocks signal delivery on some platforms; poll instead.
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.requested.is_set():
            remaining = 0.5 if deadline is None else min(0.5, deadline - time.monotonic())
            if remaining <= 0:
                return False
            self.requested.wait(remaining)
        return True


# --------------------------------------------------------------------------------------------------
# the server


class GrpcServer:
    """A sync grpc server with health, reflection, metrics, TLS and graceful shutdown.

    Register services with :meth:`add_service` before :meth:`start`; health reports each of them (and
    the overall ``""`` service) SERVING once started.
    """

    def __init__(
        self,
        settings: ServerSettings,
        *,
        metrics: RpcMetrics | None = None,
        interceptors: Sequence[grpc.ServerInterceptor] = (),
        max_workers: int = 16,
        reflection_enabled: bool = True,
        component: str = "server",
    ) -> None:
        self.settings = settings
        self.component = component
        self.host, _, port = settings.listen.rpartition(":")
        self.requested_port = int(port)
        self.port: int | None = None
        chain = ([RpcMetricsInterceptor(metrics)] if metrics is not None else []) + list(interceptors)
        self._pool = futures.ThreadPoolExecutor(
            max_workers=max_workers, thread_name_prefix=f"{component}-rpc"
        )
        self.server = grpc.server(
            self._pool, interceptors=chain, options=server_options(settings.max_message_bytes)
        )
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.services: list[str] = []
        self._reflection = reflection_enabled
        self._started = False
        self._stopped = threading.Event()
        self.credentials = server_credentials(settings.tls_cert, settings.tls_key, settings.tls_client_ca)

    @property
    def address(self) -> str:
        """HOST:PORT actually bound (the real port when ``listen`` asked for port 0)."""
        return f"{self.host}:{self.port if self.port is not None else self.requested_port}"

    def add_service(self, name: str, register: Callable[[grpc.Server], Any]) -> None:
        """Register a service: ``register(server)`` adds its handlers; ``name`` is its full name."""
        if self._started:
            raise RuntimeError("services must be added before start()")
        register(self.server)
        self.services.append(name)

    def start(self) -> None:
        if self._reflection:
            enable_reflection(self.server, [*self.services, HEALTH_SERVICE_NAME])
        target = self.settings.listen
        try:
            if self.credentials is None:
                self.port = self.server.add_insecure_port(target)
            else:
                self.port = self.server.add_secure_port(target, self.credentials)
        except RuntimeError as exc:
            raise OSError(f"cannot listen on {target}: {exc} (port in use or wrong host?)") from exc
        if not self.port:
            raise OSError(f"cannot listen on {target} (is the port in use or the host wrong?)")
        self.server.start()
        self._started = True
        self.set_serving(True)
        log.info(
            "%s serving %s on %s (%s)",
            self.component,
            ", ".join(self.services),
            self.address,
            "mTLS" if self.settings.tls_client_ca else "TLS" if self.credentials else "plaintext",
        )

    def set_serving(self, serving: bool, service: str | None = None) -> None:
        """Set the health of one service, or of every service and the overall status."""
        status = (
            health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in [service] if service is not None else [OVERALL, *self.services]:
            self.health.set(name, status)

    def shutdown(
        self,
        grace: float,
        *,
        before_stop: Iterable[Callable[[], Any]] = (),
        before_cancel: Iterable[Callable[[], Any]] = (),
        hurry: threading.Event | None = None,
    ) -> None:
        """Graceful stop: health NOT_SERVING, run ``before_stop`` hooks, then let running calls finish.

        New calls are refused once the server stops; running calls and streams get ``grace`` seconds,
        after which grpc cancels them. Shortly before that, ``before_cancel`` hooks run so that long
        streams (Train) can end on their own terms, with a final message, instead of being cut off.
        ``hurry`` (set by a second signal) cuts the wait short.
        """
        if self._stopped.is_set():
            return
        self.health.enter_graceful_shutdown()  # NOT_SERVING everywhere, and it stays that way
        for hook in before_stop:
            try:
                hook()
            except Exception:  # a failing hook must not keep the process alive
                log.exception("shutdown hook %r failed", hook)
        if not self._started:
            self._stopped.set()
            return
        started = time.monotonic()
        done = self.server.stop(grace)
        deadline = started + grace + 5.0
        cancel_at = started + max(0.0, grace - min(2.0, grace / 4))
        pending_cancel = list(before_cancel)
        while not done.wait(0.2):
            if pending_cancel and time.monotonic() >= cancel_at:
                for hook in pending_cancel:
                    try:
                        hook()
                    except Exception:
                        log.exception("shutdown hook %r failed", hook)
                pending_cancel = []
            if hurry is not None and hurry.is_set():
                self.server.stop(0).wait(5.0)
                break
            if time.monotonic() > deadline:
                log.warning("%s did not stop within %.1fs of its grace period", self.component, grace)
                break
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._stopped.set()
        log.info("%s stopped", self.component)


def configure_logging(level: str) -> None:
    """Plain timestamped logs on stderr, level from settings, with secrets masked (see
    :func:`cuvis_cluster.common.telemetry.redact`) in every record any root handler writes."""
    logging.basicConfig(
        level=getattr(logging, level, logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s [%(process)d]: %(message)s",
    )
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
