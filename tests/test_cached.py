"""@stanchion.cached: sync and async functions and methods, single flight,
exceptions, recursion, the backend protocol, bad input, GC and refcounts."""

from __future__ import annotations

import asyncio
import gc
import math
import pickle
import sys
import threading
import time
import weakref
from collections.abc import Hashable
from typing import Any

import pytest

import stanchion
from stanchion import Cache, CacheBackend, CacheInfo, cached
from stanchion._cache import LocalBackend

from .conftest import FakeClock

# ---------------------------------------------------------------------------
# Plain functions
# ---------------------------------------------------------------------------


def test_caches_by_arguments_and_reports_info() -> None:
    calls: list[tuple[Any, ...]] = []

    @cached(ttl=60, maxsize=10)
    def add(x: int, y: int = 1) -> int:
        calls.append((x, y))
        return x + y

    assert add(1) == 2 and add(1) == 2
    assert add(1, y=2) == 3 and add(1, y=2) == 3
    assert add(1, 2) == 3  # positional and keyword calls are cached apart
    assert calls == [(1, 1), (1, 2), (1, 2)]
    info = add.cache_info()
    assert isinstance(info, CacheInfo)
    assert info == (2, 3, 10, 3)
    assert (info.hits, info.misses, info.maxsize, info.currsize) == (2, 3, 10, 3)
    assert add.__name__ == "add" and add.__wrapped__ is not None
    assert isinstance(add.cache, Cache) and add.cache.ttl == 60.0  # type: ignore[attr-defined]


def test_bare_decorator_and_results_are_the_same_object() -> None:
    @cached
    def make(x: str) -> list[str]:
        return [x]

    assert make("a") is make("a")
    assert make.cache_info().maxsize == 1024


def test_invalidate_and_cache_clear() -> None:
    n = [0]

    @cached(maxsize=None)
    def f(x: int, *, scale: int = 1) -> int:
        n[0] += 1
        return x * scale

    f(2, scale=3)
    assert f.invalidate(2, scale=3) is True
    assert f.invalidate(2, scale=3) is False
    f(2, scale=3)
    assert n[0] == 2
    f.cache_clear()
    assert f.cache_info() == (0, 0, None, 0)
    f(2, scale=3)
    assert n[0] == 3


def test_typed_and_custom_key() -> None:
    @cached(typed=True)
    def t(x: float) -> str:
        return type(x).__name__

    assert t(1) == "int" and t(1.0) == "float"

    @cached
    def u(x: float) -> str:
        return type(x).__name__

    # Untyped, equal arguments share an entry (a lone str or int argument
    # is its own key, as in functools.lru_cache).
    assert (
        u(
            2,
        )
        == "int"
        and u(x=2) == "int"
        and u(x=2.0) == "int"
    )

    seen: list[str] = []

    @cached(key=lambda user, request_id: user)
    def profile(user: str, request_id: int) -> str:
        seen.append(user)
        return user.upper()

    assert profile("ann", 1) == "ANN" and profile("ann", 2) == "ANN"
    assert seen == ["ann"]
    assert profile.invalidate("ann", 99) is True


def test_a_key_function_that_raises_propagates() -> None:
    def bad_key(x: int) -> Hashable:
        raise KeyError("no key")

    @cached(key=bad_key)
    def f(x: int) -> int:
        return x

    with pytest.raises(KeyError, match="no key"):
        f(1)
    with pytest.raises(KeyError, match="no key"):
        f.invalidate(1)
    assert f.cache_info() == (0, 0, 1024, 0)


def test_keys_from_make_key() -> None:
    mk = stanchion._core.make_key
    assert mk((1,)) == 1 and mk(("a",)) == "a"
    assert mk((1, 2)) == (1, 2)
    assert mk(((1, 2),)) == ((1, 2),)  # a lone tuple is wrapped
    assert mk((1,), {"a": 2}) != mk((1, "a", 2))  # the keyword mark keeps them apart
    assert mk((1,), None, True) == (1, int)
    with pytest.raises(TypeError):
        mk([1])  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        mk((1,), [])  # type: ignore[arg-type]


