"""Session-affine routing of ``cuvis_ai.v1.CuvisAIService`` calls.

The method table is derived from the service descriptor: a method whose request has a
``session_id`` field is routed by it (field 1 almost everywhere, field 4 of RestoreTrainRunRequest),
except for the explicit exceptions below. The gateway reads only that field off the wire.

Route lookups: a local cache (``route_cache_seconds``) answers most calls with no Redis work at all;
a miss costs one pipelined round trip (route + tombstone). The cache entry of a session goes when the
worker answers NOT_FOUND for it, when it is closed, and when its worker is declared lost.
"""

from __future__ import annotations

import asyncio
import enum
import itertools
import logging
import time
from dataclasses import dataclass
from typing import Any

import grpc
from redis.exceptions import RedisError

from cuvis_cluster import errors
from cuvis_cluster.common.settings import GatewaySettings
from cuvis_cluster.gateway.placement import NoWorker, PlacementPolicy
from cuvis_cluster.gateway.proxy import Call
from cuvis_cluster.gateway.quotas import Reservation, SessionQuotas, Subject
from cuvis_cluster.gateway.registry import Registry
from cuvis_cluster.gateway.routes import Plan, Route, Router
from cuvis_cluster.gateway.security import TokenFile, authenticate
from cuvis_cluster.routing import redis_schema as rs
from cuvis_cluster.routing.membership import WorkerInfo
from cuvis_cluster.routing.metadata import INSTANCE_HEADER, OWNER_HEADER
from cuvis_cluster.wire.pb import SERVICE_NAME, pb

log = logging.getLogger(__name__)

NOT_FOUND = grpc.StatusCode.NOT_FOUND.value[0]
CLOSE_SESSION = f"/{SERVICE_NAME}/CloseSession".encode()
OK = 0


class Kind(enum.Enum):
    SESSIONLESS = "any worker, round-robin"
    PLACEMENT = "a new session: placement"
    SESSION = "the worker holding session_id"
    SESSION_OR_ANY = "session_id's worker, or any worker when empty"
    SESSION_OR_PLACEMENT = "session_id's worker, or placement when empty"


SESSIONLESS = {
    "ListAvailablePipelines",
    "GetPipelineInfo",
    "GetParameterSchema",
    "ValidateConfig",
    "GetTrainingCapabilities",
    "ClearPluginCache",
}
EXCEPTIONS = {
    "CreateSession": Kind.PLACEMENT,
    "RestoreTrainRun": Kind.SESSION_OR_PLACEMENT,
    "GetPipelineVisualization": Kind.SESSION_OR_ANY,  # config_content without a session
    "ListAvailableNodes": Kind.SESSION_OR_ANY,
}


@dataclass(frozen=True, slots=True)
class MethodRoute:
    name: str
    kind: Kind
    field_number: int = 0
    label: str = ""  # metrics label: the full method name, as the workers label it


def method_table() -> dict[bytes, MethodRoute]:
    """``:path`` -> how to route it, for every method of CuvisAIService."""
    service = pb.DESCRIPTOR.services_by_name[SERVICE_NAME.rsplit(".", 1)[-1]]
    table: dict[bytes, MethodRoute] = {}
    for method in service.methods:
        field = method.input_type.fields_by_name.get("session_id")
        number = field.number if field is not None else 0
        if method.name in SESSIONLESS:
            kind = Kind.SESSIONLESS
        elif method.name in EXCEPTIONS:
            kind = EXCEPTIONS[method.name]
        elif number:
            kind = Kind.SESSION
        else:
            kind = Kind.SESSIONLESS
        if kind in (Kind.SESSION, Kind.SESSION_OR_ANY, Kind.SESSION_OR_PLACEMENT) and not number:
            kind = Kind.SESSIONLESS
        label = f"{SERVICE_NAME}/{method.name}"
        table[f"/{label}".encode()] = MethodRoute(method.name, kind, number, label)
    return table


@dataclass(slots=True)
class CachedRoute:
    route_address: str
    instance: str
    owner: str
    expires: float


def _client_address(call: Call) -> str:
    """The client's IP address (its quota subject on a gateway that identifies nobody)."""
    transport = call.down.link.transport
    peer = transport.get_extra_info("peername") if transport is not None else None
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    return "unknown"


def _not_found(session: str) -> errors.NotFound:
    # The worker's own wording, so that an unknown session and another identity's look the same.
    return errors.NotFound(f"Session {session} not found")


