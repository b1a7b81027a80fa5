"""What the response cache stores and replays, through every adapter:
Cache-Control field-name forms, Vary: Cookie, per-client headers and
streams."""

from __future__ import annotations

from typing import Any

import pytest

from stanchion.respcache import Entry

from ..conftest import FakeClock
from ._respcache_apps import (
    EVENTS,
)

PER_CLIENT = (
    "ratelimit",
    "ratelimit-policy",
    "x-ratelimit-limit",
    "x-ratelimit-remaining",
    "x-ratelimit-reset",
    "retry-after",
)


@pytest.mark.parametrize(
    "path", ["/fieldprivate", "/fieldnocache", "/varycookie", "/sse"]
)
def test_never_stored(make: Any, path: str) -> None:
    h = make()
    bodies = {h.get(path).body for _ in range(3)}
    assert len(bodies) == 3  # each answer came from the endpoint
    assert h.cache.stats()["stores"] == 0


def test_vary_cookie_stored_per_identity(make: Any) -> None:
    # With the identity in the key, Vary: Cookie is just another variant.
    h = make(vary_identity=True)
    a = h.get("/varycookie", {"Cookie": "sessionid=a"})
    assert h.get("/varycookie", {"Cookie": "sessionid=a"}).body == a.body
    assert h.get("/varycookie", {"Cookie": "sessionid=b"}).body != a.body
    assert h.get("/varycookie").x_cache == "MISS"  # no cookie: not stored
    assert h.get("/varycookie").x_cache == "MISS"


def test_per_client_headers_never_stored_nor_replayed(
    make: Any, clock: FakeClock
) -> None:
    h = make()
    miss = h.get("/limited")
    assert miss.x_cache == "MISS"
    # The request that went upstream keeps its own rate limit headers.
    assert miss.headers["x-ratelimit-remaining"] == "99"
    assert miss.headers["ratelimit"] == "limit=100, remaining=99, reset=60"
    hit = h.get("/limited")
    assert (hit.x_cache, hit.body) == ("HIT", b"limited")
    assert [n for n in PER_CLIENT if n in hit.headers] == []
    clock.advance(11)
    again = h.get("/limited")
    assert (again.x_cache, again.headers["x-ratelimit-remaining"]) == ("MISS", "98")
    entries = [e for e in h.cache.store.cache.values() if isinstance(e, Entry)]
    assert [e.body for e in entries] == [b"limited"]
    assert [k for k, _ in entries[0].headers if k.lower() in PER_CLIENT] == []


@pytest.mark.parametrize("kind", ["sse", "plain"])
def test_streams_pass_through_at_once(make: Any, kind: str) -> None:
    h = make()
    for i in (1, 2):
        got = h.stream(f"/stream/{kind}")
        assert got.status == 200
        assert b"".join(got.parts) == b"".join(EVENTS)
        # The second event waited for the client to have the first.
        assert not h.upstream.starved
        assert h.upstream.closed == i
        assert got.headers.get("x-cache") == "MISS"
    assert h.upstream.calls["stream"] == 2
    assert h.cache.stats()["stores"] == 0


# ---------------------------------------------------------------------------
# ASGI file sends (Granian, Hypercorn, uvicorn with the extension)
# ---------------------------------------------------------------------------


async def _asgi_call(app: Any, url: str, extensions: dict[str, Any]) -> list[Any]:
    from ._respcache_apps import asgi_scope

    sent: list[Any] = []

    async def receive() -> Any:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        sent.append(message)

    await app(asgi_scope(url, extensions), receive, send)
    return sent


@pytest.mark.parametrize("kind", ["pathsend", "zerocopysend"])
def test_asgi_file_sends_pass_through(kind: str, clock: FakeClock) -> None:
    import asyncio

    from stanchion.asgi import CacheMiddleware

    calls = 0

    async def app(scope: Any, receive: Any, send: Any) -> None:
        nonlocal calls
        calls += 1
        raw = [(b"content-type", b"text/plain")]
        await send({"type": "http.response.start", "status": 200, "headers": raw})
        if kind == "pathsend":
            await send({"type": "http.response.pathsend", "path": __file__})
        else:
            await send({"type": "http.response.zerocopysend", "file": 0, "count": 9})

    mw = CacheMiddleware(app, ttl=10, clock=clock)
    ext = {"http.response." + kind: {}}
    for _ in range(2):
        sent = asyncio.run(_asgi_call(mw, "/file", ext))
        assert [m["type"] for m in sent] == [
            "http.response.start",
            "http.response." + kind,
        ]
        assert (b"x-cache", b"MISS") in sent[0]["headers"]
    assert calls == 2 and mw.stats()["stores"] == 0


