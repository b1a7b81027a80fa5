"""The Memcached cache and the failure policy of every Memcached component,
against a real memcached: the RedisCache API, @cached on it, the response
cache on it, and memcached killed or paused mid-test (on_error answers
within the timeout, one log line per outage, recovery by itself)."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

import stanchion
from stanchion import Limiter, StorageUnavailable, cached
from stanchion.asgi import CacheMiddleware
from stanchion.memcached import MemcachedCache, MemcachedStorage
from stanchion.memcached.connection import _safe_key

from ._memcached import MemcachedServer
from ._redis import SLOW
from .conftest import FakeClock

FAIL_FAST = 0.2
MARGIN = 0.5


@pytest.fixture
def cache(memcached_server: MemcachedServer) -> Iterator[MemcachedCache]:
    c = MemcachedCache(
        memcached_server.url, prefix=f"c{uuid.uuid4().hex[:8]}:", timeout=SLOW
    )
    yield c
    c.close()


# -- the cache API -------------------------------------------------------------------


def test_get_set_delete_ttl_contains(cache: MemcachedCache) -> None:
    assert cache.get("k") is None
    assert cache.get("k", "dflt") == "dflt"
    cache.set("k", {"a": [1, 2]})
    assert cache.get("k") == {"a": [1, 2]}
    assert cache["k"] == {"a": [1, 2]}
    assert "k" in cache
    assert cache.ttl("k") is None
    cache.set("t", 1, ttl=30)
    left = cache.ttl("t")
    assert left is not None and 29 < left <= 30
    with pytest.raises(KeyError):
        cache.ttl("absent")
    assert cache.delete("k") is True
    assert cache.delete("k") is False
    assert "k" not in cache
    with pytest.raises(KeyError):
        cache["k"]
    with pytest.raises(KeyError):
        del cache["k"]
    cache["n"] = 5
    del cache["n"]
    assert "n" not in cache


def test_any_key_and_short_ttls(cache: MemcachedCache) -> None:
    keys: list[Any] = [
        "x" * 1000,
        "a b",
        "line\nbreak",
        "ключ",
        b"\x00\x01",
        ("tuple", 1, 2.5, None, True),
        frozenset({1, 2}),
        12345,
    ]
    for i, key in enumerate(keys):
        cache.set(key, i)
    assert [cache.get(k) for k in keys] == list(range(len(keys)))
    clock = FakeClock(time.time())
    cache._clock = clock
    cache.set("brief", 1, ttl=0.25)  # below Memcached's 1 s granularity
    assert cache.get("brief") == 1
    clock.advance(0.3)
    assert cache.get("brief") is None
    with pytest.raises(TypeError, match="MemcachedCache keys"):
        cache.set(object(), 1)
    with pytest.raises(ValueError, match="ttl"):
        cache.set("k", 1, ttl=0)


def test_ttls_past_2038_are_kept(cache: MemcachedCache) -> None:
    """Memcached reads an expiry over 30 days as a Unix time in 31 bits:
    a longer ttl (one past January 2038) is still stored, and expires at
    its exact time."""
    for ttl in (10 * 365 * 86400, 2**31, 1e10):
        cache.set("long", ttl, ttl=ttl)
        assert cache.get("long") == ttl
        left = cache.ttl("long")
        assert left is not None and ttl - 5 < left <= ttl
    clock = FakeClock(time.time())
    cache._clock = clock
    cache.set("long", "v", ttl=2**31)
    clock.advance(2**31)
    assert cache.get("long") is None


def test_clear_and_namespaces(cache: MemcachedCache) -> None:
    users = cache.namespace("users")
    cache.set("k", "root")
    users.set("k", "user")
    assert (cache.get("k"), users.get("k")) == ("root", "user")
    users.clear()
    assert (cache.get("k"), users.get("k")) == ("root", None)
    users.set("k", "again")
    assert users.get("k") == "again"
    cache.clear()
    assert cache.get("k") is None
    assert users.get("k") == "again"  # a namespace has its own generation
    # Another process (another object) sees the clear at once.
    other = MemcachedCache(cache._connector.client, prefix=cache.prefix)
    try:
        other.set("x", 1)
        assert cache.get("x") == 1
        cache.clear()
        assert other.get("x") is None
    finally:
        other.close()


def test_keys_of_the_parent_never_reach_a_namespaces_own(cache: MemcachedCache) -> None:
    """A namespace's generation counter and its hashed keys (the response
    cache's entries, groups and Vary records) are out of the parent's
    reach: a parent key spelled like one of them is a key of its own."""
    users = cache.namespace("users")
    users.set("k", "user")
    users.set("a b", "secret")  # stored under a hash of its body
    hashed = _safe_key(users._prefix, b"a b")[len(cache._prefix) :].decode()
    assert hashed.startswith("users:#")
    assert cache.get(hashed) is None
    cache.set("users:#generation", "x")
    cache.set(hashed, "poison")
    assert (users.get("k"), users.get("a b")) == ("user", "secret")
    users.clear()
    assert users.get("k") is None
    assert (cache.get("users:#generation"), cache.get(hashed)) == ("x", "poison")


def test_an_evicted_generation_never_brings_old_entries_back(
    cache: MemcachedCache,
) -> None:
    """Memcached evicts the small generation counters apart from the
    entries (another slab class). Entries are never written under the
    generation a missing counter reads as, so one evicted after clear()
    (or after a path's invalidation) brings nothing back."""
    cache.set("k", "before clear")
    cache.clear()
    cache.set("other", 1)
    client = cache._connector.client
    client.delete(cache._gen_key, noreply=False)  # evicted
    assert cache.get("k") is None
    assert cache.get("other") is None  # its generation is gone too
    cache.set("k", "after")
    assert cache.get("k") == "after"
    # The response cache's per-path generations, the same way.
    cache._set_raw("e:/p?", b"old", 60, "/p")
    assert cache._get_raw("e:/p?", "/p") == b"old"
    assert cache._forget_group("/p")
    assert cache._get_raw("e:/p?", "/p") is None
    client.delete(cache._group("/p"), noreply=False)  # evicted
    assert cache._get_raw("e:/p?", "/p") is None
    # Another process that never read the generation writes under the
    # current one.
    other = MemcachedCache(client, prefix=cache.prefix)
    try:
        other.set("x", 2)
        assert cache.get("x") == 2
    finally:
        other.close()


def test_json_serializer_and_too_large_values(
    cache: MemcachedCache, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="stanchion")
    js = MemcachedCache(cache._connector.client, prefix=cache.prefix, serializer="json")
    try:
        js.set("j", {"a": 1})
        assert js.get("j") == {"a": 1}
        js.set("big", "x" * (2 << 20))  # over Memcached's 1 MB item size
        assert js.get("big") is None
        assert js.get("j") == {"a": 1}  # and no outage
    finally:
        js.close()
    assert not [r for r in caplog.records if r.name == "stanchion.memcached"]
    with pytest.raises(ValueError, match="serializer"):
        MemcachedCache(cache._connector.client, serializer="yaml")
    with pytest.raises(ValueError, match="on_error"):
        MemcachedCache(cache._connector.client, on_error="allow")


async def test_async_twins(cache: MemcachedCache) -> None:
    await cache.aset("a", [1])
    assert await cache.aget("a") == [1]
    assert await cache.acontains("a")
    assert await cache.attl("a") is None
    assert await cache.adelete("a") is True
    assert await cache.aget("a", "gone") == "gone"
    await cache.aset("b", 2)
    await cache.aclear()
    assert await cache.aget("b") is None


def test_cached_on_memcached(cache: MemcachedCache) -> None:
    calls: list[int] = []

    @cached(ttl=60, backend=cache.namespace("square"))
    def square(x: int) -> int:
        calls.append(x)
        return x * x

    assert [square(3), square(3), square(4)] == [9, 9, 16]
    assert calls == [3, 4]

    @cached(ttl=60, backend=cache.namespace("asquare"))
    async def asquare(x: int) -> int:
        calls.append(-x)
        return x * x

    async def run() -> list[int]:
        return [await asquare(5), await asquare(5)]

    assert asyncio.run(run()) == [25, 25]
    assert calls == [3, 4, -5]


async def test_response_cache_on_memcached(cache: MemcachedCache) -> None:
    hits: dict[str, int] = {}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        path = scope["path"]
        hits[path] = hits.get(path, 0) + 1
        body = f"{path} #{hits[path]}".encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/plain")],
            }
        )
        await send({"type": "http.response.body", "body": body})

    mw = CacheMiddleware(app, ttl=60, backend=cache)
    transport = httpx.ASGITransport(app=mw)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        first = await c.get("/a")
        again = await c.get("/a")
        assert first.text == again.text == "/a #1"
        assert (first.headers["x-cache"], again.headers["x-cache"]) == ("MISS", "HIT")
        assert (await c.get("/b")).text == "/b #1"
        assert (await c.get("/a?q=1")).text == "/a #2"
        # A path's invalidation is exact: /b stays.
        mw.invalidate("/a")
        assert (await c.get("/a")).text == "/a #3"
        assert (await c.get("/a?q=1")).text == "/a #4"
        assert (await c.get("/b")).text == "/b #1"
        # A prefix's forgets the whole cache.
        mw.invalidate(prefix="/zzz")
        assert (await c.get("/b")).text == "/b #2"


