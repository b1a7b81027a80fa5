"""One set of endpoints served by every response-cache adapter, so the
same tests check the same rules through each framework.

``behave`` is the whole app logic; each adapter wraps it in its
framework's own request/response types, under its own cache (middleware
or decorator), and counts the calls that reached the endpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import httpx
from fastapi import Request as FastApiRequest
from fastapi.responses import Response as FastApiResponse

from stanchion.wsgi import status_line

BIG = 2000  # /big answers this many bytes; tests set max_body=1000


class Upstream:
    """What the endpoints do, and how often each was reached."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.fail = False
        self.lock = threading.Lock()

    def behave(
        self, path: str, headers: Callable[[str], str | None]
    ) -> tuple[int, list[tuple[str, str]], list[bytes]]:
        name = path.strip("/").split("/")[0]
        with self.lock:
            self.calls[name] += 1
            n = self.calls[name]
        text = "text/plain"
        h = [("Content-Type", text)]
        if name == "status":
            code = int(path.rsplit("/", 1)[1])
            return code, h, [f"status {code} #{n}".encode()]
        if name == "cookie":
            return 200, [*h, ("Set-Cookie", "sid=abc")], [f"cookie #{n}".encode()]
        if name == "private":
            return 200, [*h, ("Cache-Control", "private")], [f"private #{n}".encode()]
        if name == "nostore":
            return 200, [*h, ("Cache-Control", "no-store")], [f"nostore #{n}".encode()]
        if name == "vary":
            lang = headers("accept-language") or "-"
            return (
                200,
                [*h, ("Vary", "Accept-Language")],
                [f"vary {lang} #{n}".encode()],
            )
        if name == "varystar":
            return 200, [*h, ("Vary", "*")], [f"varystar #{n}".encode()]
        if name in ("user", "uservary"):
            who = f"{headers('authorization')}|{headers('cookie')}"
            extra = [("Vary", "Authorization, Cookie")] if name == "uservary" else []
            return 200, [*h, *extra], [f"user {who} #{n}".encode()]
        if name == "big":
            return 200, h, [b"x" * (BIG // 4)] * 4
        if name == "flaky":
            if self.fail:
                return 500, h, [b"down"]
            return 200, h, [f"flaky #{n}".encode()]
        if name == "slow":
            time.sleep(0.05)
            return 200, h, [f"slow #{n}".encode()]
        return 200, h, [f"{name} #{n}".encode()]


class Response:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        self.text = body.decode()

    @property
    def x_cache(self) -> str | None:
        return self.headers.get("x-cache")


class Harness:
    """An adapter's app, its upstream counts and its ResponseCache."""

    name = ""
    upstream: Upstream
    cache: Any

    def request(
        self, method: str, url: str, headers: dict[str, str] | None = None
    ) -> Response:
        raise NotImplementedError

    def get(self, url: str, headers: dict[str, str] | None = None) -> Response:
        return self.request("GET", url, headers)

    def close(self) -> None:
        self.cache.close()

    def head(self, url: str, headers: dict[str, str] | None = None) -> Response:
        return self.request("HEAD", url, headers)

    def many(self, url: str, n: int) -> list[Response]:
        """``n`` concurrent GETs."""
        out: list[Response] = []
        threads = [
            threading.Thread(target=lambda: out.append(self.get(url))) for _ in range(n)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return out


# ---------------------------------------------------------------------------
# ASGI adapters (driven through httpx's ASGI transport)
# ---------------------------------------------------------------------------


class AsgiHarness(Harness):
    app: Any

    async def arequest(
        self,
        client: httpx.AsyncClient,
        method: str,
        url: str,
        headers: dict[str, str] | None,
    ) -> Response:
        r = await client.request(method, url, headers=headers)
        return Response(
            r.status_code, {k.lower(): v for k, v in r.headers.items()}, r.content
        )

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app, client=("203.0.113.1", 4000)),
            base_url="http://test",
        )

    def request(
        self, method: str, url: str, headers: dict[str, str] | None = None
    ) -> Response:
        async def go() -> Response:
            try:
                async with self.client() as c:
                    return await self.arequest(c, method, url, headers)
            finally:
                # Each asyncio.run is a new loop: its backend connections
                # close with it, as a lifespan shutdown would close them.
                await self.cache.aclose()

        return asyncio.run(go())

    def many(self, url: str, n: int) -> list[Response]:
        async def go() -> list[Response]:
            try:
                async with self.client() as c:
                    return list(
                        await asyncio.gather(
                            *(self.arequest(c, "GET", url, None) for _ in range(n))
                        )
                    )
            finally:
                await self.cache.aclose()

        return asyncio.run(go())


async def _asgi_behave(up: Upstream, scope: Any, send: Any) -> None:
    hdrs = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
    if scope["path"].startswith("/slow"):
        with up.lock:
            up.calls["slow"] += 1
            n = up.calls["slow"]
        await asyncio.sleep(0.05)
        status, headers, chunks = (
            200,
            [("Content-Type", "text/plain")],
            [f"slow #{n}".encode()],
        )
    else:
        status, headers, chunks = up.behave(scope["path"], hdrs.get)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(k.lower().encode(), v.encode()) for k, v in headers],
        }
    )
    for i, chunk in enumerate(chunks):
        await send(
            {
                "type": "http.response.body",
                "body": chunk,
                "more_body": i < len(chunks) - 1,
            }
        )


