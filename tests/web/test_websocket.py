"""WebSocket limits: messages per connection and per client, connection
attempts; through the ASGI middleware and the FastAPI dependency, with
Starlette's TestClient and with a real uvicorn server and a real
``websockets`` client."""

from __future__ import annotations

import asyncio
import gc
import json
import tracemalloc
import uuid
import warnings
from typing import Any

import pytest
import websockets
from fastapi import Depends, FastAPI, WebSocket, WebSocketDisconnect
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute

from stanchion.asgi import RateLimitMiddleware
from stanchion.fastapi import WebSocketRateLimit
from stanchion.http import Request, SettingError
from stanchion.websocket import WebSocketLimit

from ..conftest import FakeClock
from .test_gateway import Served

with warnings.catch_warnings():
    # Starlette's TestClient on httpx (not httpx2) warns as it is imported.
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient, WebSocketDenialResponse


class Echo:
    """A Starlette app echoing text frames, counting what it received."""

    def __init__(self) -> None:
        self.received: list[str] = []
        self.closes: list[int] = []
        self.app = Starlette(routes=[WebSocketRoute("/ws", self.ws)])

    async def ws(self, websocket: WebSocket) -> None:
        await websocket.accept()
        try:
            while True:
                text = await websocket.receive_text()
                self.received.append(text)
                await websocket.send_text("echo " + text)
        except WebSocketDisconnect as exc:
            self.closes.append(exc.code)


def api_key_header(request: Request) -> str | None:
    return request.header("X-API-Key")


def client(app: Any, peer: str = "203.0.113.7") -> TestClient:
    return TestClient(app, client=(peer, 50000))


# -- per connection ------------------------------------------------------------


def test_close_1008_with_reason_after_the_connection_budget(clock: FakeClock) -> None:
    echo = Echo()
    ws = WebSocketLimit("3/minute", reason="slow down", clock=clock)
    app = RateLimitMiddleware(echo.app, websocket=ws)
    with client(app).websocket_connect("/ws") as conn:
        for i in range(3):
            conn.send_text(str(i))
            assert conn.receive_text() == f"echo {i}"
        conn.send_text("too many")
        with pytest.raises(WebSocketDisconnect) as closed:
            conn.receive_text()
    assert (closed.value.code, closed.value.reason) == (1008, "slow down")
    assert echo.received == ["0", "1", "2"]  # the 4th never reached the app
    assert echo.closes == [1008]
    # A new connection of the same client has a budget of its own.
    with client(app).websocket_connect("/ws") as conn:
        conn.send_text("again")
        assert conn.receive_text() == "echo again"
    # Each ended connection's budget is forgotten.
    assert ws.connection_limiter is not None
    assert ws.connection_limiter.stats()["keys"] == 0


def test_drop_with_error_frame_then_refills(clock: FakeClock) -> None:
    echo = Echo()
    ws = WebSocketLimit("2/second", action="drop", error_frame=True, clock=clock)
    app = RateLimitMiddleware(echo.app, websocket=ws)
    with client(app).websocket_connect("/ws") as conn:
        conn.send_text("a")
        assert conn.receive_text() == "echo a"
        conn.send_text("b")
        assert conn.receive_text() == "echo b"
        conn.send_text("c")
        error = json.loads(conn.receive_text())
        assert error == {"error": "rate limit exceeded", "retry_after": 0.5}
        clock.advance(0.5)
        conn.send_text("d")
        assert conn.receive_text() == "echo d"  # still open, refilled
    assert echo.received == ["a", "b", "d"]


def test_drop_silently_and_custom_frames(clock: FakeClock) -> None:
    echo = Echo()
    seen: list[float] = []

    def frame(d: Any) -> bytes:
        seen.append(d.retry_after)
        return b"\x00busy"

    ws = WebSocketLimit("1/second", action="drop", error_frame=frame, clock=clock)
    with client(RateLimitMiddleware(echo.app, websocket=ws)).websocket_connect(
        "/ws"
    ) as conn:
        conn.send_text("a")
        assert conn.receive_text() == "echo a"
        conn.send_text("b")
        assert conn.receive_bytes() == b"\x00busy"
        assert seen == [1.0]
    silent = WebSocketLimit("1/second", action="drop", clock=clock)
    echo2 = Echo()
    with client(RateLimitMiddleware(echo2.app, websocket=silent)).websocket_connect(
        "/ws"
    ) as conn:
        for t in "abc":  # b and c dropped, nothing said
            conn.send_text(t)
        assert conn.receive_text() == "echo a"
    assert echo2.received == ["a"]