# -- failures ---------------------------------------------------------------------------


def _lines(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str]]:
    return [
        (r.levelno, r.getMessage())
        for r in caplog.records
        if r.name == "stanchion.memcached"
    ]


@pytest.mark.parametrize("algorithm", ["token_bucket", "fixed_window"])
def test_limiter_outage_policies_and_recovery(
    private_memcached: MemcachedServer,
    caplog: pytest.LogCaptureFixture,
    clock: FakeClock,
    algorithm: str,
) -> None:
    caplog.set_level(logging.INFO, logger="stanchion")
    storage = MemcachedStorage(private_memcached.url, timeout=FAIL_FAST)
    storage._connector.clock = clock
    lims = {
        policy: Limiter(
            "2/minute", storage=storage, algorithm=algorithm, on_error=policy
        )
        for policy in ("allow", "deny", "raise")
    }
    assert lims["allow"].hit("k").allowed
    private_memcached.kill()  # mid-test: the server vanishes
    t0 = time.monotonic()
    d = lims["allow"].hit("k")
    assert d.allowed and d.limit == 2
    assert time.monotonic() - t0 < FAIL_FAST + MARGIN
    clock.advance(0.1)
    d = lims["deny"].hit("k")
    assert not d.allowed and d.retry_after == 1.0
    clock.advance(0.1)
    with pytest.raises(StorageUnavailable) as raised:
        lims["raise"].hit("k")
    assert isinstance(raised.value.__cause__, OSError)
    # During the outage, calls between probes answer at once.
    t0 = time.monotonic()
    for _ in range(100):
        assert lims["allow"].hit("k").allowed
    assert time.monotonic() - t0 < 0.5
    lines = _lines(caplog)
    assert len(lines) == 1 and lines[0][0] == logging.WARNING
    assert "Memcached at 127.0.0.1:" in lines[0][1]
    assert "unavailable" in lines[0][1]
    # Back (empty): the next probe ends the outage, nothing recreated.
    private_memcached.start()
    clock.advance(0.1)
    d = lims["raise"].hit("fresh")
    assert d.allowed and d.remaining == 1
    lines = _lines(caplog)
    assert [lvl for lvl, _ in lines] == [logging.WARNING, logging.INFO]
    assert "available again" in lines[1][1]
    storage.close()


