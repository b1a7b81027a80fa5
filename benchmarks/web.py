"""Per-request cost of rate limiting in web frameworks, in-process.

ASGI apps are called directly with a prebuilt scope and no-op
receive/send (100 calls per event loop turn), WSGI apps with a prebuilt
environ, Django through its WSGI handler. Each app is minimal (one route
returning a short body); each limit is so high it never denies, so the
figures are the cost of deciding and (where enabled) of the headers.

    stanchion vs slowapi (FastAPI), flask-limiter (Flask),
    django-ratelimit (Django).

"added" = limited app minus the same app without limiting; for the
metrics rows (stanchion.metrics on: Prometheus, OpenTelemetry, a hook),
the same stanchion app with metrics off.
Run: python benchmarks/web.py   (STANCHION_BENCH_QUICK=1 for a smoke run)
"""

from __future__ import annotations

import asyncio
import gc
import logging
import random
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from starlette.requests import Request as StarletteRequest
from starlette.responses import Response

from _bench import fmt_ns, fmt_ratio, md_table, print_table, quick, write_section

HIGH = "1000000000/minute"
PEER = "203.0.113.7"
warnings.simplefilter("ignore", DeprecationWarning)
logging.disable(logging.WARNING)

# -- ASGI ------------------------------------------------------------------------


def asgi_runner(app: Any, path: str = "/", status: int = 200) -> Callable[[], None]:
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
            assert message["status"] == status, (app, message)

    async def batch() -> None:
        for _ in range(100):
            await app(dict(scope), receive, send)

    loop = asyncio.new_event_loop()
    loop.run_until_complete(batch())  # warm up (and check it works)
    return lambda: loop.run_until_complete(batch())


def asgi_call(
    app: Any, path: str = "/", status: int = 200
) -> tuple[Callable[[], None], int]:
    """A callable running 100 requests, and that count."""
    return asgi_runner(app, path, status), 100


def _refusing(app: Any, status: int) -> tuple[Callable[[], None], int]:
    """``asgi_call`` for a client the app refuses with ``status``, after
    the requests that bring it there (one allowed, then refused until a
    penalty bans it)."""
    scope = {"type": "http", "method": "GET", "path": "/", "headers": []}
    scope["client"] = (PEER, 40000)

    async def warm() -> None:
        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b""}

        async def send(message: dict[str, Any]) -> None:
            pass

        for _ in range(3):
            await app(dict(scope), receive, send)

    asyncio.run(warm())
    return asgi_call(app, "/", status)


def measure(cases: dict[str, tuple[Callable[[], None], int]]) -> dict[str, float]:
    """Nanoseconds per request of each case: the minimum over many short
    samples (one batch of requests each), taken case after case so any
    slow spell of this shared machine hits every case alike. A framework
    request costs ~100 us and our share a few us: a median of separate
    runs would drown that share in noise; the least disturbed batch
    does not. The cases run in a new random order each round."""
    rounds = 5 if quick() else 400
    best = {name: float("inf") for name in cases}
    clock = time.perf_counter_ns
    # A new order each round: the case run right after another framework's
    # meets cold caches, and a fixed order would charge that to one case.
    order = list(cases.items())
    shuffle = random.Random(0).shuffle
    gc.disable()  # as timeit does
    try:
        for _ in range(rounds):
            shuffle(order)
            for name, (fn, per) in order:
                t0 = clock()
                fn()
                best[name] = min(best[name], (clock() - t0) / per)
    finally:
        gc.enable()
    return best


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

    sl_mw_headers = base()
    sl_mw_headers.state.limiter = SlowLimiter(
        key_func=get_remote_address, default_limits=[HIGH], headers_enabled=True
    )
    sl_mw_headers.add_middleware(SlowAPIASGIMiddleware)

    st_dec = FastAPI()

    @st_dec.get("/")
    @limit(HIGH)
    async def st_root() -> str:
        return "ok"

    st_dec_quiet = FastAPI()

    @st_dec_quiet.get("/")
    @limit(HIGH, headers_on_allowed=False)
    async def st_root_quiet() -> str:
        return "ok"

    sl_dec = FastAPI()
    sl_dec_limiter = SlowLimiter(key_func=get_remote_address)
    sl_dec.state.limiter = sl_dec_limiter

    @sl_dec.get("/")
    @sl_dec_limiter.limit(HIGH)
    async def sl_root(request: StarletteRequest) -> str:
        return "ok"

    sl_dec_headers = FastAPI()
    sl_hdr_limiter = SlowLimiter(key_func=get_remote_address, headers_enabled=True)
    sl_dec_headers.state.limiter = sl_hdr_limiter

    @sl_dec_headers.get("/")
    @sl_hdr_limiter.limit(HIGH)
    async def sl_root_headers(request: StarletteRequest, response: Response) -> str:
        return "ok"

    return {
        "plain": plain,
        "st_mw": st_mw,
        "st_mw_quiet": st_mw_quiet,
        "sl_mw": sl_mw,
        "sl_mw_headers": sl_mw_headers,
        "st_dec": st_dec,
        "st_dec_quiet": st_dec_quiet,
        "sl_dec": sl_dec,
        "sl_dec_headers": sl_dec_headers,
    }


