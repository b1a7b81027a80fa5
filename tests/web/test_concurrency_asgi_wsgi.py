"""The concurrency limit in the ASGI middleware, FastAPI's @limit and the
WSGI middleware: at most N requests in flight, the next ones queued in
arrival order, the rest answered 503 (429 per client) with Retry-After;
a queued client that disconnects leaves the queue; body messages read
while queued reach the app; every slot is given back. And uvicorn with
the middleware under a burst of three times its capacity."""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import threading
import time
import uuid
from typing import Any

import httpx
import pytest
import redis.asyncio
from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response

from stanchion import SharedMemoryStorage
from stanchion.asgi import RateLimitMiddleware as AsgiMiddleware
from stanchion.fastapi import limit
from stanchion.http import SettingError
from stanchion.redis import RedisStorage
from stanchion.wsgi import RateLimitMiddleware as WsgiMiddleware

from .._redis import SLOW, RedisServer
from .test_gateway import Served

# -- ASGI ----------------------------------------------------------------------------


class Gate:
    """An ASGI app that records the order requests start and waits until
    let go; it reads the whole body first."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.bodies: list[bytes] = []
        self.go = asyncio.Event()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.started.append(scope["path"])
        self.bodies.append(body)
        await self.go.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


async def call(app: Any, path: str, peer: str = "203.0.113.1") -> httpx.Response:
    t = httpx.ASGITransport(app=app, client=(peer, 1234))
    async with httpx.AsyncClient(transport=t, base_url="http://t") as c:
        return await c.post(path, content=path.encode())


async def until(predicate: Any) -> None:
    for _ in range(500):
        if predicate():
            return
        await asyncio.sleep(0.002)
    raise AssertionError("timed out")


def test_asgi_queue_order_refusals_and_release() -> None:
    async def run() -> None:
        gate = Gate()
        mw = AsgiMiddleware(
            gate, limit="1000/second", concurrency=2, queue=2, queue_timeout=5
        )
        slots = mw.rule.slots
        tasks = []
        for i in range(6):  # one at a time, so the arrival order is known
            tasks.append(asyncio.ensure_future(call(mw, f"/{i}")))
            await until(
                lambda i=i: (
                    sum(t.done() for t in tasks)
                    + slots.stats()["in_flight"]
                    + slots.stats()["queued"]
                    == i + 1
                )
            )
        await until(lambda: sum(t.done() for t in tasks) == 2)
        refused = [t.result() for t in tasks if t.done()]
        assert [r.status_code for r in refused] == [503, 503]
        assert refused[0].headers["retry-after"] == "1"
        assert "ratelimit" not in refused[0].headers
        problem = json.loads(refused[0].content)
        assert problem["status"] == 503 and problem["title"] == "Service Unavailable"
        assert gate.started == ["/0", "/1"]
        gate.go.set()
        answers = await asyncio.gather(*tasks)
        assert [r.status_code for r in answers].count(200) == 4
        # The queued ones ran in arrival order, their bodies intact.
        assert gate.started == ["/0", "/1", "/2", "/3"]
        assert gate.bodies == [b"/0", b"/1", b"/2", b"/3"]
        assert slots.stats()["in_flight"] == 0 and slots.stats()["queued"] == 0

    asyncio.run(run())


def test_asgi_queue_timeout() -> None:
    async def run() -> None:
        gate = Gate()
        mw = AsgiMiddleware(gate, concurrency=1, queue=1, queue_timeout=0.2, limit=None)
        first = asyncio.ensure_future(call(mw, "/a"))
        await until(lambda: gate.started == ["/a"])
        t0 = time.monotonic()
        second = await call(mw, "/b")
        assert second.status_code == 503
        assert 0.15 < time.monotonic() - t0 < 2
        gate.go.set()
        assert (await first).status_code == 200
        assert mw.rule.slots.stats()["in_flight"] == 0

    asyncio.run(run())


def test_asgi_a_queued_client_that_disconnects_leaves_the_queue() -> None:
    async def run() -> None:
        gate = Gate()
        mw = AsgiMiddleware(gate, concurrency=1, queue=4, limit=None)
        slots = mw.rule.slots
        first = asyncio.ensure_future(call(mw, "/a"))
        await until(lambda: gate.started == ["/a"])
        gone = asyncio.Event()
        sent: list[Any] = []

        async def receive() -> dict[str, Any]:
            if not gone.is_set():
                await gone.wait()
                return {"type": "http.disconnect"}
            raise AssertionError("received after the disconnect")

        async def send(message: Any) -> None:
            sent.append(message)

        scope = {
            "type": "http",
            "method": "GET",
            "path": "/b",
            "headers": [],
            "client": ("203.0.113.9", 1),
        }
        queued = asyncio.ensure_future(mw(scope, receive, send))
        await until(lambda: slots.stats()["queued"] == 1)
        gone.set()
        await queued
        assert slots.stats()["queued"] == 0 and sent == []
        assert gate.started == ["/a"]
        gate.go.set()
        assert (await first).status_code == 200
        assert slots.stats()["in_flight"] == 0

    asyncio.run(run())


def test_asgi_per_client_slots_and_exceptions_release() -> None:
    async def run() -> None:
        gate = Gate()
        mw = AsgiMiddleware(
            gate, limit=None, concurrency=1, queue=0, concurrency_per="client"
        )
        a = asyncio.ensure_future(call(mw, "/a", "203.0.113.1"))
        b = asyncio.ensure_future(call(mw, "/b", "203.0.113.2"))
        await until(lambda: len(gate.started) == 2)
        again = await call(mw, "/a2", "203.0.113.1")
        assert again.status_code == 429 and again.headers["retry-after"]
        gate.go.set()
        assert [(await a).status_code, (await b).status_code] == [200, 200]

        async def broken(scope: Any, receive: Any, send: Any) -> None:
            raise RuntimeError("boom")

        mw2 = AsgiMiddleware(broken, limit=None, concurrency=1)
        for _ in range(3):
            with pytest.raises(RuntimeError):
                await call(mw2, "/x")
        assert mw2.rule.slots.stats()["in_flight"] == 0

    asyncio.run(run())


def test_asgi_per_client_slots_group_ipv6_networks_as_the_rate_limit() -> None:
    # One host owns its /64: another address of it is the same client,
    # for the slots as for the rate limit and its bans.
    async def run() -> None:
        gate = Gate()
        mw = AsgiMiddleware(
            gate, limit=None, concurrency=1, queue=0, concurrency_per="client"
        )
        a = asyncio.ensure_future(call(mw, "/a", "2001:db8:1:2::1"))
        await until(lambda: len(gate.started) == 1)
        same = asyncio.ensure_future(call(mw, "/b", "2001:db8:1:2::ffff"))
        await until(lambda: same.done() or len(gate.started) == 2)
        assert gate.started == ["/a"] and same.result().status_code == 429
        other = asyncio.ensure_future(call(mw, "/c", "2001:db8:1:3::1"))
        await until(lambda: len(gate.started) == 2)
        gate.go.set()
        assert [(await a).status_code, (await other).status_code] == [200, 200]
        assert mw.rule.slots.stats()["in_flight"] == 0

    asyncio.run(run())


async def _ok(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def test_asgi_slots_in_redis_given_back_through_an_asyncio_client(
    redis_server: RedisServer,
) -> None:
    # The slot is a Redis lease: given back with the client's own
    # asyncio calls (a blocking release fails on an asyncio client, and
    # would stall the loop on any other), not left until the lease ends.
    async def run() -> None:
        client = redis.asyncio.Redis.from_url(redis_server.url)
        storage = RedisStorage(client, prefix=f"t{uuid.uuid4().hex[:8]}:", timeout=SLOW)
        gate = Gate()
        mw = AsgiMiddleware(
            gate, limit=None, concurrency=1, queue=2, queue_timeout=5, storage=storage
        )
        slots = mw.rule.slots
        first = asyncio.ensure_future(call(mw, "/a"))
        await until(lambda: gate.started == ["/a"])
        queued = asyncio.ensure_future(call(mw, "/b"))
        await asyncio.sleep(0.05)
        assert gate.started == ["/a"]
        gate.go.set()
        answers = [await first, await queued]
        assert [r.status_code for r in answers] == [200, 200]
        assert await slots.ain_flight() == 0
        mw2 = AsgiMiddleware(_ok, limit=None, concurrency=1, storage=storage)
        for _ in range(3):
            assert (await call(mw2, "/c")).status_code == 200
        assert await mw2.rule.slots.ain_flight() == 0
        await storage.aclose()
        await client.aclose()

    asyncio.run(run())


def test_fastapi_limit_with_shared_slots_runs_and_gives_them_back() -> None:
    name = f"test-{uuid.uuid4().hex}"
    storage = SharedMemoryStorage(name)
    try:
        app = FastAPI()

        @app.get("/x")
        @limit("1000/second", concurrency=2, queue=0, storage=storage)
        async def x() -> dict[str, int]:
            return {"ok": 1}

        async def run() -> None:
            t = httpx.ASGITransport(app=app, client=("203.0.113.1", 1))
            async with httpx.AsyncClient(transport=t, base_url="http://t") as c:
                for _ in range(4):
                    r = await c.get("/x")
                    assert (r.status_code, r.json()) == (200, {"ok": 1})

        asyncio.run(run())
        assert x.__stanchion_rule__.slots.in_flight() == 0  # type: ignore[attr-defined]
    finally:
        SharedMemoryStorage(name).unlink(missing_ok=True)


def test_fastapi_limit_decorator_concurrency() -> None:
    go = asyncio.Event()
    app = FastAPI()

    @app.get("/slow")
    @limit("1000/second", concurrency=1, queue=0)
    async def slow() -> str:
        await go.wait()
        return "ok"

    async def run() -> None:
        t = httpx.ASGITransport(app=app, client=("203.0.113.1", 1))
        async with httpx.AsyncClient(transport=t, base_url="http://t") as c:
            first = asyncio.ensure_future(c.get("/slow"))
            await asyncio.sleep(0.05)
            second = await c.get("/slow")
            assert second.status_code == 503
            assert "x-ratelimit-limit" not in second.headers
            go.set()
            r = await first
            assert r.status_code == 200 and r.headers["x-ratelimit-limit"] == "1000"

    asyncio.run(run())


def test_uvicorn_burst_of_three_times_capacity() -> None:
    """4 slots and a queue of 4 under 24 requests at once: 8 served, 16
    refused at once with 503 and Retry-After, no other error, and every
    queued request served within its queue_timeout."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                kind = (await receive())["type"]
                await send({"type": kind + ".complete"})
                if kind == "lifespan.shutdown":
                    return
        await asyncio.sleep(0.5)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    mw = AsgiMiddleware(app, limit=None, concurrency=4, queue=4, queue_timeout=5)
    served = Served(mw).start()
    try:

        async def burst() -> list[tuple[int, float, str | None]]:
            limits = httpx.Limits(max_connections=64)
            async with httpx.AsyncClient(limits=limits, timeout=20) as c:
                t0 = time.monotonic()

                async def one() -> tuple[int, float, str | None]:
                    r = await c.get(served.url + "/")
                    return (
                        r.status_code,
                        time.monotonic() - t0,
                        r.headers.get("retry-after"),
                    )

                return await asyncio.gather(*(one() for _ in range(24)))

        results = asyncio.run(burst())
    finally:
        served.stop()
    statuses = sorted(s for s, _, _ in results)
    assert statuses == [200] * 8 + [503] * 16
    assert all(ra == "1" for s, _, ra in results if s == 503)
    assert all(t < 0.45 for s, t, _ in results if s == 503)  # refused at once
    assert max(t for s, t, _ in results if s == 200) < 5
    assert mw.rule.slots.stats()["in_flight"] == 0