def test_unhashable_arguments_raise_type_error() -> None:
    @cached
    def f(x: Any) -> Any:
        return x

    with pytest.raises(TypeError, match="unhashable"):
        f([1])


@pytest.mark.parametrize(
    "ttl", [10**400, -(10**400), 1e300], ids=["huge", "-huge", "1e300"]
)
def test_a_ttl_out_of_range_is_a_value_error(ttl: float) -> None:
    """An int too large for a float included."""
    with pytest.raises(ValueError, match="ttl must be"):
        cached(ttl=ttl)(len)


def test_ttl_expires_results() -> None:
    n = [0]

    @cached(ttl=0.25)
    def f() -> int:
        n[0] += 1
        return n[0]

    assert f() == 1 and f() == 1
    time.sleep(0.3)
    assert f() == 2


def test_exceptions_are_not_cached() -> None:
    n = [0]

    @cached
    def f(x: int) -> int:
        n[0] += 1
        if n[0] == 1:
            raise RuntimeError("first")
        return x

    with pytest.raises(RuntimeError, match="first"):
        f(1)
    assert f(1) == 1 and f(1) == 1 and n[0] == 2


def test_pickles_by_qualified_name() -> None:
    assert pickle.loads(pickle.dumps(module_level)) is module_level


@cached
def module_level(x: int) -> int:
    return x


# ---------------------------------------------------------------------------
# Methods
# ---------------------------------------------------------------------------


class Service:
    def __init__(self, name: str) -> None:
        self.name = name
        self.calls = 0

    @cached(maxsize=100)
    def greet(self, who: str) -> str:
        self.calls += 1
        return f"{self.name} greets {who}"

    @cached
    async def agreet(self, who: str) -> str:
        self.calls += 1
        await asyncio.sleep(0)
        return f"{self.name} greets {who}"


def test_methods_cache_per_instance() -> None:
    a, b = Service("a"), Service("b")
    assert a.greet("x") == "a greets x" and a.greet("x") == "a greets x"
    assert b.greet("x") == "b greets x"
    assert a.calls == 1 and b.calls == 1
    bound = a.greet
    assert bound("x") == "a greets x" and a.calls == 1
    assert Service.greet(a, "x") == "a greets x"
    assert a.greet.cache_info().hits == 3
    assert Service.greet.invalidate(a, "x") is True
    a.greet("x")
    assert a.calls == 2


async def test_async_methods() -> None:
    a = Service("a")
    assert await a.agreet("y") == "a greets y"
    assert await a.agreet("y") == "a greets y"
    assert a.calls == 1
    assert Service.agreet.cache_info().hits == 1


# ---------------------------------------------------------------------------
# Single flight: threads
# ---------------------------------------------------------------------------


def run_threads(n: int, target: Any) -> list[Any]:
    results: list[Any] = [None] * n
    barrier = threading.Barrier(n)

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = ("ok", target())
        except BaseException as e:
            results[i] = ("error", e)

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
        assert not t.is_alive(), "a caller is stuck"
    return results


