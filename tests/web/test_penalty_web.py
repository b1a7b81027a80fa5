"""The penalty box and the allow/deny lists through the adapters: a
client refused too often is banned (403 with Retry-After, or 429 with
``ban_status=429``), the ban escalates and expires on the fake clock, a
denied address gets 403 before any limit and an allowed one is never
limited. The rule is shared, so every adapter answers alike; Django's
are in test_django.py."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from flask import Flask
from werkzeug.test import Client as WerkzeugClient

from stanchion import Limiter, Penalty
from stanchion.asgi import RateLimitMiddleware as AsgiMiddleware
from stanchion.fastapi import limit
from stanchion.flask import Stanchion
from stanchion.http import LimiterCache, Rule, SettingError
from stanchion.wsgi import RateLimitMiddleware as WsgiMiddleware

from .._redis import RedisServer
from ..conftest import FakeClock

Get = Callable[[str], tuple[int, dict[str, str], Any]]
PENALTY = {"after": 2, "within": 60, "ban": 30, "factor": 2}


def asgi_get(app: Any) -> Callable[..., Any]:
    def get(ip: str, path: str = "/") -> Any:
        async def go() -> httpx.Response:
            t = httpx.ASGITransport(app=app, client=(ip, 1234))
            async with httpx.AsyncClient(transport=t, base_url="http://t") as c:
                return await c.get(path)

        r = asyncio.run(go())
        return r.status_code, {k.lower(): v for k, v in r.headers.items()}, r.content

    return get


def wsgi_get(app: Any) -> Callable[..., Any]:
    def get(ip: str, path: str = "/") -> Any:
        r = WerkzeugClient(app).get(path, environ_base={"REMOTE_ADDR": ip})
        return r.status_code, {k.lower(): v for k, v in r.headers.items()}, r.data

    return get


async def hello_asgi(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def hello_wsgi(environ: Any, start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


def fastapi_app(**settings: Any) -> FastAPI:
    app = FastAPI()

    @app.get("/")
    def root() -> str:
        return "ok"

    @app.get("/route")
    @limit("1/minute", **settings)
    def route() -> str:
        return "ok"

    return app


def flask_app(clock: FakeClock | None = None, **config: Any) -> Flask:
    """A Flask app limiting "/" to 1/minute, its settings as config keys."""
    app = Flask("penalty")

    @app.get("/")
    def root() -> str:
        return "ok"

    app.config.update({f"STANCHION_{k.upper()}": v for k, v in config.items()})
    app.config["STANCHION_DEFAULT_LIMIT"] = "1/minute"
    Stanchion(app, **({"clock": clock} if clock else {}))
    return app


_hug_apis = 0


def hug_app(**settings: Any) -> tuple[Any, Rule, Rule]:
    """A hug API: "/" under the middleware limiting to 1/minute, and
    "/route" limited to 1/minute by the decorator (the middleware exempts
    it), both with ``settings``; and the two rules."""
    import hug

    from stanchion.hug import RateLimitMiddleware as HugMiddleware
    from stanchion.hug import limit as hug_limit

    global _hug_apis
    _hug_apis += 1
    api = hug.API(f"stanchion_penalty_api_{_hug_apis}")

    @hug.get("/", api=api)
    def root():  # type: ignore[no-untyped-def]
        return "ok"

    @hug.get("/route", api=api)
    @hug_limit("1/minute", **settings)
    def route():  # type: ignore[no-untyped-def]
        return "ok"

    mw = HugMiddleware(limit="1/minute", exempt_paths=["/route"], **settings)
    api.http.add_middleware(mw)
    return api.http.server(), mw.rule, route.__stanchion_rule__


def each_adapter(clock: FakeClock, **settings: Any) -> dict[str, tuple[Get, Rule]]:
    """Each adapter limiting a path to 1/minute with ``settings``, and
    its rule."""
    fast = fastapi_app(clock=clock, **settings)
    route = next(r for r in fast.routes if getattr(r, "path", "") == "/route")
    flask_config = dict(settings)
    if isinstance(flask_config.get("penalty"), Penalty):  # as a config file has it
        p = flask_config["penalty"]
        flask_config["penalty"] = {k: getattr(p, k) for k in PENALTY}
    flask = flask_app(clock, **flask_config)
    asgi = AsgiMiddleware(hello_asgi, limit="1/minute", clock=clock, **settings)
    wsgi = WsgiMiddleware(hello_wsgi, limit="1/minute", clock=clock, **settings)
    hug, hug_mw, hug_route = hug_app(clock=clock, **settings)
    fast_get = asgi_get(fast)
    hug_get = wsgi_get(hug)
    return {
        "asgi": (asgi_get(asgi), asgi.rule),
        "fastapi @limit": (
            lambda ip, path="/route": fast_get(ip, path),
            route.endpoint.__stanchion_rule__,  # type: ignore[attr-defined]
        ),
        "wsgi": (wsgi_get(wsgi), wsgi.rule),
        "flask": (wsgi_get(flask), flask.extensions["stanchion"].default_rule),
        "hug": (hug_get, hug_mw),
        "hug @limit": (lambda ip, path="/route": hug_get(ip, path), hug_route),
    }


def adapters(clock: FakeClock, **settings: Any) -> dict[str, Callable[..., Any]]:
    """Each adapter limiting a path to 1/minute with ``settings``."""
    return {k: get for k, (get, _) in each_adapter(clock, **settings).items()}


KINDS = ["asgi", "fastapi @limit", "wsgi", "flask"]
ALL_KINDS = [*KINDS, "hug", "hug @limit"]


@pytest.mark.parametrize("kind", KINDS)
def test_a_ban_escalates_and_expires(kind: str, clock: FakeClock) -> None:
    get = adapters(clock, penalty=Penalty(**PENALTY))[kind]
    ip = "203.0.113.7"
    assert get(ip)[0] == 200
    assert [get(ip)[0] for _ in range(2)] == [429, 429]  # tolerated
    status, headers, body = get(ip)  # the third refusal in 60 s: banned
    assert status == 403
    assert headers["retry-after"] == "30"
    problem = json.loads(body)
    assert problem["status"] == 403 and "banned" in problem["detail"]
    assert get("198.51.100.1")[0] == 200  # another client is not
    clock.advance(29)
    status, headers, _ = get(ip)
    assert status == 403 and headers["retry-after"] == "1"
    clock.advance(1.5)  # the ban is over; the rate's next token is not there
    assert get(ip)[0] == 429
    clock.advance(30)  # a minute since the first request
    assert get(ip)[0] == 200
    # One refusal counted since the ban (the 429 above), two more ban.
    assert [get(ip)[0] for _ in range(2)] == [429, 403]
    assert get(ip)[1]["retry-after"] == "60"  # the second ban: twice as long


@pytest.mark.parametrize("kind", KINDS)
def test_ban_status_429(kind: str, clock: FakeClock) -> None:
    get = adapters(clock, penalty=Penalty(**PENALTY), ban_status=429)[kind]
    statuses = [get("203.0.113.7") for _ in range(5)]
    assert [s for s, _, _ in statuses] == [200, 429, 429, 429, 429]
    assert statuses[3][1]["retry-after"] == "30"
    assert "banned" in json.loads(statuses[3][2])["detail"]


@pytest.mark.parametrize("kind", KINDS)
def test_allow_and_deny_lists(kind: str, clock: FakeClock) -> None:
    get = adapters(
        clock,
        allow=["10.0.0.0/8", "2001:db8::/32"],
        deny=["203.0.113.0/24", "10.9.0.0/16"],
    )[kind]
    for ip in ("10.1.2.3", "2001:db8::5"):
        for _ in range(4):  # never limited: no 429, no rate headers
            status, headers, _ = get(ip)
            assert status == 200
            assert "ratelimit" not in headers
    for ip in ("203.0.113.9", "10.9.8.7"):  # the longest match wins
        status, headers, body = get(ip)
        assert status == 403
        assert "retry-after" not in headers and "ratelimit" not in headers
        assert json.loads(body)["title"] == "Forbidden"
    assert [get("198.51.100.1")[0] for _ in range(2)] == [200, 429]


def test_flask_penalty_setting_is_checked() -> None:
    with pytest.raises(SettingError, match="STANCHION_PENALTY"):
        flask_app(penalty={"after": 0, "within": 60, "ban": 30})
    with pytest.raises(SettingError, match="STANCHION_PENALTY"):
        flask_app(penalty={"after": 1, "within": 60})


def test_settings_are_checked() -> None:
    with pytest.raises(SettingError, match="ban_status"):
        Rule("1/minute", ban_status=404)
    with pytest.raises(SettingError, match="allow/deny"):
        Rule("1/minute", deny=["not an address"])
    with pytest.raises(SettingError, match="penalty"):
        Rule("1/minute", penalty=Penalty(**PENALTY), limiters=LimiterCache())
    # The same penalty as the shared limiters': fine.
    cache = LimiterCache(penalty=Penalty(**PENALTY))
    assert Rule("1/minute", penalty=Penalty(**PENALTY), limiters=cache)


def test_a_limiter_object_with_its_own_penalty(clock: FakeClock) -> None:
    lim = Limiter("1/minute", clock=clock, penalty=Penalty(**PENALTY))
    get = asgi_get(AsgiMiddleware(hello_asgi, limiter=lim))
    assert [get("203.0.113.7")[0] for _ in range(5)] == [200, 429, 429, 403, 403]
    assert (
        lim.get_ban(
            AsgiMiddleware(hello_asgi, limiter=lim).rule._address_key("203.0.113.7")
        )
        is not None
    )


@pytest.mark.parametrize("kind", KINDS)
def test_ipv6_allow_and_deny_entries_with_trusted_proxies(
    kind: str, clock: FakeClock
) -> None:
    # With trusted proxies the rule names an IPv6 client by its /64 (its
    # bucket); the lists are still checked against its whole address.
    get = adapters(
        clock,
        trusted_proxies=["10.0.0.1"],
        allow=["2001:db8:1::5"],
        deny=["2001:db8:2::/48"],
    )[kind]
    assert [get("2001:db8:1::5")[0] for _ in range(3)] == [200, 200, 200]
    # Another address of that /64 is not on the list: limited.
    assert [get("2001:db8:1::6")[0] for _ in range(2)] == [200, 429]
    status, headers, body = get("2001:db8:2::9")
    assert status == 403 and "retry-after" not in headers
    assert json.loads(body)["detail"] == "This client's address is not allowed."


# -- Retry-After on a ban, whatever ``headers`` says ------------------------------


@pytest.mark.parametrize("ban_status", [403, 429])
@pytest.mark.parametrize("kind", ALL_KINDS)
def test_a_ban_says_when_it_ends_whatever_headers_says(
    kind: str, ban_status: int, clock: FakeClock
) -> None:
    get = adapters(
        clock, penalty=Penalty(**PENALTY), ban_status=ban_status, headers=[]
    )[kind]
    ip = "203.0.113.7"
    answers = [get(ip) for _ in range(4)]
    assert [s for s, _, _ in answers] == [200, 429, 429, ban_status]
    assert "retry-after" not in answers[1][1]  # a rate refusal: as headers says
    status, headers, body = answers[3]
    assert headers["retry-after"] == "30"
    assert not any(k.startswith(("ratelimit", "x-ratelimit")) for k in headers)
    assert "banned" in json.loads(body)["detail"]
    clock.advance(29.2)  # whole seconds, rounded up
    status, headers, _ = get(ip)
    assert (status, headers["retry-after"]) == (ban_status, "1")


# -- dry run: bans imagined, none recorded -------------------------------------------


def _bans_recorded(rule: Rule) -> list[Any]:
    """Every ban (and penalty state) held by the rule's limiters, and by
    the limiters of the LimiterCache it was given."""
    found = []
    for info in rule.limiters._by_rate.values():
        found += info.limiter.bans()
    return found


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_dry_run_logs_would_be_bans_and_records_none(
    kind: str, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    get, rule = each_adapter(clock, penalty=Penalty(**PENALTY), dry_run=True)[kind]
    ip = "203.0.113.7"
    with caplog.at_level(logging.INFO, logger="stanchion"):
        answers = [get(ip) for _ in range(6)]
    assert [s for s, _, _ in answers] == [200] * 6
    # Refusals by the rate (2), the would-be ban, and 2 while it would last.
    assert rule.dry_run_denials == 5
    lines = [r.getMessage() for r in caplog.records]
    assert sum("would have banned" in m for m in lines) == 1
    assert any("for 30.000 s (ban 1 in a row)" in m for m in lines)
    assert sum("would have refused banned key" in m for m in lines) == 2
    # No real ban logged (its line starts "stanchion: client" or "key").
    assert not any(m.startswith(("stanchion: key", "stanchion: client")) for m in lines)
    # Nothing recorded: no limiter of the rule (nor of its cache) holds a
    # ban or any penalty state, so turning dry run off bans no one.
    assert rule.limiters.penalty is None
    assert _bans_recorded(rule) == []
    for info in rule.limiters._by_rate.values():
        assert info.limiter.get_ban(rule._address_key(ip)) is None
    clock.advance(30)  # the would-be ban is over: refusals count again
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="stanchion"):
        assert get(ip)[0] == 200
    assert rule.dry_run_denials == 6
    assert not any("banned" in r.getMessage() for r in caplog.records)


def test_dry_run_shares_no_penalty_with_the_enforcing_rules(clock: FakeClock) -> None:
    # Two rules on one LimiterCache with a penalty: the dry-run one
    # records no refusal, no ban, in the cache the enforcing one uses.
    cache = LimiterCache(clock=clock, penalty=Penalty(**PENALTY))
    dry = Rule("1/minute", scope="s", limiters=cache, dry_run=True)
    live = Rule("1/minute", scope="s", limiters=cache)
    ip = "203.0.113.7"
    for _ in range(8):
        v = dry.check_simple("GET", "/", ip)
        assert v is not None and not v.blocked
    assert dry.dry_run_denials == 7
    assert cache.for_dry_run() is dry.limiters
    assert cache.for_dry_run().penalty is None and cache.penalty is not None
    assert all(i.limiter.bans() == [] for i in cache._by_rate.values())
    assert all(i.limiter.bans() == [] for i in dry.limiters._by_rate.values())
    # The enforcing rule bans on its own count alone.
    statuses = [live.check_simple("GET", "/", ip) for _ in range(4)]
    assert [v.blocked for v in statuses if v] == [False, True, True, True]
    assert statuses[3] is not None and statuses[3].decision.banned  # type: ignore[union-attr]
    # A second dry-run rule on that cache: its own would-be bans.
    again = Rule("1/minute", scope="t", limiters=cache, dry_run=True)
    assert again.limiters is dry.limiters


def test_dry_run_refuses_a_limiter_object_carrying_a_penalty(clock: FakeClock) -> None:
    lim = Limiter("1/minute", clock=clock, penalty=Penalty(**PENALTY))
    with pytest.raises(SettingError, match="dry_run"):
        Rule(lim, dry_run=True)
    with pytest.raises(SettingError, match="dry_run"):
        AsgiMiddleware(hello_asgi, limiter=lim, dry_run=True)
    assert Rule(lim).dry_run is False  # enforcing: fine


def test_dry_run_refuses_a_penalized_limiter_from_plans_or_a_limit_function(
    clock: FakeClock,
) -> None:
    # A limiter object carrying a penalty reached through Plans or a limit
    # function would record its bans as surely as one given as the limit.
    from stanchion.http import Plans
    from stanchion.http.request import Request

    lim = Limiter("1/minute", clock=clock, penalty=Penalty(**PENALTY))
    with pytest.raises(SettingError, match=r"^dry_run: .*carries a penalty"):
        Rule(
            Plans({"free": "5/minute", "paid": lim}, plan=lambda r: "free"),
            dry_run=True,
        )
    rule = Rule(lambda request: lim, dry_run=True)
    for _ in range(4):
        with pytest.raises(SettingError, match=r"^dry_run: .*carries a penalty"):
            rule.check(Request("GET", "/"), "203.0.113.7")
    assert lim.bans() == [] and rule.dry_run_denials == 0
    # Nothing was hit: an enforcing rule on it starts with the full rate.
    live = Rule(lambda request: lim)
    assert [
        live.check(Request("GET", "/"), "203.0.113.7").blocked for _ in range(2)
    ] == [False, True]  # type: ignore[union-attr]


def test_dry_run_imagines_no_ban_for_a_cost_no_limit_allows(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    # A cost above the limit's capacity is refused without asking the
    # limiter, so no penalty counts it: a dry run imagines no ban for it
    # either, as the enforcing rule gives none.
    from stanchion.http.request import Request

    penalty = Penalty(after=1, within=60, ban=30)
    live = Rule("10/minute", cost=lambda request: 50, penalty=penalty, clock=clock)
    dry = Rule(
        "10/minute", cost=lambda request: 50, penalty=penalty, clock=clock, dry_run=True
    )
    ip = "203.0.113.7"
    with caplog.at_level(logging.INFO, logger="stanchion"):
        for _ in range(4):
            v = live.check(Request("GET", "/"), ip)
            assert v is not None and v.blocked and not v.decision.banned  # type: ignore[union-attr]
            v = dry.check(Request("GET", "/"), ip)
            assert v is not None and not v.blocked
    assert _bans_recorded(live) == []
    assert dry.dry_run_denials == 4
    lines = [r.getMessage() for r in caplog.records]
    assert sum("would have limited" in m for m in lines) == 4
    assert not any("banned" in m for m in lines)


def test_dry_run_and_enforcing_rules_keep_their_own_counts_in_redis(
    redis_server: RedisServer,
) -> None:
    # In memory each LimiterCache has its own tables; in Redis the keys
    # are named by the rates, so the dry-run cache must name its own, or
    # each request would count twice against the enforcing rule.
    import uuid

    from stanchion.redis import RedisStorage

    storage = RedisStorage(redis_server.url, prefix=f"t{uuid.uuid4().hex[:8]}:")
    try:
        cache = LimiterCache(storage=storage, penalty=Penalty(**PENALTY))
        dry = Rule("3/minute", scope="s", limiters=cache, dry_run=True)
        live = Rule("3/minute", scope="s", limiters=cache)
        ip = "203.0.113.7"
        seen = []
        for _ in range(3):
            d = dry.check_simple("GET", "/", ip)
            v = live.check_simple("GET", "/", ip)
            assert d is not None and v is not None
            seen.append((v.blocked, v.decision.remaining))
        # The enforcing rule's three allowed hits are its own alone.
        assert seen == [(False, 2), (False, 1), (False, 0)]
        assert dry.dry_run_denials == 0
        # And the dry run's keys live apart, under their own prefix.
        client = __import__("redis").Redis.from_url(redis_server.url)
        names = list(client.scan_iter(f"{storage.prefix}*"))
        client.close()
        dry_prefix = f"{storage.prefix}dry-run:".encode()
        assert len(names) == 2, names
        assert sum(n.startswith(dry_prefix) for n in names) == 1, names
    finally:
        storage.close()


@pytest.mark.parametrize("asynchronous", [False, True])
def test_a_dry_run_spends_no_budget_during_an_imagined_ban(
    clock: FakeClock, asynchronous: bool
) -> None:
    # The same requests through an enforcing rule and its dry run, on
    # one clock: an enforced ban spends none of the client's budget, so
    # neither does the imagined one, and once both bans are over the two
    # rules let the same requests through.
    from stanchion.http.request import Request

    penalty = Penalty(after=1, within=60, ban=30)
    live = Rule("4/minute", scope="s", penalty=penalty, clock=clock)
    dry = Rule("4/minute", scope="s", penalty=penalty, clock=clock, dry_run=True)
    ip = "203.0.113.7"

    def remaining(rule: Rule) -> int:
        if asynchronous:
            v = asyncio.run(rule.acheck(Request("GET", "/"), ip))
        else:
            v = rule.check_simple("GET", "/", ip)
        assert v is not None and v.decision is not None
        return v.decision.remaining

    for _ in range(6):  # 4 allowed, then refused twice: banned
        remaining(live), remaining(dry)
    assert live.check_simple("GET", "/", ip).decision.banned  # type: ignore[union-attr]
    assert dry.dry_run_denials >= 1
    # During the ban, a request every 5 s: the budget would come back by
    # one every 15 s, and a dry run spending it would stay at 0.
    for _ in range(5):
        clock.advance(5)
        remaining(live), remaining(dry)
    clock.advance(10)  # both bans over (30 s), 45 s since the last hit
    after = [(remaining(live), remaining(dry)) for _ in range(3)]
    assert after == [(x, x) for x, _ in after], after
    assert after[0][0] >= 1, after


def test_a_ban_log_line_names_the_client_and_scope(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    # A web rule keys clients by packed bytes; its ban's log line shows
    # the address (an IPv6 client by its network) and the rule's scope.
    rule = Rule(
        "2/minute",
        scope="api",
        penalty=Penalty(after=1, within=60, ban=30),
        clock=clock,
    )
    with caplog.at_level(logging.WARNING, logger="stanchion"):
        for ip in ("203.0.113.7", "2001:db8::1"):
            for _ in range(5):
                rule.check_simple("GET", "/", ip)
    lines = [r.getMessage() for r in caplog.records if "banned for" in r.getMessage()]
    assert lines == [
        "stanchion: client 203.0.113.7 (scope 'api') banned for 30.000 s "
        "(ban 1 in a row)",
        "stanchion: client 2001:db8::/64 (scope 'api') banned for 30.000 s "
        "(ban 1 in a row)",
    ]
