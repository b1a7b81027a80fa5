"""Concurrency limits (``concurrency=``, ``queue=``) through the Flask
extension and hug: at most N requests in flight, the next ones queued
and served in arrival order, the rest refused at once (503 with
Retry-After, 429 for a client's own slots), and every slot given back on
every exit path (exceptions, error handlers, streamed bodies). Django's
are at the end of test_django.py."""

from __future__ import annotations

import itertools
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask, Response, abort
from werkzeug.test import Client as WerkzeugClient

from stanchion.flask import Stanchion
from stanchion.http import SettingError

WAIT = 10.0  # seconds: the longest any test waits for threads to line up


def wait_until(cond: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.002)


class Burst:
    """Requests sent one thread each, started one at a time in a known
    order: each is let go only once the one before it is running in the
    view, queued or answered."""

    def __init__(
        self, send: Callable[[int], tuple[int, dict[str, str], bytes]]
    ) -> None:
        self.send = send
        self.results: dict[int, tuple[int, dict[str, str], bytes]] = {}
        self.threads: list[threading.Thread] = []

    def start(self, i: int, settled: Callable[[], bool]) -> None:
        def run() -> None:
            self.results[i] = self.send(i)

        t = threading.Thread(target=run, daemon=True)
        self.threads.append(t)
        t.start()
        wait_until(lambda: settled() or i in self.results, f"request {i}")

    def join(self) -> None:
        for t in self.threads:
            t.join(WAIT)
            assert not t.is_alive()


# -- Flask ----------------------------------------------------------------------


def flask_app(storage: Any = None, **config: Any) -> tuple[Flask, Stanchion]:
    app = Flask(__name__)
    app.config.update(config)
    limits = Stanchion(app, storage=storage)
    return app, limits


def flask_get(app: Flask, path: str, ip: str = "203.0.113.1") -> Any:
    # Closed as a WSGI server closes every response it sent.
    with app.test_client().get(path, environ_base={"REMOTE_ADDR": ip}) as r:
        return r.status_code, {k.lower(): v for k, v in r.headers.items()}, r.data


def status(client: Any, path: str) -> int:
    with client.get(path) as r:
        return r.status_code  # type: ignore[no-any-return]


def app_slots(app: Flask) -> Any:
    return app.extensions["stanchion"].slots_rule.slots


def blocking_flask_app(**config: Any) -> tuple[Flask, threading.Event, list[int]]:
    """A Flask app whose ``/work?i=N`` records N when it starts and then
    blocks until the event is set."""
    from flask import request

    app, _ = flask_app(**config)
    go = threading.Event()
    started: list[int] = []

    @app.route("/work")
    def work() -> str:
        started.append(int(request.args["i"]))
        assert go.wait(WAIT)
        return "done"

    return app, go, started


def test_flask_burst_runs_n_queues_q_refuses_the_rest_in_order() -> None:
    app, go, started = blocking_flask_app(
        STANCHION_CONCURRENCY=1,
        STANCHION_QUEUE=3,
        STANCHION_QUEUE_TIMEOUT=WAIT,
        STANCHION_DEFAULT_LIMIT="100/minute",
    )
    burst = Burst(lambda i: flask_get(app, f"/work?i={i}"))
    burst.start(0, lambda: started == [0])
    slots = app_slots(app)
    for i in (1, 2, 3):
        burst.start(i, lambda i=i: slots.queued() == i)  # type: ignore[misc]
    for i in (4, 5):
        burst.start(i, lambda: False)  # refused at once
    assert slots.in_flight() == 1 and slots.queued() == 3
    for i in (4, 5):
        status, headers, body = burst.results[i]
        assert status == 503
        assert int(headers["retry-after"]) >= 1
        assert headers["content-type"] == "application/problem+json"
        assert json.loads(body)["status"] == 503
        # Not the rate limit headers of the rate that let it through.
        assert not any(k.startswith(("ratelimit", "x-ratelimit")) for k in headers)
    go.set()
    burst.join()
    assert started == [0, 1, 2, 3]  # the queued ones in arrival order
    for i in range(4):
        status, headers, body = burst.results[i]
        assert (status, body) == (200, b"done")
        assert "ratelimit" in headers  # the default limit's own headers
    assert slots.stats()["in_flight"] == 0 and slots.queued() == 0


