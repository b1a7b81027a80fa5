"""stanchion.drf's throttles in real Django REST framework views, driven
by DRF's own test client (APIClient) and request factory, side by side
with DRF's built-in throttles on the same requests."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import pytest

from ._respcache_apps import _django_ready

_django_ready()

from django.core.cache import cache as django_cache  # noqa: E402
from django.core.exceptions import ImproperlyConfigured  # noqa: E402
from django.test import override_settings  # noqa: E402
from django.urls import path  # noqa: E402
from rest_framework import throttling as drf_throttling  # noqa: E402
from rest_framework.authentication import BaseAuthentication  # noqa: E402
from rest_framework.decorators import (  # noqa: E402
    api_view,
    authentication_classes,
    throttle_classes,
)
from rest_framework.request import Request  # noqa: E402
from rest_framework.response import Response  # noqa: E402
from rest_framework.settings import api_settings  # noqa: E402
from rest_framework.test import APIClient, APIRequestFactory  # noqa: E402
from rest_framework.views import APIView  # noqa: E402

from stanchion import drf, parse_rates  # noqa: E402

from ..conftest import FakeClock  # noqa: E402

# -- a minimal DRF project ------------------------------------------------------


class User:
    """A user without a database: DRF needs ``is_authenticated`` and
    ``pk``."""

    is_authenticated = True

    def __init__(self, pk: str) -> None:
        self.pk = pk


class HeaderAuth(BaseAuthentication):  # type: ignore[misc]
    """``X-User: name`` authenticates as that user."""

    def authenticate(self, request: Any) -> tuple[User, None] | None:
        name = request.META.get("HTTP_X_USER")
        return (User(name), None) if name else None


RATES = {
    "anon": "3/min",
    "user": "5/minute",
    "burst": "2/sec",
    "sustained": "4/hour",
}
REST: dict[str, Any] = {
    "UNAUTHENTICATED_USER": None,
    "DEFAULT_AUTHENTICATION_CLASSES": [f"{__name__}.HeaderAuth"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_THROTTLE_RATES": RATES,
}


class Anon(drf.AnonRateThrottle):
    clock = FakeClock(6000.0)


class UserT(drf.UserRateThrottle):
    clock = Anon.clock


class Scoped(drf.ScopedRateThrottle):
    clock = Anon.clock


class Base(APIView):  # type: ignore[misc]
    # DRF reads its DEFAULT_*_CLASSES once, when rest_framework.views is
    # imported: these views name theirs.
    authentication_classes = [HeaderAuth]


class AnonView(Base):
    throttle_classes = [Anon]

    def get(self, request: Any) -> Response:
        return Response({"ok": True})


class BothView(Base):
    throttle_classes = [Anon, UserT]

    def get(self, request: Any) -> Response:
        return Response({"user": getattr(request.user, "pk", None)})


class BurstView(Base):
    throttle_classes = [Scoped]
    throttle_scope = "burst"

    def get(self, request: Any) -> Response:
        return Response({"scope": "burst"})


class SustainedView(BurstView):
    throttle_scope = "sustained"


class FreeView(BurstView):
    throttle_scope = None


@api_view(["GET"])  # type: ignore[untyped-decorator]
@authentication_classes([HeaderAuth])  # type: ignore[untyped-decorator]
@throttle_classes([UserT])  # type: ignore[untyped-decorator]
def user_fn(request: Any) -> Response:
    return Response({"fn": True})


urlpatterns = [
    path("anon", AnonView.as_view()),
    path("both", BothView.as_view()),
    path("burst", BurstView.as_view()),
    path("sustained", SustainedView.as_view()),
    path("free", FreeView.as_view()),
    path("fn", user_fn),
]


@pytest.fixture(autouse=True)
def project() -> Iterator[None]:
    """This module's URLs and DRF settings, fresh STANCHION settings (so
    fresh limiters) and an empty Django cache (DRF's throttles' store)
    for every test; the shared clock back at a whole hour."""
    Anon.clock.now = 6000.0 * 6  # a multiple of every period used here
    django_cache.clear()
    with override_settings(ROOT_URLCONF=__name__, REST_FRAMEWORK=REST, STANCHION={}):
        yield
    django_cache.clear()


def statuses(client: APIClient, url: str, n: int, **headers: Any) -> list[int]:
    return [client.get(url, headers=headers).status_code for _ in range(n)]


# -- through DRF's test client ------------------------------------------------------


def test_switch_by_one_setting() -> None:
    names = ["stanchion.drf.AnonRateThrottle", "stanchion.drf.UserRateThrottle"]
    with override_settings(REST_FRAMEWORK={**REST, "DEFAULT_THROTTLE_CLASSES": names}):
        classes = api_settings.DEFAULT_THROTTLE_CLASSES
        assert classes == [drf.AnonRateThrottle, drf.UserRateThrottle]

        class Default(APIView):  # type: ignore[misc]
            # What APIView's own default reads (at import time there).
            throttle_classes = api_settings.DEFAULT_THROTTLE_CLASSES

            def get(self, request: Any) -> Response:
                return Response({})

        view = Default.as_view()
        factory = APIRequestFactory()
        codes = [view(factory.get("/d")).status_code for _ in range(5)]
    assert codes == [200, 200, 200, 429, 429]  # anon: 3/min


def test_anon_429_with_drf_body_and_headers() -> None:
    client = APIClient()
    assert statuses(client, "/anon", 3) == [200] * 3
    r = client.get("/anon")
    assert r.status_code == 429
    # DRF's own body and Retry-After, from wait(): one token of 3/min.
    assert r.json() == {
        "detail": "Request was throttled. Expected available in 20 seconds."
    }
    assert r["Retry-After"] == "20"
    assert r["RateLimit-Policy"] == '"anon";q=3;w=60'
    assert r["RateLimit"] == '"anon";r=0;t=20'
    assert r["X-RateLimit-Limit"] == "3"
    assert r["X-RateLimit-Remaining"] == "0"
    Anon.clock.advance(20)
    ok = client.get("/anon")
    assert ok.status_code == 200
    assert ok["RateLimit"] == '"anon";r=0;t=60'


def test_headers_on_allowed_follow_the_setting() -> None:
    client = APIClient()
    first = client.get("/anon")
    assert first["RateLimit"] == '"anon";r=2;t=20'
    assert first["X-RateLimit-Remaining"] == "2"
    with override_settings(STANCHION={"HEADERS_ON_ALLOWED": False}):
        r = client.get("/anon")
        assert r.status_code == 200
        assert "RateLimit" not in r and "X-RateLimit-Limit" not in r
        statuses(client, "/anon", 2)
        refused = client.get("/anon")
        assert refused.status_code == 429
        assert refused["RateLimit"] == '"anon";r=0;t=20'


def test_two_throttles_one_header_list() -> None:
    client = APIClient()
    r = client.get("/both")
    assert r["RateLimit-Policy"] == '"anon";q=3;w=60, "user";q=5;w=60'
    assert r["RateLimit"] == '"anon";r=2;t=20, "user";r=4;t=12'
    # The trio is the most restrictive throttle's.
    assert r["X-RateLimit-Limit"] == "3"
    assert statuses(client, "/both", 3) == [200, 200, 429]
    refused = client.get("/both")
    # DRF takes the longest wait of the throttles that refused: anon's.
    assert refused["Retry-After"] == "20"
    assert refused["X-RateLimit-Remaining"] == "0"


def test_authenticated_users_skip_anon_and_count_per_user() -> None:
    client = APIClient()
    assert statuses(client, "/both", 6, x_user="ann") == [200] * 5 + [429]
    # Anon did not count them: an anonymous client still has its 3.
    assert statuses(client, "/both", 4) == [200] * 3 + [429]
    assert statuses(client, "/both", 1, x_user="bob") == [200]
    r = client.get("/fn", headers={"x-user": "ann"})  # @api_view, same scope
    assert r.status_code == 429
    assert r["RateLimit-Policy"] == '"user";q=5;w=60'


def test_scoped_throttle() -> None:
    client = APIClient()
    assert statuses(client, "/burst", 3) == [200, 200, 429]
    assert statuses(client, "/sustained", 5) == [200] * 4 + [429]
    assert statuses(client, "/free", 10) == [200] * 10
    assert "RateLimit" not in client.get("/free")
    refused = client.get("/burst")
    assert refused["Retry-After"] == "1"
    assert refused["RateLimit-Policy"] == '"burst";q=2;w=1'
    Anon.clock.advance(1)
    assert statuses(client, "/burst", 3) == [200, 200, 429]
    # Per user: ann has her own buckets in each scope.
    assert statuses(client, "/burst", 3, x_user="ann") == [200, 200, 429]


def test_client_identity_is_stanchions() -> None:
    """DRF's get_ident believes X-Forwarded-For from anyone; stanchion
    only from the trusted proxies."""
    client = APIClient()
    forged = [
        client.get("/anon", headers={"x-forwarded-for": f"10.9.0.{i}"}).status_code
        for i in range(4)
    ]
    assert forged == [200, 200, 200, 429]  # one client, whatever it claims
    factory = APIRequestFactory()
    drf_idents = {
        drf_throttling.BaseThrottle().get_ident(
            Request(factory.get("/", HTTP_X_FORWARDED_FOR=f"10.9.0.{i}"))
        )
        for i in range(4)
    }
    assert len(drf_idents) == 4  # DRF would have seen four clients

    with override_settings(STANCHION={"TRUSTED_PROXIES": ["127.0.0.1"]}):
        via_proxy = [
            client.get("/anon", headers={"x-forwarded-for": f"10.9.0.{i}"})
            for i in range(4)
        ]
        assert [r.status_code for r in via_proxy] == [200] * 4
        assert statuses(client, "/anon", 4, x_forwarded_for="10.9.0.1") == [
            200,
            200,
            429,
            429,
        ]


def test_deny_list_is_403_and_enabled_false_lets_all_through() -> None:
    client = APIClient()
    with override_settings(STANCHION={"DENY": ["127.0.0.0/8"]}):
        r = client.get("/anon")
        assert r.status_code == 403
        assert r.json() == {"detail": "This client's address is not allowed."}
    with override_settings(STANCHION={"ENABLED": False}):
        assert statuses(client, "/anon", 6) == [200] * 6


def test_storage_from_settings() -> None:
    """The throttles' limiters live in ``STANCHION["STORAGE_URL"]``: a
    second set of limiters on the same segment (another worker, say)
    sees the counts of the first."""
    import uuid

    from stanchion import SharedMemoryStorage

    name = f"test-drf-{uuid.uuid4().hex}"

    class ShmAnon(drf.AnonRateThrottle):  # the shared limiters: no clock
        pass

    view = AnonView.as_view(throttle_classes=[ShmAnon])
    factory = APIRequestFactory()
    try:
        with override_settings(STANCHION={"STORAGE_URL": f"shm://{name}"}):
            codes = [view(factory.get("/")).status_code for _ in range(3)]
            rule = drf._rule("anon", "3/min", None, None, "anon")
            assert isinstance(rule.limiters.storage, SharedMemoryStorage)
        # New settings, new limiters: the same segment.
        with override_settings(STANCHION={"STORAGE_URL": f"shm://{name}"}):
            assert drf._rule("anon", "3/min", None, None, "anon") is not rule
            codes.append(view(factory.get("/")).status_code)
        with override_settings(STANCHION={}):  # in-process: a fresh count
            codes.append(view(factory.get("/")).status_code)
    finally:
        SharedMemoryStorage(name).unlink(missing_ok=True)
    assert codes == [200, 200, 200, 429, 200]


# -- rates -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "rate",
    [
        *("7/s", "7/sec", "7/m", "7/min", "7/h", "7/hour", "7/d", "7/day"),
        *("7/seconds", "7/minutes", "7/hours", "7/days", "7/mxyz", "7/Min"),
    ],
)
def test_drf_rate_syntax(rate: str) -> None:
    want = drf_throttling.SimpleRateThrottle.parse_rate(None, rate.lower())
    (got,) = parse_rates(drf.parse_drf_rate(rate))
    assert (got.limit, got.period) == want


def test_stanchion_rates_and_bad_rates() -> None:
    assert [tuple(r) for r in parse_rates(drf.parse_drf_rate("2/s;100/day"))] == [
        (2, 1.0),
        (100, 86400.0),
    ]
    assert drf.parse_drf_rate("100 per 5 minutes") == "100 per 5 minutes"
    for bad in ("abc", "0/min", "5/week", "/min", "5/"):
        with pytest.raises(ValueError, match="bad throttle rate"):
            drf.parse_drf_rate(bad)
    with pytest.raises(TypeError):
        drf.parse_drf_rate(5)

    factory = APIRequestFactory()
    rates = {**RATES, "anon": "5/fortnight"}
    with override_settings(REST_FRAMEWORK={**REST, "DEFAULT_THROTTLE_RATES": rates}):
        view = AnonView.as_view()
        with pytest.raises(ImproperlyConfigured, match=r"'anon'.*fortnight"):
            view(factory.get("/"))
    no_rates = override_settings(REST_FRAMEWORK={**REST, "DEFAULT_THROTTLE_RATES": {}})
    with no_rates, pytest.raises(ImproperlyConfigured, match="No default throttle"):
        AnonView.as_view()(factory.get("/"))
    unlimited = {**RATES, "anon": None}
    with override_settings(
        REST_FRAMEWORK={**REST, "DEFAULT_THROTTLE_RATES": unlimited}
    ):
        assert [AnonView.as_view()(factory.get("/")).status_code] * 5 == [200] * 5


def test_bad_identity_and_missing_scope() -> None:
    class NoScope(drf.RateThrottle):
        pass

    class BadKey(drf.RateThrottle):
        scope = "anon"

        def get_ident_key(self, request: Any, view: Any) -> Any:
            return 42

    factory = APIRequestFactory()
    with pytest.raises(ImproperlyConfigured, match="scope"):
        APIView.as_view(throttle_classes=[NoScope])(factory.get("/"))
    with pytest.raises(TypeError, match="get_ident_key"):
        APIView.as_view(throttle_classes=[BadKey])(factory.get("/"))


# -- side by side with DRF's built-in throttles ---------------------------------------


class _View:
    """What a throttle sees of the view: DRF's ``headers`` dict."""

    throttle_scope = "anon"

    def __init__(self) -> None:
        self.headers: dict[str, str] = {}


