"""Concurrency limits kept outside this process (Redis, shared memory):
holds are leases taken by attempts, and a queued hold polls.

The storages' classes (``RedisConcurrency``, ``SharedMemoryConcurrency``)
share the holds, the settings, the public methods and the one waiting
flow here; each supplies one attempt (take a lease, or join or keep a
place in the queue), the release and the lease renewal.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

from . import _core
from ._checks import check_seconds
from ._concurrency import ConcurrencyLimitExceeded, refusal
from ._registry import disabled_now
from ._sync import at_once, run_at_once

__all__ = ["LeaseHold", "PollingConcurrency"]

# Attempt results (the storages' scripts and C code use the same codes).
TAKEN, WAITING, FULL, LOST, KEYS = 1, 0, -1, -2, -3
UNLEASED = 2  # the storage did not answer and on_error="allow"
# Attempt modes: take or change nothing, take or join, take or keep place.
TRY, JOIN, POLL = 0, 1, 2

# A queued waiter that has not polled for this long is dropped (it died).
PATIENCE = 5.0
POLL_FIRST = 0.002
POLL_MAX = 0.1

REASONS = {
    FULL: ("queue_full", "the queue is full"),
    WAITING: ("timeout", "no slot freed up within the timeout"),
    LOST: ("shed", "a waiter of higher priority took its place in the queue"),
    KEYS: ("max_keys", "too many keys are tracked (max_keys)"),
}

# Hold states.
_IDLE, _HELD, _UNLEASED = 0, 1, 2


class LeaseHold:
    """A claim on one slot of a shared concurrency limit: ``with`` (or
    ``async with``) takes a lease and gives it back. Reusable once
    released. ``extend()`` renews the lease while holding."""

    __slots__ = ("_id", "_owner", "_state", "key", "priority", "timeout")

    def __init__(
        self,
        owner: PollingConcurrency,
        key: str | bytes | None,
        priority: int,
        timeout: float | None,
    ) -> None:
        self._owner = owner
        self.key = key
        self.priority = priority
        self.timeout = timeout
        self._id = 0
        self._state = _IDLE

    @property
    def held(self) -> bool:
        """True while this hold has a slot (or runs without a lease because
        the storage was unavailable and ``on_error="allow"``)."""
        return self._state != _IDLE

    def __enter__(self) -> LeaseHold:
        self._owner._enter(self)
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    async def __aenter__(self) -> LeaseHold:
        await self._owner._aenter(self)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.arelease()

    def release(self) -> None:
        """Give the slot back."""
        if self._owner._give_back(self):
            self._owner._leave(self)

    async def arelease(self) -> None:
        """:meth:`release` for asyncio code."""
        if self._owner._give_back(self):
            await self._owner._aleave(self)

    def extend(self) -> bool:
        """Renew the lease for another ``lease`` seconds from now; False
        when it had already expired (the slot may be someone else's)."""
        if not self._owner._check_extend(self):
            return True  # no lease to renew: the storage was unavailable
        return self._owner._extend(self)

    async def aextend(self) -> bool:
        """:meth:`extend` for asyncio code."""
        if not self._owner._check_extend(self):
            return True
        return await self._owner._aextend(self)


class PollingConcurrency:
    """What the shared storages' concurrency limits have in common: the
    settings (checked by the in-process engine's rules), ``hold``,
    ``ahold``, ``acquire``, ``aacquire``, ``try_acquire``,
    ``atry_acquire``, ``in_flight``, ``queued`` (and ``a`` twins), and the
    waiting: a queued hold polls after 2 ms, then backs off by half again
    each time up to 100 ms (never past its deadline)."""

    __slots__ = ("lease", "limit", "priorities", "queue", "reserve", "timeout")

    _hold_class: type[LeaseHold] = LeaseHold
    # True when an attempt does no I/O (shared memory): a blocking hold
    # then first tries once without the waiting flow's machinery.
    _instant = False

    def __init__(
        self,
        limit: int,
        queue: int,
        timeout: float | None,
        priorities: int,
        reserve: int,
        lease: float,
    ) -> None:
        probe = _core.Concurrency(limit, queue, timeout, priorities, reserve, 1)
        lease = check_seconds("lease", lease, zero_ok=False)
        if lease < 0.001:
            raise ValueError(f"lease must be at least 0.001 seconds, got {lease!r}")
        self.limit = probe.limit
        self.queue = probe.queue
        self.timeout = probe.timeout
        self.priorities = probe.priorities
        self.reserve = probe.reserve
        self.lease = lease

    # -- what a storage supplies ----------------------------------------------

    def _attempt(self, hold: LeaseHold, mode: int) -> int:
        raise NotImplementedError

    async def _aattempt(self, hold: LeaseHold, mode: int) -> int:
        raise NotImplementedError

    def _leave(self, hold: LeaseHold) -> None:
        raise NotImplementedError

    async def _aleave(self, hold: LeaseHold) -> None:
        raise NotImplementedError

    def _extend(self, hold: LeaseHold) -> bool:
        raise NotImplementedError

    async def _aextend(self, hold: LeaseHold) -> bool:
        raise NotImplementedError

    def _counts(self, key: str | bytes | None) -> tuple[int, int]:
        raise NotImplementedError

    async def _acounts(self, key: str | bytes | None) -> tuple[int, int]:
        raise NotImplementedError

    # -- holds ----------------------------------------------------------------

    def hold(
        self,
        key: str | bytes | None = None,
        /,
        *,
        priority: int = 0,
        timeout: Any = ...,
    ) -> LeaseHold:
        """A hold on one slot for ``key`` (see
        ``stanchion.Concurrency.hold``)."""
        if key is not None and not isinstance(key, (str, bytes)):
            raise TypeError(f"key must be None, str or bytes, not {type(key).__name__}")
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
        return self._hold_class(self, key, priority, timeout)

    ahold = hold

    def acquire(
        self,
        key: str | bytes | None = None,
        /,
        *,
        priority: int = 0,
        timeout: Any = ...,
    ) -> LeaseHold:
        """Take a slot, waiting in the queue; returns the held hold."""
        return self.hold(key, priority=priority, timeout=timeout).__enter__()

    async def aacquire(
        self,
        key: str | bytes | None = None,
        /,
        *,
        priority: int = 0,
        timeout: Any = ...,
    ) -> LeaseHold:
        """:meth:`acquire` for asyncio code."""
        return await self.hold(key, priority=priority, timeout=timeout).__aenter__()

    def try_acquire(
        self, key: str | bytes | None = None, /, *, priority: int = 0
    ) -> LeaseHold | None:
        """A held hold if a slot is free now (no waiting), else None."""
        hold = self.hold(key, priority=priority, timeout=0)
        try:
            return hold.__enter__()
        except ConcurrencyLimitExceeded:
            return None

    async def atry_acquire(
        self, key: str | bytes | None = None, /, *, priority: int = 0
    ) -> LeaseHold | None:
        """:meth:`try_acquire` for asyncio code."""
        hold = self.hold(key, priority=priority, timeout=0)
        try:
            return await hold.__aenter__()
        except ConcurrencyLimitExceeded:
            return None

    def in_flight(self, key: str | bytes | None = None) -> int:
        """Live leases for ``key`` now."""
        return self._counts(self.hold(key).key)[0]

    def queued(self, key: str | bytes | None = None) -> int:
        """Waiters queued for ``key`` now."""
        return self._counts(self.hold(key).key)[1]

    async def ain_flight(self, key: str | bytes | None = None) -> int:
        return (await self._acounts(self.hold(key).key))[0]

    async def aqueued(self, key: str | bytes | None = None) -> int:
        return (await self._acounts(self.hold(key).key))[1]

    # -- the one waiting flow, as a coroutine ---------------------------------

    async def _take(
        self,
        hold: LeaseHold,
        attempt: Callable[[LeaseHold, int], Awaitable[int]],
        leave: Callable[[LeaseHold], Awaitable[None]],
        sleep: Callable[[float], Awaitable[Any]],
    ) -> None:
        if hold._state != _IDLE:
            raise RuntimeError("cannot enter a hold that is held")
        hold._id = self._new_id()
        timeout = hold.timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        mode = TRY if timeout == 0 else JOIN
        pause = POLL_FIRST
        queued = False
        try:
            while True:
                status = await attempt(hold, mode)
                if status == TAKEN:
                    hold._state = _HELD
                    return
                if status == UNLEASED:
                    hold._state = _UNLEASED
                    return
                if status == LOST:
                    queued = False
                if status != WAITING or mode == TRY:
                    raise self._refusal(hold, status)
                queued = True
                mode = POLL
                wait = pause
                if deadline is not None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise self._refusal(hold, WAITING)
                    wait = min(wait, left)
                await sleep(wait)
                pause = min(pause * 1.5, POLL_MAX)
        except ConcurrencyLimitExceeded:
            if queued:  # leave the queue
                await leave(hold)
            raise
        except BaseException:
            # Interrupted (cancelled, KeyboardInterrupt), maybe mid-call:
            # the storage may have queued it or given it a lease. Best
            # effort; else its patience and the lease run out.
            await leave(hold)
            raise

    def _refusal(self, hold: LeaseHold, status: int) -> ConcurrencyLimitExceeded:
        return refusal(hold, REASONS[status], self.limit, None)

    def _new_id(self) -> int:
        """A lease id no other holder of the key can have: random (hosts
        share Redis)."""
        return int.from_bytes(os.urandom(8), "little") >> 1 or 1

    def _enter(self, hold: LeaseHold) -> None:
        if hold._state == _IDLE and disabled_now():
            hold._state = _UNLEASED  # stanchion.testing.disabled(): no lease
            return
        if self._instant and hold._state == _IDLE:
            hold._id = self._new_id()
            if self._attempt(hold, TRY) == TAKEN:
                hold._state = _HELD
                return

        async def sleep(seconds: float) -> None:
            time.sleep(seconds)

        run_at_once(
            self._take(hold, at_once(self._attempt), at_once(self._leave), sleep)
        )

    async def _aenter(self, hold: LeaseHold) -> None:
        if hold._state == _IDLE and disabled_now():
            hold._state = _UNLEASED
            return
        await self._take(hold, self._aattempt, self._aleave, asyncio.sleep)

    def _give_back(self, hold: LeaseHold) -> bool:
        """Marks `hold` released; True when it has a lease to give back."""
        if hold._state == _IDLE:
            raise RuntimeError("cannot release a hold that is idle")
        leased = hold._state == _HELD
        hold._state = _IDLE
        return leased

    def _check_extend(self, hold: LeaseHold) -> bool:
        """False when there is no lease to renew (unleased: nothing to
        do, so the caller answers True)."""
        if hold._state == _IDLE:
            raise RuntimeError("cannot extend a hold that is idle")
        return hold._state == _HELD
