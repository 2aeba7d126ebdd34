"""The Redis schema of the routing store, shared by gateways (asyncio client) and workers (sync client).

Redis holds nothing a worker could not rebuild: every key below is either written by a worker's
heartbeat (and expires without it) or is a short-lived tombstone. After Redis restarts empty, one
heartbeat period restores the table. See docs/gateway-design.md for the full description.

Keys (``P`` = ``cuvis:``)::

    P epoch                      STRING  random id; recreated when missing, so a change means Redis lost data
    P workers                    ZSET    instance id -> last heartbeat (unix ms); the index of instances
    P worker:<instance>          HASH    address, instance, version, device, device_free, device_total,
                                         capacity, sessions, draining (0/1), started_ms, updated_ms
                                         PEXPIRE heartbeat_ttl -- expiry *is* the failure detector
    P worker:<instance>:sessions SET     session ids the instance holds (lets a purge find its routes)
    P route:<session>            HASH    instance, address, owner, created, last_used (unix seconds)
                                         PEXPIRE = idle time left; refreshed by the owning worker's heartbeat
    P lost:<instance>            HASH    address, reason, at (unix seconds); PEXPIRE idle timeout
    P lostroute:<session>        HASH    instance, address, reason, owner; PEXPIRE idle timeout

The registration hash's fields are :meth:`cuvis_cluster.routing.membership.WorkerInfo.fields`. Only the
keys read from Python get a helper below; the scripts compute every key from the prefix they are given,
so this schema needs a single Redis (standalone or Sentinel), not Redis Cluster.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

PREFIX = "cuvis:"
WORKERS = PREFIX + "workers"


def worker_key(instance: str) -> str:
    return f"{PREFIX}worker:{instance}"


def registered_workers(client: Any) -> list[str]:
    """Instances with a live registration (their record has not expired), for a sync redis client."""
    instances = [text(i) for i in client.zrange(WORKERS, 0, -1)]
    return [i for i in instances if client.exists(worker_key(i))]


def route_key(session: str) -> str:
    return f"{PREFIX}route:{session}"


def lost_key(instance: str) -> str:
    return f"{PREFIX}lost:{instance}"


def lost_route_key(session: str) -> str:
    return f"{PREFIX}lostroute:{session}"


# Heartbeat of one worker, atomic so that it can never resurrect what a gateway just purged.
# ARGV: prefix, instance, now_ms, ttl_ms, sessions_ttl_ms, new_epoch, n_fields, field, value, ...,
#       n_sessions, then per session: id, owner, created, last_used, ttl_ms
# Sessions created before this instance was declared lost are not announced again.
# Returns {epoch, lost_at or "", announced}.
HEARTBEAT = """
local p, inst, now, ttl, sttl, newepoch = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4], ARGV[5], ARGV[6]
local epoch = redis.call('GET', p .. 'epoch')
if not epoch then
  redis.call('SET', p .. 'epoch', newepoch)
  epoch = newepoch
end
local lost_at = redis.call('HGET', p .. 'lost:' .. inst, 'at')
local wk = p .. 'worker:' .. inst
local i = 7
local nf = tonumber(ARGV[i])
i = i + 1
for _ = 1, nf do
  redis.call('HSET', wk, ARGV[i], ARGV[i + 1])
  i = i + 2
end
redis.call('PEXPIRE', wk, ttl)
redis.call('ZADD', p .. 'workers', now, inst)
local sk = wk .. ':sessions'
local ns = tonumber(ARGV[i])
i = i + 1
local announced = 0
for _ = 1, ns do
  local sid, owner, created, last_used, rttl = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
  i = i + 5
  if (not lost_at) or tonumber(created) > tonumber(lost_at) then
    local rk = p .. 'route:' .. sid
    redis.call('HSET', rk, 'instance', inst, 'address', redis.call('HGET', wk, 'address'),
               'owner', owner, 'created', created, 'last_used', last_used)
    redis.call('PEXPIRE', rk, rttl)
    redis.call('SADD', sk, sid)
    announced = announced + 1
  end
end
if redis.call('EXISTS', sk) == 1 then
  redis.call('PEXPIRE', sk, sttl)
end
return {epoch, lost_at or '', announced}
"""

# A worker created a session.
# ARGV: prefix, instance, address, session, owner, created, ttl_ms, sessions_ttl_ms
ADD_ROUTE = """
local p, inst, sid = ARGV[1], ARGV[2], ARGV[4]
local rk = p .. 'route:' .. sid
redis.call('HSET', rk, 'instance', inst, 'address', ARGV[3], 'owner', ARGV[5], 'created', ARGV[6],
           'last_used', ARGV[6])
redis.call('PEXPIRE', rk, ARGV[7])
local sk = p .. 'worker:' .. inst .. ':sessions'
redis.call('SADD', sk, sid)
redis.call('PEXPIRE', sk, ARGV[8])
redis.call('DEL', p .. 'lostroute:' .. sid)
local wk = p .. 'worker:' .. inst
if redis.call('EXISTS', wk) == 1 then
  redis.call('HSET', wk, 'sessions', redis.call('SCARD', sk))