def _drf_twin(base: type, clock: FakeClock) -> type:
    """DRF's built-in throttle class ``base`` on ``clock``."""
    # DRF reads its rates once, when rest_framework.throttling is
    # imported: the twin names them.
    attrs = {"timer": clock, "THROTTLE_RATES": RATES}
    return type(f"DRF{base.__name__}", (base,), attrs)


def _ours(base: type, clock: FakeClock, algorithm: str | None) -> type:
    attrs = {"clock": clock, "algorithm": algorithm}
    return type(f"Our{base.__name__}", (base,), attrs)


PAIRS = [
    (drf_throttling.AnonRateThrottle, drf.AnonRateThrottle),
    (drf_throttling.UserRateThrottle, drf.UserRateThrottle),
    (drf_throttling.ScopedRateThrottle, drf.ScopedRateThrottle),
]


def _n(throttle: type) -> int:
    """The N of the throttle's rate: 5/minute for "user", else 3/min
    ("anon", and the scope of ``_View``)."""
    return 5 if throttle.scope == "user" else 3


def _replay(
    cls: type, clock: FakeClock, start: float, steps: list[float], n_clients: int = 1
) -> list[tuple[bool, float | None]]:
    """Each step: move ``clock`` to ``start + t`` and send one request per
    client (address 10.0.0.i) through a new throttle of ``cls``, as DRF
    does; (allowed, wait()) of each."""
    factory = APIRequestFactory()
    out = []
    for t in steps:
        clock.now = start + t
        for i in range(n_clients):
            request = Request(factory.get("/", REMOTE_ADDR=f"10.0.0.{i + 1}"))
            throttle = cls()
            ok = throttle.allow_request(request, _View())
            out.append((ok, None if ok else throttle.wait()))
    return out