class AsgiMiddlewareHarness(AsgiHarness):
    name = "asgi"

    def __init__(self, **opts: Any) -> None:
        from stanchion.asgi import CacheMiddleware

        self.upstream = up = Upstream()

        async def app(scope: Any, receive: Any, send: Any) -> None:
            await _asgi_behave(up, scope, send)

        self.app = self.middleware = CacheMiddleware(app, **opts)
        self.cache = self.middleware.cache


class FastApiHarness(AsgiHarness):
    name = "fastapi"

    def __init__(self, **opts: Any) -> None:
        from fastapi import FastAPI

        from stanchion.fastapi import cache

        self.upstream = up = Upstream()
        app = FastAPI()

        @app.api_route("/{rest:path}", methods=["GET", "HEAD", "POST"])
        @cache(**opts)
        async def endpoint(rest: str, request: FastApiRequest) -> FastApiResponse:
            if rest.startswith("slow"):
                with up.lock:
                    up.calls["slow"] += 1
                    n = up.calls["slow"]
                await asyncio.sleep(0.05)
                return FastApiResponse(f"slow #{n}".encode(), media_type="text/plain")
            status, headers, chunks = up.behave("/" + rest, request.headers.get)
            out = FastApiResponse(b"".join(chunks), status_code=status)
            for k, v in headers:
                out.headers.append(k, v)
            return out

        self.app = app
        self.cache = endpoint.cache  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------
# WSGI adapters (driven through werkzeug's test client)
# ---------------------------------------------------------------------------


class WsgiHarness(Harness):
    app: Any

    def request(
        self, method: str, url: str, headers: dict[str, str] | None = None
    ) -> Response:
        from werkzeug.test import Client

        r = Client(self.app, use_cookies=False).open(
            url, method=method, headers=headers or {}
        )
        body = r.get_data()
        r.close()
        return Response(
            r.status_code, {k.lower(): v for k, v in r.headers.items()}, body
        )


def _environ_header(environ: dict[str, Any]) -> Callable[[str], str | None]:
    def get(name: str) -> str | None:
        value = environ.get("HTTP_" + name.upper().replace("-", "_"))
        return value if isinstance(value, str) else None

    return get


