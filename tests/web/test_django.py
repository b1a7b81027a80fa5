"""Django middleware, view decorator, settings and system check, in a real
Django project: the sync path through Django's test Client (WSGI
handler), the async path through Django's ASGI handler driven by httpx."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import django
import httpx
import pytest
from django.conf import settings

if not settings.configured:
    settings.configure(
        DEBUG=False,
        SECRET_KEY="tests-only",
        ROOT_URLCONF=__name__,
        ALLOWED_HOSTS=["testserver", "test"],
        INSTALLED_APPS=["stanchion.django"],
        MIDDLEWARE=[],
        STANCHION={},
        USE_TZ=True,
    )
    django.setup()

from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from django.core.handlers.asgi import ASGIHandler
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.test import Client, override_settings
from django.urls import path
from django.utils.decorators import method_decorator
from django.views import View

from stanchion import Limiter
from stanchion.django import ratelimit
from stanchion.http import LimiterCache, Plans, Rule, SettingError, api_key

from ..conftest import FakeClock
from .conftest import AsyncOnlyLimiter, problem

CLOCK = FakeClock()
CACHE = LimiterCache(clock=CLOCK)


class SlowLimiter(Limiter):
    async def ahit(self, key: str | bytes, cost: int = 1) -> Any:
        await asyncio.sleep(1.0)
        return self.hit(key, cost)


# -- views ------------------------------------------------------------------------


key_by_api_key = api_key(valid={"a", "b"})


def hello(request: HttpRequest) -> HttpResponse:
    return JsonResponse({"hello": "world"})


@ratelimit("2/minute", scope="login", limiters=CACHE)
def login(request: HttpRequest) -> HttpResponse:
    return HttpResponse("login")


@ratelimit("2/minute", scope="login", limiters=CACHE)
def login_api(request: HttpRequest) -> HttpResponse:
    return HttpResponse("login-api")


@ratelimit("1/minute", limiters=CACHE)
async def async_view(request: HttpRequest) -> HttpResponse:
    await asyncio.sleep(0)
    return HttpResponse("async")


@ratelimit("1/minute", block=False, limiters=CACHE)
def soft(request: HttpRequest) -> HttpResponse:
    return HttpResponse("limited" if request.limited else "fine")  # type: ignore[attr-defined]


@ratelimit(
    Plans({"free": "1/minute", "paid": "3/minute"}, plan=lambda r: r.header("x-plan")),
    key=api_key(valid={"k", "q"}),
    limiters=CACHE,
)
def plan(request: HttpRequest) -> HttpResponse:
    return HttpResponse("plan")


class Things(View):
    @method_decorator(ratelimit("1/minute", scope="things", limiters=CACHE))
    def get(self, request: HttpRequest) -> HttpResponse:
        return HttpResponse("things")


class AsyncThings(View):
    @method_decorator(ratelimit("1/minute", scope="athings", limiters=CACHE))
    async def get(self, request: HttpRequest) -> HttpResponse:
        return HttpResponse("athings")


@ratelimit(SlowLimiter("100/second"))
async def slow(request: HttpRequest) -> HttpResponse:
    return HttpResponse("slow")


async def fast(request: HttpRequest) -> HttpResponse:
    return HttpResponse("fast")


@ratelimit(AsyncOnlyLimiter("1/minute"), unidentified="share")
async def unidentified(request: HttpRequest) -> HttpResponse:
    return HttpResponse("unidentified")


#: An inner layer's rate limit headers, set by the view itself.
INNER = [
    ("RateLimit-Policy", '"inner";q=9;w=1'),
    ("RateLimit", '"inner";r=8;t=1'),
    ("X-RateLimit-Limit", "9"),
    ("X-RateLimit-Remaining", "8"),
    ("X-RateLimit-Reset", "1"),
]


def inner(request: HttpRequest) -> HttpResponse:
    response = HttpResponse("inner")
    for k, v in INNER:
        response[k] = v
    return response


urlpatterns = [
    path("hello", hello),
    path("inner", inner),
    path("health", hello),
    path("login", login),
    path("login-api", login_api),
    path("async", async_view),
    path("soft", soft),
    path("plan", plan),
    path("things", Things.as_view()),
    path("athings", AsyncThings.as_view()),
    path("slow", slow),
    path("fast", fast),
    path("unidentified", unidentified),
]

MW = ["stanchion.django.RateLimitMiddleware"]
RATE_HEADERS = (
    "Retry-After",
    "Cache-Control",
    "RateLimit-Policy",
    "RateLimit",
    "X-RateLimit-Limit",
    "X-RateLimit-Remaining",
    "X-RateLimit-Reset",
)


def rate_headers(r: Any) -> dict[str, str]:
    return {k: r.headers[k] for k in RATE_HEADERS if k in r.headers}


@pytest.fixture(autouse=True)
def fresh() -> None:
    for info in list(CACHE._by_rate.values()):
        info.limiter.reset()


def stanchion(**kw: Any) -> dict[str, Any]:
    return {"ALGORITHM": "token_bucket", **kw}


def get(c: Client, p: str, ip: str = "203.0.113.1", **headers: str) -> Any:
    return c.get(p, REMOTE_ADDR=ip, headers=headers)


def asgi_client(ip: str = "203.0.113.1") -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=ASGIHandler(), client=(ip, 5000)),
        base_url="http://test",
    )


# -- middleware, sync -----------------------------------------------------------------


def test_middleware_429_headers_exact(clock: FakeClock) -> None:
    limiter = Limiter("2/minute", clock=clock)
    with override_settings(MIDDLEWARE=MW, STANCHION=stanchion(LIMIT=limiter)):
        c = Client()
        r1 = get(c, "/hello")
        clock.advance(12)
        r2 = get(c, "/hello")
        r3 = get(c, "/hello")
    assert [r.status_code for r in (r1, r2, r3)] == [200, 200, 429]
    assert r1.json() == {"hello": "world"}
    assert rate_headers(r1) == {
        "RateLimit-Policy": '"global";q=2;w=60',
        "RateLimit": '"global";r=1;t=30',
        "X-RateLimit-Limit": "2",
        "X-RateLimit-Remaining": "1",
        "X-RateLimit-Reset": "30",
    }
    assert rate_headers(r3) == {
        "Retry-After": "18",
        "Cache-Control": "no-store",
        "RateLimit-Policy": '"global";q=2;w=60',
        "RateLimit": '"global";r=0;t=18',
        "X-RateLimit-Limit": "2",
        "X-RateLimit-Remaining": "0",
        "X-RateLimit-Reset": "48",
    }
    assert r3.headers["Content-Type"] == "application/problem+json"
    assert json.loads(r3.content) == problem(18, 2)


def test_middleware_exemptions_dry_run_and_allowed_headers() -> None:
    conf = stanchion(
        LIMIT="1/minute", EXEMPT_PATHS=["/health"], HEADERS_ON_ALLOWED=False
    )
    with override_settings(MIDDLEWARE=MW, STANCHION=conf):
        c = Client()
        assert [get(c, "/health").status_code for _ in range(3)] == [200] * 3
        r = get(c, "/hello")
        assert r.status_code == 200 and "RateLimit" not in r.headers
        assert get(c, "/hello").status_code == 429
    with override_settings(
        MIDDLEWARE=MW, STANCHION=stanchion(LIMIT="1/minute", DRY_RUN=True)
    ):
        c = Client()
        rs = [get(c, "/hello", "198.51.100.50") for _ in range(3)]
        assert [r.status_code for r in rs] == [200] * 3
        assert rs[2].headers["X-RateLimit-Remaining"] == "0"


def test_middleware_around_a_limited_view_merges_headers() -> None:
    """The site-wide limit and the view's limit both report: their
    RateLimit-Policy and RateLimit items are listed together, and the
    X-RateLimit-* family (one limit only) is the view's own."""
    with override_settings(MIDDLEWARE=MW, STANCHION=stanchion(LIMIT="5/minute")):
        r = get(Client(), "/login", "198.51.100.60")
    assert r.status_code == 200
    site = '"global"'
    assert rate_headers(r) == {
        "RateLimit-Policy": f'"login";q=2;w=60, {site};q=5;w=60',
        "RateLimit": f'"login";r=1;t=30, {site};r=4;t=12',
        "X-RateLimit-Limit": "2",
        "X-RateLimit-Remaining": "1",
        "X-RateLimit-Reset": "30",
    }