@pytest.mark.parametrize("adapter", ["asgi", "fastapi"])
def test_file_response_under_pathsend_not_stored_empty(
    adapter: str, clock: FakeClock
) -> None:
    import asyncio

    from fastapi import FastAPI
    from fastapi.responses import FileResponse

    app = FastAPI()
    if adapter == "fastapi":
        from stanchion.fastapi import cache

        @app.get("/file")
        @cache(ttl=10, clock=clock)
        async def file_fastapi() -> Any:
            return FileResponse(__file__)

        rc = file_fastapi.cache  # type: ignore[attr-defined]
        served: Any = app
    else:
        from stanchion.asgi import CacheMiddleware

        @app.get("/file")
        async def file_plain() -> Any:
            return FileResponse(__file__)

        served = CacheMiddleware(app, ttl=10, clock=clock)
        rc = served.cache
    ext = {"http.response.pathsend": {}}
    for _ in range(2):
        sent = asyncio.run(_asgi_call(served, "/file", ext))
        kinds = [m["type"] for m in sent]
        assert kinds == ["http.response.start", "http.response.pathsend"]
        assert sent[1]["path"] == __file__
    assert rc.stats()["stores"] == 0


# ---------------------------------------------------------------------------
# The upstream's response is closed on every path, blocking and asyncio
# ---------------------------------------------------------------------------


class Native:
    """A framework response object: counts its close()."""

    def __init__(self) -> None:
        self.closed = 0

    def close(self) -> None:
        self.closed += 1


def _drive(rc: Any, sync: bool, url: str, make_up: Any) -> Any:
    """One request through serve (blocking) or aserve; the background
    refresh runs the same upstream and is waited for."""
    import asyncio

    plan = rc.plan("GET", url, "", lambda n: None)
    if sync:
        reply = rc.serve(plan, make_up, make_up)
        assert rc.wait_refreshes(timeout=5)
        return reply

    async def up() -> Any:
        return make_up()

    async def go() -> Any:
        reply = await rc.aserve(plan, up, up)
        await rc.await_refreshes()
        return reply

    return asyncio.run(go())


@pytest.mark.parametrize("sync", [True, False], ids=["serve", "aserve"])
def test_upstream_closed_on_every_path(sync: bool, clock: FakeClock) -> None:
    from stanchion.respcache import ResponseCache, Upstream

    rc = ResponseCache(
        ttl=10, stale_while_revalidate=10, stale_if_error=100, clock=clock
    )
    made: list[Native] = []

    def answer(status: int, body: bytes | None, headers: Any = ()) -> Any:
        def make() -> Upstream:
            native = Native()
            made.append(native)
            return Upstream(
                status, [("Content-Type", "text/plain"), *headers], body, native
            )

        return make

    # Stored: the reply is built from the entry, the response is done.
    r = _drive(rc, sync, "/a", answer(200, b"one"))
    assert (r.body, r.passthrough, made[-1].closed) == (b"one", False, 1)
    # Not stored (private): it goes to the client, which closes it.
    r = _drive(rc, sync, "/p", answer(200, b"p", [("Cache-Control", "private")]))
    assert r.native is made[-1] and made[-1].closed == 0
    # A stream: passed through, not closed here.
    r = _drive(rc, sync, "/s", answer(200, None))
    assert r.native is made[-1] and made[-1].closed == 0
    # Stale while revalidate: the background answer is stored and closed.
    clock.advance(15)
    r = _drive(rc, sync, "/a", answer(200, b"two"))
    assert (r.body, made[-1].closed) == (b"one", 1)
    # The refresh answered a stream: nothing stored, still closed.
    clock.advance(15)
    r = _drive(rc, sync, "/a", answer(200, None))
    assert (r.body, made[-1].closed) == (b"two", 1)
    # Stale if error: the 5xx is replaced by the stale entry and closed.
    clock.advance(10)
    r = _drive(rc, sync, "/a", answer(503, b"down"))
    assert (r.status, r.body, made[-1].closed) == (200, b"two", 1)
    assert rc.stats()["stale"] == 3


