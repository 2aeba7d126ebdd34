"""``cuvis-gateway``: the stateless, session-affine front door of a cuvis-ai cluster.

Clients speak ``cuvis_ai.v1.CuvisAIService`` (plus health and reflection) to any gateway replica;
each call is forwarded, without decoding its body, to the worker that holds its session
(:mod:`cuvis_cluster.gateway.proxy`, :mod:`cuvis_cluster.gateway.router`). The session map lives in
Redis (:mod:`cuvis_cluster.routing.redis_schema`), so replicas share nothing but Redis.

A SIGTERM/SIGINT during start-up (waiting for Redis, binding) cancels it: what was opened is closed
and the process exits with 128 + the signal number and a one-line reason on stderr.

Shutdown on SIGTERM/SIGINT once serving: health NOT_SERVING, the listening socket closes, clients get
GOAWAY, running calls and Train streams get ``--grace-seconds``; a second signal stops at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import socket
import sys

import grpc

from cuvis_cluster import __version__
from cuvis_cluster.common.serving import ShutdownSignal, StartupInterrupted, configure_logging
from cuvis_cluster.common.settings import GatewaySettings
from cuvis_cluster.common.telemetry import GatewayMetrics, serve_metrics
from cuvis_cluster.gateway.frontend import FrontEnd
from cuvis_cluster.gateway.h2frames import H2Limits, SlabPool
from cuvis_cluster.gateway.own_services import LOCAL_METHODS, LOCAL_PATHS, OPEN_PATHS, LocalServices
from cuvis_cluster.gateway.placement import PlacementPolicy
from cuvis_cluster.gateway.registry import Registry, grpc_probe
from cuvis_cluster.gateway.router import SessionRouter
from cuvis_cluster.gateway.security import ServerTls, TokenFile, client_tls, read_cluster_token
from cuvis_cluster.gateway.upstreams import Upstreams
from cuvis_cluster.routing.metadata import CLUSTER_TOKEN_METADATA

log = logging.getLogger("cuvis_cluster.gateway")

DESCRIPTION = (
    "Routes CUVIS.AI sessions to the workers that hold them (stateless; the session map is in Redis)."
)


class Gateway:
    """One gateway process: front end, router, registry, local services, metrics."""

    def __init__(
        self,
        settings: GatewaySettings,
        *,
        metrics: GatewayMetrics | None = None,
        policy: PlacementPolicy | None = None,
        poll_interval: float = 0.5,
    ) -> None:
        if not settings.redis_url:
            raise SystemExit("cuvis-gateway: --redis-url is required (the session routes live in Redis)")
        self.settings = settings
        self.metrics = metrics or GatewayMetrics()
        self.metrics.info.info({"version": __version__})
        self.policy = policy
        self.poll_interval = poll_interval
        self.server: asyncio.AbstractServer | None = None
        self.address = settings.listen
        self.stopping = False
        self.tls: ServerTls | None = None
        self._handshakes: set[asyncio.Task] = set()
        self._accept_task: asyncio.Task | None = None
        self._tls_socket: socket.socket | None = None

    async def start(self) -> None:
        s = self.settings
        if s.tls_client_ca and not s.tls_cert:
            raise SystemExit(
                "cuvis-gateway: --tls-client-ca needs --tls-cert and --tls-key (mTLS runs on TLS)"
            )
        if bool(s.tls_cert) != bool(s.tls_key):
            raise SystemExit("cuvis-gateway: --tls-cert and --tls-key must be given together")
        self.tls = ServerTls(s.tls_cert, s.tls_key, s.tls_client_ca) if s.tls_cert and s.tls_key else None
        tokens = TokenFile(s.auth_token_file) if s.auth_token_file else None
        worker_ssl = None
        probe_credentials = None
        if s.worker_tls_ca or s.worker_tls_cert:
            worker_ssl = client_tls(s.worker_tls_ca, s.worker_tls_cert, s.worker_tls_key)
            probe_credentials = grpc.ssl_channel_credentials(
                root_certificates=s.worker_tls_ca.read_bytes() if s.worker_tls_ca else None,
                private_key=s.worker_tls_key.read_bytes() if s.worker_tls_key else None,
                certificate_chain=s.worker_tls_cert.read_bytes() if s.worker_tls_cert else None,
            )

        cluster_token = read_cluster_token(s.cluster_token_file)
        probe_metadata = ((CLUSTER_TOKEN_METADATA, cluster_token.decode()),) if cluster_token else ()

        async def probe(address: str) -> tuple[str, str]:
            return await grpc_probe(address, credentials=probe_credentials, metadata=probe_metadata)

        self.registry = Registry(
            s.redis_url,  # type: ignore[arg-type]
            heartbeat_ttl=s.heartbeat_ttl_seconds,
            tombstone_ttl=s.idle_timeout_seconds,
            metrics=self.metrics,
            poll_interval=self.poll_interval,
            probe=probe,
        )
        self.local = LocalServices(self.registry)
        self.local.start()
        limits = http2_limits(s)
        pool = SlabPool(limits.read_buffer, limits.pooled_buffers)
        self.upstreams = Upstreams(
            ssl_context=worker_ssl,
            server_name=s.worker_tls_server_name,
            pool=pool,
            limits=worker_limits(s, limits),
            connect_timeout=s.worker_connect_timeout_seconds,
        )
        self.router = SessionRouter(
            self.registry,
            local_address=f"local:{self.local.address}",
            local_paths=LOCAL_PATHS,
            local_methods=LOCAL_METHODS,
            open_paths=OPEN_PATHS,
            route_cache_seconds=s.route_cache_seconds,
            policy=self.policy,
            tokens=tokens,
            mutual_tls=bool(s.tls_client_ca),
            metrics=self.metrics,
            max_message_bytes=s.max_message_bytes,
            cluster_token=cluster_token,
            settings=s,
        )
        self.frontend = FrontEnd(self.router, self.upstreams, metrics=self.metrics, pool=pool, limits=limits)
        self.upstreams.on_lost = lambda address, exc: self.registry.connection_failed(address)
        self.registry.on_lost.append(self._worker_lost)
        self.registry.listeners.append(self._update_health)
        self.registry.start()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.registry.polled_once.wait(), 5.0)

        loop = asyncio.get_running_loop()
        host, _, port = s.listen.rpartition(":")
        try:
            if self.tls is None:
                self.server = await loop.create_server(
                    self.frontend.protocol_factory, host.strip("[]") or None, int(port), reuse_address=True
                )
                sockname = self.server.sockets[0].getsockname()
            else:
                # TLS connections are accepted here and wrapped with the *current* SSLContext, so that
                # rotated certificate files apply to new connections without a restart.
                self._tls_socket = socket.create_server((host.strip("[]"), int(port)), backlog=1024)
                self._tls_socket.setblocking(False)
                sockname = self._tls_socket.getsockname()
                self._accept_task = asyncio.ensure_future(self._accept_tls(self._tls_socket))
        except OSError as exc:
            raise SystemExit(f"cuvis-gateway: cannot listen on {s.listen}: {exc.strerror or exc}") from None
        self.address = f"{host}:{sockname[1]}"
        serve_metrics(self.metrics.registry, s.metrics_host, s.metrics_port)
        log.info(
            "gateway on %s (%s), Redis %s, local services on %s",
            self.address,
            "mTLS" if s.tls_client_ca else "TLS" if self.tls else "plaintext",
            self.registry.redis_url,  # the password masked
            self.local.address,
        )

    # -- TLS ---------------------------------------------------------------------------------------
    async def _accept_tls(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, _peer = await loop.sock_accept(listener)
            except asyncio.CancelledError:
                raise
            except OSError as exc:
                log.warning("accept failed: %s", exc)
                await asyncio.sleep(0.1)
                continue
            task = asyncio.ensure_future(self._start_tls(conn))
            self._handshakes.add(task)
            task.add_done_callback(self._handshakes.discard)

    async def _start_tls(self, conn: socket.socket) -> None:
        assert self.tls is not None
        loop = asyncio.get_running_loop()
        link = self.frontend.protocol_factory()
        if link.over_capacity:  # refused before spending a TLS handshake on it
            self.frontend.links.discard(link)
            conn.close()
            return
        try:
            await loop.connect_accepted_socket(
                lambda: link,
                conn,
                ssl=self.tls.context(),
                ssl_handshake_timeout=self.settings.http2_handshake_timeout_seconds,
            )
        except Exception as exc:
            log.info("TLS handshake failed: %s", exc)
            self.frontend.links.discard(link)
            conn.close()

    # -- state -------------------------------------------------------------------------------------
    def _worker_lost(self, instance: str, address: str, reason: str, abort: bool) -> None:
        if abort:
            self.upstreams.drop(address)

    def _update_health(self) -> None:
        self.frontend.flush_metrics()
        reg = self.registry
        serving = not self.stopping and reg.redis_up and bool(reg.workers)
        self.local.set_serving(serving, cluster_status=reg.redis_up and not self.stopping)

    async def abandon_start(self) -> None:
        """Close whatever a cancelled :meth:`start` had opened (nothing was served yet)."""
        self.stopping = True
        if self.server is not None:
            self.server.close()
        if self._accept_task is not None:
            self._accept_task.cancel()
        if self._tls_socket is not None:
            self._tls_socket.close()
        upstreams: Upstreams | None = getattr(self, "upstreams", None)
        if upstreams is not None:
            upstreams.close()
        registry: Registry | None = getattr(self, "registry", None)
        if registry is not None:
            await registry.stop()
        local: LocalServices | None = getattr(self, "local", None)
        if local is not None:
            local.shutdown()

    async def stop(self, grace: float | None = None, *, hurry: asyncio.Event | None = None) -> None:
        grace = self.settings.grace_seconds if grace is None else grace
        self.stopping = True
        self.local.set_serving(False, cluster_status=False)
        if self.server is not None:
            self.server.close()
        if self._accept_task is not None:
            self._accept_task.cancel()
        if self._tls_socket is not None:
            self._tls_socket.close()
        drain = asyncio.ensure_future(self.frontend.drain(grace))
        if hurry is not None:
            hurried = asyncio.ensure_future(hurry.wait())
            await asyncio.wait({drain, hurried}, return_when=asyncio.FIRST_COMPLETED)
            hurried.cancel()
            if not drain.done():
                drain.cancel()
                for call in list(self.frontend.calls):
                    call.fail(grpc.StatusCode.UNAVAILABLE, "the gateway is shutting down")
        else:
            await drain
        self.upstreams.close()
        await self.registry.stop()
        self.local.shutdown()
        log.info("gateway stopped")


def http2_limits(s: GatewaySettings) -> H2Limits:
    """The HTTP/2 engine's limits from the ``http2_*`` settings."""
    return H2Limits(
        stream_window=s.http2_stream_window_bytes,
        connection_window=s.http2_connection_window_bytes,
        max_frame=s.http2_max_frame_bytes,
        max_header_list=s.http2_max_header_list_bytes,
        max_header_block=s.http2_max_header_block_bytes,
        max_concurrent_streams=s.http2_max_concurrent_streams,
        write_high_water=s.http2_write_high_water_bytes,
        write_low_water=s.http2_write_low_water_bytes,
        read_buffer=s.http2_read_buffer_bytes,
        min_read=s.http2_min_read_bytes,
        pooled_buffers=s.http2_pooled_buffers,
        max_connections=s.http2_max_connections,
        handshake_timeout=s.http2_handshake_timeout_seconds,
        header_timeout=s.http2_header_timeout_seconds,
        idle_timeout=s.http2_idle_timeout_seconds,
        keepalive=s.http2_keepalive_seconds,
        keepalive_timeout=s.http2_keepalive_timeout_seconds,
        slow_reader_timeout=s.http2_slow_reader_timeout_seconds,
        abuse_window=s.http2_abuse_window_seconds,
        max_resets_per_window=s.http2_max_resets_per_window,
        max_control_frames_per_window=s.http2_max_control_frames_per_window,
        max_control_queue=s.http2_max_control_queue_bytes,
    )


