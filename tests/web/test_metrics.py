"""stanchion.metrics: real prometheus_client registries and the
OpenTelemetry SDK's in-memory reader, fed by real FastAPI and Flask apps
(and a real redis-server for the storage series)."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Iterator
from typing import Any

import httpx
import prometheus_client
import pytest
from fastapi import FastAPI
from flask import Flask
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

import stanchion
import stanchion.metrics as metrics
from stanchion import Penalty
from stanchion.asgi import CacheMiddleware, RateLimitMiddleware
from stanchion.flask import Stanchion
from stanchion.http import Rule
from stanchion.redis import RedisStorage

from .._redis import RedisServer
from ..conftest import FakeClock


@pytest.fixture(autouse=True)
def metrics_off() -> Iterator[None]:
    metrics.disable()
    yield
    metrics.disable()


@pytest.fixture
def registry() -> prometheus_client.CollectorRegistry:
    reg = prometheus_client.CollectorRegistry()
    metrics.enable(prometheus_registry=reg)
    return reg


def samples(reg: prometheus_client.CollectorRegistry) -> dict[str, float]:
    """Every sample of the text exposition, ``name{labels}`` -> value
    (the ``_created`` timestamps left out)."""
    text = prometheus_client.generate_latest(reg).decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("#") or "_created" in line:
            continue
        name, value = line.rsplit(" ", 1)
        out[name] = float(value)
    return out


def decisions(reg: Any, scope: str) -> dict[str, float]:
    found = {}
    for name, value in samples(reg).items():
        m = re.fullmatch(
            r'stanchion_decisions_total\{outcome="(\w+)",scope="([^"]+)"\}', name
        )
        if m and m.group(2) == scope and value:
            found[m.group(1)] = value
    return found


def fastapi_app(**mw: Any) -> FastAPI:
    app = FastAPI()

    @app.get("/hello")
    def hello() -> dict[str, str]:
        return {"hello": "world"}

    app.add_middleware(RateLimitMiddleware, **mw)
    return app


def client(app: Any, ip: str = "203.0.113.1") -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, client=(ip, 40000)),
        base_url="http://test",
    )


async def statuses(app: Any, n: int, ip: str = "203.0.113.1") -> list[int]:
    async with client(app, ip) as c:
        return [(await c.get("/hello")).status_code for _ in range(n)]


# -- Prometheus through real apps ------------------------------------------------


async def test_fastapi_prometheus_series(registry: Any, clock: FakeClock) -> None:
    app = fastapi_app(limit="2/minute", scope="api", clock=clock)
    assert await statuses(app, 5) == [200, 200, 429, 429, 429]
    assert await statuses(app, 1, ip="203.0.113.2") == [200]
    text = prometheus_client.generate_latest(registry).decode()
    assert "# TYPE stanchion_decisions_total counter" in text
    assert 'stanchion_decisions_total{outcome="allowed",scope="api"} 3.0' in text
    assert 'stanchion_decisions_total{outcome="denied",scope="api"} 3.0' in text
    assert 'stanchion_decisions_total{outcome="banned",scope="api"} 0.0' in text


def test_flask_prometheus_series(registry: Any, clock: FakeClock) -> None:
    app = Flask(__name__)
    limiter = Stanchion(app, default_limit="3/minute", clock=clock)

    @app.get("/a")
    def a() -> str:
        return "a"

    @app.get("/b")
    @limiter.limit("1/minute", scope="b")
    def b() -> str:
        return "b"

    c = app.test_client()
    env = {"REMOTE_ADDR": "198.51.100.7"}
    # Counts live as long as the process: what this test adds.
    before = samples(registry)
    got = [c.get("/a", environ_base=env).status_code for _ in range(4)]
    got += [c.get("/b", environ_base=env).status_code for _ in range(2)]
    assert got == [200, 200, 200, 429, 200, 429]
    after = samples(registry)
    found = {
        k: v - before.get(k, 0)
        for k, v in after.items()
        if "decisions" in k and v != before.get(k, 0)
    }
    assert found == {
        'stanchion_decisions_total{outcome="allowed",scope="global"}': 3.0,
        'stanchion_decisions_total{outcome="denied",scope="global"}': 1.0,
        'stanchion_decisions_total{outcome="allowed",scope="b"}': 1.0,
        'stanchion_decisions_total{outcome="denied",scope="b"}': 1.0,
    }


async def test_banned_and_dry_run_outcomes(registry: Any, clock: FakeClock) -> None:
    banning = fastapi_app(
        limit="1/minute",
        scope="banning",
        clock=clock,
        penalty=Penalty(after=1, within=60, ban=600),
    )
    # allowed, refused (the one refusal tolerated), refused: banned.
    assert await statuses(banning, 4) == [200, 429, 403, 403]
    assert decisions(registry, "banning") == {
        "allowed": 1.0,
        "denied": 1.0,
        "banned": 2.0,
    }
    watching = fastapi_app(limit="1/minute", scope="watching", dry_run=True)
    assert await statuses(watching, 3) == [200, 200, 200]
    assert decisions(registry, "watching") == {"allowed": 1.0, "dry_run_denied": 2.0}


async def test_forbidden_outcome(registry: Any) -> None:
    app = fastapi_app(limit="10/minute", scope="listed", deny=["203.0.113.0/24"])
    assert await statuses(app, 2) == [403, 403]
    assert await statuses(app, 1, ip="198.51.100.1") == [200]
    assert decisions(registry, "listed") == {"forbidden": 2.0, "allowed": 1.0}


async def test_queue_wait_and_busy(registry: Any) -> None:
    release = asyncio.Event()
    entered = asyncio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["path"] == "/slow":
            entered.set()
            await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    mw = RateLimitMiddleware(
        app, limit=None, scope="pool", concurrency=1, queue=1, queue_timeout=5
    )
    async with client(mw) as c:
        slow = asyncio.ensure_future(c.get("/slow"))
        await entered.wait()
        queued = asyncio.ensure_future(c.get("/fast"))
        for _ in range(500):  # until it waits in the queue
            if samples(registry).get('stanchion_queued_total{scope="pool"}'):
                break
            await asyncio.sleep(0.01)
        refused = await c.get("/fast")  # the queue is full: 503
        await asyncio.sleep(0.05)
        release.set()
        assert (await slow).status_code == 200
        assert (await queued).status_code == 200
    assert refused.status_code == 503
    s = samples(registry)
    assert s['stanchion_queued_total{scope="pool"}'] == 1.0
    count = s['stanchion_queue_wait_seconds_count{result="acquired",scope="pool"}']
    assert count == 1.0
    waited = s['stanchion_queue_wait_seconds_sum{result="acquired",scope="pool"}']
    assert 0.04 < waited < 5
    assert decisions(registry, "pool") == {"busy": 1.0}


def test_queue_wait_timeout_in_threads(registry: Any) -> None:
    slots = stanchion.Concurrency(1, queue=1, timeout=0.05, name="workers")
    with slots.hold(), pytest.raises(stanchion.ConcurrencyLimitExceeded):
        slots.acquire()
    s = samples(registry)
    assert s['stanchion_queued_total{scope="workers"}'] == 1.0
    assert (
        s['stanchion_queue_wait_seconds_count{result="timeout",scope="workers"}'] == 1
    )
    assert (
        s['stanchion_queue_wait_seconds_sum{result="timeout",scope="workers"}'] >= 0.04
    )


async def test_cache_series(registry: Any) -> None:
    calls = 0

    async def app(scope: Any, receive: Any, send: Any) -> None:
        nonlocal calls
        calls += 1
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"page"})

    # Every response cache of the process counts as "response" (other
    # tests' too): what this one adds.
    base = samples(registry)
    front = CacheMiddleware(app, ttl=60)
    async with client(front) as c:
        for _ in range(3):
            assert (await c.get("/page")).status_code == 200
    assert calls == 1

    cache: stanchion.Cache[str, int] = stanchion.Cache(maxsize=1)
    metrics.watch(cache, "sessions")
    cache["a"] = 1
    cache["b"] = 2  # evicts a
    assert cache.get("a") is None and cache.get("b") == 2

    @metrics.watch_as("squares")
    @stanchion.cached
    def square(x: int) -> int:
        return x * x

    assert [square(2), square(2), square(3)] == [4, 4, 9]
    s = samples(registry)
    for series, added in (
        ('stanchion_cache_requests_total{cache="response",result="hit"}', 2),
        ('stanchion_cache_requests_total{cache="response",result="miss"}', 1),
        ('stanchion_cache_stores_total{cache="response"}', 1),
    ):
        assert s[series] - base.get(series, 0) == added, series
    assert s['stanchion_cache_requests_total{cache="sessions",result="hit"}'] == 1
    assert s['stanchion_cache_requests_total{cache="sessions",result="miss"}'] == 1
    assert s['stanchion_cache_evictions_total{cache="sessions",reason="size"}'] == 1
    assert s['stanchion_cache_requests_total{cache="squares",result="hit"}'] == 1
    assert s['stanchion_cache_requests_total{cache="squares",result="miss"}'] == 2
    assert s['stanchion_cache_stores_total{cache="squares"}'] == 2
    # Cleared: the counters stay monotonic.
    square.cache_clear()
    assert square(2) == 4
    s = samples(registry)
    assert s['stanchion_cache_requests_total{cache="squares",result="miss"}'] == 3
    assert s['stanchion_cache_stores_total{cache="squares"}'] == 3


def test_stale_response_served(registry: Any, clock: FakeClock) -> None:
    from stanchion.wsgi import CacheMiddleware as WsgiCache

    failing = False

    def app(environ: Any, start_response: Any) -> list[bytes]:
        if failing:
            start_response("500 Internal Server Error", [])
            return [b"down"]
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"page"]

    front = WsgiCache(app, ttl=10, stale_if_error=100, clock=clock)
    metrics.watch(front, "pages")
    c = prometheus_free_client(front)
    assert c.get("/p").status_code == 200
    clock.advance(30)
    failing = True
    r = c.get("/p")
    assert (r.status_code, r.data) == (200, b"page")
    s = samples(registry)
    # The refetch missed; its answer was the stale entry.
    assert s['stanchion_cache_stale_total{cache="pages"}'] == 1
    assert s['stanchion_cache_requests_total{cache="pages",result="miss"}'] == 2
    assert s['stanchion_cache_requests_total{cache="pages",result="hit"}'] == 0
    assert s['stanchion_cache_stores_total{cache="pages"}'] == 1


def prometheus_free_client(app: Any) -> Any:
    from werkzeug.test import Client

    return Client(app)


# -- storage errors and outages --------------------------------------------------


def test_redis_outage_series(
    private_redis: RedisServer,
    registry: Any,
    reader: InMemoryMetricReader,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="stanchion")
    storage = RedisStorage(private_redis.url, timeout=0.2, retry_interval=0)
    app = Flask(__name__)
    Stanchion(app, default_limit="100/minute", storage=storage)

    @app.get("/")
    def index() -> str:
        return "ok"

    c = app.test_client()
    where = private_redis.url.split("://", 1)[1].rstrip("/").split("/")[0]

    def series() -> tuple[float, float]:
        s = samples(registry)
        errors = outage = 0.0
        for name, value in s.items():
            if name.startswith("stanchion_storage_errors_total") and where in name:
                errors += value
            if name.startswith("stanchion_storage_outage{") and where in name:
                outage = value
        return errors, outage

    def otel_outage() -> Any:
        points = otel_points(reader)["stanchion.storage.outage"]
        found = [v for k, v in points.items() if where in dict(k)["server"]]
        assert len(found) == 1, points
        return found[0]

    try:
        assert c.get("/").status_code == 200
        before, _ = series()
        private_redis.kill()
        assert [c.get("/").status_code for _ in range(3)] == [200, 200, 200]
        errors, outage = series()
        assert errors - before == 3 and outage == 1
        assert otel_outage() == 1
        private_redis.start()
        assert c.get("/").status_code == 200
        assert series() == (errors, 0)
        assert otel_outage() == 0
    finally:
        storage.close()


# -- OpenTelemetry ----------------------------------------------------------------


def otel_points(reader: InMemoryMetricReader) -> dict[str, dict[tuple[Any, ...], Any]]:
    data = reader.get_metrics_data()
    out: dict[str, dict[tuple[Any, ...], Any]] = {}
    assert data is not None
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                points = out.setdefault(metric.name, {})
                for p in metric.data.data_points:
                    key = tuple(sorted(p.attributes.items()))
                    points[key] = p.value if hasattr(p, "value") else p
    return out


@pytest.fixture
def reader() -> Iterator[InMemoryMetricReader]:
    r = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[r])
    metrics.enable(otel_meter=provider.get_meter("test"))
    yield r
    provider.shutdown()


async def test_otel_decisions_queue_and_cache(
    reader: InMemoryMetricReader, clock: FakeClock
) -> None:
    app = fastapi_app(limit="2/minute", scope="otel", clock=clock)
    assert await statuses(app, 3) == [200, 200, 429]
    slots = stanchion.Concurrency(1, queue=1, timeout=0.02, name="jobs")
    with slots.hold(), pytest.raises(stanchion.ConcurrencyLimitExceeded):
        slots.acquire()
    cache: stanchion.Cache[str, int] = stanchion.Cache(4)
    metrics.watch(cache, "c")
    cache.get("x")
    points = otel_points(reader)
    d = points["stanchion.decisions"]
    assert d[(("outcome", "allowed"), ("scope", "otel"))] == 2
    assert d[(("outcome", "denied"), ("scope", "otel"))] == 1
    assert points["stanchion.queued"][(("scope", "jobs"),)] == 1
    wait = points["stanchion.queue.wait"][(("result", "timeout"), ("scope", "jobs"))]
    assert wait.count == 1 and wait.sum >= 0.015
    requests = points["stanchion.cache.requests"]
    assert requests[(("cache", "c"), ("result", "miss"))] == 1


# -- hooks --------------------------------------------------------------------------


async def test_hooks_get_the_decision_and_context(clock: FakeClock) -> None:
    every: list[metrics.DecisionEvent] = []
    breaches: list[metrics.DecisionEvent] = []
    metrics.on_decision(every.append)
    metrics.on_breach(breaches.append)
    app = fastapi_app(limit="1/minute", scope="hooked", clock=clock)
    assert await statuses(app, 2, ip="192.0.2.9") == [200, 429]
    assert [e.outcome for e in every] == ["allowed", "denied"]
    assert [e.outcome for e in breaches] == ["denied"]
    e = breaches[0]
    assert (e.scope, e.client, e.method, e.path) == (
        "hooked",
        "192.0.2.9",
        "GET",
        "/hello",
    )
    assert e.blocked and e.decision is not None and not e.decision.allowed
    assert e.retry_after == pytest.approx(60)
    assert metrics.remove_hook(every.append) is True  # equal bound methods
    assert metrics.remove_hook(every.append) is False
    assert metrics.remove_hook(breaches.append) is True
    assert not metrics.enabled()


async def test_a_failing_hook_is_logged_once(
    caplog: pytest.LogCaptureFixture, registry: Any
) -> None:
    def broken(event: metrics.DecisionEvent) -> None:
        raise RuntimeError("hook bug")

    metrics.on_decision(broken)
    app = fastapi_app(limit="10/minute", scope="fragile")
    with caplog.at_level(logging.ERROR, logger="stanchion.metrics"):
        assert await statuses(app, 3) == [200, 200, 200]
    logged = [r for r in caplog.records if "hook" in r.getMessage()]
    assert len(logged) == 1 and "hook bug" in (logged[0].exc_text or "")
    assert decisions(registry, "fragile") == {"allowed": 3.0}
    assert metrics.remove_hook(broken) is True


def test_a_hook_that_reenters_stanchion(registry: Any) -> None:
    """A hook that decides through the same rule, hits a limiter and
    scrapes the registry: no recursion, no deadlock."""
    rule = Rule("5/minute", scope="again")
    side = stanchion.Limiter("100/second")
    seen: list[str] = []

    def hook(event: metrics.DecisionEvent) -> None:
        seen.append(event.outcome)
        rule.check_simple("GET", "/nested", "192.0.2.50")  # calls no hook
        side.hit("x")
        prometheus_client.generate_latest(registry)
        metrics.on_breach(print)  # changing the hooks from a hook
        metrics.remove_hook(print)

    metrics.on_decision(hook)
    for _ in range(3):
        v = rule.check_simple("GET", "/", "192.0.2.1")
        assert v is not None and not v.blocked
    assert seen == ["allowed"] * 3
    assert decisions(registry, "again") == {"allowed": 6.0}


def test_hooks_reject_bad_input() -> None:
    with pytest.raises(TypeError):
        metrics.on_decision(5)  # type: ignore[arg-type]

    async def coro(event: Any) -> None:
        pass

    with pytest.raises(TypeError, match="plain function"):
        metrics.on_breach(coro)
    assert not metrics.enabled()


# -- cardinality ---------------------------------------------------------------------


async def test_a_flood_of_clients_adds_no_series(
    registry: Any, reader: InMemoryMetricReader
) -> None:
    app = fastapi_app(limit="1/minute", scope="flood")
    assert await statuses(app, 2) == [200, 429]
    prom_before = set(samples(registry))
    otel_before = {k: set(v) for k, v in otel_points(reader).items()}
    for i in range(300):
        ip = f"10.{i // 250}.{i % 250}.{i % 7 + 1}"
        assert await statuses(app, 2, ip=ip) == [200, 429]
    assert set(samples(registry)) == prom_before
    assert {k: set(v) for k, v in otel_points(reader).items()} == otel_before
    assert decisions(registry, "flood") == {"allowed": 301.0, "denied": 301.0}
    assert len([k for k in prom_before if 'scope="flood"' in k]) == len(
        metrics.OUTCOMES
    )


# -- switching on and off, failures -----------------------------------------------------


def test_rules_switch_paths_when_enabled_and_disabled() -> None:
    rule = Rule("5/minute", scope="switch")
    gate = rule.gate
    assert gate is not None and "check_simple" not in vars(rule)
    reg = prometheus_client.CollectorRegistry()
    metrics.enable(prometheus_registry=reg)
    # Exporters alone: the C gate stays, wrapped to count what it allows.
    assert rule.gate is not None and rule.gate is not gate
    assert "check_simple" in vars(rule)
    assert rule.gate("192.0.2.1") is None  # a client it does not know yet
    rule.check_simple("GET", "/", "192.0.2.1")
    assert rule.gate("192.0.2.1")
    assert decisions(reg, "switch") == {"allowed": 2.0}
    # A hook wants the method and path: the gate is off.
    metrics.on_breach(print)
    assert rule.gate is None
    metrics.disable()
    assert rule.gate is gate and "check_simple" not in vars(rule)
    assert (
        "stanchion_decisions_total"
        not in prometheus_client.generate_latest(reg).decode()
    )
    assert bool(rule.gate("192.0.2.1"))


def test_exporter_failures() -> None:
    reg = prometheus_client.CollectorRegistry()
    prometheus_client.Counter("stanchion_decisions", "taken", registry=reg)
    rule = Rule("5/minute", scope="fail")
    with pytest.raises(ValueError, match="already has stanchion"):
        metrics.enable(prometheus_registry=reg)
    assert not metrics.enabled() and rule.gate is not None
    with pytest.raises(TypeError, match="CollectorRegistry"):
        metrics.enable(prometheus_registry=object())
    with pytest.raises(TypeError, match="Meter"):
        metrics.enable(otel_meter=object())
    with pytest.raises(ValueError):
        metrics.enable()
    with pytest.raises(TypeError):
        metrics.watch(object(), "x")
    with pytest.raises(ValueError):
        metrics.watch(stanchion.Cache(2), "")
    with pytest.raises(ValueError):
        stanchion.Concurrency(1, name="")
    assert not metrics.enabled()


async def test_a_broken_exporter_never_breaks_a_request(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A meter whose instruments raise, and a watched cache whose stats
    raise while Prometheus collects: logged once each, nothing else."""

    class Broken:
        def add(self, *a: Any, **k: Any) -> None:
            raise RuntimeError("exporter down")

        record = add

    class Meter:
        def create_counter(self, *a: Any, **k: Any) -> Broken:
            return Broken()

        create_histogram = create_counter

        def create_observable_counter(self, *a: Any, **k: Any) -> None:
            return None

        create_observable_gauge = create_observable_counter

    class BadStats(stanchion.Cache):  # type: ignore[type-arg]
        fail = False

        def stats(self) -> Any:
            if self.fail:
                raise RuntimeError("stats down")
            return super().stats()

    reg = prometheus_client.CollectorRegistry()
    metrics.enable(otel_meter=Meter(), prometheus_registry=reg)
    app = fastapi_app(limit="1/minute", scope="broken")
    slots = stanchion.Concurrency(1, queue=1, timeout=0.01, name="broken")
    bad = BadStats(4)
    metrics.watch(bad, "bad")
    bad.get("x")
    with caplog.at_level(logging.ERROR, logger="stanchion.metrics"):
        assert await statuses(app, 3) == [200, 429, 429]
        for _ in range(2):
            with slots.hold(), pytest.raises(stanchion.ConcurrencyLimitExceeded):
                slots.acquire()
        assert samples(reg)['stanchion_cache_requests_total{cache="bad",result="miss"}']
        bad.fail = True
        for _ in range(2):
            s = samples(reg)  # the last counts read
            assert s['stanchion_cache_requests_total{cache="bad",result="miss"}'] == 1
    failed = [r.getMessage() for r in caplog.records if "exporting" in r.getMessage()]
    # Once each: the queued hold's add, its wait's record, the cache's stats.
    assert len(failed) == len(set(failed)) == 3, failed
    assert decisions(reg, "broken") == {"allowed": 1.0, "denied": 2.0}


