"""Pool and Provider: call one of several rate-limited APIs, within each
one's budget, falling back to the next when one fails.

A :class:`Provider` is one upstream: a callable (sync or async) and its
:class:`~stanchion._budget.Budget` (its rates, the pauses its answers ask
for, a circuit breaker), shared through its storage by every process that
names it the same. A :class:`Pool` calls its providers in the order its
strategy gives, skipping those without budget, until one answers well;
when none has budget it waits for the first one back, within the call's
deadline, or raises :class:`PoolExhausted`.

Python equivalent of one call through a pool (``pool(*args)``)::

    for provider in order:                    # per strategy
        if provider.budget.take():            # seconds to wait: skip it
            continue
        try:
            answer = provider.call(*args)
        except Exception as e:
            provider.budget.settle(False, error=e)
            continue                          # next provider
        if ok(answer):
            provider.budget.settle(True, answer=answer)
            return answer
        provider.budget.settle(False, answer=answer)
    # none answered: sleep until the first one skipped has budget again
    # (only if that is before the deadline) and try those; else raise
    # PoolExhausted(retry_after=..., errors={...})
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import math
import threading
import time
import types
from collections.abc import Callable, Hashable, Iterable
from typing import Any

from ._budget import Budget, answer_of
from ._cache import CacheBackend, LocalBackend, _check_backend, _check_ttl
from ._core import Cache, make_key
from ._rates import normalize_rates

__all__ = ["Pool", "PoolExhausted", "Provider"]

STRATEGIES = ("fallback", "round_robin", "least_used")

_MISSING: Any = object()
# Weight of the newest gap in the average gap between grants.
_EWMA = 0.25


def default_ok(answer: object) -> bool:
    """The default ``ok``: an answer with an HTTP status (``status_code``
    or ``status``) is ok when it is 2xx; an answer without one is ok."""
    status, _ = answer_of(answer)
    return status is None or 200 <= status < 300


def _counted(counter: itertools.count[int]) -> int:
    """How many times next() was called on ``counter`` (started at 0),
    without counting one more."""
    return int(repr(counter)[6:-1])


def _awaitable(answer: object) -> bool:
    """inspect.isawaitable, cheaper for the usual answers (which are not):
    an awaitable's type has ``__await__``, but for a generator-based
    coroutine (``types.coroutine``)."""
    if getattr(type(answer), "__await__", None) is not None:
        return True
    return type(answer) is types.GeneratorType and inspect.isawaitable(answer)


def _is_async(call: object) -> bool:
    """True for an ``async def`` function or method, a partial of one, or
    an object whose ``__call__`` is one."""
    return inspect.iscoroutinefunction(call) or inspect.iscoroutinefunction(
        getattr(call, "__call__", None)  # noqa: B004  # the method, if any
    )


def _check_ok(ok: object) -> Callable[[Any], bool] | None:
    if ok is not None and not callable(ok):
        raise TypeError(f"ok must be a callable or None, not {type(ok).__name__}")
    if _is_async(ok):
        # Its coroutine would be true: every answer accepted.
        raise TypeError("ok must be a plain function returning a bool, not async")
    return ok


def _check_timeout(timeout: object) -> float | None:
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(
            f"timeout must be a number of seconds or None, not {type(timeout).__name__}"
        )
    try:
        seconds = float(timeout)
    except OverflowError:  # an int too large for a float
        seconds = math.inf
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(
            f"timeout must be a finite number of seconds >= 0, got {timeout!r}"
        )
    return seconds


class PoolExhausted(Exception):
    """No provider of a :class:`Pool` answered within the call's deadline.

    ``retry_after``: seconds until some provider may be worth trying
    again: the shortest wait of those out of budget (or paused), or the
    pause a failure set; 0.0 when a provider failed without asking for
    one. ``errors``: each provider's name, in the order tried, to its
    last exception or rejected answer in this call, or None when it was
    only out of budget (or not tried). The message names each provider
    and why it did not answer.
    """

    def __init__(
        self,
        message: str,
        *,
        retry_after: float = 0.0,
        errors: dict[str, object | None] | None = None,
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.errors: dict[str, object | None] = {} if errors is None else errors


class Provider:
    """One upstream API of a :class:`Pool`: ``call`` (a sync or async
    callable, given the pool call's arguments) and its budget.

    ``rate``: the upstream's limits in any notation the Limiter takes,
    several at once (``"350 per 30 seconds;10/second"``), or ``"auto"``
    for a limit this process learns from the answers (starting at
    ``auto_start`` calls per second, adding ``auto_increase`` per second
    of successful calls, halving on each 429, within ``[auto_min,
    auto_max]``). ``burst=1`` (the default) paces the calls evenly, so
    that no interval of a rate's period holds more than its count, however
    the upstream counts; ``burst=None`` allows each rate's whole count at
    once.

    ``storage``: where the budget lives, shared by every process naming
    this provider the same: None (this process), a
    ``SharedMemoryStorage`` (this host), a ``RedisStorage`` (every host),
    or a URL: ``"memory://"``, ``"shm://name"``, ``"redis://..."``. Within
    one process, pools that share the ``Provider`` object share its
    budget.

    ``ok(answer)`` (default: the pool's): whether an answer counts as a
    success; a rejected answer or an exception moves the pool to the next
    provider. ``learn`` (default True): pause the provider as long as its
    answers ask (``Retry-After``, a spent ``RateLimit`` /
    ``X-RateLimit-*`` budget; a bare 429 backs off from 1 s, doubling up
    to ``cooldown``), for every process sharing the storage; False keeps
    only the rates and the breaker (and rules out ``rate="auto"``).
    ``failures`` calls failed in a row open the circuit breaker: the
    provider is skipped for ``cooldown`` seconds, then one call (the
    half-open probe) tries it; success closes the breaker, failure opens
    it again. ``max_pause`` bounds any pause an answer asks for.
    ``clock`` (tests): a callable returning seconds, for the in-process
    budget. ``close()`` / ``aclose()`` close a storage made from a URL.
    """

    __slots__ = (
        "_owned",
        "budget",
        "call",
        "is_async",
        "learn",
        "name",
        "ok",
        "rate",
        "storage",
    )

    def __init__(
        self,
        name: str,
        call: Callable[..., Any],
        *,
        rate: object,
        storage: object = None,
        ok: Callable[[Any], bool] | None = None,
        burst: int | list[int | None] | None = 1,
        algorithm: str = "token_bucket",
        failures: int = 5,
        cooldown: float = 30.0,
        max_pause: float = 3600.0,
        learn: bool = True,
        auto_start: float = 1.0,
        auto_min: float = 0.1,
        auto_max: float = 1000.0,
        auto_increase: float = 1.0,
        clock: Callable[[], float] | None = None,
    ) -> None:
        if not isinstance(name, str):
            raise TypeError(f"name must be a str, not {type(name).__name__}")
        if not name:
            raise ValueError("name must not be empty")
        if "\x00" in name:  # it ends the name in its breaker's keys
            raise ValueError(f"name must not hold NUL, got {name!r}")
        if not callable(call):
            raise TypeError(
                f"call must be a callable (sync or async), not {type(call).__name__}"
            )
        self.ok = _check_ok(ok)
        if not isinstance(learn, bool):
            raise TypeError(f"learn must be a bool, not {type(learn).__name__}")
        if rate == "auto":
            if not learn:
                raise ValueError(
                    "rate='auto' learns from the answers: it needs learn=True"
                )
        else:
            normalize_rates(rate)  # bad rates fail before any storage is made
        owned = None
        if isinstance(storage, str):
            from ._settings import storage_from_url

            storage = owned = storage_from_url(storage, lambda _setting: "storage")
        self.budget = Budget(
            name,
            rate,
            storage=storage,
            burst=burst,
            algorithm=algorithm,
            failures=failures,
            cooldown=cooldown,
            max_pause=max_pause,
            auto_start=auto_start,
            auto_min=auto_min,
            auto_max=auto_max,
            auto_increase=auto_increase,
            clock=clock,
        )
        self.name = name
        self.call = call
        self.rate = rate
        self.storage = storage
        self.learn = learn
        self.is_async = _is_async(call)
        self._owned = owned  # a storage made here from a URL

    def close(self) -> None:
        """Close the connections of a storage made from a URL (a storage
        object given is the caller's to close)."""
        close = getattr(self._owned, "close", None)
        if close is not None:
            close()

    async def aclose(self) -> None:
        """:meth:`close` for asyncio: a Redis storage's asyncio
        connections belong to the event loop that made them; close them
        before it ends."""
        aclose = getattr(self._owned, "aclose", None)
        if aclose is not None:
            await aclose()

    def __repr__(self) -> str:
        return f"Provider({self.name!r}, rate={self.rate!r})"

    def state(self) -> str:
        """The breaker's state as the storage says now: ``"closed"``,
        ``"open"`` (paused, by the breaker or by an answer) or
        ``"half_open"``."""
        return self.budget.state()

    def settle_args(self, outcome: object, *, error: bool) -> dict[str, Any]:
        """What :meth:`Budget.settle` is told of an outcome: all of it
        when learning, nothing (just ok or not) otherwise."""
        if not self.learn:
            return {}
        return {"error": outcome} if error else {"answer": outcome}


class _Counts:
    """One provider's counters in one pool."""

    __slots__ = ("calls", "failures", "skipped", "successes")

    def __init__(self) -> None:
        self.calls = 0  # calls made
        self.successes = 0  # answers ok
        self.failures = 0  # exceptions and rejected answers
        self.skipped = 0  # times found without budget (or paused)

    def as_dict(self) -> dict[str, int]:
        return {
            "calls": self.calls,
            "successes": self.successes,
            "failures": self.failures,
            "skipped": self.skipped,
        }


class _Run:
    """One call through the pool: its order, deadline and what each
    provider did. Pure bookkeeping (the clock aside); the sync and async
    shells do the I/O."""

    __slots__ = (
        "called",
        "deadline",
        "errors",
        "failed",
        "first",
        "order",
        "pool",
        "queued",
        "reasons",
        "until",
    )

    def __init__(self, pool: Pool, order: list[Provider]) -> None:
        self.pool = pool
        self.order = order
        now = time.monotonic()
        self.deadline = None if pool.timeout is None else now + pool.timeout
        self.first = True  # the first pass tries every provider
        self.called = False  # a provider was called since the last sleep
        # Each provider's last exception or rejected answer in this call.
        self.errors: dict[str, object | None] = {}
        self.reasons: dict[str, str] = {}
        # Out of budget: when it may be back (monotonic seconds).
        self.until: dict[str, float] = {}
        # Failed in this call (not tried again): when it may be back.
        self.failed: dict[str, float] = {}
        self.queued = False  # in the pool's queue of callers waiting

    def due(self) -> list[Provider]:
        """The providers to try in this pass, in order: all of them the
        first time, then those skipped for budget whose wait is over."""
        if self.first:
            self.first = False
            return list(self.order)
        now = time.monotonic()
        return [p for p in self.order if self.until.get(p.name, math.inf) <= now]

    def may_call(self) -> bool:
        """False once a provider call has ended past the deadline. A
        sleep the deadline allowed may end a little past it: the providers
        back are still tried. timeout=0 never waits, but tries every
        provider with budget."""
        if self.deadline is None or self.pool.timeout == 0 or not self.called:
            return True
        return time.monotonic() < self.deadline

    def calling(self, p: Provider) -> None:
        # Counted with its outcome (failure, success or abandoned): one
        # lock per call.
        self.called = True

    def skipped(self, p: Provider, wait: float) -> None:
        self.until[p.name] = time.monotonic() + wait
        self.reasons[p.name] = f"no budget for {wait:.3f}s"
        self.pool._count(p, "skipped")

    def failure(self, p: Provider, why: object, pause: float, error: bool) -> None:
        self.until.pop(p.name, None)
        self.failed[p.name] = time.monotonic() + pause
        self.errors[p.name] = why
        kind = "raised" if error else "answer rejected:"
        self.reasons[p.name] = f"{kind} {why!r}"
        if pause:
            self.reasons[p.name] += f", paused {pause:.3f}s"
        self.pool._count(p, "calls", "failures")

    def next_wait(self) -> float:
        """Seconds to sleep before the next pass; PoolExhausted when no
        provider is left to wait for, or this caller's turn is past the
        deadline.

        With a deadline, the callers waiting in this process queue in
        arrival order, and a caller's turn is estimated as the first
        provider back plus one interval of the pool's pace per caller
        ahead of it. A caller whose turn comes after the deadline is
        refused at once instead of waiting for it; the others sleep until
        the first provider is back."""
        now = time.monotonic()
        if self.until and self.pool.timeout != 0:
            delay = max(0.0, min(self.until.values()) - now)
            if self.deadline is None:
                self.called = False
                return delay
            # The pace a caller waits at: the providers left's rates, or,
            # once callers have waited, the pace this process has been
            # getting budget at (lower when other processes share it).
            ahead, rate = self.pool._queue_place(self, now)
            turn = delay + (ahead / rate if ahead and rate > 0 else 0.0)
            # Past the deadline, a provider back now is not tried: a pass
            # that called no provider but outlasted the waits it met (a
            # slow storage) would otherwise start another, and so on.
            # (The providers back after a sleep the deadline allowed are
            # tried even if it overran: due() and may_call() see to it.)
            if now + turn <= self.deadline:
                self.called = False
                return delay
            raise self.exhausted(now, turn=turn, ahead=ahead)
        raise self.exhausted(now)

    def pace(self) -> float:
        """Calls per second the providers waited for let through, by
        their rates (math.inf when one of them is not limited); but for
        those paused past the deadline, which serve no caller in time."""
        until, deadline = self.until, self.deadline
        return sum(
            p.budget.pace()
            for p in self.order
            if p.name in until and (deadline is None or until[p.name] <= deadline)
        )

    def deadline_passed(self) -> PoolExhausted:
        return self.exhausted(time.monotonic(), late=True)

    def exhausted(
        self, now: float, late: bool = False, turn: float = 0.0, ahead: int = 0
    ) -> PoolExhausted:
        # The first skipped for budget back (or this caller's turn, later);
        # when none was, the first failed one (its pause, often none).
        backs = self.until or self.failed
        retry_after = max(0.0, min(backs.values()) - now) if backs else 0.0
        retry_after = max(retry_after, turn)
        parts = []
        for p in self.order:
            reason = self.reasons.get(p.name, "not tried")
            if p.name in self.until:
                reason = f"no budget for {max(0.0, self.until[p.name] - now):.3f}s"
            parts.append(f"{p.name}: {reason}")
        why = "the deadline passed" if late else "no provider answered"
        if self.deadline is not None and not late and self.until:
            why += " within the deadline"
            if ahead:
                why += f" for {ahead} earlier callers waiting"
        self.pool._count_exhausted()
        return PoolExhausted(
            f"{why} ({'; '.join(parts)}); retry after {retry_after:.3f}s",
            retry_after=retry_after,
            errors={p.name: self.errors.get(p.name) for p in self.order},
        )


class Pool:
    """Call one of several rate-limited providers: ``pool(*args,
    **kwargs)`` or ``await pool.acall(*args, **kwargs)`` calls a provider
    with budget with these arguments and returns its answer.

    ``providers``: :class:`Provider` objects with unique names.
    ``strategy``: the order providers are tried in, each call:

    - ``"fallback"``: as listed;
    - ``"round_robin"``: as listed, starting one further each call;
    - ``"least_used"``: most budget left first (the limiter's
      ``remaining``, which the default paced budgets keep at 1 or 0; an
      ``"auto"`` provider counts 1 when its pace allows a call now), ties
      in listed order. It reads every provider's budget first (one round
      trip each with Redis).

    Each provider in turn: one without budget, paused by its answers or
    by its open breaker is skipped; otherwise it is called, and an
    exception, or an answer ``ok`` rejects (the provider's ``ok``, else
    the pool's; by default an answer with an HTTP status must be 2xx),
    moves on to the next. Each provider is called at most once per pool
    call. When every provider left was skipped, the pool sleeps until the
    first of them has budget again and tries those back, if that is
    within ``timeout`` seconds from the start of the call (None: no
    deadline); otherwise it raises :class:`PoolExhausted` at once, with
    ``retry_after`` and every provider's error. With a deadline, callers
    waiting in this process queue in arrival order, and one whose
    estimated turn (the first provider back, plus one interval of the
    pace budget comes at per caller ahead) is past its deadline is
    refused at once, with that turn as ``retry_after``. It also raises it when
    every provider failed, and does not start calling a provider once the
    deadline has passed. ``timeout=0`` never waits. A call in progress is
    not interrupted: give the provider's own client a timeout.

    ``pool()`` calls sync providers only (an async one is a TypeError:
    use ``acall``). ``acall()`` awaits async providers and runs sync ones
    in a worker thread (``asyncio.to_thread``), so a blocking client does
    not block the event loop; a sync callable that returns an awaitable
    has it awaited.

    ``cache``: a :class:`~stanchion.Cache` or a
    :class:`~stanchion.CacheBackend` (such as ``RedisCache``) keeping
    successful answers by the call's arguments (as ``@cached`` keys
    them; they must be hashable), for ``cache_ttl`` seconds (None: the
    cache's own). A hit spends no budget. The keys are the arguments
    only, not the pool: pools sharing a cache serve each other's answers
    to the same arguments, so give each pool its own ``Cache`` (or its
    own ``RedisCache.namespace(...)``) unless they answer alike. ``@stanchion.cached`` on a
    function that calls the pool works as well, and also makes concurrent
    callers of the same arguments share one pool call.

    Thread-safe and asyncio-safe; no lock is held while a provider runs.
    ``stats()`` counts calls, answers and each provider's outcomes.
    """

    def __init__(
        self,
        providers: Iterable[Provider],
        *,
        strategy: str = "fallback",
        ok: Callable[[Any], bool] | None = None,
        timeout: float | None = None,
        cache: Cache[Any, Any] | CacheBackend | None = None,
        cache_ttl: float | None = None,
    ) -> None:
        if isinstance(providers, (str, bytes, Provider)) or not isinstance(
            providers, Iterable
        ):
            raise TypeError(
                "providers must be a list of stanchion.Provider, not "
                f"{type(providers).__name__}"
            )
        listed = tuple(providers)
        if not listed:
            raise ValueError("a Pool needs at least one provider")
        names: set[str] = set()
        for p in listed:
            if not isinstance(p, Provider):
                raise TypeError(
                    f"providers must be stanchion.Provider objects, not {type(p).__name__}"
                )
            if p.name in names:
                raise ValueError(
                    f"provider names must be unique: {p.name!r} is repeated"
                )
            names.add(p.name)
        if not isinstance(strategy, str):
            raise TypeError(f"strategy must be a str, not {type(strategy).__name__}")
        if strategy not in STRATEGIES:
            raise ValueError(
                f"unknown strategy {strategy!r} (use 'fallback', 'round_robin' or "
                "'least_used')"
            )
        self.ok = _check_ok(ok)
        self.timeout = _check_timeout(timeout)
        ttl = _check_ttl(cache_ttl)
        backend: CacheBackend | None = None
        if isinstance(cache, Cache):
            backend = LocalBackend(cache)
        elif cache is not None:
            backend = _check_backend(cache)
        elif ttl is not None:
            raise ValueError("cache_ttl needs a cache=")
        self.providers = listed
        self.strategy = strategy
        self.cache = backend
        self.cache_ttl = ttl
        self._async = tuple(p.name for p in listed if p.is_async)
        self._lock = threading.RLock()  # a finalizer may call the pool
        # Lock-free counters: next() on an itertools.count is atomic.
        self._calls = itertools.count()  # pool calls, cache hits included
        self._turns = itertools.count()  # round_robin's next start
        self._counts = {p.name: _Counts() for p in listed}
        self._answered = 0
        self._exhausted = 0
        self._cache_hits = 0
        # Calls waiting for budget with a deadline, in arrival order.
        self._queue: dict[_Run, None] = {}
        # While calls wait, the time budget was last granted and the
        # average gap between grants (the pace this process gets).
        self._granted_at: float | None = None
        self._gap: float | None = None
        self._idle_since = -math.inf  # when the queue was last left empty

    def __repr__(self) -> str:
        names = ", ".join(p.name for p in self.providers)
        return f"Pool([{names}], strategy={self.strategy!r})"

    def close(self) -> None:
        """Close what each provider opened from a storage URL."""
        for p in self.providers:
            p.close()

    async def aclose(self) -> None:
        """:meth:`close` for asyncio."""
        for p in self.providers:
            await p.aclose()

    # -- counters ------------------------------------------------------------

    def _count(self, p: Provider, *fields: str) -> None:
        c = self._counts[p.name]
        with self._lock:
            for field in fields:
                setattr(c, field, getattr(c, field) + 1)

    def _count_exhausted(self) -> None:
        with self._lock:
            self._exhausted += 1

    # -- the queue of callers waiting ------------------------------------------

    def _granted(self, run: _Run) -> None:
        """``run`` got budget: while callers wait, the gaps between these
        measure the pace at which this process gets budget. A caller
        queued leaves the queue: calling, it is no longer ahead of those
        waiting (it queues again, last, if it must wait again)."""
        if not run.queued and not self._queue:
            if self._granted_at is not None:
                self._granted_at = None  # the measure holds while saturated
            return
        now = time.monotonic()
        with self._lock:
            if run.queued:
                self._dequeue(run, now)
            last = self._granted_at
            if last is not None:
                gap = now - last
                self._gap = (
                    gap if self._gap is None else self._gap + _EWMA * (gap - self._gap)
                )
            self._granted_at = now

    def _queue_place(self, run: _Run, now: float) -> tuple[int, float]:
        """(callers queued ahead of ``run``, the pace in calls per second
        they are served at); queues ``run`` if it was not."""
        rate = run.pace()
        with self._lock:
            if not run.queued:
                if not self._queue and (now - self._idle_since) * rate > 1.0:
                    # Nobody waited for longer than an interval: the pace
                    # measured while they did is over (the idle time is no
                    # gap between grants). This wait measures afresh.
                    self._granted_at = self._gap = None
                run.queued = True
                self._queue[run] = None
            ahead = 0
            for other in self._queue:
                if other is run:
                    break
                ahead += 1
            last, gap = self._granted_at, self._gap
        if last is not None and gap is not None and rate < math.inf:
            # Measured while saturated (but for budgets without a pace,
            # whose gaps tell nothing of the next ones). The time since
            # the last grant is not one: a pause lasts it once, however
            # many callers wait behind it, and ``delay`` counts it.
            rate = min(rate, 1.0 / max(gap, 1e-9))
        return ahead, rate

    def _leave(self, run: _Run) -> None:
        with self._lock:
            self._dequeue(run, time.monotonic())

    def _dequeue(self, run: _Run, now: float) -> None:
        """Take ``run`` out of the queue (the lock held). Out first, then
        marked: interrupted in between, it still leaves on exit."""
        self._queue.pop(run, None)
        run.queued = False
        if not self._queue:
            self._idle_since = now

    def stats(self) -> dict[str, Any]:
        """Counters since the pool was made: ``calls`` (pool calls),
        ``answered``, ``exhausted`` (PoolExhausted raised), ``cache_hits``,
        and ``providers``: per name, ``calls``, ``successes``,
        ``failures`` and ``skipped`` (found without budget)."""
        with self._lock:
            return {
                "calls": _counted(self._calls),
                "answered": self._answered,
                "exhausted": self._exhausted,
                "cache_hits": self._cache_hits,
                "providers": {n: c.as_dict() for n, c in self._counts.items()},
            }

    # -- the plan --------------------------------------------------------------

    def _start(self) -> int:
        next(self._calls)
        if self.strategy == "round_robin":
            return next(self._turns) % len(self.providers)
        return 0

    def _rotated(self, turn: int) -> list[Provider]:
        if self.strategy == "round_robin":
            return [*self.providers[turn:], *self.providers[:turn]]
        return list(self.providers)

    def _ranked(self, room: list[float]) -> list[Provider]:
        # sorted() is stable: ties stay in listed order.
        order = sorted(range(len(self.providers)), key=lambda i: -room[i])
        return [self.providers[i] for i in order]

    def _accepts(self, p: Provider, answer: object) -> bool:
        ok = p.ok or self.ok or default_ok
        return bool(ok(answer))

    def _answered_by(self, p: Provider) -> None:
        c = self._counts[p.name]
        with self._lock:
            c.calls += 1
            c.successes += 1
            self._answered += 1

    def _hit(self) -> None:
        next(self._calls)
        with self._lock:
            self._answered += 1
            self._cache_hits += 1

    def _key(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Hashable:
        return make_key(args, kwargs or None, False)

    # -- sync ----------------------------------------------------------------

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self._async:
            raise TypeError(
                f"provider {self._async[0]!r} is async: call the pool with "
                "`await pool.acall(...)`"
            )
        key = _MISSING
        if self.cache is not None:
            key = self._key(args, kwargs)
            value = self.cache.get(key, _MISSING)
            if value is not _MISSING:
                self._hit()
                return value
        turn = self._start()
        if self.strategy == "least_used":
            order = self._ranked([p.budget.headroom() for p in self.providers])
        else:
            order = self._rotated(turn)
        run = _Run(self, order)
        try:
            while True:
                for p in run.due():
                    if not run.may_call():
                        raise run.deadline_passed()
                    wait = p.budget.take()
                    if wait:
                        run.skipped(p, wait)
                        continue
                    self._granted(run)
                    found, answer = self._call_sync(p, run, args, kwargs)
                    if found:
                        if self.cache is not None:
                            self.cache.set(key, answer, self.cache_ttl)
                        return answer
                time.sleep(run.next_wait())
        finally:
            if run.queued:
                self._leave(run)

    def _call_sync(
        self, p: Provider, run: _Run, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[bool, Any]:
        """Call ``p`` (its budget taken); (True, answer) if ok."""
        run.calling(p)
        try:
            answer = p.call(*args, **kwargs)
        except Exception as e:
            pause = p.budget.settle(False, **p.settle_args(e, error=True))
            run.failure(p, e, pause, error=True)
            return False, None
        except BaseException:
            self._count(p, "calls")
            p.budget.abandon()
            raise
        try:
            if _awaitable(answer):
                if inspect.iscoroutine(answer):
                    answer.close()
                raise TypeError(
                    f"provider {p.name!r} returned an awaitable: call the pool "
                    "with `await pool.acall(...)`"
                )
            ok = self._accepts(p, answer)
        except BaseException:
            self._count(p, "calls")
            p.budget.abandon()
            raise
        pause = p.budget.settle(ok, **p.settle_args(answer, error=False))
        if ok:
            self._answered_by(p)
            return True, answer
        run.failure(p, answer, pause, error=False)
        return False, None

    # -- async ---------------------------------------------------------------

    async def acall(self, *args: Any, **kwargs: Any) -> Any:
        """``pool(*args, **kwargs)`` for asyncio: awaits async providers,
        runs sync ones in a worker thread; sleeps with asyncio."""
        key = _MISSING
        if self.cache is not None:
            key = self._key(args, kwargs)
            value = await self.cache.aget(key, _MISSING)
            if value is not _MISSING:
                self._hit()
                return value
        turn = self._start()
        if self.strategy == "least_used":
            room = await asyncio.gather(*(p.budget.aheadroom() for p in self.providers))
            order = self._ranked(list(room))
        else:
            order = self._rotated(turn)
        run = _Run(self, order)
        try:
            while True:
                for p in run.due():
                    if not run.may_call():
                        raise run.deadline_passed()
                    wait = await p.budget.atake()
                    if wait:
                        run.skipped(p, wait)
                        continue
                    self._granted(run)
                    found, answer = await self._call_async(p, run, args, kwargs)
                    if found:
                        if self.cache is not None:
                            await self.cache.aset(key, answer, self.cache_ttl)
                        return answer
                await asyncio.sleep(run.next_wait())
        finally:
            if run.queued:
                self._leave(run)

    async def _call_async(
        self, p: Provider, run: _Run, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[bool, Any]:
        run.calling(p)
        try:
            if p.is_async:
                answer = await p.call(*args, **kwargs)
            else:
                answer = await asyncio.to_thread(p.call, *args, **kwargs)
                if _awaitable(answer):
                    answer = await answer
        except Exception as e:
            pause = await p.budget.asettle(False, **p.settle_args(e, error=True))
            run.failure(p, e, pause, error=True)
            return False, None
        except BaseException:
            self._count(p, "calls")
            await p.budget.aabandon()
            raise
        try:
            ok = self._accepts(p, answer)
        except BaseException:
            self._count(p, "calls")
            await p.budget.aabandon()
            raise
        pause = await p.budget.asettle(ok, **p.settle_args(answer, error=False))
        if ok:
            self._answered_by(p)
            return True, answer
        run.failure(p, answer, pause, error=False)
        return False, None
