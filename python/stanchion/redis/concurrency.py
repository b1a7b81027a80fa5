"""Concurrency limits shared by every process and host, through Redis.

``stanchion.Concurrency(limit, ..., storage=RedisStorage(...))`` (or a
``redis://`` URL, or a Redis client) returns a :class:`RedisConcurrency`.

Each slot is a *lease*: a member of a sorted set scored by its expiry in
the server's clock (``TIME``), so hosts with skewed clocks agree. A
holder that dies (SIGKILL, a lost host) frees its slot when its lease
expires, at most ``lease`` seconds after it took it; a hold that lasts
longer than ``lease`` loses its slot the same way (choose a lease above
your longest request, or call ``hold.extend()`` while holding). The queue
is a second sorted set, ordered by priority lane then arrival, with a
third set of waiter expiries: a waiter that stops polling (it died)
leaves the queue within 5 seconds.

Waiting polls: across hosts there is no wake-up to deliver, so a queued
hold asks Redis again after 2 ms, then backs off by half again each time
up to 100 ms (and never past its deadline). Each poll is one EVALSHA.

Every script call goes through the storage's connections with its
``timeout`` and outage policy: when Redis does not answer, ``on_error``
decides: ``"allow"`` lets the hold run without a slot (nothing to give
back), ``"deny"`` refuses it (``ConcurrencyLimitExceeded``, reason
``"unavailable"``), ``"raise"`` raises ``StorageUnavailable``. A release
that fails is logged with the outage and left to the lease's expiry.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from typing import Any

from redis.exceptions import NoScriptError

from .._concurrency import refusal
from .._errors import StorageUnavailable
from .._limiter import ON_ERROR
from .._polling import (
    PATIENCE,
    UNLEASED,
    LeaseHold,
    PollingConcurrency,
)
from .._sync import at_once, run_at_once
from .limiter import RedisStorage, _key_bytes
from .outage import _Guard, _Unavailable, _Who

__all__ = ["RedisConcurrency", "RedisHold"]

_LANE = 2**40  # queue scores: lane offset + arrival sequence

_SCRIPT = rb"""
-- stanchion concurrency v1
local H, Q, L, S = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local op, id = ARGV[1], ARGV[2]
redis.call('ZREMRANGEBYSCORE', H, '-inf', now)
local dead = redis.call('ZRANGEBYSCORE', L, '-inf', now)
for i = 1, #dead do redis.call('ZREM', Q, dead[i]) end
if #dead > 0 then redis.call('ZREMRANGEBYSCORE', L, '-inf', now) end
if op == 'release' then
  redis.call('ZREM', H, id)
  redis.call('ZREM', Q, id)
  redis.call('ZREM', L, id)
  return {1, redis.call('ZCARD', H), redis.call('ZCARD', Q), now}
end
if op == 'count' then
  return {1, redis.call('ZCARD', H), redis.call('ZCARD', Q), now}
end
local lease = tonumber(ARGV[3])
local ttl = tonumber(ARGV[9])
if op == 'extend' then
  if not redis.call('ZSCORE', H, id) then
    return {0, redis.call('ZCARD', H), redis.call('ZCARD', Q), now}
  end
  redis.call('ZADD', H, now + lease, id)
  redis.call('PEXPIRE', H, ttl)
  return {1, redis.call('ZCARD', H), redis.call('ZCARD', Q), now}
end
-- acquire: ARGV cap, queue, lane base, mode (0 try, 1 join, 2 waiting),
-- patience (us), key ttl (ms)
local cap, qmax = tonumber(ARGV[4]), tonumber(ARGV[5])
local base, mode = tonumber(ARGV[6]), ARGV[7]
local patience = tonumber(ARGV[8])
local held = redis.call('ZCARD', H)
local rank = redis.call('ZRANK', Q, id)
if mode == '2' and not rank then
  return {-2, held, redis.call('ZCARD', Q), now}
