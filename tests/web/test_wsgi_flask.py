"""WSGI middleware and the Flask extension, in real Flask apps driven
through Flask's test client."""

from __future__ import annotations

import json
import sys
from typing import Any

import pytest
from flask import Blueprint, Flask, g, jsonify
from flask.views import MethodView
from werkzeug.middleware.dispatcher import DispatcherMiddleware
from werkzeug.test import Client, EnvironBuilder

from stanchion import Limiter
from stanchion.flask import Stanchion
from stanchion.http import (
    Plans,
    SettingError,
    api_key,
    authenticated_user,
)
from stanchion.wsgi import RateLimitMiddleware

from ..conftest import FakeClock
from .conftest import problem

RATE_HEADERS = (
    "Retry-After",
    "Cache-Control",
    "RateLimit-Policy",
    "RateLimit",
    "X-RateLimit-Limit",
    "X-RateLimit-Remaining",
    "X-RateLimit-Reset",
)


def rate_headers(r: Any) -> dict[str, str]:
    return {k: ", ".join(r.headers.getlist(k)) for k in RATE_HEADERS if k in r.headers}


def get(c: Any, path: str, ip: str = "203.0.113.1", **kw: Any) -> Any:
    return c.get(path, environ_base={"REMOTE_ADDR": ip}, **kw)


# -- plain WSGI middleware ------------------------------------------------------


def wsgi_hello(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello"]


def test_wsgi_429_headers_exact(limits: dict[str, Any], clock: FakeClock) -> None:
    c = Client(RateLimitMiddleware(wsgi_hello, limit="2/minute", **limits))
    r1 = get(c, "/")
    clock.advance(20)
    r2 = get(c, "/")
    r3 = get(c, "/")
    assert (r1.status_code, r2.status_code, r3.status_code) == (200, 200, 429)
    assert r1.data == b"hello"
    assert rate_headers(r1) == {
        "RateLimit-Policy": '"global";q=2;w=60',
        "RateLimit": '"global";r=1;t=30',
        "X-RateLimit-Limit": "2",
        "X-RateLimit-Remaining": "1",
        "X-RateLimit-Reset": "30",
    }
    assert rate_headers(r3) == {
        "Retry-After": "10",
        "Cache-Control": "no-store",
        "RateLimit-Policy": '"global";q=2;w=60',
        "RateLimit": '"global";r=0;t=10',
        "X-RateLimit-Limit": "2",
        "X-RateLimit-Remaining": "0",
        "X-RateLimit-Reset": "40",
    }
    assert r3.status == "429 Too Many Requests"
    assert r3.headers["Content-Type"] == "application/problem+json"
    assert r3.headers["Content-Length"] == str(len(r3.data))
    assert json.loads(r3.data) == problem(10, 2)


def test_wsgi_exemptions_plans_dry_run_and_spoofing(limits: dict[str, Any]) -> None:
    c = Client(
        RateLimitMiddleware(
            wsgi_hello,
            limit=Plans(
                {"free": "1/minute", "paid": "3/minute"},
                plan=lambda r: r.header("x-plan"),
            ),
            key=api_key(valid={"p", "f"}),
            exempt_paths=["/health"],
            **limits,
        )
    )
    assert [get(c, "/health").status_code for _ in range(3)] == [200] * 3
    assert "RateLimit" not in get(c, "/health").headers
    paid = [
        get(c, "/", headers={"X-Plan": "paid", "X-API-Key": "p"}).status_code
        for _ in range(4)
    ]
    free = [
        get(c, "/", headers={"X-Plan": "free", "X-API-Key": "f"}).status_code
        for _ in range(2)
    ]
    assert paid == [200, 200, 200, 429] and free == [200, 429]

    dry = Client(
        RateLimitMiddleware(wsgi_hello, limit="1/minute", dry_run=True, **limits)
    )
    rs = [get(dry, "/") for _ in range(3)]
    assert [r.status_code for r in rs] == [200, 200, 200]
    assert rs[2].headers["X-RateLimit-Remaining"] == "0"

    plain = Client(RateLimitMiddleware(wsgi_hello, limit="1/minute", **limits))
    spoof = [
        get(
            plain, "/", "198.51.100.3", headers={"X-Forwarded-For": f"1.1.1.{i}"}
        ).status_code
        for i in range(3)
    ]
    assert spoof == [200, 429, 429]
    proxied = Client(
        RateLimitMiddleware(
            wsgi_hello, limit="1/minute", trusted_proxies=["10.0.0.1"], **limits
        )
    )
    behind = [
        get(
            proxied, "/", "10.0.0.1", headers={"X-Forwarded-For": f"1.1.1.{i}"}
        ).status_code
        for i in range(3)
    ]
    assert behind == [200, 200, 200]


def test_wsgi_inner_x_headers_win(limits: dict[str, Any]) -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("X-RateLimit-Limit", "7")])
        return [b""]

    r = get(Client(RateLimitMiddleware(app, limit="5/minute", **limits)), "/")
    assert r.headers.getlist("X-RateLimit-Limit") == ["7"]
    assert r.headers["RateLimit"] == '"global";r=4;t=12'