# -- WSGI ------------------------------------------------------------------------------


def test_wsgi_threads_queue_refusal_and_streaming_release() -> None:
    go = threading.Event()
    started: list[str] = []

    def app(environ: Any, start_response: Any) -> Any:
        started.append(environ["PATH_INFO"])
        go.wait(5)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return iter([b"a", b"b"])  # a stream: the slot is held until close

    mw = WsgiMiddleware(app, limit=None, concurrency=1, queue=1, queue_timeout=3)
    slots = mw.rule.slots
    results: dict[str, Any] = {}

    def request(path: str) -> None:
        statuses: list[str] = []
        environ = {"PATH_INFO": path, "REMOTE_ADDR": "203.0.113.1"}
        body = mw(environ, lambda s, h, e=None: statuses.append(s))
        chunks = list(body)
        results[path] = (statuses, chunks, slots.stats()["in_flight"])
        getattr(body, "close", lambda: None)()

    first = threading.Thread(target=request, args=("/1",))
    first.start()
    while started != ["/1"]:
        time.sleep(0.002)
    second = threading.Thread(target=request, args=("/2",))
    second.start()
    while slots.stats()["queued"] != 1:
        time.sleep(0.002)
    request("/3")  # the queue is full: refused at once
    assert results["/3"][0] == ["503 Service Unavailable"]
    go.set()
    first.join()
    second.join()
    assert results["/1"][1] == [b"a", b"b"]
    assert results["/1"][2] == 1  # still held while the body was read
    assert started == ["/1", "/2"]
    assert slots.stats()["in_flight"] == 0 and slots.stats()["queued"] == 0


