"""Cookies set outside the cached layer: Flask's session and Django's
Session/CSRF middleware add a visitor's cookie after the cache saw the
page, so a page that used them is never stored (nor replayed to the next
visitor). Real Flask and Django apps and their test clients."""

from __future__ import annotations

import asyncio
import io
import itertools
import secrets
from typing import Any

import pytest
from django.core import checks
from django.core.management import call_command
from django.http import HttpRequest, HttpResponse
from django.middleware.csrf import get_token
from django.test import AsyncClient, Client, override_settings
from django.urls import path
from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse
from flask import Flask, session
from starlette.middleware.sessions import SessionMiddleware
from werkzeug.test import Client as WerkzeugClient

from stanchion.asgi import CacheMiddleware as AsgiCacheMiddleware
from stanchion.django import cache_response
from stanchion.fastapi import cache
from stanchion.flask import Stanchion
from stanchion.wsgi import CacheMiddleware as WsgiCacheMiddleware

from ._respcache_apps import _django_ready

_django_ready()

# ---------------------------------------------------------------------------
# Flask: ext.cache on the view, or the WSGI CacheMiddleware in front of it
# ---------------------------------------------------------------------------


def flask_app(where: str) -> tuple[Flask, Any]:
    app = Flask(__name__)
    app.secret_key = "tests-only"
    ext = Stanchion(app)
    count = itertools.count(1)
    on_view = ext.cache(ttl=60) if where == "view" else (lambda f: f)

    @app.route("/read")
    @on_view
    def read() -> str:
        return f"read {session.get('user')} #{next(count)}"

    @app.route("/write")
    @on_view
    def write() -> str:
        session["csrf"] = token = secrets.token_hex(8)
        return token

    @app.route("/plain")
    @on_view
    def plain() -> str:
        return f"plain #{next(count)}"

    if where == "front":
        app.wsgi_app = WsgiCacheMiddleware(app.wsgi_app, ttl=60)  # type: ignore[method-assign]
    return app, app.view_functions


@pytest.mark.parametrize("where", ["view", "front"])
@pytest.mark.parametrize("url", ["/read", "/write"])
def test_flask_session_pages_never_stored(where: str, url: str) -> None:
    app, _ = flask_app(where)
    # A fresh visitor each time: no cookie is sent back.
    client = WerkzeugClient(app, use_cookies=False)
    a, b = client.get(url), client.get(url)
    assert "Cookie" in a.headers.get("Vary", "")
    assert a.get_data() != b.get_data()  # b never got a's page (or token)
    assert (a.headers["X-Cache"], b.headers["X-Cache"]) == ("MISS", "MISS")
    if url == "/write":
        assert a.headers.get("Set-Cookie", "").startswith("session=")


@pytest.mark.parametrize("where", ["view", "front"])
def test_flask_pages_without_session_still_cached(where: str) -> None:
    app, _ = flask_app(where)
    client = WerkzeugClient(app, use_cookies=False)
    a, b = client.get("/plain"), client.get("/plain")
    assert (a.headers["X-Cache"], b.headers["X-Cache"]) == ("MISS", "HIT")
    assert a.get_data() == b.get_data()


# ---------------------------------------------------------------------------
# Django: cache_response and CacheMiddleware with the real Session and CSRF
# middleware, through Django's test clients (WSGI and ASGI handlers)
# ---------------------------------------------------------------------------

SESSION = "django.contrib.sessions.middleware.SessionMiddleware"
CSRF = "django.middleware.csrf.CsrfViewMiddleware"
AUTH = "django.contrib.auth.middleware.AuthenticationMiddleware"
CACHE = "stanchion.django.CacheMiddleware"
counter = itertools.count(1)


def csrf_page(request: HttpRequest) -> HttpResponse:
    return HttpResponse(f"<input name=csrf value={get_token(request)}>")


def session_page(request: HttpRequest) -> HttpResponse:
    return HttpResponse(f"hello {request.session.get('user')} #{next(counter)}")