# ---------------------------------------------------------------------------
# A whole body in parts (a relayed answer with its Content-Length) is not a
# stream: it is stored
# ---------------------------------------------------------------------------


def test_asgi_parts_of_declared_length_are_stored(clock: FakeClock) -> None:
    import asyncio

    from stanchion.asgi import CacheMiddleware

    async def app(scope: Any, receive: Any, send: Any) -> None:
        raw = [(b"content-type", b"text/plain"), (b"content-length", b"10")]
        await send({"type": "http.response.start", "status": 200, "headers": raw})
        for part, more in ((b"01234", True), (b"56789", True), (b"", False)):
            await send({"type": "http.response.body", "body": part, "more_body": more})

    mw = CacheMiddleware(app, ttl=10, clock=clock)
    labels = []
    for _ in range(2):
        sent = asyncio.run(_asgi_call(mw, "/relayed", {}))
        headers = dict(sent[0]["headers"])
        labels.append(headers[b"x-cache"])
        assert b"".join(m.get("body", b"") for m in sent[1:]) == b"0123456789"
    assert labels == [b"MISS", b"HIT"]


def test_asgi_hits_send_the_entry_headers_encoded_once(clock: FakeClock) -> None:
    """A hit sends the stored headers as encoded on the first hit (kept
    on the entry), then its own Age and X-Cache: a server that changes
    the list it was sent changes no later hit."""
    import asyncio

    from stanchion.asgi import CacheMiddleware

    async def app(scope: Any, receive: Any, send: Any) -> None:
        raw = [(b"content-type", b"text/plain"), (b"x-app", b"1")]
        await send({"type": "http.response.start", "status": 200, "headers": raw})
        await send({"type": "http.response.body", "body": b"hello"})

    mw = CacheMiddleware(app, ttl=100, clock=clock)
    starts = []
    for step in range(4):
        sent = asyncio.run(_asgi_call(mw, "/once", {}))
        starts.append(list(sent[0]["headers"]))
        sent[0]["headers"].append((b"x-server", b"mutated"))
        sent[0]["headers"][0] = (b"content-type", b"changed")
        clock.advance(step + 1)
    names = [[k for k, _ in h] for h in starts]
    assert all(n == names[1] for n in names[1:]), names
    assert b"x-server" not in names[1]
    for i, h in enumerate(starts[1:], 1):
        d = dict(h)
        assert d[b"content-type"] == b"text/plain" and d[b"x-app"] == b"1"
        assert d[b"x-cache"] == b"HIT"
        assert d[b"age"] == str(sum(range(1, i + 1))).encode()


@pytest.mark.parametrize("failure", ["stream503", "raise"])
def test_asgi_stale_never_follows_an_answer_already_sent(
    failure: str, clock: FakeClock
) -> None:
    # stale_if_error replaces a failed answer only while none of it went
    # to the client: after a streamed start, a second response start
    # breaks the protocol (the server aborts the connection).
    import asyncio

    from stanchion.asgi import CacheMiddleware

    fail = False

    async def app(scope: Any, receive: Any, send: Any) -> None:
        raw = [(b"content-type", b"text/plain")]
        status = 503 if fail and failure == "stream503" else 200
        await send({"type": "http.response.start", "status": status, "headers": raw})
        if not fail:
            await send({"type": "http.response.body", "body": b"ok"})
            return
        await send({"type": "http.response.body", "body": b"a", "more_body": True})
        if failure == "raise":
            raise OSError("upstream gone")
        await send({"type": "http.response.body", "body": b"b"})

    mw = CacheMiddleware(app, ttl=10, stale_if_error=100, clock=clock)
    asyncio.run(_asgi_call(mw, "/page", {}))
    fail = True
    clock.advance(20)
    if failure == "raise":
        with pytest.raises(OSError, match="upstream gone"):
            asyncio.run(_asgi_call(mw, "/page", {}))
        return
    sent = asyncio.run(_asgi_call(mw, "/page", {}))
    starts = [m for m in sent if m["type"] == "http.response.start"]
    assert [m["status"] for m in starts] == [503]
    assert b"".join(m.get("body", b"") for m in sent[1:]) == b"ab"