def test_wsgi_app_errors_release() -> None:
    def broken(environ: Any, start_response: Any) -> Any:
        raise RuntimeError("boom")

    mw = WsgiMiddleware(broken, limit="1000/second", concurrency=1)
    for _ in range(3):
        with pytest.raises(RuntimeError):
            mw({"REMOTE_ADDR": "203.0.113.1", "PATH_INFO": "/"}, lambda *a: None)
    assert mw.rule.slots.stats()["in_flight"] == 0


def test_the_deny_list_applies_to_a_concurrency_limit_alone() -> None:
    async def run() -> None:
        gate = Gate()
        gate.go.set()
        mw = AsgiMiddleware(gate, limit=None, concurrency=2, deny=["192.0.2.0/24"])
        assert (await call(mw, "/", "192.0.2.1")).status_code == 403
        assert (await call(mw, "/", "198.51.100.1")).status_code == 200

    asyncio.run(run())
    wsgi = WsgiMiddleware(
        lambda e, s: s("200 OK", []) or [b""],
        limit=None,
        concurrency=2,
        deny=["192.0.2.0/24"],
    )
    statuses: list[str] = []
    wsgi({"REMOTE_ADDR": "192.0.2.1"}, lambda st, h, e=None: statuses.append(st))
    wsgi({"REMOTE_ADDR": "198.51.100.1"}, lambda st, h, e=None: statuses.append(st))
    assert statuses == ["403 Forbidden", "200 OK"]