end
local ahead = rank
if not ahead then
  ahead = redis.call('ZCOUNT', Q, '-inf', '(' .. ARGV[10])
end
if held < cap and ahead < cap - held then
  redis.call('ZADD', H, now + lease, id)
  if rank then
    redis.call('ZREM', Q, id)
    redis.call('ZREM', L, id)
  end
  redis.call('PEXPIRE', H, ttl)
  return {1, held + 1, redis.call('ZCARD', Q), now}
end
if mode == '0' then
  return {0, held, redis.call('ZCARD', Q), now}
end
if not rank then
  if redis.call('ZCARD', Q) >= qmax then
    local last = redis.call('ZRANGE', Q, -1, -1, 'WITHSCORES')
    if #last == 0 or tonumber(last[2]) < tonumber(ARGV[10]) then
      return {-1, held, redis.call('ZCARD', Q), now}
    end
    redis.call('ZREM', Q, last[1])
    redis.call('ZREM', L, last[1])
  end
  redis.call('ZADD', Q, base + redis.call('INCR', S), id)
end
redis.call('ZADD', L, now + patience, id)
redis.call('PEXPIRE', Q, ttl)
redis.call('PEXPIRE', L, ttl)
redis.call('PEXPIRE', S, ttl)
return {0, held, redis.call('ZCARD', Q), now}
"""
_SHA = hashlib.sha1(_SCRIPT).hexdigest().encode()

_MEANWHILE = {
    "allow": "holds run without a slot (on_error='allow')",
    "deny": "holds are refused (on_error='deny')",
    "raise": "holds raise StorageUnavailable (on_error='raise')",
}
_UNAVAILABLE = ("unavailable", "Redis is unavailable (on_error='deny')")


class RedisHold(LeaseHold):
    """A claim on one slot of a :class:`RedisConcurrency`: ``with`` (or
    ``async with``) takes a lease and gives it back; ``extend()`` renews
    it. Reusable once released."""

    __slots__ = ()


class RedisConcurrency(PollingConcurrency):
    """``stanchion.Concurrency`` across processes and hosts, in Redis: at
    most ``limit`` leases per key, a bounded queue served by priority lane
    then arrival. Made by ``stanchion.Concurrency(..., storage=...)``.

    Same settings and methods as ``stanchion.Concurrency`` (``hold``,
    ``ahold``, ``acquire``, ``aacquire``, ``try_acquire``,
    ``atry_acquire``, ``in_flight``, ``queued`` and their ``a`` twins),
    plus ``lease`` (seconds a slot is held at most without ``extend()``;
    a crashed holder frees it by then) and ``on_error``. Queued holds
    poll (see the module docs), and ``retry_after`` of a refusal is None.
    """

    __slots__ = ("_conn", "_guard", "_head", "_tail", "_ttl", "on_error", "storage")

    _hold_class = RedisHold

    def __init__(
        self,
        storage: RedisStorage,
        limit: int,
        queue: int = 0,
        timeout: float | None = None,
        *,
        priorities: int = 1,
        reserve: int = 0,
        lease: float = 30.0,
        on_error: str = "allow",
    ) -> None:
        if not isinstance(storage, RedisStorage):
            raise TypeError(
                f"storage must be a RedisStorage, not {type(storage).__name__}"
            )
        super().__init__(limit, queue, timeout, priorities, reserve, lease)
        if not isinstance(on_error, str) or on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
        self.storage = storage
        self.on_error = on_error
        self._conn = storage._connector
        self._guard = _Guard(
            self._conn, _Who("stanchion concurrency limit", _MEANWHILE[on_error])
        )
        ident = hashlib.blake2b(
            f"{self.limit}:{self.priorities}:{self.reserve}".encode(), digest_size=5
        ).hexdigest()
        self._head = storage.prefix.encode() + b"{"
        self._tail = f"}}:cc:{ident}:".encode()
        self._ttl = int((max(self.lease, PATIENCE) + 60) * 1000)

    def __repr__(self) -> str:
        return (
            f"RedisConcurrency({self.limit}, queue={self.queue}, "
            f"timeout={self.timeout!r}, lease={self.lease!r}, "
            f"storage={self.storage!r})"
        )

    def close(self) -> None:
        self.storage.close()

    async def aclose(self) -> None:
        await self.storage.aclose()

    # -- one script call -------------------------------------------------------

    def _keys(self, key: str | bytes | None) -> list[bytes]:
        if key is None:
            base = self._head + b"*global*" + self._tail + b"g"
        else:
            base = self._head + _key_bytes(key) + self._tail
        return [base + b"h", base + b"q", base + b"l", base + b"s"]

    def _args(self, hold: LeaseHold, op: bytes, mode: int) -> list[Any]:
        lane = self.priorities - 1 - hold.priority
        cap = self.limit - self.reserve * lane
        return [
            op,
            hold._id,
            int(self.lease * 1e6),
            cap,
            self.queue,
            lane * _LANE,
            mode,
            int(PATIENCE * 1e6),
            self._ttl,
            (lane + 1) * _LANE,
        ]

    async def _script(
        self, call: Callable[..., Awaitable[Any]], keys: list[bytes], args: list[Any]
    ) -> Any:
        try:
            return await call("EVALSHA", _SHA, 4, *keys, *args)
        except NoScriptError:
            return await call("EVAL", _SCRIPT, 4, *keys, *args)

    def _run(self, hold: LeaseHold, op: bytes, mode: int = 0) -> Any:
        link = self._conn.sync_link()
        keys, args = self._keys(hold.key), self._args(hold, op, mode)
        return self._guard.call(
            lambda: run_at_once(self._script(at_once(link.call), keys, args))
        )

    async def _arun(self, hold: LeaseHold, op: bytes, mode: int = 0) -> Any:
        link = self._conn.async_link
        keys, args = self._keys(hold.key), self._args(hold, op, mode)
        return await self._guard.acall(self._script, link.call, keys, args)

    def _check(self, reply: Any) -> Any:
        if isinstance(reply, _Unavailable):
            raise StorageUnavailable(
                f"Redis at {self._conn.where} is unavailable"
            ) from reply.cause
        return reply

    def _status(self, hold: LeaseHold, reply: Any) -> int:
        if not isinstance(reply, _Unavailable):
            return int(reply[0])
        if self.on_error == "allow":
            return UNLEASED
        if self.on_error == "deny":
            raise refusal(hold, _UNAVAILABLE, self.limit, None)
        self._check(reply)
        raise AssertionError("unreachable")

    # -- the storage's part of PollingConcurrency ------------------------------

    def _attempt(self, hold: LeaseHold, mode: int) -> int:
        return self._status(hold, self._run(hold, b"acquire", mode))

    async def _aattempt(self, hold: LeaseHold, mode: int) -> int:
        return self._status(hold, await self._arun(hold, b"acquire", mode))

    def _leave(self, hold: LeaseHold) -> None:
        self._run(hold, b"release")  # failed: logged; the lease expires

    async def _aleave(self, hold: LeaseHold) -> None:
        await self._arun(hold, b"release")

    def _extend(self, hold: LeaseHold) -> bool:
        return bool(self._check(self._run(hold, b"extend"))[0] == 1)

    async def _aextend(self, hold: LeaseHold) -> bool:
        return bool(self._check(await self._arun(hold, b"extend"))[0] == 1)

    def _counts(self, key: str | bytes | None) -> tuple[int, int]:
        reply = self._check(self._run(self.hold(key), b"count"))
        return int(reply[1]), int(reply[2])

    async def _acounts(self, key: str | bytes | None) -> tuple[int, int]:
        reply = self._check(await self._arun(self.hold(key), b"count"))
        return int(reply[1]), int(reply[2])