def test_paused_server_bounded_by_timeout(
    private_memcached: MemcachedServer, clock: FakeClock
) -> None:
    storage = MemcachedStorage(private_memcached.url, timeout=FAIL_FAST)
    storage._connector.clock = clock
    lim = Limiter("5/minute", storage=storage, algorithm="sliding_window")
    assert lim.hit("k").allowed
    private_memcached.pause()
    try:
        t0 = time.monotonic()
        assert lim.hit("k").allowed  # on_error="allow"
        assert time.monotonic() - t0 < FAIL_FAST + MARGIN
    finally:
        private_memcached.resume()
    clock.advance(0.1)
    d = lim.hit("k")
    assert d.allowed and d.remaining == 3  # the hit in the outage never landed
    storage.close()


async def test_paused_server_bounds_many_concurrent_calls(
    private_memcached: MemcachedServer, clock: FakeClock
) -> None:
    """Memcached's asyncio calls wait in the loop's executor (a few
    threads): many at once on a paused server must not wait there one
    timeout after another. A call that reaches its thread after the
    outage began is answered by on_error without asking the server."""
    storage = MemcachedStorage(private_memcached.url, timeout=FAIL_FAST)
    storage._connector.clock = clock
    lim = Limiter("500/minute", storage=storage)
    assert (await lim.ahit("warm")).allowed
    private_memcached.pause()
    try:
        t0 = time.monotonic()
        got = await asyncio.gather(*(lim.ahit(f"k{i}") for i in range(60)))
        took = time.monotonic() - t0
    finally:
        private_memcached.resume()
    assert all(d.allowed for d in got)  # on_error="allow"
    assert took < 2 * FAIL_FAST + MARGIN
    storage.close()