def test_header_fast_path_matches_djangos_own_setters() -> None:
    """_add_headers writes Django's header store directly; the result is
    what Django's own header API gives, on an empty response and on one
    that already carries another layer's limits."""
    from stanchion.django import _add_headers, _add_headers_slow

    rule_a = Rule("2/minute", scope="a", limiters=CACHE)
    rule_b = Rule("5/minute", scope="b", limiters=CACHE)
    va = rule_a.check_simple("GET", "/", "192.0.2.7")
    vb = rule_b.check_simple("GET", "/", "192.0.2.7")
    assert va is not None and vb is not None
    fast, slow = HttpResponse("x"), HttpResponse("x")
    for v in (va, vb):
        _add_headers(fast, v)
        _add_headers_slow(slow, v.headers())
        assert list(fast.items()) == list(slow.items())
    assert fast["RateLimit-Policy"] == '"a";q=2;w=60, "b";q=5;w=60'
    assert fast["X-RateLimit-Limit"] == "2"


def test_middleware_spoofing() -> None:
    with override_settings(MIDDLEWARE=MW, STANCHION=stanchion(LIMIT="1/minute")):
        c = Client()
        codes = [
            get(c, "/hello", "198.51.100.1", X_Forwarded_For=f"1.1.1.{i}").status_code
            for i in range(3)
        ]
    assert codes == [200, 429, 429]
    conf = stanchion(LIMIT="1/minute", TRUSTED_PROXIES=["10.0.0.0/8"])
    with override_settings(MIDDLEWARE=MW, STANCHION=conf):
        c = Client()
        codes = [
            get(c, "/hello", "10.0.0.1", X_Forwarded_For=f"1.1.1.{i}").status_code
            for i in range(3)
        ]
        assert codes == [200, 200, 200]
        assert (
            get(c, "/hello", "10.0.0.1", X_Forwarded_For="1.1.1.1").status_code == 429
        )


def test_middleware_plans_via_key_setting() -> None:
    conf = stanchion(
        LIMIT=Plans(
            {"free": "1/minute", "paid": "2/minute"}, plan=lambda r: r.header("x-plan")
        ),
        KEY=f"{__name__}.key_by_api_key",
    )
    with override_settings(MIDDLEWARE=MW, STANCHION=conf):
        c = Client()
        paid = [
            get(c, "/hello", X_Plan="paid", X_Api_Key="a").status_code for _ in range(3)
        ]
        free = [
            get(c, "/hello", X_Plan="free", X_Api_Key="b").status_code for _ in range(2)
        ]
    assert paid == [200, 200, 429] and free == [200, 429]


# -- decorator, sync ------------------------------------------------------------------


def test_decorator_shared_scope_cbv_and_soft() -> None:
    c = Client()
    codes = [get(c, p).status_code for p in ("/login", "/login-api", "/login")]
    assert codes == [200, 200, 429]
    r = get(c, "/login", "198.51.100.9")
    assert r.headers["RateLimit"] == '"login";r=1;t=30'
    assert [get(c, "/things").status_code for _ in range(2)] == [200, 429]
    soft = [get(c, "/soft").content for _ in range(2)]
    assert soft == [b"fine", b"limited"]
    plans = [
        get(c, "/plan", X_Plan="paid", X_Api_Key="k").status_code for _ in range(4)
    ]
    assert plans == [200, 200, 200, 429]
    # no plan header: the first plan ("free"), never unlimited
    assert [get(c, "/plan", X_Api_Key="q").status_code for _ in range(2)] == [200, 429]
    spoof = [
        get(c, "/login", "198.51.100.2", X_Forwarded_For=f"{i}.1.1.1").status_code
        for i in range(3)
    ]
    assert spoof == [200, 200, 429]