def test_asgi_lanes_and_exempt_paths() -> None:
    """priority= lanes: with a slot reserved for lane 1, a second lane-0
    request is refused while a lane-1 one is served; exempt paths take no
    slot at all."""

    async def run() -> None:
        gate = Gate()
        mw = AsgiMiddleware(
            gate,
            limit="1000/second",
            concurrency=2,
            priorities=2,
            reserve=1,
            priority=lambda r: 1 if r.path.startswith("/vip") else 0,
            exempt_paths=["/health"],
        )
        slots = mw.rule.slots
        first = asyncio.ensure_future(call(mw, "/a"))
        await until(lambda: gate.started == ["/a"])
        assert (await call(mw, "/b")).status_code == 503  # lane 0 is full
        vip = asyncio.ensure_future(call(mw, "/vip"))
        await until(lambda: gate.started == ["/a", "/vip"])
        assert slots.stats()["in_flight"] == 2
        health = asyncio.ensure_future(call(mw, "/health"))  # takes no slot
        await until(lambda: len(gate.started) == 3)
        assert slots.stats()["in_flight"] == 2
        gate.go.set()
        assert {(await t).status_code for t in (first, vip, health)} == {200}
        assert slots.stats()["in_flight"] == 0

    asyncio.run(run())


def test_asgi_lanes_given_as_an_int_enum() -> None:
    """A lane may be an IntEnum member (an int, as Concurrency takes it):
    it is that lane, not lane 0."""

    class Lane(enum.IntEnum):
        LOW = 0
        HIGH = 1

    async def run() -> None:
        gate = Gate()
        mw = AsgiMiddleware(
            gate,
            limit=None,
            concurrency=2,
            priorities=2,
            reserve=1,
            priority=lambda r: Lane.HIGH if r.path == "/vip" else Lane.LOW,
        )
        first = asyncio.ensure_future(call(mw, "/a"))
        await until(lambda: gate.started == ["/a"])
        assert (await call(mw, "/b")).status_code == 503  # lane 0 is full
        vip = asyncio.ensure_future(call(mw, "/vip"))
        await until(lambda: vip.done() or gate.started == ["/a", "/vip"])
        assert gate.started == ["/a", "/vip"]
        gate.go.set()
        assert {(await t).status_code for t in (first, vip)} == {200}
        assert mw.rule.slots.stats()["in_flight"] == 0

    asyncio.run(run())


@pytest.mark.parametrize(
    "setting",
    [
        {"queue": 8},
        {"queue_timeout": 5},
        {"concurrency_per": "client"},
        {"priority": lambda r: 1},
        {"priorities": 2, "reserve": 1},
    ],
)
def test_queue_and_lane_settings_without_concurrency_are_refused(
    setting: dict[str, Any],
) -> None:
    # Forgetting concurrency= must not leave a queue that silently is not.
    name = next(iter(setting))
    with pytest.raises(SettingError, match=f"^{name}: .*set concurrency"):
        AsgiMiddleware(_ok, limit="10/second", **setting)
    with pytest.raises(SettingError, match=f"^{name}: .*set concurrency"):
        limit("10/second", **setting)(lambda: None)
    assert AsgiMiddleware(_ok, limit=None, concurrency=2, **setting).rule.slots


