"""@cached: memoise sync and async functions, one computation per key at a time.

The results live in a C :class:`~stanchion.Cache` by default; any object
following :class:`CacheBackend` (a Redis store, for one) can hold them
instead.

Single flight: while one caller computes a key, every other caller of the
same key waits for that result (threads block on an event, asyncio tasks
await the same task) instead of computing it again. An exception is not
cached: it reaches the caller and every waiter, and the next call computes
afresh. A caller never waits on a computation that is itself (directly or
through other waiting callers) waiting on that caller: it computes on its
own instead, so recursion through the cache cannot deadlock.

No lock of ours is held while Python code runs: the in-flight tables are
plain dicts whose setdefault/pop are atomic under the interpreter, and
waiting happens on a per-call event owned by no one else.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import math
import threading
from collections.abc import Callable, Hashable, MutableMapping
from typing import Any, Protocol, TypeVar, cast, overload, runtime_checkable

from ._core import Cache, CachedCall, CacheInfo, make_key

__all__ = ["CacheBackend", "CachedFunction", "LocalBackend", "cached"]

# Cache is a C type with the whole MutableMapping interface (get, pop,
# popitem, setdefault, update, keys/values/items, ==): isinstance checks
# and cachetools-style code accept it.
MutableMapping.register(Cache)

R = TypeVar("R")
R_co = TypeVar("R_co", covariant=True)

_MISSING: Any = object()


@runtime_checkable
class CacheBackend(Protocol):
    """Where @cached keeps results, when not in the process's own Cache.

    Keys are what :func:`stanchion._core.make_key` (or the decorator's
    ``key=`` function) returns for a call: hashable values built from the
    call's arguments. A backend that stores outside the process turns them
    into its own keys and the values into bytes as it sees fit.

    ``get(key, default)``
        The stored value, or ``default`` when absent or expired. Never
        raises for a missing key.
    ``set(key, value, ttl)``
        Store ``value``; ``ttl`` is the decorator's ``ttl`` in seconds (a
        float), or None for no expiry.
    ``delete(key)``
        Remove the key; True if something was removed.
    ``clear()``
        Remove everything this backend stored.
    ``aget``, ``aset``, ``adelete``, ``aclear``
        The same as coroutines; @cached uses them for ``async def``
        functions, and the plain ones for plain functions.
    """

    def get(self, key: Hashable, default: Any) -> Any: ...

    def set(self, key: Hashable, value: Any, ttl: float | None) -> None: ...

    def delete(self, key: Hashable) -> bool: ...

    def clear(self) -> None: ...

    async def aget(self, key: Hashable, default: Any) -> Any: ...

    async def aset(self, key: Hashable, value: Any, ttl: float | None) -> None: ...

    async def adelete(self, key: Hashable) -> bool: ...

    async def aclear(self) -> None: ...


def _set_local(
    cache: Cache[Hashable, Any], key: Hashable, value: Any, ttl: float | None
) -> None:
    try:
        cache.set(key, value, ttl)
    except ValueError:
        # A result its weigh puts past maxweight: the call still returns
        # it, uncached, as a backend that fails to store drops the write.
        pass


class LocalBackend:
    """The default backend: a stanchion Cache in this process.

    @cached reads it directly from C on the hot path; this class gives it
    the :class:`CacheBackend` shape for code that wants one.
    """

    __slots__ = ("cache",)

    def __init__(self, cache: Cache[Hashable, Any]) -> None:
        if not isinstance(cache, Cache):
            raise TypeError(
                f"cache must be a stanchion.Cache, not {type(cache).__name__}"
            )
        self.cache = cache

    def get(self, key: Hashable, default: Any) -> Any:
        return self.cache.get(key, default)

    def set(self, key: Hashable, value: Any, ttl: float | None) -> None:
        _set_local(self.cache, key, value, ttl)

    def delete(self, key: Hashable) -> bool:
        return self.cache.pop(key, _MISSING) is not _MISSING

    def clear(self) -> None:
        self.cache.clear()

    async def aget(self, key: Hashable, default: Any) -> Any:
        return self.cache.get(key, default)

    async def aset(self, key: Hashable, value: Any, ttl: float | None) -> None:
        _set_local(self.cache, key, value, ttl)

    async def adelete(self, key: Hashable) -> bool:
        return self.delete(key)

    async def aclear(self) -> None:
        self.cache.clear()


class CachedFunction(Protocol[R_co]):
    """What @cached returns: the function, plus its cache controls."""

    @property
    def __wrapped__(self) -> Callable[..., R_co]: ...

    def __call__(self, *args: Any, **kwargs: Any) -> R_co: ...

    def cache_info(self) -> CacheInfo:
        """CacheInfo(hits, misses, maxsize, currsize), as functools gives."""
        ...

    def cache_clear(self) -> None:
        """Forget every result (and reset the counts)."""
        ...

    def invalidate(self, *args: Any, **kwargs: Any) -> bool:
        """Forget the result for these arguments (for a method, pass the
        instance first). True if there was one. A computation already
        running for them still stores its result when it finishes."""
        ...


# ---------------------------------------------------------------------------
# Single flight
# ---------------------------------------------------------------------------


class _Flight:
    """One computation of one key in one thread, and its outcome."""

    __slots__ = ("done", "error", "owner", "value")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.owner = threading.get_ident()
        self.value: Any = None
        self.error: BaseException | None = None


class _Pinned:
    """A key of an in-flight table, hashed once. The call may change its
    own key (a mutable argument whose hash follows its state): its entry
    must still be found, by this object, to be removed when it ends."""

    __slots__ = ("hash", "key")

    def __init__(self, key: Hashable) -> None:
        self.key = key
        self.hash = hash(key)

    def __hash__(self) -> int:
        return self.hash

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Pinned) and (
            self.key is other.key or bool(self.key == other.key)
        )


# Thread -> the flight it is waiting for; task -> the task it awaits. Used
# only to see whether waiting would close a cycle.
_thread_waits: dict[int, _Flight] = {}
_task_waits: dict[asyncio.Task[Any], asyncio.Task[Any]] = {}


def _thread_cycle(flight: _Flight, me: int) -> bool:
    """True if ``flight`` is (through waiting threads) owned by ``me``."""
    seen: set[int] = set()
    f: _Flight | None = flight
    while f is not None and f.owner not in seen:
        if f.owner == me:
            return True
        seen.add(f.owner)
        f = _thread_waits.get(f.owner)
    return False


def _task_cycle(task: asyncio.Task[Any], me: asyncio.Task[Any]) -> bool:
    """True if ``task`` is ``me`` or (through awaiting tasks) awaits it."""
    seen: set[int] = set()
    t: asyncio.Task[Any] | None = task
    while t is not None and id(t) not in seen:
        if t is me:
            return True
        seen.add(id(t))
        t = _task_waits.get(t)
    return False


def _consume(task: asyncio.Task[Any]) -> None:
    # Marks the exception as retrieved even if every waiter was cancelled.
    if not task.cancelled():
        task.exception()


class _Store:
    """The shared parts of a cached function: its key and its backend."""

    def __init__(
        self,
        func: Callable[..., Any],
        backend: CacheBackend,
        ttl: float | None,
        key: Callable[..., Hashable] | None,
        typed: bool,
    ) -> None:
        self.func = func
        self.backend = backend
        # The C fast path reads and writes the Cache itself, past the
        # backend's methods: only for LocalBackend as it is, so that a
        # subclass's own get/set are still called.
        self.local: Cache[Hashable, Any] | None = (
            backend.cache if type(backend) is LocalBackend else None
        )
        self.ttl = ttl
        self.key_func = key
        self.typed = typed
        self.hits = 0
        self.misses = 0

    def key(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Hashable:
        if self.key_func is not None:
            return self.key_func(*args, **kwargs)
        return make_key(args, kwargs or None, self.typed)

    def peek(self, key: Hashable) -> Any:
        """The stored value without counting a hit, or _MISSING."""
        if self.local is not None:
            return self.local.peek(key, _MISSING)
        return self.backend.get(key, _MISSING)

    def store(self, key: Hashable, value: Any) -> None:
        if self.local is None:
            self.backend.set(key, value, self.ttl)
            return
        # The decorator's ttl, not the Cache's own default: a Cache
        # given as backend= has its own (or none).
        _set_local(self.local, key, value, self.ttl)

    def cache_info(self) -> CacheInfo:
        if self.local is not None:
            s = self.local.stats()
            return CacheInfo(
                (cast(int, s["hits"]), cast(int, s["misses"]), s["maxsize"], s["size"])
            )
        return CacheInfo((self.hits, self.misses, None, None))

    def cache_clear(self) -> None:
        if self.local is not None:
            self.local.clear()
            self.local.reset_stats()
        else:
            self.backend.clear()
        self.hits = self.misses = 0

    def invalidate(self, *args: Any, **kwargs: Any) -> bool:
        return bool(self.backend.delete(self.key(args, kwargs)))


class _SyncFlights:
    """Runs at most one computation per key at a time, across threads."""

    def __init__(self, store: _Store) -> None:
        self.store = store
        self.inflight: dict[_Pinned, _Flight] = {}

    def miss(
        self, key: Hashable, args: tuple[Any, ...], kwargs: dict[str, Any] | None
    ) -> Any:
        kwargs = kwargs or {}
        flight = _Flight()
        pin = _Pinned(key)
        other = self.inflight.setdefault(pin, flight)
        if other is not flight:
            return self._wait(other, key, args, kwargs)
        del other
        try:
            # The result may have been stored between our miss and now.
            value = self.store.peek(key)
            if value is _MISSING:
                value = self.store.func(*args, **kwargs)
                self.store.store(key, value)
            flight.value = value
            return value
        except BaseException as e:
            flight.error = e
            raise
        finally:
            self.inflight.pop(pin, None)
            flight.done.set()
            # A traceback keeps this frame alive: it must not keep the
            # flight, which holds the exception (a reference cycle).
            del flight

    def _wait(
        self,
        flight: _Flight,
        key: Hashable,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        me = threading.get_ident()
        previous = _thread_waits.get(me)
        _thread_waits[me] = flight
        try:
            cycle = _thread_cycle(flight, me)
            if not cycle:
                flight.done.wait()
        finally:
            if previous is None:
                del _thread_waits[me]
            else:
                _thread_waits[me] = previous
        error, value = flight.error, flight.value
        del flight  # as in miss(): no cycle through a traceback
        if cycle:
            # Waiting would wait for ourselves: compute alone.
            value = self.store.func(*args, **kwargs)
            self.store.store(key, value)
            return value
        if error is not None:
            raise error
        return value


class _AsyncFlights:
    """Runs at most one computation per key at a time, per event loop."""

    def __init__(self, store: _Store) -> None:
        self.store = store
        self.inflight: dict[_Pinned, asyncio.Task[Any]] = {}

    async def miss(
        self, key: Hashable, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        loop = asyncio.get_running_loop()
        me = asyncio.current_task()
        pin = _Pinned(key)
        task = self.inflight.get(pin)
        if task is not None and task.get_loop() is loop and not task.done():
            if me is not None and _task_cycle(task, me):
                # Awaiting would await ourselves: compute alone.
                value = await self.store.func(*args, **kwargs)
                await self._store(key, value)
                return value
        else:
            task = loop.create_task(self._compute(pin, args, kwargs))
            task.add_done_callback(_consume)
            self.inflight[pin] = task
        if me is None:
            return await asyncio.shield(task)
        previous = _task_waits.get(me)
        _task_waits[me] = task
        try:
            return await asyncio.shield(task)
        finally:
            if previous is None:
                del _task_waits[me]
            else:
                _task_waits[me] = previous

    async def _compute(
        self, pin: _Pinned, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        key = pin.key
        try:
            if self.store.local is not None:
                value = self.store.local.peek(key, _MISSING)
            else:
                value = await self.store.backend.aget(key, _MISSING)
            if value is _MISSING:
                value = await self.store.func(*args, **kwargs)
                await self._store(key, value)
            return value
        finally:
            if self.inflight.get(pin) is asyncio.current_task():
                del self.inflight[pin]

    async def _store(self, key: Hashable, value: Any) -> None:
        if self.store.local is not None:
            self.store.store(key, value)
        else:
            await self.store.backend.aset(key, value, self.store.ttl)


# ---------------------------------------------------------------------------
# The decorator
# ---------------------------------------------------------------------------


def _check_ttl(ttl: object) -> float | None:
    if ttl is None:
        return None
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)):
        raise TypeError(
            f"ttl must be a number of seconds or None, not {type(ttl).__name__}"
        )
    try:
        seconds = float(ttl)
    except OverflowError:  # an int too large for a float
        seconds = math.inf
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"ttl must be a finite number of seconds > 0, got {ttl!r}")
    return seconds


_BACKEND_METHODS = (
    "get",
    "set",
    "delete",
    "clear",
    "aget",
    "aset",
    "adelete",
    "aclear",
)


def _check_backend(backend: object) -> CacheBackend:
    missing = [m for m in _BACKEND_METHODS if not callable(getattr(backend, m, None))]
    if missing:
        raise TypeError(
            f"backend {backend!r} lacks {', '.join(missing)}: see stanchion.CacheBackend"
        )
    return backend  # type: ignore[return-value]


def _decorate(
    func: Callable[..., Any],
    ttl: float | None,
    maxsize: int | None,
    key: Callable[..., Hashable] | None,
    typed: bool,
    backend: CacheBackend | None,
) -> Any:
    if not callable(func):
        raise TypeError(f"@cached needs a callable, not {type(func).__name__}")
    if backend is None:
        backend = LocalBackend(Cache(maxsize, ttl))
    store = _Store(func, backend, ttl, key, typed)

    if inspect.iscoroutinefunction(func):
        flights = _AsyncFlights(store)
        local = store.local

        async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
            k = store.key(args, kwargs)
            if local is not None:
                value = local.get(k, _MISSING)
            else:
                value = await backend.aget(k, _MISSING)
                if value is _MISSING:
                    store.misses += 1
                else:
                    store.hits += 1
            if value is not _MISSING:
                return value
            return await flights.miss(k, args, kwargs)

        wrapper: Any = async_wrapper
    elif store.local is not None:
        # The hot path: key, lookup and hit in C.
        wrapper = CachedCall(func, store.local, _SyncFlights(store).miss, typed, key)
        functools.update_wrapper(wrapper, func)
        return wrapper
    else:
        sync_flights = _SyncFlights(store)

        def sync_wrapper(*args: Any, **kwargs: Any) -> Any:
            k = store.key(args, kwargs)
            value = backend.get(k, _MISSING)
            if value is not _MISSING:
                store.hits += 1
                return value
            store.misses += 1
            return sync_flights.miss(k, args, kwargs)

        wrapper = sync_wrapper

    functools.update_wrapper(wrapper, func)
    wrapper.cache = store.local if store.local is not None else backend
    wrapper.cache_info = store.cache_info
    wrapper.cache_clear = store.cache_clear
    wrapper.invalidate = store.invalidate
    return wrapper


@overload
def cached(ttl: Callable[..., R], /) -> CachedFunction[R]: ...


@overload
def cached(
    ttl: float | None = None,
    maxsize: int | None = 1024,
    key: Callable[..., Hashable] | None = None,
    typed: bool = False,
    backend: CacheBackend | None = None,
) -> Callable[[Callable[..., R]], CachedFunction[R]]: ...


def cached(
    ttl: float | Callable[..., Any] | None = None,
    maxsize: int | None = 1024,
    key: Callable[..., Hashable] | None = None,
    typed: bool = False,
    backend: CacheBackend | None = None,
) -> Any:
    """Cache a function's results by its arguments.

    ``@cached`` or ``@cached(ttl=60, maxsize=1024)`` on a function, a
    method or an ``async def``. Results live ``ttl`` seconds (None:
    until evicted) in a :class:`~stanchion.Cache` of ``maxsize`` entries
    (None: unbounded), or in ``backend`` (see :class:`CacheBackend`; then
    ``maxsize`` is the backend's business). Arguments must be hashable;
    ``key(*args, **kwargs)`` replaces the default key; ``typed=True``
    caches ``f(1)`` and ``f(1.0)`` apart. Keyword order matters, as for
    functools.lru_cache.

    The wrapper has ``cache_info()``, ``cache_clear()``,
    ``invalidate(*args, **kwargs)`` and ``cache`` (the Cache or backend).
    """
    if callable(ttl) and not isinstance(ttl, (int, float)):
        return _decorate(ttl, None, 1024, None, False, None)
    ttl_s = _check_ttl(ttl)
    if maxsize is not None:
        if isinstance(maxsize, bool) or not isinstance(maxsize, int):
            raise TypeError(
                f"maxsize must be an int or None, not {type(maxsize).__name__}"
            )
        if maxsize < 0:
            raise ValueError(f"maxsize must be >= 0, got {maxsize}")
    if key is not None and not callable(key):
        raise TypeError(f"key must be a callable or None, not {type(key).__name__}")
    if not isinstance(typed, bool):
        raise TypeError(f"typed must be a bool, not {type(typed).__name__}")
    checked = None if backend is None else _check_backend(backend)

    def decorate(func: Callable[..., R]) -> CachedFunction[R]:
        result: CachedFunction[R] = _decorate(func, ttl_s, maxsize, key, typed, checked)
        return result

    return decorate