@pytest.mark.parametrize("pair", PAIRS, ids=lambda p: p[1].__name__)
@pytest.mark.parametrize(
    "algorithm", ["token_bucket", "fixed_window", "sliding_window"]
)
def test_burst_allows_as_many_as_drf(pair: tuple[type, type], algorithm: str) -> None:
    theirs, ours = pair
    clock = FakeClock()
    start = 3600.0 * 10
    steps = [0.0] * 6 + [0.5] * 2  # 6 at once, then 2 more half a second on
    a = _replay(_drf_twin(theirs, clock), clock, start, steps, n_clients=2)
    b = _replay(_ours(ours, clock, algorithm), clock, start, steps, n_clients=2)
    assert [ok for ok, _ in a] == [ok for ok, _ in b]
    assert sum(ok for ok, _ in b) == 2 * _n(ours)  # two clients


@pytest.mark.parametrize("pair", PAIRS, ids=lambda p: p[1].__name__)
def test_fixed_window_waits_as_drf(pair: tuple[type, type]) -> None:
    """A burst at the start of a window: the fixed window's wait() is the
    rest of the window, as DRF's is the time until the oldest request of
    its window expires; both allow again at the same moment."""
    theirs, ours = pair
    clock = FakeClock()
    start = 3600.0 * 10
    steps = [0.0, 1.0, 2.0, 2.0, 2.0, 2.5, 10.0, 33.3, 59.9, 60.0]
    a = _replay(_drf_twin(theirs, clock), clock, start, steps)
    b = _replay(_ours(ours, clock, "fixed_window"), clock, start, steps)
    assert [ok for ok, _ in a] == [ok for ok, _ in b]
    n = _n(ours)
    assert [ok for ok, _ in b] == [True] * n + [False] * (9 - n) + [True]
    waits = [(wa, wb) for (_, wa), (_, wb) in zip(a, b, strict=True) if wa]
    assert [wa for wa, _ in waits] == pytest.approx([60 - t for t in steps[n:-1]])
    for wa, wb in waits:
        assert wb == pytest.approx(wa, abs=1e-6)


