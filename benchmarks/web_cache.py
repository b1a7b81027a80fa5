"""Cost of a cached hit through each framework's response cache, in-process.

Requests are driven as in benchmarks/web.py (ASGI apps called directly,
WSGI apps and Django's WSGI handler with a prebuilt environ, 100 requests
per sample, the least disturbed sample kept). Every endpoint answers the
same small JSON document; each cache is warmed first, so every timed
request is a hit.

    stanchion (its ASGI/WSGI middleware in front of the app, and each
    framework's own decorator or middleware) vs fastapi-cache2 (InMemoryBackend) on FastAPI,
    flask-caching (SimpleCache) on Flask, cache_page (LocMemCache) on
    Django; "bare" is the same endpoint without any cache.

Run: python benchmarks/web_cache.py   (STANCHION_BENCH_QUICK=1 for a smoke run)
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _bench import fmt_ns, fmt_ratio, md_table, print_table, write_section
from web import asgi_call, measure, wsgi_call

DOC = {"items": [{"id": i, "name": f"item {i}"} for i in range(20)]}
TTL = 3600


def fastapi_cases() -> dict[str, tuple[Callable[[], None], int]]:
    from fastapi import FastAPI
    from fastapi_cache import FastAPICache
    from fastapi_cache.backends.inmemory import InMemoryBackend
    from fastapi_cache.decorator import cache as fc_cache

    from stanchion.asgi import CacheMiddleware
    from stanchion.fastapi import cache as st_cache

    def bare() -> FastAPI:
        app = FastAPI()

        @app.get("/items")
        async def items() -> Any:
            return DOC

        return app

    st_dec = FastAPI()

    @st_dec.get("/items")
    @st_cache(ttl=TTL)
    async def st_items() -> Any:
        return DOC

    FastAPICache.init(InMemoryBackend(), prefix="bench")
    fc = FastAPI()

    @fc.get("/items")
    @fc_cache(expire=TTL)
    async def fc_items() -> Any:
        return DOC

    return {
        "fastapi bare endpoint": asgi_call(bare(), "/items"),
        "stanchion asgi CacheMiddleware": asgi_call(
            CacheMiddleware(bare(), ttl=TTL), "/items"
        ),
        "stanchion fastapi @cache": asgi_call(st_dec, "/items"),
        "fastapi-cache2 @cache (InMemoryBackend)": asgi_call(fc, "/items"),
    }


def flask_cases() -> dict[str, tuple[Callable[[], None], int]]:
    from flask import Flask
    from flask_caching import Cache as FlaskCache

    from stanchion.flask import Stanchion
    from stanchion.wsgi import CacheMiddleware

    def bare() -> Flask:
        app = Flask("bare")

        @app.get("/items")
        def items() -> Any:
            return DOC

        return app

    st = Flask("st")
    ext = Stanchion(st)

    @st.get("/items")
    @ext.cache(ttl=TTL)
    def st_items() -> Any:
        return DOC

    fl = Flask("fl")
    fcache = FlaskCache(fl, config={"CACHE_TYPE": "SimpleCache"})

    @fl.get("/items")
    @fcache.cached(timeout=TTL)
    def fl_items() -> Any:
        return DOC

    return {
        "flask bare endpoint": wsgi_call(bare(), "/items"),
        "stanchion wsgi CacheMiddleware": wsgi_call(
            CacheMiddleware(bare(), ttl=TTL), "/items"
        ),
        "stanchion flask @ext.cache": wsgi_call(st, "/items"),
        "flask-caching @cached (SimpleCache)": wsgi_call(fl, "/items"),
    }


urlpatterns: list[Any] = []


def django_cases() -> dict[str, tuple[Callable[[], None], int]]:
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
        STANCHION_RESPONSE_CACHE={"ttl": TTL, "paths": ["/mw"]},
    )
    django.setup()
    from django.core.handlers.wsgi import WSGIHandler
    from django.http import JsonResponse
    from django.test import override_settings
    from django.urls import path
    from django.views.decorators.cache import cache_page

    from stanchion.django import cache_response
    from stanchion.wsgi import CacheMiddleware as WsgiCache

    def items(request: Any) -> JsonResponse:
        return JsonResponse(DOC)

    global urlpatterns
    urlpatterns = [
        path("items", items),
        path("mw/items", items),
        path("st/items", cache_response(ttl=TTL)(items)),
        path("dj/items", cache_page(TTL)(items)),
    ]
    handler = WSGIHandler()
    with override_settings(MIDDLEWARE=["stanchion.django.CacheMiddleware"]):
        mw_handler = WSGIHandler()
    return {
        "django bare endpoint": wsgi_call(handler, "/items"),
        "stanchion django CacheMiddleware": wsgi_call(mw_handler, "/mw/items"),
        "stanchion django @cache_response": wsgi_call(handler, "/st/items"),
        "stanchion wsgi CacheMiddleware around Django": wsgi_call(
            WsgiCache(WSGIHandler(), ttl=TTL), "/items"
        ),
        "django cache_page (LocMemCache)": wsgi_call(handler, "/dj/items"),
    }


# (stanchion case, peer case, bare case) compared in the summary.
PAIRS = [
    (
        "stanchion asgi CacheMiddleware",
        "fastapi-cache2 @cache (InMemoryBackend)",
        "fastapi bare endpoint",
    ),
    (
        "stanchion fastapi @cache",
        "fastapi-cache2 @cache (InMemoryBackend)",
        "fastapi bare endpoint",
    ),
    (
        "stanchion wsgi CacheMiddleware",
        "flask-caching @cached (SimpleCache)",
        "flask bare endpoint",
    ),
    (
        "stanchion flask @ext.cache",
        "flask-caching @cached (SimpleCache)",
        "flask bare endpoint",
    ),
    (
        "stanchion django CacheMiddleware",
        "django cache_page (LocMemCache)",
        "django bare endpoint",
    ),
    (
        "stanchion django @cache_response",
        "django cache_page (LocMemCache)",
        "django bare endpoint",
    ),
    (
        "stanchion wsgi CacheMiddleware around Django",
        "django cache_page (LocMemCache)",
        "django bare endpoint",
    ),
]


def main() -> None:
    cases = {**fastapi_cases(), **flask_cases(), **django_cases()}
    best = measure(cases)
    rows = [[name, fmt_ns(ns)] for name, ns in best.items()]
    print_table(["per request (cached hit)", "time"], rows)
    summary = [
        [
            st,
            fmt_ns(best[st]),
            fmt_ratio(best[peer] / best[st]) + f" ({peer})",
            fmt_ratio(best[bare] / best[st]),
        ]
        for st, peer, bare in PAIRS
    ]
    heads = ["stanchion", "time", "peer's hit / ours", "bare endpoint / ours"]
    print_table(heads, summary)
    write_section(
        "Response cache",
        "A cached hit per request, in-process (ASGI called directly, WSGI "
        "and Django's WSGI handler with a prebuilt environ); the same 20-item "
        "JSON answer everywhere; minimum over 200 samples of 100 requests.\n\n"
        + md_table(["case", "time per request"], rows)
        + "\n\n"
        + md_table(heads, summary),
    )


if __name__ == "__main__":
    main()
