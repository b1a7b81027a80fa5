"""RedisCache against a real redis-server: the Cache subset, serializers,
keys from any process, prefix-scoped clear, asyncio, and outages."""

from __future__ import annotations

import logging
import os
import pickle
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

import stanchion
from stanchion.redis import RedisCache, RedisStorage, _cache_key

from ._redis import SLOW, RedisServer
from .conftest import SANITIZED, FakeClock

# Outage tests: the default timeout, with more room in the sanitizer pass.
FAIL_FAST = 0.2 if SANITIZED else 0.05


@pytest.fixture
def cache(redis_server: RedisServer) -> Iterator[RedisCache]:
    c = RedisCache(redis_server.url, timeout=SLOW, prefix=f"c{uuid.uuid4().hex[:8]}:")
    yield c
    c.close()


@pytest.fixture
def rclient(redis_server: RedisServer) -> Iterator[redis.Redis]:
    c = redis.Redis(port=redis_server.port)
    yield c
    c.close()


def test_rejects_bad_arguments(redis_server: RedisServer) -> None:
    url = redis_server.url
    with pytest.raises(TypeError, match="prefix"):
        RedisCache(url, prefix=b"x")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="prefix"):
        RedisCache(url, prefix="")
    for bad in (0, -1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="ttl"):
            RedisCache(url, ttl=bad)
    with pytest.raises(ValueError, match="serializer"):
        RedisCache(url, serializer="yaml")
    with pytest.raises(TypeError, match="serializer"):
        RedisCache(url, serializer=object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="on_error"):
        RedisCache(url, on_error="deny")
    with pytest.raises(ValueError, match="timeout"):
        RedisCache(url, timeout=0)
    with pytest.raises(TypeError):
        RedisCache(42)


def test_get_set_delete(cache: RedisCache) -> None:
    assert cache.get("a") is None
    assert cache.get("a", "dflt") == "dflt"
    cache.set("a", {"x": [1, 2.5, None]})
    assert cache.get("a") == {"x": [1, 2.5, None]}
    cache.set("none", None)
    assert cache.get("none", "dflt") is None  # a stored None is not a miss
    assert "none" in cache and "zzz" not in cache
    cache["b"] = b"\x00bytes"
    assert cache["b"] == b"\x00bytes"
    with pytest.raises(KeyError):
        cache["missing"]
    assert cache.delete("a") is True
    assert cache.delete("a") is False
    del cache["b"]
    with pytest.raises(KeyError):
        del cache["b"]
    assert cache.ttl("none") is None
    with pytest.raises(KeyError):
        cache.ttl("a")


def test_ttl(cache: RedisCache) -> None:
    cache.set("short", 1, ttl=0.05)
    cache.set("long", 2, ttl=60)
    ttl = cache.ttl("long")
    assert ttl is not None and 59 < ttl <= 60
    with pytest.raises(ValueError, match="ttl"):
        cache.set("x", 1, ttl=0)
    with pytest.raises(ValueError, match="ttl"):
        cache.set("x", 1, ttl=float("inf"))
    assert "x" not in cache  # nothing stored by the rejected calls
    time.sleep(0.12)
    assert cache.get("short") is None and cache.get("long") == 2


def test_default_ttl(redis_server: RedisServer) -> None:
    cache = RedisCache(
        redis_server.url, timeout=SLOW, prefix=f"t{uuid.uuid4().hex[:6]}:", ttl=30
    )
    assert cache.default_ttl == 30.0 and cache.namespace("n").default_ttl == 30.0
    cache.set("k", "v")
    left = cache.ttl("k")
    assert left is not None and 29 < left <= 30
    cache.set("k2", "v", ttl=5)
    left = cache.ttl("k2")
    assert left is not None and left <= 5
    cache.clear()
    cache.close()


def test_serializers(redis_server: RedisServer) -> None:
    prefix = f"s{uuid.uuid4().hex[:6]}:"
    as_json = RedisCache(
        redis_server.url, timeout=SLOW, prefix=prefix, serializer="json"
    )
    as_json.set("k", {"a": [1, "é"]})
    raw = redis.Redis(port=redis_server.port).get(prefix + "k")
    assert raw == '{"a":[1,"é"]}'.encode()
    assert as_json.get("k") == {"a": [1, "é"]}
    with pytest.raises(TypeError):
        as_json.set("bad", {1, 2})
    assert "bad" not in as_json

    class Upper:
        def dumps(self, value: Any) -> str:
            return str(value).upper()

        def loads(self, data: bytes) -> Any:
            return data.decode().lower()

    custom = RedisCache(
        redis_server.url, timeout=SLOW, prefix=prefix, serializer=Upper()
    )
    custom.set("c", "hello")
    assert custom.get("c") == "hello"

    class Broken:
        def dumps(self, value: Any) -> int:
            return 5

        def loads(self, data: bytes) -> Any:
            return data

    with pytest.raises(TypeError, match="dumps returned int"):
        RedisCache(
            redis_server.url, timeout=SLOW, prefix=prefix, serializer=Broken()
        ).set("x", 1)  # type: ignore[arg-type]
    # pickle is the default.
    plain = RedisCache(redis_server.url, timeout=SLOW, prefix=prefix)
    plain.set("p", ("tuple", 1))
    assert pickle.loads(redis.Redis(port=redis_server.port).get(prefix + "p")) == (
        "tuple",
        1,
    )  # type: ignore[arg-type]
    as_json.clear()


