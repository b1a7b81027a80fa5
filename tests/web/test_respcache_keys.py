"""What the response cache keys on, through every adapter and with both
backends (the C cache in process, and RedisCache on a real redis-server):
the whole target URI (scheme, authority, raw path, raw query), the
credentials that make a request personal, and who may replace an entry."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from stanchion.http import ClientAddress, api_key

from ..conftest import FakeClock
from ._respcache_apps import ADAPTERS, Harness

SHOP = {"Host": "shop.example"}
EVIL = {"Host": "evil.example"}
# The test clients' peers: httpx's ASGI transport here, werkzeug's and
# Django's request factories 127.0.0.1.
PEERS = ["203.0.113.1", "127.0.0.1"]


@pytest.fixture(params=["local", "redis"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(params=sorted(ADAPTERS))
def make(
    request: pytest.FixtureRequest, backend: str, clock: FakeClock
) -> Iterator[Any]:
    built: list[Harness] = []

    def build(**opts: Any) -> Harness:
        opts.setdefault("ttl", 60)
        if backend == "redis":
            from stanchion.redis import RedisCache

            server = request.getfixturevalue("redis_server")
            prefix = f"t{uuid.uuid4().hex}:"
            opts["backend"] = RedisCache(server.url, prefix=prefix, timeout=2)
        else:
            opts.setdefault("clock", clock)
        h = ADAPTERS[request.param](**opts)
        built.append(h)
        return h

    yield build
    for h in built:
        h.close()


# -- the authority -------------------------------------------------------------


def test_host_is_part_of_the_key(make: Any) -> None:
    h = make()
    poisoned = h.get("/where", EVIL)
    assert "evil.example" in poisoned.text
    r = h.get("/where", SHOP)
    assert r.x_cache == "MISS" and "shop.example" in r.text
    assert h.get("/where", SHOP).x_cache == "HIT"
    # Each host has its own entry; case and the default port do not count.
    again = h.get("/where", {"Host": "EVIL.example:80"})
    assert (again.x_cache, again.body) == ("HIT", poisoned.body)
    assert h.upstream.calls["where"] == 2


def test_bad_host_is_not_cached(make: Any) -> None:
    h = make()
    for _ in range(2):
        r = h.get("/where", {"Host": "shop.example/x"})
        assert r.x_cache == "MISS"
    assert h.cache.stats()["stores"] == 0


def test_allowed_hosts(make: Any) -> None:
    h = make(allowed_hosts=["shop.example", ".example.org"])
    for _ in range(2):
        assert h.get("/where", EVIL).x_cache == "MISS"
    assert h.cache.stats()["stores"] == 0
    h.get("/where", SHOP)
    assert h.get("/where", SHOP).x_cache == "HIT"
    h.get("/where", {"Host": "a.example.org:8080"})
    assert h.get("/where", {"Host": "a.example.org:8080"}).x_cache == "HIT"
    for bad in ("badexample.org", "shop.example.evil"):
        h.get("/where", {"Host": bad})
        assert h.get("/where", {"Host": bad}).x_cache == "MISS"
    assert h.upstream.calls["where"] == 8


def test_forwarded_host_not_believed_without_trusted_proxy(make: Any) -> None:
    h = make()
    forged = {**SHOP, "X-Forwarded-Host": "evil.example"}
    assert "evil.example" in h.get("/where", forged).text  # the app believes it
    r = h.get("/where", SHOP)
    assert r.x_cache == "MISS" and "evil" not in r.text
    assert h.get("/where", SHOP).x_cache == "HIT"
    # The forged header is kept apart, never the authority.
    assert h.get("/where", forged).x_cache == "HIT"
    assert "evil" not in h.get("/where", SHOP).text


def test_forwarded_host_from_trusted_proxy_is_the_authority(make: Any) -> None:
    h = make(trusted_proxies=PEERS)
    proxied = {"Host": "backend:8000", "X-Forwarded-Host": "shop.example"}
    r = h.get("/where", proxied)
    assert (r.x_cache, r.text) == ("MISS", "where shop.example #1")
    assert h.get("/where", proxied).x_cache == "HIT"
    # The same origin as a direct request to shop.example.
    assert h.get("/where", SHOP).x_cache == "HIT"
    other = h.get("/where", {"Host": "backend:8000", "X-Forwarded-Host": "b.example"})
    assert other.x_cache == "MISS" and "b.example" in other.text


def test_forwarded_header_from_trusted_proxy(make: Any) -> None:
    h = make(trusted_proxies=ClientAddress(PEERS, header="Forwarded"))
    fwd = {"Host": "backend", "Forwarded": "for=198.51.100.7;host=shop.example"}
    h.get("/where", fwd)
    assert h.get("/where", SHOP).x_cache == "HIT"
    https = {
        "Host": "backend",
        "Forwarded": "for=1.2.3.4;host=shop.example;proto=https",
    }
    assert h.get("/where", https).x_cache == "MISS"  # another scheme
    assert h.get("/where", https).x_cache == "HIT"


@pytest.mark.parametrize("proxies", [(), PEERS])
@pytest.mark.parametrize(
    "forged",
    [
        {"X-Forwarded-Prefix": "//evil.example"},
        {"X-Forwarded-Port": "6666"},
    ],
)
def test_forwarded_prefix_and_port_are_kept_apart(
    make: Any, proxies: Any, forged: dict[str, str]
) -> None:
    # werkzeug's ProxyFix(x_prefix=1, x_port=1) builds every link from
    # them: a page made with a client's value must reach no one else,
    # whether or not the peer is a trusted proxy.
    h = make(trusted_proxies=proxies)
    poisoned = h.get("/links", {**SHOP, **forged})
    assert poisoned.text.startswith("links ") and "||" not in poisoned.text
    r = h.get("/links", SHOP)
    assert (r.x_cache, r.text) == ("MISS", "links | #2")
    assert h.get("/links", SHOP).x_cache == "HIT"
    assert h.get("/links", {**SHOP, **forged}).body == poisoned.body


# -- the path and the query ----------------------------------------------------


def test_encoded_question_mark_is_path_not_query(make: Any) -> None:
    h = make()
    page = h.get("/wiki/Main?action=raw")
    encoded = h.get("/wiki/Main%3Faction=raw")
    assert encoded.x_cache == "MISS" and encoded.body != page.body
    again = h.get("/wiki/Main?action=raw")
    assert (again.x_cache, again.body) == ("HIT", page.body)
    assert h.get("/wiki/Main%3Faction=raw").body == encoded.body
    assert h.upstream.calls["wiki"] == 2


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("q=<script>", "q=%3Cscript%3E"),
        ("q=a+b", "q=a%20b"),
        ("a=1&b=2", "a=1%26b=2"),
        ("q=%41", "q=A"),
    ],
)
def test_query_is_never_decoded(make: Any, first: str, second: str) -> None:
    h = make()
    a = h.get("/items?" + first)
    b = h.get("/items?" + second)
    assert b.x_cache == "MISS" and b.body != a.body
    assert h.get("/items?" + first).body == a.body
    assert h.get("/items?" + second).body == b.body


def test_query_pieces_may_be_reordered(make: Any) -> None:
    h = make()
    a = h.get("/items?b=<2>&a=1&c")
    r = h.get("/items?c&a=1&b=<2>")
    assert (r.x_cache, r.body) == ("HIT", a.body)


def test_repeated_query_names_keep_their_order(make: Any) -> None:
    # request.args.get / request.GET[...] read the first or the last:
    # ?a=1&a=2 and ?a=2&a=1 are two different requests.
    h = make()
    first = h.get("/items?a=1&b=x&a=2")
    other = h.get("/items?a=2&b=x&a=1")
    assert other.x_cache == "MISS" and other.body != first.body
    same = h.get("/items?b=x&a=1&a=2")
    assert (same.x_cache, same.body) == ("HIT", first.body)
    assert h.cache.invalidate(path="/items", query="a=2&a=1&b=x") == 1
    assert h.get("/items?a=1&a=2&b=x").x_cache == "HIT"


def test_long_query_is_cached_under_its_digest(make: Any) -> None:
    h = make()
    long_q = "q=" + "x" * 9000
    a = h.get("/items?" + long_q)
    assert h.get("/items?" + long_q).body == a.body
    assert h.get("/items?" + long_q + "y").x_cache == "MISS"
    assert h.cache.invalidate(path="/items", query=long_q) == 1
    assert h.get("/items?" + long_q).x_cache == "MISS"


def test_invalidate_covers_every_host(make: Any) -> None:
    h = make()
    for host in (SHOP, EVIL):
        h.get("/items?a=1", host)
        h.get("/items?a=2", host)
        h.get("/itemsx", host)
    assert h.cache.invalidate(path="/items", query="a=1") == 2
    assert h.get("/items?a=1", SHOP).x_cache == "MISS"
    assert h.get("/items?a=2", EVIL).x_cache == "HIT"
    h.cache.invalidate(path="/items")
    assert h.get("/items?a=2", SHOP).x_cache == "MISS"
    assert h.get("/items?a=2", EVIL).x_cache == "MISS"
    assert h.get("/itemsx", EVIL).x_cache == "HIT"
    h.cache.invalidate(prefix="/item")
    assert h.get("/itemsx", SHOP).x_cache == "MISS"
    # The path as clients send it: what needs encoding is encoded.
    h.get("/wiki/a%20b")
    assert h.cache.invalidate(path="/wiki/a b") == 2  # the entry, its Vary record
    with pytest.raises(ValueError, match="query="):
        h.cache.invalidate(path="/items?a=1")


# -- credentials -----------------------------------------------------------------


@pytest.mark.parametrize(
    "credential",
    [
        {"X-API-Key": "alice-key"},
        {"Proxy-Authorization": "Basic YWxpY2U6cw=="},
        {"Authorization": "Bearer alice"},
        {"Cookie": "sessionid=alice"},
    ],
)
def test_credentials_make_a_request_personal(
    make: Any, credential: dict[str, str]
) -> None:
    h = make()
    for _ in range(2):
        r = h.get("/apikey", credential)
        assert r.x_cache == "MISS"
    anon = h.get("/apikey")
    assert "alice" not in anon.text and "YWxp" not in anon.text
    assert h.get("/apikey").x_cache == "HIT"
    assert h.get("/apikey", credential).x_cache == "MISS"
    assert h.cache.stats()["stores"] == 1


def test_api_key_rule_header_is_a_credential(make: Any) -> None:
    h = make()  # built before the rule: the header counts from then on
    api_key("X-Token", valid={"t"})
    assert "tok-a" in h.get("/apikey", {"X-Token": "tok-a"}).text
    assert "tok-a" not in h.get("/apikey").text
    assert h.get("/apikey", {"X-Token": "tok-a"}).x_cache == "MISS"


def test_identity_headers_setting(make: Any) -> None:
    h = make(identity_headers=["X-Tenant"])
    h.get("/apikey", {"X-Tenant": "acme"})
    assert "acme" not in h.get("/apikey").text
    assert h.get("/apikey", {"X-Tenant": "acme"}).x_cache == "MISS"
    # Authorization and cookies count whatever the setting says.
    for _ in range(2):
        assert h.get("/apikey", {"Authorization": "Bearer a"}).x_cache == "MISS"
        assert h.get("/apikey", {"Cookie": "sid=a"}).x_cache == "MISS"
    with pytest.raises(TypeError):
        make(identity_headers="x-tenant")


@pytest.mark.parametrize("adapter", ["django", "flask", "hug", "wsgi"])
def test_remote_user_is_a_credential(adapter: str, clock: FakeClock) -> None:
    # The web server authenticated the user (Apache's auth modules, SSO)
    # and says who in REMOTE_USER; mod_wsgi drops Authorization. Each
    # user's page is their own.
    h: Any = ADAPTERS[adapter](ttl=60, clock=clock)
    try:
        for user in ("alice", "alice", "bob"):
            r = h.request("GET", "/items", None, {"REMOTE_USER": user})
            assert r.x_cache == "MISS"
        assert h.get("/items").x_cache == "MISS"
        assert h.get("/items").x_cache == "HIT"
        assert h.upstream.calls["items"] == 4
    finally:
        h.close()


def test_vary_identity_keys_each_credential(make: Any) -> None:
    h = make(vary_identity=True)
    alice = h.get("/apikey", {"X-API-Key": "alice"})
    bob = h.get("/apikey", {"X-API-Key": "bob"})
    assert "alice" in alice.text and "bob" in bob.text
    r = h.get("/apikey", {"X-API-Key": "alice"})
    assert (r.x_cache, r.body) == ("HIT", alice.body)
    assert "alice" not in h.get("/apikey").text


@pytest.mark.parametrize(
    "cookie", ["sessionid =alice", " sessionid=alice", "theme=x;sessionid= alice"]
)
def test_session_cookie_names_as_frameworks_parse_them(make: Any, cookie: str) -> None:
    h = make(session_cookies=["sessionid"])
    h.get("/user", {"Cookie": cookie})
    r = h.get("/user")
    assert "alice" not in r.text and r.x_cache == "MISS"
    assert h.get("/user", {"Cookie": cookie}).x_cache == "MISS"