# -- per client ----------------------------------------------------------------


def test_per_client_budget_spans_connections_and_spares_others(
    clock: FakeClock,
) -> None:
    echo = Echo()
    ws = WebSocketLimit(per_client="4/minute", clock=clock, key=api_key_header)
    app = RateLimitMiddleware(echo.app, websocket=ws)
    tc = client(app)
    with (
        tc.websocket_connect("/ws", headers={"x-api-key": "alice"}) as a1,
        tc.websocket_connect("/ws", headers={"x-api-key": "alice"}) as a2,
    ):
        for conn in (a1, a2, a1, a2):
            conn.send_text("x")
            assert conn.receive_text() == "echo x"
        a1.send_text("fifth")
        with pytest.raises(WebSocketDisconnect) as closed:
            a1.receive_text()
        assert closed.value.code == 1008
        a2.send_text("sixth")
        with pytest.raises(WebSocketDisconnect):
            a2.receive_text()
    # bob is another client: unaffected.
    with tc.websocket_connect("/ws", headers={"x-api-key": "bob"}) as b:
        for _ in range(4):
            b.send_text("y")
            assert b.receive_text() == "echo y"


def test_per_client_through_trusted_proxies(clock: FakeClock) -> None:
    """Behind a trusted proxy each X-Forwarded-For client has its own budget,
    as for HTTP; from an untrusted peer the header is ignored."""
    echo = Echo()
    ws = WebSocketLimit(
        per_client="1/minute", trusted_proxies=["10.0.0.0/8"], clock=clock
    )
    app = RateLimitMiddleware(echo.app, websocket=ws)
    proxy = client(app, "10.0.0.2")
    for forwarded in ("198.51.100.1", "198.51.100.2"):
        with proxy.websocket_connect(
            "/ws", headers={"x-forwarded-for": forwarded}
        ) as conn:
            conn.send_text("hi")
            assert conn.receive_text() == "echo hi"
    stranger = client(app, "192.0.2.9")
    for forwarded, ok in (("198.51.100.3", True), ("198.51.100.4", False)):
        with stranger.websocket_connect(
            "/ws", headers={"x-forwarded-for": forwarded}
        ) as conn:
            conn.send_text("hi")
            if ok:
                assert conn.receive_text() == "echo hi"
            else:  # the same peer, whatever it claims
                with pytest.raises(WebSocketDisconnect):
                    conn.receive_text()


# -- connection attempts ---------------------------------------------------------


def test_connection_attempts_refused_with_429_through_the_extension(
    clock: FakeClock,
) -> None:
    echo = Echo()
    ws = WebSocketLimit(connections="2/minute", clock=clock)
    app = RateLimitMiddleware(echo.app, websocket=ws)
    tc = client(app)
    for _ in range(2):
        with tc.websocket_connect("/ws") as conn:
            conn.send_text("ok")
            assert conn.receive_text() == "echo ok"
    with pytest.raises(WebSocketDenialResponse) as denied, tc.websocket_connect("/ws"):
        pass
    response = denied.value
    assert response.status_code == 429
    assert response.headers["retry-after"] == "30"
    assert response.json()["status"] == 429
    # Another client connects.
    with client(app, "203.0.113.8").websocket_connect("/ws") as conn:
        conn.send_text("ok")
        assert conn.receive_text() == "echo ok"
    clock.advance(30)
    with tc.websocket_connect("/ws"):
        pass


async def test_refusal_without_the_extension_closes_before_accept() -> None:
    """A server without the denial extension gets websocket.close before
    any accept: per the ASGI spec it answers the handshake 403."""
    calls: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        calls.append(scope)

    ws = WebSocketLimit(connections="1/minute")
    mw = RateLimitMiddleware(app, websocket=ws)
    scope = {
        "type": "websocket",
        "path": "/ws",
        "headers": [],
        "client": ("192.0.2.1", 1),
    }
    for expect_app in (True, False):
        sent: list[Any] = []
        inbox = [{"type": "websocket.connect"}]

        async def receive(inbox: list[Any] = inbox) -> Any:
            return inbox.pop(0)

        async def send(message: Any, sent: list[Any] = sent) -> None:
            sent.append(message)

        await mw(dict(scope), receive, send)
        assert len(calls) == 1
        if not expect_app:
            assert sent == [
                {
                    "type": "websocket.close",
                    "code": 1008,
                    "reason": "rate limit exceeded",
                }
            ]


