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
leaves the queue within ``_PATIENCE`` seconds.

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

import asyncio
import hashlib
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

from redis.exceptions import NoScriptError

from .. import _core
from .._checks import check_seconds
from .._concurrency import ConcurrencyLimitExceeded, refusal
from .._errors import StorageUnavailable
from .._limiter import ON_ERROR
from .._sync import at_once, run_at_once
from .limiter import RedisStorage, _key_bytes
from .outage import _Guard, _Unavailable, _Who

__all__ = ["RedisConcurrency", "RedisHold"]

# A queued waiter that has not polled for this long is dropped (it died).
_PATIENCE = 5.0
_POLL_FIRST = 0.002
_POLL_MAX = 0.1
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

# Script answers: taken, queued (or not taken), queue full, lost place.
_TAKEN, _WAITING, _FULL, _LOST = 1, 0, -1, -2

_MEANWHILE = {
    "allow": "holds run without a slot (on_error='allow')",
    "deny": "holds are refused (on_error='deny')",
    "raise": "holds raise StorageUnavailable (on_error='raise')",
}
_REASONS = {
    "full": ("queue_full", "the queue is full"),
    "timeout": ("timeout", "no slot freed up within the timeout"),
    "shed": ("shed", "a waiter of higher priority took its place in the queue"),
    "unavailable": ("unavailable", "Redis is unavailable (on_error='deny')"),
}

# Hold states.
_IDLE, _HELD, _UNLEASED = 0, 1, 2


class RedisHold:
    """A claim on one slot of a :class:`RedisConcurrency`: ``with`` (or
    ``async with``) takes it and gives it back. Reusable once released."""

    __slots__ = ("_id", "_owner", "_state", "key", "priority", "timeout")

    def __init__(
        self,
        owner: RedisConcurrency,
        key: str | bytes | None,
        priority: int,
        timeout: float | None,
    ) -> None:
        self._owner = owner
        self.key = key
        self.priority = priority
        self.timeout = timeout
        self._id = b""
        self._state = _IDLE

    @property
    def held(self) -> bool:
        """True while this hold has a slot (or runs unleased because Redis
        was unavailable and ``on_error="allow"``)."""
        return self._state != _IDLE

    def __enter__(self) -> RedisHold:
        self._owner._enter(self)
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    async def __aenter__(self) -> RedisHold:
        await self._owner._aenter(self)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.arelease()

    def release(self) -> None:
        """Give the slot back (blocking client)."""
        self._owner._release(self)

    async def arelease(self) -> None:
        """Give the slot back (asyncio client)."""
        await self._owner._arelease(self)

    def extend(self) -> bool:
        """Renew the lease for another ``lease`` seconds from now; False
        when it had already expired (the slot may be someone else's)."""
        return self._owner._extend(self)

    async def aextend(self) -> bool:
        """:meth:`extend` for asyncio code."""
        return await self._owner._aextend(self)


