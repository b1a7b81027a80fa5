"""ASGI middleware and FastAPI dependency/decorator, in real FastAPI apps
driven through httpx's ASGI transport."""

from __future__ import annotations

import asyncio
import functools
import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from fastapi import Depends, FastAPI, Request, Response
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse as StarlettePlain
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from stanchion import Limiter
from stanchion.asgi import RateLimitMiddleware
from stanchion.fastapi import RateLimit, RateLimited, exception_handlers, limit
from stanchion.http import LimiterCache, Plans, SettingError, api_key

from ..conftest import FakeClock
from .conftest import AsyncOnlyLimiter, problem


def client(app: Any, ip: str = "203.0.113.1") -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, client=(ip, 40000)),
        base_url="http://test",
    )


RATE_HEADERS = (
    "retry-after",
    "cache-control",
    "ratelimit-policy",
    "ratelimit",
    "x-ratelimit-limit",
    "x-ratelimit-remaining",
    "x-ratelimit-reset",
)


def rate_headers(r: httpx.Response) -> dict[str, str]:
    return {k: r.headers[k] for k in RATE_HEADERS if k in r.headers}


def hello_app(**mw: Any) -> FastAPI:
    app = FastAPI()

    @app.get("/hello")
    def hello() -> dict[str, str]:
        return {"hello": "world"}

    @app.get("/health")
    def health() -> str:
        return "ok"

    app.add_middleware(RateLimitMiddleware, **mw)
    return app


# -- middleware -----------------------------------------------------------------


async def test_middleware_429_headers_exact(
    limits: dict[str, Any], clock: FakeClock
) -> None:
    app = hello_app(limit="2/minute", **limits)
    async with client(app) as c:
        r1 = await c.get("/hello")
        clock.advance(15)
        r2 = await c.get("/hello")
        r3 = await c.get("/hello")
    assert (r1.status_code, r2.status_code, r3.status_code) == (200, 200, 429)
    assert r1.json() == {"hello": "world"}
    assert rate_headers(r1) == {
        "ratelimit-policy": '"global";q=2;w=60',
        "ratelimit": '"global";r=1;t=30',
        "x-ratelimit-limit": "2",
        "x-ratelimit-remaining": "1",
        "x-ratelimit-reset": "30",
    }
    assert rate_headers(r2)["ratelimit"] == '"global";r=0;t=45'
    assert rate_headers(r3) == {
        "retry-after": "15",
        "cache-control": "no-store",
        "ratelimit-policy": '"global";q=2;w=60',
        "ratelimit": '"global";r=0;t=15',
        "x-ratelimit-limit": "2",
        "x-ratelimit-remaining": "0",
        "x-ratelimit-reset": "45",
    }
    assert r3.headers["content-type"] == "application/problem+json"
    assert r3.json() == problem(15, 2)
    assert r3.headers["content-length"] == str(len(r3.content))


async def test_middleware_no_headers_on_allowed(limits: dict[str, Any]) -> None:
    app = hello_app(limit="1/minute", headers_on_allowed=False, **limits)
    async with client(app) as c:
        r1 = await c.get("/hello")
        r2 = await c.get("/hello")
    assert rate_headers(r1) == {}
    assert r2.status_code == 429 and "retry-after" in r2.headers


async def test_middleware_exemptions(limits: dict[str, Any]) -> None:
    app = hello_app(
        limit="1/minute",
        exempt_paths=["/health"],
        exempt_methods=["OPTIONS"],
        exempt_when=lambda r: r.header("x-internal") == "1",
        **limits,
    )
    async with client(app) as c:
        assert (await c.get("/hello")).status_code == 200
        assert (await c.get("/hello")).status_code == 429
        for _ in range(3):
            r = await c.get("/health")
            assert r.status_code == 200 and "ratelimit" not in r.headers
            assert (
                await c.get("/hello", headers={"x-internal": "1"})
            ).status_code == 200
            assert (await c.options("/hello")).status_code == 405  # reached the app


