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
from fastapi.responses import StreamingResponse

from stanchion.wsgi import status_line

BIG = 2000  # /big answers this many bytes; tests set max_body=1000


class Upstream:
    """What the endpoints do, and how often each was reached."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.fail = False
        self.lock = threading.Lock()
        # /stream/<kind>: its second event waits until the client has the
        # first (``gate``), or 2 s: then the stream was held (``starved``).
        self.gate = threading.Event()
        self.starved = False
        self.closed = 0

    def stream_head(self, kind: str) -> list[tuple[str, str]]:
        with self.lock:
            self.calls["stream"] += 1
        self.gate.clear()
        ctype = "text/event-stream" if kind == "sse" else "text/plain"
        return [("Content-Type", ctype)]

    def events(self) -> Events:
        return Events(self)

    async def aevents(self) -> Any:
        try:
            yield EVENTS[0]
            deadline = time.monotonic() + 2
            while not self.gate.is_set():
                if time.monotonic() > deadline:
                    self.starved = True
                    break
                await asyncio.sleep(0.002)
            yield EVENTS[1]
        finally:
            self.closed += 1

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
        if name == "fieldprivate":
            cc = 'max-age=60, private="Set-Cookie"'
            return 200, [*h, ("Cache-Control", cc)], [f"fieldprivate #{n}".encode()]
        if name == "fieldnocache":
            cc = 'no-cache="Set-Cookie, X-Token", max-age=60'
            return 200, [*h, ("Cache-Control", cc)], [f"fieldnocache #{n}".encode()]
        if name == "varycookie":
            return 200, [*h, ("Vary", "Cookie")], [f"varycookie #{n}".encode()]
        if name == "sse":  # a whole event stream in one piece: still a stream
            sse = [("Content-Type", "text/event-stream")]
            return 200, sse, [f"data: {n}\n\n".encode()]
        if name == "limited":  # what a rate limit inside the cache adds
            left = str(100 - n)
            return (
                200,
                [
                    *h,
                    ("RateLimit", f"limit=100, remaining={left}, reset=60"),
                    ("RateLimit-Policy", "100;w=60"),
                    ("X-RateLimit-Limit", "100"),
                    ("X-RateLimit-Remaining", left),
                    ("X-RateLimit-Reset", "60"),
                    ("Retry-After", "60"),
                ],
                [b"limited"],
            )
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
        if name == "where":  # as url_for builds links (ProxyFix believes XFH)
            host = headers("x-forwarded-host") or headers("host")
            return 200, h, [f"where {host} #{n}".encode()]
        if name == "links":  # as url_for builds them behind ProxyFix
            prefix = headers("x-forwarded-prefix") or ""
            port = headers("x-forwarded-port") or ""
            return 200, h, [f"links {prefix}|{port} #{n}".encode()]
        if name == "apikey":
            keys = f"{headers('x-api-key')}|{headers('x-token')}|{headers('x-tenant')}"
            proxy = headers("proxy-authorization")
            return 200, h, [f"apikey {keys}|{proxy} #{n}".encode()]
        if name == "wiki":  # the path as the app sees it, decoded
            return 200, h, [f"wiki {path} #{n}".encode()]
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


EVENTS = (b"data: 1\n\n", b"data: 2\n\n")


class Events:
    """The body of /stream as a WSGI iterable (and a file for hug): the
    first event, then the second once the client has the first."""

    def __init__(self, up: Upstream) -> None:
        self.up = up
        self.step = 0
        self.shut = False

    def __iter__(self) -> Events:
        return self

    def __next__(self) -> bytes:
        self.step += 1
        if self.step == 1:
            return EVENTS[0]
        if self.step == 2:
            if not self.up.gate.wait(2):
                self.up.starved = True
            return EVENTS[1]
        raise StopIteration

    def read(self, size: int = -1) -> bytes:
        return next(self, b"")

    def close(self) -> None:
        if not self.shut:
            self.shut = True
            self.up.closed += 1


class Streamed:
    """What a client read from /stream: the status, headers and body
    parts in the order they came."""

    def __init__(self, status: int, headers: dict[str, str]) -> None:
        self.status = status
        self.headers = headers
        self.parts: list[bytes] = []

    def got(self, up: Upstream, part: bytes) -> None:
        if part:
            self.parts.append(part)
            up.gate.set()


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

    def stream(self, url: str) -> Streamed:
        """GET ``url``, reading the body part by part as the client does."""
        raise NotImplementedError

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
            transport=httpx.ASGITransport(app=self.raw, client=("203.0.113.1", 4000)),
            base_url="http://test",
        )

    async def raw(self, scope: Any, receive: Any, send: Any) -> None:
        """httpx percent-encodes a query that a raw client (curl, an
        attacker) sends as it is: such a query travels in a header and is
        put back here."""
        if scope["type"] == "http":
            for k, v in scope["headers"]:
                if k == b"x-test-raw-query":
                    scope["query_string"] = v
            scope["headers"] = [
                (k, v) for k, v in scope["headers"] if k != b"x-test-raw-query"
            ]
        await self.app(scope, receive, send)

    def request(
        self, method: str, url: str, headers: dict[str, str] | None = None
    ) -> Response:
        path, sep, query = url.partition("?")
        if sep and query != httpx.URL(url).query.decode():
            headers = {**(headers or {}), "X-Test-Raw-Query": query}
            url = path

        async def go() -> Response:
            try:
                async with self.client() as c:
                    return await self.arequest(c, method, url, headers)
            finally:
                # Each asyncio.run is a new loop: its backend connections
                # close with it, as a lifespan shutdown would close them.
                await self.cache.aclose()

        return asyncio.run(go())

    def stream(self, url: str) -> Streamed:
        # A plain ASGI call: httpx's ASGI transport buffers the body.
        async def go() -> Streamed:
            over = asyncio.Event()
            asked = False

            async def receive() -> Any:
                nonlocal asked
                if not asked:
                    asked = True
                    return {"type": "http.request", "body": b"", "more_body": False}
                await over.wait()
                return {"type": "http.disconnect"}

            got: list[Streamed] = []

            async def send(message: Any) -> None:
                if message["type"] == "http.response.start":
                    hdrs = message.get("headers") or []
                    got.append(
                        Streamed(
                            message["status"],
                            {k.decode().lower(): v.decode() for k, v in hdrs},
                        )
                    )
                elif message["type"] == "http.response.body":
                    got[0].got(self.upstream, message.get("body", b""))

            try:
                await self.app(asgi_scope(url), receive, send)
            finally:
                over.set()
                await self.cache.aclose()
            return got[0]

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


def asgi_scope(url: str, extensions: dict[str, Any] | None = None) -> Any:
    path, _, query = url.partition("?")
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": [(b"host", b"test")],
        "client": ("203.0.113.1", 4000),
        "server": ("test", 80),
        "extensions": extensions or {},
    }


async def _asgi_behave(up: Upstream, scope: Any, send: Any) -> None:
    hdrs = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
    if scope["path"].startswith("/stream/"):
        head = up.stream_head(scope["path"].rsplit("/", 1)[1])
        raw = [(k.lower().encode(), v.encode()) for k, v in head]
        await send({"type": "http.response.start", "status": 200, "headers": raw})
        async for part in up.aevents():
            await send({"type": "http.response.body", "body": part, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return
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
            if rest.startswith("stream/"):
                head = dict(up.stream_head(rest.rsplit("/", 1)[1]))
                ctype = head.pop("Content-Type")
                return StreamingResponse(up.aevents(), media_type=ctype)
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
        self,
        method: str,
        url: str,
        headers: dict[str, str] | None = None,
        environ: dict[str, str] | None = None,
    ) -> Response:
        from werkzeug.test import Client

        r = Client(self.app, use_cookies=False).open(
            url,
            method=method,
            headers=headers or {},
            environ_base={"REMOTE_ADDR": "127.0.0.1", **(environ or {})},
        )
        body = r.get_data()
        r.close()
        return Response(
            r.status_code, {k.lower(): v for k, v in r.headers.items()}, body
        )

    def stream(self, url: str) -> Streamed:
        from werkzeug.test import EnvironBuilder, run_wsgi_app

        env = EnvironBuilder(path=url).get_environ()
        body, status, headers = run_wsgi_app(self.app, env, buffered=False)
        got = Streamed(int(status.split()[0]), {k.lower(): v for k, v in headers})
        try:
            for part in body:
                got.got(self.upstream, part)
        finally:
            body.close()  # type: ignore[attr-defined]
        return got


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
            if environ["PATH_INFO"].startswith("/stream/"):
                kind = environ["PATH_INFO"].rsplit("/", 1)[1]
                start_response("200 OK", up.stream_head(kind))
                return up.events()
            status, headers, chunks = up.behave(
                environ["PATH_INFO"], _environ_header(environ)
            )
            start_response(status_line(status), headers)
            if len(chunks) > 1:
                return iter(chunks)  # an iterable, not a list: a stream
            return chunks

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
            if rest.startswith("stream/"):
                head = up.stream_head(rest.rsplit("/", 1)[1])
                return FlaskResponse(up.events(), headers=head)
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


def _django_stream(up: Upstream, path: str, events: Any) -> Any:
    from django.http import StreamingHttpResponse

    head = dict(up.stream_head(path.rsplit("/", 1)[1]))
    return StreamingHttpResponse(events, content_type=head["Content-Type"])


def _django_request(
    factory: Any, method: str, url: str, headers: dict[str, str] | None
) -> Any:
    headers = dict(headers or {})
    host = headers.pop("Host", None)
    req = factory.generic(method, url, headers=headers)
    if "Cookie" not in headers:
        # The factories always set an empty Cookie; a client sends none.
        req.META.pop("HTTP_COOKIE", None)
    if host is not None:
        # The async factory adds a Host to its own "testserver": one Host
        # field, as a client sends it.
        req.META["HTTP_HOST"] = host
        scope = getattr(req, "scope", None)
        if scope is not None:
            kept = [(k, v) for k, v in scope["headers"] if k != b"host"]
            scope["headers"] = [*kept, (b"host", host.encode("latin-1"))]
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
            if request.path.startswith("/stream/"):
                return _django_stream(up, request.path, up.events())
            return _django_answer(*up.behave(request.path, request.headers.get))

        self.view = view
        self.cache = view.cache  # type: ignore[attr-defined]

    def request(
        self,
        method: str,
        url: str,
        headers: dict[str, str] | None = None,
        environ: dict[str, str] | None = None,
    ) -> Response:
        req = _django_request(self.factory, method, url, headers)
        req.META.update(environ or {})
        return _django_response(self.view(req), method)

    def stream(self, url: str) -> Streamed:
        r = self.view(_django_request(self.factory, "GET", url, None))
        got = Streamed(r.status_code, {k.lower(): v for k, v in r.items()})
        try:
            for part in r:
                got.got(self.upstream, part)
        finally:
            r.close()
        return got


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
            if request.path.startswith("/stream/"):
                return _django_stream(up, request.path, up.aevents())
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

    def stream(self, url: str) -> Streamed:
        async def go() -> Streamed:
            req = _django_request(self.factory, "GET", url, None)
            try:
                r = await self.middleware(req)
                got = Streamed(r.status_code, {k.lower(): v for k, v in r.items()})
                if r.streaming and r.is_async:
                    async for part in r:
                        got.got(self.upstream, part)
                else:
                    for part in r:
                        got.got(self.upstream, part)
                r.close()
                return got
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
            ("/{name}", "/status/{code}", "/stream/{kind}", "/wiki/{page}"),
            accept=("GET", "HEAD", "POST"),
            api=api,
            output=text,
        )
        @cache(max_age, ttl=ttl, output=text, **opts)
        def endpoint(
            request: Any,
            response: Any,
            name: str = "",
            code: str = "",
            kind: str = "",
            page: str = "",
        ) -> Any:
            if kind:
                response.content_type = dict(up.stream_head(kind))["Content-Type"]
                return up.events()
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

__all__ = [
    "ADAPTERS",
    "BIG",
    "EVENTS",
    "Harness",
    "Response",
    "Streamed",
    "Upstream",
    "asgi_scope",
    "io",
]


@contextlib.contextmanager
def harnesses(adapter: str, *opts: dict[str, Any]) -> Iterator[list[Harness]]:
    """Build one harness per settings dict; close them all afterwards."""
    built = [ADAPTERS[adapter](**o) for o in opts]
    try:
        yield built
    finally:
        for h in built:
            h.close()