# -- refusals under headers=[] and in dry run -----------------------------------------


async def _echo_asgi(scope: Any, receive: Any, send: Any) -> None:
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


def _echo_wsgi(environ: Any, start_response: Any) -> list[bytes]:
    size = int(environ.get("CONTENT_LENGTH") or 0)
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [environ["wsgi.input"].read(size)]


def slots_adapter(kind: str, **settings: Any) -> tuple[Any, Any]:
    """``(post(peer) -> (status, headers, body), rule)``: ``kind`` with a
    rate of 1000/second and ``settings``, answering a POST with its body."""
    if kind == "asgi":
        mw = AsgiMiddleware(_echo_asgi, limit="1000/second", **settings)

        def post_asgi(peer: str) -> Any:
            r = asyncio.run(call(mw, "/x", peer))
            return r.status_code, dict(r.headers), r.content

        return post_asgi, mw.rule
    if kind == "fastapi @limit":
        app = FastAPI()

        @app.post("/x")
        @limit("1000/second", **settings)
        async def x(request: Request) -> Response:
            return Response(await request.body())

        def post_fastapi(peer: str) -> Any:
            r = asyncio.run(call(app, "/x", peer))
            return r.status_code, dict(r.headers), r.content

        return post_fastapi, x.__stanchion_rule__  # type: ignore[attr-defined]
    from werkzeug.test import Client

    wsgi = WsgiMiddleware(_echo_wsgi, limit="1000/second", **settings)

    def post_wsgi(peer: str) -> Any:
        with Client(wsgi).post(
            "/x", data=b"/x", environ_base={"REMOTE_ADDR": peer}
        ) as r:
            return r.status_code, {k.lower(): v for k, v in r.headers.items()}, r.data

    return post_wsgi, wsgi.rule


SLOT_KINDS = ["asgi", "fastapi @limit", "wsgi"]


@pytest.mark.parametrize("per", ["global", "client"])
@pytest.mark.parametrize("kind", SLOT_KINDS)
def test_busy_refusals_carry_retry_after_whatever_headers_says(
    kind: str, per: str
) -> None:
    post, rule = slots_adapter(kind, concurrency=1, concurrency_per=per, headers=[])
    peer = "203.0.113.1"
    hold = rule.slots.try_acquire(None if per == "global" else peer)
    try:
        status, headers, body = post(peer)
    finally:
        hold.release()
    assert status == (503 if per == "global" else 429)
    assert int(headers["retry-after"]) >= 1
    assert json.loads(body)["status"] == status
    assert not any(k.startswith(("ratelimit", "x-ratelimit")) for k in headers)
    assert post(peer)[:3:2] == (200, b"/x")


@pytest.mark.parametrize("queue", [0, 1])
@pytest.mark.parametrize("per", ["global", "client"])
@pytest.mark.parametrize("kind", SLOT_KINDS)
def test_dry_run_serves_a_request_with_no_slot_and_logs_it(
    kind: str, per: str, queue: int, caplog: pytest.LogCaptureFixture
) -> None:
    post, rule = slots_adapter(
        kind,
        concurrency=1,
        concurrency_per=per,
        queue=queue,
        queue_timeout=0.05,
        dry_run=True,
    )
    peer = "203.0.113.1"
    hold = rule.slots.try_acquire(None if per == "global" else peer)
    try:
        with caplog.at_level(logging.INFO, logger="stanchion"):
            status, headers, body = post(peer)
        # Served, its body intact (read while it waited in the queue),
        # holding no slot: the one taken above is still the only one.
        assert (status, body) == (200, b"/x")
        assert headers["x-ratelimit-limit"] == "1000"
        assert rule.slots.stats()["in_flight"] == 1
        assert rule.slots.stats()["queued"] == 0
    finally:
        hold.release()
    assert rule.dry_run_denials == 1
    refusal = 429 if per == "client" else 503
    assert any(
        f"would have answered {refusal}" in r.getMessage() for r in caplog.records
    )
    assert rule.slots.stats()["in_flight"] == 0
    assert post(peer)[0] == 200 and rule.dry_run_denials == 1