def test_disabled_costs_no_lookup_per_request() -> None:
    """Built with nothing enabled, a rule keeps its C gate and its class's
    methods: the adapters' fast path is the one without metrics."""
    rule = Rule("5/minute", scope="plain")
    assert rule.gate is not None
    assert not {"check_simple", "check", "acheck", "busy"} & set(vars(rule))
    rule.check_simple("GET", "/", "192.0.2.1")  # keeps the client's plan
    assert rule.gate("192.0.2.1")
    assert metrics._queue is None  # the queues' slow path records nothing


@pytest.mark.parametrize("where", ["shm", "redis"])
def test_queue_wait_in_a_shared_storage(
    where: str, registry: Any, request: pytest.FixtureRequest
) -> None:
    """A shared storage's queue (polled) is measured as the in-process
    one: a wait that got its slot, and one that timed out."""
    import threading
    import uuid

    if where == "shm":
        storage: Any = stanchion.SharedMemoryStorage(f"mx-{uuid.uuid4().hex[:12]}")
    else:
        server: RedisServer = request.getfixturevalue("private_redis")
        storage = RedisStorage(server.url)
    name = f"shared-{where}"
    try:
        slots = stanchion.Concurrency(1, queue=1, storage=storage, name=name)
        assert slots.name == name
        first = slots.acquire()
        threading.Timer(0.1, first.release).start()
        second = slots.acquire(timeout=5)  # waits for the release
        with pytest.raises(stanchion.ConcurrencyLimitExceeded):
            slots.acquire(timeout=0.05)
        second.release()
    finally:
        if where == "shm":
            storage.unlink(missing_ok=True)
        else:
            storage.close()
    s = samples(registry)
    assert s[f'stanchion_queued_total{{scope="{name}"}}'] == 2
    got = f'stanchion_queue_wait_seconds_sum{{result="acquired",scope="{name}"}}'
    assert 0.05 < s[got] < 5
    out = f'stanchion_queue_wait_seconds_count{{result="timeout",scope="{name}"}}'
    assert s[out] == 1


