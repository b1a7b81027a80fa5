"""Every response cache rule, through every adapter."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import pytest

from stanchion import Cache
from stanchion.respcache import ResponseCache

from ..conftest import FakeClock
from ._respcache_apps import (
    BIG,
)


def test_miss_then_hit_with_age_and_stats(make: Any, clock: FakeClock) -> None:
    h = make()
    r1 = h.get("/items")
    assert (r1.status, r1.x_cache, r1.headers["age"]) == (200, "MISS", "0")
    clock.advance(3)
    r2 = h.get("/items")
    assert (r2.body, r2.x_cache, r2.headers["age"]) == (r1.body, "HIT", "3")
    assert h.upstream.calls["items"] == 1
    stats = h.cache.stats()
    assert (stats["hits"], stats["misses"], stats["stores"]) == (1, 1, 1)
    clock.advance(8)  # past ttl=10
    r3 = h.get("/items")
    assert r3.x_cache == "MISS" and r3.text == "items #2"


def test_query_normalized(make: Any) -> None:
    h = make()
    a = h.get("/items?b=2&a=1")
    assert h.get("/items?a=1&b=2").x_cache == "HIT"
    assert h.get("/items?a=1&b=2").body == a.body
    assert h.get("/items?a=1&b=3").x_cache == "MISS"
    assert h.get("/items").x_cache == "MISS"
    assert h.upstream.calls["items"] == 3


def test_head_served_from_get_entry(make: Any) -> None:
    h = make()
    g = h.get("/items")
    r = h.head("/items")
    assert (r.status, r.body, r.x_cache) == (200, b"", "HIT")
    assert r.headers["content-length"] == str(len(g.body))
    assert r.headers["etag"] == g.headers["etag"]
    assert h.upstream.calls["items"] == 1


def test_head_miss_goes_upstream_and_stores_nothing(make: Any) -> None:
    h = make()
    r = h.head("/items")
    assert r.x_cache == "MISS"
    assert h.get("/items").x_cache == "MISS"


def test_post_not_cached(make: Any) -> None:
    h = make()
    for _ in range(2):
        assert "x-cache" not in h.request("POST", "/items").headers
    assert h.upstream.calls["items"] == 2


@pytest.mark.parametrize("code", [404, 500, 503, 429, 301])
def test_only_200_by_default(make: Any, code: int) -> None:
    h = make()
    for _ in range(2):
        r = h.get(f"/status/{code}")
        assert r.status == code and r.x_cache == "MISS"
    assert h.upstream.calls["status"] == 2


def test_configured_statuses(make: Any) -> None:
    h = make(statuses=(200, 404))
    h.get("/status/404")
    r = h.get("/status/404")
    assert (r.status, r.x_cache) == (404, "HIT")
    h.get("/status/500")
    assert h.get("/status/500").x_cache == "MISS"


@pytest.mark.parametrize("bad", [(200, 500), (200, 429), (503,)])
def test_5xx_and_429_refused_in_settings(bad: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="never cached"):
        ResponseCache(statuses=bad)


@pytest.mark.parametrize("path", ["/cookie", "/private", "/nostore", "/varystar"])
def test_never_stored(make: Any, path: str) -> None:
    h = make()
    for _ in range(3):
        assert h.get(path).x_cache == "MISS"
    assert sum(h.upstream.calls.values()) == 3
    assert h.cache.stats()["stores"] == 0


@pytest.mark.parametrize(
    "identity", [{"Authorization": "Bearer a"}, {"Cookie": "sessionid=1"}]
)
def test_identified_requests_bypass(make: Any, identity: dict[str, str]) -> None:
    h = make()
    h.get("/items")  # an anonymous entry exists
    for _ in range(2):
        r = h.get("/items", identity)
        assert r.x_cache == "MISS"
    assert h.upstream.calls["items"] == 3


def test_vary_header_values_in_key(make: Any) -> None:
    h = make()
    en = h.get("/vary", {"Accept-Language": "en"})
    fr = h.get("/vary", {"Accept-Language": "fr"})
    assert "en" in en.text and "fr" in fr.text
    assert h.get("/vary", {"Accept-Language": "en"}).body == en.body
    assert h.get("/vary", {"Accept-Language": "fr"}).body == fr.body
    assert h.get("/vary", {"Accept-Language": "fr"}).x_cache == "HIT"
    assert h.upstream.calls["vary"] == 2


@pytest.mark.parametrize(
    "directive", [{"Cache-Control": "no-cache"}, {"Pragma": "no-cache"}]
)
def test_request_no_cache_never_overwrites(
    make: Any, directive: dict[str, str]
) -> None:
    h = make()
    h.get("/items")
    r = h.get("/items", directive)
    assert (r.x_cache, r.text) == ("MISS", "items #2")  # fresh, for that client
    hit = h.get("/items")
    assert (hit.x_cache, hit.text) == ("HIT", "items #1")  # the entry is kept
    assert h.cache.stats()["stores"] == 1
    # Nor does it store where nothing was stored yet.
    assert h.get("/other", directive).x_cache == "MISS"
    assert h.get("/other").x_cache == "MISS"


def test_request_no_cache_refreshes_with_client_refresh(make: Any) -> None:
    h = make(client_refresh=True)
    h.get("/items")
    r = h.get("/items", {"Cache-Control": "no-cache"})
    assert (r.x_cache, r.text) == ("MISS", "items #2")
    hit = h.get("/items")
    assert (hit.x_cache, hit.text) == ("HIT", "items #2")  # refreshed


def test_invalidate_from_code_still_works_without_client_refresh(make: Any) -> None:
    h = make()
    h.get("/items")
    assert h.cache.invalidate(path="/items") >= 1
    r = h.get("/items")
    assert (r.x_cache, r.text) == ("MISS", "items #2")
    assert h.get("/items").text == "items #2"


def test_etag_is_content_hash_and_304(make: Any) -> None:
    h = make()
    r = h.get("/items")
    digest = hashlib.blake2b(r.body, digest_size=16).hexdigest()
    assert r.headers["etag"] == f'"{digest}"'
    nm = h.get("/items", {"If-None-Match": r.headers["etag"]})
    assert (nm.status, nm.body) == (304, b"")
    assert nm.headers["etag"] == r.headers["etag"]
    other = h.get("/items", {"If-None-Match": '"nope"'})
    assert other.status == 200
    # On a miss too.
    fresh = make()
    nm2 = fresh.get("/items", {"If-None-Match": r.headers["etag"]})
    assert (nm2.status, nm2.x_cache) == (304, "MISS")


def test_max_age(make: Any) -> None:
    h = make(max_age=30)
    assert h.get("/items").headers["cache-control"] == "public, max-age=30"
    assert h.get("/items").headers["cache-control"] == "public, max-age=30"
    assert "cache-control" not in make().get("/items").headers


@pytest.mark.parametrize(
    "extra", [{"X-Forwarded-Host": "a.example"}, {"X-Forwarded-Prefix": "/app"}]
)
def test_vary_cookie_without_credential_never_stored(
    make: Any, extra: dict[str, str]
) -> None:
    # Headers hashed into the key are not a credential: Vary: Cookie
    # is stored only for a credential keyed by vary_identity.
    h = make(vary_identity=True)
    for _ in range(2):
        assert h.get("/varycookie", extra).x_cache == "MISS"
    assert h.upstream.calls["varycookie"] == 2


@pytest.mark.parametrize(
    "cc", ['public, x="abc, private', 'max-age=60, x="a, no-store', 'x=", no-cache']
)
def test_unterminated_quote_hides_no_directive(cc: str) -> None:
    # The field-name parsing must not read "private" as part of a quoted
    # string that never ends.
    rc = ResponseCache()
    assert rc.storable(200, [("Cache-Control", cc)]) is None
    assert rc.storable(200, [("Cache-Control", 'x="a, b", public')]) == ()


def test_stale_while_revalidate(make: Any, clock: FakeClock) -> None:
    h = make(stale_while_revalidate=20)
    h.get("/items")
    clock.advance(15)
    r = h.get("/items")
    assert (r.text, r.x_cache, r.headers["age"]) == ("items #1", "HIT", "15")
    # The ASGI harnesses wait for their loop's refreshes as the loop ends.
    assert h.cache.wait_refreshes(timeout=5)
    assert h.upstream.calls["items"] == 2
    assert h.get("/items").text == "items #2"
    clock.advance(100)
    assert h.get("/items").x_cache == "MISS"


def test_head_never_starts_a_refresh(make: Any, clock: FakeClock) -> None:
    # Its answer is never stored: a refresh it started ran the app (as a
    # HEAD) for nothing, and the entry stayed stale.
    h = make(stale_while_revalidate=20)
    h.get("/items")
    clock.advance(15)
    r = h.head("/items")
    assert (r.status, r.x_cache, r.body) == (200, "HIT", b"")
    assert h.cache.wait_refreshes(timeout=5)
    assert h.upstream.calls["items"] == 1
    h.get("/items")
    assert h.cache.wait_refreshes(timeout=5)
    assert h.upstream.calls["items"] == 2
    assert h.get("/items").text == "items #2"


def test_refresh_gets_its_own_response(make: Any, clock: FakeClock) -> None:
    # The refresh runs while the stale hit is being sent (/slow takes
    # 50 ms): what the hit put on its response (its ETag, Age, X-Cache)
    # must not become the refreshed entry's.
    h = make(stale_while_revalidate=20)
    old = h.get("/slow")
    clock.advance(15)
    assert h.get("/slow").body == old.body
    assert h.cache.wait_refreshes(timeout=5)
    new = h.get("/slow")
    assert (new.x_cache, new.text) == ("HIT", "slow #2")
    assert new.headers["etag"] != old.headers["etag"]
    r = h.get("/slow", {"If-None-Match": old.headers["etag"]})
    assert (r.status, r.body) == (200, new.body)


def test_stale_if_error(make: Any, clock: FakeClock) -> None:
    h = make(stale_if_error=20)
    h.get("/flaky")
    h.upstream.fail = True
    clock.advance(15)
    r = h.get("/flaky")
    assert (r.status, r.text, r.x_cache) == (200, "flaky #1", "HIT")
    clock.advance(20)  # past ttl + stale_if_error
    assert h.get("/flaky").status == 500
    assert h.cache.stats()["stale"] == 1


def test_stale_if_error_off_by_default(make: Any, clock: FakeClock) -> None:
    h = make()
    h.get("/flaky")
    h.upstream.fail = True
    clock.advance(15)
    assert h.get("/flaky").status == 500


def test_big_body_passes_through_uncached(make: Any) -> None:
    h = make(max_body=1000)
    for _ in range(2):
        r = h.get("/big")
        assert (r.status, len(r.body), r.x_cache) == (200, BIG, "MISS")
    assert h.upstream.calls["big"] == 2


def test_invalidate(make: Any) -> None:
    h = make(tags=["catalog"])
    for url in ("/items?a=1", "/items?a=2", "/items", "/itemsx", "/other"):
        h.get(url)
    assert h.cache.invalidate(path="/items", query="a=1") == 1
    assert h.get("/items?a=1").x_cache == "MISS"
    assert h.get("/items?a=2").x_cache == "HIT"
    # ?a=1 (stored again), ?a=2, the bare path, and the path's Vary record.
    assert h.cache.invalidate(path="/items") == 4
    assert h.get("/items?a=2").x_cache == "MISS"
    assert h.get("/itemsx").x_cache == "HIT"
    h.cache.invalidate(prefix="/item")
    assert h.get("/itemsx").x_cache == "MISS"
    assert h.get("/other").x_cache == "HIT"
    assert h.cache.invalidate(tag="catalog") >= 1
    assert h.get("/other").x_cache == "MISS"
    with pytest.raises(TypeError):
        h.cache.invalidate(path="/a", prefix="/b")


@pytest.mark.parametrize(
    "where", [{"path": "items"}, {"path": "http://test/items"}, {"prefix": "item"}]
)
def test_invalidate_rejects_what_matches_nothing(
    make: Any, where: dict[str, str]
) -> None:
    # A path without its "/" (or a whole URL) removed nothing, silently.
    h = make()
    h.get("/items")
    with pytest.raises(ValueError, match="must start with '/'"):
        h.cache.invalidate(**where)
    assert h.get("/items").x_cache == "HIT"


def test_memory_bounded_by_bytes(make: Any) -> None:
    h = make(maxweight=4000)
    for i in range(50):
        h.get(f"/items?i={i}")
    assert h.cache.store.cache.weight <= 4000
    assert h.get("/items?i=49").x_cache == "HIT"


def test_single_flight_100(make: Any) -> None:
    h = make()
    rs = h.many("/slow", 100)
    assert h.upstream.calls["slow"] == 1
    assert {r.text for r in rs} == {"slow #1"}
    assert all(r.status == 200 for r in rs)


def test_own_cache_backend(make: Any) -> None:
    own: Cache[str, Any] = Cache(None, maxweight=10_000_000, weigh=lambda v: 1)
    h = make(backend=own)
    h.get("/items")
    assert h.get("/items").x_cache == "HIT"
    assert len(own) == 2  # the entry and the path's Vary names


@pytest.mark.parametrize(
    ("setting", "value", "error"),
    [
        ("ttl", 0, ValueError),
        ("ttl", "1", TypeError),
        ("max_age", -1, ValueError),
        ("stale_if_error", float("nan"), ValueError),
        ("backend", object(), TypeError),
        ("vary_identity", 1, TypeError),
        ("session_cookies", "sid", TypeError),
        ("statuses", 200, TypeError),
        ("maxweight", 0, ValueError),
        ("client_refresh", 1, TypeError),
        ("allowed_hosts", "example.com", TypeError),
        ("allowed_hosts", [""], TypeError),
        ("allowed_hosts", ["*"], ValueError),
        ("allowed_hosts", ["example.com:8080"], ValueError),
        ("allowed_hosts", ["https://example.com"], ValueError),
        ("identity_headers", [None], TypeError),
        ("trusted_proxies", ["not-an-ip"], ValueError),
    ],
)
def test_bad_settings(setting: str, value: Any, error: type[Exception]) -> None:
    with pytest.raises(error):
        ResponseCache(**{setting: value})


def test_public_module_and_old_path_are_one() -> None:
    import stanchion._respcache as old
    import stanchion.respcache as public

    # What the adapters and tests import from the old path.
    names = ["CacheFront", "Entry", "MAX_PATH", "Plan", "Reply", "ResponseCache"]
    names += ["Upstream", "environ_header", "scope_header", "IDENTITY_HEADERS"]
    names += ["SENT"]
    for name in names:
        assert name in public.__all__
        assert getattr(old, name) is getattr(public, name)
    assert ResponseCache is public.ResponseCache
    # Private names of the parts, as code written against the old path
    # reached for them, and a clear error for a name that is nowhere.
    from stanchion.respcache import entries, stores

    assert old._LocalStore is stores._LocalStore
    assert old._ENTRY_OVERHEAD == entries._ENTRY_OVERHEAD
    with pytest.raises(AttributeError, match="no_such_name"):
        old.no_such_name  # noqa: B018


def test_a_flight_that_landed_after_the_lookup_is_not_repeated(
    clock: FakeClock,
) -> None:
    """A request whose lookup missed just before another request's flight
    stored the entry answers from that entry when it takes the lead,
    instead of calling the upstream a second time (blocking and asyncio)."""
    from stanchion.respcache import ResponseCache, Upstream

    rc = ResponseCache(ttl=60, clock=clock)
    headers = {"host": "example.com"}
    plan = rc.plan("GET", "/a", "", headers.get)
    assert plan is not None
    calls: list[int] = []

    def upstream() -> Upstream:
        calls.append(1)
        return Upstream(200, [("Content-Type", "text/plain")], b"page")

    async def aupstream() -> Upstream:
        return upstream()

    assert rc.serve(plan, upstream).body == b"page"
    real = rc.lookup
    missed: list[bool] = []

    def late_lookup(p: Any) -> Any:
        # The first lookup of the request ran before the entry landed.
        if not missed:
            missed.append(True)
            return None
        return real(p)

    rc.lookup = late_lookup  # type: ignore[method-assign]
    rc.alookup = _async(late_lookup)  # type: ignore[method-assign]
    reply = rc.serve(plan, upstream)
    assert (reply.body, dict(reply.headers)["X-Cache"], len(calls)) == (
        b"page",
        "HIT",
        1,
    )
    missed.clear()
    reply = asyncio.run(rc.aserve(plan, aupstream))
    assert (reply.body, dict(reply.headers)["X-Cache"], len(calls)) == (
        b"page",
        "HIT",
        1,
    )
    assert rc.flights == {}


def _async(f: Any) -> Any:
    async def call(*args: Any) -> Any:
        return f(*args)

    return call