def test_flask_queue_timeout_answers_503() -> None:
    app, go, started = blocking_flask_app(
        STANCHION_CONCURRENCY=1, STANCHION_QUEUE=1, STANCHION_QUEUE_TIMEOUT=0.05
    )
    burst = Burst(lambda i: flask_get(app, f"/work?i={i}"))
    burst.start(0, lambda: started == [0])
    t0 = time.monotonic()
    status, headers, _ = flask_get(app, "/work?i=1")
    assert status == 503 and int(headers["retry-after"]) >= 1
    assert 0.04 < time.monotonic() - t0 < WAIT
    go.set()
    burst.join()
    assert started == [0]
    assert app_slots(app).stats()["in_flight"] == 0


def test_flask_per_client_slots_and_429() -> None:
    from flask import request

    app, limits = flask_app()
    go = threading.Event()
    started: list[str] = []

    @app.route("/work")
    @limits.limit(None, concurrency=1, concurrency_per="client")
    def work() -> str:
        started.append(request.remote_addr or "")
        assert go.wait(WAIT)
        return "done"

    burst = Burst(lambda i: flask_get(app, "/work", f"198.51.100.{i}"))
    burst.start(1, lambda: len(started) == 1)
    burst.start(2, lambda: len(started) == 2)  # another client: its own slot
    status, headers, body = flask_get(app, "/work", "198.51.100.1")
    assert status == 429
    assert int(headers["retry-after"]) >= 1
    assert json.loads(body)["status"] == 429
    go.set()
    burst.join()
    assert [burst.results[i][0] for i in (1, 2)] == [200, 200]
    rule = app.extensions["stanchion"].rules
    (slots,) = [r.slots for r in rule.values()]
    assert slots.stats()["in_flight"] == 0


@pytest.mark.parametrize("testing", [False, True])
def test_flask_exceptions_and_error_handlers_release(
    testing: bool, slot_storage: Any
) -> None:
    app, limits = flask_app(slot_storage, STANCHION_CONCURRENCY=2)
    app.testing = testing  # True: the exception reaches the test client

    class Handled(Exception):
        pass

    @app.errorhandler(Handled)
    def handled(exc: Exception) -> tuple[str, int]:
        return "handled", 409

    @app.route("/boom")
    def boom() -> str:
        raise RuntimeError("boom")

    @app.route("/handled")
    def handle_me() -> str:
        raise Handled

    @app.route("/abort")
    @limits.limit("1000/minute", concurrency=1)
    def aborted() -> str:
        abort(418)

    c = app.test_client()
    for _ in range(20):
        if testing:
            with pytest.raises(RuntimeError):
                c.get("/boom")
        else:
            assert status(c, "/boom") == 500
        assert status(c, "/handled") == 409
        assert status(c, "/abort") == 418
    assert app_slots(app).in_flight() == 0
    (view_rule,) = app.extensions["stanchion"].rules.values()
    assert view_rule.slots.in_flight() == 0


def test_flask_streamed_response_holds_its_slot_until_closed(
    slot_storage: Any,
) -> None:
    app, _ = flask_app(slot_storage, STANCHION_CONCURRENCY=1)
    sent: list[str] = []

    @app.route("/stream")
    def stream() -> Response:
        def body() -> Iterator[str]:
            for part in ("a", "b", "c"):
                sent.append(part)
                yield part

        return Response(body())

    slots = app_slots(app)
    c = WerkzeugClient(app)
    r = c.get("/stream", buffered=False)
    assert r.status_code == 200
    it = iter(r.response)
    assert next(it) == b"a"
    assert slots.in_flight() == 1  # held while the body is being sent
    status, _, _ = flask_get(app, "/stream")
    assert status == 503
    r.close()
    assert slots.in_flight() == 0
    assert flask_get(app, "/stream")[:1] == (200,)
    assert slots.in_flight() == 0


