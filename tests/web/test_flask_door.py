"""The Flask extension deciding a request as it enters the app (the
default limit alone, keyed by the socket peer), with the before_request
hook off the app's list: the same answers as the hook gives."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from flask import Flask, abort, g, request, request_started
from werkzeug.middleware.proxy_fix import ProxyFix

from stanchion.flask import Stanchion

from ..conftest import FakeClock


def get(c: Any, path: str = "/hello", ip: str = "203.0.113.1", **kw: Any) -> Any:
    return c.get(path, environ_base={"REMOTE_ADDR": ip}, **kw)


def limited_app(limit: str, *views: str) -> Flask:
    """An app whose only limit is ``STANCHION_DEFAULT_LIMIT = limit``,
    with a route ``/name`` answering ``name`` for each of ``views``
    (``hello`` when none)."""
    app = Flask(__name__)
    app.config["STANCHION_DEFAULT_LIMIT"] = limit
    for name in views or ("hello",):
        app.add_url_rule(f"/{name}", name, lambda name=name: name)
    return app


def make_app(clock: FakeClock, limit: str = "3/minute") -> tuple[Flask, Stanchion]:
    app = limited_app(limit, "hello", "other")
    calls: list[str] = []
    app.config["calls"] = calls
    ext = Stanchion(app, clock=clock)

    # A hook registered after the extension's (one before it keeps the
    # hook deciding: it may answer a request the hook never counts), and
    # after_request and teardown functions reading what it set: a
    # refusal must go through them as it does when the hook decides.
    @app.before_request
    def started() -> None:
        g.started = True
        calls.append("before")

    @app.after_request
    def stamp(response: Any) -> Any:
        response.headers["X-Started"] = str(g.get("started"))
        calls.append(f"after {response.status_code}")
        return response

    @app.teardown_request
    def done(exc: BaseException | None) -> None:
        calls.append("teardown")

    return app, ext


def hooks(app: Flask) -> list[str]:
    return [f.__name__ for f in app.before_request_funcs.get(None, [])]


def test_the_default_limit_alone_is_decided_at_the_door(clock: FakeClock) -> None:
    app, _ = make_app(clock)
    c = app.test_client()
    answers = [get(c) for _ in range(5)]
    # Exact counts, each request counted once (the door and the hook
    # never both hit), the headers of the allowed and refused alike.
    assert [r.status_code for r in answers] == [200, 200, 200, 429, 429]
    assert [r.headers["X-RateLimit-Remaining"] for r in answers] == [
        "2",
        "1",
        "0",
        "0",
        "0",
    ]
    assert answers[3].headers["Retry-After"] == "20"
    assert answers[3].headers["RateLimit-Policy"] == '"global";q=3;w=60'
    # The refusal went through the app's after_request and teardown
    # functions, in order, as the hook's refusal does (which answers
    # before the hooks registered after it).
    assert answers[2].headers["X-Started"] == "True"
    assert answers[3].headers["X-Started"] == "None"
    assert app.config["calls"][-3:] == ["teardown", "after 429", "teardown"]
    # Once the first request said so, the hook is off the app's list and
    # back on it only while a refusal runs.
    assert hooks(app) == ["started"]
    # Another client, its own budget; other routes share the default's.
    assert get(c, ip="203.0.113.2").headers["X-RateLimit-Remaining"] == "2"
    assert get(c, "/other", ip="203.0.113.2").headers["X-RateLimit-Remaining"] == "1"
    clock.advance(20)
    assert get(c).status_code == 200


def test_a_limit_declared_after_the_first_request_puts_the_hook_back(
    clock: FakeClock,
) -> None:
    app, ext = make_app(clock)
    c = app.test_client()
    assert get(c).status_code == 200
    assert hooks(app) == ["started"]
    # An exemption declared later (the app factory of a test, say): from
    # the next request on, the hook decides again, and honours it.
    ext.exempt(app.view_functions["other"])
    assert [get(c, "/other").status_code for _ in range(5)] == [200] * 5
    assert "_before_request" in hooks(app)
    assert [get(c).status_code for _ in range(3)] == [200, 200, 429]


def test_a_middleware_inside_the_extension_keeps_the_hook(clock: FakeClock) -> None:
    # ProxyFix applied before init_app rewrites REMOTE_ADDR inside the
    # extension's wrapper: the hook, which reads the rewritten address,
    # keeps deciding; clients behind the proxy keep their own budgets.
    app = Flask(__name__)
    app.config["STANCHION_DEFAULT_LIMIT"] = "2/minute"

    @app.route("/hello")
    def hello() -> str:
        return request.remote_addr or ""

    app.wsgi_app = ProxyFix(app.wsgi_app, x_for=1)  # type: ignore[method-assign]
    Stanchion(app, clock=clock)
    c = app.test_client()
    proxy = "10.0.0.1"
    for client in ("198.51.100.1", "198.51.100.2"):
        headers = {"X-Forwarded-For": client}
        statuses = [get(c, ip=proxy, headers=headers).status_code for _ in range(3)]
        assert statuses == [200, 200, 429], client
    assert "_before_request" in hooks(app)


def test_refusals_in_threads_leave_the_hook_off_and_refuse_each(
    clock: FakeClock,
) -> None:
    app, _ = make_app(clock, limit="1/minute")
    c = app.test_client()
    assert get(c).status_code == 200
    threads, each = 8, 25
    gate = threading.Barrier(threads)
    statuses: list[int] = []
    lock = threading.Lock()

    def worker(i: int) -> None:
        client = app.test_client()
        gate.wait()
        got = []
        for n in range(each):
            # The refused client, and now and then a new client's first
            # (allowed) request racing with the refusals.
            ip = f"198.51.{i}.{n}" if n % 5 == 0 else "203.0.113.1"
            got.append((ip, get(client, ip=ip).status_code))
        with lock:
            statuses.extend(s for ip, s in got if ip == "203.0.113.1")
            assert all(s == 200 for ip, s in got if ip != "203.0.113.1")

    workers = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert statuses == [429] * (threads * each * 4 // 5)
    assert hooks(app) == ["started"]


def test_a_disabled_app_or_a_concurrency_limit_keeps_the_hook(
    clock: FakeClock,
) -> None:
    for config in (
        {"STANCHION_ENABLED": False},
        {"STANCHION_CONCURRENCY": 2},
    ):
        app = limited_app("2/minute")
        app.config.update(config)

        Stanchion(app, clock=clock)
        c = app.test_client()
        statuses = [get(c).status_code for _ in range(3)]
        enabled = config.get("STANCHION_ENABLED", True)
        assert statuses == ([200, 200, 429] if enabled else [200, 200, 200])
        assert "_before_request" in hooks(app)


@pytest.mark.parametrize("change", ["exempt", "init_app"])
def test_a_refusal_ending_after_the_hook_came_back_leaves_it_on(
    clock: FakeClock, change: str
) -> None:
    # A refusal in flight while the hook comes back for good (a limit
    # declared, or init_app again): when it ends, the hook must stay on
    # the app's list, or no request of the app would be limited again.
    app = limited_app("1/minute", "hello", "other")
    ext = Stanchion(app, clock=clock)
    inside, go = threading.Event(), threading.Event()

    @app.after_request
    def hold(response: Any) -> Any:
        if response.status_code == 429 and not go.is_set():
            inside.set()
            go.wait(10)
        return response

    c = app.test_client()
    assert get(c).status_code == 200
    assert hooks(app) == []  # the door decides
    got: list[int] = []
    refused = threading.Thread(target=lambda: got.append(get(c).status_code))
    refused.start()
    assert inside.wait(10)
    if change == "exempt":
        ext.exempt(app.view_functions["other"])
        assert get(app.test_client(), "/other").status_code == 200
    else:
        ext.init_app(app)
    go.set()
    refused.join()
    assert got == [429]
    assert hooks(app) == ["_before_request"]
    fresh = [get(c, ip="198.51.100.7").status_code for _ in range(2)]
    assert fresh == [200, 429]


@pytest.mark.parametrize("force_hook", [False, True])
def test_what_runs_before_the_hook_answers_uncounted(
    clock: FakeClock, force_hook: bool
) -> None:
    # A before_request function registered ahead of the extension's
    # answers some requests itself (401), a URL value preprocessor
    # aborts others (404): the hook never sees them, so they spend no
    # budget. Deciding them at the door would count them, and lock the
    # client out once it sends its credentials. Same answers whether the
    # door could be used or not (an exemption elsewhere forces the hook).
    app = limited_app("2/minute", "hello", "unrelated")

    @app.before_request
    def auth() -> Any:
        if request.headers.get("Authorization") != "ok":
            return "who are you?", 401
        return None

    ext = Stanchion(app, clock=clock)
    if force_hook:
        ext.exempt(app.view_functions["unrelated"])
    c = app.test_client()
    ok = {"Authorization": "ok"}
    statuses = [get(c, ip="192.0.2.1", headers=ok).status_code]
    statuses += [get(c).status_code for _ in range(3)]
    statuses += [get(c, headers=ok).status_code for _ in range(3)]
    assert statuses == [200, 401, 401, 401, 200, 200, 429]
    assert "_before_request" in hooks(app)


def test_a_url_value_preprocessor_keeps_the_hook(clock: FakeClock) -> None:
    app = limited_app("2/minute")

    @app.url_value_preprocessor
    def lang(endpoint: str | None, values: dict[str, Any] | None) -> None:
        if request.args.get("lang") == "xx":
            abort(404)

    Stanchion(app, clock=clock)
    c = app.test_client()
    statuses = [get(c, ip="192.0.2.1").status_code]
    statuses += [get(c, query_string={"lang": "xx"}).status_code for _ in range(3)]
    statuses += [get(c).status_code for _ in range(3)]
    assert statuses == [200, 404, 404, 404, 200, 200, 429]
    assert "_before_request" in hooks(app)


def test_a_request_in_before_the_door_was_chosen_is_decided(
    clock: FakeClock,
) -> None:
    # A request that entered the app before the first request's hook
    # chose the door reaches the app's hooks after the hook went off:
    # it must still be decided (here: the client's second request in a
    # minute, refused), once.
    app = limited_app("1/minute")
    Stanchion(app, clock=clock)
    inside, go = threading.Event(), threading.Event()

    def started(sender: Any, **kw: Any) -> None:
        if request.args.get("late"):
            inside.set()
            go.wait(10)

    request_started.connect(started, app)
    got: list[int] = []
    late = threading.Thread(
        target=lambda: got.append(get(app.test_client(), "/hello?late=1").status_code)
    )
    late.start()
    assert inside.wait(10)
    got.append(get(app.test_client()).status_code)
    go.set()
    late.join()
    assert sorted(got) == [200, 429]
    assert hooks(app) == []  # the door decides from now on
    assert get(app.test_client()).status_code == 429
    assert get(app.test_client(), ip="198.51.100.3").status_code == 200