def test_async_view_under_the_sync_client() -> None:
    c = Client()
    assert [get(c, "/async").status_code for _ in range(2)] == [200, 429]
    assert [get(c, "/athings").status_code for _ in range(2)] == [200, 429]


# -- async path (ASGI handler) ---------------------------------------------------------


async def test_asgi_middleware_and_async_views() -> None:
    with override_settings(MIDDLEWARE=MW, STANCHION=stanchion(LIMIT="3/minute")):
        async with asgi_client() as c:
            r1 = await c.get("/async")
            r2 = await c.get("/async")
            r3 = await c.get("/athings")
            r4 = await c.get("/athings")
            r5 = await c.get("/hello")
    assert [r.status_code for r in (r1, r2, r3, r4, r5)] == [200, 429, 200, 429, 429]
    # the view's own limit speaks for X-RateLimit-*; both RateLimit fields listed
    assert r1.headers["x-ratelimit-limit"] == "1"
    assert r1.headers["ratelimit"].count(";r=") == 2
    assert r5.headers["retry-after"] == "20"


async def test_asgi_slow_limiter_does_not_stall_other_requests() -> None:
    async with asgi_client() as c:
        slow_req = asyncio.create_task(c.get("/slow"))
        await asyncio.sleep(0.05)
        r = await c.get("/fast")
        # Answered while the slow one still waits: the loop was never
        # blocked (a stall would have let the slow one finish first).
        fast_done_first = not slow_req.done()
        assert (await slow_req).status_code == 200
    assert r.status_code == 200 and fast_done_first


async def test_asgi_middleware_slow_limiter_does_not_stall() -> None:
    conf = stanchion(LIMIT=SlowLimiter("100/second"), EXEMPT_PATHS=["/fast"])
    with override_settings(MIDDLEWARE=MW, STANCHION=conf):
        async with asgi_client() as c:
            slow_req = asyncio.create_task(c.get("/hello"))
            await asyncio.sleep(0.05)
            r = await c.get("/fast")
            # Answered while the slow one still waits: the loop was never
            # blocked (a stall would have let the slow one finish first).
            fast_done_first = not slow_req.done()
            assert (await slow_req).status_code == 200
    assert r.status_code == 200 and fast_done_first


async def test_asgi_unidentified_never_calls_the_blocking_hit() -> None:
    # No client address (scope["client"] is None): unidentified="share"
    # decides through ahit, never through the blocking hit, in the
    # middleware and in the view decorator.
    def no_client() -> httpx.AsyncClient:
        return httpx.AsyncClient(
            transport=httpx.ASGITransport(app=ASGIHandler(), client=None),
            base_url="http://test",
        )

    conf = stanchion(LIMIT=AsyncOnlyLimiter("2/minute"), UNIDENTIFIED="share")
    with override_settings(MIDDLEWARE=MW, STANCHION=conf):
        async with no_client() as c:
            mw = [(await c.get("/fast")).status_code for _ in range(3)]
    with override_settings(MIDDLEWARE=[]):
        async with no_client() as c:
            view = [(await c.get("/unidentified")).status_code for _ in range(2)]
    assert mw == [200, 200, 429]
    assert view == [200, 429]


# -- settings -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("conf", "message"),
    [
        ({"LIMIT": "5/fortnight"}, "STANCHION['LIMIT']: bad rate"),
        (
            {"LIMIT": "5/minute", "TRUSTED_PROXIES": ["lb"]},
            "STANCHION['TRUSTED_PROXIES']: ",
        ),
        ({"LIMIT": "5/minute", "HEADERS": ["x"]}, "STANCHION['HEADERS']: "),
        ({"LIMITS": "5/minute"}, "STANCHION: unknown keys ['LIMITS']"),
        ({"ALGORITHM": "leaky"}, "STANCHION['ALGORITHM'] / STANCHION['MAX_KEYS']: "),
        ({"KEY": "no.such.module.key"}, "STANCHION['KEY']: cannot import"),
        ({"STORAGE_URL": "mongodb://x"}, "STANCHION['STORAGE_URL']: "),
        ({"DRY_RUN": "no"}, "STANCHION['DRY_RUN']: "),
        ({"LIMIT": "5/minute", "HEADERS": False}, "STANCHION['HEADERS']: "),
        ({"EXEMPT_METHODS": None}, "STANCHION['EXEMPT_METHODS']: "),
        # bool("false") is True: refused, not read as "enabled".
        ({"LIMIT": "5/minute", "ENABLED": "false"}, "STANCHION['ENABLED']: "),
    ],
)
def test_bad_settings_fail_check_and_startup(
    conf: dict[str, Any], message: str
) -> None:
    with override_settings(MIDDLEWARE=MW, STANCHION=conf):
        errors = checks.run_checks(tags=["stanchion"])
        assert [e.id for e in errors] == ["stanchion.E001"]
        assert message in errors[0].msg
        with pytest.raises(ImproperlyConfigured, match=message.replace("[", r"\[")):
            Client().get("/hello")


def test_good_settings_pass_the_check() -> None:
    with override_settings(STANCHION=stanchion(LIMIT="5/minute")):
        assert checks.run_checks(tags=["stanchion"]) == []


def test_decorator_bad_settings_fail_at_import() -> None:
    with pytest.raises(SettingError, match=r"^limit: "):
        ratelimit("5/eon")
    with pytest.raises(SettingError, match=r"^block: "):
        ratelimit("5/minute", block="yes")  # type: ignore[arg-type]


def test_middleware_not_used_without_limit() -> None:
    with override_settings(MIDDLEWARE=MW, STANCHION={}):
        c = Client()
        assert [get(c, "/hello").status_code for _ in range(5)] == [200] * 5