class Arrivals:
    """A key function that counts callers, so a computation can wait until
    every caller has asked for the key (and so is waiting on it)."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.count = 0
        self.lock = threading.Lock()
        self.all_in = threading.Event()

    def __call__(self, x: int) -> Hashable:
        with self.lock:
            self.count += 1
            if self.count >= self.expected:
                self.all_in.set()
        return x

    def wait(self) -> None:
        assert self.all_in.wait(10), "callers did not arrive"
        time.sleep(0.05)  # from the key function to the wait: a few lines


def test_sixteen_threads_one_computation() -> None:
    n = [0]
    arrivals = Arrivals(16)

    @cached(ttl=60, key=arrivals)
    def slow(x: int) -> object:
        n[0] += 1
        arrivals.wait()
        return object()

    results = run_threads(16, lambda: slow(7))
    assert n[0] == 1
    assert all(kind == "ok" for kind, _ in results)
    assert len({id(value) for _, value in results}) == 1
    # Every caller missed, and all but one waited for the one computation.
    assert slow.cache_info() == (0, 16, 1024, 1)


def test_an_exception_reaches_every_waiting_thread() -> None:
    n = [0]
    arrivals = Arrivals(16)

    @cached(key=arrivals)
    def failing(x: int) -> int:
        n[0] += 1
        if n[0] == 1:
            arrivals.wait()
        raise LookupError(f"attempt {n[0]}")

    results = run_threads(16, lambda: failing(1))
    assert n[0] == 1
    assert all(kind == "error" and isinstance(e, LookupError) for kind, e in results)
    assert {str(e) for _, e in results} == {"attempt 1"}
    with pytest.raises(LookupError, match="attempt 2"):
        failing(1)  # not cached: computed again


def test_recursion_on_other_keys_does_not_deadlock() -> None:
    @cached
    def fib(n: int) -> int:
        return n if n < 2 else fib(n - 1) + fib(n - 2)

    assert fib(60) == 1548008755920
    results = run_threads(4, lambda: fib(80))
    assert {v for _, v in results} == {23416728348467685}


def test_threads_waiting_on_each_other_do_not_deadlock() -> None:
    # Thread A computes key 1 and needs key 2; thread B computes key 2 and
    # needs key 1. One of them must compute alone instead of waiting.
    started = {1: threading.Event(), 2: threading.Event()}

    @cached(key=lambda x, hop: x)
    def f(x: int, hop: int) -> int:
        if hop == 0:
            started[x].set()
            started[3 - x].wait(5)
            time.sleep(0.05)
            return f(3 - x, 1) + 1
        return 100 if hop > 1 else f(3 - x, hop + 1) + 1

    box: dict[int, int] = {}
    threads = [
        threading.Thread(target=lambda x=x: box.__setitem__(x, f(x, 0)), daemon=True)
        for x in (1, 2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
        assert not t.is_alive(), "deadlock"
    assert set(box) == {1, 2}


def test_same_key_recursion_in_one_thread_is_not_a_deadlock() -> None:
    depth = [0]

    @cached
    def f(x: int) -> int:
        depth[0] += 1
        return f(x) if depth[0] < 3 else 42

    assert f(1) == 42


# ---------------------------------------------------------------------------
# Single flight: asyncio
# ---------------------------------------------------------------------------


async def test_two_hundred_tasks_one_computation() -> None:
    n = [0]

    @cached(ttl=60)
    async def slow(x: int) -> object:
        n[0] += 1
        await asyncio.sleep(0.05)
        return object()

    results = await asyncio.gather(*[slow(3) for _ in range(200)])
    assert n[0] == 1
    assert len({id(r) for r in results}) == 1
    assert await slow(3) is results[0]
    assert slow.cache_info().hits == 1


async def test_an_exception_reaches_every_waiting_task() -> None:
    n = [0]

    @cached
    async def failing(x: int) -> int:
        n[0] += 1
        await asyncio.sleep(0.02)
        raise LookupError(f"attempt {n[0]}")

    results = await asyncio.gather(
        *[failing(1) for _ in range(200)], return_exceptions=True
    )
    assert n[0] == 1
    assert all(isinstance(r, LookupError) and str(r) == "attempt 1" for r in results)
    with pytest.raises(LookupError, match="attempt 2"):
        await failing(1)


async def test_a_cancelled_waiter_does_not_cancel_the_computation() -> None:
    n = [0]

    @cached
    async def slow(x: int) -> int:
        n[0] += 1
        await asyncio.sleep(0.05)
        return x * 2

    first = asyncio.ensure_future(slow(4))
    second = asyncio.ensure_future(slow(4))
    await asyncio.sleep(0.01)
    first.cancel()
    assert await second == 8
    assert await slow(4) == 8 and n[0] == 1


async def test_async_recursion_and_mutual_waits_do_not_deadlock() -> None:
    @cached
    async def fib(n: int) -> int:
        return n if n < 2 else await fib(n - 1) + await fib(n - 2)

    assert await fib(50) == 12586269025

    @cached(key=lambda x, hop: x)
    async def f(x: int, hop: int) -> int:
        if hop == 0:
            await asyncio.sleep(0.01)
            return await f(3 - x, 1) + 1
        return 100 if hop > 1 else await f(3 - x, hop + 1) + 1

    a, b = await asyncio.wait_for(asyncio.gather(f(1, 0), f(2, 0)), 5)
    assert a > 100 and b > 100


async def test_async_same_key_recursion() -> None:
    depth = [0]

    @cached
    async def f(x: int) -> int:
        depth[0] += 1
        return await f(x) if depth[0] < 3 else 7

    assert await asyncio.wait_for(f(1), 5) == 7


def test_async_functions_on_several_event_loops() -> None:
    n = [0]

    @cached
    async def f(x: int) -> int:
        n[0] += 1
        await asyncio.sleep(0.01)
        return x

    assert asyncio.run(f(1)) == 1
    assert asyncio.run(f(1)) == 1  # a hit from another loop
    assert n[0] == 1


# ---------------------------------------------------------------------------
# Backends
# ---------------------------------------------------------------------------


class DictBackend:
    """A minimal CacheBackend: a dict, ignoring ttl, counting calls."""

    def __init__(self) -> None:
        self.data: dict[Hashable, Any] = {}
        self.log: list[str] = []

    def get(self, key: Hashable, default: Any) -> Any:
        self.log.append("get")
        return self.data.get(key, default)

    def set(self, key: Hashable, value: Any, ttl: float | None) -> None:
        self.log.append(f"set ttl={ttl}")
        self.data[key] = value

    def delete(self, key: Hashable) -> bool:
        return self.data.pop(key, self) is not self

    def clear(self) -> None:
        self.data.clear()

    async def aget(self, key: Hashable, default: Any) -> Any:
        self.log.append("aget")
        return self.data.get(key, default)

    async def aset(self, key: Hashable, value: Any, ttl: float | None) -> None:
        self.log.append(f"aset ttl={ttl}")
        self.data[key] = value

    async def adelete(self, key: Hashable) -> bool:
        return self.delete(key)

    async def aclear(self) -> None:
        self.clear()


def test_sync_function_with_a_backend() -> None:
    backend = DictBackend()
    assert isinstance(backend, CacheBackend)
    n = [0]

    @cached(ttl=30, backend=backend)
    def f(x: int) -> int:
        n[0] += 1
        return x + 1

    assert f(1) == 2 and f(1) == 2 and n[0] == 1
    assert backend.data == {1: 2}
    assert "set ttl=30.0" in backend.log
    assert f.cache_info() == (1, 1, None, None)
    assert f.cache is backend  # type: ignore[attr-defined]
    assert f.invalidate(1) is True and backend.data == {}
    f(1)
    f.cache_clear()
    assert backend.data == {} and f.cache_info() == (0, 0, None, None)
    results = run_threads(8, lambda: f(5))
    assert {v for _, v in results} == {6}


async def test_async_function_with_a_backend() -> None:
    backend = DictBackend()
    n = [0]

    @cached(backend=backend)
    async def f(x: int) -> int:
        n[0] += 1
        await asyncio.sleep(0.01)
        return x * 10

    results = await asyncio.gather(*[f(2) for _ in range(50)])
    assert set(results) == {20} and n[0] == 1
    assert "aset ttl=None" in backend.log and "get" not in backend.log
    assert f.cache_info().hits == 0 and f.cache_info().misses == 50
    assert await f(2) == 20 and f.cache_info().hits == 1


class RecordingLocalBackend(LocalBackend):
    """A LocalBackend whose own set and aset must be called."""

    __slots__ = ("ttls",)

    def __init__(self, cache: Cache[Hashable, Any]) -> None:
        super().__init__(cache)
        self.ttls: list[tuple[str, float | None]] = []

    def set(self, key: Hashable, value: Any, ttl: float | None) -> None:
        self.ttls.append(("set", ttl))
        super().set(key, value, ttl)

    async def aset(self, key: Hashable, value: Any, ttl: float | None) -> None:
        self.ttls.append(("aset", ttl))
        await super().aset(key, value, ttl)


@pytest.mark.parametrize("backend_type", [LocalBackend, RecordingLocalBackend])
async def test_the_ttl_reaches_a_local_backend(
    clock: FakeClock, backend_type: type[LocalBackend]
) -> None:
    # The Cache has no TTL of its own: only the decorator's can expire.
    backend = backend_type(Cache(100, clock=clock))
    calls = [0]

    @cached(ttl=5, backend=backend)
    def f(x: int) -> int:
        calls[0] += 1
        return x

    @cached(ttl=5, backend=backend)
    async def g(x: str) -> str:
        calls[0] += 1
        return x

    assert f(1) == 1 and await g("a") == "a" and calls[0] == 2
    clock.advance(4.9)
    assert f(1) == 1 and await g("a") == "a" and calls[0] == 2
    clock.advance(0.2)
    assert 1 not in backend.cache and "a" not in backend.cache
    assert f(1) == 1 and await g("a") == "a" and calls[0] == 4
    if isinstance(backend, RecordingLocalBackend):
        assert backend.ttls == [("set", 5.0), ("aset", 5.0)] * 2


@pytest.mark.parametrize("backend_type", [LocalBackend, RecordingLocalBackend])
async def test_a_result_too_heavy_for_the_cache_is_returned_uncached(
    backend_type: type[LocalBackend],
) -> None:
    """Storing it raised ValueError (maxweight), so the call and every
    caller waiting on it failed although the result was computed."""
    backend = backend_type(Cache(10, maxweight=5, weigh=len))
    calls = [0]
    gate = threading.Event()

    @cached(backend=backend)
    def f(n: int) -> str:
        calls[0] += 1
        gate.wait(5)
        return "x" * n

    @cached(backend=backend)
    async def g(n: int) -> str:
        calls[0] += 1
        await asyncio.sleep(0.01)
        return "y" * n

    results: list[object] = []

    def call() -> None:
        try:
            results.append(f(10))
        except ValueError as e:
            results.append(e)

    threads = [threading.Thread(target=call) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(0.1)
    gate.set()
    for t in threads:
        t.join(5)
    assert results == ["x" * 10] * 3 and calls[0] == 1
    assert await asyncio.gather(g(10), g(10)) == ["y" * 10] * 2 and calls[0] == 2
    assert f(3) == "xxx" and await g(2) == "yy"
    assert len(backend.cache) == 2 and calls[0] == 4
    assert f(10) == "x" * 10 and calls[0] == 5  # not cached: computed again


class Ticket:
    """An argument whose hash follows its state, as a mutable record's
    may."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __hash__(self) -> int:
        return hash(self.n)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Ticket) and other.n == self.n