async def test_middleware_plans(limits: dict[str, Any]) -> None:
    plans = Plans(
        {"free": "2/minute", "paid": "4/minute"},
        plan=lambda r: "paid" if r.header("x-api-key") == "paid-key" else "free",
    )
    app = hello_app(limit=plans, key=api_key(valid={"k", "paid-key"}), **limits)
    async with client(app) as c:
        free = [
            (await c.get("/hello", headers={"x-api-key": "k"})).status_code
            for _ in range(5)
        ]
        paid = [
            (await c.get("/hello", headers={"x-api-key": "paid-key"})).status_code
            for _ in range(5)
        ]
        r = await c.get("/hello", headers={"x-api-key": "paid-key"})
    assert free == [200, 200, 429, 429, 429]
    assert paid == [200, 200, 200, 200, 429]
    assert r.headers["x-ratelimit-limit"] == "4"


async def test_middleware_dry_run(limits: dict[str, Any]) -> None:
    app = hello_app(limit="1/minute", dry_run=True, **limits)
    async with client(app) as c:
        got = [await c.get("/hello") for _ in range(3)]
    assert [r.status_code for r in got] == [200, 200, 200]
    assert [r.headers["x-ratelimit-remaining"] for r in got] == ["0", "0", "0"]
    assert "retry-after" not in got[2].headers


async def test_middleware_spoofed_forwarded_for(limits: dict[str, Any]) -> None:
    untrusting = hello_app(limit="1/minute", **limits)
    async with client(untrusting, "198.51.100.9") as c:
        codes = [
            (
                await c.get("/hello", headers={"x-forwarded-for": f"1.1.1.{i}"})
            ).status_code
            for i in range(3)
        ]
    assert codes == [200, 429, 429]

    trusting = hello_app(limit="1/minute", trusted_proxies=["10.0.0.0/8"], **limits)
    async with client(trusting, "10.0.0.2") as proxy:
        codes = [
            (
                await proxy.get("/hello", headers={"x-forwarded-for": f"1.1.1.{i}"})
            ).status_code
            for i in range(3)
        ]
        assert codes == [200, 200, 200]  # three real clients behind the proxy
        again = await proxy.get(
            "/hello", headers={"x-forwarded-for": "6.6.6.6, 1.1.1.0"}
        )
        assert again.status_code == 429  # forged prefix ignored
        junk = [
            (
                await proxy.get("/hello", headers={"x-forwarded-for": "x" * 10_000})
            ).status_code
            for _ in range(2)
        ]
        assert junk == [200, 429]  # garbage shares the proxy's bucket
        weird = await proxy.get(
            "/hello", headers={"x-forwarded-for": "\u00e9\u00e9".encode()}
        )
        assert weird.status_code == 429