class WsgiMiddlewareHarness(WsgiHarness):
    name = "wsgi"

    def __init__(self, **opts: Any) -> None:
        from stanchion.wsgi import CacheMiddleware, status_line

        self.upstream = up = Upstream()

        def app(environ: dict[str, Any], start_response: Any) -> Any:
            status, headers, chunks = up.behave(
                environ["PATH_INFO"], _environ_header(environ)
            )
            start_response(status_line(status), headers)
            return iter(chunks)  # an iterable, not a list: streamed

        self.app = self.middleware = CacheMiddleware(app, **opts)
        self.cache = self.middleware.cache


class FlaskHarness(WsgiHarness):
    name = "flask"

    def __init__(self, **opts: Any) -> None:
        from flask import Flask, request
        from flask import Response as FlaskResponse

        from stanchion.flask import Stanchion

        self.upstream = up = Upstream()
        app = Flask(__name__)
        ext = Stanchion(app)

        @app.route("/<path:rest>", methods=["GET", "POST"])
        @ext.cache(**opts)
        def endpoint(rest: str) -> Any:
            status, headers, chunks = up.behave("/" + rest, request.headers.get)
            if rest == "big":
                return FlaskResponse(iter(chunks), status=status, headers=headers)
            return FlaskResponse(b"".join(chunks), status=status, headers=headers)

        self.app = app
        self.cache = endpoint.cache  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------
# Django adapters (real HttpRequest/HttpResponse objects from Django's
# request factories, handed to the decorated view or the middleware)
# ---------------------------------------------------------------------------


def _django_ready() -> None:
    import django
    from django.conf import settings

    if not settings.configured:  # as tests/web/test_django.py configures it
        settings.configure(
            DEBUG=False,
            SECRET_KEY="tests-only",
            ROOT_URLCONF="tests.web.test_django",
            ALLOWED_HOSTS=["testserver", "test"],
            INSTALLED_APPS=["stanchion.django"],
            MIDDLEWARE=[],
            STANCHION={},
            USE_TZ=True,
        )
        django.setup()


def _django_response(r: Any, method: str) -> Response:
    if getattr(r, "streaming", False):
        body = b"".join(r.streaming_content)
    else:
        body = r.content
    headers = {k.lower(): v for k, v in r.items()}
    if r.cookies:
        headers["set-cookie"] = "; ".join(m.OutputString() for m in r.cookies.values())
    # A server sends no body for HEAD (Django's test client drops it too).
    return Response(r.status_code, headers, b"" if method == "HEAD" else body)


def _django_answer(
    status: int, headers: list[tuple[str, str]], chunks: list[bytes]
) -> Any:
    from django.http import HttpResponse, StreamingHttpResponse

    if len(chunks) > 1:
        out: Any = StreamingHttpResponse(iter(chunks), status=status)
    else:
        out = HttpResponse(b"".join(chunks), status=status)
    for k, v in headers:
        if k == "Set-Cookie":
            name, _, value = v.partition("=")
            out.set_cookie(name, value)
        else:
            out[k] = v
    return out


def _django_request(
    factory: Any, method: str, url: str, headers: dict[str, str] | None
) -> Any:
    req = factory.generic(method, url, headers=headers or {})
    if not (headers and "Cookie" in headers):
        # The factories always set an empty Cookie; a client sends none.
        req.META.pop("HTTP_COOKIE", None)
    return req


class DjangoHarness(Harness):
    """``@cache_response`` on a sync view."""

    name = "django"

    def __init__(self, **opts: Any) -> None:
        _django_ready()
        from django.test import RequestFactory

        from stanchion.django import cache_response

        self.upstream = up = Upstream()
        self.factory = RequestFactory()

        @cache_response(**opts)
        def view(request: Any) -> Any:
            return _django_answer(*up.behave(request.path, request.headers.get))

        self.view = view
        self.cache = view.cache  # type: ignore[attr-defined]

    def request(
        self, method: str, url: str, headers: dict[str, str] | None = None
    ) -> Response:
        req = _django_request(self.factory, method, url, headers)
        return _django_response(self.view(req), method)