def test_flask_exempt_views_and_paths_take_no_slot() -> None:
    app, limits = flask_app(
        STANCHION_CONCURRENCY=1, STANCHION_EXEMPT_PATHS=["/static-ish/*"]
    )
    hold = threading.Event()
    go = threading.Event()

    @app.route("/work")
    def work() -> str:
        hold.set()
        assert go.wait(WAIT)
        return "done"

    @app.route("/health")
    @limits.exempt
    def health() -> str:
        return "ok"

    @app.route("/static-ish/x")
    def static_ish() -> str:
        return "ok"

    @app.route("/other")
    def other() -> str:
        return "ok"

    t = threading.Thread(target=lambda: flask_get(app, "/work"), daemon=True)
    t.start()
    assert hold.wait(WAIT)
    assert flask_get(app, "/health")[0] == 200
    assert flask_get(app, "/static-ish/x")[0] == 200
    assert flask_get(app, "/other")[0] == 503
    go.set()
    t.join(WAIT)
    assert app_slots(app).stats()["in_flight"] == 0


def test_flask_rate_refusal_takes_no_slot() -> None:
    app, limits = flask_app(STANCHION_CONCURRENCY=5)

    @app.route("/one")
    @limits.limit("1/minute")
    def one() -> str:
        return "ok"

    assert flask_get(app, "/one")[0] == 200
    for _ in range(10):
        assert flask_get(app, "/one")[0] == 429
    stats = app_slots(app).stats()
    assert stats["in_flight"] == 0


def test_flask_keyword_settings_and_errors() -> None:
    app = Flask(__name__)
    Stanchion(app, concurrency=3, queue=4, queue_timeout=1.5)
    slots = app_slots(app)
    assert (slots.limit, slots.queue, slots.timeout) == (3, 4, 1.5)
    # Only the app-wide rule has slots; the default limit's rule none.
    assert app.extensions["stanchion"].default_rule is None

    app = Flask(__name__)
    app.config["STANCHION_QUEUE"] = 5
    with pytest.raises(SettingError, match="STANCHION_QUEUE"):
        Stanchion(app)
    app = Flask(__name__)
    app.config.update(STANCHION_CONCURRENCY=2, STANCHION_CONCURRENCY_PER="host")
    with pytest.raises(SettingError, match="STANCHION_CONCURRENCY_PER"):
        Stanchion(app)
    app = Flask(__name__)
    app.config.update(STANCHION_CONCURRENCY=0)
    with pytest.raises(SettingError, match="STANCHION_CONCURRENCY"):
        Stanchion(app)


def test_a_concurrency_limit_alone_does_not_refuse_unidentified_clients() -> None:
    from stanchion.http import Request, Rule

    rule = Rule(None, concurrency=1)  # unidentified="deny" applies to rates
    assert rule.check_simple("GET", "/", None) is None
    assert rule.check(Request("GET", "/"), None) is None


# -- hug --------------------------------------------------------------------------
# (hug reads endpoint annotations: the endpoints below have none.)

_apis = 0