def error_page(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    """Starts a page, then an error page in its place, naming exc_info as
    PEP 3333's start_response(status, response_headers, exc_info=None)
    allows."""
    start_response("200 OK", [("Content-Type", "text/plain")])
    try:
        raise ValueError("boom")
    except ValueError:
        start_response(
            "500 Internal Server Error", [("X-Error", "1")], exc_info=sys.exc_info()
        )
    return [b"error"]


def call_wsgi(app: Any, path: str) -> tuple[str, dict[str, str]]:
    """The last status and headers ``app`` started (werkzeug's test
    client raises any exc_info at once, as a server may only once the
    headers are sent)."""
    started: list[Any] = []

    def start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
        started.append((status, dict(headers)))
        return lambda data: None

    environ = EnvironBuilder(path, environ_base={"REMOTE_ADDR": "203.0.113.1"})
    b"".join(app(environ.get_environ(), start_response))
    return started[-1]  # type: ignore[no-any-return]


def test_wsgi_app_naming_exc_info(limits: dict[str, Any]) -> None:
    app = RateLimitMiddleware(error_page, limit="5/minute", **limits)
    for remaining in (4, 3):  # the first hit decides in Python, then in C
        status, headers = call_wsgi(app, "/")
        assert (status, headers["X-Error"]) == ("500 Internal Server Error", "1")
        assert headers["X-RateLimit-Remaining"] == str(remaining)


def test_wsgi_bad_settings() -> None:
    with pytest.raises(SettingError, match=r"^limit: "):
        RateLimitMiddleware(wsgi_hello, limit="1 per eon")
    with pytest.raises(SettingError, match=r"^headers: "):
        RateLimitMiddleware(wsgi_hello, limit="1/second", headers=["x-rate"])


def test_wsgi_limiter_object(clock: FakeClock) -> None:
    c = Client(
        RateLimitMiddleware(wsgi_hello, limiter=Limiter("1/minute", clock=clock))
    )
    assert [get(c, "/").status_code for _ in range(2)] == [200, 429]


# -- Flask ------------------------------------------------------------------------


def make_app(ext: Stanchion, clock: FakeClock, **config: Any) -> Flask:
    app = Flask(__name__)
    app.config.update(config)
    bp = Blueprint("admin", __name__, url_prefix="/admin")
    open_bp = Blueprint("open", __name__, url_prefix="/open")

    @app.route("/hello")
    @ext.limit("2/minute")
    def hello() -> Any:
        return jsonify(hello="world")

    @ext.limit("1/minute", headers=["ratelimit"])
    @app.route("/above")
    def above() -> str:
        return "above"

    @app.route("/default")
    def default() -> str:
        return "default"

    @app.route("/health")
    @ext.exempt
    def health() -> str:
        return "ok"

    @app.route("/async")
    @ext.limit("1/minute")
    async def async_view() -> str:
        return "async"

    @app.route("/who")
    @ext.limit("1/minute", key=authenticated_user())
    def who() -> str:
        return "who"

    @app.before_request
    def load_user() -> None:
        from flask import request

        g.user = request.headers.get("X-User")

    @bp.route("/one")
    def one() -> str:
        return "one"

    @bp.route("/two")
    def two() -> str:
        return "two"

    @open_bp.route("/x")
    def open_x() -> str:
        return "x"

    class Things(MethodView):
        decorators = [ext.limit("1/minute", scope="things")]

        def get(self) -> str:
            return "things"

    app.add_url_rule("/things", view_func=Things.as_view("things"))
    ext.limit_blueprint(bp, "3/minute")
    ext.exempt(open_bp)
    app.register_blueprint(bp)
    app.register_blueprint(open_bp)
    app.config.setdefault("STANCHION_DEFAULT_LIMIT", "1/minute")
    ext.init_app(app)
    return app


@pytest.fixture
def ext(limits: dict[str, Any]) -> Stanchion:
    return Stanchion(**limits)


def test_flask_blueprint_limit_declared_by_an_app_factory(ext: Stanchion) -> None:
    """A factory declaring the blueprint limit (as examples/flask_app.py
    does) and called once per app, as tests do: each request still
    counts once, in every app built."""
    bp = Blueprint("api", __name__, url_prefix="/api")

    @bp.route("/items")
    def items() -> Any:
        return "items"

    def create_app() -> Flask:
        app = Flask(__name__)
        ext.limit_blueprint(bp, "5/minute")
        app.register_blueprint(bp)
        ext.init_app(app)
        return app

    for ip in ("203.0.113.1", "203.0.113.2", "203.0.113.3"):
        c = create_app().test_client()
        assert [
            get(c, "/api/items", ip).headers["X-RateLimit-Remaining"] for _ in range(2)
        ] == ["4", "3"]
    # Another limit on the blueprint still adds to it.
    ext.limit_blueprint(bp, "2/minute", scope="burst")
    c = create_app().test_client()
    codes = [get(c, "/api/items", "203.0.113.4").status_code for _ in range(3)]
    assert codes == [200, 200, 429]


def test_flask_extension_keywords_checked() -> None:
    """A typo in Stanchion()'s keywords names the keyword meant, not
    Rule.__init__; an unknown URL or other non-storage as storage= is a
    storage error, not a bad rate '1/second' of STANCHION_DEFAULT_LIMIT;
    a storage URL, as in the settings, is taken."""
    with pytest.raises(
        TypeError, match=r"'default_limt' \(did you mean 'default_limit'"
    ):
        Stanchion(default_limt="1/minute")
    with pytest.raises(TypeError, match=r"'limit' \(did you mean 'default_limit'"):
        Stanchion(limit="1/minute")
    with pytest.raises(SettingError) as info:
        Stanchion(Flask(__name__), storage="ftp://localhost")
    assert "unsupported URL 'ftp://localhost'" in str(info.value)
    assert "bad rate" not in str(info.value)
    with pytest.raises(SettingError, match=r"^storage: unsupported storage"):
        RateLimitMiddleware(wsgi_hello, limit="5/minute", storage=object())
    with pytest.raises(SettingError, match=r"^storage: unsupported URL"):
        RateLimitMiddleware(wsgi_hello, limit="5/minute", storage="redis:/x")
    mw = RateLimitMiddleware(wsgi_hello, limit="5/minute", storage="memory://")
    assert type(mw.rule.limiters.get("5/minute").limiter) is Limiter


def test_flask_config_set_after_the_extension_applies() -> None:
    """The README's order: ``Stanchion(app)`` first, then
    ``app.config["STANCHION_DEFAULT_LIMIT"] = ...``. The limit applies
    (it was silently ignored), and a bad key set so is refused by name
    on the first request."""
    app = Flask(__name__)
    Stanchion(app)
    app.config["STANCHION_DEFAULT_LIMIT"] = "2/minute"

    @app.route("/")
    def index() -> Any:
        return "x"

    c = app.test_client()
    assert [get(c, "/").status_code for _ in range(3)] == [200, 200, 429]

    late = Flask(__name__)
    late.testing = True  # the error propagates instead of a 500
    Stanchion(late)
    late.config["STANCHION_DEFALT_LIMIT"] = "2/minute"
    late.route("/")(index)
    with pytest.raises(SettingError, match="did you mean 'STANCHION_DEFAULT_LIMIT'"):
        get(late.test_client(), "/")


def test_flask_extension_clock_drives_its_limits(clock: FakeClock) -> None:
    """Stanchion(clock=...) is the clock of the app's limiters (as Rule's
    clock= is), not a keyword taken and then ignored."""
    app = Flask(__name__)
    app.config["STANCHION_DEFAULT_LIMIT"] = "2/minute"

    @app.route("/hello")
    def hello() -> str:
        return "hello"

    Stanchion(app, clock=clock)
    c = app.test_client()
    assert [get(c, "/hello").status_code for _ in range(3)] == [200, 200, 429]
    clock.advance(60)
    assert [get(c, "/hello").status_code for _ in range(3)] == [200, 200, 429]


def test_flask_view_limit_exact(ext: Stanchion, clock: FakeClock) -> None:
    c = make_app(ext, clock).test_client()
    r1 = get(c, "/hello")
    clock.advance(30)  # one token back
    r2 = get(c, "/hello")
    r2b = get(c, "/hello")
    r3 = get(c, "/hello")
    assert [r.status_code for r in (r1, r2, r2b, r3)] == [200, 200, 200, 429]
    assert r1.json == {"hello": "world"}
    name = '"tests.web.test_wsgi_flask.make_app.<locals>.hello"'
    assert rate_headers(r1) == {
        "RateLimit-Policy": f"{name};q=2;w=60",
        "RateLimit": f"{name};r=1;t=30",
        "X-RateLimit-Limit": "2",
        "X-RateLimit-Remaining": "1",
        "X-RateLimit-Reset": "30",
    }
    assert rate_headers(r3) == {
        "Retry-After": "30",
        "Cache-Control": "no-store",
        "RateLimit-Policy": f"{name};q=2;w=60",
        "RateLimit": f"{name};r=0;t=30",
        "X-RateLimit-Limit": "2",
        "X-RateLimit-Remaining": "0",
        "X-RateLimit-Reset": "60",
    }
    assert r3.headers["Content-Type"] == "application/problem+json"
    assert r3.json == problem(30, 2)


def test_flask_which_limits_apply(ext: Stanchion, clock: FakeClock) -> None:
    c = make_app(ext, clock).test_client()
    # decorator above @app.route works too, with its own header families
    r = get(c, "/above")
    assert (
        r.headers["RateLimit"].endswith(";r=0;t=60")
        and "X-RateLimit-Limit" not in r.headers
    )
    assert get(c, "/above").status_code == 429
    # the default limit covers undecorated views
    assert [get(c, "/default").status_code for _ in range(2)] == [200, 429]
    # exempt view and exempt blueprint
    assert [get(c, "/health").status_code for _ in range(3)] == [200] * 3
    assert [get(c, "/open/x").status_code for _ in range(3)] == [200] * 3
    # blueprint limit shared by its routes (and no default on top)
    codes = [
        get(c, p).status_code
        for p in ("/admin/one", "/admin/two", "/admin/one", "/admin/two")
    ]
    assert codes == [200, 200, 200, 429]
    # class-based view through MethodView.decorators
    assert [get(c, "/things").status_code for _ in range(2)] == [200, 429]
    # async view
    assert [get(c, "/async").status_code for _ in range(2)] == [200, 429]
    assert get(c, "/async", "203.0.113.2").data == b"async"
    # per-user key: same user from two addresses shares, others do not
    assert get(c, "/who", "1.1.1.1", headers={"X-User": "ann"}).status_code == 200
    assert get(c, "/who", "2.2.2.2", headers={"X-User": "ann"}).status_code == 429
    assert get(c, "/who", "2.2.2.2", headers={"X-User": "bob"}).status_code == 200


def test_flask_several_apps_keep_their_own_state(
    ext: Stanchion, clock: FakeClock
) -> None:
    one = make_app(ext, clock).test_client()
    two = make_app(ext, clock, STANCHION_DEFAULT_LIMIT="3/minute").test_client()
    assert [get(one, "/hello").status_code for _ in range(3)] == [200, 200, 429]
    assert [get(two, "/hello").status_code for _ in range(3)] == [200, 200, 429]
    assert [get(one, "/default").status_code for _ in range(2)] == [200, 429]
    assert [get(two, "/default").status_code for _ in range(4)] == [200, 200, 200, 429]


def test_flask_wrapper_passes_exc_info_by_keyword(ext: Stanchion) -> None:
    """A WSGI app mounted in a Flask app (wrapped by init_app after it was
    mounted) may name exc_info when it calls start_response."""
    app = Flask(__name__)
    app.config["STANCHION_DEFAULT_LIMIT"] = "5/minute"

    @app.route("/hello")
    def hello() -> str:
        return "hello"

    app.wsgi_app = DispatcherMiddleware(  # type: ignore[method-assign]
        app.wsgi_app, {"/raw": error_page}
    )
    ext.init_app(app)
    status, headers = call_wsgi(app, "/raw/x")
    assert (status, headers["X-Error"]) == ("500 Internal Server Error", "1")
    c = app.test_client()
    assert [get(c, "/hello").headers["X-RateLimit-Remaining"] for _ in "ab"] == [
        "4",
        "3",
    ]


def test_flask_config(ext: Stanchion, clock: FakeClock) -> None:
    app = make_app(
        ext,
        clock,
        STANCHION_HEADERS_ON_ALLOWED=False,
        STANCHION_TRUSTED_PROXIES=["10.0.0.0/8"],
        STANCHION_EXEMPT_PATHS=["/default"],
    )
    c = app.test_client()
    r = get(c, "/hello", "10.1.1.1", headers={"X-Forwarded-For": "198.51.100.1"})
    assert "RateLimit" not in r.headers
    assert (
        get(
            c, "/hello", "10.1.1.2", headers={"X-Forwarded-For": "198.51.100.1"}
        ).status_code
        == 200
    )
    assert (
        get(
            c, "/hello", "10.1.1.3", headers={"X-Forwarded-For": "198.51.100.1"}
        ).status_code
        == 429
    )
    assert (
        get(
            c, "/hello", "10.1.1.3", headers={"X-Forwarded-For": "198.51.100.2"}
        ).status_code
        == 200
    )
    assert [get(c, "/default").status_code for _ in range(3)] == [200] * 3
    assert "stanchion" in app.extensions

    off = make_app(ext, clock, STANCHION_ENABLED=False).test_client()
    assert [get(off, "/hello").status_code for _ in range(4)] == [200] * 4

    dry = make_app(ext, clock, STANCHION_DRY_RUN=True).test_client()
    rs = [get(dry, "/hello") for _ in range(3)]
    assert [r.status_code for r in rs] == [200] * 3
    assert rs[2].headers["X-RateLimit-Remaining"] == "0"


def test_flask_spoofing_without_proxies(ext: Stanchion, clock: FakeClock) -> None:
    c = make_app(ext, clock).test_client()
    codes = [
        get(
            c, "/hello", "198.51.100.4", headers={"X-Forwarded-For": f"1.1.1.{i}"}
        ).status_code
        for i in range(3)
    ]
    assert codes == [200, 200, 429]


def test_flask_plans(limits: dict[str, Any]) -> None:
    ext = Stanchion(**limits)
    app = Flask(__name__)

    @app.route("/p")
    @ext.limit(
        Plans(
            {"free": "1/minute", "paid": "3/minute"}, plan=lambda r: r.header("x-plan")
        ),
        key=api_key(valid={"a", "b"}),
    )
    def p() -> str:
        return "p"

    ext.init_app(app)
    c = app.test_client()
    paid = [
        get(c, "/p", headers={"X-Plan": "paid", "X-API-Key": "a"}).status_code
        for _ in range(4)
    ]
    free = [
        get(c, "/p", headers={"X-Plan": "free", "X-API-Key": "b"}).status_code
        for _ in range(2)
    ]
    assert paid == [200, 200, 200, 429] and free == [200, 429]


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (
            {"STANCHION_DEFAULT_LIMIT": "lots"},
            r"^STANCHION_DEFAULT_LIMIT: bad rate 'lots'",
        ),
        ({"STANCHION_TRUSTED_PROXIES": ["nginx"]}, r"^STANCHION_TRUSTED_PROXIES: "),
        ({"STANCHION_HEADERS": ["nope"]}, r"^STANCHION_HEADERS: "),
        ({"STANCHION_DRY_RUN": "yes"}, r"^STANCHION_DRY_RUN: "),
        (
            {"STANCHION_ALGORITHM": "leaky"},
            r"^STANCHION_ALGORITHM / STANCHION_MAX_KEYS: ",
        ),
        ({"STANCHION_STORAGE_URL": "mongodb://x"}, r"^STANCHION_STORAGE_URL: "),
        ({"STANCHION_EXEMPT_METHODS": ["G3T"]}, r"^STANCHION_EXEMPT_METHODS: "),
    ],
)
def test_flask_bad_config_fails_in_init_app(
    config: dict[str, Any], message: str
) -> None:
    app = Flask(__name__)
    app.config.update(config)
    with pytest.raises(SettingError, match=message):
        Stanchion(app)


