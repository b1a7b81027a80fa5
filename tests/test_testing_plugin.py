"""stanchion.testing: disabled() against every framework adapter, reset_all(),
the fake clock, and the pytest plugin run by pytest itself (pytester) on
small test files with a real Flask app, a FastAPI app and a plain Limiter."""

from __future__ import annotations

import asyncio
import importlib.metadata
import threading
from pathlib import Path
from typing import Any

import pytest

import stanchion
from stanchion import testing
from stanchion._registry import disabled_now, live

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parent.parent


def _run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    """pytest on pytester's files, with the plugin: by module unless its
    entry point is installed (an installed stanchion registers it as
    ``stanchion``, and loading it twice would fail)."""
    names = {e.name for e in importlib.metadata.entry_points(group="pytest11")}
    plugin = [] if "stanchion" in names else ["-p", "stanchion.testing"]
    pytester.makeini(
        "[pytest]\nasyncio_default_fixture_loop_scope = function\n"
        # stanchion.testing is imported already, in this process.
        "filterwarnings = ignore::pytest.PytestAssertRewriteWarning\n"
    )
    return pytester.runpytest_inprocess(*plugin, "-p", "no:cacheprovider", *args)


# -- disabled() ---------------------------------------------------------------


def test_disabled_allows_every_limiter_and_charges_nothing() -> None:
    lim = stanchion.Limiter("1/minute")
    assert lim.hit("k").allowed and not lim.hit("k").allowed
    with testing.disabled():
        d = lim.hit("k")
        assert d.allowed and d.remaining == d.limit == 1 and d.retry_after == 0
        assert lim.peek("k").allowed
        with pytest.raises(TypeError):
            lim.hit(3)  # type: ignore[arg-type]  # keys are still checked
    assert not lim.hit("k").allowed  # charged nothing meanwhile, still empty
    fresh = stanchion.Limiter("1/minute")
    with testing.disabled():
        for _ in range(5):
            assert fresh.hit("k").allowed
    assert fresh.hit("k").allowed  # the five hits were never charged


def test_disabled_lets_banned_keys_through() -> None:
    lim = stanchion.Limiter(
        "1/minute", penalty=stanchion.Penalty(after=1, within=60, ban=60)
    )
    lim.hit("k")
    lim.hit("k")
    assert lim.hit("k").banned
    with testing.disabled():
        assert lim.hit("k").allowed
    assert lim.hit("k").banned


def test_disabled_nests_counts_and_decorates() -> None:
    lim = stanchion.Limiter("1/hour")
    lim.hit("k")
    with testing.disabled():
        with testing.disabled():
            assert lim.hit("k").allowed
        assert disabled_now() and lim.hit("k").allowed
    assert not disabled_now() and not lim.hit("k").allowed

    @testing.disabled()
    def sync() -> bool:
        return lim.hit("k").allowed

    @testing.disabled()
    async def coro() -> bool:
        await asyncio.sleep(0)
        return (await lim.ahit("k")).allowed

    async def async_with() -> bool:
        async with testing.disabled():
            return (await lim.ahit("k")).allowed

    assert sync() and asyncio.run(coro()) and asyncio.run(async_with())
    assert sync.__name__ == "sync" and not disabled_now()
    with pytest.raises(ZeroDivisionError), testing.disabled():
        1 / 0  # noqa: B018
    assert not disabled_now()  # closed on the way out of an exception