def test_keys_of_any_shape(cache: RedisCache, rclient: redis.Redis) -> None:
    mark = object()  # @cached's keyword marker
    keys: list[Any] = [
        "plain", b"plain-bytes", 5, -3, 2.5, None, True, (1, "a"), (1, ("a", b"b")),
        frozenset({"x", "y", 3}), (1, mark, "kw", 2), (1, int, str), "\x00i5;", b"\x00",
        "x" * 1000, ("long",) * 200, "é",
    ]  # fmt: skip
    for i, key in enumerate(keys):
        cache.set(key, i)
    for i, key in enumerate(keys):
        assert cache.get(key) == i, key
    assert cache.get((1, "a", "extra")) is None
    assert cache.get(frozenset({"y", 3, "x"})) == keys.index(frozenset({"x", "y", 3}))
    stored = set(rclient.keys(cache.prefix + "*"))
    assert len(stored) == len(keys)
    assert (cache.prefix + "plain").encode() in stored
    assert max(len(k) for k in stored) < 1100
    with pytest.raises(TypeError, match="RedisCache keys"):
        cache.set(("ok", [1]), 1)
    with pytest.raises(TypeError, match="RedisCache keys"):
        cache.get(object())
    assert len(set(rclient.keys(cache.prefix + "*"))) == len(keys)


def test_keys_are_the_same_in_every_process() -> None:
    code = (
        "from stanchion.redis import _cache_key\n"
        "import sys\n"
        "k = (1, 'a', frozenset({'p', 'q', 'r', 's', 7, (1, 2)}), None, 2.5, int)\n"
        "sys.stdout.write(_cache_key(k).hex())\n"
    )
    outs = set()
    for seed in ("1", "2", "3"):
        env = dict(os.environ, PYTHONHASHSEED=seed)
        out = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, check=True
        )
        outs.add(out.stdout.decode())
    assert len(outs) == 1
    k = (1, "a", frozenset({"p", "q", "r", "s", 7, (1, 2)}), None, 2.5, int)
    assert outs == {_cache_key(k).hex()}


def test_clear_is_prefix_scoped(
    redis_server: RedisServer, rclient: redis.Redis
) -> None:
    base = f"c{uuid.uuid4().hex[:6]}"
    a = RedisCache(redis_server.url, timeout=SLOW, prefix=f"{base}:a:")
    b = RedisCache(redis_server.url, timeout=SLOW, prefix=f"{base}:b:")
    odd = RedisCache(redis_server.url, timeout=SLOW, prefix=f"{base}:[*?]:")
    pipe = rclient.pipeline(transaction=False)
    for i in range(2500):  # several SCAN pages
        pipe.set(f"{base}:a:{i}", i)
    pipe.execute()
    b.set("keep", 1)
    odd.set("x", 1)
    a.clear()
    assert rclient.keys(f"{base}:a:*") == []
    assert b.get("keep") == 1
    odd.clear()  # glob characters in the prefix are matched literally
    assert b.get("keep") == 1 and odd.get("x") is None
    b.clear()


def test_namespace(cache: RedisCache) -> None:
    users = cache.namespace("users")
    posts = cache.namespace("posts")
    users.set(1, "alice")
    posts.set(1, "hello")
    assert users.get(1) == "alice" and posts.get(1) == "hello" and cache.get(1) is None
    assert users.prefix == cache.prefix + "users:"
    users.clear()
    assert posts.get(1) == "hello"
    with pytest.raises(ValueError):
        cache.namespace("")
    with pytest.raises(TypeError):
        cache.namespace(3)  # type: ignore[arg-type]


def test_backend_protocol_shape(cache: RedisCache) -> None:
    """The calls @cached(backend=...) makes: get(key, default),
    set(key, value, ttl), delete(key) -> bool, clear() and async twins."""
    missing = object()
    key = ("args", 1, object(), "kw", 2)
    assert cache.get(key, missing) is missing
    assert cache.set(key, [1], None) is None
    assert cache.get(key, missing) == [1]
    assert cache.delete(key) is True
    cache.set(key, [2], 30.0)
    ttl = cache.ttl(key)
    assert ttl is not None and ttl <= 30
    assert cache.clear() is None
    assert cache.get(key, missing) is missing