def test_wsgi_iterable_of_declared_length_is_stored(clock: FakeClock) -> None:
    from werkzeug.test import Client

    from stanchion.wsgi import CacheMiddleware

    calls = 0

    def app(environ: Any, start_response: Any) -> Any:
        nonlocal calls
        calls += 1
        start_response("200 OK", [("Content-Length", "10")])
        yield b"01234"
        yield b"56789"

    mw = CacheMiddleware(app, ttl=10, clock=clock)
    c = Client(mw)
    got = [c.get("/relayed") for _ in range(2)]
    assert [r.headers["X-Cache"] for r in got] == ["MISS", "HIT"]
    assert {r.get_data() for r in got} == {b"0123456789"} and calls == 1


# ---------------------------------------------------------------------------
# Rate limit and cache middleware together: what a hit costs (README,
# "Middleware order")
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["asgi", "wsgi"])
@pytest.mark.parametrize("limit_outside", [True, False], ids=["outside", "inside"])
def test_rate_limit_and_cache_middleware_order(
    kind: str, limit_outside: bool, clock: FakeClock
) -> None:
    import importlib

    mod = importlib.import_module(f"stanchion.{kind}")
    calls = 0

    if kind == "asgi":

        async def app(scope: Any, receive: Any, send: Any) -> None:
            nonlocal calls
            calls += 1
            raw = [(b"content-type", b"text/plain")]
            await send({"type": "http.response.start", "status": 200, "headers": raw})
            await send({"type": "http.response.body", "body": b"page"})

    else:

        def app(environ: Any, start_response: Any) -> Any:  # type: ignore[misc]
            nonlocal calls
            calls += 1
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"page"]

    def limited(inner: Any) -> Any:
        return mod.RateLimitMiddleware(inner, limit="3/minute", clock=clock)

    def cached(inner: Any) -> Any:
        return mod.CacheMiddleware(inner, ttl=60, clock=clock)

    served = limited(cached(app)) if limit_outside else cached(limited(app))
    if kind == "asgi":
        import httpx

        async def go() -> list[Any]:
            transport = httpx.ASGITransport(app=served)
            async with httpx.AsyncClient(
                transport=transport, base_url="http://test"
            ) as c:
                return [await c.get("/page") for _ in range(5)]

        import asyncio

        got = [(r.status_code, r.headers) for r in asyncio.run(go())]
    else:
        from werkzeug.test import Client

        c = Client(served)
        env = {"REMOTE_ADDR": "203.0.113.1"}
        answers = [c.get("/page", environ_overrides=env) for _ in range(5)]
        got = [(r.status_code, r.headers) for r in answers]
    statuses = [s for s, _ in got]
    remaining = [h.get("x-ratelimit-remaining") for _, h in got]
    assert calls == 1
    if limit_outside:
        # Every request, hits included, costs one and gets its own headers.
        assert statuses == [200, 200, 200, 429, 429]
        assert remaining == ["2", "1", "0", "0", "0"]
    else:
        # Only the miss reached the limit; hits carry no limit headers.
        assert statuses == [200] * 5
        assert remaining == ["2", None, None, None, None]


def test_wait_refreshes(clock: FakeClock) -> None:
    import threading

    from stanchion.respcache import ResponseCache, Upstream

    rc = ResponseCache(ttl=10, stale_while_revalidate=10, clock=clock)
    release = threading.Event()

    def slow() -> Upstream:
        release.wait(5)
        return Upstream(200, [], b"new")

    plan = rc.plan("GET", "/a", "", lambda n: None)
    rc.serve(plan, lambda: Upstream(200, [], b"old"))
    assert rc.wait_refreshes(timeout=0)  # none in flight
    clock.advance(15)
    assert rc.serve(plan, slow, slow).body == b"old"  # refresh started
    assert not rc.wait_refreshes(timeout=0.05)
    release.set()
    assert rc.wait_refreshes()
    assert rc.serve(plan, slow, slow).body == b"new"
    with pytest.raises(ValueError):
        rc.wait_refreshes(timeout=-1)
    with pytest.raises(TypeError):
        rc.wait_refreshes(timeout="1")