async def test_a_middleware_and_a_view_limit_with_hooks_of_their_own(
    clock: FakeClock,
) -> None:
    """on_breach/on_decision as rule settings (flask-limiter's per-limit
    on_breach): called without any exporter, for that rule alone."""
    breached: list[metrics.DecisionEvent] = []
    app = fastapi_app(
        limit="1/minute", scope="own", clock=clock, on_breach=breached.append
    )
    other = fastapi_app(limit="1/minute", scope="other", clock=clock)
    assert await statuses(app, 3) == [200, 429, 429]
    assert await statuses(other, 2) == [200, 429]
    assert [(e.scope, e.outcome, e.path) for e in breached] == [
        ("own", "denied", "/hello")
    ] * 2
    assert not metrics.enabled()

    flask = Flask(__name__)
    seen: list[metrics.DecisionEvent] = []
    limiter = Stanchion(flask, clock=clock)

    @flask.get("/v")
    @limiter.limit("1/minute", scope="view", on_decision=[seen.append])
    def v() -> str:
        return "v"

    c = flask.test_client()
    got = [c.get("/v", environ_base={"REMOTE_ADDR": "192.0.2.4"}) for _ in range(2)]
    assert [r.status_code for r in got] == [200, 429]
    assert [(e.scope, e.outcome, e.client) for e in seen] == [
        ("view", "allowed", "192.0.2.4"),
        ("view", "denied", "192.0.2.4"),
    ]
    # disable() removes the global hooks only.
    metrics.disable()
    assert (await statuses(app, 1)) == [429] and len(breached) == 3


