"""The shared HTTP layer: identity, proxies, plans, headers, bad settings."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from typing import Any

import pytest
import redis.asyncio

from stanchion import Limiter
from stanchion.http import (
    ClientAddress,
    LimiterCache,
    Plans,
    Reply,
    Request,
    Rule,
    SettingError,
    Verdict,
    api_key,
    authenticated_user,
)
from stanchion.redis import RedisStorage

from .._redis import SLOW, RedisServer
from ..conftest import SANITIZED, FakeClock
from .conftest import AsyncOnlyLimiter


def req(
    path: str = "/",
    method: str = "GET",
    headers: dict[str, str] | None = None,
    user: Any = None,
) -> Request:
    h = {k.lower(): v for k, v in (headers or {}).items()}
    return Request(
        method, path, h.get, None, (lambda: user) if user is not None else None
    )


def hits(rule: Rule, n: int, peer: str | None = "10.0.0.1", **kw: Any) -> list[bool]:
    out = []
    for _ in range(n):
        v = rule.check(req(**kw), peer)
        out.append(v is None or not v.blocked)
    return out


# -- client address -------------------------------------------------------------

PROXIES = ["10.0.0.0/8", "192.168.1.5"]


@pytest.mark.parametrize(
    ("peer", "xff", "expected"),
    [
        ("203.0.113.9", None, "203.0.113.9"),
        # Not from a trusted proxy: the header is ignored.
        ("203.0.113.9", "1.1.1.1", "203.0.113.9"),
        # From a proxy: the rightmost untrusted address.
        ("10.1.2.3", "198.51.100.7", "198.51.100.7"),
        ("10.1.2.3", "6.6.6.6, 198.51.100.7", "198.51.100.7"),
        ("10.1.2.3", "6.6.6.6, 198.51.100.7, 10.9.9.9, 192.168.1.5", "198.51.100.7"),
        # Every hop trusted: the leftmost one.
        ("10.1.2.3", "10.0.0.7, 10.0.0.8", "10.0.0.7"),
        # No header from the proxy: the proxy itself.
        ("10.1.2.3", None, "10.1.2.3"),
        # Ports and IPv4-mapped forms name the same client.
        ("10.1.2.3", "198.51.100.7:4711", "198.51.100.7"),
        ("10.1.2.3", "::ffff:198.51.100.7", "198.51.100.7"),
        # Garbage stops the walk at the last trusted hop.
        ("10.1.2.3", "198.51.100.7, not-an-ip", "10.1.2.3"),
        ("10.1.2.3", "198.51.100.7, not-an-ip, 10.0.0.9", "10.0.0.9"),
        ("10.1.2.3", ",,,", "10.1.2.3"),
        ("10.1.2.3", "1.2.3.4\x00", "10.1.2.3"),
        ("10.1.2.3", "é" * 5000, "10.1.2.3"),
        ("10.1.2.3", "[2001:db8::1]:80", "2001:db8::/64"),
        ("10.1.2.3", "2001:db8::1", "2001:db8::/64"),
    ],
)
def test_x_forwarded_for(peer: str, xff: str | None, expected: str) -> None:
    ca = ClientAddress(PROXIES)
    headers = {"x-forwarded-for": xff} if xff is not None else {}
    assert ca(peer, headers.get) == expected


def test_absurdly_long_forwarded_chain_is_bounded() -> None:
    ca = ClientAddress(["10.0.0.0/8"])
    chain = ", ".join(["10.0.0.1"] * 100_000)
    # More trusted hops than MAX_HOPS: the walk stops at a trusted hop.
    assert ca("10.1.1.1", {"x-forwarded-for": "9.9.9.9, " + chain}.get) == "10.0.0.1"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("for=198.51.100.7", "198.51.100.7"),
        ('for="198.51.100.7:4711";proto=https', "198.51.100.7"),
        ('for=6.6.6.6, for="[2001:db8:cafe::17]:4711"', "2001:db8:cafe::/64"),
        ("for=6.6.6.6, For=198.51.100.7;by=10.0.0.1", "198.51.100.7"),
        ("for=198.51.100.7, for=10.0.0.4", "198.51.100.7"),
        ("for=unknown", "10.1.2.3"),
        ("for=_hidden", "10.1.2.3"),
        ("proto=http", "10.1.2.3"),
        ("for=1.1.1.1;for=2.2.2.2", "10.1.2.3"),
        ('for="[::1', "10.1.2.3"),
        ("garbage", "10.1.2.3"),
        # RFC 7239: quoted strings may hold "," and ";", which separate
        # nothing there; only for= counts.
        ('for=198.51.100.7;ext="a,b"', "198.51.100.7"),
        ('for=198.51.100.7;ext="x;for=6.6.6.6"', "198.51.100.7"),
        ('for="6.6.6.6, for=7.7.7.7"', "10.1.2.3"),
        ('for=6.6.6.6, for="198.51.100.7";by="[2001:db8::1]"', "198.51.100.7"),
        ('FOR="\\[2001:db8:cafe::17\\]:4711"', "2001:db8:cafe::/64"),
        ('for="198.51.100.7:_port"', "198.51.100.7"),
        ("for=198.51.100.7 ; proto=https , ", "198.51.100.7"),
        ("for=198.51.100.7,,", "198.51.100.7"),
        ('for="_hidden"', "10.1.2.3"),
        ('for="unknown:80"', "10.1.2.3"),
        # A node must be quoted when it is no token, and be a node.
        ("for=[2001:db8::1]", "10.1.2.3"),
        ("for=198.51.100.7:80", "10.1.2.3"),
        ('for="198.51.100.7 "', "10.1.2.3"),
        ('for="2001:db8::1"', "10.1.2.3"),
        ('for="[198.51.100.7]"', "10.1.2.3"),
        ('for="1.2.3.4.5"', "10.1.2.3"),
        ("for=010.1.2.3", "10.1.2.3"),
        # Malformed anywhere: the client cannot pick the element read.
        ("for=6.6.6.6;proto=http;proto=https", "10.1.2.3"),
        ('for="6.6.6.6, for=198.51.100.7', "10.1.2.3"),
        ("for=6.6.6.6, for=198.51.100.7\x00", "10.1.2.3"),
        ("for=6.6.6.6, for=198.51.100.7, =x", "10.1.2.3"),
        ("for=6.6.6.6, for =198.51.100.7", "10.1.2.3"),
        ("for=6.6.6.6, for=", "10.1.2.3"),
        ('for="é"', "10.1.2.3"),
        ("for=6.6.6.6;" + "a=1;" * 20, "10.1.2.3"),
    ],
)
def test_forwarded(value: str, expected: str) -> None:
    ca = ClientAddress(["10.0.0.0/8"], header="Forwarded")
    assert ca("10.1.2.3", {"forwarded": value}.get) == expected


@pytest.mark.parametrize(
    "value",
    [
        " ," * 100_000 + "\x00",
        'for="' + "\\\\a" * 100_000,
        "for=6.6.6.6;" * 100_000,
        "for=" + "a" * 200_000 + ";",
        ", ".join(["for=10.0.0.1"] * 100_000),
    ],
)
def test_forwarded_parsing_is_linear_and_bounded(value: str) -> None:
    ca = ClientAddress(["10.0.0.0/8"], header="Forwarded")
    start = time.process_time()
    assert ca("10.1.2.3", {"forwarded": value}.get) in ("10.1.2.3", "10.0.0.1")
    # Linear: well under a second (quadratic parsing of these headers
    # takes minutes); AddressSanitizer's pass runs every step 2-3x slower.
    assert time.process_time() - start < (3.0 if SANITIZED else 1.0)


def test_forwarded_header_is_ignored_when_xff_is_configured() -> None:
    ca = ClientAddress(["10.0.0.0/8"])
    assert ca("10.1.2.3", {"forwarded": "for=6.6.6.6"}.get) == "10.1.2.3"


def test_unix_socket_peer_trusted_only_when_configured() -> None:
    h = {"x-forwarded-for": "198.51.100.7"}.get
    assert ClientAddress([])(None, h) == ""
    assert ClientAddress(["10.0.0.0/8"])(None, h) == ""
    assert ClientAddress(["unix"])(None, h) == "198.51.100.7"


def test_ipv6_grouping() -> None:
    assert ClientAddress()("2001:db8::1", {}.get) == "2001:db8::/64"
    assert ClientAddress()("2001:db8::ffff:1", {}.get) == "2001:db8::/64"
    assert ClientAddress(ipv6_prefix=128)("2001:db8::1", {}.get) == "2001:db8::1"
    assert ClientAddress()("::ffff:1.2.3.4", {}.get) == "1.2.3.4"


@pytest.mark.parametrize(
    ("kwargs", "setting"),
    [
        ({"trusted_proxies": ["10.0.0.300"]}, "trusted_proxies"),
        ({"trusted_proxies": [10]}, "trusted_proxies"),
        ({"forwarded_header": "X-Real-IP"}, "forwarded_header"),
        ({"ipv6_prefix": 0}, "ipv6_prefix"),
        ({"headers": ["ratelimit", "bogus"]}, "headers"),
        ({"headers_on_allowed": "yes"}, "headers_on_allowed"),
        ({"dry_run": 1}, "dry_run"),
        ({"cost": 0}, "cost"),
        ({"cost": 11}, "cost"),
        ({"cost": "2"}, "cost"),
        ({"exempt_paths": [""]}, "exempt_paths"),
        ({"exempt_methods": ["G ET"]}, "exempt_methods"),
        ({"exempt_when": 3}, "exempt_when"),
        ({"key": "ip"}, "key"),
        ({"unidentified": "maybe"}, "unidentified"),
        ({"scope": ""}, "scope"),
        ({"response": "429"}, "response"),
        ({"algorithm": "leaky"}, "algorithm/max_keys"),
        ({"headers": False}, "headers"),
        ({"headers": None}, "headers"),
        ({"trusted_proxies": None}, "trusted_proxies"),
        ({"trusted_proxies": 5}, "trusted_proxies"),
        ({"exempt_paths": None}, "exempt_paths"),
        ({"exempt_methods": True}, "exempt_methods"),
    ],
)
def test_bad_settings_fail_at_construction(
    kwargs: dict[str, Any], setting: str
) -> None:
    with pytest.raises(SettingError) as info:
        Rule("10/second", **kwargs)
    assert info.value.setting == setting
    assert str(info.value).startswith(setting + ": ")


@pytest.mark.parametrize("bad", ["10/fortnight", "ten/second", "", "0/second", 42])
def test_bad_rate_names_the_setting(bad: Any) -> None:
    with pytest.raises(SettingError, match=r"^limit: "):
        Rule(bad)


def test_bad_plan_rate_fails_at_construction() -> None:
    with pytest.raises(SettingError, match="plan 'pro'"):
        Plans({"free": "10/minute", "pro": "10/fortnight"}, plan=lambda r: "free")
    with pytest.raises(SettingError, match="default plan"):
        Plans({"free": "10/minute"}, plan=lambda r: "free", default="gold")


# -- identity -------------------------------------------------------------------


def test_default_key_is_the_peer(clock: FakeClock) -> None:
    rule = Rule("2/minute", clock=clock)
    assert hits(rule, 3, "1.1.1.1") == [True, True, False]
    assert hits(rule, 1, "2.2.2.2") == [True]


def test_spoofed_xff_without_trusted_proxies_gains_nothing(clock: FakeClock) -> None:
    rule = Rule("2/minute", clock=clock)
    got = [
        hits(rule, 1, "6.6.6.6", headers={"X-Forwarded-For": f"1.2.3.{i}"})[0]
        for i in range(5)
    ]
    assert got == [True, True, False, False, False]


def test_spoofed_xff_through_a_trusted_proxy_gains_nothing(clock: FakeClock) -> None:
    # The proxy appends the real peer; the client's forged prefix is left
    # of it and never read.
    rule = Rule("2/minute", trusted_proxies=["10.0.0.0/8"], clock=clock)
    got = [
        hits(rule, 1, "10.0.0.2", headers={"X-Forwarded-For": f"1.2.3.{i}, 6.6.6.6"})[0]
        for i in range(5)
    ]
    assert got == [True, True, False, False, False]
    # Garbage from the client lands in one bucket (the proxy's), not a fresh one each.
    garbage = [
        hits(rule, 1, "10.0.0.2", headers={"X-Forwarded-For": f"junk{i}"})[0]
        for i in range(5)
    ]
    assert garbage == [True, True, False, False, False]


def test_api_key_helper_falls_back_to_address(clock: FakeClock) -> None:
    rule = Rule(
        "1/minute", key=api_key("X-API-Key", valid={"k1", "k2", "secret"}), clock=clock
    )
    assert hits(rule, 2, "1.1.1.1", headers={"X-API-Key": "k1"}) == [True, False]
    assert hits(rule, 1, "1.1.1.1", headers={"X-API-Key": "k2"}) == [True]
    # No key: limited per address, not in one shared "no key" bucket.
    assert hits(rule, 2, "1.1.1.1") == [True, False]
    assert hits(rule, 1, "2.2.2.2") == [True]
    v = rule.check(req(headers={"X-API-Key": "secret"}), "3.3.3.3")
    assert v is not None and v.request.key is not None
    assert "secret" not in v.request.key and v.request.key.startswith("apikey:")


def test_authenticated_user_helper(clock: FakeClock) -> None:
    class User:
        is_authenticated = True
        pk = 7

    class Anonymous:
        is_authenticated = False
        pk = None

    rule = Rule("1/minute", key=authenticated_user(), clock=clock)
    assert hits(rule, 2, "1.1.1.1", user=User()) == [True, False]
    assert hits(rule, 1, "2.2.2.2", user=User()) == [False]  # same user elsewhere
    assert hits(rule, 1, "2.2.2.2", user=Anonymous()) == [True]
    assert hits(rule, 1, "2.2.2.2", user=Anonymous()) == [False]
    assert hits(rule, 1, "3.3.3.3", user=Anonymous()) == [True]


def test_key_function_returning_nothing_falls_back_to_address(clock: FakeClock) -> None:
    rule = Rule("1/minute", key=lambda r: None, clock=clock)
    assert hits(rule, 2, "1.1.1.1") == [True, False]
    assert hits(rule, 1, "2.2.2.2") == [True]


def test_unidentified_requests(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    deny = Rule("5/minute", clock=clock)
    v = deny.check(req(), None)
    assert v is not None and v.blocked and v.decision is None
    status, headers, body = v.reply()
    assert status == 429
    assert "Retry-After" not in dict(headers)
    assert dict(headers)["Cache-Control"] == "no-store"
    assert "could not be identified" in json.loads(body)["detail"]

    with caplog.at_level(logging.WARNING, "stanchion.http"):
        allow = Rule("1/minute", unidentified="allow", clock=clock)
        assert hits(allow, 3, None) == [True, True, True]
        share = Rule("1/minute", unidentified="share", clock=clock)
        assert hits(share, 2, None) == [True, False]
    assert (
        len([r for r in caplog.records if "could not be identified" in r.message]) == 2
    )


@pytest.mark.parametrize(
    "ident",
    ["é", "\U0001f600" * 3, "\ud800", "x" * 100_000, "\x00\x1f", "a\udcff" * 300],
)
def test_any_identity_is_safe(clock: FakeClock, ident: str) -> None:
    rule = Rule("1/minute", key=lambda r: ident, clock=clock)
    assert hits(rule, 2) == [True, False]
    assert rule.limiters.get("1/minute").limiter.stats()["keys"] == 1
    key = rule.check(req(), "1.1.1.1").request.key  # type: ignore[union-attr]
    assert key is not None and len(key) <= 200


def test_bytes_and_int_identities(clock: FakeClock) -> None:
    rule = Rule("1/minute", key=lambda r: r.header("x-id"), clock=clock)
    assert hits(Rule("1/minute", key=lambda r: 42, clock=clock), 2) == [True, False]
    assert hits(Rule("1/minute", key=lambda r: b"\xff", clock=clock), 2) == [
        True,
        False,
    ]
    assert hits(rule, 1, headers={"x-id": "a"}) == [True]


@pytest.mark.parametrize(
    "valid",
    [{"good-key"}, frozenset({"good-key"}), {"good-key": "pro"}, "good-key".__eq__],
)
def test_invented_api_keys_count_against_the_address(
    clock: FakeClock, valid: Any
) -> None:
    rule = Rule("5/minute", key=api_key(valid=valid), clock=clock)
    # 200 guessed keys from one address: 5 pass, as without any key.
    guesses = [
        hits(rule, 1, "6.6.6.6", headers={"X-API-Key": f"guess-{i}"})[0]
        for i in range(200)
    ]
    assert sum(guesses) == 5
    assert hits(rule, 1, "6.6.6.6") == [False]  # the same bucket as no key
    assert hits(rule, 1, "7.7.7.7", headers={"X-API-Key": "nope"}) == [True]
    # A valid key has its own bucket, wherever it comes from.
    assert hits(rule, 6, "6.6.6.6", headers={"X-API-Key": "good-key"}) == [True] * 5 + [
        False
    ]
    assert hits(rule, 1, "8.8.8.8", headers={"X-API-Key": "good-key"}) == [False]


def test_api_key_valid_set_is_read_live(clock: FakeClock) -> None:
    keys: set[str] = set()
    rule = Rule("1/minute", key=api_key(valid=keys), clock=clock)
    assert hits(rule, 1, "1.1.1.1", headers={"X-API-Key": "new"}) == [True]
    assert hits(rule, 1, "1.1.1.1", headers={"X-API-Key": "new"}) == [False]
    keys.add("new")
    assert hits(rule, 1, "1.1.1.1", headers={"X-API-Key": "new"}) == [True]


@pytest.mark.parametrize("valid", ["good-key", b"k", 42, None])
def test_api_key_rejects_bad_valid(valid: Any) -> None:
    with pytest.raises(SettingError, match="valid"):
        api_key(valid=valid)


def test_api_key_needs_valid_and_a_sync_validator(clock: FakeClock) -> None:
    with pytest.raises(TypeError, match="valid"):
        api_key("X-API-Key")  # type: ignore[call-arg]

    async def check(key: str) -> bool:
        return True

    with pytest.raises(SettingError, match="not async"):
        api_key(valid=check)

    rule = Rule("1/minute", key=api_key(valid=lambda k: check(k)), clock=clock)
    with pytest.raises(TypeError, match="plain function"):
        rule.check(req(headers={"X-API-Key": "k"}), "1.1.1.1")


def test_bytes_identities_are_hashed_as_bytes(clock: FakeClock) -> None:
    rule = Rule("1/minute", key=lambda r: r.native, clock=clock)

    def hit(ident: Any) -> bool:
        v = rule.check(Request("GET", "/", None, ident), "1.1.1.1")
        return v is not None and not v.blocked

    # Invalid UTF-8 that differs only in the bad bytes: distinct clients.
    assert [hit(b"id\xff"), hit(b"id\xfe"), hit(b"id\xff")] == [True, True, False]
    # Not the str whose lenient encoding gives the same bytes either.
    assert hit("id\udcff".encode("utf-8", "surrogatepass")) is True
    assert hit("id\udcff") is True
    # Valid UTF-8 bytes name the same client as the str.
    assert [hit("é".encode()), hit("é")] == [True, False]


def test_no_identity_can_name_a_hashed_one(clock: FakeClock) -> None:
    rule = Rule("1/minute", key=lambda r: r.native, clock=clock)
    victim = "x" * 500
    v = rule.check(Request("GET", "/", None, victim), "1.1.1.1")
    assert v is not None and v.request is not None and v.request.key is not None
    hashed = v.request.key
    assert hashed.startswith("#")
    v = rule.check(Request("GET", "/", None, hashed), "2.2.2.2")
    assert v is not None and not v.blocked
    v = rule.check(Request("GET", "/", None, hashed.encode()), "2.2.2.2")
    assert v is not None and v.blocked  # its own bucket, the one the str got


# -- limits, plans, cost, scope -------------------------------------------------


def test_plans(clock: FakeClock) -> None:
    plans = Plans(
        {"free": "2/minute", "pro": "5/minute", "internal": None},
        plan=lambda r: r.header("x-plan"),
        default="free",
    )
    rule = Rule(plans, key=api_key(valid=set("abcde")), clock=clock)

    def n_ok(plan: str | None, api: str) -> int:
        headers = {"x-api-key": api} | ({"x-plan": plan} if plan else {})
        return sum(hits(rule, 10, headers=headers))

    assert n_ok("free", "a") == 2
    assert n_ok("pro", "b") == 5
    assert n_ok(None, "c") == 2
    assert n_ok("gold", "d") == 2
    assert n_ok("internal", "e") == 10


def test_rate_function_of_the_key(clock: FakeClock) -> None:
    paid = {"alice"}
    rule = Rule(
        lambda r: "5/minute" if r.key in paid else "1/minute",
        key=lambda r: r.header("x-user"),
        clock=clock,
    )
    assert sum(hits(rule, 10, headers={"x-user": "alice"})) == 5
    assert sum(hits(rule, 10, headers={"x-user": "bob"})) == 1


def test_limiter_cache_is_bounded_and_shared(clock: FakeClock) -> None:
    cache = LimiterCache(clock=clock, maxsize=3)
    rule = Rule(lambda r: r.header("x-rate"), limiters=cache)
    for i in range(1, 10):
        hits(rule, 1, headers={"x-rate": f"{i}/minute"})
    assert len(cache._by_rate) == 3
    a = cache.get("7/minute")
    assert cache.get("7/minute") is a


def test_shared_scope_across_rules(clock: FakeClock) -> None:
    cache = LimiterCache(clock=clock)
    one = Rule("3/minute", scope="search", limiters=cache)
    two = Rule("3/minute", scope="search", limiters=cache)
    other = Rule("3/minute", scope="upload", limiters=cache)
    assert hits(one, 2) + hits(two, 2) == [True, True, True, False]
    assert hits(other, 1) == [True]


def test_cost(clock: FakeClock) -> None:
    rule = Rule("10/minute", cost=4, clock=clock)
    assert hits(rule, 3) == [True, True, False]
    by_size = Rule("10/minute", cost=lambda r: int(r.header("x-n") or 1), clock=clock)
    assert hits(by_size, 1, headers={"x-n": "9"}) == [True]
    assert hits(by_size, 1, headers={"x-n": "2"}) == [False]
    assert hits(by_size, 1, headers={"x-n": "1"}) == [True]
    # More than the limit at once: denied, never a 500.
    v = by_size.check(req(headers={"x-n": "11"}), "9.9.9.9")
    assert v is not None and v.blocked
    with pytest.raises(SettingError, match="cost function"):
        Rule("10/minute", cost=lambda r: 0, clock=clock).check(req(), "1.1.1.1")


def test_exemptions(clock: FakeClock) -> None:
    rule = Rule(
        "1/minute",
        exempt_paths=["/health", "/static/*"],
        exempt_methods=["options"],
        exempt_when=lambda r: r.header("x-internal") == "yes",
        clock=clock,
    )
    assert rule.check(req("/health"), "1.1.1.1") is None
    assert rule.check(req("/static/app.js"), "1.1.1.1") is None
    assert rule.check(req("/api", "OPTIONS"), "1.1.1.1") is None
    assert rule.check(req("/api", headers={"x-internal": "yes"}), "1.1.1.1") is None
    assert hits(rule, 2, path="/api") == [True, False]
    assert hits(rule, 1, path="/healthz") == [False]


def test_dry_run_never_blocks(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    rule = Rule("2/minute", dry_run=True, clock=clock)
    with caplog.at_level(logging.INFO, "stanchion.http"):
        verdicts = [rule.check(req(), "1.1.1.1") for _ in range(4)]
    assert all(v is not None and not v.blocked for v in verdicts)
    assert rule.dry_run_denials == 2
    assert [
        v.decision.allowed for v in verdicts if v is not None and v.decision is not None
    ] == [
        True,
        True,
        False,
        False,
    ]
    assert dict(verdicts[3].headers())["X-RateLimit-Remaining"] == "0"  # type: ignore[union-attr]
    assert "would have limited" in caplog.text
    assert rule.check(req(), None) is None  # unidentified: let through
    assert rule.dry_run_denials == 3


# -- headers --------------------------------------------------------------------


def test_headers_exact(clock: FakeClock) -> None:
    rule = Rule("2/minute", scope="api", clock=clock)
    v1 = rule.check(req(), "1.1.1.1")
    clock.advance(10)
    v2 = rule.check(req(), "1.1.1.1")
    v3 = rule.check(req(), "1.1.1.1")
    assert v1 is not None and v2 is not None and v3 is not None
    assert v1.headers() == [
        ("RateLimit-Policy", '"api";q=2;w=60'),
        ("RateLimit", '"api";r=1;t=30'),
        ("X-RateLimit-Limit", "2"),
        ("X-RateLimit-Remaining", "1"),
        ("X-RateLimit-Reset", "30"),
    ]
    assert v2.headers()[1] == ("RateLimit", '"api";r=0;t=50')
    status, headers, body = v3.reply()
    assert status == 429
    assert headers == [
        ("Content-Type", "application/problem+json"),
        ("Cache-Control", "no-store"),
        ("Retry-After", "20"),
        ("RateLimit-Policy", '"api";q=2;w=60'),
        ("RateLimit", '"api";r=0;t=20'),
        ("X-RateLimit-Limit", "2"),
        ("X-RateLimit-Remaining", "0"),
        ("X-RateLimit-Reset", "50"),
    ]
    assert (
        json.loads(body)["detail"] == "Rate limit of 2 exceeded; retry in 20 seconds."
    )


def test_retry_after_rounds_up_never_early(clock: FakeClock) -> None:
    rule = Rule("3/second", clock=clock)
    for _ in range(3):
        rule.check(req(), "1.1.1.1")
    v = rule.check(req(), "1.1.1.1")
    assert v is not None and v.blocked
    assert v.decision is not None and 0 < v.decision.retry_after < 1
    assert dict(v.reply()[1])["Retry-After"] == "1"
    # Exactly on a second: not rounded up further.
    rule2 = Rule("1 per 5 seconds", clock=clock)
    rule2.check(req(), "1.1.1.1")
    assert dict(rule2.check(req(), "1.1.1.1").reply()[1])["Retry-After"] == "5"  # type: ignore[union-attr]


def test_several_rates_and_fractional_rates(clock: FakeClock) -> None:
    rule = Rule("2/second;3/minute", scope="s", clock=clock)
    v = rule.check(req(), "1.1.1.1")
    assert v is not None
    h = dict(v.headers())
    assert h["RateLimit-Policy"] == '"s-1s";q=2;w=1, "s-60s";q=3;w=60'
    for _ in range(2):
        clock.advance(1)
        v = rule.check(req(), "1.1.1.1")
    v = rule.check(req(), "1.1.1.1")
    assert v is not None and v.blocked
    assert dict(v.headers())["RateLimit"].startswith('"s-60s";r=0;')
    frac = Rule("0.5/second", scope="f", clock=clock)
    assert dict(frac.check(req(), "1.1.1.1").headers())["RateLimit-Policy"] == (  # type: ignore[union-attr]
        '"f";q=1;w=2'
    )
    odd = Rule("1/minute", scope='we"ird\\é', clock=clock)
    assert dict(odd.check(req(), "1.1.1.1").headers())["RateLimit-Policy"] == (  # type: ignore[union-attr]
        '"we\\"ird\\\\_";q=1;w=60'
    )


def test_header_families_and_allowed(clock: FakeClock) -> None:
    only_ietf = Rule("1/minute", headers=["ratelimit"], clock=clock)
    v = only_ietf.check(req(), "1.1.1.1")
    assert [k for k, _ in v.headers()] == ["RateLimit-Policy", "RateLimit"]  # type: ignore[union-attr]
    quiet = Rule(
        "1/minute", headers=["retry-after"], headers_on_allowed=True, clock=clock
    )
    assert quiet.check(req(), "1.1.1.1").headers() == []  # type: ignore[union-attr]
    assert [k for k, _ in quiet.check(req(), "1.1.1.1").reply()[1]] == [  # type: ignore[union-attr]
        "Content-Type",
        "Cache-Control",
        "Retry-After",
    ]
    not_on_allowed = Rule("1/minute", headers_on_allowed=False, clock=clock)
    assert not_on_allowed.check(req(), "1.1.1.1").headers() == []  # type: ignore[union-attr]
    assert len(not_on_allowed.check(req(), "1.1.1.1").headers()) == 5  # type: ignore[union-attr]


def test_custom_response(clock: FakeClock) -> None:
    def teapot(request: Request, decision: Any) -> Reply:
        return Reply(503, b"busy", "text/plain")

    rule = Rule("1/minute", response=teapot, clock=clock)
    rule.check(req(), "1.1.1.1")
    status, headers, body = rule.check(req(), "1.1.1.1").reply()  # type: ignore[union-attr]
    assert (status, body) == (503, b"busy")
    assert dict(headers)["Content-Type"] == "text/plain"
    assert dict(headers)["Retry-After"] == "60"


def test_limiter_object_as_limit(clock: FakeClock) -> None:
    lim = Limiter("2/minute", clock=clock)
    rule = Rule(lim, scope="x")
    assert hits(rule, 3) == [True, True, False]
    assert rule.limiters.get(lim).limiter is lim


async def test_async_functions_and_slow_limiter(clock: FakeClock) -> None:
    class Slow(Limiter):
        async def ahit(self, key: str | bytes, cost: int = 1) -> Any:
            await asyncio.sleep(0.01)
            return self.hit(key, cost)

    async def key(r: Request) -> str:
        await asyncio.sleep(0)
        return "k"

    async def rate(r: Request) -> str:
        return "2/minute"

    async def cost(r: Request) -> int:
        return 1

    rule = Rule(rate, key=key, cost=cost, clock=clock)
    got = [await rule.acheck(req(), "1.1.1.1") for _ in range(3)]
    assert [v.blocked for v in got if v is not None] == [False, False, True]
    slow = Rule(Slow("1/minute", clock=clock))
    got = [await slow.acheck(req(), "1.1.1.1") for _ in range(2)]
    assert [v.blocked for v in got if v is not None] == [False, True]


# -- one decision path for sync and async ----------------------------------------


@pytest.mark.parametrize("simple", [True, False])
async def test_async_unidentified_never_calls_the_blocking_hit(
    clock: FakeClock, simple: bool
) -> None:
    lim = AsyncOnlyLimiter("2/minute", clock=clock)
    rule = Rule(lim, unidentified="share", key=None if simple else lambda r: None)
    assert rule.simple is simple

    async def decide() -> Verdict | None:
        if simple:
            return await rule.acheck_simple("GET", "/", None)
        return await rule.acheck(req(), None)

    got = [await decide() for _ in range(3)]
    assert [v is not None and v.blocked for v in got] == [False, False, True]
    # Every peer-less request shares one bucket, apart from any client's.
    assert not (await rule.acheck(req(), "1.1.1.1")).blocked  # type: ignore[union-attr]


async def test_async_unidentified_with_an_asyncio_redis_client(
    redis_server: RedisServer,
) -> None:
    client = redis.asyncio.Redis(port=redis_server.port)
    storage = RedisStorage(client, timeout=SLOW, prefix=f"t{uuid.uuid4().hex[:8]}:")
    try:
        for simple in (True, False):
            rule = Rule(
                "2/minute",
                storage=storage,
                unidentified="share",
                scope=f"redis-{simple}",
                key=None if simple else lambda r: None,
            )
            got = [
                await (
                    rule.acheck_simple("GET", "/", None)
                    if simple
                    else rule.acheck(req(), None)
                )
                for _ in range(3)
            ]
            assert [v is not None and v.blocked for v in got] == [False, False, True]
    finally:
        await storage.aclose()
        await client.aclose()


def test_sync_and_async_decide_alike(clock: FakeClock) -> None:
    """The same requests through check and acheck give the same verdicts."""

    def run(asynchronous: bool) -> list[Any]:
        rule = Rule(
            lambda r: "3/minute" if r.header("x-plan") != "none" else None,
            key=lambda r: r.header("x-user"),
            cost=lambda r: int(r.header("x-cost") or 1),
            unidentified="share",
            clock=FakeClock(),
        )
        out = []
        for user, plan, cost, peer in [
            ("a", None, "1", "1.1.1.1"),
            ("a", None, "2", "1.1.1.1"),
            ("a", None, "1", "1.1.1.1"),
            ("a", "none", "1", "1.1.1.1"),
            (None, None, "1", "2.2.2.2"),
            (None, None, "9", "2.2.2.2"),
            (None, None, "1", None),
            (None, None, "3", None),
            (None, None, "1", None),
        ]:
            h = {"x-user": user, "x-plan": plan, "x-cost": cost}
            r = Request("GET", "/", {k: v for k, v in h.items() if v}.get)
            v = (
                asyncio.run(rule.acheck(r, peer))
                if asynchronous
                else rule.check(r, peer)
            )
            out.append(None if v is None else (v.blocked, v.decision, r.key))
        return out

    assert run(False) == run(True)
    assert [v and v[0] for v in run(False)] == [
        False, False, True, None, False, True, False, True, False,
    ]  # fmt: skip


# -- client address keys ---------------------------------------------------------


def test_address_keys_fit_the_inline_key_size(clock: FakeClock) -> None:
    """A client address key is held inside the table's entry: through the
    rule, the table holds no more memory than for 16-byte keys."""
    n = 2000
    v4 = [f"198.{i // 256}.{i % 256}.7" for i in range(n)]
    v6 = [f"2001:db8:{i:x}:1::{i:x}" for i in range(n)]
    for peers in (v4, v6):
        lim = Limiter("5/minute", clock=clock)
        simple = Rule(lim, scope="a-long-scope-name-for-the-api")
        proxied = Rule(
            lim, scope="a-long-scope-name-for-the-api", trusted_proxies=["10.0.0.0/8"]
        )
        for i, peer in enumerate(peers):
            if i % 2:
                simple.check_simple("GET", "/", peer)
            else:
                proxied.check(req(headers={"X-Forwarded-For": peer}), "10.0.0.1")
        ref = Limiter("5/minute", clock=clock)
        for i in range(n):
            ref.hit(b"%016d" % i)
        assert lim.stats()["keys"] == n
        assert lim.stats()["memory_bytes"] == ref.stats()["memory_bytes"]


def test_address_keys_keep_clients_and_scopes_apart(clock: FakeClock) -> None:
    cache = LimiterCache(clock=clock)
    a = Rule("1/minute", scope="a", limiters=cache)
    b = Rule("1/minute", scope="b", limiters=cache, trusted_proxies=["10.0.0.0/8"])
    a2 = Rule("1/minute", scope="a", limiters=cache, trusted_proxies=["10.0.0.0/8"])
    # One client in two scopes: two buckets; in one scope: one, whichever
    # path (peer or forwarded) named it.
    assert hits(a, 1, "1.2.3.4") == [True]
    assert hits(b, 1, "10.0.0.1", headers={"X-Forwarded-For": "1.2.3.4"}) == [True]
    assert hits(a2, 1, "10.0.0.1", headers={"X-Forwarded-For": "1.2.3.4"}) == [False]
    assert hits(a, 1, "::ffff:1.2.3.4") == [False]
    # Neighbouring addresses and networks are different clients; one /64 is one.
    assert hits(a, 1, "1.2.3.5") == [True]
    assert hits(a, 1, "2001:db8:0:1::1") == [True]
    assert hits(a, 1, "2001:db8:0:1::2") == [False]
    assert hits(a, 1, "2001:db8:0:2::1") == [True]
    # An identity that spells an address is not that address's bucket.
    spell = Rule("1/minute", scope="a", limiters=cache, key=lambda r: "1.2.3.6")
    assert hits(a, 1, "1.2.3.6") == [True]
    assert hits(spell, 1, "9.9.9.9") == [True]


def test_address_keys_per_ipv6_prefix(clock: FakeClock) -> None:
    cache = LimiterCache(clock=clock)
    wide = Rule("1/minute", scope="p", limiters=cache, ipv6_prefix=48)
    narrow = Rule("1/minute", scope="p", limiters=cache, ipv6_prefix=128)
    assert hits(wide, 1, "2001:db8:1:2::1") == [True]
    assert hits(wide, 1, "2001:db8:1:3::1") == [False]  # the same /48
    assert hits(narrow, 1, "2001:db8:1::") == [True]  # not the /48's bucket
    assert hits(narrow, 1, "2001:db8:1::1") == [True]
    assert hits(narrow, 1, "2001:db8:1::1") == [False]


def test_a_scope_whose_tag_is_taken_keeps_str_keys(
    clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    from stanchion.http import keys as http

    class Colliding:
        """Every scope hashes alike."""

        def __init__(self, data: bytes, **kw: Any) -> None:
            pass

        def digest(self) -> bytes:
            return bytes(7)

    monkeypatch.setattr(http, "_SCOPE_TAGS", {})
    monkeypatch.setattr(http.hashlib, "blake2b", Colliding)
    cache = LimiterCache(clock=clock)
    victim = Rule("1/minute", scope="victim", limiters=cache)
    other = Rule("1/minute", scope="other", limiters=cache)
    again = Rule("1/minute", scope="victim", limiters=cache)
    assert victim._tag4 is not None and other._tag4 is None
    assert again._tag4 == victim._tag4
    assert hits(victim, 1, "1.2.3.4") == [True]
    assert hits(other, 1, "1.2.3.4") == [True]
    assert hits(other, 1, "1.2.3.4") == [False]


# -- peers that are not addresses ------------------------------------------------


def _long_peer_flood(adapter: str, n: int, **settings: Any) -> int:
    """Bytes kept after ``n`` requests whose peer is a distinct 20 KB text:
    what uvicorn's ProxyHeadersMiddleware (trusting '*') and werkzeug's
    ProxyFix put in the peer from a client's own X-Forwarded-For."""
    import gc
    import tracemalloc

    import httpx
    from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

    from stanchion.asgi import RateLimitMiddleware as AsgiLimit
    from stanchion.wsgi import RateLimitMiddleware as WsgiLimit

    def wsgi_app(environ: Any, start_response: Any) -> Any:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    async def asgi_app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    scope = f"long-peers-{uuid.uuid4().hex}"
    if adapter == "wsgi":
        app: Any = WsgiLimit(wsgi_app, limit="100/second", scope=scope, **settings)

        def get(xff: str) -> int:
            got: list[str] = []
            environ = {
                "REQUEST_METHOD": "GET",
                "PATH_INFO": "/",
                # A new str per request, as ProxyFix(x_for=1) makes it.
                "REMOTE_ADDR": xff.encode().decode(),
                "wsgi.url_scheme": "http",
            }
            b"".join(app(environ, lambda status, headers, exc=None: got.append(status)))
            return int(got[0].split()[0])

        def run(xffs: list[str]) -> list[int]:
            return [get(x) for x in xffs]

    else:
        app = ProxyHeadersMiddleware(
            AsgiLimit(asgi_app, limit="100/second", scope=scope, **settings),
            trusted_hosts="*",
        )

        def run(xffs: list[str]) -> list[int]:
            async def go() -> list[int]:
                transport = httpx.ASGITransport(app=app)
                async with httpx.AsyncClient(
                    transport=transport, base_url="http://test"
                ) as c:
                    return [
                        (await c.get("/", headers={"X-Forwarded-For": x})).status_code
                        for x in xffs
                    ]

            return asyncio.run(go())

    run(["198.51.100.1"])
    xffs = [f"{i:05d}" + "p" * 20_000 for i in range(n)]
    # Collected before each reading: what an event loop's reference cycles
    # hold until the next collection (Python 3.13 keeps them longer) is not
    # what the tables keep.
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        assert set(run(xffs)) == {200}
        gc.collect()
        return tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("adapter", ["asgi", "wsgi"])
@pytest.mark.parametrize("proxies", [(), ("10.0.0.0/8",)])
def test_peer_texts_are_not_remembered(adapter: str, proxies: Any) -> None:
    # The per-address tables kept 1024-4096 of them: tens of MB.
    grown = _long_peer_flood(adapter, 100, trusted_proxies=list(proxies))
    assert grown < 1024 * 1024, f"grew by {grown} bytes"