def test_unknown_setting_names_the_closest_key() -> None:
    with override_settings(MIDDLEWARE=MW, STANCHION={"TRUSTED_PROXY": ["10.0.0.1"]}):
        errors = checks.run_checks(tags=["stanchion"])
    assert [e.id for e in errors] == ["stanchion.E001"]
    assert (
        "STANCHION: unknown keys ['TRUSTED_PROXY'] "
        "('TRUSTED_PROXY': did you mean 'TRUSTED_PROXIES'?)"
    ) in errors[0].msg


def test_header_fast_path_is_taken_on_this_django() -> None:
    """_add_headers writes Django's ``headers._store`` when it is a dict:
    on the Django installed it is, so the fast path is the one tested."""
    import django

    assert type(HttpResponse("x").headers._store) is dict, django.__version__


def test_items_of_a_limited_response_are_djangos_items() -> None:
    """The handler reads a limited response's headers through its own
    items view, straight off the header store: the same pairs, in the
    same order, as Django's view gives, live as later layers add, change
    and delete headers, with the view's set operations, and after the
    pickle and copies Django's cache and tests make."""
    import copy
    import io
    import pickle
    from collections.abc import ItemsView

    from django.core.handlers.wsgi import WSGIHandler

    sent: list[Any] = []
    with override_settings(
        MIDDLEWARE=MW, STANCHION=stanchion(LIMIT="5/minute", TRUSTED_PROXIES=[])
    ):
        environ = {
            "REQUEST_METHOD": "GET",
            "PATH_INFO": "/hello",
            "SERVER_NAME": "testserver",
            "SERVER_PORT": "80",
            "REMOTE_ADDR": "198.51.100.5",
            "wsgi.input": io.BytesIO(),
            "wsgi.url_scheme": "http",
        }
        r = WSGIHandler()(environ, lambda status, headers: sent.append(headers))
    assert r.status_code == 200 and r["X-RateLimit-Remaining"] == "4"
    assert "items" in vars(r)  # the fast view is the one tested
    # Django's WSGI handler sent exactly Django's pairs.
    assert sent[0] == list(r.headers.items())

    def same(resp: HttpResponse) -> list[tuple[str, str]]:
        mine = resp.items()
        djangos = resp.headers.items()  # Mapping's own view
        assert isinstance(mine, ItemsView)
        assert list(mine) == list(djangos) and len(mine) == len(djangos)
        assert mine == djangos and set(mine) == set(djangos)
        return list(mine)

    pairs = same(r)
    assert ("RateLimit-Policy", '"global";q=5;w=60') in pairs
    assert ("X-RateLimit-Limit", "5") in r.items()
    r["Cache-Control"] = "no-store"
    r["x-ratelimit-limit"] = "7"  # replaces the value, keeps Django's rule
    del r["Content-Type"]
    after = same(r)
    assert ("Cache-Control", "no-store") in after
    assert ("x-ratelimit-limit", "7") in after
    assert all(k.lower() != "content-type" for k, _ in after)
    r.close()
    for twin in (pickle.loads(pickle.dumps(r)), copy.deepcopy(r)):
        assert same(twin) == after
        twin["X-Twin"] = "1"  # its own store, not the original's
        assert ("X-Twin", "1") in twin.items()
        assert ("X-Twin", "1") not in r.items()