class RedisConcurrency:
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

    __slots__ = (
        "_conn",
        "_guard",
        "_head",
        "_tail",
        "_ttl",
        "lease",
        "limit",
        "on_error",
        "priorities",
        "queue",
        "reserve",
        "storage",
        "timeout",
    )

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
        # The in-process engine checks the shared settings (one owner of
        # those rules and messages).
        probe = _core.Concurrency(limit, queue, timeout, priorities, reserve, 1)
        lease = check_seconds("lease", lease, zero_ok=False)
        if lease < 0.001:
            raise ValueError(f"lease must be at least 0.001 seconds, got {lease!r}")
        if not isinstance(on_error, str) or on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
        self.storage = storage
        self.limit = probe.limit
        self.queue = probe.queue
        self.timeout = probe.timeout
        self.priorities = probe.priorities
        self.reserve = probe.reserve
        self.lease = lease
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
        self._ttl = int((max(lease, _PATIENCE) + 60) * 1000)

    def __repr__(self) -> str:
        return (
            f"RedisConcurrency({self.limit}, queue={self.queue}, "
            f"timeout={self.timeout!r}, lease={self.lease!r}, "
            f"storage={self.storage!r})"
        )

    # -- holds ---------------------------------------------------------------

    def hold(
        self,
        key: str | bytes | None = None,
        /,
        *,
        priority: int = 0,
        timeout: Any = ...,
    ) -> RedisHold:
        """A :class:`RedisHold` on one slot for ``key`` (see
        ``stanchion.Concurrency.hold``)."""
        if key is not None:
            _key_bytes(key)
        if isinstance(priority, bool) or not isinstance(priority, int):
            raise TypeError(f"priority must be an int, not {type(priority).__name__}")
        if not 0 <= priority < self.priorities:
            raise ValueError(
                f"priority must be between 0 and {self.priorities - 1}, got {priority}"
            )
        if timeout is ...:
            timeout = self.timeout
        else:
            timeout = _core.Concurrency(1, 0, timeout).timeout  # the same checks
        return RedisHold(self, key, priority, timeout)

    ahold = hold

    def acquire(
        self,
        key: str | bytes | None = None,
        /,
        *,
        priority: int = 0,
        timeout: Any = ...,
    ) -> RedisHold:
        """Take a slot, waiting in the queue; returns the held hold."""
        return self.hold(key, priority=priority, timeout=timeout).__enter__()

    async def aacquire(
        self,
        key: str | bytes | None = None,
        /,
        *,
        priority: int = 0,
        timeout: Any = ...,
    ) -> RedisHold:
        """:meth:`acquire` for asyncio code."""
        return await self.hold(key, priority=priority, timeout=timeout).__aenter__()

    def try_acquire(
        self, key: str | bytes | None = None, /, *, priority: int = 0
    ) -> RedisHold | None:
        """A held hold if a slot is free now (no waiting), else None."""
        hold = self.hold(key, priority=priority, timeout=0)
        try:
            return hold.__enter__()
        except ConcurrencyLimitExceeded:
            return None

    async def atry_acquire(
        self, key: str | bytes | None = None, /, *, priority: int = 0
    ) -> RedisHold | None:
        """:meth:`try_acquire` for asyncio code."""
        hold = self.hold(key, priority=priority, timeout=0)
        try:
            return await hold.__aenter__()
        except ConcurrencyLimitExceeded:
            return None

    def in_flight(self, key: str | bytes | None = None) -> int:
        """Unexpired leases for ``key`` now."""
        return int(self._count(key)[1])

    def queued(self, key: str | bytes | None = None) -> int:
        """Waiters queued for ``key`` now."""
        return int(self._count(key)[2])

    async def ain_flight(self, key: str | bytes | None = None) -> int:
        return int((await self._acount(key))[1])

    async def aqueued(self, key: str | bytes | None = None) -> int:
        return int((await self._acount(key))[2])

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

    def _args(self, hold: RedisHold, op: bytes, mode: bytes) -> list[Any]:
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
            int(_PATIENCE * 1e6),
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

    def _run(self, keys: list[bytes], args: list[Any]) -> Any:
        link = self._conn.sync_link()
        return self._guard.call(
            lambda: run_at_once(self._script(at_once(link.call), keys, args))
        )

    async def _arun(self, keys: list[bytes], args: list[Any]) -> Any:
        link = self._conn.async_link
        return await self._guard.acall(self._script, link.call, keys, args)

    def _count(self, key: str | bytes | None) -> Any:
        hold = self.hold(key)
        return self._check(self._run(self._keys(key), self._args(hold, b"count", b"0")))

    async def _acount(self, key: str | bytes | None) -> Any:
        hold = self.hold(key)
        reply = await self._arun(self._keys(key), self._args(hold, b"count", b"0"))
        return self._check(reply)

    def _check(self, reply: Any) -> Any:
        if isinstance(reply, _Unavailable):
            raise StorageUnavailable(
                f"Redis at {self._conn.where} is unavailable"
            ) from reply.cause
        return reply

    # -- taking a slot: one flow for both, as a coroutine ------------------------

    async def _take(
        self,
        hold: RedisHold,
        run: Callable[[list[bytes], list[Any]], Awaitable[Any]],
        sleep: Callable[[float], Awaitable[Any]],
    ) -> None:
        if hold._state != _IDLE:
            raise RuntimeError("cannot enter a hold that is held")
        keys = self._keys(hold.key)
        hold._id = os.urandom(12).hex().encode()
        timeout = hold.timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        mode = b"0" if timeout == 0 else b"1"
        pause = _POLL_FIRST
        joined = False
        try:
            while True:
                reply = await run(keys, self._args(hold, b"acquire", mode))
                if isinstance(reply, _Unavailable):
                    self._unavailable(hold, reply)
                    return
                status = reply[0]
                if status == _TAKEN:
                    hold._state = _HELD
                    return
                if status == _FULL:
                    raise self._refusal(hold, "full")
                if status == _LOST:  # shed, or dropped after a long stall
                    joined = False
                    raise self._refusal(hold, "shed")
                if mode == b"0":  # try only: nothing was queued
                    raise self._refusal(hold, "timeout")
                joined = True
                mode = b"2"
                wait = pause
                if deadline is not None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise self._refusal(hold, "timeout")
                    wait = min(wait, left)
                await sleep(wait)
                pause = min(pause * 1.5, _POLL_MAX)
        except ConcurrencyLimitExceeded:
            if joined:  # leave the queue
                await run(keys, self._args(hold, b"release", b"0"))
            raise
        except BaseException:
            # Interrupted (cancelled, KeyboardInterrupt) maybe mid-call:
            # the server may have queued it or given it a slot. Best
            # effort; else the queue's patience and the lease expire.
            await run(keys, self._args(hold, b"release", b"0"))
            raise

    def _unavailable(self, hold: RedisHold, reply: _Unavailable) -> None:
        if self.on_error == "allow":
            hold._state = _UNLEASED
        elif self.on_error == "deny":
            raise self._refusal(hold, "unavailable")
        else:
            raise StorageUnavailable(
                f"Redis at {self._conn.where} is unavailable"
            ) from reply.cause

    def _refusal(self, hold: RedisHold, why: str) -> ConcurrencyLimitExceeded:
        return refusal(hold, _REASONS[why], self.limit, None)

    def _enter(self, hold: RedisHold) -> None:
        async def sleep(seconds: float) -> None:
            time.sleep(seconds)

        run_at_once(self._take(hold, at_once(self._run), sleep))

    async def _aenter(self, hold: RedisHold) -> None:
        await self._take(hold, self._arun, asyncio.sleep)

    def _give_back(self, hold: RedisHold) -> tuple[list[bytes], list[Any]] | None:
        if hold._state == _IDLE:
            raise RuntimeError("cannot release a hold that is idle")
        leased = hold._state == _HELD
        hold._state = _IDLE
        if not leased:
            return None
        return self._keys(hold.key), self._args(hold, b"release", b"0")

    def _release(self, hold: RedisHold) -> None:
        call = self._give_back(hold)
        if call is not None:
            self._run(*call)  # failed: logged; the lease expires

    async def _arelease(self, hold: RedisHold) -> None:
        call = self._give_back(hold)
        if call is not None:
            await self._arun(*call)

    def _extend_args(self, hold: RedisHold) -> tuple[list[bytes], list[Any]] | None:
        if hold._state == _IDLE:
            raise RuntimeError("cannot extend a hold that is idle")
        if hold._state == _UNLEASED:
            return None
        return self._keys(hold.key), self._args(hold, b"extend", b"0")

    def _extend(self, hold: RedisHold) -> bool:
        call = self._extend_args(hold)
        return True if call is None else bool(self._check(self._run(*call))[0] == 1)

    async def _aextend(self, hold: RedisHold) -> bool:
        call = self._extend_args(hold)
        if call is None:
            return True
        return bool(self._check(await self._arun(*call))[0] == 1)