def test_rule_hook_settings_are_checked() -> None:
    from stanchion.http import SettingError

    with pytest.raises(SettingError, match="on_breach"):
        Rule("1/second", on_breach=5)
    with pytest.raises(SettingError, match="on_decision"):
        Rule("1/second", on_decision=[print, "x"])

    async def coro(event: Any) -> None:
        pass

    with pytest.raises(SettingError, match="plain function"):
        Rule("1/second", on_breach=coro)


async def test_a_limiter_used_directly_is_counted(
    registry: Any, clock: FakeClock
) -> None:
    lim = metrics.counted(
        stanchion.Limiter(
            "2/minute", clock=clock, penalty=Penalty(after=1, within=60, ban=60)
        ),
        "direct",
    )
    assert isinstance(lim, stanchion.RateLimiter)
    seen: list[metrics.DecisionEvent] = []
    metrics.on_breach(seen.append)
    got = [lim.hit("k").allowed, lim.hit("k").allowed, (await lim.ahit("k")).allowed]
    assert got == [True, True, False]
    assert lim.hit("k").banned  # the second refusal within a minute
    assert lim.peek("k").banned  # peek: not counted
    with pytest.raises(stanchion.RateLimitExceeded):
        lim.acquire("k", timeout=0)
    assert lim.acquire("other").allowed
    assert lim.bans()[0].key == "k"  # the limiter's own methods
    assert lim.rates == lim.limiter.rates and lim.algorithm == "token_bucket"
    assert decisions(registry, "direct") == {
        "allowed": 3.0,
        "denied": 1.0,
        "banned": 2.0,
    }
    assert [(e.scope, e.outcome, e.client) for e in seen] == [
        ("direct", "denied", "k"),
        ("direct", "banned", "k"),
        ("direct", "banned", "k"),
    ]
    with pytest.raises(TypeError):
        metrics.counted(object(), "x")
    with pytest.raises(ValueError):
        metrics.counted(stanchion.Limiter("1/second"), "")