# -- the C fast path sends what the Python path sends ---------------------------


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_middleware_fast_path_headers_are_the_python_ones(
    mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same requests on the same fake clock, through the gate (the hit
    and the headers in C) and with rules built without one: byte for
    byte the same rate limit headers, in order, merged with the view's
    own."""
    from stanchion.http import rule as rule_module

    peers = ("203.0.113.7", "2001:db8::1", "198.51.100.9")

    def run() -> list[Any]:
        clock = FakeClock()
        limiter = Limiter("3/minute;5/hour", clock=clock)
        out: list[Any] = []
        with override_settings(MIDDLEWARE=MW, STANCHION=stanchion(LIMIT=limiter)):
            sync_client, handler = Client(), ASGIHandler()

            async def aget(p: str, ip: str) -> Any:
                transport = httpx.ASGITransport(app=handler, client=(ip, 5000))
                async with httpx.AsyncClient(
                    transport=transport, base_url="http://test"
                ) as c:
                    return await c.get(p)

            for step in range(9):
                for ip in peers:
                    for p in ("/hello", "/inner"):
                        if mode == "sync":
                            r = get(sync_client, p, ip)
                            items = list(r.items())
                        else:
                            r = asyncio.run(aget(p, ip))
                            items = r.headers.multi_items()
                        names = {h.lower() for h in RATE_HEADERS}
                        kept = [(k.lower(), v) for k, v in items if k.lower() in names]
                        out.append((step, ip, p, r.status_code, kept))
                clock.advance(13 if step % 3 else 0.4)
        return out

    calls: list[Any] = []
    real = rule_module.Gate

    def counting(*args: Any) -> Any:
        gate = real(*args)
        return lambda peer: calls.append(peer) or gate(peer)

    with monkeypatch.context() as m:
        m.setattr(rule_module, "Gate", counting)
        fast = run()
    assert len(calls) > len(fast) // 2
    with monkeypatch.context() as m:
        m.setattr(rule_module, "Gate", lambda *a: None)
        slow = run()
    assert fast == slow
    assert {row[3] for row in fast} == {200, 429}
    inner_rows = [row[4] for row in fast if row[2] == "/inner" and row[3] == 200]
    # One RateLimit list (both layers), the view's own X-RateLimit-Limit.
    assert inner_rows and all(
        dict(h)["ratelimit"].startswith('"inner";r=8;t=1, ') for h in inner_rows
    )
    assert all(dict(h)["x-ratelimit-limit"] == "9" for h in inner_rows)


# -- the penalty box and the allow/deny lists ------------------------------------


def test_middleware_penalty_and_access_lists_from_settings() -> None:
    conf = stanchion(
        LIMIT="1/minute",
        PENALTY={"after": 2, "within": 60, "ban": 30},
        DENY=["203.0.113.0/24"],
        ALLOW=["10.0.0.0/8"],
        BAN_STATUS=403,
    )
    with override_settings(MIDDLEWARE=MW, STANCHION=conf):
        c = Client()
        statuses = [get(c, "/hello", "198.51.100.4").status_code for _ in range(5)]
        assert statuses == [200, 429, 429, 403, 403]
        r = get(c, "/hello", "198.51.100.4")
        assert r["Retry-After"] == "30" and "banned" in r.json()["detail"]
        r = get(c, "/hello", "203.0.113.50")
        assert r.status_code == 403 and r.json()["title"] == "Forbidden"
        assert not r.has_header("Retry-After")
        assert [get(c, "/hello", "10.2.3.4").status_code for _ in range(3)] == [200] * 3


def test_async_middleware_ban(clock: FakeClock) -> None:
    from stanchion import Penalty

    limiter = Limiter(
        "1/minute", clock=clock, penalty=Penalty(after=1, within=60, ban=10)
    )
    with override_settings(MIDDLEWARE=MW, STANCHION=stanchion(LIMIT=limiter)):

        async def run() -> list[int]:
            async with asgi_client("198.51.100.5") as c:
                out = [(await c.get("/hello")).status_code for _ in range(4)]
                clock.advance(10)
                out.append((await c.get("/hello")).status_code)
                return out

        assert asyncio.run(run()) == [200, 429, 403, 403, 429]


@pytest.mark.parametrize("ban_status", [403, 429])
def test_a_ban_says_when_it_ends_whatever_headers_says(ban_status: int) -> None:
    conf = stanchion(
        LIMIT="1/minute",
        PENALTY={"after": 2, "within": 60, "ban": 30},
        BAN_STATUS=ban_status,
        HEADERS=[],
    )
    with override_settings(MIDDLEWARE=MW, STANCHION=conf):
        c = Client()
        rs = [get(c, "/hello", "198.51.100.4") for _ in range(4)]
        assert [r.status_code for r in rs] == [200, 429, 429, ban_status]
        assert not rs[1].has_header("Retry-After")  # the rate's: as HEADERS says
        assert rs[3]["Retry-After"] == "30" and "banned" in rs[3].json()["detail"]
        assert not rs[3].has_header("RateLimit")

        async def run() -> httpx.Response:
            async with asgi_client("198.51.100.4") as ac:
                return await ac.get("/hello")

        r = asyncio.run(run())
        assert r.status_code == ban_status and r.headers["retry-after"] == "30"


def test_penalty_setting_is_checked() -> None:
    from stanchion.django.settings import stanchion_settings

    with (
        override_settings(
            STANCHION=stanchion(LIMIT="1/minute", PENALTY={"after": 1, "ban": 5})
        ),
        pytest.raises(SettingError, match=r"STANCHION\['PENALTY'\]"),
    ):
        stanchion_settings()


def test_cache_hits_set_headers_as_django_would() -> None:
    """A hit copies a stored entry's headers into the response's store
    only when Django would keep them as they are; an entry from a cache
    shared with other adapters may hold other text, which goes through
    Django's own checks (non-ASCII values MIME-encoded, as on a miss)."""
    from stanchion.django.response_cache import _django_reply
    from stanchion.respcache.entries import Entry, Reply

    def hit(headers: list[tuple[str, str]]) -> HttpResponse:
        entry = Entry("k", "/p", 200, headers, b"body", '"e"', 0.0, ())
        reply = Reply(
            200, [*headers, ("Age", "3"), ("X-Cache", "HIT")], b"body", entry=entry
        )
        reply.entry_headers = len(headers)
        return _django_reply(reply)

    def django_would(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
        response = HttpResponse(b"body")
        del response["Content-Type"]
        for k, v in [*headers, ("Age", "3"), ("X-Cache", "HIT")]:
            response[k] = v
        return list(response.items())

    plain = [("Content-Type", "text/plain"), ("ETag", '"e"'), ("Content-Length", "4")]
    odd = [("Content-Type", "text/plain"), ("X-Name", "Zoë 東京")]
    for headers in (plain, odd, [("X-Tab", "a\tb")]):
        assert list(hit(headers).items()) == django_would(headers)
        assert hit(headers).content == b"body"


# -- concurrency limits: CONCURRENCY, QUEUE, @ratelimit(concurrency=...) ---------

import threading  # noqa: E402
from collections.abc import AsyncIterator, Iterator  # noqa: E402

from django.http import FileResponse, StreamingHttpResponse  # noqa: E402

from stanchion.django.settings import stanchion_settings  # noqa: E402

from .test_concurrency_web import WAIT, Burst, wait_until  # noqa: E402

GO = threading.Event()
STARTED: list[str] = []
AGO: dict[str, asyncio.Event] = {}


def cwork(request: HttpRequest) -> HttpResponse:
    STARTED.append(request.GET.get("i", request.META["REMOTE_ADDR"]))
    assert GO.wait(WAIT)
    return HttpResponse("done")


async def acwork(request: HttpRequest) -> HttpResponse:
    STARTED.append(request.GET["i"])
    await asyncio.wait_for(AGO["go"].wait(), WAIT)
    return HttpResponse("done")


@ratelimit(None, concurrency=1, concurrency_per="client")
def per_client(request: HttpRequest) -> HttpResponse:
    return cwork(request)


@ratelimit("1000/minute", scope="cboom", concurrency=2)
def cboom(request: HttpRequest) -> HttpResponse:
    raise RuntimeError("boom")


@ratelimit("1000/minute", scope="acboom", concurrency=2)
async def acboom(request: HttpRequest) -> HttpResponse:
    raise RuntimeError("boom")


@ratelimit("1/minute", scope="cone", concurrency=3)
def cone(request: HttpRequest) -> HttpResponse:
    return HttpResponse("one")


@ratelimit(None, scope="acqueue", concurrency=1, queue=1, queue_timeout=WAIT)
async def acqueue(request: HttpRequest) -> HttpResponse:
    return await acwork(request)


def cstream(request: HttpRequest) -> StreamingHttpResponse:
    return StreamingHttpResponse(iter([b"a", b"b", b"c"]))


def cfile(request: HttpRequest) -> FileResponse:
    import io

    return FileResponse(io.BytesIO(b"x" * 100))


async def acstream(request: HttpRequest) -> StreamingHttpResponse:
    async def body() -> AsyncIterator[bytes]:
        yield b"a"
        await asyncio.wait_for(AGO["stream"].wait(), WAIT)
        yield b"b"

    return StreamingHttpResponse(body())


urlpatterns += [
    path("cwork", cwork),
    path("acwork", acwork),
    path("per-client", per_client),
    path("cboom", cboom),
    path("acboom", acboom),
    path("cone", cone),
    path("acqueue", acqueue),
    path("cstream", cstream),
    path("cfile", cfile),
    path("acstream", acstream),
]


@pytest.fixture
def conc() -> Iterator[None]:
    GO.clear()
    STARTED.clear()
    AGO.clear()
    yield
    GO.set()


def mw_slots() -> Any:
    return stanchion_settings().probe.slots


def ratelimit_of(view: Any) -> Any:
    for cell in view.__closure__:
        if isinstance(cell.cell_contents, ratelimit):
            return cell.cell_contents
    raise AssertionError("no ratelimit")


def slots_of(view: Any) -> Any:
    (rule,) = ratelimit_of(view)._rules.values()
    return rule.slots


def django_get(path: str, ip: str = "203.0.113.1") -> tuple[int, dict[str, str], bytes]:
    r = Client().get(path, REMOTE_ADDR=ip)
    return r.status_code, {k.lower(): v for k, v in r.items()}, r.content


def test_sync_middleware_burst_runs_queues_refuses_in_order(conc: None) -> None:
    conf = stanchion(LIMIT="100/minute", CONCURRENCY=1, QUEUE=3, QUEUE_TIMEOUT=WAIT)
    with override_settings(MIDDLEWARE=MW, STANCHION=conf):
        slots = mw_slots()
        burst = Burst(lambda i: django_get(f"/cwork?i={i}"))
        burst.start(0, lambda: STARTED == ["0"])
        for i in (1, 2, 3):
            burst.start(i, lambda i=i: slots.queued() == i)  # type: ignore[misc]
        for i in (4, 5):
            burst.start(i, lambda: False)
        for i in (4, 5):
            status, headers, body = burst.results[i]
            assert status == 503 and int(headers["retry-after"]) >= 1
            assert json.loads(body)["status"] == 503
            assert headers["content-type"] == "application/problem+json"
            assert not any(k.startswith(("ratelimit", "x-ratelimit")) for k in headers)
        GO.set()
        burst.join()
        assert STARTED == ["0", "1", "2", "3"]
        for i in range(4):
            status, headers, body = burst.results[i]
            assert (status, body) == (200, b"done") and "ratelimit" in headers
        assert slots.stats()["in_flight"] == 0 and slots.queued() == 0


def test_middleware_concurrency_alone_exemptions_and_rate_refusals(conc: None) -> None:
    conf = stanchion(CONCURRENCY=1, EXEMPT_PATHS=["/health"])
    with override_settings(MIDDLEWARE=MW, STANCHION=conf):
        slots = mw_slots()
        t = threading.Thread(target=lambda: django_get("/cwork"), daemon=True)
        t.start()
        wait_until(lambda: slots.in_flight() == 1, "a slot held")
        assert django_get("/health")[0] == 200  # exempt: no slot
        assert django_get("/hello")[0] == 503
        GO.set()
        t.join(WAIT)
        assert django_get("/hello")[0] == 200
        assert slots.stats()["in_flight"] == 0
        assert "ratelimit" not in django_get("/hello")[1]  # no rate at all
    c = Client()
    assert get(c, "/cone").status_code == 200
    assert [get(c, "/cone").status_code for _ in range(5)] == [429] * 5
    assert slots_of(cone).stats()["in_flight"] == 0


def test_decorator_per_client_slots_and_429(conc: None) -> None:
    burst = Burst(lambda i: django_get("/per-client", f"198.51.100.{i}"))
    burst.start(1, lambda: len(STARTED) == 1)
    burst.start(2, lambda: len(STARTED) == 2)  # another client: its own slot
    status, headers, body = django_get("/per-client", "198.51.100.1")
    assert status == 429 and int(headers["retry-after"]) >= 1
    assert json.loads(body)["status"] == 429
    GO.set()
    burst.join()
    assert [burst.results[i][0] for i in (1, 2)] == [200, 200]
    assert slots_of(per_client).stats()["in_flight"] == 0


@pytest.mark.parametrize("raise_exc", [True, False])
@pytest.mark.parametrize("where", ["memory", "shm"])
def test_exceptions_release_the_slots(raise_exc: bool, where: str) -> None:
    # (A dropped in-process hold frees its slot by itself; a shared
    # memory lease stays taken: a slot not given back shows there.)
    import uuid

    from stanchion import SharedMemoryStorage

    name = f"test-{uuid.uuid4().hex}"
    conf = stanchion(CONCURRENCY=2)
    if where == "shm":
        conf["STORAGE_URL"] = f"shm://{name}"
    try:
        _raise_and_count(conf, raise_exc)
    finally:
        SharedMemoryStorage(name).unlink(missing_ok=True)


def _raise_and_count(conf: dict[str, Any], raise_exc: bool) -> None:
    with override_settings(MIDDLEWARE=MW, STANCHION=conf):
        c = Client(raise_request_exception=raise_exc)
        for _ in range(20):
            for p in ("/cboom", "/acboom"):
                if raise_exc:
                    with pytest.raises(RuntimeError):
                        c.get(p, REMOTE_ADDR="203.0.113.1")
                else:
                    assert get(c, p).status_code == 500
        assert mw_slots().in_flight() == 0
    assert slots_of(cboom).stats()["in_flight"] == 0
    assert slots_of(acboom).stats()["in_flight"] == 0


def test_sync_streamed_and_file_responses_hold_until_closed() -> None:
    with override_settings(MIDDLEWARE=MW, STANCHION=stanchion(CONCURRENCY=1)):
        slots = mw_slots()
        c = Client()
        r = get(c, "/cstream")
        it = iter(r.streaming_content)
        assert next(it) == b"a"
        assert slots.in_flight() == 1  # held while the body is sent
        assert get(c, "/hello").status_code == 503
        assert b"".join(it) == b"bc"
        assert slots.in_flight() == 0
        r = get(c, "/cstream")
        assert slots.in_flight() == 1
        r.close()  # a client gone away: the server closes the response
        assert slots.in_flight() == 0
        r = get(c, "/cfile")
        assert slots.in_flight() == 1
        assert b"".join(r.streaming_content) == b"x" * 100
        assert slots.in_flight() == 0


async def test_asgi_middleware_queue_in_order_and_503(conc: None) -> None:
    AGO["go"] = asyncio.Event()
    conf = stanchion(CONCURRENCY=1, QUEUE=2, QUEUE_TIMEOUT=WAIT)
    with override_settings(MIDDLEWARE=MW, STANCHION=conf):
        slots = mw_slots()
        async with asgi_client() as c:

            async def until(cond: Any) -> None:
                for _ in range(int(WAIT / 0.002)):
                    if cond():
                        return
                    await asyncio.sleep(0.002)
                raise AssertionError("timed out")

            tasks = [asyncio.create_task(c.get("/acwork?i=0"))]
            await until(lambda: STARTED == ["0"])
            for i in (1, 2):
                tasks.append(asyncio.create_task(c.get(f"/acwork?i={i}")))
                await until(lambda i=i: slots.queued() == i)
            r = await c.get("/acwork?i=3")
            assert r.status_code == 503 and int(r.headers["retry-after"]) >= 1
            assert r.json()["status"] == 503
            AGO["go"].set()
            done = await asyncio.gather(*tasks)
    assert [x.status_code for x in done] == [200, 200, 200]
    assert STARTED == ["0", "1", "2"]
    assert slots.stats()["in_flight"] == 0 and slots.queued() == 0


async def test_asgi_decorator_queue_and_streaming(conc: None) -> None:
    AGO["go"] = asyncio.Event()
    AGO["stream"] = asyncio.Event()
    async with asgi_client() as c:
        first = asyncio.create_task(c.get("/acqueue?i=0"))
        for _ in range(int(WAIT / 0.002)):
            if STARTED:
                break
            await asyncio.sleep(0.002)
        slots = slots_of(acqueue)  # (its rule is made on first use)
        second = asyncio.create_task(c.get("/acqueue?i=1"))
        for _ in range(int(WAIT / 0.002)):
            if slots.queued() == 1:
                break
            await asyncio.sleep(0.002)
        r = await c.get("/acqueue?i=2")
        assert r.status_code == 503
        AGO["go"].set()
        assert [(await t).status_code for t in (first, second)] == [200, 200]
        assert STARTED == ["0", "1"] and slots.stats()["in_flight"] == 0
    conf = stanchion(CONCURRENCY=1)
    with override_settings(MIDDLEWARE=MW, STANCHION=conf):
        mw = mw_slots()
        async with asgi_client() as c:
            streamed = asyncio.create_task(c.get("/acstream"))
            for _ in range(int(WAIT / 0.002)):
                if mw.in_flight() == 1:
                    break
                await asyncio.sleep(0.002)
            await asyncio.sleep(0.01)
            assert mw.in_flight() == 1  # held while the body is sent
            assert (await c.get("/hello")).status_code == 503
            AGO["stream"].set()
            r = await streamed
        assert r.content == b"ab" and mw.stats()["in_flight"] == 0


def test_concurrency_settings_are_checked() -> None:
    from stanchion.django.settings import stanchion_settings as read

    with (
        override_settings(STANCHION=stanchion(QUEUE=5)),
        pytest.raises(SettingError, match=r"STANCHION\['QUEUE'\]"),
    ):
        read()
    with (
        override_settings(STANCHION=stanchion(CONCURRENCY=2, CONCURRENCY_PER="x")),
        pytest.raises(SettingError, match=r"STANCHION\['CONCURRENCY_PER'\]"),
    ):
        read()
    with override_settings(
        STANCHION=stanchion(LIMIT="5/minute", CONCURRENCY=2, QUEUE=4, QUEUE_TIMEOUT=1)
    ):
        conf = read()
        assert (conf.probe.slots.limit, conf.probe.slots.queue) == (2, 4)
        assert conf.probe.slots.timeout == 1
        # Not passed on to the view decorators' rules.
        assert "concurrency" not in conf.rule_kw


async def test_asgi_client_gone_mid_stream_releases_the_slot(conc: None) -> None:
    # Django cancels the response when the client disconnects, without
    # closing it: the slot is given back as the content is closed.
    AGO["stream"] = asyncio.Event()
    sent: list[dict[str, Any]] = []
    gone = asyncio.Event()

    received: list[int] = []

    async def receive() -> dict[str, Any]:
        received.append(1)
        if len(received) == 1:
            return {"type": "http.request", "body": b"", "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/acstream",
        "raw_path": b"/acstream",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"test")],
        "client": ("203.0.113.9", 5000),
        "server": ("test", 80),
    }
    with override_settings(MIDDLEWARE=MW, STANCHION=stanchion(CONCURRENCY=1)):
        slots = mw_slots()
        handler = asyncio.create_task(ASGIHandler()(scope, receive, send))
        for _ in range(int(WAIT / 0.002)):
            if any(m.get("body") == b"a" for m in sent):
                break
            await asyncio.sleep(0.002)
        assert slots.in_flight() == 1
        gone.set()
        await asyncio.wait_for(handler, WAIT)
        assert slots.in_flight() == 0