def hug_api(**mw: Any) -> tuple[Any, Any, Any]:
    """A hug API whose ``/work?i=N`` records N and blocks until the event
    is set; ``mw``: the RateLimitMiddleware's keywords (none: no
    middleware). Returns (api, the middleware, the event)."""
    import hug

    from stanchion.hug import RateLimitMiddleware

    global _apis
    _apis += 1
    api = hug.API(f"stanchion_conc_api_{_apis}")
    go = threading.Event()
    started: list[int] = []
    api.started = started  # type: ignore[attr-defined]

    @hug.get("/work", api=api)
    def work(request):  # type: ignore[no-untyped-def]
        started.append(int(request.get_param("i") or 0))
        assert go.wait(WAIT)
        return "done"

    @hug.get("/hello", api=api)
    def hello():  # type: ignore[no-untyped-def]
        return "hello"

    middleware = None
    if mw:
        middleware = RateLimitMiddleware(**mw)
        api.http.add_middleware(middleware)
    return api, middleware, go


def hug_get(api: Any, path: str, ip: str = "203.0.113.1", method: str = "GET") -> Any:
    c = WerkzeugClient(api.http.server())
    with c.open(path, method=method, environ_base={"REMOTE_ADDR": ip}) as r:
        return r.status_code, {k.lower(): v for k, v in r.headers.items()}, r.data


def test_hug_middleware_burst_runs_queues_refuses_in_order() -> None:
    api, mw, go = hug_api(
        limit="100/minute", concurrency=1, queue=3, queue_timeout=WAIT
    )
    slots = mw.rule.slots
    started = api.started
    burst = Burst(lambda i: hug_get(api, f"/work?i={i}"))
    burst.start(0, lambda: started == [0])
    for i in (1, 2, 3):
        burst.start(i, lambda i=i: slots.queued() == i)  # type: ignore[misc]
    for i in (4, 5):
        burst.start(i, lambda: False)
    for i in (4, 5):
        status, headers, body = burst.results[i]
        assert status == 503 and int(headers["retry-after"]) >= 1
        assert headers["content-type"] == "application/problem+json"
        assert json.loads(body)["status"] == 503
        assert not any(k.startswith(("ratelimit", "x-ratelimit")) for k in headers)
    go.set()
    burst.join()
    assert started == [0, 1, 2, 3]
    for i in range(4):
        status, headers, body = burst.results[i]
        assert (status, json.loads(body)) == (200, "done") and "ratelimit" in headers
    assert slots.stats()["in_flight"] == 0 and slots.queued() == 0


def test_hug_decorator_per_client_slots_and_429() -> None:
    import hug

    from stanchion.hug import limit

    api = hug.API(f"stanchion_conc_api_pc_{threading.get_ident()}")
    go = threading.Event()
    started: list[str] = []

    @hug.get("/work", api=api)
    @limit(None, concurrency=1, concurrency_per="client")
    def work(request):  # type: ignore[no-untyped-def]
        started.append(request.remote_addr)
        assert go.wait(WAIT)
        return "done"

    burst = Burst(lambda i: hug_get(api, "/work", f"198.51.100.{i}"))
    burst.start(1, lambda: len(started) == 1)
    burst.start(2, lambda: len(started) == 2)  # another client: its own slot
    status, headers, body = hug_get(api, "/work", "198.51.100.1")
    assert status == 429 and int(headers["retry-after"]) >= 1
    assert json.loads(body)["status"] == 429
    go.set()
    burst.join()
    assert [burst.results[i][0] for i in (1, 2)] == [200, 200]
    assert work.__stanchion_rule__.slots.stats()["in_flight"] == 0


@pytest.fixture(params=["memory", "shm"])
def slot_storage(request: pytest.FixtureRequest) -> Iterator[Any]:
    """Where the slots live. A dropped in-process hold frees its slot by
    itself; a shared memory lease stays taken: a slot the adapter forgot
    to give back shows there."""
    if request.param == "memory":
        yield None
        return
    import uuid

    from stanchion import SharedMemoryStorage

    name = f"test-{uuid.uuid4().hex}"
    storage = SharedMemoryStorage(name)
    try:
        yield storage
    finally:
        SharedMemoryStorage(name).unlink(missing_ok=True)