def test_flask_bad_view_limit_fails_at_decoration() -> None:
    ext = Stanchion()
    with pytest.raises(SettingError, match=r"^limit: "):

        @ext.limit("1/eon")
        def v() -> str:
            return ""


def test_flask_default_limit_in_the_global_scope(
    ext: Stanchion, clock: FakeClock
) -> None:
    """The app-wide default limit is named like every framework's
    middleware limit."""
    r = get(make_app(ext, clock).test_client(), "/default")
    assert r.headers["RateLimit"] == '"global";r=0;t=60'


def test_flask_view_own_x_headers_win(ext: Stanchion, clock: FakeClock) -> None:
    """A view that sets X-RateLimit-* itself keeps them; the limit's
    RateLimit fields are added."""
    app = Flask(__name__)

    @app.route("/own")
    @ext.limit("2/minute", scope="own")
    def own() -> Any:
        return "own", 200, {"X-RateLimit-Limit": "7"}

    ext.init_app(app)
    r = get(app.test_client(), "/own")
    assert r.headers.getlist("X-RateLimit-Limit") == ["7"]
    assert "X-RateLimit-Remaining" not in r.headers
    assert r.headers["RateLimit"] == '"own";r=1;t=30'


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (
            {"STANCHION_DEFALT_LIMIT": "1/minute"},
            r"^STANCHION_\*: unknown keys \['STANCHION_DEFALT_LIMIT'\] "
            r"\('STANCHION_DEFALT_LIMIT': did you mean 'STANCHION_DEFAULT_LIMIT'\?\)",
        ),
        # Django's name is not Flask's.
        ({"STANCHION_LIMIT": "1/minute"}, r"did you mean 'STANCHION_DEFAULT_LIMIT'"),
        # The Redis storage takes no valkey:// URL: refused here, by name.
        (
            {"STANCHION_STORAGE_URL": "valkey://localhost"},
            r"^STANCHION_STORAGE_URL: unsupported URL 'valkey://localhost'",
        ),
        ({"STANCHION_HEADERS": False}, r"^STANCHION_HEADERS: expected a header"),
        ({"STANCHION_TRUSTED_PROXIES": None}, r"^STANCHION_TRUSTED_PROXIES: "),
        ({"STANCHION_EXEMPT_PATHS": 5}, r"^STANCHION_EXEMPT_PATHS: expected a list"),
        # bool("false") is True: refused, not read as "enabled".
        (
            {"STANCHION_ENABLED": "false"},
            r"^STANCHION_ENABLED: must be True or False, got 'false'",
        ),
    ],
)
def test_flask_unknown_config_keys_are_refused(
    config: dict[str, Any], message: str
) -> None:
    app = Flask(__name__)
    app.config.update(config)
    with pytest.raises(SettingError, match=message):
        Stanchion(app)