end
return 1
"""

# A worker closed a session. ARGV: prefix, instance, session
REMOVE_ROUTE = """
local p, inst, sid = ARGV[1], ARGV[2], ARGV[3]
local rk = p .. 'route:' .. sid
if redis.call('HGET', rk, 'instance') == inst then
  redis.call('DEL', rk)
end
local sk = p .. 'worker:' .. inst .. ':sessions'
redis.call('SREM', sk, sid)
local wk = p .. 'worker:' .. inst
if redis.call('EXISTS', wk) == 1 then
  redis.call('HSET', wk, 'sessions', redis.call('SCARD', sk))
end
return 1
"""

# An instance is gone (heartbeat expired, connection failed, or it shut down): move its routes to
# tombstones that name it, drop its registration, remember why. Idempotent.
# ARGV: prefix, instance, address, reason, now (unix seconds), tombstone_ttl_ms. Returns routes purged.
PURGE_INSTANCE = """
local p, inst, addr, reason, now, tttl = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local sk = p .. 'worker:' .. inst .. ':sessions'
local purged = 0
for _, sid in ipairs(redis.call('SMEMBERS', sk)) do
  local rk = p .. 'route:' .. sid
  local owner = ''
  if redis.call('HGET', rk, 'instance') == inst then
    owner = redis.call('HGET', rk, 'owner') or ''
    redis.call('DEL', rk)
    purged = purged + 1
  end
  local lk = p .. 'lostroute:' .. sid
  redis.call('HSET', lk, 'instance', inst, 'address', addr, 'reason', reason, 'owner', owner)
  redis.call('PEXPIRE', lk, tttl)
end
redis.call('DEL', sk, p .. 'worker:' .. inst)
redis.call('ZREM', p .. 'workers', inst)
local tk = p .. 'lost:' .. inst
if redis.call('EXISTS', tk) == 0 then
  redis.call('HSET', tk, 'address', addr, 'reason', reason, 'at', now)
end
redis.call('PEXPIRE', tk, tttl)
return purged
"""

# Everything a gateway needs to know about the workers, in one round trip.
# ARGV: prefix, new_epoch. Returns {epoch, {instance, {field, value, ...} or {}} ...}.
SNAPSHOT = """
local p = ARGV[1]
local epoch = redis.call('GET', p .. 'epoch')
if not epoch then
  redis.call('SET', p .. 'epoch', ARGV[2])
  epoch = ARGV[2]
end
local out = {epoch}
for _, inst in ipairs(redis.call('ZRANGE', p .. 'workers', 0, -1)) do
  table.insert(out, inst)
  table.insert(out, redis.call('HGETALL', p .. 'worker:' .. inst))
end
return out
"""

# A worker starts or stops draining. ARGV: prefix, instance, 0/1
SET_DRAINING = """
local wk = ARGV[1] .. 'worker:' .. ARGV[2]
if redis.call('EXISTS', wk) == 1 then
  redis.call('HSET', wk, 'draining', ARGV[3])
end
return 1
"""


# -- script arguments: one builder per script, in the ARGV order its comment above gives ------------


class RouteAnnouncement(NamedTuple):
    """One session a heartbeat re-announces: times in unix seconds, ``ttl_ms`` its idle time left."""

    session: str
    owner: str
    created: float
    last_used: float
    ttl_ms: int


def heartbeat_args(
    instance: str,
    now_ms: int,
    ttl_ms: int,
    sessions_ttl_ms: int,
    new_epoch: str,
    fields: Mapping[str, str | int],
    routes: Sequence[RouteAnnouncement],
) -> list[Any]:
    args: list[Any] = [PREFIX, instance, now_ms, ttl_ms, sessions_ttl_ms, new_epoch, len(fields)]
    for key, value in fields.items():
        args += [key, value]
    args.append(len(routes))
    for r in routes:
        args += [r.session, r.owner, repr(float(r.created)), repr(float(r.last_used)), r.ttl_ms]
    return args


def add_route_args(
    instance: str, address: str, session: str, owner: str, created: float, ttl_ms: int, sessions_ttl_ms: int
) -> list[Any]:
    return [PREFIX, instance, address, session, owner, repr(float(created)), ttl_ms, sessions_ttl_ms]


def remove_route_args(instance: str, session: str) -> list[Any]:
    return [PREFIX, instance, session]


def purge_args(instance: str, address: str, reason: str, now: float, tombstone_ttl_ms: int) -> list[Any]:
    return [PREFIX, instance, address, reason, repr(now), tombstone_ttl_ms]


def snapshot_args(new_epoch: str) -> list[Any]:
    return [PREFIX, new_epoch]


def set_draining_args(instance: str, draining: bool) -> list[Any]:
    return [PREFIX, instance, 1 if draining else 0]


# -- replies ---------------------------------------------------------------------------------------


def text(value: bytes | str | int) -> str:
    """One reply value as str, whether the client decodes responses or not."""
    return value.decode() if isinstance(value, bytes) else str(value)


def decode_hash(reply: Mapping[Any, Any] | Sequence[Any] | None) -> dict[str, str]:
    """A hash as a dict of str: HGETALL's dict (redis-py) or the flat list a Lua script returns."""
    if reply is None:
        return {}
    if isinstance(reply, Mapping):
        return {text(k): text(v) for k, v in reply.items()}
    return {text(reply[i]): text(reply[i + 1]) for i in range(0, len(reply) - 1, 2)}