def test_http_limit_and_websocket_limit_together(clock: FakeClock) -> None:
    async def home(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    echo = Echo()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            await home(scope, receive, send)
        else:
            await echo.app(scope, receive, send)

    ws = WebSocketLimit("1/minute", clock=clock)
    mw = RateLimitMiddleware(app, limit="1/minute", clock=clock, websocket=ws)
    tc = client(mw)
    assert tc.get("/").status_code == 200
    assert tc.get("/").status_code == 429
    with tc.websocket_connect("/ws") as conn:  # not the HTTP budget
        conn.send_text("a")
        assert conn.receive_text() == "echo a"
    # Without a websocket limit, websockets pass as before.
    plain = client(RateLimitMiddleware(app, limit="1/minute", clock=clock))
    with plain.websocket_connect("/ws") as conn:
        for _ in range(3):
            conn.send_text("b")
            assert conn.receive_text() == "echo b"
    # With the websocket limit alone, HTTP is not limited.
    alone = client(RateLimitMiddleware(app, websocket=WebSocketLimit("1/minute")))
    assert [alone.get("/").status_code for _ in range(3)] == [200] * 3


# -- FastAPI ---------------------------------------------------------------------


def fastapi_echo(dep: WebSocketRateLimit) -> tuple[FastAPI, list[str]]:
    app = FastAPI()
    received: list[str] = []

    @app.websocket("/ws", dependencies=[Depends(dep)])
    async def ws(websocket: WebSocket) -> None:
        await websocket.accept()
        try:
            while True:
                text = await websocket.receive_text()
                received.append(text)
                await websocket.send_text("echo " + text)
        except WebSocketDisconnect:
            pass

    return app, received


def test_fastapi_dependency_messages_and_connections(clock: FakeClock) -> None:
    dep = WebSocketRateLimit(
        "2/minute", connections="2/minute", reason="too chatty", clock=clock
    )
    app, received = fastapi_echo(dep)
    tc = client(app)
    with tc.websocket_connect("/ws") as conn:
        for t in ("a", "b"):
            conn.send_text(t)
            assert conn.receive_text() == "echo " + t
        conn.send_text("c")
        with pytest.raises(WebSocketDisconnect) as closed:
            conn.receive_text()
    assert (closed.value.code, closed.value.reason) == (1008, "too chatty")
    assert received == ["a", "b"]
    with tc.websocket_connect("/ws"):
        pass
    # The third attempt is refused before accept.
    with pytest.raises(WebSocketDisconnect) as refused, tc.websocket_connect("/ws"):
        pass
    assert refused.value.code == 1008
    assert dep.limit.connection_limiter is not None
    assert dep.limit.connection_limiter.stats()["keys"] == 0


def test_fastapi_dependency_drop(clock: FakeClock) -> None:
    dep = WebSocketRateLimit("1/minute", action="drop", error_frame="slow", clock=clock)
    app, received = fastapi_echo(dep)
    with client(app).websocket_connect("/ws") as conn:
        conn.send_text("a")
        assert conn.receive_text() == "echo a"
        conn.send_text("b")
        assert conn.receive_text() == "slow"
        clock.advance(60)
        conn.send_text("c")
        assert conn.receive_text() == "echo c"
    assert received == ["a", "c"]


def test_fastapi_dependency_shares_a_websocket_limit() -> None:
    shared = WebSocketLimit(per_client="1/minute")
    dep = WebSocketRateLimit(shared)
    assert dep.limit is shared
    with pytest.raises(ValueError, match="not both"):
        WebSocketRateLimit(shared, action="drop")


# -- settings ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        ({}, "messages"),
        ({"messages": "1/second", "action": "ignore"}, "action"),
        ({"messages": "1/second", "reason": "x" * 124}, "reason"),
        ({"messages": "1/second", "reason": 5}, "reason"),
        ({"messages": "1/second", "error_frame": True}, "error_frame"),
        ({"messages": "1/second", "action": "drop", "error_frame": 3}, "error_frame"),
        ({"messages": "1/second", "dry_run": "yes"}, "dry_run"),
        ({"messages": "1/second", "scope": ""}, "scope"),
        ({"messages": "1/fortnight"}, "fortnight"),
        ({"per_client": "1/second", "trusted_proxies": ["nonsense"]}, "nonsense"),
    ],
)
def test_bad_settings_are_refused(settings: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        WebSocketLimit(**settings)


def test_bad_websocket_argument() -> None:
    with pytest.raises(TypeError, match="WebSocketLimit"):
        RateLimitMiddleware(Echo().app, websocket="10/second")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="headers"):
        RateLimitMiddleware(
            Echo().app, websocket=WebSocketLimit("1/second"), headers=[]
        )
    with pytest.raises(SettingError):
        WebSocketLimit("1/second", unidentified="maybe")