def test_disabled_is_process_wide_and_thread_safe() -> None:
    lim = stanchion.Limiter("1/hour")
    lim.hit("k")
    seen: list[bool] = []
    with testing.disabled():
        t = threading.Thread(target=lambda: seen.append(lim.hit("k").allowed))
        t.start()
        t.join()
    assert seen == [True]

    def churn() -> None:
        for _ in range(2000):
            with testing.disabled():
                pass

    threads = [threading.Thread(target=churn) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not disabled_now() and not lim.hit("k").allowed


def test_flask_adapter_disabled() -> None:
    from flask import Flask

    from stanchion.flask import Stanchion

    app = Flask(__name__)
    app.config["STANCHION_DEFAULT_LIMIT"] = "1/minute"
    limits = Stanchion(app)

    @app.route("/")
    def index() -> str:
        return "ok"

    @app.route("/login")
    @limits.limit("1/hour")
    def login() -> str:
        return "in"

    c = app.test_client()
    assert [c.get("/").status_code for _ in range(2)] == [200, 429]
    assert [c.get("/login").status_code for _ in range(2)] == [200, 429]
    with testing.disabled():
        assert [c.get("/").status_code for _ in range(3)] == [200] * 3
        assert [c.get("/login").status_code for _ in range(3)] == [200] * 3
    assert c.get("/").status_code == 429


def _asgi_get(app: Any, path: str, n: int) -> list[int]:
    """n GETs of ``path`` from one client, through httpx's ASGI transport."""
    import httpx

    async def run() -> list[int]:
        transport = httpx.ASGITransport(app=app, client=("203.0.113.9", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            return [(await c.get(path)).status_code for _ in range(n)]

    return asyncio.run(run())


def test_fastapi_adapters_disabled() -> None:
    from fastapi import Depends, FastAPI

    from stanchion.asgi import RateLimitMiddleware
    from stanchion.fastapi import RateLimit, exception_handlers, limit

    app = FastAPI(exception_handlers=exception_handlers)

    @app.get("/item")
    @limit("1/minute")
    async def item() -> dict[str, str]:
        return {"ok": "yes"}

    @app.get("/search", dependencies=[Depends(RateLimit("1/minute"))])
    def search() -> dict[str, str]:
        return {"ok": "yes"}

    inner = FastAPI()

    @inner.get("/")
    def root() -> str:
        return "ok"

    inner.add_middleware(RateLimitMiddleware, limit="1/minute")
    for asgi, path in ((app, "/item"), (app, "/search"), (inner, "/")):
        assert _asgi_get(asgi, path, 2) == [200, 429], path
        with testing.disabled():
            assert _asgi_get(asgi, path, 3) == [200] * 3
        assert _asgi_get(asgi, path, 1) == [429]


def _wsgi_get(c: Any, path: str, n: int) -> list[int]:
    """n GETs of ``path`` from one client address, through werkzeug."""
    env = {"REMOTE_ADDR": "203.0.113.9"}
    return [c.get(path, environ_base=env).status_code for _ in range(n)]


def test_wsgi_middleware_disabled() -> None:
    from werkzeug.test import Client
    from werkzeug.wrappers import Response

    from stanchion.wsgi import RateLimitMiddleware

    def app(environ: Any, start_response: Any) -> Any:
        return Response("ok")(environ, start_response)

    c = Client(RateLimitMiddleware(app, limit="1/minute"))
    assert _wsgi_get(c, "/", 2) == [200, 429]
    with testing.disabled():
        assert _wsgi_get(c, "/", 3) == [200] * 3
    assert _wsgi_get(c, "/", 1) == [429]


def test_django_adapters_disabled() -> None:
    import django
    from django.conf import settings

    if not settings.configured:
        settings.configure(
            SECRET_KEY="tests-only",
            ALLOWED_HOSTS=["testserver"],
            INSTALLED_APPS=["stanchion.django"],
            STANCHION={},
        )
        django.setup()
    from django.http import HttpResponse
    from django.test import RequestFactory, override_settings

    from stanchion.django import RateLimitMiddleware, ratelimit

    @ratelimit("1/minute", scope="testing-disabled")
    def view(request: Any) -> HttpResponse:
        return HttpResponse("ok")

    rf = RequestFactory()
    assert [view(rf.get("/")).status_code for _ in range(2)] == [200, 429]
    with testing.disabled():
        assert [view(rf.get("/")).status_code for _ in range(3)] == [200] * 3
    assert view(rf.get("/")).status_code == 429

    with override_settings(STANCHION={"LIMIT": "1/minute"}):
        mw = RateLimitMiddleware(lambda request: HttpResponse("ok"))
        assert [mw(rf.get("/")).status_code for _ in range(2)] == [200, 429]
        with testing.disabled():
            assert [mw(rf.get("/")).status_code for _ in range(3)] == [200] * 3
        assert mw(rf.get("/")).status_code == 429


def test_hug_adapters_disabled() -> None:
    import hug
    from werkzeug.test import Client

    from stanchion.hug import RateLimitMiddleware, limit

    api = hug.API("stanchion_testing_disabled")

    @hug.get("/greet", api=api)
    @limit("1/minute", scope="greet")
    def greet() -> str:
        return "hi"

    @hug.get("/open", api=api)
    def open_endpoint() -> str:
        return "open"

    api.http.add_middleware(RateLimitMiddleware(limit="2/minute", scope="all"))
    c = Client(api.http.server())
    assert _wsgi_get(c, "/greet", 2) == [200, 429]
    assert _wsgi_get(c, "/open", 1) == [429]  # the middleware's 2/minute spent
    with testing.disabled():
        assert _wsgi_get(c, "/greet", 3) == [200] * 3
        assert _wsgi_get(c, "/open", 3) == [200] * 3
    assert _wsgi_get(c, "/open", 1) == [429]


# -- reset_all() and the fake clock -------------------------------------------


def test_reset_all_empties_limiters_caches_and_cached_functions() -> None:
    lim = stanchion.Limiter(
        "1/hour", penalty=stanchion.Penalty(after=1, within=60, ban=60)
    )
    cache = stanchion.Cache(10)
    calls: list[int] = []

    @stanchion.cached
    def f(x: int) -> int:
        calls.append(x)
        return x

    lim.hit("k")
    lim.hit("k")
    lim.hit("k")
    cache["a"] = 1
    f(1)
    f(1)
    assert lim.get_ban("k") is not None and calls == [1]
    testing.reset_all()
    assert lim.hit("k").allowed and lim.get_ban("k") is None
    assert len(cache) == 0 and cache.stats()["hits"] == 0
    f(1)
    assert calls == [1, 1]
    assert any(o is lim for o in live()) and any(o is cache for o in live())


def test_fake_clock_reaches_objects_made_before_and_during() -> None:
    before = stanchion.Limiter("1/minute")
    own = [5.0]
    injected = stanchion.Cache(10, ttl=1, clock=lambda: own[0])
    before.hit("k")
    with testing.fake_clock(start=100.0) as clock:
        assert before.clock is clock and before.hit("k").allowed  # reset
        assert not before.hit("k").allowed
        during = stanchion.Limiter("1/minute")
        cache = stanchion.Cache(10, ttl=30)
        assert during.clock is clock and cache.clock is clock
        assert injected.clock is not clock  # a test's own clock is kept
        during.hit("k")
        cache["a"] = 1
        clock.advance(29.999)
        assert "a" in cache and not during.hit("k").allowed
        clock.advance(0.001)
        assert "a" not in cache
        clock.advance(30)
        assert before.hit("k").allowed and during.hit("k").allowed
        assert clock() == clock.now == pytest.approx(160.0)
        with pytest.raises(ValueError):
            clock.advance(-1)
        with pytest.raises(TypeError):
            clock.advance("1")  # type: ignore[arg-type]
        with pytest.raises(RuntimeError), testing.fake_clock():
            pass
    assert before.clock is None and during.clock is None and cache.clock is None
    assert before.hit("k").allowed  # reset again, on the monotonic clock


# -- the pytest plugin, run by pytest -----------------------------------------


PLAIN = """
import stanchion

LIM = stanchion.Limiter("2/minute")            # made at import, before any fixture
CALLS = []

@stanchion.cached(ttl=10)
def lookup(x):
    CALLS.append(x)
    return x

def test_limit_then_refill(stanchion_clock):
    assert LIM.hit("me") and LIM.hit("me")
    assert not LIM.hit("me")
    stanchion_clock.advance(29.9)
    assert not LIM.hit("me")
    stanchion_clock.advance(0.1)
    assert LIM.hit("me")

def test_state_reset_between_tests(stanchion_clock):
    assert LIM.hit("me") and LIM.hit("me")    # the previous test's hits are gone
    lookup(1); lookup(1)
    assert CALLS == [1]
    stanchion_clock.advance(10)
    lookup(1)
    assert CALLS == [1, 1]

def test_reset_fixture(stanchion_reset):
    assert LIM.hit("me") and LIM.hit("me") and not LIM.hit("me")
"""

FLASK = """
from flask import Flask
from stanchion.flask import Stanchion

app = Flask(__name__)
app.config["STANCHION_DEFAULT_LIMIT"] = "2/minute"
limits = Stanchion(app)

@app.route("/")
def index():
    return "ok"

SERVED = []

@app.route("/items")
@limits.cache(ttl=60)
def items():
    SERVED.append(1)
    return f"items {len(SERVED)}"

def test_flask_response_cache(stanchion_clock):
    c = app.test_client()
    first = c.get("/items")
    assert first.headers["X-Cache"] == "MISS" and SERVED == [1]
    stanchion_clock.advance(59)
    again = c.get("/items")
    assert again.headers["X-Cache"] == "HIT" and again.headers["Age"] == "59"
    stanchion_clock.advance(1)
    assert c.get("/items").headers["X-Cache"] == "MISS" and SERVED == [1, 1]

def test_flask(stanchion_clock):
    c = app.test_client()
    assert [c.get("/").status_code for _ in range(3)] == [200, 200, 429]
    stanchion_clock.advance(30)
    assert [c.get("/").status_code for _ in range(2)] == [200, 429]

def test_flask_again(stanchion_clock):
    c = app.test_client()
    assert c.get("/").status_code == 200
"""

FASTAPI = """
import asyncio
import httpx
from fastapi import FastAPI
from stanchion.fastapi import exception_handlers, limit

app = FastAPI(exception_handlers=exception_handlers)

@app.get("/")
@limit("1/minute")
async def index():
    return {"ok": True}

class Client:
    def get(self, path):
        async def run():
            transport = httpx.ASGITransport(app=app, client=("203.0.113.9", 40000))
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
                return await c.get(path)
        return asyncio.run(run())

client = Client()

def test_fastapi(stanchion_clock):
    assert [client.get("/").status_code for _ in range(2)] == [200, 429]
    r = client.get("/")
    assert r.status_code == 429 and r.headers["Retry-After"] == "60"
    stanchion_clock.advance(60)
    assert client.get("/").status_code == 200

def test_fastapi_again(stanchion_clock):
    assert client.get("/").status_code == 200
"""

WITHOUT = """
import stanchion

LIM = stanchion.Limiter("1/hour")

def test_first():
    assert LIM.hit("me")

def test_second_sees_the_first():
    assert not LIM.hit("me")    # no fixture asked: nothing is reset
"""


@pytest.mark.parametrize(
    ("source", "passed"),
    [(PLAIN, 3), (FLASK, 3), (FASTAPI, 2), (WITHOUT, 2)],
    ids=["plain", "flask", "fastapi", "without-fixture"],
)
def test_plugin_runs_test_files(
    pytester: pytest.Pytester, source: str, passed: int
) -> None:
    pytester.makepyfile(test_app=source)
    result = _run(pytester)
    result.assert_outcomes(passed=passed)


def test_plugin_fails_a_test_that_expects_time_to_pass_by_itself(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        test_app="""
import time, stanchion
LIM = stanchion.Limiter("1/second")
def test_real_time_does_not_move_the_fake_clock(stanchion_clock):
    assert LIM.hit("me")
    time.sleep(1.1)
    assert LIM.hit("me")     # fails: only advance() moves the clock
"""
    )
    result = _run(pytester)
    result.assert_outcomes(failed=1)


def test_plugin_fixtures_listed(pytester: pytest.Pytester) -> None:
    result = _run(pytester, "--fixtures")
    result.stdout.fnmatch_lines(["*stanchion_clock*", "*stanchion_reset*"])


def test_entry_point_declared() -> None:
    text = (ROOT / "pyproject.toml").read_text()
    assert '[project.entry-points.pytest11]\nstanchion = "stanchion.testing"\n' in text


# -- concurrency limits --------------------------------------------------------


def test_disabled_concurrency_in_process() -> None:
    conc = stanchion.Concurrency(1)
    held = conc.try_acquire("k")
    assert held is not None and conc.try_acquire("k") is None
    with testing.disabled():
        extra = conc.try_acquire("k")
        assert extra is not None and extra.held
        with conc.hold("k", timeout=0) as h:
            assert h.held
        assert conc.in_flight("k") == 1  # the free passes take no slot

        async def twice() -> None:
            async with conc.ahold("k", timeout=0), conc.ahold("k", timeout=0):
                await asyncio.sleep(0)

        asyncio.run(twice())
    assert conc.try_acquire("k") is None  # the limit is back
    extra.release()  # a pass taken while disabled gives nothing back
    assert conc.in_flight("k") == 1
    held.release()
    assert conc.in_flight("k") == 0
    again = conc.try_acquire("k")
    assert again is not None and conc.try_acquire("k") is None
    again.release()


def test_disabled_concurrency_in_shared_memory() -> None:
    import uuid

    storage = stanchion.SharedMemoryStorage(f"st-testing-{uuid.uuid4().hex[:12]}")
    try:
        _shared_concurrency_disabled(storage)
    finally:
        storage.unlink(missing_ok=True)


def _shared_concurrency_disabled(storage: Any) -> None:
    conc = stanchion.Concurrency(1, storage=storage)
    held = conc.try_acquire("k")
    assert held is not None and conc.try_acquire("k") is None
    with testing.disabled():
        extra = conc.try_acquire("k")
        assert extra is not None and extra.held
    assert conc.try_acquire("k") is None
    extra.release()
    held.release()
    assert conc.in_flight("k") == 0


def test_redis_limiter_disabled_tracked_and_reset(redis_server: Any) -> None:
    import uuid

    from stanchion.redis import RedisStorage

    storage = RedisStorage(redis_server.url, prefix=f"t{uuid.uuid4().hex[:8]}:")
    try:
        lim = stanchion.Limiter("1/hour", storage=storage)
        assert any(o is lim for o in live())
        assert lim.hit("k").allowed and not lim.hit("k").allowed
        with testing.disabled():
            d = lim.hit("k")
            assert d.allowed and d.remaining == d.limit == 1
            assert lim.peek("k").allowed
        assert not lim.hit("k").allowed  # charged nothing meanwhile
        testing.reset_all()  # deletes its keys on the server
        assert lim.hit("k").allowed
    finally:
        storage.close()


def test_shared_memory_limiter_disabled_and_reset() -> None:
    import uuid

    storage = stanchion.SharedMemoryStorage(f"st-testing-{uuid.uuid4().hex[:12]}")
    try:
        lim = stanchion.Limiter("1/hour", storage=storage)
        assert any(o is lim for o in live())
        assert lim.hit("k").allowed and not lim.hit("k").allowed
        with testing.disabled():
            assert lim.hit("k").allowed
        assert not lim.hit("k").allowed
        testing.reset_all()
        assert lim.hit("k").allowed
        with testing.fake_clock():  # shared time: it keeps its own clock
            assert lim.hit("k").allowed and not lim.hit("k").allowed
    finally:
        storage.unlink(missing_ok=True)


def test_memcached_limiter_disabled(memcached_server: Any) -> None:
    import uuid

    from stanchion.memcached import MemcachedStorage

    storage = MemcachedStorage(memcached_server.url, prefix=f"t{uuid.uuid4().hex[:8]}:")
    try:
        lim = stanchion.Limiter("1/hour", storage=storage)
        assert lim.hit("k").allowed and not lim.hit("k").allowed
        with testing.disabled():
            d = lim.hit("k")
            assert d.allowed and d.remaining == d.limit == 1
            assert asyncio.run(lim.ahit("k")).allowed
        assert not lim.hit("k").allowed  # charged nothing meanwhile
        testing.reset_all()  # not tracked: Memcached cannot list its keys
        assert not lim.hit("k").allowed
    finally:
        storage.close()


def test_websocket_limit_disabled() -> None:
    import warnings

    from starlette.applications import Starlette
    from starlette.routing import WebSocketRoute
    from starlette.websockets import WebSocket, WebSocketDisconnect

    from stanchion.asgi import RateLimitMiddleware
    from stanchion.websocket import WebSocketLimit

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TestClient on httpx warns
        from starlette.testclient import TestClient

    async def echo(websocket: WebSocket) -> None:
        await websocket.accept()
        try:
            while True:
                await websocket.send_text(await websocket.receive_text())
        except WebSocketDisconnect:
            pass

    app = RateLimitMiddleware(
        Starlette(routes=[WebSocketRoute("/ws", echo)]),
        websocket=WebSocketLimit("1/minute"),
    )
    client = TestClient(app, client=("203.0.113.9", 50000))
    with testing.disabled(), client.websocket_connect("/ws") as conn:
        for i in range(3):
            conn.send_text(str(i))
            assert conn.receive_text() == str(i)
    with client.websocket_connect("/ws") as conn:
        conn.send_text("a")
        assert conn.receive_text() == "a"
        conn.send_text("b")
        with pytest.raises(WebSocketDisconnect) as closed:
            conn.receive_text()
    assert closed.value.code == 1008
