"""Concurrency limits: at most N holders per key, a bounded fair queue.

``Concurrency`` is the C engine (``_core.Concurrency``: counters, queues
and the hand-over of slots) plus the waiting, which is Python's own
threading and asyncio primitives: a queued thread blocks on a lock of its
own with the GIL released; a queued task awaits a future that the
releasing side resolves through ``loop.call_soon_threadsafe`` (so a slot
released in another thread or event loop wakes it safely). Nothing polls.
"""

from __future__ import annotations

import _thread
import asyncio
import threading
from collections.abc import Callable
from functools import partial
from typing import Any, overload

from . import _core
from . import metrics as _metrics
from ._core import Hold

__all__ = ["Concurrency", "ConcurrencyLimitExceeded", "Hold"]

# Results of Hold._queue (conc_type.c).
_HELD, _WAITING, _FULL, _TIMEOUT, _KEYS = 0, 1, 2, 3, 4

_REASONS = {
    _FULL: ("queue_full", "the queue is full"),
    _TIMEOUT: ("timeout", "no slot freed up within the timeout"),
    _KEYS: ("max_keys", "too many keys are tracked (max_keys)"),
}
_SHED = ("shed", "a waiter of higher priority took its place in the full queue")

_DEFAULT: Any = object()  # "the Concurrency's own timeout"


