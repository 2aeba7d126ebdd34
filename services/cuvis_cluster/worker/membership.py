"""The worker's membership in the cluster: registration, heartbeat and session routes in Redis.

``cuvis-worker --redis-url ...`` wires this in (see :mod:`cuvis_cluster.worker.main`), with the
fencing interceptor (:mod:`.fencing`) and WorkerControlService (:mod:`.control`)::

    membership = ClusterMembership(settings, engine.sessions, metrics, lambda: device_info(engine.device),
                                   instance_id=instance_id)
    server interceptors: fencing_interceptor(instance_id)
    WorkerControlServicer(membership, shutdown=shutdown).add_to_server(server)
    membership.start()  ...  membership.drain(grace) ... membership.stop()

What the worker keeps in Redis (schema in :mod:`cuvis_cluster.routing.redis_schema`):

* its registration hash (:class:`cuvis_cluster.routing.membership.WorkerInfo`), refreshed every
  ``heartbeat_seconds`` with TTL ``heartbeat_ttl_seconds``; its expiry is how gateways notice a dead
  worker;
* one route per session, written when the session is created (before CreateSession returns, so any
  gateway can route the next call), deleted when it is closed, and **re-announced by every heartbeat**
  with a TTL equal to the session's remaining idle time. That heartbeat is also the only "touch":
  gateways never write per call. If Redis restarts empty, the next heartbeat rebuilds everything.

The heartbeat runs as one Lua script, so it cannot race with a gateway declaring this instance lost:
sessions created before such a declaration are never announced again (they are fenced; the idle
reaper frees them).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any, Protocol

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

import cuvis_cluster
from cuvis_cluster.common.settings import WorkerSettings
from cuvis_cluster.common.telemetry import WorkerMetrics
from cuvis_cluster.routing import redis_schema as rs
from cuvis_cluster.routing.membership import WorkerInfo, describe
from cuvis_cluster.wire.gen.cuvis_cluster.internal.v1 import control_pb2
from cuvis_cluster.worker import quota_tag

log = logging.getLogger(__name__)

DeviceInfo = dict[str, Any]


class SessionLike(Protocol):
    id: str
    owner: str | None
    created_at: float
    last_used: float


class SessionDirectory(Protocol):
    """What the engine's session manager offers to the cluster layer."""

    @property
    def capacity(self) -> int: ...

    @property
    def count(self) -> int: ...

    @property
    def draining(self) -> bool: ...

    def list(self) -> list[Any]: ...

    def set_draining(self, draining: bool) -> None: ...

    def add_listener(self, listener: Any) -> None: ...


def _device(info: DeviceInfo) -> tuple[str, int, int]:
    """(description, free bytes, total bytes) from the worker's device-info dict."""
    name = str(info.get("device") or info.get("name") or "cpu")
    free = int(info.get("free_bytes") or info.get("memory_free") or 0)
    total = int(info.get("total_bytes") or info.get("memory_total") or 0)
    return name, free, total