async def test_a_call_that_changes_its_own_key_leaves_no_flight_behind() -> None:
    """The in-flight entry was removed by the key's new hash, so it
    stayed: it kept the argument alive, and another thread calling with
    the key back in its first state got the old result without
    computing (here with maxsize=0, which keeps nothing)."""
    calls = [0]

    @cached(maxsize=0)
    def f(t: Ticket) -> int:
        calls[0] += 1
        t.n += 1000
        return calls[0]

    @cached(maxsize=0)
    async def g(t: Ticket) -> int:
        calls[0] += 1
        t.n += 1000
        return calls[0]

    first = Ticket(1)
    assert f(first) == 1
    first.n = 1
    seen: list[int] = []
    other = threading.Thread(target=lambda: seen.append(f(first)))
    other.start()
    other.join(5)
    assert seen == [2]
    first.n = 2
    assert await g(first) == 3
    first.n = 2
    assert await g(first) == 4
    refs = []
    for i in range(3):
        t = Ticket(10 + i)
        refs.append(weakref.ref(t))
        f(t)
        await g(t)
    del t
    gc.collect()
    assert [r() for r in refs] == [None] * 3


async def test_local_backend_follows_the_protocol() -> None:
    lb = LocalBackend(Cache(4))
    assert isinstance(lb, CacheBackend)
    lb.set("k", 1, None)
    assert lb.get("k", None) == 1 and await lb.aget("k", None) == 1
    await lb.aset("j", 2, 5.0)
    assert lb.delete("k") is True and lb.delete("k") is False
    assert await lb.adelete("j") is True
    lb.set("x", 1, None)
    await lb.aclear()
    assert lb.get("x", "gone") == "gone"
    lb.set("x", 1, None)
    lb.clear()
    assert len(lb.cache) == 0
    with pytest.raises(TypeError):
        LocalBackend({})  # type: ignore[arg-type]