# ---------------------------------------------------------------------------
# Single flight across blocking and asyncio callers of one ResponseCache: a
# caller waits only for a flight it can wait for (a thread for a thread's, a
# task for one of its own loop's); any other goes upstream on its own
# ---------------------------------------------------------------------------


def _flight_in_loop_thread(rc: Any, plan: Any, release: Any) -> Any:
    """Start an aserve() on ``plan`` in a loop of another thread, whose
    upstream waits for ``release``; returns the thread once it is in flight."""
    import asyncio
    import threading

    from stanchion.respcache import Upstream

    started = threading.Event()

    async def slow() -> Upstream:
        started.set()
        while not release.is_set():
            await asyncio.sleep(0.005)
        return Upstream(200, [], b"from the loop")

    thread = threading.Thread(target=lambda: asyncio.run(rc.aserve(plan, slow)))
    thread.start()
    assert started.wait(5)
    return thread


def test_blocking_caller_beside_an_asyncio_flight_goes_upstream() -> None:
    import threading

    from stanchion.respcache import ResponseCache, Upstream

    rc = ResponseCache(ttl=10)
    plan = rc.plan("GET", "/mixed", "", lambda n: None)
    release = threading.Event()
    thread = _flight_in_loop_thread(rc, plan, release)
    try:
        reply = rc.serve(plan, lambda: Upstream(200, [], b"from the thread"))
        assert reply.body == b"from the thread"
    finally:
        release.set()
        thread.join(5)
    assert not rc.flights


def test_task_beside_another_loops_flight_goes_upstream() -> None:
    import asyncio
    import threading

    from stanchion.respcache import ResponseCache, Upstream

    rc = ResponseCache(ttl=10)
    plan = rc.plan("GET", "/loops", "", lambda n: None)
    release = threading.Event()
    thread = _flight_in_loop_thread(rc, plan, release)

    async def here() -> Upstream:
        return Upstream(200, [], b"from this loop")

    try:
        reply = asyncio.run(asyncio.wait_for(rc.aserve(plan, here), 5))
        assert reply.body == b"from this loop"
    finally:
        release.set()
        thread.join(5)
    assert not rc.flights


def test_cancelled_leader_lands_its_flight() -> None:
    import asyncio

    from stanchion.respcache import ResponseCache, Upstream

    rc = ResponseCache(ttl=10)
    plan = rc.plan("GET", "/cancel", "", lambda n: None)
    calls = []

    async def hang() -> Upstream:
        calls.append("leader")
        await asyncio.sleep(10)
        raise AssertionError("not reached")

    async def quick() -> Upstream:
        calls.append("joiner")
        return Upstream(200, [], b"joiner's")

    async def go() -> bytes:
        leader = asyncio.create_task(rc.aserve(plan, hang))
        await asyncio.sleep(0.01)
        joiner = asyncio.create_task(rc.aserve(plan, quick))
        await asyncio.sleep(0.01)
        leader.cancel()
        with pytest.raises(asyncio.CancelledError):
            await leader
        reply = await asyncio.wait_for(joiner, 5)
        return reply.body

    assert asyncio.run(go()) == b"joiner's"
    assert calls == ["leader", "joiner"] and not rc.flights


def test_blocking_upstream_error_reaches_the_caller_and_lands() -> None:
    from stanchion.respcache import ResponseCache, Upstream

    rc = ResponseCache(ttl=10)
    plan = rc.plan("GET", "/boom", "", lambda n: None)

    def boom() -> Upstream:
        raise KeyError("upstream")

    with pytest.raises(KeyError, match="upstream"):
        rc.serve(plan, boom)
    assert not rc.flights
    assert rc.serve(plan, lambda: Upstream(200, [], b"ok")).body == b"ok"
