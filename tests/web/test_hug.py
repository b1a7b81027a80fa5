"""hug decorator and falcon-style middleware, in real hug APIs served
through their WSGI app (hug 2.6.1 on falcon 2.0.0)."""

# No "from __future__ import annotations": hug reads the annotations
# themselves as its type converters.

import asyncio
import inspect
import json
from collections.abc import Iterator
from typing import Any

import hug
import pytest
from werkzeug.test import Client

from stanchion.http import LimiterCache, Plans, SettingError, api_key
from stanchion.hug import RateLimitMiddleware, limit

from ..conftest import FakeClock
from .conftest import AsyncOnlyLimiter, problem

RATE_HEADERS = (
    "Retry-After",
    "Cache-Control",
    "RateLimit-Policy",
    "RateLimit",
    "X-RateLimit-Limit",
    "X-RateLimit-Remaining",
    "X-RateLimit-Reset",
)


def rate_headers(r: Any) -> dict[str, str]:
    return {k: r.headers[k] for k in RATE_HEADERS if k in r.headers}


def get(c: Client, p: str, ip: str = "203.0.113.1", **headers: str) -> Any:
    return c.get(p, environ_base={"REMOTE_ADDR": ip}, headers=headers)


_n = 0


def make_api(limits: dict[str, Any], **mw: Any) -> tuple[Any, Client]:
    global _n
    _n += 1
    api = hug.API(f"stanchion_test_api_{_n}")
    cache = LimiterCache(**limits)

    @hug.get("/greet", api=api)
    @limit("2/minute", scope="greet", limiters=cache)
    def greet(name: hug.types.text, times: hug.types.number = 1):
        """Greets someone"""
        return {"hello": name, "times": times}

    @hug.get("/who", api=api)
    @limit("1/minute", scope="who", limiters=cache)
    def who(request, response):
        response.set_header("X-Own", "yes")
        return request.path

    @hug.get("/async", api=api)
    @limit("1/minute", scope="async", limiters=cache)
    async def async_endpoint():
        return "async"

    @hug.get("/plan", api=api)
    @limit(
        Plans(
            {"free": "1/minute", "paid": "3/minute"}, plan=lambda r: r.header("x-plan")
        ),
        key=api_key(valid={"a", "b"}),
        scope="plan",
        limiters=cache,
    )
    def plan():
        return "plan"

    @hug.get("/dry", api=api)
    @limit("1/minute", scope="dry", dry_run=True, limiters=cache)
    def dry():
        return "dry"

    @hug.get("/open", api=api)
    def open_endpoint():
        return "open"

    @hug.get("/health", api=api)
    def health():
        return "ok"

    if mw:
        api.http.add_middleware(RateLimitMiddleware(**mw, **limits))
    return api, Client(api.http.server())


def test_decorator_429_headers_exact(limits: dict[str, Any], clock: FakeClock) -> None:
    _, c = make_api(limits)
    r1 = get(c, "/greet?name=ann")
    clock.advance(25)
    r2 = get(c, "/greet?name=ann")
    r3 = get(c, "/greet?name=ann")
    assert [r.status_code for r in (r1, r2, r3)] == [200, 200, 429]
    assert json.loads(r1.data) == {"hello": "ann", "times": 1}
    assert rate_headers(r1) == {
        "RateLimit-Policy": '"greet";q=2;w=60',
        "RateLimit": '"greet";r=1;t=30',
        "X-RateLimit-Limit": "2",
        "X-RateLimit-Remaining": "1",
        "X-RateLimit-Reset": "30",
    }
    assert rate_headers(r3) == {
        "Retry-After": "5",
        "Cache-Control": "no-store",
        "RateLimit-Policy": '"greet";q=2;w=60',
        "RateLimit": '"greet";r=0;t=5',
        "X-RateLimit-Limit": "2",
        "X-RateLimit-Remaining": "0",
        "X-RateLimit-Reset": "35",
    }
    assert r3.headers["Content-Type"] == "application/problem+json"
    assert json.loads(r3.data) == problem(5, 2)