# ---------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "exc"),
    [
        ({"ttl": 0}, ValueError),
        ({"ttl": -5}, ValueError),
        ({"ttl": math.nan}, ValueError),
        ({"ttl": math.inf}, ValueError),
        ({"ttl": "60"}, TypeError),
        ({"ttl": True}, TypeError),
        ({"maxsize": -1}, ValueError),
        ({"maxsize": 1.5}, TypeError),
        ({"maxsize": False}, TypeError),
        ({"key": "name"}, TypeError),
        ({"typed": 1}, TypeError),
        ({"backend": object()}, TypeError),
        ({"backend": {}}, TypeError),
    ],
)
def test_decorator_rejects_bad_input(
    kwargs: dict[str, Any], exc: type[Exception]
) -> None:
    with pytest.raises(exc):
        cached(**kwargs)


def test_decorating_a_non_callable_fails() -> None:
    with pytest.raises(TypeError):
        cached(ttl=5)(42)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------
# GC and reference counts
# ---------------------------------------------------------------------------


def test_a_cached_function_in_a_cycle_is_collected() -> None:
    def build() -> weakref.ref[Any]:
        @cached
        def f(x: int) -> Any:
            return f  # the cached result refers back to the wrapper

        f(1)
        return weakref.ref(f)

    r = build()
    gc.collect()
    assert r() is None

    class Holder:
        @cached
        def m(self) -> Holder:
            return self

    h = Holder()
    h.m()
    rh = weakref.ref(h)
    del h
    Holder.m.cache_clear()  # type: ignore[attr-defined]
    gc.collect()
    assert rh() is None


def test_refcounts_flat_around_hits_misses_and_errors() -> None:
    arg, kwval, result = "rc-arg-" + "1", object(), object()

    @cached(maxsize=2)
    def f(a: str, k: object = None) -> object:
        if k == "boom":
            raise ValueError
        return result

    start = [sys.getrefcount(o) for o in (arg, kwval, result)]
    for _ in range(3):
        f(arg)
        f(arg)
        f(arg, k=kwval)
        f(arg, k=kwval)
        f(arg, kwval)
        f("x" + arg)  # evicts
        with pytest.raises(ValueError):
            f(arg, k="boom")
        with pytest.raises(TypeError):
            f([arg])  # type: ignore[arg-type]
        f.invalidate(arg)
    f.cache_clear()
    assert [sys.getrefcount(o) for o in (arg, kwval, result)] == start


def test_wrapper_in_a_cycle_through_its_dict_is_collected() -> None:
    w = stanchion._core.CachedCall(len, Cache(), lambda k, a, kw: len(*a))
    assert w("ab") == 2 and w("ab") == 2
    w.__dict__["me"] = [w]  # w -> __dict__ -> list -> w
    r = weakref.ref(w)
    del w
    gc.collect()
    assert r() is None
