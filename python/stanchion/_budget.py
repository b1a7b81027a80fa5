"""One upstream's budget: what a Pool provider and the httpx transport ask
before each call, and tell after it.

A :class:`Budget` joins three things, each shared through the storage
given (in-process, shared memory or Redis) by every process that names the
same upstream:

- the upstream's rates, a :class:`~stanchion.Limiter` keyed by the name;
  paced by default (``burst=1``), so that no interval of a rate's length
  ever holds more calls than its count, whichever way the upstream counts
  (fixed windows, a sliding log, a token bucket);
- pauses the upstream asks for: ``Retry-After``, or a spent ``RateLimit`` /
  ``X-RateLimit-*`` budget with its reset (see :mod:`._upstream`); a bare
  429 backs off 1 s, doubling while 429s keep coming, up to ``cooldown``;
- a circuit breaker: ``failures`` failed calls in a row (counted by each
  process) pause the upstream for ``cooldown`` seconds for every process;
  then one call at a time (a half-open probe, claimed through the
  storage) tries it: a success closes the breaker, a failure opens it
  again.

``rate=None`` has no rates: only the pauses and the breaker. ``rate`` may
also be a limiter (a :class:`~stanchion.RateLimiter`, paced as above)
that several budgets share, each as its own key; ``pauses`` a table from
``pauses_for(storage)`` that they share: one of each serves any number of
upstreams (a shared-memory storage opens a file for each).

``rate="auto"`` replaces the rates by a pace this process learns: it
starts at ``auto_start`` calls per second, adds ``auto_increase`` per
second of successful calls and halves on each 429 (additive increase,
multiplicative decrease), between ``auto_min`` and ``auto_max``.

Python equivalent of a call through a budget::

    wait = budget.take()          # 0.0: go; else seconds to wait
    if not wait:
        try:
            answer = call()
        except Exception as e:
            budget.settle(False, error=e)
        else:
            budget.settle(ok(answer), answer=answer)
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from typing import Any

from ._limiter import Limiter, RateLimiter
from ._pauses import Pauses, pauses_for
from ._upstream import pause_from_answer

__all__ = ["Budget", "answer_of"]

_BACKOFF_FIRST = 1.0  # a bare 429's first pause, in seconds
# How often a caller asks again while another's half-open probe is out (a
# claim tells no one when it ends), at most: the cool-down when shorter.
_PROBE_POLL = 1.0


def _positive(name: str, value: object, *, zero_ok: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, not {type(value).__name__}")
    v = float(value)
    if not math.isfinite(v) or v < 0 or (v == 0 and not zero_ok):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return v


def _count(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return value


def answer_of(result: object) -> tuple[int | None, Any]:
    """The (status, headers) of a call's result or exception, by duck
    typing: ``status_code`` (httpx, requests) or ``status`` (aiohttp,
    urllib) and ``headers``; an exception's ``response`` (httpx's
    HTTPStatusError, requests' HTTPError). (None, None) when it has none."""
    response = (
        getattr(result, "response", None)
        if isinstance(result, BaseException)
        else result
    )
    if response is None:
        return None, None
    status = getattr(response, "status_code", None)
    if status is None:
        status = getattr(response, "status", None)
    if isinstance(status, bool) or not isinstance(status, int):
        return None, None
    return status, getattr(response, "headers", None)


class _AutoPace:
    """A pace learnt from the answers: additive increase, multiplicative
    decrease. Local to the process; thread-safe."""

    __slots__ = ("_lock", "_next", "clock", "increase", "maximum", "minimum", "rate")

    def __init__(
        self,
        start: float,
        minimum: float,
        maximum: float,
        increase: float,
        clock: Callable[[], float],
    ) -> None:
        if not minimum <= start <= maximum:
            raise ValueError(
                f"auto_start must lie within [auto_min, auto_max], got "
                f"{start} not in [{minimum}, {maximum}]"
            )
        self.rate = start
        self.minimum = minimum
        self.maximum = maximum
        self.increase = increase
        self.clock = clock
        self._next = -math.inf
        self._lock = threading.Lock()

    def take(self) -> float:
        with self._lock:
            now = self.clock()
            if now < self._next:
                return self._next - now
            self._next = max(now, self._next) + 1.0 / self.rate
            return 0.0

    def succeeded(self) -> None:
        # ``increase`` calls/s more per second of calls at this pace.
        with self._lock:
            self.rate = min(self.maximum, self.rate + self.increase / self.rate)

    def refused(self) -> None:
        with self._lock:
            self.rate = max(self.minimum, self.rate / 2)