def test_flask_headers_join_the_wsgi_response_once(
    ext: Stanchion, clock: FakeClock
) -> None:
    """The headers of allowed requests are added to the WSGI response as
    it starts: present on plain, streamed and error responses, once even
    when init_app runs twice or a WSGI middleware (ProxyFix) wraps the
    app afterwards, and never seen (or stored) by after_request hooks."""
    from flask import Response, stream_with_context
    from werkzeug.middleware.proxy_fix import ProxyFix

    app = Flask(__name__)
    app.config["STANCHION_DEFAULT_LIMIT"] = "5/minute"
    ext.init_app(app)
    ext.init_app(app)
    app.wsgi_app = ProxyFix(app.wsgi_app)  # type: ignore[method-assign]
    seen: list[bool] = []

    @app.after_request
    def look(response: Response) -> Response:
        seen.append("RateLimit" in response.headers)
        return response

    @app.route("/plain")
    def plain() -> str:
        return "ok"

    @app.route("/stream")
    def stream() -> Response:
        return Response(stream_with_context(iter(["a", "b"])))

    @app.route("/boom")
    def boom() -> str:
        raise RuntimeError("boom")

    c = app.test_client()
    expected = {
        "RateLimit": '"global";r=4;t=12',
        "RateLimit-Policy": '"global";q=5;w=60',
        "X-RateLimit-Limit": "5",
        "X-RateLimit-Remaining": "4",
        "X-RateLimit-Reset": "12",
    }
    r = get(c, "/plain")
    assert r.status_code == 200 and rate_headers(r) == expected
    r = get(c, "/stream")
    assert r.get_data() == b"ab"
    assert rate_headers(r)["X-RateLimit-Remaining"] == "3"
    r = get(c, "/boom")
    assert r.status_code == 500
    assert rate_headers(r)["X-RateLimit-Remaining"] == "2"
    assert seen == [False, False, False]