def test_dry_run_counts_and_lets_through(clock: FakeClock) -> None:
    echo = Echo()
    ws = WebSocketLimit(
        "1/minute",
        per_client="1/minute",
        connections="1/minute",
        dry_run=True,
        clock=clock,
    )
    app = RateLimitMiddleware(echo.app, websocket=ws)
    for _ in range(2):
        with client(app).websocket_connect("/ws") as conn:
            for t in ("a", "b"):
                conn.send_text(t)
                assert conn.receive_text() == "echo " + t
    assert echo.received == ["a", "b"] * 2
    # Connection 2 refused; messages: conn 1's 2nd (connection limit and
    # client limit are checked in that order, and a dry run goes on),
    # and each later message over the client's budget.
    assert ws.dry_run_denials >= 4


# -- memory ------------------------------------------------------------------------


async def _flood(app: Any, n: int) -> int:
    """Send ``n`` text messages through ``app`` on one connection; the
    number the app got."""
    got = 0
    pending: list[dict[str, Any]] = [{"type": "websocket.connect"}]
    pending += [{"type": "websocket.receive", "text": "x" * 32} for _ in range(n)]
    pending.append({"type": "websocket.disconnect", "code": 1000})
    it = iter(pending)

    async def receive() -> Any:
        return next(it)

    async def send(message: Any) -> None:
        pass

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        nonlocal got
        assert (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.accept"})
        while (await receive())["type"] == "websocket.receive":
            got += 1

    scope = {
        "type": "websocket",
        "path": "/ws",
        "headers": [],
        "client": ("192.0.2.1", 1),
    }
    await RateLimitMiddleware(inner, websocket=app)(scope, receive, send)
    return got


async def test_memory_bounded_under_floods_and_many_connections() -> None:
    ws = WebSocketLimit(
        "10/minute", per_client="100/minute", action="drop", error_frame=True
    )
    assert await _flood(ws, 50_000) == 10  # a flood is stopped
    tracemalloc.start()
    try:
        await _flood(ws, 1000)
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        await _flood(ws, 50_000)
        for _ in range(2000):  # many short connections
            await _flood(ws, 1)
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert after - before < 64 * 1024
    assert ws.connection_limiter is not None
    assert ws.connection_limiter.stats()["keys"] == 0


# -- a real server and a real client -----------------------------------------------


def _served(limit: WebSocketLimit) -> tuple[Served, Echo]:
    echo = Echo()
    return Served(RateLimitMiddleware(echo.app, websocket=limit)).start(), echo


def test_uvicorn_close_code_reason_and_flood() -> None:
    limit = WebSocketLimit(
        "20/minute", per_client="1000/minute", reason="flood", key=api_key_header
    )
    served, echo = _served(limit)
    url = served.url.replace("http", "ws") + "/ws"

    async def scenario() -> tuple[Any, int, list[Any]]:
        async with websockets.connect(
            url, additional_headers={"x-api-key": "flooder"}
        ) as flooder:
            # A flood: 500 messages without waiting for replies.
            for i in range(500):
                try:
                    await flooder.send(f"m{i}")
                except websockets.ConnectionClosed:
                    break
            with pytest.raises(websockets.ConnectionClosed) as closed:
                while True:
                    await asyncio.wait_for(flooder.recv(), 5)
            flood_close = closed.value
        # Another client, meanwhile, is served as usual.
        async with websockets.connect(
            url, additional_headers={"x-api-key": "calm"}
        ) as calm:
            replies = []
            for i in range(5):
                await calm.send(f"c{i}")
                replies.append(await asyncio.wait_for(calm.recv(), 5))
        return flood_close, len(echo.received), replies

    try:
        closed, reached, replies = asyncio.run(scenario())
    finally:
        served.stop()
    assert closed.rcvd is not None
    assert (closed.rcvd.code, closed.rcvd.reason) == (1008, "flood")
    assert reached == 20 + 5  # the flood stopped at the connection's budget
    assert replies == [f"echo c{i}" for i in range(5)]


def test_uvicorn_refuses_connection_attempts_with_429() -> None:
    served, _ = _served(WebSocketLimit(connections="2/minute"))
    url = served.url.replace("http", "ws") + "/ws"

    async def scenario() -> Any:
        for _ in range(2):
            async with websockets.connect(url) as conn:
                await conn.send("hi")
                assert await asyncio.wait_for(conn.recv(), 5) == "echo hi"
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with websockets.connect(url):
                pass
        return refused.value.response

    try:
        response = asyncio.run(scenario())
    finally:
        served.stop()
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "30"
    assert json.loads(response.body)["status"] == 429


def test_uvicorn_without_the_extension_answers_403() -> None:
    """A server that offers no denial extension: the refusal is a close
    before accept, which uvicorn answers 403."""
    echo = Echo()
    mw = RateLimitMiddleware(echo.app, websocket=WebSocketLimit(connections="1/minute"))

    async def plain_server(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "websocket":
            scope = {**scope, "extensions": {}}
        await mw(scope, receive, send)

    served = Served(plain_server).start()
    url = served.url.replace("http", "ws") + "/ws"

    async def scenario() -> Any:
        async with websockets.connect(url) as conn:
            await conn.send("hi")
            assert await asyncio.wait_for(conn.recv(), 5) == "echo hi"
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with websockets.connect(url):
                pass
        return refused.value.response

    try:
        response = asyncio.run(scenario())
    finally:
        served.stop()
    assert response.status_code == 403


def test_exempt_paths(clock: FakeClock) -> None:
    async def ws(websocket: WebSocket) -> None:
        await websocket.accept()
        try:
            while True:
                await websocket.send_text(await websocket.receive_text())
        except WebSocketDisconnect:
            pass

    app = Starlette(routes=[WebSocketRoute("/ws", ws), WebSocketRoute("/free/ws", ws)])
    limit = WebSocketLimit(
        "1/minute", connections="1/minute", exempt_paths=["/free/*"], clock=clock
    )
    tc = client(RateLimitMiddleware(app, websocket=limit))
    for _ in range(3):
        with tc.websocket_connect("/free/ws") as conn:
            for _ in range(3):
                conn.send_text("x")
                assert conn.receive_text() == "x"
    with tc.websocket_connect("/ws") as conn:
        conn.send_text("x")
        assert conn.receive_text() == "x"
        conn.send_text("y")
        with pytest.raises(WebSocketDisconnect):
            conn.receive_text()
    with pytest.raises(WebSocketDenialResponse), tc.websocket_connect("/ws"):
        pass
    dep = WebSocketRateLimit("1/minute", exempt_paths=["/ws"], clock=clock)
    fapp, received = fastapi_echo(dep)
    with client(fapp).websocket_connect("/ws") as conn:
        for t in "abc":
            conn.send_text(t)
            assert conn.receive_text() == "echo " + t
    assert received == ["a", "b", "c"]
    with pytest.raises(ValueError, match="exempt_paths"):
        WebSocketLimit("1/minute", exempt_paths=[""])


def test_per_client_budget_in_a_shared_storage(memcached_server: Any) -> None:
    """Two app instances (two workers) with the client's budget in
    Memcached: a client's connections to either share it."""
    from stanchion.memcached import MemcachedStorage

    storage = MemcachedStorage(
        memcached_server.url, prefix=f"ws{uuid.uuid4().hex[:8]}:"
    )
    try:
        workers = [
            RateLimitMiddleware(
                Echo().app,
                websocket=WebSocketLimit(per_client="3/minute", storage=storage),
            )
            for _ in range(2)
        ]
        with (
            client(workers[0]).websocket_connect("/ws") as a,
            client(workers[1]).websocket_connect("/ws") as b,
        ):
            for conn in (a, b, a):
                conn.send_text("x")
                assert conn.receive_text() == "echo x"
            b.send_text("fourth")
            with pytest.raises(WebSocketDisconnect) as closed:
                b.receive_text()
            assert closed.value.code == 1008
        with client(workers[0], "203.0.113.99").websocket_connect("/ws") as other:
            other.send_text("y")
            assert other.receive_text() == "echo y"
    finally:
        storage.close()