def session_write(request: HttpRequest) -> HttpResponse:
    request.session["nonce"] = nonce = secrets.token_hex(8)
    return HttpResponse(nonce)


def plain_page(request: HttpRequest) -> HttpResponse:
    return HttpResponse(f"plain #{next(counter)}")


VIEWS = {
    "csrf": csrf_page,
    "session": session_page,
    "write": session_write,
    "plain": plain_page,
}
DECORATED = {name: cache_response(ttl=60)(view) for name, view in VIEWS.items()}
urlpatterns = [path(f"m/{n}", v) for n, v in VIEWS.items()] + [
    path(f"d/{n}", v) for n, v in DECORATED.items()
]


def django_settings(middleware: list[str]) -> Any:
    return override_settings(
        ROOT_URLCONF=__name__,
        MIDDLEWARE=middleware,
        SESSION_ENGINE="django.contrib.sessions.backends.signed_cookies",
        STANCHION_RESPONSE_CACHE={"ttl": 60},
    )


def two_visitors(url: str, mode: str) -> list[Any]:
    """Two GETs by two visitors (the second sends no cookie), through one
    client so one middleware chain (one cache) serves both."""
    if mode == "wsgi":
        c = Client()
        first = c.get(url)
        c.cookies.clear()
        return [first, c.get(url)]

    async def go() -> list[Any]:
        ac = AsyncClient()
        first = await ac.get(url)
        ac.cookies.clear()
        return [first, await ac.get(url)]

    return asyncio.run(go())


STACKS = {
    "decorator": [SESSION, CSRF],
    "cache-inside": [SESSION, CSRF, CACHE],
    "cache-outside": [CACHE, SESSION, CSRF],
}


@pytest.mark.parametrize("mode", ["wsgi", "asgi"])
@pytest.mark.parametrize("stack", sorted(STACKS))
@pytest.mark.parametrize("page", ["csrf", "session", "write"])
def test_django_visitor_pages_never_stored(mode: str, stack: str, page: str) -> None:
    for view in DECORATED.values():
        view.cache.clear()  # type: ignore[attr-defined]
    prefix = "/d/" if stack == "decorator" else "/m/"
    with django_settings(STACKS[stack]):
        a, b = two_visitors(prefix + page, mode)
    assert a.content != b.content  # b never got a's token, nonce or page
    assert (a["X-Cache"], b["X-Cache"]) == ("MISS", "MISS")


@pytest.mark.parametrize("mode", ["wsgi", "asgi"])
@pytest.mark.parametrize("stack", sorted(STACKS))
def test_django_plain_pages_still_cached(mode: str, stack: str) -> None:
    for view in DECORATED.values():
        view.cache.clear()  # type: ignore[attr-defined]
    prefix = "/d/" if stack == "decorator" else "/m/"
    with django_settings(STACKS[stack]):
        a, b = two_visitors(prefix + "plain", mode)
    assert (a["X-Cache"], b["X-Cache"]) == ("MISS", "HIT")
    assert a.content == b.content


class MySessionMiddleware:  # a project's own subclass counts too
    pass


def _subclass() -> str:
    from django.contrib.sessions.middleware import SessionMiddleware

    global MySessionMiddleware
    MySessionMiddleware = type("MySessionMiddleware", (SessionMiddleware,), {})  # type: ignore[misc]
    MySessionMiddleware.__module__ = __name__
    return f"{__name__}.MySessionMiddleware"


