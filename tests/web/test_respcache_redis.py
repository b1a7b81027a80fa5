"""The Redis backend: two app instances (as two workers or hosts would be)
share one real redis-server."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from stanchion.redis import RedisCache

from .._redis import RedisServer
from ._respcache_apps import ADAPTERS, Harness, harnesses


def pair(adapter: str, server: RedisServer, **opts: Any) -> Any:
    prefix = f"t{uuid.uuid4().hex}:"
    return harnesses(
        adapter,
        {"ttl": 60, **opts, "backend": RedisCache(server.url, prefix=prefix)},
        {"ttl": 60, **opts, "backend": RedisCache(server.url, prefix=prefix)},
    )


@pytest.mark.parametrize("adapter", sorted(ADAPTERS))
def test_two_instances_share_entries(adapter: str, redis_server: RedisServer) -> None:
    with pair(adapter, redis_server, tags=["t"]) as (a, b):
        check_shared(a, b)


def check_shared(a: Harness, b: Harness) -> None:
    first = a.get("/items?y=2&x=1")
    assert first.x_cache == "MISS"
    other = b.get("/items?x=1&y=2")
    assert (other.x_cache, other.body) == ("HIT", first.body)
    assert other.headers["etag"] == first.headers["etag"]  # same in every process
    assert b.upstream.calls["items"] == 0
    # Vary and HEAD work across instances too.
    en = a.get("/vary", {"Accept-Language": "en"})
    assert b.get("/vary", {"Accept-Language": "en"}).body == en.body
    assert b.get("/vary", {"Accept-Language": "de"}).x_cache == "MISS"
    assert b.head("/items?x=1&y=2").x_cache == "HIT"
    # Invalidation on one instance is seen by the other.
    assert a.cache.invalidate(path="/items") >= 1
    assert b.get("/items?x=1&y=2").x_cache == "MISS"
    a.get("/other")
    b.cache.invalidate(prefix="/oth")
    assert a.get("/other").x_cache == "MISS"
    assert a.cache.invalidate(tag="t") >= 1
    assert b.get("/other").x_cache == "MISS"


@pytest.mark.parametrize("adapter", sorted(ADAPTERS))
def test_redis_users_do_not_leak(adapter: str, redis_server: RedisServer) -> None:
    with pair(adapter, redis_server, vary_identity=True) as (a, b):
        alice = a.get("/user", {"Authorization": "Bearer alice"})
        bob = b.get("/user", {"Authorization": "Bearer bob"})
        assert "alice" in alice.text and "bob" in bob.text
        assert b.get("/user", {"Authorization": "Bearer alice"}).body == alice.body
        assert "None|None" in b.get("/user").text