async def test_middleware_passes_lifespan_and_websocket(limits: dict[str, Any]) -> None:
    events: list[str] = []

    async def ws(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_text("hi")
        await websocket.close()

    def home(request: Any) -> StarlettePlain:
        return StarlettePlain("home")

    app = Starlette(routes=[Route("/", home), WebSocketRoute("/ws", ws)])
    wrapped = RateLimitMiddleware(app, limit="1/minute", **limits)

    # lifespan: straight through
    sent: list[dict[str, Any]] = []
    queue = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]

    async def receive() -> dict[str, Any]:
        return queue.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        events.append(message["type"])

    await wrapped(
        {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, receive, send
    )
    assert events == ["lifespan.startup.complete", "lifespan.shutdown.complete"]

    # websocket: never limited
    for _ in range(3):
        sent.clear()
        wq = [
            {"type": "websocket.connect"},
            {"type": "websocket.disconnect", "code": 1000},
        ]

        async def wreceive(wq: list[dict[str, Any]] = wq) -> dict[str, Any]:
            return wq.pop(0) if wq else {"type": "websocket.disconnect", "code": 1000}

        async def wsend(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = {
            "type": "websocket",
            "path": "/ws",
            "raw_path": b"/ws",
            "query_string": b"",
            "headers": [],
            "client": ("1.1.1.1", 1),
            "server": ("test", 80),
            "scheme": "ws",
            "root_path": "",
            "subprotocols": [],
            "asgi": {"version": "3.0"},
        }
        await wrapped(scope, wreceive, wsend)
        assert [m["type"] for m in sent] == [
            "websocket.accept",
            "websocket.send",
            "websocket.close",
        ]


def test_middleware_bad_settings_fail_at_startup() -> None:
    app = FastAPI()
    with pytest.raises(SettingError, match=r"^limit: bad rate '5/fortnight'"):
        RateLimitMiddleware(app, limit="5/fortnight")
    with pytest.raises(SettingError, match=r"^trusted_proxies: "):
        RateLimitMiddleware(app, limit="5/minute", trusted_proxies=["proxy.local"])
    with pytest.raises(ValueError, match="either limit= or limiter="):
        RateLimitMiddleware(app, limit="5/minute", limiter=Limiter("1/second"))
    with pytest.raises(TypeError):
        RateLimitMiddleware(app, limit="5/minute", bogus=1)


async def test_middleware_with_limiter_object(clock: FakeClock) -> None:
    app = hello_app(limiter=Limiter("1/minute", clock=clock))
    async with client(app) as c:
        assert [(await c.get("/hello")).status_code for _ in range(2)] == [200, 429]


class SlowLimiter(Limiter):
    """Stands in for a Redis round trip: ahit yields to the loop."""

    async def ahit(self, key: str | bytes, cost: int = 1) -> Any:
        await asyncio.sleep(1.0)
        return self.hit(key, cost)


async def test_slow_limiter_does_not_stall_other_requests() -> None:
    inner = FastAPI()

    @inner.get("/slow")
    async def slow() -> str:
        return "slow"

    @inner.get("/fast")
    async def fast() -> str:
        return "fast"

    app = RateLimitMiddleware(
        inner, limiter=SlowLimiter("100/second"), exempt_paths=["/fast"]
    )
    done: dict[str, float] = {}

    async def get(path: str) -> None:
        async with client(app) as c:
            r = await c.get(path)
            assert r.status_code == 200
            done[path] = time.monotonic()

    start = time.monotonic()
    slow_task = asyncio.create_task(get("/slow"))
    await asyncio.sleep(0.05)
    await get("/fast")
    await slow_task
    assert done["/fast"] < done["/slow"]  # served while /slow was waiting
    assert done["/slow"] - start >= 1.0


# -- FastAPI decorator and dependency -----------------------------------------------


class Item(BaseModel):
    name: str
    price: float


def decorated_app(limits: dict[str, Any]) -> FastAPI:
    app = FastAPI(exception_handlers=exception_handlers)
    cache = LimiterCache(**limits)

    @app.get("/items/{item_id}")
    @limit("2/minute", limiters=cache)
    async def read_item(item_id: int, q: str | None = None) -> dict[str, Any]:
        return {"item_id": item_id, "q": q}

    @app.post("/items")
    @limit("2/minute", limiters=cache)
    def create_item(item: Item) -> Item:
        return item

    @app.get("/own-request")
    @limit("1/minute", limiters=cache)
    async def own(request: Request, response: Response) -> dict[str, str]:
        response.headers["x-own"] = "yes"
        return {"path": request.url.path}

    @app.get("/plain")
    @limit("1/minute", limiters=cache, headers=["ratelimit"])
    def plain() -> PlainTextResponse:
        return PlainTextResponse("plain")

    @app.get("/quiet")
    @limit("1/minute", limiters=cache, headers_on_allowed=False)
    async def quiet(n: int = 0) -> dict[str, int]:
        return {"n": n}

    @app.get("/quiet-sync")
    @limit("1/minute", limiters=cache, headers_on_allowed=False)
    def quiet_sync(response: Response) -> str:
        response.headers["x-own"] = "yes"
        return "sync"

    @app.get("/a")
    @limit("3/minute", scope="shared", limiters=cache)
    def a() -> str:
        return "a"

    @app.get("/b")
    @limit("3/minute", scope="shared", limiters=cache)
    def b() -> str:
        return "b"

    @app.get("/dep", dependencies=[Depends(RateLimit("1/minute", limiters=cache))])
    def dep() -> str:
        return "dep"

    @app.get("/dep-param")
    async def dep_param(
        _: None = Depends(RateLimit("2/minute", limiters=cache, dry_run=True)),
    ) -> str:
        return "ok"

    @app.get("/plan")
    @limit(
        Plans(
            {"free": "1/minute", "paid": "3/minute"}, plan=lambda r: r.header("x-plan")
        ),
        key=api_key(valid={"p", "f"}),
        limiters=cache,
    )
    async def plan() -> str:
        return "plan"

    return app


async def test_decorator_keeps_signature_validation_and_schema(
    limits: dict[str, Any],
) -> None:
    app = decorated_app(limits)
    async with client(app) as c:
        r = await c.get("/items/5?q=x")
        assert r.status_code == 200 and r.json() == {"item_id": 5, "q": "x"}
        assert r.headers["x-ratelimit-remaining"] == "1"
        assert (await c.get("/items/abc")).status_code == 422  # validation intact
        r = await c.post("/items", json={"name": "n", "price": 1.5})
        assert r.status_code == 200 and r.json() == {"name": "n", "price": 1.5}
        assert (await c.post("/items", json={"name": "n"})).status_code == 422
    schema = app.openapi()
    params = schema["paths"]["/items/{item_id}"]["get"]["parameters"]
    assert [p["name"] for p in params] == ["item_id", "q"]
    body = schema["paths"]["/items"]["post"]["requestBody"]
    assert body["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Item"
    }
    assert "parameters" not in schema["paths"]["/items"]["post"]


async def test_decorator_429_exact(limits: dict[str, Any], clock: FakeClock) -> None:
    app = decorated_app(limits)
    async with client(app) as c:
        await c.get("/items/1")
        clock.advance(6)
        await c.get("/items/1")
        r = await c.get("/items/1")
    assert r.status_code == 429
    name = '"tests.web.test_asgi_fastapi.decorated_app.<locals>.read_item"'
    assert rate_headers(r) == {
        "retry-after": "24",
        "cache-control": "no-store",
        "ratelimit-policy": f"{name};q=2;w=60",
        "ratelimit": f"{name};r=0;t=24",
        "x-ratelimit-limit": "2",
        "x-ratelimit-remaining": "0",
        "x-ratelimit-reset": "54",
    }
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json() == problem(24, 2)


async def test_decorator_with_own_request_and_response_objects(
    limits: dict[str, Any],
) -> None:
    app = decorated_app(limits)
    async with client(app) as c:
        r = await c.get("/own-request")
        assert r.json() == {"path": "/own-request"}
        assert r.headers["x-own"] == "yes" and r.headers["x-ratelimit-remaining"] == "0"
        assert (await c.get("/own-request")).status_code == 429
        r = await c.get("/plain")
        assert r.text == "plain" and r.headers["ratelimit"].endswith(";r=0;t=60")
        assert "x-ratelimit-limit" not in r.headers
        assert (await c.get("/plain")).status_code == 429


async def test_decorator_no_headers_on_allowed(limits: dict[str, Any]) -> None:
    """Allowed responses carry no rate headers (and the endpoint keeps
    its own Response); the 429 still carries all of them."""
    app = decorated_app(limits)
    async with client(app) as c:
        r = await c.get("/quiet?n=3")
        assert r.status_code == 200 and r.json() == {"n": 3}
        assert rate_headers(r) == {}
        r = await c.get("/quiet")
        assert r.status_code == 429 and r.headers["x-ratelimit-remaining"] == "0"
        assert r.headers["retry-after"] == "60" and "ratelimit" in r.headers
        r = await c.get("/quiet-sync")
        assert r.status_code == 200 and r.json() == "sync"
        assert r.headers["x-own"] == "yes" and rate_headers(r) == {}
        assert (await c.get("/quiet-sync")).status_code == 429
    params = app.openapi()["paths"]["/quiet"]["get"]["parameters"]
    assert [p["name"] for p in params] == ["n"]


async def test_decorator_shared_scope_and_sync_endpoints(
    limits: dict[str, Any],
) -> None:
    app = decorated_app(limits)
    async with client(app) as c:
        codes = [(await c.get(p)).status_code for p in ("/a", "/b", "/a", "/b")]
    assert codes == [200, 200, 200, 429]


async def test_decorator_sync_endpoint_runs_in_the_thread_pool() -> None:
    """A sync endpoint under @limit still runs off the event loop (in the
    thread pool, as FastAPI runs it), while the decision awaits ahit on
    the loop: a limiter whose blocking hit must not run there works."""
    app = FastAPI()
    seen: list[bool] = []

    @app.get("/sync")
    @limit(AsyncOnlyLimiter("1/minute"))
    def sync_endpoint(n: int = 0) -> int:
        try:
            asyncio.get_running_loop()
            seen.append(True)
        except RuntimeError:
            seen.append(False)
        return n + 1

    async with client(app) as c:
        r = await c.get("/sync", params={"n": 2})
        assert r.status_code == 200 and r.json() == 3
        assert (await c.get("/sync")).status_code == 429
        assert (await c.get("/sync", params={"n": "x"})).status_code == 422
    assert seen == [False]


def passing(func: Any) -> Any:
    """A decorator of the user's own, made with functools.wraps."""

    @functools.wraps(func)
    def call(*args: Any, **kwargs: Any) -> Any:
        return func(*args, **kwargs)

    return call


@pytest.mark.parametrize("kind", ["sync", "async", "wrapped"])
async def test_decorator_on_a_generator_endpoint(kind: str) -> None:
    """FastAPI streams a generator endpoint (JSON lines), calling it
    without awaiting: under @limit it still streams its items with the
    rate headers, its parameters still validated (a request that fails
    validation counts, as under the RateLimit dependency, which decides
    before validation), and a blocked request is a 429 before it starts
    (problem+json with the module's exception handlers)."""
    app = FastAPI(exception_handlers=exception_handlers)

    if kind == "async":

        @app.get("/lines")
        @limit(AsyncOnlyLimiter("2/minute"))
        async def lines(n: int = 2) -> AsyncIterator[int]:
            for i in range(n):
                yield i

    elif kind == "wrapped":

        @app.get("/lines")
        @limit(AsyncOnlyLimiter("2/minute"))
        @passing
        def lines(n: int = 2) -> Iterator[int]:  # type: ignore[misc]
            yield from range(n)

    else:

        @app.get("/lines")
        @limit(AsyncOnlyLimiter("2/minute"))
        def lines(n: int = 2) -> Iterator[int]:  # type: ignore[misc]
            yield from range(n)

    async with client(app) as c:
        r = await c.get("/lines", params={"n": 3})
        assert r.status_code == 200 and r.text == "0\n1\n2\n"
        assert r.headers["ratelimit"].endswith(";r=1;t=30")
        assert (await c.get("/lines", params={"n": "x"})).status_code == 422
        r = await c.get("/lines")
        assert r.status_code == 429
        assert r.headers["content-type"] == "application/problem+json"
    params = app.openapi()["paths"]["/lines"]["get"]["parameters"]
    assert [p["name"] for p in params] == ["n"]


@pytest.mark.parametrize("asynchronous", [False, True])
async def test_cache_passes_a_generator_endpoint_through(asynchronous: bool) -> None:
    """@cache on a generator endpoint (streamed by FastAPI): its items
    are sent, each request runs it (streams are not stored), and a limit
    over both still applies."""
    from stanchion.fastapi import cache

    app = FastAPI(exception_handlers=exception_handlers)
    calls: list[int] = []

    if asynchronous:

        @app.get("/lines")
        @limit(AsyncOnlyLimiter("2/minute"))
        @cache(ttl=60)
        async def lines(n: int = 2) -> AsyncIterator[int]:
            calls.append(n)
            for i in range(n):
                yield i

    else:

        @app.get("/lines")
        @limit(AsyncOnlyLimiter("2/minute"))
        @cache(ttl=60)
        def lines(n: int = 2) -> Iterator[int]:  # type: ignore[misc]
            calls.append(n)
            yield from range(n)

    async with client(app) as c:
        for _ in range(2):
            r = await c.get("/lines", params={"n": 3})
            assert r.status_code == 200 and r.text == "0\n1\n2\n"
            assert "ratelimit" in r.headers
        assert (await c.get("/lines")).status_code == 429
    assert calls == [3, 3]
    params = app.openapi()["paths"]["/lines"]["get"]["parameters"]
    assert [p["name"] for p in params] == ["n"]


async def test_decorator_plans_and_spoofing(limits: dict[str, Any]) -> None:
    app = decorated_app(limits)
    async with client(app) as c:
        paid = [
            (
                await c.get("/plan", headers={"x-plan": "paid", "x-api-key": "p"})
            ).status_code
            for _ in range(4)
        ]
        free = [
            (
                await c.get("/plan", headers={"x-plan": "free", "x-api-key": "f"})
            ).status_code
            for _ in range(2)
        ]
        spoof = [
            (
                await c.get("/items/1", headers={"x-forwarded-for": f"9.9.9.{i}"})
            ).status_code
            for i in range(3)
        ]
    assert paid == [200, 200, 200, 429]
    assert free == [200, 429]
    assert spoof == [200, 200, 429]


async def test_dependency(limits: dict[str, Any]) -> None:
    app = decorated_app(limits)
    async with client(app) as c:
        r1 = await c.get("/dep")
        r2 = await c.get("/dep")
        dry = [await c.get("/dep-param") for _ in range(3)]
    assert r1.status_code == 200 and r1.headers["x-ratelimit-remaining"] == "0"
    assert r2.status_code == 429
    assert r2.headers["content-type"] == "application/problem+json"
    assert (
        r2.headers["retry-after"] == "60" and r2.headers["cache-control"] == "no-store"
    )
    assert json.loads(r2.content)["status"] == 429
    assert [r.status_code for r in dry] == [200, 200, 200]
    assert [r.headers["x-ratelimit-remaining"] for r in dry] == ["1", "0", "0"]


async def test_dependency_without_handler_is_an_http_exception(
    limits: dict[str, Any],
) -> None:
    app = FastAPI()
    guard = RateLimit("1/minute", scope="one", **limits)

    @app.get("/x", dependencies=[Depends(guard)])
    def x() -> str:
        return "x"

    @app.get("/y", dependencies=[Depends(guard)])
    def y() -> str:
        return "y"

    async with client(app) as c:
        assert (await c.get("/x")).status_code == 200
        r = await c.get("/y")  # same scope: shared
    assert r.status_code == 429
    assert r.json() == {"detail": "Too Many Requests"}
    assert r.headers["retry-after"] == "60"
    assert issubclass(RateLimited, Exception)


def test_decorator_bad_settings_fail_at_import() -> None:
    with pytest.raises(SettingError, match=r"^limit: "):

        @limit("many/second")
        def f() -> None: ...

    with pytest.raises(SettingError, match=r"^cost: "):
        RateLimit("1/second", cost=5)


async def test_decorator_slow_limiter_does_not_stall(clock: FakeClock) -> None:
    app = FastAPI()

    @app.get("/slow")
    @limit(SlowLimiter("100/second"))
    async def slow() -> str:
        return "slow"

    @app.get("/fast")
    async def fast() -> str:
        return "fast"

    async with client(app) as c:
        slow_req = asyncio.create_task(c.get("/slow"))
        await asyncio.sleep(0.05)
        r = await c.get("/fast")
        # Answered while the slow one still waits: the loop was never
        # blocked (a stall would have let the slow one finish first).
        fast_done_first = not slow_req.done()
        assert (await slow_req).status_code == 200
    assert r.status_code == 200 and fast_done_first


async def test_async_unidentified_never_calls_the_blocking_hit() -> None:
    """No client address (scope["client"] is None) and unidentified="share":
    every async entry point decides through ahit, never the blocking hit."""
    app = FastAPI()

    @app.get("/decorated")
    @limit(AsyncOnlyLimiter("1/minute"), unidentified="share")
    async def decorated() -> str:
        return "ok"

    @app.get("/dependency")
    async def dependency(
        _: None = Depends(
            RateLimit(AsyncOnlyLimiter("1/minute"), unidentified="share")
        ),
    ) -> str:
        return "ok"

    @app.get("/keyed")
    @limit(AsyncOnlyLimiter("1/minute"), unidentified="share", key=lambda r: None)
    async def keyed() -> str:
        return "ok"

    plain = hello_app(limiter=AsyncOnlyLimiter("1/minute"), unidentified="share")
    proxied = hello_app(
        limiter=AsyncOnlyLimiter("1/minute"),
        unidentified="share",
        trusted_proxies=["10.0.0.0/8"],
    )
    for asgi, path in [
        (app, "/decorated"),
        (app, "/dependency"),
        (app, "/keyed"),
        (plain, "/hello"),
        (proxied, "/hello"),
    ]:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=asgi, client=None),  # type: ignore[arg-type]
            base_url="http://test",
        ) as c:
            codes = [(await c.get(path)).status_code for _ in range(2)]
        assert codes == [200, 429], path