class Budget:
    """The budget of one upstream named ``name`` (see the module doc)."""

    def __init__(
        self,
        name: str,
        rate: object,
        *,
        storage: object = None,
        burst: int | list[int | None] | None = 1,
        algorithm: str = "token_bucket",
        failures: int = 5,
        cooldown: float = 30.0,
        max_pause: float = 3600.0,
        auto_start: float = 1.0,
        auto_min: float = 0.1,
        auto_max: float = 1000.0,
        auto_increase: float = 1.0,
        clock: Callable[[], float] | None = None,
        pauses: Pauses | None = None,
    ) -> None:
        if not isinstance(name, str):
            raise TypeError(f"name must be a str, not {type(name).__name__}")
        if not name:
            raise ValueError("name must not be empty")
        self.failures = _count("failures", failures)
        self.cooldown = _positive("cooldown", cooldown)
        self.max_pause = _positive("max_pause", max_pause)
        self.name = name
        self.clock = time.monotonic if clock is None else clock
        self.auto: _AutoPace | None = None
        self.limiter: Any = None
        if rate == "auto":
            self.auto = _AutoPace(
                _positive("auto_start", auto_start),
                _positive("auto_min", auto_min),
                _positive("auto_max", auto_max),
                _positive("auto_increase", auto_increase),
                self.clock,
            )
        elif isinstance(rate, RateLimiter):
            self.limiter = rate
        elif rate is not None:
            if algorithm != "token_bucket":
                burst = None
            if clock is not None and storage is None:
                self.limiter = Limiter(
                    rate,  # type: ignore[arg-type]
                    algorithm=algorithm,
                    burst=burst,
                    clock=clock,
                )
            else:
                self.limiter = Limiter(
                    rate,  # type: ignore[arg-type]
                    algorithm=algorithm,
                    burst=burst,
                    storage=storage,
                )
        self.pauses = pauses_for(storage, clock=clock) if pauses is None else pauses
        # Half-open while the pause on _half outlasts the one on _closed: a
        # pause cannot be cut short, so the breaker opens by pausing _half
        # past _closed, and closes by pausing _closed past _half.
        self._half = name + "\x00half"
        self._closed = name + "\x00closed"
        self._probe = name + "\x00probe"  # who tries it while half-open
        self._lock = threading.Lock()
        self._failed = 0  # failed calls in a row, in this process
        self._refused = 0  # bare 429s in a row, in this process
        self._probing = False

    def __repr__(self) -> str:
        rate = (
            "auto"
            if self.auto is not None
            else None
            if self.limiter is None
            else ";".join(map(str, self.limiter.rates))
        )
        return f"Budget({self.name!r}, {rate!r})"

    # -- before a call -------------------------------------------------------

    def take(self) -> float:
        """0.0 when a call may go now (its budget is spent); otherwise the
        seconds after which trying again may succeed."""
        wait = self.pauses.remaining(self.name)
        if wait > 0:
            return wait
        half = self.pauses.remaining(self._half)
        if half > 0 and half > self.pauses.remaining(self._closed):
            if not self.pauses.claim(self._probe, self.cooldown):
                return min(self.cooldown, _PROBE_POLL)
            wait = self._spend()
            if wait:
                # No budget for the probe: let the next caller try.
                self.pauses.release(self._probe)
            else:
                self._probing = True
            return wait
        return self._spend()

    async def atake(self) -> float:
        """:meth:`take` for asyncio."""
        wait = await self.pauses.aremaining(self.name)
        if wait > 0:
            return wait
        half = await self.pauses.aremaining(self._half)
        if half > 0 and half > await self.pauses.aremaining(self._closed):
            if not await self.pauses.aclaim(self._probe, self.cooldown):
                return min(self.cooldown, _PROBE_POLL)
            wait = await self._aspend()
            if wait:
                await self.pauses.arelease(self._probe)
            else:
                self._probing = True
            return wait
        return await self._aspend()

    def _spend(self) -> float:
        if self.auto is not None:
            return self.auto.take()
        if self.limiter is None:
            return 0.0
        d = self.limiter.hit(self.name)
        return 0.0 if d.allowed else max(d.retry_after, 0.001)

    async def _aspend(self) -> float:
        if self.auto is not None:
            return self.auto.take()
        if self.limiter is None:
            return 0.0
        d = await self.limiter.ahit(self.name)
        return 0.0 if d.allowed else max(d.retry_after, 0.001)

    # -- after a call --------------------------------------------------------

    def settle(
        self, ok: bool, *, answer: object = None, error: BaseException | None = None
    ) -> float:
        """Tell the outcome of a call :meth:`take` let through: ``ok``, the
        result (``answer``) or the exception (``error``). Returns the pause
        it set (0.0 for none)."""
        pause, release = self._outcome(ok, error if error is not None else answer)
        if pause:
            self.pauses.pause(self.name, pause)
            if release is None:
                closed = self.pauses.remaining(self._closed)
                self.pauses.pause(self._half, max(2 * pause, closed + pause))
        if release:
            half = self.pauses.remaining(self._half)
            if half > 0:
                self.pauses.pause(self._closed, half + 0.001)
            self.pauses.release(self._probe)
        return pause

    async def asettle(
        self, ok: bool, *, answer: object = None, error: BaseException | None = None
    ) -> float:
        """:meth:`settle` for asyncio."""
        pause, release = self._outcome(ok, error if error is not None else answer)
        if pause:
            await self.pauses.apause(self.name, pause)
            if release is None:
                closed = await self.pauses.aremaining(self._closed)
                await self.pauses.apause(self._half, max(2 * pause, closed + pause))
        if release:
            half = await self.pauses.aremaining(self._half)
            if half > 0:
                await self.pauses.apause(self._closed, half + 0.001)
            await self.pauses.arelease(self._probe)
        return pause

    def abandon(self) -> None:
        """Tell that a call :meth:`take` let through ended without an
        outcome (cancelled, interrupted, never sent): it counts neither
        way, and the half-open probe it may have been is left to the next
        caller."""
        with self._lock:
            probing, self._probing = self._probing, False
        if probing:
            self.pauses.release(self._probe)

    async def aabandon(self) -> None:
        """:meth:`abandon` for asyncio."""
        with self._lock:
            probing, self._probing = self._probing, False
        if probing:
            await self.pauses.arelease(self._probe)

    def _outcome(self, ok: bool, result: object) -> tuple[float, bool | None]:
        """(pause, release): the pause to set, and whether to close a
        half-open breaker (True), open it (None: the pause is the
        breaker's cool-down) or leave it (False)."""
        status, headers = answer_of(result)
        asked = None
        if status is not None:
            asked = pause_from_answer(status, headers, max_seconds=self.max_pause)
        with self._lock:
            probing, self._probing = self._probing, False
            if status == 429:
                if self.auto is not None:
                    self.auto.refused()
                if asked is None:
                    self._refused += 1
                    asked = min(
                        self.cooldown, _BACKOFF_FIRST * 2 ** (self._refused - 1)
                    )
            else:
                self._refused = 0
            if ok:
                self._failed = 0
                if self.auto is not None:
                    self.auto.succeeded()
                return (asked or 0.0), probing
            self._failed += 1
            if probing or self._failed >= self.failures:
                self._failed = 0
                return max(asked or 0.0, self.cooldown), None
            return (asked or 0.0), False

    def state(self) -> str:
        """``"closed"``, ``"open"`` (paused: by the breaker or by the
        upstream's answer) or ``"half_open"``, as the storage says now."""
        if self.pauses.remaining(self.name) > 0:
            return "open"
        half = self.pauses.remaining(self._half)
        if half > 0 and half > self.pauses.remaining(self._closed):
            return "half_open"
        return "closed"