@pytest.fixture
def event_loop_for_hug() -> Iterator[None]:
    """hug runs async endpoints on asyncio.get_event_loop(), which needs a
    current loop in the calling thread."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    yield
    asyncio.set_event_loop(None)
    loop.close()


@pytest.mark.usefixtures("event_loop_for_hug")
def test_decorator_keeps_hug_validation_docs_and_directives(
    limits: dict[str, Any],
) -> None:
    api, c = make_api(limits)
    r = get(c, "/greet?name=x&times=notanumber")
    assert r.status_code == 400 and "times" in json.loads(r.data)["errors"]
    assert get(c, "/greet").status_code == 400
    doc = api.http.documentation()["handlers"]["/greet"]["GET"]
    assert doc["usage"] == "Greets someone"
    assert list(doc["inputs"]) == ["name", "times"]
    r = get(c, "/who")
    assert r.data == b'"/who"' and r.headers["X-Own"] == "yes"
    assert get(c, "/who").status_code == 429
    assert [get(c, "/async").status_code for _ in range(2)] == [200, 429]


def test_decorator_plans_dry_run_and_spoofing(limits: dict[str, Any]) -> None:
    _, c = make_api(limits)
    paid = [get(c, "/plan", X_Plan="paid", X_Api_Key="a").status_code for _ in range(4)]
    free = [get(c, "/plan", X_Plan="free", X_Api_Key="b").status_code for _ in range(2)]
    assert paid == [200, 200, 200, 429] and free == [200, 429]
    dry = [get(c, "/dry") for _ in range(3)]
    assert [r.status_code for r in dry] == [200] * 3
    assert dry[2].headers["X-RateLimit-Remaining"] == "0"
    spoof = [
        get(
            c, "/greet?name=a", "198.51.100.1", X_Forwarded_For=f"1.1.1.{i}"
        ).status_code
        for i in range(3)
    ]
    assert spoof == [200, 200, 429]


def test_middleware(limits: dict[str, Any]) -> None:
    _, c = make_api(limits, limit="2/minute", exempt_paths=["/health"])
    r1 = get(c, "/open")
    assert r1.status_code == 200 and r1.headers["RateLimit"] == '"global";r=1;t=30'
    assert get(c, "/open").status_code == 200
    r3 = get(c, "/open")
    assert r3.status_code == 429 and r3.headers["Retry-After"] == "30"
    assert json.loads(r3.data) == problem(30, 2)
    assert [get(c, "/health").status_code for _ in range(3)] == [200] * 3
    # the route's own limit speaks for X-RateLimit-*, both listed in RateLimit
    r = get(c, "/greet?name=a", "198.51.100.7")
    assert r.headers["X-RateLimit-Limit"] == "2"
    assert r.headers["RateLimit"] == '"greet";r=1;t=30, "global";r=1;t=30'


def test_middleware_trusted_proxies(limits: dict[str, Any]) -> None:
    _, c = make_api(limits, limit="1/minute", trusted_proxies=["10.0.0.0/8"])
    codes = [
        get(c, "/open", "10.0.0.1", X_Forwarded_For=f"1.1.1.{i}").status_code
        for i in range(3)
    ]
    assert codes == [200, 200, 200]
    assert get(c, "/open", "10.0.0.1", X_Forwarded_For="1.1.1.1").status_code == 429
    untrusted = [
        get(c, "/open", "198.51.100.3", X_Forwarded_For=f"2.2.2.{i}").status_code
        for i in range(2)
    ]
    assert untrusted == [200, 429]


def test_bad_settings_fail_at_import() -> None:
    with pytest.raises(SettingError, match=r"^limit: "):

        @limit("3/lifetime")
        def f() -> None: ...

    with pytest.raises(SettingError, match=r"^exempt_paths: "):
        RateLimitMiddleware(limit="1/second", exempt_paths=[None])


def test_direct_python_call_is_not_limited() -> None:
    @limit("1/minute", scope="direct")
    def add(a: int, b: int) -> int:
        return a + b

    assert [add(a=1, b=2) for _ in range(3)] == [3, 3, 3]


@pytest.mark.usefixtures("event_loop_for_hug")
def test_async_decorator_headers_429_and_middleware(limits: dict[str, Any]) -> None:
    _, c = make_api(limits, limit="5/minute")
    r1, r2 = get(c, "/async"), get(c, "/async")
    assert (r1.status_code, json.loads(r1.data)) == (200, "async")
    # The route's limit speaks for X-RateLimit-*, both listed in RateLimit.
    assert rate_headers(r1) == {
        "RateLimit-Policy": '"async";q=1;w=60, "global";q=5;w=60',
        "RateLimit": '"async";r=0;t=60, "global";r=4;t=12',
        "X-RateLimit-Limit": "1",
        "X-RateLimit-Remaining": "0",
        "X-RateLimit-Reset": "60",
    }
    assert r2.status_code == 429
    assert r2.headers["Content-Type"] == "application/problem+json"
    assert r2.headers["Retry-After"] == "60"
    assert json.loads(r2.data) == problem(60, 1)


def test_direct_async_call_is_not_limited() -> None:
    from stanchion.hug import cache

    calls = []

    @limit("1/minute", scope="direct-async")
    @cache(max_age=60)
    async def add(a: int, b: int) -> int:
        calls.append((a, b))
        return a + b

    # Still a coroutine function, with its rule, its cache and its own
    # signature for hug.
    assert inspect.iscoroutinefunction(add)
    assert add.__stanchion_rule__.scope == "direct-async"  # type: ignore[attr-defined]
    assert add.cache.stats()["misses"] == 0  # type: ignore[attr-defined]
    assert hug.introspect.arguments(add.original) == ("a", "b")  # type: ignore[attr-defined]
    assert [asyncio.run(add(a=1, b=2)) for _ in range(3)] == [3, 3, 3]
    assert len(calls) == 3


@pytest.mark.usefixtures("event_loop_for_hug")
def test_async_unidentified_never_calls_the_blocking_hit() -> None:
    """An async endpoint with no client address and unidentified="share"
    decides through ahit, never through the blocking hit."""
    api = hug.API("stanchion_test_api_unidentified")

    @hug.get("/plain", api=api)
    @limit(AsyncOnlyLimiter("1/minute"), unidentified="share")
    async def plain():
        return "plain"

    @hug.get("/keyed", api=api)
    @limit(AsyncOnlyLimiter("1/minute"), unidentified="share", key=lambda r: None)
    async def keyed():
        return "keyed"

    c = Client(api.http.server())
    for path in ("/plain", "/keyed"):
        assert [get(c, path, ip="").status_code for _ in range(2)] == [200, 429]


def test_middleware_ban_and_deny_list(limits: dict[str, Any], clock: FakeClock) -> None:
    from stanchion import Penalty

    limits = {**limits, "penalty": Penalty(after=1, within=60, ban=20)}
    _, c = make_api(limits, limit="1/minute", deny=["192.0.2.0/24"])
    statuses = [get(c, "/open", "198.51.100.8").status_code for _ in range(4)]
    assert statuses == [200, 429, 403, 403]
    r = get(c, "/open", "198.51.100.8")
    assert r.headers["Retry-After"] == "20"
    assert json.loads(r.data)["status"] == 403
    r = get(c, "/open", "192.0.2.9")
    assert r.status_code == 403 and "Retry-After" not in r.headers
    clock.advance(20)
    assert get(c, "/open", "198.51.100.8").status_code == 429  # the rate's