# -- two layers on one response -------------------------------------------------


async def test_layers_list_ratelimit_and_keep_one_x_family(
    limits: dict[str, Any],
) -> None:
    """A route limited by a dependency and by @limit, inside the ASGI
    middleware: every layer's RateLimit item is sent, and one
    X-RateLimit-* trio, the route's (of its two, the one with the fewest
    requests left)."""
    app = FastAPI()

    @app.get(
        "/both", dependencies=[Depends(RateLimit("5/minute", scope="dep", **limits))]
    )
    @limit("2/minute", scope="route", **limits)
    async def both() -> dict[str, str]:
        return {}

    app.add_middleware(RateLimitMiddleware, limit="9/minute", **limits)
    async with client(app) as c:
        r = await c.get("/both")
    assert r.status_code == 200
    assert r.headers.get_list("ratelimit") == [
        '"dep";r=4;t=12',
        '"route";r=1;t=30',
        '"global";r=8;t=7',
    ]
    assert r.headers.get_list("ratelimit-policy") == [
        '"dep";q=5;w=60',
        '"route";q=2;w=60',
        '"global";q=9;w=60',
    ]
    assert r.headers.get_list("x-ratelimit-limit") == ["2"]
    assert r.headers.get_list("x-ratelimit-remaining") == ["1"]
    assert r.headers.get_list("x-ratelimit-reset") == ["30"]