class SessionRouter(Router):
    def __init__(
        self,
        registry: Registry,
        *,
        local_address: str,
        local_paths: tuple[bytes, ...],
        local_methods: frozenset[bytes] = frozenset(),
        open_paths: tuple[bytes, ...] = (b"/grpc.health.v1.Health/",),
        route_cache_seconds: float = 2.0,
        policy: PlacementPolicy | None = None,
        tokens: TokenFile | None = None,
        mutual_tls: bool = False,
        metrics: Any = None,
        max_message_bytes: int = 0,
        cluster_token: bytes | None = None,
        settings: GatewaySettings | None = None,
    ) -> None:
        # What every call forwarded to a worker carries to prove it comes through the cluster.
        self.cluster_token = cluster_token
        self.settings = settings
        # None: no per-identity quotas (tests that build a router alone).
        self.quotas = SessionQuotas(registry, settings) if settings is not None else None
        self._reservations: dict[Call, tuple[Reservation, str]] = {}  # call -> (slot, instance placed on)
        self.max_message = max_message_bytes
        self.registry = registry
        self.table = method_table()
        self.local_route = Route(local_address, local=True)
        self.local_paths = local_paths
        self.local_methods = local_methods
        self.open_paths = open_paths
        self.cache_seconds = route_cache_seconds
        self.policy = policy or PlacementPolicy()
        self.tokens = tokens
        self.mutual_tls = mutual_tls
        self.metrics = metrics
        self._cache: dict[str, CachedRoute] = {}
        self._by_instance: dict[str, set[str]] = {}
        self._rr = itertools.count()
        self.accepting = True
        registry.on_lost.append(self._instance_lost)
        if metrics is not None:
            self._m_cache = metrics.route_cache.labels("cache")
            self._m_redis = metrics.route_cache.labels("redis")
            self._m_miss = metrics.route_cache.labels("miss")
        else:
            self._m_cache = self._m_redis = self._m_miss = None

    # -- identity --------------------------------------------------------------------------------
    @property
    def identified(self) -> bool:
        return self.tokens is not None or self.mutual_tls

    def identify(self, call: Call) -> str:
        """The caller's identity ("" on a gateway that identifies nobody); UNAUTHENTICATED otherwise."""
        if not self.identified:
            return ""
        authorization = [v for k, v in call.headers if k == b"authorization"]
        return authenticate(authorization, call.down.link.peer_cert, self.tokens, self.mutual_tls)

    # -- planning --------------------------------------------------------------------------------
    def plan(self, call: Call) -> Plan:
        path = call.path
        info = self.table.get(path)
        if info is None:
            if path.startswith(self.local_paths):
                name = (
                    path.decode("ascii", "replace").lstrip("/") if path in self.local_methods else "unknown"
                )
                if not path.startswith(self.open_paths):
                    try:
                        call.identity = self.identify(call)
                    except errors.CuvisError as exc:
                        return Plan(method=name, error=exc)
                return Plan(method=name, route=self.local_route)
            if path.startswith(f"/{SERVICE_NAME}/".encode()):
                err = errors.Unimplemented(f"method {path.decode('ascii', 'replace')} is not served")
            else:
                err = errors.Unimplemented(f"unknown service in {path.decode('ascii', 'replace')}")
            return Plan(method="unknown", error=err)
        method = info.label
        try:
            call.identity = self.identify(call)
        except errors.CuvisError as exc:
            return Plan(method=method, error=exc)
        if not self.registry.redis_up:
            return Plan(
                method=method,
                error=errors.Unavailable(self.registry.unavailable_message()),
            )
        kind = info.kind
        limit = self.max_message
        if kind is Kind.SESSIONLESS:
            return Plan(method=method, route=self._any_worker(), max_message=limit)
        if kind is Kind.PLACEMENT:
            return Plan(method=method, resolve=self._resolve, after=self._after, max_message=limit)
        return Plan(
            method=method,
            field_number=info.field_number,
            resolve=self._resolve,
            after=self._after,
            max_message=limit,
        )

    def _any_worker(self) -> Route:
        workers = self.registry.live()
        active = [w for w in workers if not w.draining] or list(workers)
        if not active:
            raise errors.Unavailable("no worker is registered with the cluster")
        w = active[next(self._rr) % len(active)]
        return Route(w.address, w.instance)

    def _place(self, call: Call) -> Route | Any:
        try:
            w = self.policy.choose(self.registry.for_placement())
        except NoWorker as exc:
            self._placement_failed(exc.reason)
            raise exc.error from None
        if self.quotas is not None:
            return self._place_within_quota(call, w)
        return self._placed(call, w)

    async def _place_within_quota(self, call: Call, w: WorkerInfo) -> Route:
        """Placement's choice stands only when the caller's quota has room (a full cluster is named
        first: that message says more than a quota would)."""
        assert self.quotas is not None
        try:
            reservation = await self.quotas.reserve(Subject.of(call.identity, _client_address(call)))
        except errors.ResourceExhausted:
            self._placement_failed("identity_quota")
            raise
        self._reservations[call] = (reservation, w.instance)
        route = self._placed(call, w)
        return Route(route.address, route.instance, (*route.extra_headers, reservation.header()))

    def _placed(self, call: Call, w: WorkerInfo) -> Route:
        self.registry.placed(w.instance)
        headers = ((OWNER_HEADER, call.identity.encode()),) if call.identity else ()
        return Route(w.address, w.instance, headers)

    def _placement_failed(self, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.placement_failures.labels(reason).inc()

    def _resolve(self, call: Call, session: str) -> Route | Any:
        info = self.table[call.path]
        if info.kind is Kind.PLACEMENT or (not session and info.kind is Kind.SESSION_OR_PLACEMENT):
            return self._place(call)
        if not session:
            if info.kind is Kind.SESSION_OR_ANY:
                return self._any_worker()
            raise errors.InvalidArgument("session_id is required")
        call.session = session
        cached = self._cache.get(session)
        if cached is not None and cached.expires > time.monotonic():
            if self._m_cache is not None:
                self._m_cache.inc()
            return self._route_for(call, session, cached.route_address, cached.instance, cached.owner)
        return self._lookup(call, session)

    def _route_for(self, call: Call, session: str, address: str, instance: str, owner: str) -> Route:
        if owner != call.identity:
            raise _not_found(session)
        if instance in self.registry.lost:
            address, reason = self.registry.lost[instance]
            raise errors.NotFound(f"Session {session} not found: {reason}")
        headers: tuple[tuple[bytes, bytes], ...] = ((INSTANCE_HEADER, instance.encode()),)
        if call.identity:
            headers += ((OWNER_HEADER, call.identity.encode()),)
        return Route(address, instance, headers)

    async def _lookup(self, call: Call, session: str) -> Route:
        registry = self.registry
        deadline = registry.rebuild_until
        while True:
            try:
                pipe = registry.redis.pipeline(transaction=False)
                pipe.hgetall(rs.route_key(session))
                pipe.hgetall(rs.lost_route_key(session))
                route_raw, lost_raw = await registry.call("lookup", pipe.execute())
            except (RedisError, OSError):
                raise errors.Unavailable(registry.unavailable_message()) from None
            route = rs.decode_hash(route_raw)
            if route:
                if self._m_redis is not None:
                    self._m_redis.inc()
                address, instance, owner = (
                    route.get("address", ""),
                    route.get("instance", ""),
                    route.get("owner", ""),
                )
                self._remember(session, address, instance, owner)
                return self._route_for(call, session, address, instance, owner)
            lost = rs.decode_hash(lost_raw)
            if lost:
                if self._m_miss is not None:
                    self._m_miss.inc()
                if lost.get("owner", "") != call.identity:
                    raise _not_found(session)
                raise errors.NotFound(
                    f"Session {session} not found: {lost.get('reason', 'its worker was lost')}",
                )
            # Nothing known. Right after Redis lost its data the workers are still re-announcing.
            deadline = max(deadline, registry.rebuild_until)
            if time.monotonic() < deadline:
                await asyncio.sleep(0.1)
                continue
            if self._m_miss is not None:
                self._m_miss.inc()
            raise _not_found(session)

    def _remember(self, session: str, address: str, instance: str, owner: str) -> None:
        if not self.cache_seconds:
            return
        if len(self._cache) > 100_000:
            self._cache.clear()
            self._by_instance.clear()
        self._cache[session] = CachedRoute(address, instance, owner, time.monotonic() + self.cache_seconds)
        self._by_instance.setdefault(instance, set()).add(session)

    def forget(self, session: str) -> None:
        cached = self._cache.pop(session, None)
        if cached is not None:
            sessions = self._by_instance.get(cached.instance)
            if sessions is not None:
                sessions.discard(session)

    def _instance_lost(self, instance: str, address: str, reason: str, abort: bool) -> None:
        for session in self._by_instance.pop(instance, set()):
            self._cache.pop(session, None)

    def _after(self, call: Call, status: int, message: str) -> None:
        held = self._reservations.pop(call, None)
        if held is not None and self.quotas is not None:
            reservation, instance = held
            # The worker counts a session it creates in place of the reservation. The reservation must
            # outlive a call that ended while the worker may still be creating (the client or the
            # gateway gave up before its answer: the worker's handler runs on regardless).
            unanswered = status != OK and call.up is not None and not call.response_started
            self.quotas.release(
                reservation, instance if status == OK else "", _client_address(call), unanswered
            )
        if not call.session:
            return
        if status == NOT_FOUND or (status == OK and call.path == CLOSE_SESSION):
            self.forget(call.session)

    def upstream_lost(self, route: Route, exc: BaseException | None) -> None:
        if not route.local:
            self.registry.connection_failed(route.address)