@pytest.fixture
def hug_loop() -> Iterator[None]:
    """hug runs async endpoints on asyncio.get_event_loop()."""
    import asyncio

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    yield
    asyncio.set_event_loop(None)
    loop.close()


@pytest.mark.usefixtures("hug_loop")
def test_hug_exceptions_release_the_slots(slot_storage: Any) -> None:
    import falcon
    import hug

    from stanchion.hug import limit

    api, mw, _ = hug_api(concurrency=2, storage=slot_storage)
    own = {"concurrency": 1, "storage": slot_storage}

    @hug.get("/boom", api=api)
    @limit("1000/minute", scope="boom", **own)
    def boom():  # type: ignore[no-untyped-def]
        raise RuntimeError("boom")

    @hug.get("/aboom", api=api)
    @limit("1000/minute", scope="aboom", **own)
    async def aboom():  # type: ignore[no-untyped-def]
        raise RuntimeError("boom")

    @hug.get("/teapot", api=api)
    @limit(None, scope="teapot", **own)
    def teapot():  # type: ignore[no-untyped-def]
        raise falcon.HTTPError("418 I'm a teapot")

    for _ in range(20):
        for path in ("/boom", "/aboom"):
            with pytest.raises(RuntimeError):
                hug_get(api, path)
        assert hug_get(api, "/teapot")[0] == 418
    for endpoint in (boom, aboom, teapot):
        assert endpoint.__stanchion_rule__.slots.in_flight() == 0
    assert mw.rule.slots.in_flight() == 0


@pytest.mark.usefixtures("hug_loop")
def test_hug_streamed_answers_hold_until_closed(slot_storage: Any) -> None:
    import io

    import hug

    from stanchion.hug import limit

    api, mw, _ = hug_api(concurrency=5, storage=slot_storage)

    @hug.http("/file", accept=("GET", "HEAD"), api=api, output=hug.output_format.file)
    @limit(None, scope="file", concurrency=1, storage=slot_storage)
    def file():  # type: ignore[no-untyped-def]
        return io.BytesIO(b"x" * 100)

    @hug.http("/afile", accept=("GET", "HEAD"), api=api, output=hug.output_format.file)
    @limit(None, scope="afile", concurrency=1, storage=slot_storage)
    async def afile():  # type: ignore[no-untyped-def]
        return io.BytesIO(b"y" * 100)

    for path, own in (("/file", file), ("/afile", afile)):
        slots = own.__stanchion_rule__.slots
        r = WerkzeugClient(api.http.server()).get(path, buffered=False)
        assert r.status_code == 200
        assert slots.in_flight() == 1 and mw.rule.slots.in_flight() == 1
        assert hug_get(api, path)[0] == 503  # its one slot is still held
        assert r.get_data() == (b"x" if path == "/file" else b"y") * 100
        r.close()
        assert slots.in_flight() == 0 and mw.rule.slots.in_flight() == 0
        assert hug_get(api, path, method="HEAD")[0] == 200
        assert slots.in_flight() == 0 and mw.rule.slots.in_flight() == 0


def test_flask_view_priority_lanes() -> None:
    """A view's priority= lanes: with one of two slots kept for lane 1, a
    second lane-0 request is refused while a lane-1 one is served."""
    from flask import request

    app, limits = flask_app()
    go = threading.Event()
    started: list[str] = []

    @app.route("/work")
    @limits.limit(
        None,
        concurrency=2,
        priorities=2,
        reserve=1,
        priority=lambda r: 1 if r.header("x-plan") == "paid" else 0,
    )
    def work() -> str:
        started.append(request.headers.get("x-plan", "free"))
        assert go.wait(WAIT)
        return "done"

    c = app.test_client()
    out: list[int] = []

    def hit(plan: str | None) -> None:
        headers = {"X-Plan": plan} if plan else {}
        with c.get("/work", headers=headers) as r:
            out.append(r.status_code)

    first = threading.Thread(target=hit, args=(None,))
    first.start()
    wait_until(lambda: started == ["free"], "the first request runs")
    hit(None)  # lane 0 has no slot left: refused at once
    assert out == [503]
    paid = threading.Thread(target=hit, args=("paid",))
    paid.start()
    wait_until(lambda: started == ["free", "paid"], "the paid request runs")
    go.set()
    first.join()
    paid.join()
    assert sorted(out) == [200, 200, 503]


