"""``cuvis-worker``: one process, one device, many sessions.

Serves ``cuvis_ai.v1.CuvisAIService`` (plus ``grpc.health.v1``, reflection v1/v1alpha and Prometheus
``/metrics``) over the engine. Without ``--redis-url`` it is a complete standalone server; with it, it
also registers itself for routing by the gateways (:mod:`cuvis_cluster.worker.membership`). With
``--cluster-token-file`` it serves only calls that carry the cluster credential, i.e. that come through
its gateways; ``--standalone`` serves clients directly (:mod:`cuvis_cluster.worker.auth`).

A SIGTERM/SIGINT during start-up (importing torch, building the engine, binding, registering in
Redis) abandons it at once: what was opened is closed, a registration that may have reached Redis is
removed, and the process exits with 128 + the signal number and a one-line reason on stderr.

Shutdown on SIGTERM/SIGINT once serving: health goes NOT_SERVING, no new sessions are accepted
(draining), running calls and Train streams get ``--grace-seconds`` to finish, the worker deregisters,
and every session is closed. A second signal stops at once.
"""

from __future__ import annotations

import logging
import os
import platform
import sys
import threading
import uuid
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import cuvis_cluster
from cuvis_cluster.common.serving import GrpcServer, ShutdownSignal, StartupInterrupted, configure_logging
from cuvis_cluster.common.settings import WorkerSettings
from cuvis_cluster.common.telemetry import WorkerMetrics, serve_metrics
from cuvis_cluster.wire.pb import SERVICE_NAME
from cuvis_cluster.worker.auth import cluster_auth, session_owned
from cuvis_cluster.worker.control import WorkerControlServicer
from cuvis_cluster.worker.fencing import fencing_interceptor
from cuvis_cluster.worker.membership import ClusterMembership

log = logging.getLogger("cuvis_cluster.worker")

DESCRIPTION = "Hosts CUVIS.AI sessions and runs hyperspectral pipelines on one device (GPU or CPU)."


def version() -> str:
    try:
        return importlib_metadata.version("cuvis-ai-cluster")
    except importlib_metadata.PackageNotFoundError:
        return "0+unknown"


def bundled_configs_dir() -> Path:
    """The ``configs/`` directory of the source tree this package was installed from (editable install)."""
    return Path(cuvis_cluster.__file__).resolve().parents[2] / "configs"


def resolve_configs_dir(configured: Path) -> Path:
    """``configured`` when it exists; the relative default falls back to the bundled configs.

    So ``cuvis-worker`` works from any working directory. An explicitly configured directory that
    does not exist is an error rather than a silent fallback.
    """
    if configured.is_dir():
        return configured.resolve()
    if not configured.is_absolute() and configured == Path("configs"):
        bundled = bundled_configs_dir()
        if bundled.is_dir():
            log.info("configs/ not found in %s; using the bundled configs at %s", Path.cwd(), bundled)
            return bundled
    raise SystemExit(f"cuvis-worker: configs directory {configured} does not exist (--configs-dir)")


def engine_config(settings: WorkerSettings) -> Any:
    from cuvis_cluster.engine.facade import EngineConfig

    output_dir = settings.output_dir.resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    return EngineConfig(
        configs_dir=resolve_configs_dir(settings.configs_dir),
        data_dir=settings.data_dir.resolve(),
        output_dir=output_dir,
        plugin_dirs=[p.resolve() for p in settings.plugin_dirs],
        extra_roots=[p.resolve() for p in settings.extra_roots],
        max_sessions=settings.max_sessions,
        idle_timeout_seconds=settings.idle_timeout_seconds,
        device=settings.device,
        reap_interval_seconds=settings.reap_interval_seconds,
        class_packages=list(settings.class_packages),
    )


# --------------------------------------------------------------------------------------------------
# device and metrics