@pytest.mark.parametrize("pair", PAIRS, ids=lambda p: p[1].__name__)
def test_steady_pace_is_never_refused_by_either(pair: tuple[type, type]) -> None:
    theirs, ours = pair
    clock = FakeClock()
    steps = [20.0 * i for i in range(12)]  # 3/min, one every 20 seconds
    a = _replay(_drf_twin(theirs, clock), clock, 7200.0, steps)
    b = _replay(_ours(ours, clock, None), clock, 7200.0, steps)
    assert all(ok for ok, _ in a) and all(ok for ok, _ in b)


def test_token_bucket_waits_one_token_where_drf_waits_the_window() -> None:
    """The documented difference: after a burst the token bucket's
    wait() is one token (period / N) where DRF's is the whole window;
    the client really is allowed then."""
    clock = FakeClock()
    steps = [0.0, 0.0, 0.0, 0.0, 20.0, 20.0]
    a = _replay(_drf_twin(drf_throttling.AnonRateThrottle, clock), clock, 0.0, steps)
    b = _replay(_ours(drf.AnonRateThrottle, clock, None), clock, 0.0, steps)
    assert [ok for ok, _ in a] == [True] * 3 + [False] * 3
    assert [ok for ok, _ in b] == [True] * 3 + [False, True, False]
    assert a[3][1] == pytest.approx(60.0)
    assert b[3][1] == pytest.approx(20.0)
    assert b[5][1] == pytest.approx(20.0)
    # DRF's Throttled rounds up for Retry-After: same whole seconds.
    assert math.ceil(b[3][1]) == 20