def test_flask_request_context_variable_is_the_one_flask_uses() -> None:
    """_before_request reads the app and request from Flask's request
    context variable instead of the proxies: on the Flask installed, it
    holds the same objects the proxies give."""
    import flask
    from flask.globals import _cv_request

    app = Flask(__name__)
    with app.test_request_context("/x"):
        ctx = _cv_request.get()
        assert ctx.app is flask.current_app._get_current_object()  # type: ignore[attr-defined]
        assert ctx.request is flask.request._get_current_object()  # type: ignore[attr-defined]


def test_flask_app_mounted_in_a_limited_app_sends_its_headers_once(
    clock: FakeClock,
) -> None:
    """A limited Flask app mounted in another limited one (werkzeug's
    DispatcherMiddleware under the outer app's extension): the inner
    app's request is limited and its headers sent by the inner app alone,
    not added once more by the outer app's WSGI layer, which did not
    limit it."""
    from werkzeug.middleware.dispatcher import DispatcherMiddleware

    inner = Flask("inner")
    Stanchion(inner, default_limit="5/minute")

    @inner.route("/x")
    def x() -> str:
        return "x"

    outer = Flask("outer")
    outer.wsgi_app = DispatcherMiddleware(outer.wsgi_app, {"/api": inner})  # type: ignore[method-assign]
    Stanchion(outer, default_limit="7/minute")

    r = get(outer.test_client(), "/api/x")
    assert r.status_code == 200
    assert {k: r.headers.getlist(k) for k in ("RateLimit", "RateLimit-Policy")} == {
        "RateLimit": ['"global";r=4;t=12'],
        "RateLimit-Policy": ['"global";q=5;w=60'],
    }


def test_flask_second_extension_object_on_an_app_is_refused(
    ext: Stanchion,
) -> None:
    """The app's hooks and state belong to its first extension object: a
    second one's limits would silently never apply, so init_app with it
    fails and the first keeps limiting."""
    app = Flask(__name__)
    ext.init_app(app)
    other = Stanchion()

    @app.route("/x")
    @other.limit("1/minute")
    def x() -> str:
        return "x"

    with pytest.raises(ValueError, match="already has a Stanchion"):
        other.init_app(app)
    with pytest.raises(ValueError, match="already has a Stanchion"):
        Stanchion(app)
    assert app.extensions["stanchion"].ext is ext
    ext.init_app(app)  # the same object again is fine