@pytest.mark.parametrize(
    ("middleware", "outer"),
    [
        ([SESSION, CSRF, CACHE], [SESSION, CSRF]),
        ([AUTH, CACHE], [AUTH]),
        ([CACHE, SESSION, CSRF, AUTH], []),
        ([SESSION, CSRF], []),
        (["subclass", CACHE], ["subclass"]),
    ],
)
def test_check_warns_when_cache_sits_inside(
    middleware: list[str], outer: list[str]
) -> None:
    sub = _subclass()
    middleware = [sub if m == "subclass" else m for m in middleware]
    outer = [sub if m == "subclass" else m for m in outer]
    with override_settings(MIDDLEWARE=middleware):
        found = [m for m in checks.run_checks() if m.id == "stanchion.W001"]
        err = io.StringIO()
        call_command("check", stdout=io.StringIO(), stderr=err)
    if not outer:
        assert found == [] and "stanchion.W001" not in err.getvalue()
        return
    assert len(found) == 1 and found[0].level == checks.WARNING
    assert all(name in found[0].msg for name in outer)
    assert "stanchion.W001" in err.getvalue()


# ---------------------------------------------------------------------------
# The WSGI CacheMiddleware around Django's WSGI handler: an HttpResponse
# is a whole body (stored), a StreamingHttpResponse a stream (passed on)
# ---------------------------------------------------------------------------


def streamed_page(request: HttpRequest) -> Any:
    from django.http import StreamingHttpResponse

    return StreamingHttpResponse(iter([b"part 1 ", f"#{next(counter)}".encode()]))


urlpatterns.append(path("streamed", streamed_page))


def test_wsgi_middleware_around_django() -> None:
    from django.core.handlers.wsgi import WSGIHandler

    with django_settings([]):
        client = WerkzeugClient(WsgiCacheMiddleware(WSGIHandler(), ttl=60))
        plain = [client.get("/m/plain") for _ in range(2)]
        streamed = [client.get("/streamed") for _ in range(2)]
    assert [r.headers["X-Cache"] for r in plain] == ["MISS", "HIT"]
    assert plain[0].get_data() == plain[1].get_data()
    assert [r.headers["X-Cache"] for r in streamed] == ["MISS", "MISS"]
    assert streamed[0].get_data() != streamed[1].get_data()


# ---------------------------------------------------------------------------
# Starlette's SessionMiddleware outside FastAPI's @cache or the ASGI
# CacheMiddleware: it sets its cookie after the cache saw the page
# ---------------------------------------------------------------------------


def starlette_app(where: str) -> Any:
    app = FastAPI()
    count = itertools.count(1)
    on_view = cache(ttl=60) if where == "view" else (lambda f: f)

    @app.get("/write")
    @on_view
    async def write(request: Request) -> PlainTextResponse:
        token = request.session.setdefault("csrf", secrets.token_hex(8))
        return PlainTextResponse(token)

    @app.get("/plain")
    @on_view
    async def plain(request: Request) -> PlainTextResponse:
        return PlainTextResponse(f"plain {request.session.get('user')} #{next(count)}")

    if where == "front":  # inside SessionMiddleware (added last: outermost)
        app.add_middleware(AsgiCacheMiddleware, ttl=60)
    app.add_middleware(SessionMiddleware, secret_key="tests-only")
    return app


def _asgi_gets(app: Any, url: str, n: int) -> list[Any]:
    import httpx

    async def go() -> list[Any]:
        out = []
        for _ in range(n):  # a fresh visitor each time: no cookie sent back
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(
                transport=transport, base_url="http://test"
            ) as c:
                out.append(await c.get(url))
        return out

    return asyncio.run(go())


@pytest.mark.parametrize("where", ["view", "front"])
def test_starlette_session_pages_never_stored(where: str) -> None:
    a, b = _asgi_gets(starlette_app(where), "/write", 2)
    assert a.headers["set-cookie"].startswith("session=")
    assert a.text != b.text  # b never got a's token
    assert (a.headers["x-cache"], b.headers["x-cache"]) == ("MISS", "MISS")
    assert b.headers["set-cookie"].startswith("session=")


@pytest.mark.parametrize("where", ["view", "front"])
def test_starlette_pages_without_session_still_cached(where: str) -> None:
    a, b = _asgi_gets(starlette_app(where), "/plain", 2)
    assert (a.headers["x-cache"], b.headers["x-cache"]) == ("MISS", "HIT")
    assert a.text == b.text == "plain None #1"
