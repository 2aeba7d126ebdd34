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
    P route:<session>            HASH    instance, address, owner, created, last_used (unix seconds),
                                         quota (the subject it counts for, when created through a gateway)
                                         PEXPIRE = idle time left; refreshed by the owning worker's heartbeat
    P lost:<instance>            HASH    address, reason, at (unix seconds); PEXPIRE idle timeout
    P lostroute:<session>        HASH    instance, address, reason, owner; PEXPIRE idle timeout
    P quota:<subject>            SET     session ids held by one quota subject (see below); PEXPIRE
                                         sessions ttl, refreshed by heartbeats; members whose route is
                                         gone are pruned when a gateway counts them
    P quota-pending:<subject>    ZSET    reservation id -> expiry (unix ms): CreateSession calls that a
                                         gateway let through and that have not finished yet

A quota subject is ``id:<identity>`` for an authenticated owner or ``ip:<address>`` for an anonymous
client. The gateway that lets a CreateSession through reserves a slot and names it to the worker
(``x-cuvis-quota``, :data:`cuvis_cluster.routing.metadata.QUOTA_METADATA`); the worker's ADD_ROUTE
swaps the reservation for the new session in the subject's set and writes ``quota`` into the route,
so the session counts from the moment it exists, whether or not anyone hears the call's answer.
Heartbeats re-add every session with a ``quota`` field (the worker remembers it), which rebuilds the
sets after Redis lost its data. Sessions created without
one (a worker or gateway of an earlier version) are counted as before: by QUOTA_RELEASE's guess when
the call ends (``client`` marks an anonymous client's), and by heartbeats once settled for an owner.

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


# A session this old (ms) is counted for its owner by heartbeats too (see HEARTBEAT).
QUOTA_SETTLE_MS = 5_000

# Lua helper of the scripts below: add a session to a quota set and keep the set at least ``ttl`` ms.
_QUOTA_ADD = """
local function quota_add(key, sid, ttl)
  redis.call('SADD', key, sid)
  if redis.call('PTTL', key) < tonumber(ttl) then
    redis.call('PEXPIRE', key, ttl)
  end
end
"""

# Heartbeat of one worker, atomic so that it can never resurrect what a gateway just purged.
# ARGV: prefix, instance, now_ms, ttl_ms, sessions_ttl_ms, new_epoch, n_fields, field, value, ...,
#       n_sessions, then per session: id, owner, created, last_used, ttl_ms, quota subject or ""
# Sessions created before this instance was declared lost are not announced again.
# Returns {epoch, lost_at or "", announced}.
HEARTBEAT = (
    _QUOTA_ADD
    + """
local p, inst, now, ttl, sttl, newepoch = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4], ARGV[5], ARGV[6]
local settle = """
    + str(QUOTA_SETTLE_MS)
    + """
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
  local subject = ARGV[i + 5]
  i = i + 6
  if (not lost_at) or tonumber(created) > tonumber(lost_at) then
    local rk = p .. 'route:' .. sid
    redis.call('HSET', rk, 'instance', inst, 'address', redis.call('HGET', wk, 'address'),
               'owner', owner, 'created', created, 'last_used', last_used)
    redis.call('PEXPIRE', rk, rttl)
    redis.call('SADD', sk, sid)
    if subject ~= '' then
      -- Counted since its creation (ADD_ROUTE); this only restores what Redis may have lost.
      redis.call('HSET', rk, 'quota', subject)
      quota_add(p .. 'quota:' .. subject, sid, sttl)
    end
    -- The gateway that placed a session counts it for its owner as the call ends; a heartbeat counts
    -- only sessions past that moment (Redis lost its data, or that gateway died mid-call), so that
    -- it never counts a new session a second time next to its gateway's reservation.
    if owner ~= '' and now - tonumber(created) * 1000 > settle then
      quota_add(p .. 'quota:id:' .. owner, sid, sttl)
    end
    local client = redis.call('HGET', rk, 'client')
    if client then
      quota_add(p .. 'quota:ip:' .. client, sid, sttl)
    end
    announced = announced + 1
  end
end
if redis.call('EXISTS', sk) == 1 then
  redis.call('PEXPIRE', sk, sttl)
end
return {epoch, lost_at or '', announced}
"""
)

# A worker created a session. With a quota subject (the call came through a gateway's quota), the
# session counts for it from now on, in place of the call's reservation: one step, so that the subject's
# count neither dips nor doubles, and holds whether or not the call's answer reaches anyone.
# ARGV: prefix, instance, address, session, owner, created, ttl_ms, sessions_ttl_ms, quota subject or "",
#       reservation ticket
ADD_ROUTE = (
    _QUOTA_ADD
    + """
local p, inst, sid = ARGV[1], ARGV[2], ARGV[4]
local rk = p .. 'route:' .. sid
redis.call('HSET', rk, 'instance', inst, 'address', ARGV[3], 'owner', ARGV[5], 'created', ARGV[6],
           'last_used', ARGV[6])
redis.call('PEXPIRE', rk, ARGV[7])
local sk = p .. 'worker:' .. inst .. ':sessions'
redis.call('SADD', sk, sid)
redis.call('PEXPIRE', sk, ARGV[8])
redis.call('DEL', p .. 'lostroute:' .. sid)
local subject = ARGV[9]
if subject ~= '' then
  redis.call('HSET', rk, 'quota', subject)
  redis.call('ZREM', p .. 'quota-pending:' .. subject, ARGV[10])
  quota_add(p .. 'quota:' .. subject, sid, ARGV[8])
end
local wk = p .. 'worker:' .. inst
if redis.call('EXISTS', wk) == 1 then
  redis.call('HSET', wk, 'sessions', redis.call('SCARD', sk))
end
return 1
"""
)

# A worker closed a session. ARGV: prefix, instance, session
REMOVE_ROUTE = """
local p, inst, sid = ARGV[1], ARGV[2], ARGV[3]
local rk = p .. 'route:' .. sid
if redis.call('HGET', rk, 'instance') == inst then
  local owner, client, subject = unpack(redis.call('HMGET', rk, 'owner', 'client', 'quota'))
  if owner and owner ~= '' then
    redis.call('SREM', p .. 'quota:id:' .. owner, sid)
  end
  if client then
    redis.call('SREM', p .. 'quota:ip:' .. client, sid)
  end
  if subject then
    redis.call('SREM', p .. 'quota:' .. subject, sid)
  end
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


# A gateway is about to place a new session for a quota subject: count what the subject holds (pruning
# members whose route is gone: reaped, closed, or purged with a lost worker) and what it is creating
# right now, and reserve a slot unless that reaches the limit. Atomic, so that concurrent CreateSession
# calls through any number of gateways cannot together overshoot the quota.
# ARGV: prefix, subject, limit, now_ms, reservation id, reservation_ttl_ms. Returns {granted 0/1, held,
# pending}.
QUOTA_RESERVE = """
local p, subject, limit, now = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local qk, pk = p .. 'quota:' .. subject, p .. 'quota-pending:' .. subject
local held = 0
for _, sid in ipairs(redis.call('SMEMBERS', qk)) do
  if redis.call('EXISTS', p .. 'route:' .. sid) == 1 then
    held = held + 1
  else
    redis.call('SREM', qk, sid)
  end
end
redis.call('ZREMRANGEBYSCORE', pk, '-inf', now)
local pending = redis.call('ZCARD', pk)
if held + pending >= limit then
  return {0, held, pending}
end
redis.call('ZADD', pk, now + tonumber(ARGV[6]), ARGV[5])
redis.call('PEXPIRE', pk, ARGV[6])
return {1, held, pending}
"""

# A reserved CreateSession finished. A worker that created the session has already swapped the
# reservation for it (ADD_ROUTE), so usually this only finds the reservation gone. Otherwise:
# * ``linger_ms`` > 0 (the call ended without an answer from the worker, which may still be creating
#   the session): the reservation stays, for at most ``linger_ms`` more, so that the worker's ADD_ROUTE
#   can still swap it and the subject's count never dips below what it holds;
# * the call failed (``instance`` ""): the reservation goes;
# * it succeeded on ``instance`` but the worker did not count the session (an earlier version): the
#   newest session of that instance with the caller's owner, no ``quota`` field and not counted yet
#   counts for the subject in place of the reservation. For an identity any of its sessions there are
#   alike; for an anonymous client (owner "") the route also gets ``client``, and two clients creating
#   on one instance at the same moment may swap sessions (each is still counted once).
# ARGV: prefix, subject, reservation ticket, instance or "", owner, client ("" for an identity),
#       sets ttl_ms, now_ms, linger_ms. Returns the session it counted or "".
QUOTA_RELEASE = (
    _QUOTA_ADD
    + """
local p, subject, ticket, inst, owner, client = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local pk = p .. 'quota-pending:' .. subject
local linger = tonumber(ARGV[9])
if linger > 0 then
  local last = tonumber(ARGV[8]) + linger
  local expiry = redis.call('ZSCORE', pk, ticket)
  if expiry and tonumber(expiry) > last then
    redis.call('ZADD', pk, 'XX', last, ticket)
  end
  return ''
end
if redis.call('ZREM', pk, ticket) == 0 or inst == '' then
  return ''
end
local qk = p .. 'quota:' .. subject
local best, newest = '', -1
for _, sid in ipairs(redis.call('SMEMBERS', p .. 'worker:' .. inst .. ':sessions')) do
  local route = redis.call('HMGET', p .. 'route:' .. sid, 'instance', 'owner', 'client', 'created', 'quota')
  if route[1] == inst and (route[2] or '') == owner and not (client ~= '' and route[3])
     and not route[5] and redis.call('SISMEMBER', qk, sid) == 0 then
    local created = tonumber(route[4]) or 0
    if created > newest then
      best, newest = sid, created
    end
  end
end
if best ~= '' then
  if client ~= '' then
    redis.call('HSET', p .. 'route:' .. best, 'client', client)
  end
  quota_add(qk, best, ARGV[7])
end
return best
"""
)


# -- script arguments: one builder per script, in the ARGV order its comment above gives ------------


class RouteAnnouncement(NamedTuple):
    """One session a heartbeat re-announces: times in unix seconds, ``ttl_ms`` its idle time left."""

    session: str
    owner: str
    created: float
    last_used: float
    ttl_ms: int
    quota: str = ""  # the quota subject it counts for, "" when none


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
        args += [r.session, r.owner, repr(float(r.created)), repr(float(r.last_used)), r.ttl_ms, r.quota]
    return args


def add_route_args(
    instance: str,
    address: str,
    session: str,
    owner: str,
    created: float,
    ttl_ms: int,
    sessions_ttl_ms: int,
    quota: str = "",
    ticket: str = "",
) -> list[Any]:
    return [
        PREFIX,
        instance,
        address,
        session,
        owner,
        repr(float(created)),
        ttl_ms,
        sessions_ttl_ms,
        quota,
        ticket,
    ]


def remove_route_args(instance: str, session: str) -> list[Any]:
    return [PREFIX, instance, session]


def purge_args(instance: str, address: str, reason: str, now: float, tombstone_ttl_ms: int) -> list[Any]:
    return [PREFIX, instance, address, reason, repr(now), tombstone_ttl_ms]


def quota_reserve_args(
    subject: str, limit: int, now_ms: int, reservation: str, reservation_ttl_ms: int
) -> list[Any]:
    return [PREFIX, subject, limit, now_ms, reservation, reservation_ttl_ms]


def quota_release_args(
    subject: str,
    ticket: str,
    instance: str,
    owner: str,
    client: str,
    ttl_ms: int,
    now_ms: int = 0,
    linger_ms: int = 0,
) -> list[Any]:
    return [PREFIX, subject, ticket, instance, owner, client, ttl_ms, now_ms, linger_ms]


def quota_key(subject: str) -> str:
    return f"{PREFIX}quota:{subject}"


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
