"""The gateway example (examples/gateway/app.py) end to end: real uvicorn
servers on loopback for the gateway and for every upstream instance, each
upstream counting the requests it received."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from stanchion.redis import RedisCache, RedisStorage

from .._redis import RedisServer

ROOT = Path(__file__).resolve().parents[2]
APP_PATH = ROOT / "examples" / "gateway" / "app.py"


def load_gateway() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gateway_app", APP_PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gateway_app"] = module
    spec.loader.exec_module(module)
    return module


gw = load_gateway()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Served:
    """An ASGI app served by uvicorn in a background thread."""

    def __init__(self, app: Any, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=self.port,
            log_level="error",
            access_log=False,
            timeout_graceful_shutdown=2,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self) -> Served:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert self.thread.is_alive(), f"uvicorn on {self.port} exited"
            assert time.monotonic() < deadline, f"uvicorn on {self.port} did not start"
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        assert not self.thread.is_alive()


class Upstream:
    """One instance of an upstream service, counting requests per path."""

    def __init__(self, name: str, port: int | None = None) -> None:
        self.name = name
        self.calls: Counter[str] = Counter()
        app = Starlette(routes=[Route("/{path:path}", self.handle, methods=METHODS)])
        self.served = Served(app, port).start()
        self.url = self.served.url

    @property
    def total(self) -> int:
        return sum(self.calls.values())

    async def handle(self, request: Request) -> Response:
        path = request.url.path
        self.calls[path] += 1
        n = self.calls[path]
        if path == "/boom":
            return Response("Traceback: secret-db-password", status_code=500)
        if path == "/unavailable":
            return Response("down", status_code=503, headers={"Retry-After": "7"})
        if path == "/missing":
            return JSONResponse({"error": "no such item", "n": n}, status_code=404)
        if path == "/slow":
            await asyncio.sleep(1.0)
        if path == "/whoami":
            return JSONResponse({"user": request.headers.get("authorization"), "n": n})
        if path == "/private":
            return JSONResponse({"n": n}, headers={"Cache-Control": "private"})
        if path == "/vary":
            lang = request.headers.get("accept-language", "")
            return JSONResponse(
                {"lang": lang, "n": n}, headers={"Vary": "Accept-Language"}
            )
        if path == "/cookie":
            return JSONResponse({"n": n}, headers={"Set-Cookie": f"sid={n}"})
        if path == "/echo":
            body = await request.body()
            return JSONResponse(
                {
                    "method": request.method,
                    "body": body.decode(),
                    "query": request.url.query,
                    "forwarded_for": request.headers.get("x-forwarded-for"),
                    "connection_header": request.headers.get("x-hop"),
                    "n": n,
                }
            )
        return JSONResponse(
            {"instance": self.name, "path": path, "query": request.url.query, "n": n}
        )


METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE"]


@pytest.fixture(scope="module")
def upstreams() -> Iterator[dict[str, Upstream]]:
    made = {name: Upstream(name) for name in ("a", "b", "c")}
    try:
        yield made
    finally:
        for u in made.values():
            u.served.stop()


@pytest.fixture
def ups(upstreams: dict[str, Upstream]) -> dict[str, Upstream]:
    for u in upstreams.values():
        u.calls.clear()
    return upstreams


class Gateway:
    def __init__(self, app: Any) -> None:
        self.app = app
        self.served = Served(app).start()
        # One public Host for every gateway, as behind a load balancer (the
        # host is part of the response cache's key).
        self.http = httpx.Client(
            base_url=self.served.url, headers={"Host": "gateway.test"}, timeout=10
        )

    def get(self, path: str, **kw: Any) -> httpx.Response:
        return self.http.get(path, **kw)

    def close(self) -> None:
        self.http.close()
        self.served.stop()


@pytest.fixture
def gateway() -> Iterator[Any]:
    made: list[Gateway] = []

    def make(services: dict[str, list[str]], **kw: Any) -> Gateway:
        g = Gateway(gw.create_app(services, **kw))
        made.append(g)
        return g

    try:
        yield make
    finally:
        for g in made:
            g.close()


def test_repeated_gets_reach_the_upstream_once_within_the_ttl(
    ups: dict[str, Upstream], gateway: Any
) -> None:
    a = ups["a"]
    g = gateway({"one": [a.url]}, ttl=1.0)
    first = g.get("/api/one/items/1?y=2&x=1")
    assert first.status_code == 200
    assert first.headers["x-cache"] == "MISS"
    assert first.json() == {
        "instance": "a",
        "path": "/items/1",
        "query": "y=2&x=1",
        "n": 1,
    }
    for _ in range(5):
        again = g.get("/api/one/items/1?x=1&y=2")  # same query, other order
        assert again.status_code == 200
        assert again.headers["x-cache"] == "HIT"
        assert again.content == first.content
        assert int(again.headers["age"]) >= 0
    assert again.headers["etag"] == first.headers["etag"]
    etag = {"If-None-Match": first.headers["etag"]}
    assert g.get("/api/one/items/1", headers=etag).status_code == 200  # no query
    assert g.get("/api/one/items/1?x=1&y=2", headers=etag).status_code == 304
    assert a.calls["/items/1"] == 2
    time.sleep(1.05)  # past the ttl: the next one goes upstream again
    late = g.get("/api/one/items/1?x=1&y=2")
    assert (late.headers["x-cache"], late.json()["n"]) == ("MISS", 3)
    assert a.calls["/items/1"] == 3
    stats = g.get("/health").json()["cache"]
    assert stats["hits"] == 6 and stats["stores"] == 3
    # The service's Vary is honoured: one entry per language.
    for lang in ("en", "de", "en", "de"):
        r = g.get("/api/one/vary", headers={"Accept-Language": lang})
        assert r.json()["lang"] == lang
    assert r.headers["x-cache"] == "HIT"
    assert a.calls["/vary"] == 2


def test_redis_cache_and_limits_are_shared_by_two_gateways(
    ups: dict[str, Upstream], gateway: Any, redis_server: RedisServer
) -> None:
    a = ups["a"]
    prefix = f"gw{uuid.uuid4().hex}:"

    def make() -> Gateway:
        return gateway(
            {"one": [a.url]},
            cache_backend=RedisCache(redis_server.url, prefix=prefix + "c:", timeout=1),
            rate="4/minute",
            rate_storage=RedisStorage(
                redis_server.url, prefix=prefix + "l:", timeout=1
            ),
        )

    g1, g2 = make(), make()
    first = g1.get("/api/one/items/7")
    assert first.headers["x-cache"] == "MISS"
    second = g2.get("/api/one/items/7")  # another process would see it too
    assert (second.headers["x-cache"], second.content) == ("HIT", first.content)
    assert second.headers["etag"] == first.headers["etag"]
    assert g1.get("/api/one/items/7").headers["x-cache"] == "HIT"
    assert a.calls["/items/7"] == 1
    # The limit is shared too: the fourth request overall passes, the
    # fifth is refused whichever gateway gets it.
    assert g2.get("/api/one/items/7").status_code == 200
    refused = g1.get("/api/one/items/7")
    assert refused.status_code == 429
    assert g2.get("/api/one/items/7").status_code == 429
    assert a.calls["/items/7"] == 1


def test_users_never_see_each_others_answers(
    ups: dict[str, Upstream], gateway: Any
) -> None:
    a = ups["a"]
    alice = {"Authorization": "Bearer alice"}
    bob = {"Authorization": "Bearer bob"}
    # Default: answers to requests with Authorization are not cached.
    g = gateway({"one": [a.url]})
    assert g.get("/api/one/whoami", headers=alice).json()["user"] == "Bearer alice"
    assert g.get("/api/one/whoami", headers=bob).json()["user"] == "Bearer bob"
    again = g.get("/api/one/whoami", headers=alice)
    assert again.json() == {"user": "Bearer alice", "n": 3}
    assert again.headers["x-cache"] == "MISS"
    assert g.get("/api/one/whoami").json()["user"] is None  # anonymous: its own
    assert g.get("/api/one/whoami").headers["x-cache"] == "HIT"
    assert a.calls["/whoami"] == 4
    # cache_per_user: each identity gets its own entries.
    a.calls.clear()
    g = gateway({"one": [a.url]}, cache_per_user=True)
    for _ in range(3):
        for who, headers in (("alice", alice), ("bob", bob)):
            r = g.get("/api/one/whoami", headers=headers)
            assert r.json()["user"] == f"Bearer {who}"
    assert g.get("/api/one/whoami", headers=alice).headers["x-cache"] == "HIT"
    assert g.get("/api/one/whoami").json()["user"] is None
    assert (
        g.get("/api/one/whoami", headers={"Cookie": "sid=bob"}).json()["user"] is None
    )
    assert a.calls["/whoami"] == 4


def test_round_robin_spreads_evenly_over_three_instances(
    ups: dict[str, Upstream], gateway: Any
) -> None:
    g = gateway({"rr": [u.url for u in ups.values()]})
    seen = [g.get(f"/api/rr/spread/{i}").json()["instance"] for i in range(9)]
    assert Counter(seen) == {"a": 3, "b": 3, "c": 3}
    assert seen[:3] == ["a", "b", "c"] and seen[3:6] == seen[:3]
    assert [u.total for u in ups.values()] == [3, 3, 3]
    health = g.get("/health").json()["services"]["rr"]
    assert [(h["requests"], h["failures"], h["up"]) for h in health] == [
        (3, 0, True)
    ] * 3


def test_a_dead_instance_is_skipped_and_comes_back_after_the_cooldown(
    ups: dict[str, Upstream], gateway: Any
) -> None:
    a, c = ups["a"], ups["c"]
    dead_port = free_port()
    dead = f"http://127.0.0.1:{dead_port}"
    g = gateway({"rr": [a.url, dead, c.url]}, cooldown=1.0)
    seen = [g.get(f"/api/rr/dead/{i}") for i in range(8)]
    assert [r.status_code for r in seen] == [200] * 8
    # Every request succeeded; the dead instance was tried once, then
    # skipped, and the two live ones took turns.
    assert (a.total, c.total) == (4, 4)
    health = g.get("/health").json()["services"]["rr"]
    assert [(h["requests"], h["failures"], h["up"]) for h in health] == [
        (4, 0, True),
        (1, 1, False),
        (4, 0, True),
    ]
    # Past the cool-down it is tried again, and now it answers.
    back = Upstream("d", dead_port)
    try:
        time.sleep(1.05)
        seen = [g.get(f"/api/rr/back/{i}").json()["instance"] for i in range(6)]
        assert Counter(seen) == {"a": 2, "c": 2, "d": 2}
        assert back.total == 2
    finally:
        back.served.stop()


def test_every_instance_down_is_a_502_problem(gateway: Any) -> None:
    g = gateway({"gone": [f"http://127.0.0.1:{free_port()}" for _ in range(2)]})
    for _ in range(2):
        r = g.get("/api/gone/items/1")
        assert r.status_code == 502
        assert r.headers["content-type"] == "application/problem+json"
        assert r.headers["cache-control"] == "no-store"
        assert r.json()["status"] == 502
        assert r.headers["x-cache"] == "MISS"


def test_upstream_errors_are_mapped_and_never_cached(
    ups: dict[str, Upstream], gateway: Any
) -> None:
    a = ups["a"]
    g = gateway({"one": [a.url]})
    for _ in range(2):
        r = g.get("/api/one/boom")
        assert r.status_code == 502
        assert r.headers["content-type"] == "application/problem+json"
        assert r.headers["cache-control"] == "no-store"
        assert r.json()["upstream_status"] == 500
        assert "secret" not in r.text
        assert r.headers["x-cache"] == "MISS"
    assert a.calls["/boom"] == 2
    r = g.get("/api/one/unavailable")
    assert (r.status_code, r.headers["retry-after"]) == (502, "7")
    assert r.json()["upstream_status"] == 503
    # 4xx pass through unchanged, and are not cached either.
    for n in (1, 2):
        r = g.get("/api/one/missing")
        assert r.status_code == 404
        assert r.json() == {"error": "no such item", "n": n}
        assert r.headers["x-cache"] == "MISS"
    # A 5xx does not take the instance out of the rotation.
    assert g.get("/health").json()["services"]["one"][0]["up"] is True
    # Cache-Control: private is honoured.
    assert [g.get("/api/one/private").json()["n"] for _ in range(2)] == [1, 2]
    # So is Set-Cookie: the cookie reaches its client, and is never replayed.
    # (A new client each time: a cookie sent back would bypass the cache.)
    url = g.served.url + "/api/one/cookie"
    cookies = [httpx.get(url).headers["set-cookie"] for _ in range(2)]
    assert cookies == ["sid=1", "sid=2"]
    # An unknown service is the gateway's own 404.
    r = g.get("/api/nope/x")
    assert (r.status_code, r.headers["content-type"]) == (
        404,
        "application/problem+json",
    )


def test_upstream_timeout_is_a_504_not_cached(
    ups: dict[str, Upstream], gateway: Any
) -> None:
    a = ups["a"]
    g = gateway({"one": [a.url]}, timeout=0.25)
    for _ in range(2):
        started = time.monotonic()
        r = g.get("/api/one/slow")
        assert time.monotonic() - started < 0.9
        assert r.status_code == 504
        assert r.headers["content-type"] == "application/problem+json"
        assert r.headers["cache-control"] == "no-store"
    # The only instance is cooling down, yet it is still tried.
    assert a.calls["/slow"] == 2
    assert g.get("/api/one/items/9").status_code == 200


def test_requests_are_forwarded_faithfully(
    ups: dict[str, Upstream], gateway: Any
) -> None:
    a = ups["a"]
    g = gateway({"one": [a.url]})
    for n in (1, 2):
        r = g.http.post(
            "/api/one/echo?q=1",
            content=b"payload",
            headers={"Connection": "x-hop", "X-Hop": "1"},
        )
        assert r.status_code == 200
        assert r.json() == {
            "method": "POST",
            "body": "payload",
            "query": "q=1",
            "forwarded_for": "127.0.0.1",
            "connection_header": None,  # named by Connection: hop-by-hop
            "n": n,
        }
    head = g.http.head("/api/one/items/3")
    assert head.status_code == 200 and head.content == b""
    assert a.calls["/items/3"] == 1


def test_client_rate_limit_is_a_429_with_headers(
    ups: dict[str, Upstream], gateway: Any
) -> None:
    a = ups["a"]
    g = gateway({"one": [a.url]}, rate="3/minute")
    ok = [g.get("/api/one/items/5") for _ in range(3)]
    assert [r.status_code for r in ok] == [200] * 3
    assert ok[0].headers["x-ratelimit-limit"] == "3"
    assert ok[2].headers["x-ratelimit-remaining"] == "0"
    r = g.get("/api/one/items/5")
    assert r.status_code == 429
    assert r.headers["content-type"] == "application/problem+json"
    assert int(r.headers["retry-after"]) == 20
    assert r.headers["ratelimit-policy"] == '"gateway";q=3;w=60'
    assert r.headers["ratelimit"] == '"gateway";r=0;t=20'
    assert r.headers["x-ratelimit-remaining"] == "0"
    assert a.calls["/items/5"] == 1  # the cache answered the others
    assert g.get("/health").status_code == 200  # not limited


def test_create_app_rejects_bad_settings() -> None:
    good = {"s": ["http://127.0.0.1:1"]}
    with pytest.raises(TypeError):
        gw.create_app({})
    with pytest.raises(TypeError):
        gw.create_app({"s": "http://127.0.0.1:1"})
    with pytest.raises(ValueError, match="not an http"):
        gw.create_app({"s": ["ftp://x"]})
    with pytest.raises(ValueError, match="without '/'"):
        gw.create_app({"a/b": ["http://x"]})
    with pytest.raises(ValueError, match="timeout"):
        gw.create_app(good, timeout=0)
    with pytest.raises(TypeError, match="cooldown"):
        gw.create_app(good, cooldown="5")
    with pytest.raises(ValueError, match="bad rate"):
        gw.create_app(good, rate="5/fortnight")
    with pytest.raises(ValueError, match="ttl"):
        gw.create_app(good, ttl=-1)
    assert gw.services_from_env("u=http://a:1, http://b:2 ;o=http://c:3") == {
        "u": ["http://a:1", "http://b:2"],
        "o": ["http://c:3"],
    }
    with pytest.raises(ValueError, match="GATEWAY_SERVICES"):
        gw.services_from_env("users")


def test_the_example_runs_as_a_script(
    ups: dict[str, Upstream], redis_server: RedisServer
) -> None:
    a, b = ups["a"], ups["b"]
    port = free_port()
    env = {
        **os.environ,
        "GATEWAY_SERVICES": f"svc={a.url},{b.url}",
        "REDIS_URL": redis_server.url,
        "GATEWAY_RATE": "50/second",
        "PORT": str(port),
    }
    proc = subprocess.Popen(
        [sys.executable, str(APP_PATH)], env=env, stderr=subprocess.PIPE
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(base + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, "the gateway exited"
            assert time.monotonic() < deadline, "the gateway did not start"
            time.sleep(0.05)
        with httpx.Client(base_url=base) as http:
            path = f"/script/{uuid.uuid4().hex}"  # fresh in the shared Redis
            got = [http.get("/api/svc" + path) for _ in range(3)]
        assert [r.headers["x-cache"] for r in got] == ["MISS", "HIT", "HIT"]
        assert a.calls[path] + b.calls[path] == 1
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    # uvicorn shuts down cleanly, then re-raises the signal it got.
    text = err.decode()
    assert proc.returncode in (0, -signal.SIGTERM), text
    assert "Application shutdown complete" in text and "Traceback" not in text, text
