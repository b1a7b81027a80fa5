"""hug's ``@cache(max_age=...)`` as hug users write it: JSON output,
typed parameters and generated documentation kept, async endpoints."""

# No "from __future__ import annotations": hug reads the annotations.

import asyncio
from collections.abc import Iterator
from typing import Any

import hug
import pytest
from werkzeug.test import Client

from stanchion.hug import cache

from ..conftest import FakeClock

_n = 0


def make_api() -> tuple[Any, Client, dict[str, Any]]:
    global _n
    _n += 1
    api = hug.API(f"stanchion_hug_cache_{_n}")
    calls: dict[str, Any] = {"users": 0, "async": 0}

    @hug.get("/users", api=api)
    @cache(max_age=3600)
    def users(limit: hug.types.number = 2):
        """Lists users"""
        calls["users"] += 1
        return {"users": ["ann", "bo", "cy"][:limit], "n": calls["users"]}

    @hug.get("/async", api=api)
    @cache(max_age=60)
    async def async_endpoint():
        calls["async"] += 1
        return {"n": calls["async"]}

    calls["direct"] = users  # type: ignore[assignment]
    return api, Client(api.http.server()), calls


def test_hug_cache_json_endpoint() -> None:
    api, c, calls = make_api()
    r1 = c.get("/users?limit=1")
    assert r1.json == {"users": ["ann"], "n": 1}
    assert r1.headers["X-Cache"] == "MISS"
    assert r1.headers["Cache-Control"] == "public, max-age=3600"
    assert r1.headers["Content-Type"].startswith("application/json")
    r2 = c.get("/users?limit=1")
    assert (r2.get_data(), r2.headers["X-Cache"]) == (r1.get_data(), "HIT")
    assert r2.headers["Content-Type"] == r1.headers["Content-Type"]
    assert calls["users"] == 1
    # hug's types still apply: a bad number is refused, and not cached.
    assert c.get("/users?limit=x").status_code == 400
    assert c.get("/users?limit=x").status_code == 400
    assert calls["users"] == 1
    # The signature and docs hug generates are the endpoint's own.
    doc = api.http.documentation()["handlers"]["/users"]["GET"]
    assert doc["usage"] == "Lists users"
    assert "limit" in doc["inputs"]
    # A direct Python call (no request) is never cached.
    direct: Any = calls["direct"]
    assert direct(limit=1) == {"users": ["ann"], "n": 2}
    assert direct(limit=1)["n"] == 3


def test_hug_cache_async_endpoint() -> None:
    # hug runs async endpoints on asyncio.get_event_loop(), which needs a
    # current loop in the calling thread.
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        _, c, calls = make_api()
        assert c.get("/async").headers["X-Cache"] == "MISS"
        r = c.get("/async")
        assert (r.json, r.headers["X-Cache"]) == ({"n": 1}, "HIT")
        assert calls["async"] == 1
    finally:
        asyncio.set_event_loop(None)
        loop.close()


def test_hug_cache_settings_checked() -> None:
    with pytest.raises(TypeError, match="max_age or ttl"):
        cache()
    with pytest.raises(ValueError):
        cache(max_age=-1)
    with pytest.raises(TypeError, match="output"):
        cache(max_age=1, output="json")  # type: ignore[arg-type]


@pytest.fixture
def hug_loop() -> Iterator[asyncio.AbstractEventLoop]:
    # hug runs async endpoints on asyncio.get_event_loop(), which needs a
    # current loop in the calling thread.
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    yield loop
    asyncio.set_event_loop(None)
    loop.close()