async def test_cache_outage(
    private_memcached: MemcachedServer,
    caplog: pytest.LogCaptureFixture,
    clock: FakeClock,
) -> None:
    caplog.set_level(logging.INFO, logger="stanchion")
    storage = MemcachedStorage(private_memcached.url, timeout=FAIL_FAST)
    storage._connector.clock = clock
    cache = MemcachedCache(storage)
    strict = MemcachedCache(storage, on_error="raise")
    cache.set("k", 1)
    private_memcached.kill()
    t0 = time.monotonic()
    assert cache.get("k", "dflt") == "dflt"
    cache.set("k", 2)
    assert cache.delete("k") is False
    assert "k" not in cache
    assert cache.ttl("k") is None
    cache.clear()
    assert await cache.aget("k", "d") == "d"
    assert time.monotonic() - t0 < FAIL_FAST + MARGIN
    with pytest.raises(StorageUnavailable):
        strict.get("k")
    with pytest.raises(StorageUnavailable):
        await strict.aset("k", 1)
    private_memcached.start()
    clock.advance(0.1)
    await cache.aset("k", 3)
    assert cache.get("k") == 3
    levels = [lvl for lvl, _ in _lines(caplog)]
    assert levels == [logging.WARNING, logging.INFO]
    assert "stanchion cache" in _lines(caplog)[0][1]
    storage.close()


def test_lazy_top_level_names() -> None:
    assert stanchion.MemcachedStorage is MemcachedStorage
    assert stanchion.MemcachedCache is MemcachedCache


async def test_middleware_storage_url_shares_limits(
    memcached_server: MemcachedServer,
) -> None:
    """``storage="memcached://..."`` in a middleware: two app instances
    (as two workers would) share one client's budget."""
    from stanchion.asgi import RateLimitMiddleware

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    scope = f"mw{uuid.uuid4().hex[:8]}"
    workers = [
        RateLimitMiddleware(
            app, limit="3/minute", storage=memcached_server.url, scope=scope
        )
        for _ in range(2)
    ]
    statuses = []
    try:
        for i in range(5):
            transport = httpx.ASGITransport(app=workers[i % 2])
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
                statuses.append((await c.get("/")).status_code)
    finally:
        for w in workers:
            assert isinstance(w.rule.limiters.storage, MemcachedStorage)
            w.rule.limiters.storage.close()
    assert statuses == [200, 200, 200, 429, 429]
    with pytest.raises(ValueError, match="memcached://"):
        RateLimitMiddleware(app, limit="3/minute", storage="memcached://host:port")