# -- WSGI ------------------------------------------------------------------------


def wsgi_call(app: Any, path: str = "/") -> tuple[Callable[[], None], int]:
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

    def batch() -> None:
        for _ in range(100):
            call()

    return batch, 100


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

    @st_ratelimit(HIGH, scope="bench-quiet", headers_on_allowed=False)
    def st_quiet_view(request: Any) -> HttpResponse:
        return HttpResponse("ok")

    @dj_ratelimit(key="ip", rate="1000000000/m", block=True)
    def dj_view(request: Any) -> HttpResponse:
        return HttpResponse("ok")

    global urlpatterns
    urlpatterns = [
        path("", plain),
        path("st", st_view),
        path("st-quiet", st_quiet_view),
        path("dj", dj_view),
    ]
    handler = WSGIHandler()
    with override_settings(MIDDLEWARE=["stanchion.django.RateLimitMiddleware"]):
        mw_handler = WSGIHandler()
    with override_settings(MIDDLEWARE=[f"{__name__}.NoopMiddleware"]):
        noop_handler = WSGIHandler()
    return {"handler": handler, "mw_handler": mw_handler, "noop_handler": noop_handler}


class NoopMiddleware:
    """A Django middleware that does nothing: what Django itself charges
    for one middleware, the floor under any middleware's figure."""

    def __init__(self, get_response: Any) -> None:
        self.get_response = get_response

    def __call__(self, request: Any) -> Any:
        return self.get_response(request)


urlpatterns: list[Any] = []


# -- report ----------------------------------------------------------------------


def metered(build: Callable[[], Any], call: Callable[[Any], Any], **on: Any) -> Any:
    """``call(build())`` with stanchion.metrics on (``on``: ``enable``'s
    exporters, or ``hook=`` for an ``on_decision`` hook) for this app
    alone: the rules it builds keep counting once metrics are switched
    off again for the others (every other case runs metrics-free)."""
    import stanchion.metrics as metrics

    hook = on.pop("hook", None)
    before = set(metrics._rules)
    if on:
        metrics.enable(**on)
    if hook is not None:
        metrics.on_decision(hook)
    try:
        case = call(build())  # builds the app's rules (and warms it up)
    finally:
        for rule in set(metrics._rules) - before:
            metrics._rules.discard(rule)  # so disable() leaves it counting
        metrics.disable()
    return case