async def test_async(redis_server: RedisServer) -> None:
    cache = RedisCache(
        redis_server.url, timeout=SLOW, prefix=f"a{uuid.uuid4().hex[:6]}:", ttl=60
    )
    try:
        missing = object()
        assert await cache.aget("k", missing) is missing
        await cache.aset("k", {"v": 1}, None)
        assert await cache.aget("k") == {"v": 1}
        assert cache.get("k") == {"v": 1}  # both sides, one store
        ttl = await cache.attl("k")
        assert ttl is not None and 59 < ttl <= 60
        assert await cache.acontains("k")
        assert await cache.adelete("k") is True
        assert await cache.adelete("k") is False
        await cache.aset((1, 2), "t", 10)
        assert await cache.aclear() is None
        assert await cache.aget((1, 2)) is None
    finally:
        await cache.aclose()
        cache.close()


def test_shares_a_storage(redis_server: RedisServer) -> None:
    storage = RedisStorage(redis_server.url, timeout=SLOW)
    cache = RedisCache(storage, prefix=f"s{uuid.uuid4().hex[:6]}:")
    assert cache._connector is storage._connector
    cache.set("k", 1)
    assert cache.get("k") == 1
    cache.clear()
    storage.close()


def test_decoding_client(redis_server: RedisServer) -> None:
    """A client that decodes replies to str still gives a cache of bytes
    (and a limiter) that work: the storage's connections never decode."""
    client = redis.Redis(port=redis_server.port, decode_responses=True, protocol=3)
    cache = RedisCache(client, timeout=SLOW, prefix=f"d{uuid.uuid4().hex[:6]}:")
    cache.set("k", {"x": b"\xff"})
    assert cache.get("k") == {"x": b"\xff"}
    cache.clear()
    lim = stanchion.Limiter(
        "2/minute", storage=RedisStorage(client, timeout=SLOW, prefix=cache.prefix)
    )
    assert lim.hit("k").remaining == 1
    lim.reset()
    client.close()


def test_outage(
    private_redis: RedisServer, caplog: pytest.LogCaptureFixture, clock: FakeClock
) -> None:
    caplog.set_level(logging.INFO, logger="stanchion")
    storage = RedisStorage(private_redis.url, timeout=FAIL_FAST)
    storage._connector.clock = clock
    cache = RedisCache(storage)
    strict = RedisCache(storage, on_error="raise")
    cache.set("k", 1)
    private_redis.pause()
    try:
        t0 = time.monotonic()
        assert cache.get("k", "dflt") == "dflt"
        cache.set("k", 2)
        assert cache.delete("k") is False
        assert "k" not in cache
        assert cache.ttl("k") is None
        cache.clear()
        assert time.monotonic() - t0 < 1.0
        with pytest.raises(stanchion.StorageUnavailable):
            strict.get("k")
    finally:
        private_redis.resume()
    clock.advance(0.1)  # the retry interval
    assert cache.get("k") == 1  # the dropped set never happened
    records = [r for r in caplog.records if r.name == "stanchion.redis"]
    assert [r.levelno for r in records] == [logging.WARNING, logging.INFO]
    private_redis.kill()
    with pytest.raises(stanchion.StorageUnavailable):
        strict.set("k", 1)
    cache.close()
    strict.close()


async def test_async_outage(private_redis: RedisServer, clock: FakeClock) -> None:
    cache = RedisCache(private_redis.url, timeout=FAIL_FAST)
    cache._connector.clock = clock
    try:
        await cache.aset("k", 1)
        private_redis.kill()
        assert await cache.aget("k", "dflt") == "dflt"
        await cache.aset("k", 2)
        assert await cache.adelete("k") is False
        await cache.aclear()
        private_redis.start()
        clock.advance(0.1)  # the retry interval
        assert await cache.aget("k") is None  # restarted empty
        await cache.aset("k", 3)
        assert await cache.aget("k") == 3
    finally:
        await cache.aclose()