def device_info(device: Any) -> dict[str, Any]:
    """Name and memory of the engine's device; memory is 0 on CPU."""
    import torch

    info: dict[str, Any] = {"device": str(device), "name": "cpu", "free_bytes": 0, "total_bytes": 0}
    if getattr(device, "type", "cpu") == "cuda" and torch.cuda.is_available():
        index = device.index if device.index is not None else torch.cuda.current_device()
        free, total = torch.cuda.mem_get_info(index)
        name = torch.cuda.get_device_name(index)
        info.update(device=f"cuda:{index} ({name})", name=name, free_bytes=int(free), total_bytes=int(total))
    return info


def bind_metrics(metrics: WorkerMetrics, engine: Any, settings: WorkerSettings) -> None:
    """Gauges read at scrape time: sessions, capacity, draining and (on CUDA) device memory."""
    sessions = engine.sessions
    metrics.sessions.set_function(lambda: sessions.count)
    metrics.capacity.set(settings.max_sessions)
    metrics.draining.set_function(lambda: 1.0 if sessions.draining else 0.0)
    info = device_info(engine.device)
    metrics.info.info({"version": version(), "device": info["device"], "python": platform.python_version()})
    if info["total_bytes"]:
        import torch

        index = engine.device.index if engine.device.index is not None else torch.cuda.current_device()
        metrics.device_memory.labels("allocated").set_function(lambda: torch.cuda.memory_allocated(index))
        metrics.device_memory.labels("reserved").set_function(lambda: torch.cuda.memory_reserved(index))
        metrics.device_memory.labels("free").set_function(lambda: torch.cuda.mem_get_info(index)[0])
        metrics.device_memory.labels("total").set(info["total_bytes"])
    _count_expired_sessions(metrics, sessions)


def _count_expired_sessions(metrics: WorkerMetrics, sessions: Any) -> None:
    """Count sessions closed by the idle reaper.

    The session manager reports closes without a reason; its reaper calls ``reap()``, which returns
    the ids it closed, so the count is taken there.
    """
    reap = getattr(sessions, "reap", None)
    if reap is None:
        return

    def counting_reap(*args: Any, **kwargs: Any) -> list[str]:
        closed = reap(*args, **kwargs)
        if closed:
            metrics.sessions_expired.inc(len(closed))
        return closed

    sessions.reap = counting_reap


def _follow_draining(server: GrpcServer, sessions: Any, shutdown: ShutdownSignal) -> None:
    """Health follows the draining flag (set by the WorkerControl Drain RPC or by shutdown)."""
    serving = True
    while not shutdown.requested.wait(0.5):
        if serving == bool(sessions.draining):
            serving = not serving
            server.set_serving(serving)
            log.info("health %s (draining=%s)", "SERVING" if serving else "NOT_SERVING", not serving)


def _abandon_start(engine: Any, server: GrpcServer | None, membership: ClusterMembership | None) -> None:
    """Close what an interrupted start-up had opened; deregister when registration had begun.

    Each step is bounded: the server stops without grace (nothing was served), the deregistration is
    one attempt on a fresh Redis connection with short timeouts, and the engine has no sessions yet.
    """
    if server is not None:
        server.shutdown(0)
    if membership is not None:
        membership.abandon()
    if engine is not None:
        engine.shutdown()


# --------------------------------------------------------------------------------------------------
# main


def main(argv: list[str] | None = None) -> None:
    # First thing: from here on a SIGTERM/SIGINT during start-up (parsing, importing torch, building
    # the engine, binding, registering in Redis) abandons the start-up promptly instead of being
    # noticed only once the server runs.
    shutdown = ShutdownSignal.install(starting=True)
    try:
        settings = WorkerSettings.from_args(argv, prog="cuvis-worker", description=DESCRIPTION)
        configure_logging(settings.log_level)
        code = run(settings, shutdown=shutdown)
    except StartupInterrupted as exc:  # before run() had anything to clean up
        code = _interrupted(exc)
    sys.exit(code)


def _interrupted(exc: StartupInterrupted) -> int:
    """The one-line reason on stderr; the exit status is 128 + the signal number."""
    print(
        f"cuvis-worker: {exc.signal_name} during start-up; stopped before serving",
        file=sys.stderr,
        flush=True,
    )
    return exc.exit_code