def metered_cases() -> dict[str, tuple[Callable[[], None], int]]:
    """The ASGI middleware and Flask with metrics on: a Prometheus
    registry, an OpenTelemetry SDK meter (in-memory reader), a hook."""
    import prometheus_client
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from stanchion.asgi import RateLimitMiddleware as AsgiMW

    def meter() -> Any:
        provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
        return provider.get_meter("bench")

    def asgi() -> Any:
        return AsgiMW(raw_app, limit=HIGH)

    def flask() -> Any:
        return flask_apps()["st"]

    return {
        "asgi_st_prom": metered(
            asgi, asgi_call, prometheus_registry=prometheus_client.CollectorRegistry()
        ),
        "asgi_st_otel": metered(asgi, asgi_call, otel_meter=meter()),
        "asgi_st_hook": metered(asgi, asgi_call, hook=lambda event: None),
        "flask_st_prom": metered(
            flask, wsgi_call, prometheus_registry=prometheus_client.CollectorRegistry()
        ),
        "flask_st_otel": metered(flask, wsgi_call, otel_meter=meter()),
    }


def main() -> None:
    from stanchion import Penalty
    from stanchion.asgi import RateLimitMiddleware as AsgiMW
    from stanchion.wsgi import RateLimitMiddleware as WsgiMW

    apps = fastapi_apps()
    fapps = flask_apps()
    # Traffic management: a free concurrency slot, with and without a rate
    # limit, and the refusals of a rate limit (429) and of a ban (403).
    banned = AsgiMW(
        raw_app, limit="1/hour", penalty=Penalty(after=1, within=3600, ban=3600)
    )
    traffic = {
        "asgi_slot": asgi_call(AsgiMW(raw_app, limit=None, concurrency=1_000_000)),
        "asgi_st_quiet_slot": asgi_call(
            AsgiMW(
                raw_app,
                limit=HIGH,
                headers_on_allowed=False,
                concurrency=1_000_000,
            )
        ),
        "asgi_st_slot": asgi_call(AsgiMW(raw_app, limit=HIGH, concurrency=1_000_000)),
        "asgi_refused": _refusing(AsgiMW(raw_app, limit="1/hour"), 429),
        "asgi_banned": _refusing(banned, 403),
    }
    dj = django_handlers()
    cases = {
        "asgi": asgi_call(raw_app),
        "asgi_st": asgi_call(AsgiMW(raw_app, limit=HIGH)),
        "asgi_st_quiet": asgi_call(
            AsgiMW(raw_app, limit=HIGH, headers_on_allowed=False)
        ),
        "wsgi": wsgi_call(raw_wsgi),
        "wsgi_st": wsgi_call(WsgiMW(raw_wsgi, limit=HIGH)),
        "wsgi_st_quiet": wsgi_call(
            WsgiMW(raw_wsgi, limit=HIGH, headers_on_allowed=False)
        ),
        **{f"fastapi_{k}": asgi_call(v) for k, v in apps.items()},
        **{f"flask_{k}": wsgi_call(v) for k, v in fapps.items()},
        "django": wsgi_call(dj["handler"], "/"),
        "django_dj": wsgi_call(dj["handler"], "/dj"),
        "django_st": wsgi_call(dj["handler"], "/st"),
        "django_st_quiet": wsgi_call(dj["handler"], "/st-quiet"),
        "django_mw": wsgi_call(dj["mw_handler"], "/"),
        "django_noop_mw": wsgi_call(dj["noop_handler"], "/"),
        **traffic,
        **metered_cases(),
    }
    t = measure(cases)

    rows: list[list[str]] = []

    def add(
        family: str, what: str, case: str, base: str, peer: str | None = None
    ) -> float:
        added = t[case] - t[base]
        ratio = ""
        if peer is not None:
            peer_added = t[peer] - t[base]
            ratio = fmt_ratio(peer_added / added) if added > 0 else "inf"
        rows.append(
            [family, what, fmt_ns(t[base]), fmt_ns(t[case]), fmt_ns(added), ratio]
        )
        return added

    a1 = add("ASGI", "stanchion middleware, headers on allowed", "asgi_st", "asgi")
    a2 = add(
        "ASGI", "stanchion middleware, headers on 429 only", "asgi_st_quiet", "asgi"
    )
    add(
        "FastAPI",
        "slowapi SlowAPIASGIMiddleware (no headers)",
        "fastapi_sl_mw",
        "fastapi_plain",
    )
    f2 = add(
        "FastAPI",
        "stanchion middleware, 429 headers only",
        "fastapi_st_mw_quiet",
        "fastapi_plain",
        "fastapi_sl_mw",
    )
    add(
        "FastAPI",
        "slowapi SlowAPIASGIMiddleware, headers_enabled",
        "fastapi_sl_mw_headers",
        "fastapi_plain",
    )
    f1 = add(
        "FastAPI",
        "stanchion middleware, headers on allowed",
        "fastapi_st_mw",
        "fastapi_plain",
        "fastapi_sl_mw_headers",
    )
    add(
        "FastAPI",
        "slowapi @limiter.limit (no headers)",
        "fastapi_sl_dec",
        "fastapi_plain",
    )
    f4 = add(
        "FastAPI",
        "stanchion @limit, 429 headers only",
        "fastapi_st_dec_quiet",
        "fastapi_plain",
        "fastapi_sl_dec",
    )
    add(
        "FastAPI",
        "slowapi @limiter.limit, headers_enabled",
        "fastapi_sl_dec_headers",
        "fastapi_plain",
    )
    f3 = add(
        "FastAPI",
        "stanchion @limit, headers on allowed",
        "fastapi_st_dec",
        "fastapi_plain",
        "fastapi_sl_dec_headers",
    )
    w1 = add("WSGI", "stanchion middleware, headers on allowed", "wsgi_st", "wsgi")
    w2 = add(
        "WSGI", "stanchion middleware, headers on 429 only", "wsgi_st_quiet", "wsgi"
    )
    add("Flask", "flask-limiter default_limits (no headers)", "flask_fl", "flask_plain")
    add("Flask", "flask-limiter, headers_enabled", "flask_fl_headers", "flask_plain")
    g2 = add(
        "Flask",
        "stanchion, 429 headers only",
        "flask_st_quiet",
        "flask_plain",
        "flask_fl",
    )
    g1 = add(
        "Flask",
        "stanchion, headers on allowed",
        "flask_st",
        "flask_plain",
        "flask_fl_headers",
    )
    add("Django", "django-ratelimit @ratelimit (no headers)", "django_dj", "django")
    d2 = add(
        "Django",
        "stanchion @ratelimit, 429 headers only",
        "django_st_quiet",
        "django",
        "django_dj",
    )
    d1 = add(
        "Django",
        "stanchion @ratelimit, headers on allowed",
        "django_st",
        "django",
        "django_dj",
    )
    d3 = add(
        "Django",
        "stanchion middleware, headers on allowed",
        "django_mw",
        "django",
        "django_dj",
    )
    add("Django", "an empty middleware (Django's own cost)", "django_noop_mw", "django")
    c1 = add("ASGI", "stanchion concurrency=N alone, a free slot", "asgi_slot", "asgi")
    add(
        "ASGI",
        "stanchion rate limit + a free slot, 429 headers only",
        "asgi_st_quiet_slot",
        "asgi",
    )
    add(
        "ASGI",
        "stanchion rate limit + a free slot, headers on allowed",
        "asgi_st_slot",
        "asgi",
    )
    refused = add("ASGI", "stanchion, a refused request (429)", "asgi_refused", "asgi")
    ban = add(
        "ASGI", "stanchion, a banned client's request (403)", "asgi_banned", "asgi"
    )

    # Metrics on (stanchion.metrics), against the same app with them off.
    add("ASGI", "stanchion middleware + Prometheus metrics", "asgi_st_prom", "asgi_st")
    add(
        "ASGI",
        "stanchion middleware + OpenTelemetry metrics",
        "asgi_st_otel",
        "asgi_st",
    )
    add("ASGI", "stanchion middleware + an on_decision hook", "asgi_st_hook", "asgi_st")
    add("Flask", "stanchion + Prometheus metrics", "flask_st_prom", "flask_st")
    add("Flask", "stanchion + OpenTelemetry metrics", "flask_st_otel", "flask_st")

    headers = ["stack", "limit", "without", "with", "added", "peer added / ours"]
    print_table(headers, rows)

    targets: list[str] = []

    def verdict(
        name: str,
        added: float,
        budget: float,
        peer: float | None = None,
        times: float | None = None,
    ) -> None:
        parts = [
            f"{name}: added {fmt_ns(added)}; "
            f"{'within' if added <= budget else 'OVER'} the {fmt_ns(budget)} target"
        ]
        if peer is not None and times is not None:
            r = peer / added if added > 0 else float("inf")
            parts.append(
                f"peer adds {r:.1f}x more "
                f"({'meets' if r >= times else 'misses'} {times:g}x)"
            )
        targets.append("; ".join(parts))

    def peer(case: str, base: str) -> float:
        return t[case] - t[base]

    # The defaults users get (headers on allowed responses), against the
    # peers with their headers on.
    verdict("ASGI middleware, headers on allowed", a1, 1000)
    verdict(
        "FastAPI middleware, headers on allowed, vs slowapi's with headers",
        f1,
        1500,
        peer("fastapi_sl_mw_headers", "fastapi_plain"),
        25,
    )
    verdict("WSGI middleware, headers on allowed", w1, 2000)
    verdict(
        "Flask, headers on allowed, vs flask-limiter headers_enabled",
        g1,
        2000,
        peer("flask_fl_headers", "flask_plain"),
        25,
    )
    verdict(
        "Django middleware, headers on allowed, vs django-ratelimit",
        d3,
        2000,
        peer("django_dj", "django"),
        20,
    )
    # The no-header figures, for reference.
    verdict("ASGI middleware, headers on 429 only", a2, 1000)
    verdict("WSGI middleware, headers on 429 only", w2, 2000)
    verdict(
        "FastAPI middleware, 429 headers only, vs slowapi (no headers)",
        f2,
        1500,
        peer("fastapi_sl_mw", "fastapi_plain"),
        25,
    )
    verdict(
        "FastAPI @limit, headers on allowed, vs slowapi @limiter.limit headers_enabled",
        f3,
        3000,
        peer("fastapi_sl_dec_headers", "fastapi_plain"),
        10,
    )
    verdict(
        "FastAPI @limit, 429 headers only, vs slowapi @limiter.limit",
        f4,
        3000,
        peer("fastapi_sl_dec", "fastapi_plain"),
        10,
    )
    verdict(
        "Flask, 429 headers only, vs flask-limiter",
        g2,
        2000,
        peer("flask_fl", "flask_plain"),
        25,
    )
    dj_added = peer("django_dj", "django")
    verdict(
        "Django @ratelimit, headers on allowed, vs django-ratelimit",
        d1,
        3000,
        dj_added,
        10,
    )
    verdict(
        "Django @ratelimit, 429 headers only, vs django-ratelimit",
        d2,
        3000,
        dj_added,
        10,
    )
    # Traffic management (the concurrency and penalty issue's targets).
    verdict(
        "ASGI, a free concurrency slot (target: twice the rate limit's added "
        "cost, 429 headers only)",
        c1,
        2 * max(a2, 0.0),  # a noisy quick run may measure less than 0
    )
    verdict(
        "ASGI, a banned client's refusal (target: a rate limit's refusal)",
        ban,
        max(refused, 0.0),
    )
    for line in targets:
        print(line)

    body = (
        "Per-request cost in-process: ASGI apps called directly (prebuilt scope, "
        "no-op receive/send, 100 calls per loop turn), WSGI apps and Django's WSGI "
        "handler called with a prebuilt environ. Minimal apps; limits never deny; "
        "one client. Each figure is the fastest of 400 batches of 100 requests, the cases taken in a new random order each round. "
        '"added" is the limited app minus the same app without limiting; the last '
        "column is the peer's added cost divided by stanchion's (the peers send no "
        "rate limit headers on allowed responses unless noted). The metrics rows "
        "compare with the same stanchion app, metrics off.\n\n"
        + md_table(headers, rows)
        + "\n\n"
        + "\n".join(f"- {x}" for x in targets)
    )
    write_section("Web", body)


if __name__ == "__main__":
    main()