class DjangoMiddlewareHarness(Harness):
    """``CacheMiddleware`` in async mode before an ``async def`` view."""

    name = "django-mw"

    def __init__(self, **opts: Any) -> None:
        _django_ready()
        from django.test import AsyncRequestFactory

        from stanchion.django import CacheMiddleware

        self.upstream = up = Upstream()
        self.factory = AsyncRequestFactory()

        async def view(request: Any) -> Any:
            if request.path.startswith("/slow"):
                with up.lock:
                    up.calls["slow"] += 1
                    n = up.calls["slow"]
                await asyncio.sleep(0.05)
                return _django_answer(200, [], [f"slow #{n}".encode()])
            return _django_answer(*up.behave(request.path, request.headers.get))

        self.middleware = CacheMiddleware(view, **opts)
        self.cache = self.middleware.cache

    async def arequest(
        self, method: str, url: str, headers: dict[str, str] | None
    ) -> Response:
        req = _django_request(self.factory, method, url, headers)
        return _django_response(await self.middleware(req), method)

    def request(
        self, method: str, url: str, headers: dict[str, str] | None = None
    ) -> Response:
        async def go() -> Response:
            try:
                return await self.arequest(method, url, headers)
            finally:
                await self.cache.aclose()

        return asyncio.run(go())

    def many(self, url: str, n: int) -> list[Response]:
        async def go() -> list[Response]:
            try:
                return list(
                    await asyncio.gather(
                        *(self.arequest("GET", url, None) for _ in range(n))
                    )
                )
            finally:
                await self.cache.aclose()

        return asyncio.run(go())


# ---------------------------------------------------------------------------
# hug (on falcon), served through its WSGI app
# ---------------------------------------------------------------------------

_hug_apis = 0


class HugHarness(WsgiHarness):
    """``@stanchion.hug.cache`` on a hug endpoint with the text output."""

    name = "hug"

    def __init__(self, **opts: Any) -> None:
        from .conftest import skip_where_hug_cannot_run

        skip_where_hug_cannot_run()
        import hug

        from stanchion.hug import cache

        global _hug_apis
        _hug_apis += 1
        api = hug.API(f"stanchion_respcache_api_{_hug_apis}")
        self.upstream = up = Upstream()
        text = hug.output_format.text
        max_age = opts.pop("max_age", None)
        ttl = opts.pop("ttl", 60.0)

        @hug.http(
            ("/{name}", "/status/{code}"),
            accept=("GET", "HEAD", "POST"),
            api=api,
            output=text,
        )
        @cache(max_age, ttl=ttl, output=text, **opts)
        def endpoint(
            request: Any, response: Any, name: str = "", code: str = ""
        ) -> Any:
            status, headers, chunks = up.behave(request.path, request.get_header)
            response.status = status_line(status)
            for k, v in headers:
                if k == "Set-Cookie":
                    cname, _, value = v.partition("=")
                    response.set_cookie(cname, value)
                elif k == "Content-Type":
                    response.content_type = v
                else:
                    response.set_header(k, v)
            if len(chunks) > 1:
                return io.BytesIO(b"".join(chunks))  # a stream: passes through
            return b"".join(chunks).decode()

        self.app = api.http.server()
        self.cache = endpoint.cache  # type: ignore[attr-defined]


ADAPTERS: dict[str, Callable[..., Harness]] = {
    "hug": HugHarness,
    "django": DjangoHarness,
    "django-mw": DjangoMiddlewareHarness,
    "asgi": AsgiMiddlewareHarness,
    "fastapi": FastApiHarness,
    "wsgi": WsgiMiddlewareHarness,
    "flask": FlaskHarness,
}

__all__ = ["ADAPTERS", "BIG", "Harness", "Response", "Upstream", "io"]


@contextlib.contextmanager
def harnesses(adapter: str, *opts: dict[str, Any]) -> Iterator[list[Harness]]:
    """Build one harness per settings dict; close them all afterwards."""
    built = [ADAPTERS[adapter](**o) for o in opts]
    try:
        yield built
    finally:
        for h in built:
            h.close()