def test_cached_decorator_with_redis_backend(redis_server: RedisServer) -> None:
    """@stanchion.cached keeps results in Redis: a second process (here a
    second RedisCache on the same prefix) finds them; kwargs and typed keys
    work; invalidate and cache_clear reach Redis."""
    prefix = f"f{uuid.uuid4().hex[:6]}:"
    mine = RedisCache(redis_server.url, timeout=SLOW, prefix=prefix, ttl=60)
    theirs = RedisCache(redis_server.url, timeout=SLOW, prefix=prefix, ttl=60)
    assert isinstance(mine, stanchion.CacheBackend)
    calls: list[tuple[Any, ...]] = []

    def make(backend: RedisCache) -> Any:
        @stanchion.cached(backend=backend.namespace("area"))
        def area(w: int, h: int = 1, *, unit: str = "m") -> str:
            calls.append((w, h, unit))
            return f"{w * h}{unit}2"

        return area

    area, area_elsewhere = make(mine), make(theirs)
    assert area(2, 3) == "6m2"
    assert area(2, 3) == "6m2"
    assert area_elsewhere(2, 3) == "6m2"  # computed once, in one place
    assert area(2, h=3, unit="cm") == "6cm2"
    assert area_elsewhere(2, h=3, unit="cm") == "6cm2"
    assert calls == [(2, 3, "m"), (2, 3, "cm")]
    assert area.invalidate(2, 3)
    assert area_elsewhere(2, 3) == "6m2"
    assert len(calls) == 3
    area.cache_clear()
    assert area_elsewhere(2, h=3, unit="cm") == "6cm2"
    assert len(calls) == 4
    mine.clear()


async def test_cached_async_with_redis_backend(redis_server: RedisServer) -> None:
    cache = RedisCache(
        redis_server.url, timeout=SLOW, prefix=f"g{uuid.uuid4().hex[:6]}:"
    )
    calls = 0

    @stanchion.cached(ttl=30, backend=cache.namespace("user"), typed=True)
    async def user(uid: int) -> dict[str, int]:
        nonlocal calls
        calls += 1
        return {"id": uid}

    try:
        assert await user(7) == {"id": 7}
        assert await user(7) == {"id": 7}
        assert calls == 1
        ttl = cache.namespace("user").ttl((7, int))
        assert ttl is not None and 29 < ttl <= 30
        assert await user(7.0) == {"id": 7.0}  # typed: another key
        assert calls == 2
    finally:
        await cache.aclear()
        await cache.aclose()


async def test_cached_ttl_reaches_redis_for_sync_and_async(
    redis_server: RedisServer,
) -> None:
    # The store's own default (60 s) must not replace the decorator's 5 s.
    cache = RedisCache(
        redis_server.url, timeout=SLOW, prefix=f"t{uuid.uuid4().hex[:6]}:", ttl=60
    )

    @stanchion.cached(ttl=5, backend=cache.namespace("sync"))
    def double(x: int) -> int:
        return 2 * x

    @stanchion.cached(ttl=5, backend=cache.namespace("async"))
    async def triple(x: int) -> int:
        return 3 * x

    try:
        assert double(4) == 8 and await triple(4) == 12
        for name in ("sync", "async"):
            ttl = cache.namespace(name).ttl(4)
            assert ttl is not None and 4 < ttl <= 5, name
    finally:
        await cache.aclear()
        await cache.aclose()


def test_raw_commands_under_the_prefix(cache: RedisCache, rclient: redis.Redis) -> None:
    key = cache._raw_key("http:a")
    assert key == cache.prefix.encode() + b"http:a"
    assert cache._raw_key(b"x*[") == cache.prefix.encode() + b"x*["
    assert cache._command("SET", key, b"v") in (b"OK", "OK", True)
    assert rclient.get(key) == b"v"
    assert cache._command("GET", key) == b"v"
    cache._command("SET", cache._raw_key("http:ab"), b"1")
    cache._command("SET", cache._raw_key("http*b"), b"2")  # a glob character
    cache._command("SET", cache._raw_key("other"), b"3")
    assert cache._delete_raw_prefix(cache._raw_key("http*")) == 1
    assert cache._delete_raw_prefix(cache._raw_key("http:")) == 2
    assert cache._command("GET", cache._raw_key("other")) == b"3"
    with pytest.raises(TypeError, match="key must be str or bytes"):
        cache._raw_key(1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="prefix must be bytes"):
        cache._delete_raw_prefix("http:")  # type: ignore[arg-type]


async def test_raw_commands_async(cache: RedisCache) -> None:
    key = cache._raw_key("k")
    await cache._acommand("SET", key, b"v")
    assert await cache._acommand("GET", key) == b"v"
    await cache.aclose()


def test_raw_commands_when_redis_is_down() -> None:
    from ._redis import free_port

    down = RedisCache(f"redis://127.0.0.1:{free_port()}/0", timeout=0.05)
    try:
        assert down._command("GET", down._raw_key("k")) is None
        assert down._delete_raw_prefix(down._raw_key("k")) == 0
    finally:
        down.close()


def test_raw_commands_are_not_public() -> None:
    """The raw commands serve the response cache only: users see the
    Cache subset and its asyncio twins."""
    public = {name for name in dir(RedisCache) if not name.startswith("_")}
    assert public.isdisjoint({"raw_key", "command", "acommand", "delete_raw_prefix"})
    assert {"get", "set", "delete", "ttl", "clear", "aget", "aset"} <= public
