"""Per-identity session quotas, so that one client cannot take every worker's session slots.

An identity may hold at most ``min(max_sessions_per_identity, max(1, floor(identity_capacity_share *
capacity)))`` sessions at once across the cluster, ``capacity`` being the registered workers'
``max_sessions`` summed (``max_sessions_per_identity`` 0: the share alone limits). A CreateSession
(or a RestoreTrainRun that places a new session) past that is RESOURCE_EXHAUSTED, naming the quota and
the identity's count.

The count lives in Redis, so that every gateway replica agrees (:mod:`cuvis_cluster.routing.redis_schema`,
``quota:<subject>``). Authenticated callers are counted by identity; on a gateway that identifies
nobody, by the client's IP address (session ownership stays as it is: anyone may use any session id).
Behind a proxy or a NAT that hides client addresses, all its clients share one quota.

Exact under concurrency: the check and a reservation of the slot are one atomic script. The gateway
names the reservation to the worker (:data:`~cuvis_cluster.routing.metadata.QUOTA_HEADER`, which
no client can set), and the worker's script that records a new session swaps the reservation for it
in the subject's count, so a session is never counted twice nor missed, whatever the number of
gateways and concurrent calls, and whether or not the call's answer reaches anyone: a client that
cancels its CreateSession once the worker has it (the worker's handler runs to its end) still gets
its session counted. When the call ends, the gateway drops a reservation the worker did not use; when
it ended before the worker answered, the reservation stays for :data:`LINGER_SECONDS` more, in case
the worker is still creating. A reservation whose call never reports back (its gateway died) counts
for :data:`RESERVATION_SECONDS`. A session closed, reaped idle or lost with its
worker stops counting: the workers' close script removes it, and members whose route is gone are
pruned when counted. After Redis lost its data the workers' heartbeats rebuild every subject's count
(each worker remembers which subject its sessions count for).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

from redis.exceptions import RedisError

from cuvis_cluster import errors
from cuvis_cluster.common.settings import GatewaySettings
from cuvis_cluster.gateway.registry import Registry
from cuvis_cluster.routing import redis_schema as rs
from cuvis_cluster.routing.metadata import QUOTA_HEADER

log = logging.getLogger(__name__)

# How long a reservation counts when its call never reports back (a gateway that died mid-call).
RESERVATION_SECONDS = 120.0
# How long a reservation outlives a call that ended before the worker answered it: the worker may still
# be creating the session, and swaps the reservation for it when it does. Ample for a create, which
# records the session before any slow work; a create slower still is counted all the same, late.
LINGER_SECONDS = 10.0


@dataclass(frozen=True, slots=True)
class Subject:
    """Whose quota a call draws on: an authenticated identity or an anonymous client address."""

    key: str  # "id:<identity>" or "ip:<address>"
    who: str  # for messages: "identity alice" / "client 10.1.2.3"
    owner: str  # the owner its sessions have ("" for an anonymous client)

    @property
    def anonymous(self) -> bool:
        return not self.owner

    @classmethod
    def of(cls, identity: str, address: str) -> Subject:
        if identity:
            return cls(f"id:{identity}", f"identity {identity}", identity)
        return cls(f"ip:{address}", f"client {address}", "")


@dataclass(frozen=True, slots=True)
class Reservation:
    subject: Subject
    ticket: str  # the reservation's member in the subject's pending set

    def header(self) -> tuple[bytes, bytes]:
        """The call metadata that names this reservation to the worker (see worker/quota_tag.py)."""
        return QUOTA_HEADER, f"{self.ticket} {self.subject.key}".encode()


def quota_limit(max_per_identity: int, share: float, capacity: int) -> int:
    """Sessions one identity may hold given the cluster's ``capacity`` (at least one)."""
    by_share = max(1, int(share * capacity))
    return min(max_per_identity, by_share) if max_per_identity else by_share


class SessionQuotas:
    def __init__(self, registry: Registry, settings: GatewaySettings) -> None:
        self.registry = registry
        self.max_per_identity = settings.max_sessions_per_identity
        self.share = settings.identity_capacity_share
        # Quota sets outlive a session's idle timeout a little, like the workers' own session sets.
        self.set_ttl_ms = int((settings.idle_timeout_seconds + 2 * settings.heartbeat_ttl_seconds) * 1000)
        self._reserve = registry.redis.register_script(rs.QUOTA_RESERVE)
        self._release = registry.redis.register_script(rs.QUOTA_RELEASE)
        self._tasks: set[asyncio.Task] = set()

    def capacity(self) -> int:
        """Session slots of the registered workers, from the registry's last poll."""
        return sum(max(w.capacity, 0) for w in self.registry.workers)

    async def reserve(self, subject: Subject) -> Reservation:
        """A slot for one new session of ``subject``; RESOURCE_EXHAUSTED when its quota is full."""
        capacity = self.capacity()
        limit = quota_limit(self.max_per_identity, self.share, capacity)
        ticket = uuid.uuid4().hex
        args = rs.quota_reserve_args(
            subject.key, limit, int(time.time() * 1000), ticket, int(RESERVATION_SECONDS * 1000)
        )
        reserving = asyncio.ensure_future(self.registry.call("quota", self._reserve(keys=[], args=args)))
        try:
            granted, held, pending = await asyncio.shield(reserving)
        except (RedisError, OSError):
            raise errors.Unavailable(self.registry.unavailable_message()) from None
        except asyncio.CancelledError:
            # The call ended (the client cancelled) while Redis was reserving. The script runs to its
            # end regardless: drop what it reserved, which no worker will ever see.
            self._track(self._drop_when_reserved(reserving, Reservation(subject, ticket)))
            raise
        if not int(granted):
            held, pending = int(held), int(pending)
            creating = f" (and is creating {pending})" if pending else ""
            raise errors.ResourceExhausted(
                f"session quota reached: {subject.who} holds {held} session{'' if held == 1 else 's'}"
                f"{creating}; one identity may hold {limit} "
                f"(max_sessions_per_identity {self.max_per_identity or 'no limit'}, "
                f"identity_capacity_share {self.share:g} of {capacity} session slots); close a session first"
            )
        return Reservation(subject, ticket)

    def release(
        self, reservation: Reservation, created_on: str = "", client: str = "", unanswered: bool = False
    ) -> None:
        """End ``reservation`` in the background: its call finished. ``created_on``: the instance where
        the call created a session (it succeeded), for a worker that did not count it itself.
        ``unanswered``: the call ended while the worker was still working on it, so the reservation
        lingers (:data:`LINGER_SECONDS`) for the session the worker may yet create."""
        self._track(self._release_now(reservation, created_on, client, unanswered))

    def _track(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _drop_when_reserved(self, reserving: asyncio.Future, reservation: Reservation) -> None:
        try:
            granted = int((await reserving)[0])
        except (RedisError, OSError):
            return  # nothing was reserved, or it expires by itself
        if granted:
            await self._release_now(reservation, "", "", False)

    async def _release_now(
        self, reservation: Reservation, created_on: str, client: str, unanswered: bool
    ) -> Any:
        subject = reservation.subject
        args = rs.quota_release_args(
            subject.key,
            reservation.ticket,
            created_on,
            subject.owner,
            client if subject.anonymous else "",
            self.set_ttl_ms,
            int(time.time() * 1000),
            int(LINGER_SECONDS * 1000) if unanswered else 0,
        )
        try:
            return await self.registry.call("quota", self._release(keys=[], args=args))
        except (RedisError, OSError) as exc:
            # The reservation expires by itself; the worker counted any session the call created.
            log.warning("could not release a session quota reservation: %s", exc)
            return None