def run(settings: WorkerSettings, *, shutdown: ShutdownSignal | None = None) -> int:
    """Start the worker, serve until a signal (or a Drain RPC's shutdown), drain and stop; the exit code.

    A signal before the server is ready (``shutdown`` installed with ``starting=True``) abandons the
    start-up: whatever was opened is closed, a registration that may already be in Redis is removed,
    and the result is 128 + the signal number.
    """
    shutdown = shutdown or ShutdownSignal.install(starting=True)
    instance_id = uuid.uuid4().hex
    engine: Any = None
    server: GrpcServer | None = None
    membership: ClusterMembership | None = None
    registering = False
    try:
        log.info("cuvis-worker starting (pid %d): loading the engine", os.getpid())
        try:  # before the engine loads: a missing credential file fails the start at once
            auth = cluster_auth(settings)
        except (OSError, ValueError) as exc:
            log.error("cuvis-worker cannot start: %s", exc)
            return 2
        from cuvis_cluster.engine.facade import Engine
        from cuvis_cluster.worker import servicer as servicer_module

        try:
            config = engine_config(settings)
            engine = Engine(config)
        except ValueError as exc:  # e.g. --device cuda on a machine without CUDA
            log.error("cuvis-worker cannot start: %s", exc)
            return 2
        engine.start()
        log.info(
            "engine ready on %s: configs %s, data %s, outputs %s, max %d sessions, idle timeout %.0fs",
            engine.device,
            config.configs_dir,
            config.data_dir,
            config.output_dir,
            config.max_sessions,
            config.idle_timeout_seconds,
        )

        metrics = WorkerMetrics()
        bind_metrics(metrics, engine, settings)

        interceptors: list[Any] = []
        if auth is not None:  # first in the chain: a call not from the cluster goes no further
            auth.session_owned = session_owned(engine)
            interceptors.append(auth)
        if settings.redis_url:
            interceptors.append(fencing_interceptor(instance_id))

        try:
            server = GrpcServer(
                settings,
                metrics=metrics,
                interceptors=interceptors,
                max_workers=settings.max_workers,
                component="worker",
            )
            servicer = servicer_module.CuvisAIServicer(engine, metrics)
            server.add_service(SERVICE_NAME, lambda s: servicer_module.add_to_server(servicer, s))
            if settings.redis_url:
                membership = ClusterMembership(
                    settings,
                    engine.sessions,
                    metrics,
                    lambda: device_info(engine.device),
                    instance_id=instance_id,
                )
                control = WorkerControlServicer(membership, shutdown=shutdown)
                server.add_service(control.SERVICE_NAME, control.add_to_server)
            server.start()
            serve_metrics(metrics.registry, settings.metrics_host, settings.metrics_port)
        except (OSError, ValueError) as exc:  # port in use, bad TLS files, bad Redis URL ...
            log.error("cuvis-worker cannot start: %s", exc)
            _abandon_start(engine, server, None)
            return 2
        if membership is not None:
            registering = True  # from here on a record of this instance may be in Redis
            membership.start()
        threading.Thread(
            target=_follow_draining,
            args=(server, engine.sessions, shutdown),
            name="drain-health",
            daemon=True,
        ).start()
        shutdown.started()
    except StartupInterrupted as exc:
        _abandon_start(engine, server, membership if registering else None)
        return _interrupted(exc)
    # One line that scripts and tests can wait for.
    print(f"cuvis-worker ready on {server.address} pid {os.getpid()}", flush=True)

    shutdown.wait()

    def drain() -> None:
        engine.sessions.set_draining(True)
        if membership is not None:
            membership.drain(settings.grace_seconds)

    def end_training() -> None:
        if count := engine.cancel_all_training("the worker is shutting down"):
            log.info("cancelled %d training run(s) before the end of the grace period", count)

    server.shutdown(
        settings.grace_seconds, before_stop=[drain], before_cancel=[end_training], hurry=shutdown.hurry
    )
    if membership is not None:
        try:
            membership.stop()  # deregister
        except Exception:
            log.exception("deregistration failed")
    engine.shutdown()  # closes every session
    log.info("cuvis-worker stopped")
    return 0


if __name__ == "__main__":
    main()