def test_concurrent_requests_get_exactly_the_quota() -> None:
    """Requests from many threads at once: exactly N pass (one atomic
    decision per request; DRF's read-modify-write of its cache entry can
    let more through)."""
    from concurrent.futures import ThreadPoolExecutor

    class Shared(drf.AnonRateThrottle):  # the settings' limiters
        rate = "7/min"

    view = AnonView.as_view(throttle_classes=[Shared])
    factory = APIRequestFactory()

    def one(_: int) -> int:
        return int(view(factory.get("/")).status_code)

    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(one, range(40)))
    assert codes.count(200) == 7 and codes.count(429) == 33


def test_drfs_own_hooks_throttle_rates_and_timer() -> None:
    """A subclass written for DRF's throttles keeps working on ours: its
    ``THROTTLE_RATES`` name the rates and its ``timer`` is the clock
    (DRF's tests and projects replace ``timer`` to move time)."""

    class XY(drf.ScopedRateThrottle):
        THROTTLE_RATES = {"x": "3/min", "y": "1/min"}
        TIMER_SECONDS = 7200.0

        def timer(self) -> float:
            return self.TIMER_SECONDS

    class XView(Base):
        throttle_classes = [XY]
        throttle_scope = "x"

        def get(self, request: Any) -> Response:
            return Response("x")

    class YView(XView):
        throttle_scope = "y"

    factory = APIRequestFactory()
    x, y = XView.as_view(), YView.as_view()
    assert [x(factory.get("/")).status_code for _ in range(4)] == [200] * 3 + [429]
    assert [y(factory.get("/")).status_code for _ in range(2)] == [200, 429]
    refused = y(factory.get("/"))
    assert refused["Retry-After"] == "60"
    XY.TIMER_SECONDS += 60  # DRF's way to move time: the class's timer
    assert y(factory.get("/")).status_code == 200
    assert x(factory.get("/")).status_code == 200
    # A timer given as a callable object (not a method), as DRF allows.
    clock = FakeClock(7200.0)

    class Timed(drf.AnonRateThrottle):
        timer = clock
        THROTTLE_RATES = {"anon": "1/min"}

    class TView(Base):
        throttle_classes = [Timed]

        def get(self, request: Any) -> Response:
            return Response("t")

    t = TView.as_view()
    assert [t(factory.get("/")).status_code for _ in range(2)] == [200, 429]
    clock.advance(60)
    assert t(factory.get("/")).status_code == 200


