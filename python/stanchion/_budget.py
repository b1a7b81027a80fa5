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

``rate="auto"`` replaces the rates by a pace this process learns: it
starts at ``auto_start`` calls per second, adds ``auto_increase`` per
second of successful calls and halves on each 429 (additive increase,
multiplicative decrease), between ``auto_min`` and ``auto_max``.

``rate=None`` has no rates: only the pauses and the breaker. ``rate`` may
also be a limiter (a :class:`~stanchion.RateLimiter`, paced as above)
that several budgets share, each as its own key; ``pauses`` a table from
``pauses_for(storage)`` that they share: one of each serves any number of
upstreams (a shared-memory storage opens a file for each).

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

import contextvars
import math
import threading
import time
from collections.abc import Callable
from typing import Any

from ._limiter import Limiter, RateLimiter
from ._pauses import Pauses, pauses_for
from ._rates import normalize_rates
from ._upstream import pause_from_answer

__all__ = ["Budget", "answer_of"]

_BACKOFF_FIRST = 1.0  # a bare 429's first pause, in seconds
# While another caller probes a half-open upstream, when to look again
# (its probe's end is not known), in seconds.
_PROBE_POLL = 0.1
# Two pause ends this close (seconds) are the same: Redis keeps
# milliseconds.
_SAME = 0.001
# What a call's outcome does to the breaker.
_OPEN = 1
_CLOSE = 2
# The budgets whose half-open probe the call let through in this thread or
# task is: per context, so that another call's outcome, settled meanwhile,
# is not taken for the probe's. One variable for every budget: a context
# keeps an entry per variable ever set in it.
_PROBING: contextvars.ContextVar[frozenset[Budget]] = contextvars.ContextVar(
    "stanchion_probing", default=frozenset()
)
# The longest pause a storage takes (seconds): cooldown and max_pause
# stay well under it (a breaker's half-open marker lasts twice as long).
_MAX_SECONDS = 1e8


def _positive(
    name: str, value: object, *, zero_ok: bool = False, most: float = math.inf
) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, not {type(value).__name__}")
    try:
        v = float(value)
    except OverflowError:  # an int too large for a float
        v = math.inf
    if not math.isfinite(v) or v < 0 or (v == 0 and not zero_ok):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    if v > most:
        raise ValueError(f"{name} must be at most {most:g} seconds, got {value!r}")
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
    try:
        headers = getattr(response, "headers", None)
    except Exception:  # the upstream's answer: a property that fails
        headers = None
    return status, headers