def test_route_limits_share_the_adapters_limiter_cache() -> None:
    import stanchion.fastapi

    shared = stanchion.fastapi.default_limiters
    assert isinstance(shared, LimiterCache)
    import stanchion.hug

    assert stanchion.hug.default_limiters is shared

    @limit("3/minute", scope="shared-cache")
    async def endpoint() -> str:
        return "ok"

    assert endpoint.__stanchion_rule__.limiters is shared  # type: ignore[attr-defined]
    with pytest.raises(AttributeError, match="no_such_name"):
        stanchion.fastapi.no_such_name  # noqa: B018


async def test_a_routes_limits_advertise_the_most_restrictive_quota() -> None:
    """A router's RateLimit and a route's own limit (a dependency or
    @limit) both apply: X-RateLimit-* are the one with the fewest
    requests left, so a client that trusts them is not refused while
    they say it has some left (the first one checked said 4 of 9)."""
    from fastapi import APIRouter

    clock = FakeClock()
    router = APIRouter(
        dependencies=[Depends(RateLimit("9/minute", scope="router", clock=clock))]
    )

    @router.get(
        "/dep",
        dependencies=[Depends(RateLimit("2/minute", scope="route", clock=clock))],
    )
    async def dep() -> dict[str, bool]:
        return {"ok": True}

    @router.get("/deco")
    @limit("2/minute", scope="deco", clock=clock)
    async def deco() -> dict[str, bool]:
        return {"ok": True}

    @router.get("/own")
    @limit("2/minute", scope="own", clock=clock)
    async def own() -> PlainTextResponse:
        return PlainTextResponse("own")

    app = FastAPI(exception_handlers=exception_handlers)
    app.include_router(router)
    async with client(app) as c:
        for path in ("/dep", "/deco", "/own"):
            seen = []
            for _ in range(3):
                r = await c.get(path)
                seen.append((r.status_code, r.headers.get("x-ratelimit-remaining")))
                # One trio, whatever the layers.
                assert len(r.headers.get_list("x-ratelimit-limit")) == 1
            assert seen == [(200, "1"), (200, "0"), (429, "0")], path
            assert r.headers["x-ratelimit-limit"] == "2"