class ConcurrencyLimitExceeded(Exception):
    """A hold refused: no slot for its key in time.

    ``reason`` says why: ``"queue_full"`` (all slots held and the queue
    full, or no queue), ``"timeout"`` (no slot within the wait's
    ``timeout``; ``timeout=0`` refuses at once), ``"shed"`` (it was
    queued, and a waiter of a higher priority took its place in the full
    queue), ``"max_keys"`` (the key table is full), ``"unavailable"``
    (a shared storage could not answer; ``on_error="deny"``).
    ``retry_after``: an estimate of the seconds until a slot frees up
    (from the mean hold time, the waiters ahead and the limit), or None
    before any hold ended. ``key`` and ``priority``: the hold's.
    """

    def __init__(
        self,
        reason: str,
        message: str,
        *,
        key: str | bytes | None = None,
        priority: int = 0,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.key = key
        self.priority = priority
        self.retry_after = retry_after

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled with its fields (multiprocessing, logging to queues):
        # the default would call cls(message) and fail.
        return (
            type(self),
            (self.reason, str(self)),
            {
                "key": self.key,
                "priority": self.priority,
                "retry_after": self.retry_after,
            },
        )


def refusal(
    hold: Any, reason: tuple[str, str], limit: int, retry_after: float | None
) -> ConcurrencyLimitExceeded:
    """The exception for a refused ``hold`` (any storage's)."""
    where = "" if hold.key is None else f" for key {hold.key!r}"
    return ConcurrencyLimitExceeded(
        reason[0],
        f"concurrency limit {limit} reached{where}: {reason[1]}",
        key=hold.key,
        priority=hold.priority,
        retry_after=retry_after,
    )


def _resolve(fut: asyncio.Future[bool], value: bool) -> None:
    if not fut.done():
        fut.set_result(value)


def _expire(hold: Hold, fut: asyncio.Future[bool]) -> None:
    # The deadline: leave the queue if still in it; if not, a slot (or a
    # shed) is already on its way to `fut`.
    if hold._cancel():
        _resolve(fut, False)


class Concurrency(_core.Concurrency):
    """At most ``limit`` holders in flight per key, the others waiting in
    a bounded queue, served in arrival order::

        c = stanchion.Concurrency(8, queue=32, timeout=5.0)
        with c.hold(client):             # threads
            ...
        async with c.ahold(client):      # asyncio
            ...

    ``key`` (str or bytes) gives each key its own ``limit`` slots and
    queue; without one (``hold()``, ``key=None``) one global limit applies.

    ``queue``: waiters per key, at most (0: none; refused at once when no
    slot is free). ``timeout``: the default wait in seconds; None waits as
    long as the queue allows, 0 never waits; ``hold(..., timeout=)``
    overrides it. A refusal (queue full, deadline passed) raises
    :class:`ConcurrencyLimitExceeded`. A slot is given back on every exit
    path: an exception, a cancelled task (``asyncio.CancelledError``)
    whether it was waiting or holding, a timeout; a waiter that gives up
    leaves the queue at once and never takes a slot, and a slot handed to
    a waiter at the moment it gave up is passed on to the next one.

    Priorities (load shedding, as Stripe does): ``priorities=N`` lanes,
    ``hold(key, priority=p)`` with p from 0 (least important, the
    default) to N-1 (most). Waiters of a higher lane are served first,
    FIFO within a lane. ``reserve`` slots per lane step are kept for the
    lanes above: lane p may hold a slot only while fewer than ``limit -
    reserve * (N - 1 - p)`` are in flight (``Concurrency(10, priorities=2,
    reserve=2)``: normal traffic gets 8 slots, ``priority=1`` all 10).
    When the queue is full, an arrival of a higher lane takes the place of
    the newest waiter of the lowest lane below it, which is refused
    (reason ``"shed"``): lower priority traffic is refused first.

    ``max_keys`` bounds memory: a key's state exists only while something
    holds or waits on it, and a new key past ``max_keys`` tracked at once
    (default 100,000; 1,000 in shared memory) is refused (reason
    ``"max_keys"``).

    ``hold()`` and ``ahold()`` make the same :class:`Hold`; a free slot is
    taken and given back in C (``async with`` on a free slot suspends
    nothing). Use ``ahold`` with ``async with`` in asyncio code: ``with``
    blocks the thread (and so its event loop) while it waits.

    Explicit primitives: ``acquire(key)`` / ``await aacquire(key)`` return
    a held :class:`Hold` (call its ``release()``), ``try_acquire(key)``
    returns one or None without waiting. ``in_flight(key)``,
    ``queued(key)`` and ``stats()`` read the counters.

    ``storage``: None (this process, the C engine); a
    ``SharedMemoryStorage`` or ``"shm://name"`` (the processes of one
    host: ``SharedMemoryConcurrency``, with ``lease``); a ``RedisStorage``,
    ``redis://`` URL or Redis client (every process and host:
    ``stanchion.redis.RedisConcurrency``, with ``lease`` and
    ``on_error``). Their slots are leases: a holder that dies frees its
    slot within ``lease`` seconds (default 30), and their queued holds
    poll.

    ``name``: the ``scope`` label of its queue's metrics
    (:mod:`stanchion.metrics`; default ``"default"``); a rule's slots are
    named after the rule's scope.
    """

    __slots__ = ("name",)

    @overload
    def __new__(
        cls,
        limit: int,
        queue: int = ...,
        timeout: float | None = ...,
        *,
        priorities: int = ...,
        reserve: int = ...,
        max_keys: int | None = ...,
        storage: None = ...,
        name: str = ...,
    ) -> Concurrency: ...

    @overload
    def __new__(
        cls,
        limit: int,
        queue: int = ...,
        timeout: float | None = ...,
        *,
        priorities: int = ...,
        reserve: int = ...,
        max_keys: int | None = ...,
        storage: object,
        lease: float | None = ...,
        on_error: str | None = ...,
    ) -> Any: ...

    def __new__(
        cls,
        limit: int,
        queue: int = 0,
        timeout: float | None = None,
        *,
        priorities: int = 1,
        reserve: int = 0,
        max_keys: int | None = None,
        storage: object = None,
        lease: float | None = None,
        on_error: str | None = None,
        name: str = "default",
    ) -> Any:
        if storage is None:
            if lease is not None or on_error is not None:
                raise ValueError(
                    "lease and on_error apply to a shared storage (Redis, shared "
                    "memory) only"
                )
            return super().__new__(cls)
        from ._storage_concurrency import make_concurrency

        return make_concurrency(
            storage,
            limit=limit,
            queue=queue,
            timeout=timeout,
            priorities=priorities,
            reserve=reserve,
            max_keys=max_keys,
            lease=30.0 if lease is None else lease,
            on_error=on_error,
            name=_check_name(name),
        )

    def __init__(
        self,
        limit: int,
        queue: int = 0,
        timeout: float | None = None,
        *,
        priorities: int = 1,
        reserve: int = 0,
        max_keys: int | None = None,
        storage: object = None,
        lease: float | None = None,
        on_error: str | None = None,
        name: str = "default",
    ) -> None:
        _check_name(name)
        super().__init__(
            limit,
            queue,
            timeout,
            priorities,
            reserve,
            100_000 if max_keys is None else max_keys,
        )
        self.name = name

    def __repr__(self) -> str:
        return (
            f"Concurrency({self.limit}, queue={self.queue}, "
            f"timeout={self.timeout!r}, priorities={self.priorities}, "
            f"reserve={self.reserve})"
        )

    # ---- the explicit primitives ------------------------------------------

    def _new_hold(self, key: Any, priority: int, timeout: Any) -> Hold:
        if timeout is _DEFAULT:
            return self.hold(key, priority=priority)
        return self.hold(key, priority=priority, timeout=timeout)

    def acquire(
        self,
        key: str | bytes | None = None,
        /,
        *,
        priority: int = 0,
        timeout: float | None = _DEFAULT,
    ) -> Hold:
        """Take a slot, waiting in the queue; returns the held Hold (give
        it back with ``release()``). Raises ConcurrencyLimitExceeded."""
        hold = self._new_hold(key, priority, timeout)
        hold.__enter__()
        return hold

    async def aacquire(
        self,
        key: str | bytes | None = None,
        /,
        *,
        priority: int = 0,
        timeout: float | None = _DEFAULT,
    ) -> Hold:
        """:meth:`acquire` for asyncio code."""
        hold: Hold = await self._new_hold(key, priority, timeout).__aenter__()
        return hold

    # ---- waiting (called by the C fast path when no slot is free) ---------

    def _refusal(self, hold: Hold, reason: tuple[str, str]) -> ConcurrencyLimitExceeded:
        return refusal(hold, reason, self.limit, hold._retry_after())

    def _enter_slow(self, hold: Hold) -> Hold:
        """Queue `hold` and block this thread until it gets a slot."""
        lock = _thread.allocate_lock()
        lock.acquire()
        status = hold._queue(lock.release)
        if status == _HELD:
            return hold
        if status != _WAITING:
            raise self._refusal(hold, _REASONS[status])
        started = (
            _metrics.queue_entered(self.name) if _metrics._queue is not None else 0.0
        )
        timeout = hold.timeout
        result = "cancelled"
        try:
            if timeout is None:
                woken = lock.acquire()
            else:
                woken = lock.acquire(timeout=min(timeout, threading.TIMEOUT_MAX))
            if not woken and hold._cancel():
                result = "timeout"
                raise self._refusal(hold, _REASONS[_TIMEOUT])
            if not hold.held:
                result = "shed"
            granted = self._granted_or_shed(hold)
            result = "acquired"
            return granted
        except BaseException:  # KeyboardInterrupt, or a signal handler's
            if result == "cancelled":
                _give_up(hold)
            raise
        finally:
            if started:
                _metrics.queue_left(self.name, started, result)

    async def _aenter_slow(self, hold: Hold) -> Hold:
        """Queue `hold` and wait, with asyncio, until it gets a slot."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[bool] = loop.create_future()
        wake: Callable[[], object] = partial(
            loop.call_soon_threadsafe, _resolve, fut, True
        )
        status = hold._queue(wake)
        if status == _HELD:
            return hold
        if status != _WAITING:
            raise self._refusal(hold, _REASONS[status])
        started = (
            _metrics.queue_entered(self.name) if _metrics._queue is not None else 0.0
        )
        timeout = hold.timeout
        timer = (
            None if timeout is None else loop.call_later(timeout, _expire, hold, fut)
        )
        result = "cancelled"
        try:
            try:
                woken = await fut
            except BaseException:  # CancelledError, GeneratorExit
                _give_up(hold)
                raise
            finally:
                if timer is not None:
                    timer.cancel()
            if not woken:
                result = "timeout"
                raise self._refusal(hold, _REASONS[_TIMEOUT])
            if not hold.held:
                result = "shed"
            granted = self._granted_or_shed(hold)
            result = "acquired"
            return granted
        finally:
            if started:
                _metrics.queue_left(self.name, started, result)

    def _granted_or_shed(self, hold: Hold) -> Hold:
        if hold.held:
            return hold
        hold._cancel()  # shed: back to idle
        raise self._refusal(hold, _SHED)


def _check_name(name: object) -> str:
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty str, got {name!r}")
    return name


def _give_up(hold: Hold) -> None:
    """A waiter interrupted: leave the queue, or, if a slot reached it
    meanwhile, pass the slot on."""
    if not hold._cancel() and hold.held:
        hold.release()