def _headroom(d: Any) -> float:
    # A peek's remaining is what a hit would leave: this one included.
    return float(d.remaining + 1) if d.allowed else 0.0


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
        self._lock = threading.RLock()

    def take(self) -> float:
        with self._lock:
            now = self.clock()
            if now < self._next:
                return self._next - now
            self._next = max(now, self._next) + 1.0 / self.rate
            return 0.0

    def headroom(self) -> float:
        with self._lock:
            return 1.0 if self.clock() >= self._next else 0.0

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
        if "\x00" in name:  # it ends the name in its breaker's keys
            raise ValueError(f"name must not hold NUL, got {name!r}")
        self.failures = _count("failures", failures)
        self.cooldown = _positive("cooldown", cooldown, most=_MAX_SECONDS)
        self.max_pause = _positive("max_pause", max_pause, most=_MAX_SECONDS)
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
            elif isinstance(burst, int) and not isinstance(burst, bool):
                # The Limiter takes one burst per rate when there are
                # several: the same for each.
                rates = normalize_rates(rate)
                if len(rates) > 1:
                    burst = [burst] * len(rates)
            if clock is not None and storage is None:
                self.limiter = Limiter(
                    rate,  # type: ignore[arg-type]  # checked by the Limiter
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
        # Pauses only grow, and release() frees claims only: the breaker
        # is half-open while "half" (set when it opens, to outlast the
        # open pause) outlasts "closed" (set to the end of "half" when a
        # probe succeeds).
        self._half = name + "\x00half"
        self._closed = name + "\x00closed"
        self._probe = name + "\x00probe"  # claimed by who tries it, half-open
        self._lock = threading.RLock()  # a finalizer may call it
        self._failed = 0  # failed calls in a row, in this process
        self._refused = 0  # bare 429s in a row, in this process

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
        if half > 0 and half > self.pauses.remaining(self._closed) + _SAME:
            if not self.pauses.claim(self._probe, self.cooldown):
                return min(_PROBE_POLL, self.cooldown)
            try:
                wait = self._spend()
            except BaseException:  # the claim is not held past this call
                self.pauses.release(self._probe)
                raise
            if wait:
                # No budget for the probe: let the next caller try.
                self.pauses.release(self._probe)
            else:
                _PROBING.set(_PROBING.get() | {self})
            return wait
        return self._spend()

    async def atake(self) -> float:
        """:meth:`take` for asyncio."""
        wait = await self.pauses.aremaining(self.name)
        if wait > 0:
            return wait
        half = await self.pauses.aremaining(self._half)
        if half > 0 and half > await self.pauses.aremaining(self._closed) + _SAME:
            if not await self.pauses.aclaim(self._probe, self.cooldown):
                return min(_PROBE_POLL, self.cooldown)
            try:
                wait = await self._aspend()
            except BaseException:  # cancelled too: the claim is freed
                await self.pauses.arelease(self._probe)
                raise
            if wait:
                await self.pauses.arelease(self._probe)
            else:
                _PROBING.set(_PROBING.get() | {self})
            return wait
        return await self._aspend()

    def pace(self) -> float:
        """Calls per second the rates let through in the long run (the
        tightest of them; with ``rate="auto"``, the current pace), shared
        by every process using the budget's storage; ``math.inf`` when
        nothing limits it, or when calls come in no steady pace (fixed
        windows let their whole count through as each one opens)."""
        if self.auto is not None:
            return self.auto.rate
        if self.limiter is None or self.limiter.algorithm == "fixed_window":
            return math.inf
        return min(
            (r.limit / r.period for r in self.limiter.rates if r.period > 0),
            default=math.inf,
        )

    def headroom(self) -> float:
        """Calls the rates would let through now, spending nothing: the
        limiter's ``remaining`` (with the default ``burst=1``: 1 or 0);
        with ``rate="auto"``, 1 when the pace allows a call now, else 0.
        Pauses and the breaker are not counted: :meth:`take` sees them."""
        if self.auto is not None:
            return self.auto.headroom()
        if self.limiter is None:
            return 1.0
        return _headroom(self.limiter.peek(self.name))

    async def aheadroom(self) -> float:
        """:meth:`headroom` for asyncio."""
        if self.auto is not None:
            return self.auto.headroom()
        if self.limiter is None:
            return 1.0
        return _headroom(await self.limiter.apeek(self.name))

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
        if ok and error is None and self._nothing_to_settle(answer):
            return 0.0
        pause, breaker, probing = self._outcome(
            ok, error if error is not None else answer
        )
        if pause:
            self.pauses.pause(self.name, pause)
        if breaker == _OPEN:
            closed = self.pauses.remaining(self._closed)
            self.pauses.pause(self._half, max(2 * pause, closed + pause))
        elif breaker == _CLOSE:
            half = self.pauses.remaining(self._half)
            if half > 0:
                self.pauses.pause(self._closed, half)
        if probing:
            self.pauses.release(self._probe)
        return pause

    async def asettle(
        self, ok: bool, *, answer: object = None, error: BaseException | None = None
    ) -> float:
        """:meth:`settle` for asyncio."""
        if ok and error is None and self._nothing_to_settle(answer):
            return 0.0
        pause, breaker, probing = self._outcome(
            ok, error if error is not None else answer
        )
        if pause:
            await self.pauses.apause(self.name, pause)
        if breaker == _OPEN:
            closed = await self.pauses.aremaining(self._closed)
            await self.pauses.apause(self._half, max(2 * pause, closed + pause))
        elif breaker == _CLOSE:
            half = await self.pauses.aremaining(self._half)
            if half > 0:
                await self.pauses.apause(self._closed, half)
        if probing:
            await self.pauses.arelease(self._probe)
        return pause

    def abandon(self) -> None:
        """Forget a call :meth:`take` let through whose outcome is unknown
        (cancelled, interrupted, or never sent): it counts neither way, and
        the half-open probe it may have been is left to the next caller.
        The budget it spent stays spent."""
        probing = _PROBING.get()
        if self in probing:
            _PROBING.set(probing - {self})
            self.pauses.release(self._probe)

    async def aabandon(self) -> None:
        """:meth:`abandon` for asyncio."""
        probing = _PROBING.get()
        if self in probing:
            _PROBING.set(probing - {self})
            await self.pauses.arelease(self._probe)

    def _nothing_to_settle(self, answer: object) -> bool:
        """True for a success that changes nothing: no failures or 429s
        in a row to reset, no pace to raise, not the probe, and an answer
        without an HTTP status (so asking for no pause)."""
        return (
            not self._failed
            and not self._refused
            and self.auto is None
            and not _PROBING.get()  # no probe of any budget here
            and answer_of(answer)[0] is None
        )

    def _outcome(self, ok: bool, result: object) -> tuple[float, int, bool]:
        """(pause, breaker, probing): the pause to set; whether to open the
        breaker (_OPEN: the pause is its cool-down), close it (_CLOSE) or
        leave it (0); whether this call was the half-open probe."""
        status, headers = answer_of(result)
        asked = None
        if status is not None:
            try:
                asked = pause_from_answer(status, headers, max_seconds=self.max_pause)
            except Exception:  # headers in no shape it reads: none
                asked = None
        probes = _PROBING.get()
        probing = self in probes
        if probing:
            _PROBING.set(probes - {self})
        with self._lock:
            if status == 429:
                if self.auto is not None:
                    self.auto.refused()
                if asked is None:
                    # Capped: past 2**63 s the cooldown (<= 1e8 s) binds,
                    # and the doubling never overflows a float.
                    self._refused = min(self._refused + 1, 64)
                    asked = min(
                        self.cooldown, _BACKOFF_FIRST * 2 ** (self._refused - 1)
                    )
            else:
                self._refused = 0
            if ok:
                self._failed = 0
                if self.auto is not None:
                    self.auto.succeeded()
                return (asked or 0.0), (_CLOSE if probing else 0), probing
            self._failed += 1
            if probing or self._failed >= self.failures:
                self._failed = 0
                return max(asked or 0.0, self.cooldown), _OPEN, probing
            return (asked or 0.0), 0, probing

    def state(self) -> str:
        """``"closed"``, ``"open"`` (paused: by the breaker or by the
        upstream's answer) or ``"half_open"``, as the storage says now."""
        if self.pauses.remaining(self.name) > 0:
            return "open"
        half = self.pauses.remaining(self._half)
        if half > 0 and half > self.pauses.remaining(self._closed) + _SAME:
            return "half_open"
        return "closed"