class Replacing:
    """An outer middleware that answers with a response of its own,
    dropping the streamed one (never closed)."""

    def __init__(self, get_response: Any) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        self.get_response(request)
        return HttpResponse("replaced")


def test_streamed_response_dropped_by_an_outer_layer_releases() -> None:
    # (An in-process slot frees itself when its hold is dropped; a shared
    # storage's lease would stay taken until it expires.)
    import gc
    import uuid

    from stanchion import SharedMemoryStorage

    name = f"test-{uuid.uuid4().hex}"
    mw = [f"{__name__}.Replacing", *MW]
    conf = stanchion(CONCURRENCY=1, STORAGE_URL=f"shm://{name}")
    try:
        with override_settings(MIDDLEWARE=mw, STANCHION=conf):
            c = Client()
            for _ in range(3):
                assert get(c, "/cstream").content == b"replaced"
                gc.collect()
                assert mw_slots().in_flight() == 0
    finally:
        SharedMemoryStorage(name).unlink(missing_ok=True)


# -- refusals under HEADERS=[] and in dry run ----------------------------------------


@ratelimit("1000/minute", scope="cdry", concurrency=1, dry_run=True)
def cdry(request: HttpRequest) -> HttpResponse:
    return HttpResponse("dry")


urlpatterns += [path("cdry", cdry)]