class ClusterMembership:
    """Registers this worker process in Redis and keeps its registration and routes current."""

    def __init__(
        self,
        settings: WorkerSettings,
        sessions: SessionDirectory,
        metrics: WorkerMetrics | None,
        device_info: Callable[[], DeviceInfo] | DeviceInfo,
        *,
        instance_id: str | None = None,
        redis_client: redis.Redis | None = None,
    ) -> None:
        if not settings.redis_url and redis_client is None:
            raise ValueError("cluster membership needs redis_url")
        self.settings = settings
        self.sessions = sessions
        self.metrics = metrics
        self._device_info = device_info
        self.instance_id = instance_id or uuid.uuid4().hex
        self.address = settings.advertised_address
        self.version = cuvis_cluster.__version__
        self.started_ms = int(time.time() * 1000)
        self.redis = redis_client or redis.Redis.from_url(
            settings.redis_url,  # type: ignore[arg-type]
            socket_timeout=2.0,
            socket_connect_timeout=2.0,
            health_check_interval=10,
        )
        self._heartbeat = self.redis.register_script(rs.HEARTBEAT)
        self._add_route = self.redis.register_script(rs.ADD_ROUTE)
        self._remove_route = self.redis.register_script(rs.REMOVE_ROUTE)
        self._purge = self.redis.register_script(rs.PURGE_INSTANCE)
        self._set_draining = self.redis.register_script(rs.SET_DRAINING)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._epoch: str | None = None
        self._lock = threading.Lock()
        # session id -> the quota subject it counts for (sessions created through a gateway's quota).
        self._quota: dict[str, str] = {}
        self.drain_deadline: float | None = None
        self.redis_ok = False
        sessions.add_listener(self)

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        """Register now (best effort) and keep the heartbeat running in a daemon thread."""
        log.info("registering worker instance %s at %s in Redis", self.instance_id, self.address)
        self.heartbeat()
        self._thread = threading.Thread(target=self._loop, name="cluster-heartbeat", daemon=True)
        self._thread.start()
        log.info("registered as worker instance %s at %s", self.instance_id, self.address)

    def stop(self) -> None:
        """Deregister: this instance's routes become tombstones saying that it shut down."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        reason = f"{describe(self.address, self.instance_id)} shut down"
        self._call("deregister", self._purge, self._purge_args(reason))
        log.info("deregistered worker instance %s", self.instance_id)

    def abandon(self, timeout: float = 2.0) -> bool:
        """Deregister after an interrupted start-up; True when Redis confirmed it.

        The start-up may have been cut off in the middle of a Redis round trip, so the pooled connection
        can hold an unread reply. This uses a fresh client instead, with ``timeout`` for connecting and
        for the reply and no retries, so it is bounded even when Redis does not answer.
        """
        self._stop.set()
        self._wake.set()
        if self.settings.redis_url:
            client = redis.Redis.from_url(
                self.settings.redis_url,
                socket_timeout=timeout,
                socket_connect_timeout=timeout,
                retry=Retry(NoBackoff(), 0),
            )
        else:  # an injected client (tests): use it as it is
            client = self.redis
        reason = f"{describe(self.address, self.instance_id)} shut down during start-up"
        try:
            client.register_script(rs.PURGE_INSTANCE)(keys=[], args=self._purge_args(reason))
        except redis.RedisError as exc:
            log.warning("could not deregister worker instance %s: %s", self.instance_id, exc)
            return False
        finally:
            if client is not self.redis:
                client.close()
        log.info("deregistered worker instance %s", self.instance_id)
        return True

    def drain(self, grace_seconds: float) -> None:
        """Accept no new sessions from now on; gateways see the flag on their next registry poll."""
        with self._lock:
            if self.drain_deadline is None:
                self.drain_deadline = time.monotonic() + max(grace_seconds, 0.0)
        self.sessions.set_draining(True)
        if self.metrics is not None:
            self.metrics.draining.set(1)
        self._call("drain", self._set_draining, rs.set_draining_args(self.instance_id, True))
        self._wake.set()

    @property
    def draining(self) -> bool:
        return bool(self.sessions.draining)

    # -- session listener ------------------------------------------------------------------------
    def session_created(self, session: SessionLike) -> None:
        """Write the route before CreateSession returns, so every gateway can route the next call."""
        ttl_ms = int(self.settings.idle_timeout_seconds * 1000)
        # The gateway's reservation for this call becomes the session, counted in the same script.
        tag = quota_tag.current()
        if tag is not None:
            with self._lock:
                self._quota[session.id] = tag.subject
        args = rs.add_route_args(
            self.instance_id,
            self.address,
            session.id,
            session.owner or "",
            float(session.created_at),
            ttl_ms,
            self._sessions_ttl_ms(),
            tag.subject if tag is not None else "",
            tag.ticket if tag is not None else "",
        )
        self._call("add_route", self._add_route, args)

    def session_closed(self, session_id: str) -> None:
        with self._lock:
            self._quota.pop(session_id, None)
        self._call("remove_route", self._remove_route, rs.remove_route_args(self.instance_id, session_id))

    # -- heartbeat -------------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.settings.heartbeat_seconds)
            self._wake.clear()
            if self._stop.is_set():
                return
            self.heartbeat()

    def device(self) -> tuple[str, int, int]:
        info = self._device_info() if callable(self._device_info) else self._device_info
        return _device(info or {})

    def heartbeat(self) -> bool:
        """Refresh the registration and re-announce every session; True when Redis took it."""
        now = time.time()
        device, free, total = self.device()
        with self._lock:
            tagged_before = set(self._quota)
        sessions = self.sessions.list()
        record = WorkerInfo(
            instance=self.instance_id,
            address=self.address,
            capacity=self.sessions.capacity,
            sessions=len(sessions),
            device=device,
            device_free=free,
            device_total=total,
            draining=bool(self.sessions.draining),
            version=self.version,
            updated_ms=int(now * 1000),
            started_ms=self.started_ms,
        )
        idle = self.settings.idle_timeout_seconds
        # Forget the tags of sessions gone without a close (those created since the listing stay).
        live = {s.id for s in sessions}
        with self._lock:
            for gone in tagged_before - live:
                self._quota.pop(gone, None)
            quota = dict(self._quota)
        routes = [
            rs.RouteAnnouncement(
                s.id,
                s.owner or "",
                float(s.created_at),
                float(s.last_used),
                int(max(idle - (now - float(s.last_used)), 1.0) * 1000),
                quota.get(s.id, ""),
            )
            for s in sessions
        ]
        args = rs.heartbeat_args(
            self.instance_id,
            int(now * 1000),
            int(self.settings.heartbeat_ttl_seconds * 1000),
            self._sessions_ttl_ms(),
            uuid.uuid4().hex,
            record.fields(),
            routes,
        )
        result = self._call("heartbeat", self._heartbeat, args)
        if result is None:
            return False
        epoch = rs.text(result[0])
        if self._epoch is not None and epoch != self._epoch:
            log.warning("Redis lost its data (epoch changed); re-announced %d sessions", int(result[2]))
        self._epoch = epoch
        lost_at = rs.text(result[1])
        if lost_at:
            log.warning(
                "a gateway declared this instance lost at %s; sessions created before then are fenced",
                lost_at,
            )
        return True

    def _sessions_ttl_ms(self) -> int:
        return int((self.settings.idle_timeout_seconds + 2 * self.settings.heartbeat_ttl_seconds) * 1000)

    def _purge_args(self, reason: str) -> list[Any]:
        tombstone_ttl_ms = int(self.settings.idle_timeout_seconds * 1000)
        return rs.purge_args(self.instance_id, self.address, reason, time.time(), tombstone_ttl_ms)

    def _call(self, op: str, script: Any, args: list[Any]) -> Any:
        started = time.perf_counter()
        try:
            result = script(keys=[], args=args)
        except redis.RedisError as exc:
            if self.metrics is not None:
                self.metrics.redis_errors.labels(op).inc()
            if self.redis_ok:
                log.warning("Redis %s failed: %s (retrying with the next heartbeat)", op, exc)
            self.redis_ok = False
            return None
        if self.metrics is not None:
            self.metrics.redis_latency.labels(op).observe(time.perf_counter() - started)
        if not self.redis_ok:
            self.redis_ok = True
        return result

    # -- status ----------------------------------------------------------------------------------
    def status(self) -> Any:
        """This worker's ``WorkerStatus`` message (GetWorkerStatus), from the live session table."""
        device, free, total = self.device()
        sessions = self.sessions.list()
        return control_pb2.WorkerStatus(
            instance_id=self.instance_id,
            address=self.address,
            version=self.version,
            device=device,
            device_memory_free_bytes=free,
            device_memory_total_bytes=total,
            sessions=len(sessions),
            capacity=self.sessions.capacity,
            draining=bool(self.sessions.draining),
            session_ids=sorted(s.id for s in sessions),
            updated_unix_ms=int(time.time() * 1000),
        )
