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
        {
            "ttl": 60,
            **opts,
            "backend": RedisCache(server.url, prefix=prefix, timeout=2),
        },
        {
            "ttl": 60,
            **opts,
            "backend": RedisCache(server.url, prefix=prefix, timeout=2),
        },
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


def _clients(server: RedisServer) -> int:
    probe = RedisCache(server.url)
    try:
        info = probe._command("INFO", "clients")
    finally:
        probe.close()
    line = next(
        x for x in bytes(info).decode().splitlines() if "connected_clients" in x
    )
    return int(line.split(":")[1])


def test_asgi_lifespan_shutdown_closes_connections(redis_server: RedisServer) -> None:
    import asyncio

    import httpx

    from stanchion.asgi import CacheMiddleware

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                kind = msg["type"].rsplit(".", 1)[-1]
                await send({"type": f"lifespan.{kind}.complete"})
                if kind == "shutdown":
                    return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    rc = RedisCache(redis_server.url, prefix=f"t{uuid.uuid4().hex}:")
    mw = CacheMiddleware(app, ttl=60, backend=rc)
    before = _clients(redis_server)

    async def go() -> tuple[int, int]:
        inbox: asyncio.Queue[dict[str, str]] = asyncio.Queue()
        sent: list[str] = []

        async def send(msg: Any) -> None:
            sent.append(msg["type"])

        life = asyncio.create_task(mw({"type": "lifespan"}, inbox.get, send))
        await inbox.put({"type": "lifespan.startup"})
        transport = httpx.ASGITransport(app=mw)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            assert (await c.get("/a")).headers["x-cache"] == "MISS"
            assert (await c.get("/a")).headers["x-cache"] == "HIT"
        during = _clients(redis_server)
        await inbox.put({"type": "lifespan.shutdown"})
        await life
        assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
        return during, _clients(redis_server)

    during, after = asyncio.run(go())
    assert during > before
    assert after == before
    rc.close()