def _both_ways(path: str, ip: str) -> list[tuple[int, dict[str, str], bytes]]:
    """One GET through the sync handler (test Client), one through ASGI."""

    async def run() -> httpx.Response:
        async with asgi_client(ip) as ac:
            return await ac.get(path)

    r = asyncio.run(run())
    return [django_get(path, ip), (r.status_code, dict(r.headers), r.content)]


@pytest.mark.parametrize("per", ["global", "client"])
def test_busy_refusals_carry_retry_after_whatever_headers_says(per: str) -> None:
    conf = stanchion(
        LIMIT="1000/minute", CONCURRENCY=1, CONCURRENCY_PER=per, HEADERS=[]
    )
    ip = "203.0.113.1"
    with override_settings(MIDDLEWARE=MW, STANCHION=conf):
        hold = mw_slots().try_acquire(None if per == "global" else ip)
        try:
            answers = _both_ways("/hello", ip)
        finally:
            hold.release()
        for status, headers, body in answers:
            assert status == (503 if per == "global" else 429)
            assert int(headers["retry-after"]) >= 1
            assert json.loads(body)["status"] == status
            assert not any(k.startswith(("ratelimit", "x-ratelimit")) for k in headers)
        assert [a[0] for a in _both_ways("/hello", ip)] == [200, 200]