def test_drfs_get_cache_key_override_is_the_identity() -> None:
    """A subclass overriding DRF's ``get_cache_key`` (the usual way to
    throttle by something else than the user or address) keeps working:
    its key is the bucket, and None means not throttled, as in DRF; the
    same subclass on DRF's own throttle gives the same answers."""
    from rest_framework import throttling

    def by_api_key(self: Any, request: Any, view: Any) -> str | None:
        key = request.META.get("HTTP_X_API_KEY")
        if key is None:
            return None  # not throttled
        return self.cache_format % {"scope": self.scope, "ident": key}

    ours = type(
        "ByKey",
        (drf.RateThrottle,),
        {"scope": "keyed", "rate": "2/min", "get_cache_key": by_api_key},
    )
    drfs = type(
        "DrfByKey",
        (throttling.SimpleRateThrottle,),
        {"scope": "keyed", "rate": "2/min", "get_cache_key": by_api_key},
    )
    factory = APIRequestFactory()

    def run(throttle: type) -> list[int]:
        class KeyView(Base):
            throttle_classes = [throttle]

            def get(self, request: Any) -> Response:
                return Response("k")

        view = KeyView.as_view()
        out = []
        for key in ("a", "a", "a", "b", "b", "b", None, None, None):
            headers = {} if key is None else {"HTTP_X_API_KEY": key}
            out.append(view(factory.get("/", **headers)).status_code)
        return out

    expected = [200, 200, 429] * 2 + [200] * 3
    assert run(ours) == expected
    assert run(drfs) == expected

    class BadKey(drf.RateThrottle):
        scope = "keyed"
        rate = "2/min"

        def get_cache_key(self, request: Any, view: Any) -> Any:
            return 42

    with pytest.raises(TypeError, match=r"get_cache_key\(\) must return a str"):
        BadKey().allow_request(factory.get("/"), None)


def test_num_proxies_without_trusted_proxies_is_a_check_warning() -> None:
    """DRF's NUM_PROXIES has no meaning here: a project that set it and
    switches would count every client behind its proxy as the proxy.
    ``manage.py check`` says so until TRUSTED_PROXIES is set."""
    from django.core import checks

    throttles = {"DEFAULT_THROTTLE_CLASSES": ["stanchion.drf.AnonRateThrottle"]}
    behind = {**REST, **throttles, "NUM_PROXIES": 1}
    with override_settings(REST_FRAMEWORK=behind, STANCHION={}):
        found = checks.run_checks(tags=["stanchion"])
        assert [e.id for e in found] == ["stanchion.W003"]
        assert "NUM_PROXIES" in found[0].msg and "TRUSTED_PROXIES" in found[0].hint
        # Every client behind the proxy is one client, as the check says.
        factory = APIRequestFactory()
        seen = []
        for i in range(4):
            request = factory.get("/", HTTP_X_FORWARDED_FOR=f"198.51.100.{i}")
            seen.append(AnonView.as_view()(request).status_code)
        assert seen == [200, 200, 200, 429]
    trusted = {"TRUSTED_PROXIES": ["127.0.0.1"]}
    with override_settings(REST_FRAMEWORK=behind, STANCHION=trusted):
        assert checks.run_checks(tags=["stanchion"]) == []
    with override_settings(REST_FRAMEWORK={**REST, **throttles}, STANCHION={}):
        assert checks.run_checks(tags=["stanchion"]) == []
    with override_settings(REST_FRAMEWORK={**REST, "NUM_PROXIES": 1}, STANCHION={}):
        assert checks.run_checks(tags=["stanchion"]) == []  # DRF's own throttles
