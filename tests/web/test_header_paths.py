"""The C fast path (``Rule.gate``: the hit and the headers rendered in C)
sends byte for byte what the Python path sends, in every adapter: the
same requests, on the same fake clock, once through each path. The header
lists are compared whole (names, values, order, duplicates), with the
app's own rate limit headers in play (an inner layer)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from fastapi import Depends, FastAPI
from fastapi.responses import PlainTextResponse
from flask import Blueprint, Flask
from werkzeug.test import Client as WerkzeugClient

import stanchion.http.rule
from stanchion.asgi import RateLimitMiddleware as AsgiMiddleware
from stanchion.fastapi import RateLimit, limit
from stanchion.flask import Stanchion
from stanchion.http import LimiterCache
from stanchion.wsgi import RateLimitMiddleware as WsgiMiddleware

from ..conftest import FakeClock

PEERS = ("203.0.113.7", "2001:db8::1", "198.51.100.9")
RATES = "3/minute;5/hour"
#: An inner layer's headers, which the outer one must merge with.
INNER = [
    ("RateLimit-Policy", '"inner";q=9;w=1'),
    ("RateLimit", '"inner";r=8;t=1'),
    ("X-RateLimit-Limit", "9"),
    ("X-RateLimit-Remaining", "8"),
    ("X-RateLimit-Reset", "1"),
]

Run = Callable[[str, str], tuple[int, list[tuple[str, str]]]]


def script(run: Run, clock: FakeClock, paths: tuple[str, ...]) -> list[Any]:
    """Requests from several clients to a plain and an inner-headed path,
    over time: allowed, refused, allowed again."""
    out = []
    for step in range(9):
        for peer in PEERS:
            for path in paths:
                out.append((step, peer, path, *run(peer, path)))
        clock.advance(13 if step % 3 else 0.4)
    return out


def both_paths(
    monkeypatch: pytest.MonkeyPatch,
    build: Callable[[FakeClock], Run],
    paths: tuple[str, ...] = ("/plain", "/inner"),
) -> tuple[list[Any], list[Any]]:
    """The script through the gate, then with rules built without one."""
    with monkeypatch.context() as m:
        calls = counting_gates(m)
        clock = FakeClock()
        fast = script(build(clock), clock, paths)
        # Most hits went through a gate: the first run is the fast path.
        assert len(calls) > len(fast) // 2
    with monkeypatch.context() as m:
        m.setattr(stanchion.http.rule, "Gate", lambda *a: None)
        clock = FakeClock()
        slow = script(build(clock), clock, paths)
    return fast, slow


def counting_gates(m: pytest.MonkeyPatch) -> list[Any]:
    """Rules built from now on get gates that record their calls."""
    calls: list[Any] = []
    real = stanchion.http.rule.Gate

    def make(*args: Any) -> Any:
        gate = real(*args)

        def counted(peer: Any) -> Any:
            calls.append(peer)
            return gate(peer)

        return counted

    m.setattr(stanchion.http.rule, "Gate", make)
    return calls


def check(fast: list[Any], slow: list[Any]) -> None:
    assert fast == slow
    statuses = [row[3] for row in fast]
    assert 200 in statuses and 429 in statuses
    # The headers are there to compare: every answer carries RateLimit.
    assert all(any(k.lower() == "ratelimit" for k, _ in row[4]) for row in fast)


def only_headers(pairs: Any) -> list[tuple[str, str]]:
    skip = {"content-length", "content-type", "date", "server"}
    return [(k, v) for k, v in pairs if k.lower() not in skip]


# -- ASGI and FastAPI ---------------------------------------------------------------


def asgi_run(app: Any) -> Run:
    def run(peer: str, path: str) -> tuple[int, list[tuple[str, str]]]:
        async def go() -> httpx.Response:
            transport = httpx.ASGITransport(app=app, client=(peer, 40000))
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
                return await c.get(path)

        r = asyncio.run(go())
        return r.status_code, only_headers(r.headers.multi_items())

    return run


async def raw_app(scope: Any, receive: Any, send: Any) -> None:
    headers = [(b"content-type", b"text/plain")]
    if scope["path"] == "/inner":
        headers += [(k.lower().encode(), v.encode()) for k, v in INNER]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b"ok"})


def test_asgi_middleware(monkeypatch: pytest.MonkeyPatch) -> None:
    def build(clock: FakeClock) -> Run:
        return asgi_run(AsgiMiddleware(raw_app, limit=RATES, clock=clock))

    check(*both_paths(monkeypatch, build))


def fastapi_app(clock: FakeClock) -> FastAPI:
    cache = LimiterCache(clock=clock)
    app = FastAPI()

    @app.get("/plain")
    @limit("4/minute", limiters=cache)
    def plain() -> str:
        return "ok"

    @app.get("/inner", dependencies=[Depends(RateLimit("4/minute", limiters=cache))])
    def inner() -> PlainTextResponse:
        return PlainTextResponse("ok", headers=dict(INNER))

    app.add_middleware(AsgiMiddleware, limit=RATES, clock=clock)
    return app


def test_fastapi_middleware_decorator_and_dependency(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    check(*both_paths(monkeypatch, lambda clock: asgi_run(fastapi_app(clock))))


# -- WSGI and Flask -----------------------------------------------------------------


def wsgi_run(app: Any) -> Run:
    def run(peer: str, path: str) -> tuple[int, list[tuple[str, str]]]:
        r = WerkzeugClient(app).get(path, environ_base={"REMOTE_ADDR": peer})
        return r.status_code, only_headers(r.headers.to_wsgi_list())

    return run


def raw_wsgi(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    headers = [("Content-Type", "text/plain")]
    if environ["PATH_INFO"] == "/inner":
        headers += INNER
    start_response("200 OK", headers)
    return [b"ok"]


def test_wsgi_middleware(monkeypatch: pytest.MonkeyPatch) -> None:
    def build(clock: FakeClock) -> Run:
        return wsgi_run(WsgiMiddleware(raw_wsgi, limit=RATES, clock=clock))

    check(*both_paths(monkeypatch, build))


def flask_app(clock: FakeClock) -> Flask:
    app = Flask("paths")
    app.config.update(STANCHION_DEFAULT_LIMIT=RATES)
    ext = Stanchion(clock=clock)

    @app.get("/plain")
    def plain() -> str:
        return "ok"

    @app.get("/inner")
    @ext.limit("4/minute")
    def inner() -> Any:
        return "ok", 200, INNER

    # Two rules on one request: the view's and its blueprint's.
    bp = Blueprint("bp", "paths", url_prefix="/bp")

    @bp.get("/both")
    @ext.limit("5/minute")
    def both() -> str:
        return "ok"

    ext.limit_blueprint(bp, "4/minute;6/hour")
    app.register_blueprint(bp)
    ext.init_app(app)
    return app


def test_flask_default_view_and_blueprint_limits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fast, slow = both_paths(
        monkeypatch,
        lambda clock: wsgi_run(flask_app(clock)),
        ("/plain", "/inner", "/bp/both"),
    )
    check(fast, slow)
    both = [row[4] for row in fast if row[2] == "/bp/both" and row[3] == 200]
    assert len(both) >= 3
    # Both rules' RateLimit fields, one X-RateLimit-* trio (the view's).
    assert all(sum(k == "RateLimit" for k, _ in h) == 2 for h in both)
    assert all(sum(k == "X-RateLimit-Limit" for k, _ in h) == 1 for h in both)