@pytest.mark.parametrize("per", ["global", "client"])
def test_dry_run_serves_a_request_with_no_slot_and_logs_it(
    per: str, caplog: pytest.LogCaptureFixture
) -> None:
    conf = stanchion(
        LIMIT="1000/minute",
        CONCURRENCY=1,
        CONCURRENCY_PER=per,
        QUEUE=1,
        QUEUE_TIMEOUT=0.05,
        DRY_RUN=True,
    )
    ip = "203.0.113.1"
    with override_settings(MIDDLEWARE=MW, STANCHION=conf):
        rule = stanchion_settings().probe
        hold = rule.slots.try_acquire(None if per == "global" else ip)
        try:
            with caplog.at_level("INFO", logger="stanchion"):
                answers = _both_ways("/hello", ip)
            assert rule.slots.stats()["in_flight"] == 1  # the one taken above
        finally:
            hold.release()
        assert [(s, b) for s, _, b in answers] == [(200, b'{"hello": "world"}')] * 2
        assert rule.dry_run_denials == 2
        refusal = 429 if per == "client" else 503
        logged = [r.getMessage() for r in caplog.records]
        assert sum(f"would have answered {refusal}" in m for m in logged) == 2
        assert rule.slots.stats()["in_flight"] == 0
    # The decorator's slot, in dry run.
    assert django_get("/cdry")[0] == 200  # its rule is built on first use
    slots = slots_of(cdry)
    (rule,) = ratelimit_of(cdry)._rules.values()
    before = rule.dry_run_denials
    hold = slots.try_acquire()
    try:
        assert [(s, b) for s, _, b in _both_ways("/cdry", ip)] == [(200, b"dry")] * 2
    finally:
        hold.release()
    assert rule.dry_run_denials == before + 2 and slots.stats()["in_flight"] == 0


def test_dry_run_logs_would_be_bans_and_records_none(
    caplog: pytest.LogCaptureFixture,
) -> None:
    conf = stanchion(
        LIMIT="1/minute", PENALTY={"after": 2, "within": 60, "ban": 30}, DRY_RUN=True
    )
    with override_settings(MIDDLEWARE=MW, STANCHION=conf):
        rule = stanchion_settings().probe
        with caplog.at_level("INFO", logger="stanchion"):
            c = Client()
            statuses = [get(c, "/hello", "198.51.100.4").status_code for _ in range(3)]
            statuses += [a[0] for a in _both_ways("/hello", "198.51.100.4")]
            statuses.append(get(c, "/hello", "198.51.100.4").status_code)
        assert statuses == [200] * 6
        # Refusals by the rate (2), the would-be ban, and 2 while it lasts.
        assert rule.dry_run_denials == 5
        logged = [r.getMessage() for r in caplog.records]
        assert sum("would have banned" in m for m in logged) == 1
        assert sum("would have refused banned key" in m for m in logged) == 2
        # Recorded nowhere: the settings' limiters (which carry the
        # penalty) and the rule's own hold no ban.
        limiters = stanchion_settings().limiters
        assert limiters.penalty is not None and rule.limiters.penalty is None
        for cache in (limiters, rule.limiters):
            assert all(i.limiter.bans() == [] for i in cache._by_rate.values())