def worker_limits(s: GatewaySettings, limits: H2Limits) -> H2Limits:
    """Worker connections: the same engine, with the worker keepalive (a hung worker is noticed)."""
    return dataclasses.replace(
        limits, keepalive=s.worker_keepalive_seconds, keepalive_timeout=s.worker_keepalive_timeout_seconds
    )


def _install_event_loop(event_loop: str) -> None:
    """uvloop unless ``--event-loop asyncio`` (or uvloop is not installed)."""
    if event_loop == "asyncio":
        return
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


async def serve(settings: GatewaySettings) -> int:
    """Start the gateway, serve until SIGTERM/SIGINT, drain and stop; the exit code.

    A signal before the gateway is ready (waiting for Redis, binding) cancels the start-up, closes
    what it had opened and returns 128 + the signal number after a one-line reason on stderr.
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    hurry = asyncio.Event()
    received: list[int] = []

    def on_signal(signum: int) -> None:
        if stop.is_set():
            log.warning("%s again: stopping without waiting for running calls", signal.Signals(signum).name)
            hurry.set()
        else:
            log.info("%s received: shutting down gracefully", signal.Signals(signum).name)
            received.append(signum)
            stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    gateway = Gateway(settings)
    starting = asyncio.ensure_future(gateway.start())
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if stop.is_set():
        starting.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception, SystemExit):
            await starting
        await gateway.abandon_start()
        return _interrupted(received[0])
    stopping.cancel()
    await starting  # raises SystemExit when the start-up failed (bad flags, port in use)
    print(f"cuvis-gateway ready on {gateway.address} pid {os.getpid()}", flush=True)
    await stop.wait()
    await gateway.stop(hurry=hurry)
    return 0


def _interrupted(signum: int) -> int:
    """The one-line reason on stderr; the exit status is 128 + the signal number."""
    name = signal.Signals(signum).name
    print(f"cuvis-gateway: {name} during start-up; stopped before serving", file=sys.stderr, flush=True)
    return 128 + signum


def main(argv: list[str] | None = None) -> None:
    # First thing: a signal before the event loop has its own handlers (parsing the flags, setting up
    # logging and the loop) ends the start-up here; serve() takes over from then on.
    ShutdownSignal.install(starting=True)
    try:
        settings = GatewaySettings.from_args(argv, prog="cuvis-gateway", description=DESCRIPTION)
        configure_logging(settings.log_level)
        _install_event_loop(settings.event_loop)
        code = asyncio.run(serve(settings))
    except StartupInterrupted as exc:
        code = _interrupted(exc.signum)
    sys.exit(code)


if __name__ == "__main__":
    main()