# -- refusals under headers=[] and in dry run (Flask, hug) ------------------------------


def busy_adapter(kind: str, **settings: Any) -> tuple[Any, Any]:
    """``(get(ip) -> (status, headers, body), rule)``: ``kind`` limiting
    "/hello" to 1000/minute with ``settings`` (a concurrency limit)."""
    if kind == "flask":
        app, _ = flask_app(
            STANCHION_DEFAULT_LIMIT="1000/minute",
            **{f"STANCHION_{k.upper()}": v for k, v in settings.items()},
        )
        app.route("/hello")(lambda: "hello")
        return (lambda ip: flask_get(app, "/hello", ip)), app_slots_rule(app)
    if kind == "hug":
        api, mw, _ = hug_api(limit="1000/minute", **settings)
        return (lambda ip: hug_get(api, "/hello", ip)), mw.rule
    import hug

    from stanchion.hug import limit

    api = hug.API(f"stanchion_conc_busy_{next(_busy_apis)}")

    @hug.get("/hello", api=api)
    @limit("1000/minute", **settings)
    def hello():  # type: ignore[no-untyped-def]
        return "hello"

    return (lambda ip: hug_get(api, "/hello", ip)), hello.__stanchion_rule__


def app_slots_rule(app: Flask) -> Any:
    return app.extensions["stanchion"].slots_rule


_busy_apis = itertools.count()
BUSY_KINDS = ["flask", "hug", "hug @limit"]


@pytest.mark.parametrize("per", ["global", "client"])
@pytest.mark.parametrize("kind", BUSY_KINDS)
def test_busy_refusals_carry_retry_after_whatever_headers_says(
    kind: str, per: str
) -> None:
    get, rule = busy_adapter(kind, concurrency=1, concurrency_per=per, headers=[])
    ip = "203.0.113.1"
    hold = rule.slots.try_acquire(None if per == "global" else ip)
    try:
        status, headers, body = get(ip)
    finally:
        hold.release()
    assert status == (503 if per == "global" else 429)
    assert int(headers["retry-after"]) >= 1
    assert json.loads(body)["status"] == status
    assert not any(k.startswith(("ratelimit", "x-ratelimit")) for k in headers)
    assert get(ip)[0] == 200


@pytest.mark.parametrize("per", ["global", "client"])
@pytest.mark.parametrize("kind", BUSY_KINDS)
def test_dry_run_serves_a_request_with_no_slot_and_logs_it(
    kind: str, per: str, caplog: pytest.LogCaptureFixture
) -> None:
    get, rule = busy_adapter(
        kind,
        concurrency=1,
        concurrency_per=per,
        queue=1,
        queue_timeout=0.05,
        dry_run=True,
    )
    ip = "203.0.113.1"
    hold = rule.slots.try_acquire(None if per == "global" else ip)
    try:
        with caplog.at_level(logging.INFO, logger="stanchion"):
            status, headers, body = get(ip)
        assert status == 200 and b"hello" in body
        assert headers["x-ratelimit-limit"] == "1000"
        assert rule.slots.stats()["in_flight"] == 1  # only the one taken above
    finally:
        hold.release()
    assert rule.dry_run_denials == 1
    refusal = 429 if per == "client" else 503
    assert any(
        f"would have answered {refusal}" in r.getMessage() for r in caplog.records
    )
    assert rule.slots.stats()["in_flight"] == 0 and rule.slots.stats()["queued"] == 0
    assert get(ip)[0] == 200 and rule.dry_run_denials == 1
