"""Django's response cache through Django's own handlers: the middleware
in sync mode (WSGI, Django's test Client) reading its settings, and an
``async def`` view under ``@cache_response`` served by the ASGI handler."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest
from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from django.core.handlers.asgi import ASGIHandler
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.template.response import TemplateResponse
from django.test import Client, override_settings
from django.urls import path

from stanchion.django import CacheMiddleware, cache_response

from ._respcache_apps import _django_ready

_django_ready()

CALLS = {"page": 0, "other": 0, "async": 0}


def page(request: HttpRequest) -> HttpResponse:
    CALLS["page"] += 1
    return JsonResponse({"n": CALLS["page"]})


def other(request: HttpRequest) -> HttpResponse:
    CALLS["other"] += 1
    return JsonResponse({"n": CALLS["other"]})


@cache_response(ttl=60, max_age=30)
async def async_page(request: HttpRequest) -> HttpResponse:
    CALLS["async"] += 1
    await asyncio.sleep(0)
    return JsonResponse({"n": CALLS["async"]})


@cache_response(ttl=60)
def template_page(request: HttpRequest) -> HttpResponse:
    CALLS["template"] = CALLS.get("template", 0) + 1
    name = "csrf.html" if "csrf" in request.GET else "page.html"
    return TemplateResponse(request, name, {"n": CALLS["template"]})


@cache_response(ttl=60)
async def async_template_page(request: HttpRequest) -> HttpResponse:
    CALLS["atemplate"] = CALLS.get("atemplate", 0) + 1
    name = "csrf.html" if "csrf" in request.GET else "page.html"
    return TemplateResponse(request, name, {"n": CALLS["atemplate"]})


@cache_response(ttl=60)
async def slow_async_page(request: HttpRequest) -> HttpResponse:
    CALLS["slow"] = CALLS.get("slow", 0) + 1
    await asyncio.sleep(0.2)
    return HttpResponse("slow")


urlpatterns = [
    path("api/page", page),
    path("other", other),
    path("async", async_page),
    path("template", template_page),
    path("atemplate", async_template_page),
    path("slow", slow_async_page),
]

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "OPTIONS": {
            "loaders": [
                (
                    "django.template.loaders.locmem.Loader",
                    {
                        "page.html": "page {{ n }}",
                        "csrf.html": "<form>{% csrf_token %}</form> {{ n }}",
                    },
                )
            ]
        },
    }
]

MW = ["stanchion.django.CacheMiddleware"]


def test_middleware_sync_from_settings() -> None:
    with override_settings(
        ROOT_URLCONF=__name__,
        MIDDLEWARE=MW,
        STANCHION_RESPONSE_CACHE={"ttl": 60, "paths": ["/api/"]},
    ):
        c = Client()
        r1 = c.get("/api/page?b=2&a=1")
        r2 = c.get("/api/page?a=1&b=2")
        assert (r1["X-Cache"], r2["X-Cache"]) == ("MISS", "HIT")
        assert r1.content == r2.content
        assert r2["Content-Type"] == "application/json"
        nm = c.get("/api/page?a=1&b=2", headers={"If-None-Match": r1["ETag"]})
        assert nm.status_code == 304
        # Outside the configured paths nothing is cached.
        o1, o2 = c.get("/other"), c.get("/other")
        assert "X-Cache" not in o2 and o1.content != o2.content


def test_middleware_settings_checked() -> None:
    bad_type = override_settings(STANCHION_RESPONSE_CACHE=["ttl", 60])
    with bad_type, pytest.raises(ImproperlyConfigured, match="must be a dict"):
        CacheMiddleware(page)
    bad_ttl = override_settings(STANCHION_RESPONSE_CACHE={"ttl": -1})
    with bad_ttl, pytest.raises(ImproperlyConfigured) as info:
        CacheMiddleware(page)
    assert str(info.value).startswith("STANCHION_RESPONSE_CACHE: ttl ")
    with pytest.raises(TypeError, match="paths"):
        CacheMiddleware(page, paths="/api/")
    with pytest.raises(ValueError):
        CacheMiddleware(page, ttl=-1)


@pytest.mark.parametrize(
    ("conf", "message"),
    [
        (
            {"tll": 60},
            "STANCHION_RESPONSE_CACHE: unknown keys ['tll'] "
            "('tll': did you mean 'ttl'?)",
        ),
        ({"ttl": "60"}, "STANCHION_RESPONSE_CACHE: ttl must be a number"),
        ({"paths": "/api/"}, "STANCHION_RESPONSE_CACHE: paths must be a list"),
        ({"backend": "redis://localhost"}, "STANCHION_RESPONSE_CACHE: backend "),
    ],
)
def test_middleware_bad_settings_fail_check_and_startup(
    conf: dict[str, Any], message: str
) -> None:
    """A typo or a wrong type in STANCHION_RESPONSE_CACHE is reported by
    manage.py check and at startup by the setting's name, not as a bare
    TypeError from ResponseCache."""
    with override_settings(
        ROOT_URLCONF=__name__, MIDDLEWARE=MW, STANCHION_RESPONSE_CACHE=conf
    ):
        errors = checks.run_checks(tags=["stanchion"])
        assert [e.id for e in errors] == ["stanchion.E002"]
        assert message in errors[0].msg
        with pytest.raises(ImproperlyConfigured) as info:
            Client().get("/api/page")
        assert str(info.value).startswith(message)
    with override_settings(STANCHION_RESPONSE_CACHE={"ttl": 60, "paths": ["/a/"]}):
        assert checks.run_checks(tags=["stanchion"]) == []


def test_async_view_under_asgi() -> None:
    async def go() -> list[Any]:
        transport = httpx.ASGITransport(app=ASGIHandler())
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            return [await c.get("/async") for _ in range(3)]

    with override_settings(ROOT_URLCONF=__name__, ALLOWED_HOSTS=["test"]):
        rs = asyncio.run(go())
    assert [r.headers["x-cache"] for r in rs] == ["MISS", "HIT", "HIT"]
    assert {r.json()["n"] for r in rs} == {1}
    assert rs[1].headers["cache-control"] == "public, max-age=30"
    assert CALLS["async"] == 1


def test_cookies_set_by_django_are_never_stored() -> None:
    @cache_response(ttl=60)
    def view(request: HttpRequest) -> HttpResponse:
        out = HttpResponse("hi")
        out.set_cookie("sid", "x")
        return out

    from django.test import RequestFactory

    rf = RequestFactory()
    assert view(rf.get("/c"))["X-Cache"] == "MISS"
    r = view(rf.get("/c"))
    assert r["X-Cache"] == "MISS" and r.cookies["sid"].value == "x"


@pytest.mark.parametrize("url", ["/template", "/atemplate"])
def test_template_response_is_rendered_then_cached(url: str) -> None:
    # Generic class-based views return a TemplateResponse, which Django
    # renders after the view: the decorator renders it itself, so the
    # page is stored, and what its template did (a CSRF token here) is
    # seen before storing.
    with override_settings(ROOT_URLCONF=__name__, TEMPLATES=TEMPLATES):
        c = Client()
        r1, r2 = c.get(url), c.get(url)
        assert (r1["X-Cache"], r2["X-Cache"]) == ("MISS", "HIT")
        assert r1.content == r2.content and r1.content.startswith(b"page ")
        f1, f2 = c.get(url + "?csrf=1"), c.get(url + "?csrf=1")
        assert (f1["X-Cache"], f2["X-Cache"]) == ("MISS", "MISS")
        assert b"csrfmiddlewaretoken" in f2.content


def test_async_view_under_wsgi_concurrent_misses() -> None:
    # Under WSGI each call of an async view runs in an event loop of its
    # own: a concurrent miss cannot await the first one's flight (it
    # raised "attached to a different loop"), it runs the view itself.
    import threading

    statuses: list[int] = []

    def get() -> None:
        statuses.append(Client().get("/slow").status_code)

    with override_settings(ROOT_URLCONF=__name__):
        threads = [threading.Thread(target=get) for _ in range(2)]
        for t in threads:
            t.start()
            time.sleep(0.05)
        for t in threads:
            t.join()
        assert statuses == [200, 200]
        assert Client().get("/slow")["X-Cache"] == "HIT"
