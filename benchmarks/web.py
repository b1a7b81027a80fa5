"""Per-request cost of rate limiting in web frameworks, in-process.

ASGI apps are called directly with a prebuilt scope and no-op
receive/send (100 calls per event loop turn), WSGI apps with a prebuilt
environ, Django through its WSGI handler. Each app is minimal (one route
returning a short body); each limit is so high it never denies, so the
figures are the cost of deciding and (where enabled) of the headers.

    stanchion vs slowapi (FastAPI), flask-limiter (Flask),
    django-ratelimit (Django).

"added" = limited app minus the same app without limiting.
Run: python benchmarks/web.py   (STANCHION_BENCH_QUICK=1 for a smoke run)
"""

from __future__ import annotations

import asyncio
import logging
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from starlette.requests import Request as StarletteRequest

from _bench import fmt_ns, fmt_ratio, md_table, per_call_ns, print_table, write_section

HIGH = "1000000000/minute"
PEER = "203.0.113.7"
warnings.simplefilter("ignore", DeprecationWarning)
logging.disable(logging.WARNING)

# -- ASGI ------------------------------------------------------------------------


def asgi_runner(app: Any, path: str = "/") -> Callable[[], None]:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"bench")],
        "client": (PEER, 40000),
        "server": ("bench", 80),
        "state": {},
    }
    body = {"type": "http.request", "body": b"", "more_body": False}

    async def receive() -> dict[str, Any]:
        return body

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            assert message["status"] == 200, (app, message)

    async def batch() -> None:
        for _ in range(100):
            await app(dict(scope), receive, send)

    loop = asyncio.new_event_loop()
    loop.run_until_complete(batch())  # warm up (and check it works)
    return lambda: loop.run_until_complete(batch())


def asgi_per_request(app: Any, path: str = "/") -> float:
    return per_call_ns(asgi_runner(app, path)) / 100


