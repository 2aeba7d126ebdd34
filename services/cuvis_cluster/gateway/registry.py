"""The gateway's view of the workers: a Redis poll, failure detection and the lost-worker procedure.

Every ``poll_interval`` one Lua script returns the epoch and every registered instance's hash (one
round trip). From it:

* **live workers** are instances whose hash still exists (the hash TTL is the heartbeat TTL);
* an instance still indexed but without its hash **missed its heartbeat**: it is probed (a
  ``GetWorkerStatus`` call) and, unless it answers with the same instance id, declared lost;
* an **epoch change** means Redis lost its data (restart without persistence): for one heartbeat TTL
  route misses are retried instead of answered NOT_FOUND, while the workers re-announce their sessions;
* a failed poll marks **Redis down**: health NOT_SERVING and every routed call UNAVAILABLE until a
  poll succeeds again.

Declaring an instance lost (also after a failed connection whose probe fails) runs the purge script:
its routes become tombstones naming it, its registration goes. Connections to it are aborted, so
in-flight calls end UNAVAILABLE; later calls for its sessions get NOT_FOUND naming it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import grpc
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from cuvis_cluster.common.telemetry import redact, redact_url, register_secret
from cuvis_cluster.routing import redis_schema as rs
from cuvis_cluster.routing.membership import WorkerInfo, describe
from cuvis_cluster.wire.pb import control_pb2, control_pb2_grpc

log = logging.getLogger(__name__)

PROBE_OK, PROBE_REFUSED, PROBE_TIMEOUT = "ok", "refused", "timeout"
MISSED_HEARTBEATS = "missed its heartbeats"


class Registry:
    def __init__(
        self,
        redis_url: str,
        *,
        heartbeat_ttl: float,
        tombstone_ttl: float,
        metrics: Any = None,
        poll_interval: float = 0.5,
        probe: Callable[[str], Any] | None = None,
        client: aioredis.Redis | None = None,
        silent_grace: float = 30.0,
    ) -> None:
        # The URL may carry the Redis password (redis://:PASSWORD@host): only its redacted form is
        # ever logged or sent to clients, and the password itself is masked wherever it shows up.
        self.redis_url = redact_url(redis_url)
        parts = urlsplit(redis_url)
        for password in [parts.password, *parse_qs(parts.query).get("password", [])]:
            if password:
                register_secret(password)
                register_secret(unquote(password))
        self.redis = client or aioredis.Redis.from_url(
            redis_url, socket_timeout=1.0, socket_connect_timeout=1.0, health_check_interval=0
        )
        self.heartbeat_ttl = heartbeat_ttl
        self.tombstone_ttl = tombstone_ttl
        self.metrics = metrics
        self.poll_interval = poll_interval
        self.probe = probe  # async (address) -> (PROBE_OK | PROBE_REFUSED | PROBE_TIMEOUT, instance id)
        self._snapshot_script = self.redis.register_script(rs.SNAPSHOT)
        self._purge_script = self.redis.register_script(rs.PURGE_INSTANCE)
        self.workers: tuple[WorkerInfo, ...] = ()
        self.by_instance: dict[str, WorkerInfo] = {}
        self.redis_up = False
        self.redis_error = "not connected yet"
        self.polled_once = asyncio.Event()
        self.epoch: str | None = None
        self.rebuild_until = 0.0
        self.lost: dict[str, tuple[str, str]] = {}  # instance -> (address, reason), remembered locally
        self._probing: set[str] = set()
        self._silent_since: dict[str, float] = {}
        self.silent_grace = silent_grace
        self.addresses: dict[str, str] = {}  # every instance ever seen -> its address (for messages)
        self._task: asyncio.Task | None = None
        self._extra_sessions: dict[str, int] = {}  # sessions placed since the last poll
        self.listeners: list[Callable[[], None]] = []  # called after every poll (health, metrics)
        self.on_lost: list[Callable[[str, str, str, bool], None]] = []  # (instance, address, reason, abort)
        self._metric_workers: set[str] = set()

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        await self.redis.aclose()

    async def _run(self) -> None:
        while True:
            await self.poll()
            await asyncio.sleep(self.poll_interval)

    # -- Redis helpers ---------------------------------------------------------------------------
    async def call(self, op: str, coro: Any) -> Any:
        """Run one Redis command with latency/error metrics; RedisError marks Redis down and re-raises."""
        started = time.perf_counter()
        try:
            result = await coro
        except (RedisError, OSError) as exc:
            if self.metrics is not None:
                self.metrics.redis_errors.labels(op).inc()
            self._set_redis(False, str(exc) or type(exc).__name__)
            raise
        if self.metrics is not None:
            self.metrics.redis_latency.labels(op).observe(time.perf_counter() - started)
        return result

    def _set_redis(self, up: bool, error: str = "") -> None:
        if up != self.redis_up:
            if up:
                log.info("Redis at %s reachable", self.redis_url)
            else:
                log.warning("Redis at %s unreachable: %s", self.redis_url, redact(error))
        self.redis_up = up
        self.redis_error = redact(error)
        if self.metrics is not None:
            self.metrics.redis_up.set(1 if up else 0)

    def unavailable_message(self) -> str:
        return (
            f"the routing store (Redis at {self.redis_url}) is unreachable: {self.redis_error}; retry later"
        )

    # -- polling ---------------------------------------------------------------------------------
    async def poll(self) -> None:
        try:
            raw = await self.call(
                "snapshot", self._snapshot_script(keys=[], args=rs.snapshot_args(uuid.uuid4().hex))
            )
        except (RedisError, OSError):
            self.polled_once.set()
            self._notify()
            return
        self._set_redis(True)
        epoch = rs.text(raw[0])
        if self.epoch is not None and epoch != self.epoch:
            log.warning(
                "Redis lost its data (epoch changed); workers re-announce their sessions within %.1fs",
                self.heartbeat_ttl,
            )
            self.rebuild_until = time.monotonic() + self.heartbeat_ttl
        self.epoch = epoch
        workers: list[WorkerInfo] = []
        expired: list[str] = []
        for i in range(1, len(raw) - 1, 2):
            instance = rs.text(raw[i])
            fields = rs.decode_hash(raw[i + 1])
            if not fields:
                expired.append(instance)
                continue
            workers.append(WorkerInfo.from_fields(instance, fields))
        for w in workers:
            # An instance that re-registered after being declared lost is live again (new sessions only).
            self.lost.pop(w.instance, None)
        workers.sort(key=lambda w: w.address)
        self.workers = tuple(workers)
        self.by_instance = {w.instance: w for w in workers}
        self._extra_sessions.clear()
        for w in workers:
            self.addresses[w.instance] = w.address
        for instance in expired:
            self._spawn_probe(instance, None, MISSED_HEARTBEATS)
        self.polled_once.set()
        self._update_metrics()
        self._notify()

    def _notify(self) -> None:
        for listener in self.listeners:
            try:
                listener()
            except Exception:
                log.exception("registry listener failed")

    def _update_metrics(self) -> None:
        m = self.metrics
        if m is None:
            return
        live = [w for w in self.workers if not w.draining]
        m.workers.labels("live").set(len(live))
        m.workers.labels("draining").set(len(self.workers) - len(live))
        m.workers.labels("lost").set(len(self.lost))
        seen = set()
        for w in self.workers:
            seen.add(w.address)
            m.worker_sessions.labels(w.address).set(w.sessions)
            m.worker_capacity.labels(w.address).set(w.capacity)
        for gone in self._metric_workers - seen:
            for gauge in (m.worker_sessions, m.worker_capacity):
                try:
                    gauge.remove(gone)
                except KeyError:
                    pass
        self._metric_workers = seen

    # -- views -----------------------------------------------------------------------------------
    def live(self) -> tuple[WorkerInfo, ...]:
        return self.workers

    def for_placement(self) -> list[WorkerInfo]:
        """Workers with the sessions this gateway placed since the last poll counted in."""
        if not self._extra_sessions:
            return list(self.workers)
        out = []
        for w in self.workers:
            extra = self._extra_sessions.get(w.instance)
            out.append(dataclasses.replace(w, sessions=w.sessions + extra) if extra else w)
        return out

    def placed(self, instance: str) -> None:
        self._extra_sessions[instance] = self._extra_sessions.get(instance, 0) + 1

    # -- failures --------------------------------------------------------------------------------
    def connection_failed(self, address: str) -> None:
        """A connection to ``address`` failed or broke: check the instances registered there."""
        instances = [w.instance for w in self.workers if w.address == address]
        for instance in instances:
            self._spawn_probe(instance, address, "dropped its connection")

    def _spawn_probe(self, instance: str, address: str | None, why: str) -> None:
        if instance in self._probing:
            return
        self._probing.add(instance)
        task = asyncio.ensure_future(self._check(instance, address, why))
        task.add_done_callback(lambda _t: self._probing.discard(instance))

    async def _check(self, instance: str, address: str | None, why: str) -> None:
        """Probe an instance that missed its heartbeats or whose connection failed; purge it if gone.

        * it answers with the same instance id: alive (a late heartbeat), keep it;
        * another instance answers at its address: it was restarted, purge the old one;
        * nothing listens there (connection refused): it is gone, purge it now;
        * the probe times out: it may just be busy (a huge request holding the worker's GIL); it is
          purged only if it stays silent for ``silent_grace`` seconds.
        """
        address = address or self.addresses.get(instance) or await self._address_of(instance)
        result, answer = PROBE_REFUSED, ""
        if self.probe is not None and address:
            try:
                result, answer = await self.probe(address)
            except Exception:
                result = PROBE_REFUSED
        if result == PROBE_OK and answer == instance:
            self._silent_since.pop(instance, None)
            if why == MISSED_HEARTBEATS:
                log.warning("%s missed its heartbeats but answers; keeping it", describe(address, instance))
            return
        if result == PROBE_TIMEOUT:
            first = self._silent_since.setdefault(instance, time.monotonic())
            silent = time.monotonic() - first
            if silent < self.silent_grace:
                log.warning(
                    "%s %s and has not answered for %.0fs; purged after %.0fs",
                    describe(address, instance),
                    why,
                    silent,
                    self.silent_grace,
                )
                return
            reason = f"{describe(address, instance)} {why} and did not answer for {silent:.0f}s"
            abort = True
        elif result == PROBE_OK:
            reason = f"{describe(address, instance)} {why}; instance {answer} now runs there (restarted)"
            abort = False
        else:
            reason = f"{describe(address, instance)} {why} and is not running any more"
            abort = True
        self._silent_since.pop(instance, None)
        await self.declare_lost(instance, address or "", reason, abort=abort)

    async def _address_of(self, instance: str) -> str:
        try:
            addr = await self.call("hget", self.redis.hget(rs.lost_key(instance), "address"))
        except (RedisError, OSError):
            return ""
        return rs.text(addr) if addr is not None else ""

    async def declare_lost(self, instance: str, address: str, reason: str, *, abort: bool = True) -> int:
        """Purge ``instance``: routes to tombstones, registration removed, connections dropped."""
        first = instance not in self.lost
        self.lost[instance] = (address, reason)
        if first:
            log.warning("%s: purging its session routes", reason)
        self.workers = tuple(w for w in self.workers if w.instance != instance)
        self.by_instance.pop(instance, None)
        for cb in self.on_lost:
            try:
                cb(instance, address, reason, abort)
            except Exception:
                log.exception("on_lost callback failed")
        try:
            purged = await self.call(
                "purge",
                self._purge_script(
                    keys=[],
                    args=rs.purge_args(
                        instance, address, reason, time.time(), int(self.tombstone_ttl * 1000)
                    ),
                ),
            )
        except (RedisError, OSError):
            return 0
        if purged and self.metrics is not None:
            self.metrics.routes_purged.inc(int(purged))
        self._update_metrics()
        self._notify()
        return int(purged)


async def grpc_probe(
    address: str,
    *,
    credentials: grpc.ChannelCredentials | None = None,
    metadata: tuple[tuple[str, str], ...] = (),
    timeout: float = 2.0,
) -> tuple[str, str]:
    """Ask ``address`` for its instance id (``GetWorkerStatus``): ``(PROBE_OK, id)``, or
    ``(PROBE_REFUSED, "")`` when nothing accepts connections there, or ``(PROBE_TIMEOUT, "")``."""

    def call() -> tuple[str, str]:
        channel = (
            grpc.secure_channel(address, credentials)
            if credentials is not None
            else grpc.insecure_channel(address)
        )
        try:
            stub = control_pb2_grpc.WorkerControlServiceStub(channel)
            reply = stub.GetWorkerStatus(
                control_pb2.GetWorkerStatusRequest(), metadata=metadata, timeout=timeout
            )
            return PROBE_OK, reply.status.instance_id
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.UNAVAILABLE:
                return PROBE_REFUSED, ""
            if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                return PROBE_TIMEOUT, ""
            return PROBE_OK, ""  # something answers there, but not as a worker: not the instance we know
        finally:
            channel.close()

    return await asyncio.get_running_loop().run_in_executor(None, call)