def test_dropped_caches_leave_their_counts_and_no_entry(registry: Any) -> None:
    import gc

    from stanchion.respcache import ResponseCache

    before = len(metrics._watched)
    for _ in range(200):
        ResponseCache()  # watched as "response", then dropped
    gc.collect()
    assert len(metrics._watched) <= before
    cache: stanchion.Cache[str, int] = stanchion.Cache(4)
    metrics.watch(cache, "short-lived")
    cache.get("a")
    key = 'stanchion_cache_requests_total{cache="short-lived",result="miss"}'
    assert samples(registry)[key] == 1
    del cache
    gc.collect()
    assert samples(registry)[key] == 1  # kept after the cache is gone


async def test_memcached_outage_series(
    private_memcached: Any, registry: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """The Memcached storage shares the outage tracking: its failures and
    outage state are exported as storage="memcached"."""
    from stanchion.memcached import MemcachedStorage

    caplog.set_level(logging.INFO, logger="stanchion")
    storage = MemcachedStorage(private_memcached.url, timeout=0.2, retry_interval=0)
    app = fastapi_app(limit="100/minute", scope="memcached", storage=storage)

    def series() -> tuple[float, float]:
        errors = outage = 0.0
        # This server's series only: earlier tests' servers (their outages
        # too) stay in the process's counts.
        server = f'server="127.0.0.1:{private_memcached.port}"'
        for name, value in samples(registry).items():
            if 'storage="memcached"' not in name or server not in name:
                continue
            if name.startswith("stanchion_storage_errors_total"):
                errors += value
            elif name.startswith("stanchion_storage_outage{"):
                outage = max(outage, value)
        return errors, outage

    try:
        assert await statuses(app, 1) == [200]
        before, _ = series()
        private_memcached.kill()
        assert await statuses(app, 3) == [200, 200, 200]  # on_error="allow"
        errors, outage = series()
        assert errors - before >= 3 and outage == 1
        private_memcached.start()
        # Recovered by itself: the next requests reach the server again
        # (the first may still time out on a slow, sanitized build).
        for _ in range(20):
            assert await statuses(app, 1) == [200]
            if series()[1] == 0:
                break
            await asyncio.sleep(0.1)
        assert series()[1] == 0
    finally:
        storage.close()