async def raw_app(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def fastapi_apps() -> dict[str, Any]:
    from fastapi import FastAPI
    from slowapi import Limiter as SlowLimiter
    from slowapi.middleware import SlowAPIASGIMiddleware
    from slowapi.util import get_remote_address

    from stanchion.asgi import RateLimitMiddleware
    from stanchion.fastapi import limit

    def base() -> FastAPI:
        app = FastAPI()

        @app.get("/")
        async def root() -> str:
            return "ok"

        return app

    plain = base()

    st_mw = base()
    st_mw.add_middleware(RateLimitMiddleware, limit=HIGH)  # type: ignore[arg-type]

    st_mw_quiet = base()
    st_mw_quiet.add_middleware(
        RateLimitMiddleware,  # type: ignore[arg-type]
        limit=HIGH,
        headers_on_allowed=False,
    )

    sl_mw = base()
    sl_limiter = SlowLimiter(key_func=get_remote_address, default_limits=[HIGH])
    sl_mw.state.limiter = sl_limiter
    sl_mw.add_middleware(SlowAPIASGIMiddleware)

    st_dec = FastAPI()

    @st_dec.get("/")
    @limit(HIGH)
    async def st_root() -> str:
        return "ok"

    sl_dec = FastAPI()
    sl_dec_limiter = SlowLimiter(key_func=get_remote_address)
    sl_dec.state.limiter = sl_dec_limiter

    @sl_dec.get("/")
    @sl_dec_limiter.limit(HIGH)
    async def sl_root(request: StarletteRequest) -> str:
        return "ok"

    return {
        "plain": plain,
        "st_mw": st_mw,
        "st_mw_quiet": st_mw_quiet,
        "sl_mw": sl_mw,
        "st_dec": st_dec,
        "sl_dec": sl_dec,
    }


# -- WSGI ------------------------------------------------------------------------


def wsgi_per_request(app: Any, path: str = "/") -> float:
    environ = {
        "REQUEST_METHOD": "GET",
        "SCRIPT_NAME": "",
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "SERVER_NAME": "bench",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": PEER,
        "HTTP_HOST": "bench",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": None,
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": False,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    import io

    statuses: list[str] = []

    def start_response(status: str, headers: Any, exc_info: Any = None) -> None:
        statuses.append(status)

    def call() -> None:
        env = dict(environ)
        env["wsgi.input"] = io.BytesIO()
        it = app(env, start_response)
        for _ in it:
            pass
        close = getattr(it, "close", None)
        if close is not None:
            close()

    call()
    assert statuses[-1].startswith("200"), statuses[-1]
    return per_call_ns(call)


def raw_wsgi(environ: Any, start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


def flask_apps() -> dict[str, Any]:
    from flask import Flask
    from flask_limiter import Limiter as FlaskLimiter
    from flask_limiter.util import get_remote_address

    from stanchion.flask import Stanchion

    def base() -> Flask:
        app = Flask("bench")

        @app.route("/")
        def root() -> str:
            return "ok"

        return app

    plain = base()
    st = base()
    st.config["STANCHION_DEFAULT_LIMIT"] = HIGH
    Stanchion(st)
    st_quiet = base()
    st_quiet.config.update(
        STANCHION_DEFAULT_LIMIT=HIGH, STANCHION_HEADERS_ON_ALLOWED=False
    )
    Stanchion(st_quiet)
    fl = base()
    FlaskLimiter(
        get_remote_address, app=fl, default_limits=[HIGH], storage_uri="memory://"
    )
    fl_headers = base()
    FlaskLimiter(
        get_remote_address,
        app=fl_headers,
        default_limits=[HIGH],
        storage_uri="memory://",
        headers_enabled=True,
    )
    return {
        "plain": plain,
        "st": st,
        "st_quiet": st_quiet,
        "fl": fl,
        "fl_headers": fl_headers,
    }


# -- Django ----------------------------------------------------------------------


def django_handlers() -> dict[str, Any]:
    import django
    from django.conf import settings

    settings.configure(
        DEBUG=False,
        SECRET_KEY="bench",
        ROOT_URLCONF=__name__,
        ALLOWED_HOSTS=["*"],
        INSTALLED_APPS=[],
        MIDDLEWARE=[],
        CACHES={
            "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}
        },
        STANCHION={"LIMIT": HIGH},
        SILENCED_SYSTEM_CHECKS=["django_ratelimit.E003", "django_ratelimit.W001"],
    )
    django.setup()
    from django.core.handlers.wsgi import WSGIHandler
    from django.http import HttpResponse
    from django.test import override_settings
    from django.urls import path
    from django_ratelimit.decorators import ratelimit as dj_ratelimit

    from stanchion.django import ratelimit as st_ratelimit

    def plain(request: Any) -> HttpResponse:
        return HttpResponse("ok")

    @st_ratelimit(HIGH, scope="bench")
    def st_view(request: Any) -> HttpResponse:
        return HttpResponse("ok")

    @dj_ratelimit(key="ip", rate="1000000000/m", block=True)
    def dj_view(request: Any) -> HttpResponse:
        return HttpResponse("ok")

    global urlpatterns
    urlpatterns = [path("", plain), path("st", st_view), path("dj", dj_view)]
    handler = WSGIHandler()
    with override_settings(MIDDLEWARE=["stanchion.django.RateLimitMiddleware"]):
        mw_handler = WSGIHandler()
    return {"handler": handler, "mw_handler": mw_handler}


urlpatterns: list[Any] = []


# -- report ----------------------------------------------------------------------


def main() -> None:
    rows: list[list[str]] = []
    targets: list[str] = []

    def add(
        family: str,
        what: str,
        limited_ns: float,
        base_ns: float,
        peer_added: float | None,
    ) -> float:
        added = limited_ns - base_ns
        ratio = fmt_ratio(peer_added / added) if peer_added and added > 0 else ""
        rows.append(
            [family, what, fmt_ns(base_ns), fmt_ns(limited_ns), fmt_ns(added), ratio]
        )
        return added

    # ASGI floor: raw ASGI app, stanchion middleware around it
    from stanchion.asgi import RateLimitMiddleware as AsgiMW

    raw = asgi_per_request(raw_app)
    raw_st = asgi_per_request(AsgiMW(raw_app, limit=HIGH))
    raw_st_quiet = asgi_per_request(
        AsgiMW(raw_app, limit=HIGH, headers_on_allowed=False)
    )
    a1 = add("ASGI", "stanchion middleware, raw ASGI app", raw_st, raw, None)
    a2 = add("ASGI", "  same, headers off on allowed", raw_st_quiet, raw, None)

    apps = fastapi_apps()
    plain = asgi_per_request(apps["plain"])
    sl_mw = asgi_per_request(apps["sl_mw"])
    sl_dec = asgi_per_request(apps["sl_dec"])
    st_mw = asgi_per_request(apps["st_mw"])
    st_mw_quiet = asgi_per_request(apps["st_mw_quiet"])
    st_dec = asgi_per_request(apps["st_dec"])
    sl_mw_added = sl_mw - plain
    sl_dec_added = sl_dec - plain
    add("FastAPI", "slowapi SlowAPIASGIMiddleware (no headers)", sl_mw, plain, None)
    f1 = add("FastAPI", "stanchion middleware (headers)", st_mw, plain, sl_mw_added)
    f2 = add(
        "FastAPI", "stanchion middleware (no headers)", st_mw_quiet, plain, sl_mw_added
    )
    add("FastAPI", "slowapi @limiter.limit (no headers)", sl_dec, plain, None)
    f3 = add("FastAPI", "stanchion @limit (headers)", st_dec, plain, sl_dec_added)

    # WSGI floor
    from stanchion.wsgi import RateLimitMiddleware as WsgiMW

    wraw = wsgi_per_request(raw_wsgi)
    wraw_st = wsgi_per_request(WsgiMW(raw_wsgi, limit=HIGH))
    wraw_st_quiet = wsgi_per_request(
        WsgiMW(raw_wsgi, limit=HIGH, headers_on_allowed=False)
    )
    w1 = add("WSGI", "stanchion middleware, raw WSGI app", wraw_st, wraw, None)
    w2 = add("WSGI", "  same, headers off on allowed", wraw_st_quiet, wraw, None)

    fapps = flask_apps()
    fplain = wsgi_per_request(fapps["plain"])
    fl = wsgi_per_request(fapps["fl"])
    fl_h = wsgi_per_request(fapps["fl_headers"])
    fst = wsgi_per_request(fapps["st"])
    fst_quiet = wsgi_per_request(fapps["st_quiet"])
    add("Flask", "flask-limiter default_limits (no headers)", fl, fplain, None)
    add("Flask", "flask-limiter, headers_enabled", fl_h, fplain, None)
    g1 = add("Flask", "stanchion Stanchion (headers)", fst, fplain, fl_h - fplain)
    g2 = add(
        "Flask", "stanchion Stanchion (no headers)", fst_quiet, fplain, fl - fplain
    )

    dj = django_handlers()
    dplain = wsgi_per_request(dj["handler"], "/")
    ddj = wsgi_per_request(dj["handler"], "/dj")
    dst = wsgi_per_request(dj["handler"], "/st")
    dmw = wsgi_per_request(dj["mw_handler"], "/")
    add("Django", "django-ratelimit @ratelimit (LocMemCache)", ddj, dplain, None)
    d1 = add("Django", "stanchion @ratelimit (headers)", dst, dplain, ddj - dplain)
    d2 = add("Django", "stanchion middleware (headers)", dmw, dplain, ddj - dplain)

    headers = ["stack", "limit", "without", "with", "added", "peer added / ours"]
    print_table(headers, rows)

    def verdict(
        name: str, added: float, peer: float | None, budget: float | None
    ) -> None:
        parts = [f"{name}: added {fmt_ns(added)}"]
        if budget is not None:
            parts.append(
                f"{'<=' if added <= budget else 'OVER'} {fmt_ns(budget)} target"
            )
        if peer is not None:
            r = peer / added if added > 0 else float("inf")
            parts.append(
                f"{r:.1f}x less than the peer ({'>=' if r >= 10 else 'below'} 10x)"
            )
        targets.append("; ".join(parts))

    verdict("ASGI middleware (raw app)", a1, None, 3000)
    verdict("ASGI middleware, headers off", a2, None, 3000)
    verdict("FastAPI middleware vs slowapi", f1, sl_mw_added, None)
    verdict("FastAPI middleware, no headers vs slowapi", f2, sl_mw_added, None)
    verdict("FastAPI @limit vs slowapi", f3, sl_dec_added, None)
    verdict("WSGI middleware (raw app)", w1, None, 3000)
    verdict("WSGI middleware, headers off", w2, None, 3000)
    verdict("Flask vs flask-limiter (both headers)", g1, fl_h - fplain, None)
    verdict("Flask vs flask-limiter (no headers)", g2, fl - fplain, None)
    verdict("Django @ratelimit vs django-ratelimit", d1, ddj - dplain, None)
    verdict("Django middleware vs django-ratelimit", d2, ddj - dplain, None)
    for line in targets:
        print(line)

    body = (
        "Per-request cost in-process: ASGI apps called directly (prebuilt scope, "
        "no-op receive/send), WSGI apps and Django's WSGI handler called with a "
        "prebuilt environ. Minimal apps; limits never deny; one client key. "
        '"added" is the limited app minus the same app without limiting; the '
        "last column is the peer's added cost divided by stanchion's.\n\n"
        + md_table(headers, rows)
        + "\n\n"
        + "\n".join(f"- {t}" for t in targets)
    )
    write_section("Web", body)


if __name__ == "__main__":
    main()
