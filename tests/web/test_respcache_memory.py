"""The response cache's memory is bounded by ``maxweight``, keys and Vary
records included: a flood of distinct long URLs through each adapter
grows RSS by no more than ``maxweight`` plus a small constant."""

from __future__ import annotations

import gc
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from stanchion.respcache import ResponseCache

from ..conftest import SANITIZED
from ._respcache_apps import ADAPTERS

ISOLATED = Path(__file__).parents[1] / "isolated"
# The framework's and the allocator's own growth while the cache fills
# (about 2 MiB on CPython 3.11, 6 MiB on 3.13 for WSGI), and what a flood
# may add once it is full.
SLACK = 8 * 1024 * 1024
STEADY = 1024 * 1024


@pytest.mark.parametrize("adapter", sorted(ADAPTERS))
def test_rss_bounded_by_maxweight(adapter: str) -> None:
    proc = subprocess.run(
        # Under the sanitizer RSS is not checked: one flood.
        [
            sys.executable,
            str(ISOLATED / "respcache_memory.py"),
            adapter,
            "2000",
            "0" if SANITIZED else "3",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    grown, more, total, weight, maxweight = map(int, proc.stdout.split())
    assert weight <= maxweight
    if not SANITIZED:
        assert grown < maxweight + SLACK, f"RSS grew by {grown} bytes"
        # Bounded, not merely slow: three more floods as large as the
        # first add little in all, and (next to) nothing on at least one
        # of them; memory held per URL would grow on each.
        assert total < maxweight + SLACK, f"four floods grew RSS by {total} bytes"
        assert more < STEADY, f"every flood grew RSS by {more} bytes or more"


def test_keys_and_vary_records_are_weighed() -> None:
    rc = ResponseCache(maxweight=10_000_000)
    query = "q=" + "x" * 400  # kept as is (not hashed)
    for i in range(20):
        plan = rc.plan("GET", "/a", f"i={i}&{query}", {"host": "h"}.get)
        assert plan is not None
        rc.put(rc.make_entry(plan, _up(), ()))
    cache = rc.store.cache
    keys = cache.keys()
    assert len(keys) == 21  # 20 entries and the one Vary record
    assert cache.weight > sum(len(k) for k in keys)


@pytest.mark.parametrize("adapter", ["asgi", "wsgi"])
def test_flood_of_long_hosts_holds_nothing(adapter: str) -> None:
    # Host values (up to the server's header limit, 64 KiB for some) were
    # remembered, 4096 of them, outside maxweight.
    import tracemalloc

    h = ADAPTERS[adapter](ttl=60, maxweight=64 * 1024)

    def get(host: str) -> str | None:
        if adapter == "asgi":
            return h.get("/items", {"Host": host}).x_cache
        # Straight to the middleware: werkzeug's test client keeps URLs.
        environ = {
            "REQUEST_METHOD": "GET",
            "PATH_INFO": "/items",
            "SERVER_NAME": "test",
            "SERVER_PORT": "80",
            "HTTP_HOST": host,
            "REMOTE_ADDR": "127.0.0.1",
            "wsgi.url_scheme": "http",
        }
        got: list[Any] = []
        body = h.app(environ, lambda status, headers, exc=None: got.extend(headers))
        b"".join(body)
        return dict(got).get("X-Cache")

    try:
        get("warm.example")
        gc.collect()  # reference cycles of earlier requests are not ours
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        for i in range(300):
            assert get(f"{i:05d}" + "h" * 16_000) == "MISS"
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
        h.close()
    assert grown < 1024 * 1024, f"grew by {grown} bytes"


def test_over_long_path_is_not_cached() -> None:
    from stanchion.respcache import MAX_PATH

    rc = ResponseCache()
    plan = rc.plan("GET", "/" + "p" * MAX_PATH, "", {"host": "h"}.get)
    assert plan is not None and plan.personal and not plan.store


def test_entry_heavier_than_maxweight_is_not_kept() -> None:
    rc = ResponseCache(maxweight=2000, max_body=10_000)
    plan = rc.plan("GET", "/a", "", {"host": "h"}.get)
    assert plan is not None
    rc.put(rc.make_entry(plan, _up(b"x" * 3000), ()))
    assert len(rc.store.cache) == 0


def _up(body: bytes = b"ok") -> object:
    from stanchion.respcache import Upstream

    return Upstream(200, [("Content-Type", "text/plain")], body)