@pytest.mark.usefixtures("hug_loop")
@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("limit_over_cache", [True, False], ids=["outside", "inside"])
def test_limit_and_cache_stacked(limit_over_cache: bool, is_async: bool) -> None:
    # Each wrapper passes hug's request and response to the other, in
    # either order (README, "Middleware order").
    from stanchion.hug import limit

    global _n
    _n += 1
    api = hug.API(f"stanchion_hug_stack_{_n}")
    calls = []
    scope = f"stack-{_n}"

    def items(q: hug.types.text = "x"):
        calls.append(q)
        return {"q": q}

    async def async_items(q: hug.types.text = "x"):
        return items(q)

    endpoint: Any = async_items if is_async else items
    if limit_over_cache:
        endpoint = limit("3/minute", scope=scope)(cache(max_age=60)(endpoint))
    else:
        endpoint = cache(max_age=60)(limit("3/minute", scope=scope)(endpoint))
    hug.get("/items", api=api)(endpoint)
    client = Client(api.http.server())
    env = {"REMOTE_ADDR": "203.0.113.7"}
    got = [client.get("/items", environ_overrides=env) for _ in range(5)]
    assert len(calls) == 1
    assert got[0].json == {"q": "x"}
    remaining = [r.headers.get("X-RateLimit-Remaining") for r in got]
    if limit_over_cache:
        # Every request counts, hits included.
        assert [r.status_code for r in got] == [200, 200, 200, 429, 429]
        assert remaining == ["2", "1", "0", "0", "0"]
        assert [r.headers.get("X-Cache") for r in got[:3]] == ["MISS", "HIT", "HIT"]
    else:
        # Only the miss reached the limit; hits replay no limit headers.
        assert [r.status_code for r in got] == [200] * 5
        assert remaining == ["2", None, None, None, None]
        assert [r.headers.get("X-Cache") for r in got] == ["MISS"] + ["HIT"] * 4


def test_hug_async_refresh_gets_its_own_response(
    hug_loop: asyncio.AbstractEventLoop, clock: FakeClock
) -> None:
    # A stale hit starts a refresh (stale-while-revalidate) on hug's loop:
    # it calls the endpoint on a response of its own, so what the hit put
    # on its response (the old ETag, Age, X-Cache) is not stored with the
    # new answer, and what the endpoint sets is.
    api = hug.API("stanchion_hug_async_refresh")
    calls = []

    @hug.get("/a", api=api)
    @cache(max_age=10, stale_while_revalidate=20, clock=clock)
    async def a(response):
        calls.append(1)
        response.set_header("X-Call", str(len(calls)))
        return {"n": len(calls)}

    c = Client(api.http.server())
    old = c.get("/a")
    clock.advance(15)
    stale = c.get("/a")
    assert (stale.json, stale.headers["X-Cache"]) == ({"n": 1}, "HIT")
    hug_loop.run_until_complete(a.cache.await_refreshes())  # type: ignore[attr-defined]
    assert len(calls) == 2
    new = c.get("/a")
    assert (new.json, new.headers["X-Cache"], new.headers["X-Call"]) == (
        {"n": 2},
        "HIT",
        "2",
    )
    assert new.headers["ETag"] != old.headers["ETag"]
    r = c.get("/a", headers={"If-None-Match": old.headers["ETag"]})
    assert (r.status_code, r.json) == (200, {"n": 2})


def test_hug_session_pages_never_stored() -> None:
    # hug's SessionMiddleware saves request.context["session"] and sets
    # its cookie after the endpoint: a page that put anything in it (a
    # CSRF token) is that visitor's own.
    import secrets

    from hug.middleware import SessionMiddleware
    from hug.store import InMemoryStore

    global _n
    _n += 1
    api = hug.API(f"stanchion_hug_cache_{_n}")
    api.http.add_middleware(SessionMiddleware(InMemoryStore(), cookie_secure=False))
    count = {"plain": 0}

    @hug.get("/form", api=api)
    @cache(max_age=60)
    def form(request):
        session = request.context["session"]
        return {"csrf": session.setdefault("csrf", secrets.token_hex(8))}

    @hug.get("/plain", api=api)
    @cache(max_age=60)
    def plain():
        count["plain"] += 1
        return {"n": count["plain"]}

    c = Client(api.http.server(), use_cookies=False)  # a new visitor each time
    a, b = c.get("/form"), c.get("/form")
    assert a.json != b.json  # b never got a's token
    assert (a.headers["X-Cache"], b.headers["X-Cache"]) == ("MISS", "MISS")
    p1, p2 = c.get("/plain"), c.get("/plain")
    assert (p1.headers["X-Cache"], p2.headers["X-Cache"]) == ("MISS", "HIT")
    assert p1.json == p2.json == {"n": 1}
