"""Two users never see each other's answers, whatever the response's Vary
and the cache's identity setting."""

from __future__ import annotations

import pytest

from ..conftest import FakeClock
from ._respcache_apps import ADAPTERS, Harness, harnesses

USERS = [
    {"Authorization": "Bearer alice"},
    {"Authorization": "Bearer bob"},
    {"Cookie": "sessionid=carol"},
    {"Cookie": "sessionid=dave"},
    {"Cookie": "sessionid=dave; theme=dark"},
]


@pytest.mark.parametrize("adapter", sorted(ADAPTERS))
@pytest.mark.parametrize("path", ["/user", "/uservary"])
@pytest.mark.parametrize("vary_identity", [False, True])
def test_no_cross_user_leak(
    adapter: str, path: str, vary_identity: bool, clock: FakeClock
) -> None:
    with harnesses(
        adapter, {"ttl": 60, "clock": clock, "vary_identity": vary_identity}
    ) as (h,):
        check_users(h, path, vary_identity)


def check_users(h: Harness, path: str, vary_identity: bool) -> None:
    anon = h.get(path)
    for _ in range(2):
        for user in USERS:
            r = h.get(path, user)
            who = user.get("Authorization", "None")
            assert f"user {who}|{user.get('Cookie')}" in r.text, (user, r.text)
    # The anonymous entry never answers a user, nor a user's an anonymous.
    again = h.get(path)
    assert again.text.startswith("user None|None #")
    if path == "/user":
        assert again.body == anon.body
    else:
        # Vary: Cookie on an answer to a request without cookies: not
        # stored (the first visit's page, whose cookie comes later).
        assert (anon.x_cache, again.x_cache) == ("MISS", "MISS")
    if vary_identity:
        # Each user has an entry of their own.
        assert h.get(path, USERS[0]).x_cache == "HIT"


@pytest.mark.parametrize("adapter", sorted(ADAPTERS))
def test_session_cookies_narrow_identity(adapter: str, clock: FakeClock) -> None:
    both = {"ttl": 60, "clock": clock, "session_cookies": ["sessionid"]}
    with harnesses(adapter, {**both, "vary_identity": True}, both) as (h, plain):
        check_cookies(h, plain)


def check_cookies(h: Harness, plain: Harness) -> None:
    a = h.get("/items", {"Cookie": "sessionid=1; theme=dark"})
    b = h.get("/items", {"Cookie": "sessionid=1; theme=light"})
    assert b.x_cache == "HIT" and a.body == b.body
    assert h.get("/items", {"Cookie": "sessionid=2"}).x_cache == "MISS"
    # A cookie that is not a session cookie does not make a request personal.
    plain.get("/items", {"Cookie": "theme=dark"})
    assert plain.get("/items").x_cache == "HIT"
