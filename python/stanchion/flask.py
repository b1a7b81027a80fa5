"""Rate limiting for Flask.

::

    from stanchion.flask import Stanchion

    limits = Stanchion()            # or Stanchion(app)

    def create_app():
        app = Flask(__name__)
        app.config["STANCHION_DEFAULT_LIMIT"] = "100/minute"
        limits.init_app(app)
        return app

    @bp.route("/search")
    @limits.limit("5/second")
    def search(): ...

    @app.route("/health")
    @limits.exempt
    def health(): ...

    limits.limit_blueprint(admin_bp, "30/minute")

One extension object serves any number of apps; each app keeps its own
settings and buckets in ``app.extensions["stanchion"]``. Limits are
checked in a ``before_request`` hook (so they also cover async views,
which need no wrapping); the headers of allowed requests are added to
the WSGI response as it starts (``app.wsgi_app`` is wrapped), so
``after_request`` hooks do not see them. When ``STANCHION_DEFAULT_LIMIT``
is the app's only limit (no view or blueprint limit, no exemption, no
concurrency limit, clients keyed by address, the extension's hook the
app's first ``before_request`` function and no URL value preprocessor),
a request is decided as it enters the app, and the hook runs only to
answer a refusal (through the app's hooks, as above). Code that runs the
hooks by hand (``app.test_request_context()`` then
``app.preprocess_request()``) bypasses ``wsgi_app`` and so, then, the
limit; servers and Flask's test client do not.

Which limits apply to a request:

- the view's own ``@limits.limit(...)`` (one or several);
- its blueprint's ``limit_blueprint`` limits (shared by the blueprint's
  routes), unless the view is ``@limits.exempt``;
- ``STANCHION_DEFAULT_LIMIT`` (shared by every such view, in the scope
  ``"global"`` like every framework's middleware limit) only when
  neither of the above applies and the view is not exempt.

Config keys (each overrides the keyword of the same name given to
``Stanchion(...)``; a bad value fails in ``init_app`` naming the key, and
so does an unknown ``STANCHION_*`` key, with the closest valid one; the
table is :mod:`stanchion._settings`, shared with Django):

==================================  =========================================
``STANCHION_ENABLED``               ``False`` turns every limit off
``STANCHION_DEFAULT_LIMIT``         rate string for views without limits
``STANCHION_STORAGE_URL``           ``"memory://"``, ``"shm://name"`` or a Redis URL
``STANCHION_ALGORITHM``             ``"token_bucket"`` (default), ...
``STANCHION_MAX_KEYS``              bound on tracked clients per rate
``STANCHION_KEY``                   function of the request -> identity
``STANCHION_TRUSTED_PROXIES``       addresses / CIDRs of your proxies
``STANCHION_FORWARDED_HEADER``      ``"X-Forwarded-For"`` or ``"Forwarded"``
``STANCHION_HEADERS``               header families to send
``STANCHION_HEADERS_ON_ALLOWED``    headers on allowed responses too
``STANCHION_DRY_RUN``               compute and report, never block
``STANCHION_EXEMPT_PATHS``          paths (``"/static/*"``) never limited
``STANCHION_EXEMPT_METHODS``        methods never limited (``["OPTIONS"]``)
``STANCHION_UNIDENTIFIED``          ``"deny"``, ``"allow"`` or ``"share"``
``STANCHION_CONCURRENCY``           requests of the app in flight at most
``STANCHION_QUEUE``                 requests waiting for a slot, in order
``STANCHION_QUEUE_TIMEOUT``         seconds a request waits (default 30)
``STANCHION_CONCURRENCY_PER``       ``"global"`` (default) or ``"client"``
==================================  =========================================

The concurrency limit (``STANCHION_CONCURRENCY``) covers every request
of the app but those of exempt views and blueprints and the exempt paths
and methods: at most that many in flight (each client that many with
``STANCHION_CONCURRENCY_PER = "client"``), the next ``STANCHION_QUEUE``
waiting in arrival order; one that gets no slot in time is answered 503
(429 per client) with ``Retry-After``. A view's or blueprint's own takes
the same keywords: ``@limits.limit("5/second", concurrency=2)``, or
``@limits.limit(None, concurrency=2, queue=10)`` for no rate at all. A
slot is taken after the rate limits let the request through and held
until the response is sent (a streamed one too: until the server closes
it).

``shm://name[?max_keys=N]`` shares the limits between the worker
processes of one host (:class:`stanchion.SharedMemoryStorage`); Redis URLs
are ``redis://``, ``rediss://`` and ``unix://`` (what
:class:`stanchion.redis.RedisStorage` accepts), shared between hosts.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, TypeVar

from flask import (
    Blueprint,
    Flask,
    Response,
    copy_current_request_context,
    current_app,
    g,
    request,
)
from flask.globals import _cv_request
from werkzeug.datastructures import Headers

from ._adapt import MIDDLEWARE_SCOPE, outer_headers, route_scope
from ._adapt_slots import Holds, lane_of, needs_slot
from ._core import Decision, HeaderStart
from ._settings import (
    concurrency_settings,
    flask_name,
    named_errors,
    read,
    split,
    storage_from_url,
)
from .http import LimiterCache, Request, Rule, Verdict

__all__ = ["FlaskRequest", "Stanchion"]

F = TypeVar("F", bound=Callable[..., Any])


class FlaskRequest(Request):
    """The rules' view of the current Flask request."""

    __slots__ = ()

    def _header(self, name: str) -> str | None:
        return self.native.headers.get(name)  # type: ignore[no-any-return]


class _LimitSpec:
    """A limit declared with ``@ext.limit`` or ``ext.limit_blueprint``,
    turned into one Rule per app on first use."""

    __slots__ = ("limit", "scope", "settings")

    def __init__(self, limit: Any, scope: str, settings: dict[str, Any]) -> None:
        self.limit = limit
        self.scope = scope
        self.settings = settings
        # Fail at decoration time on a bad rate or setting.
        Rule(limit, scope=scope, **settings)


class _AppState:
    """One app's settings, limiters and rules."""

    def __init__(self, ext: Stanchion, app: Flask) -> None:
        self.ext = ext
        self.config = _config(app)
        #: False until the first request has checked that ``STANCHION_*``
        #: config did not change after ``init_app`` (``Stanchion(app)``
        #: and then ``app.config[...] = ...``).
        self.checked = False
        values = read(self.config, where="STANCHION_*", key=flask_name)
        self.enabled = bool(values.get("enabled", True))
        base = dict(ext._defaults)
        rule_kw, config_cache_kw = split(values)
        base.update(rule_kw)
        cache_kw: dict[str, Any] = {
            k: base.pop(k)
            for k in ("algorithm", "max_keys", "penalty", "clock")
            if k in base
        }
        cache_kw.update(config_cache_kw)
        storage = base.pop("storage", None)
        if "storage" in values:
            storage = storage_from_url(values["storage"], flask_name)
        self.user = base.pop("user", None)
        default_limit = base.pop("default_limit", None)
        default_limit = values.get("limit", default_limit)
        # The app-wide concurrency limit: Stanchion(concurrency=...) and
        # STANCHION_CONCURRENCY (...), kept off the other rules.
        given = {k: base.pop(k) for k in _CONCURRENCY if k in base}
        with _config_errors():
            conc = concurrency_settings(
                {**given, **{k: v for k, v in values.items() if k in _CONCURRENCY}},
                flask_name,
            )
            self.limiters = LimiterCache(storage=storage, **cache_kw)
            # Path and method exemptions apply to every limit of the app.
            self.settings = {**base, "limiters": self.limiters}
            # Built even without a default limit, so every setting is
            # checked here and not on the first request.
            probe = Rule(
                default_limit if default_limit is not None else "1/second",
                scope=MIDDLEWARE_SCOPE,
                **self.settings,
            )
            self.default_rule = probe if default_limit is not None else None
            #: The app-wide concurrency limit (None: none).
            self.slots_rule = (
                None
                if conc is None
                else Rule(None, scope=MIDDLEWARE_SCOPE, **self.settings, **conc)
            )
        self.rules: dict[int, Rule] = {}
        self.by_endpoint: dict[str | None, list[Rule]] = {}
        self.version = ext._version
        #: The rule every request of the app gets, decided as the request
        #: enters the app (see _RateHeaders), or None: decided in the hook.
        self.front: Rule | None = None

    def rule(self, spec: _LimitSpec) -> Rule:
        rule = self.rules.get(id(spec))
        if rule is None:
            settings = {**self.settings, **spec.settings}
            rule = self.rules[id(spec)] = Rule(spec.limit, scope=spec.scope, **settings)
        return rule


#: The keywords of Stanchion(): Rule's settings (a limit's own aside),
#: the default limit and the current-user function.
_DEFAULTS = frozenset(inspect.signature(Rule).parameters) - {
    "limit",
    "scope",
    "limiters",
} | {"default_limit", "user"}
_CONCURRENCY = ("concurrency", "queue", "queue_timeout", "concurrency_per")


def _config(app: Flask) -> dict[str, Any]:
    return {k: v for k, v in app.config.items() if str(k).startswith("STANCHION_")}


def _config_errors() -> AbstractContextManager[None]:
    """SettingErrors renamed to the Flask config key."""
    return named_errors(flask_name, ("STANCHION",))


class Stanchion:
    """The Flask extension. ``Stanchion(app)`` or ``Stanchion()`` +
    ``init_app(app)`` (any number of apps).

    Keywords are app-wide defaults, overridden by ``STANCHION_*`` config:
    ``default_limit``, ``key``, ``trusted_proxies``, ``forwarded_header``,
    ``headers``, ``headers_on_allowed``, ``dry_run``, ``exempt_paths``,
    ``exempt_methods``, ``unidentified``, ``algorithm``, ``max_keys``,
    ``storage`` (a storage object), ``clock`` (the in-process limiters'
    clock, for tests), ``response``, ``concurrency``, ``queue``,
    ``queue_timeout``, ``concurrency_per`` (the app-wide concurrency
    limit), and ``user`` (a function
    returning the current user, for :func:`stanchion.http.authenticated_user`;
    default ``g.user`` if set).
    """

    def __init__(self, app: Flask | None = None, **defaults: Any) -> None:
        unknown = sorted(set(defaults) - _DEFAULTS)
        if unknown:
            hints = [
                f" (did you mean {close[0]!r}?)"
                if (
                    close := difflib.get_close_matches(k, _DEFAULTS, n=1)
                    or [d for d in sorted(_DEFAULTS) if d.endswith("_" + k)]
                )
                else ""
                for k in unknown
            ]
            raise TypeError(
                "Stanchion() got unexpected keywords: "
                + ", ".join(f"{k!r}{h}" for k, h in zip(unknown, hints, strict=True))
            )
        self._defaults = defaults
        self._view_limits: dict[Any, list[_LimitSpec]] = {}
        self._blueprint_limits: dict[str, list[_LimitSpec]] = {}
        self._exempt_views: set[Any] = set()
        self._exempt_blueprints: set[str] = set()
        self._version = 0  # bumped by every declaration; apps recompute
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Limit ``app``'s requests. Again on the same app, its settings
        are read anew; its requests still count once. An app has one
        extension object: another's limits would never apply."""
        state = app.extensions.get("stanchion")
        if state is not None and state.ext is not self:
            raise ValueError(
                "this app already has a Stanchion extension object; declare "
                "all its limits on that one"
            )
        first = state is None
        app.extensions["stanchion"] = _AppState(self, app)
        if first:
            app.before_request(self._before_request)
            app.wsgi_app = _RateHeaders(app.wsgi_app, app, self)  # type: ignore[method-assign]
        else:
            _hook_needed(app, self)

    # -- declaring limits ------------------------------------------------------

    def limit(
        self, limit: Any, *, scope: str | None = None, **settings: Any
    ) -> Callable[[F], F]:
        """View decorator (either side of ``@app.route``). ``scope``
        defaults to the view's module and qualified name; other keywords
        are :class:`stanchion.http.Rule` settings for this limit."""

        def decorate(view: F) -> F:
            name = scope or route_scope(view)
            self._view_limits.setdefault(view, []).append(
                _LimitSpec(limit, name, settings)
            )
            self._version += 1
            return view

        return decorate

    def limit_blueprint(
        self,
        blueprint: Blueprint,
        limit: Any,
        *,
        scope: str | None = None,
        **settings: Any,
    ) -> None:
        """A limit shared by every route of ``blueprint`` (and its nested
        blueprints)."""
        name = scope or f"blueprint:{blueprint.name}"
        specs = self._blueprint_limits.setdefault(blueprint.name, [])
        for spec in specs:
            if (
                spec.scope == name
                and (spec.limit is limit or spec.limit == limit)
                and spec.settings == settings
            ):
                # The same limit again: an app factory declaring it once
                # per app built. Counted once per request, not once per app.
                return
        specs.append(_LimitSpec(limit, name, settings))
        self._version += 1

    def exempt(self, view_or_blueprint: Any) -> Any:
        """Exempt a view (decorator) or a whole blueprint from the default
        and blueprint limits."""
        if isinstance(view_or_blueprint, Blueprint):
            self._exempt_blueprints.add(view_or_blueprint.name)
        else:
            self._exempt_views.add(view_or_blueprint)
        self._version += 1
        return view_or_blueprint

    # -- response caching ------------------------------------------------------

    def cache(self, **settings: Any) -> Callable[[F], F]:
        """View decorator (under ``@app.route``): ``@ext.cache(ttl=60)``
        caches the view's answers by the rules of
        :class:`stanchion.respcache.ResponseCache`, whose keywords it
        takes (``ttl``, ``backend``, ``statuses``, ``max_age``, ...).
        Async views work too. Streamed responses pass through uncached,
        and an answer is not stored when the view used ``flask.session``
        (Flask sets its cookie after the view, outside the cache).
        The wrapper's ``cache`` attribute has ``invalidate``, ``clear``
        and ``stats``."""
        from .respcache import ResponseCache

        rc = ResponseCache(**settings)

        def decorate(view: F) -> F:
            @functools.wraps(view)
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                app = current_app._get_current_object()  # type: ignore[attr-defined]
                req = request._get_current_object()  # type: ignore[attr-defined]

                def upstream() -> Any:
                    return _flask_upstream(app, view, args, kwargs, rc.max_body)

                plan = rc.plan_environ(req.environ, req.headers.get, req.path)
                if plan is None:
                    return view(*args, **kwargs)
                # A copy of the request context (for a refresh in another
                # thread) costs about as much as a hit: only when needed.
                background = copy_current_request_context(upstream) if rc.swr else None
                reply = rc.serve(plan, upstream, background)
                if reply.passthrough:
                    native = reply.native
                    native.headers.extend(reply.headers)
                    return native
                out = app.response_class(reply.body, status=reply.status)
                out.headers = Headers(reply.headers)
                return out

            wrapper.cache = rc  # type: ignore[attr-defined]
            return wrapper  # type: ignore[return-value]

        return decorate

    # -- hooks -----------------------------------------------------------------

    def _rules_for(
        self, state: _AppState, endpoint: str | None, req: Any
    ) -> list[Rule]:
        """The rules for an endpoint, worked out once per app and endpoint
        (again if limits are declared after the first request)."""
        if state.version != self._version:
            state.by_endpoint.clear()
            state.version = self._version
        rules = state.by_endpoint.get(endpoint)
        if rules is not None:
            return rules
        app = current_app._get_current_object()  # type: ignore[attr-defined]
        view = app.view_functions.get(endpoint) if endpoint else None
        rules = [state.rule(s) for s in self._view_limits.get(view, ())]
        blueprints = req.blueprints
        exempt = view in self._exempt_views or any(
            b in self._exempt_blueprints for b in blueprints
        )
        if not exempt:
            for bp in blueprints:
                rules.extend(state.rule(s) for s in self._blueprint_limits.get(bp, ()))
            if not rules and state.default_rule is not None:
                rules.append(state.default_rule)
            if state.slots_rule is not None:
                rules.append(state.slots_rule)
        if len(state.by_endpoint) < 10_000:
            state.by_endpoint[endpoint] = rules
        return rules

    def _first_request(self, app: Flask, state: _AppState) -> _AppState:
        """``STANCHION_*`` config set after ``init_app`` is read now, on
        the first request, rather than ignored (a default limit set so
        would otherwise never apply)."""
        if _config(app) != state.config:
            state = _AppState(self, app)
            app.extensions["stanchion"] = state
        state.checked = True
        front = state.default_rule
        wrapper = app.wsgi_app
        if (
            isinstance(wrapper, _RateHeaders)
            and wrapper.wraps_flask_itself()
            # Nothing of the app's runs before the hook: a before_request
            # function or URL value preprocessor ahead of it may answer
            # (or abort) a request the hook then never counts.
            and app.before_request_funcs.get(None, [])[:1] == [self._before_request]
            and not any(app.url_value_preprocessors.values())
            and state.enabled
            and front is not None
            and front.gate is not None
            and state.slots_rule is None
            and not self._view_limits
            and not self._blueprint_limits
            and not self._exempt_views
            and not self._exempt_blueprints
        ):
            # Every request gets this one rule, keyed by the socket peer:
            # decided as it enters the app, without the hook.
            state.front = front
            with wrapper._lock:
                wrapper.hook_off()
        return state

    def _before_request(self) -> Response | None:
        # The request context itself: the app and request proxies cost
        # about as much as a decision each (Flask 2.2+ keeps it in a
        # context variable; tests pin that).
        ctx = _cv_request.get()
        app = ctx.app
        req = ctx.request
        environ = req.environ
        door = environ.get(_DOOR)
        if door is not None:
            # Decided as the request entered the app: allowed (True), or
            # refused (its verdict), answered here so the app's other
            # hooks and after_request see the refusal as before.
            if door is True:
                return None
            return _refuse(app, door, environ.get(_HEADERS))
        state: _AppState = app.extensions["stanchion"]
        if not state.checked:
            state = self._first_request(app, state)
        if not state.enabled:
            return None
        # _rules_for's lookup, inline: this runs on every request.
        endpoint = req.endpoint
        rules = (
            state.by_endpoint.get(endpoint) if state.version == self._version else None
        )
        if rules is None:
            rules = self._rules_for(state, endpoint, req)
        if not rules:
            return None
        peer = environ.get("REMOTE_ADDR")  # req.remote_addr
        view_req: FlaskRequest | None = None
        # The headers of allowed requests go in the list _RateHeaders left
        # in the environ (None: the app was called some other way).
        extra: list[tuple[str, str]] | None = environ.get(_HEADERS)
        # The rules whose concurrency limit the request takes a slot of,
        # once every rate let it through.
        slotted: list[tuple[Rule, Any]] | None = None
        for rule in rules:
            gate = rule.gate
            if gate is not None:
                # A known client's hit is one C call; its headers are
                # rendered in C into the list.
                d = gate(peer)
                if d:
                    render = rule.allowed_render
                    if render is not None and extra is not None:
                        render.extend(d, extra)
                    if rule.slots is not None:
                        if slotted is None:
                            slotted = []
                        slotted.append((rule, True))
                    continue
                if d is None:
                    verdict = rule.check_simple(req.method, req.path, peer)
                else:
                    verdict = rule.refused(peer, d)
            elif rule.simple:
                verdict = rule.check_simple(req.method, req.path, peer)
            else:
                if view_req is None:
                    user = state.user
                    view_req = FlaskRequest(
                        req.method,
                        req.path,
                        None,
                        req,
                        user if user is not None else _g_user,
                    )
                verdict = rule.check(view_req, peer)
            if rule.slots is not None and (verdict is None or not verdict.blocked):
                if slotted is None:
                    slotted = []
                slotted.append((rule, verdict))
            if verdict is None:
                continue
            if verdict.blocked:
                return _refuse(app, verdict, extra)
            if extra is not None and verdict.rule.headers_on_allowed:
                # The first (most specific) rule's X-RateLimit-* are kept.
                extra.extend(outer_headers(verdict.headers(), extra))
        if slotted is not None and extra is not None:
            # (Without _RateHeaders, nothing would give the slots back
            # when the response is closed: no concurrency limit then.)
            busy = _take_slots(state, req, environ, peer, slotted)
            if busy is not None:
                return _refuse(app, busy, extra)
        return None


def _refuse(
    app: Flask, verdict: Verdict, extra: list[tuple[str, str]] | None
) -> Response:
    """The refusal (429, 403, 503) of a request: it carries its own rule's
    headers alone."""
    if extra:
        extra.clear()
    status, headers, body = verdict.reply()
    return app.response_class(body, status=status, headers=headers)


def _take_slots(
    state: _AppState,
    req: Any,
    environ: dict[str, Any],
    peer: str | None,
    slotted: list[tuple[Rule, Any]],
) -> Verdict | None:
    """Take a slot of each rule in ``slotted`` that the request needs one
    of (waiting in its queue): left in the environ for _RateHeaders to
    give back when the response is closed. The refusal of a rule that
    had none in time, if any."""
    rules: list[Rule] = []
    keys: list[str | None] = []
    lanes: list[int] = []
    header = req.headers.get

    def view() -> FlaskRequest:
        return FlaskRequest(req.method, req.path, None, req, state.user or _g_user)

    for rule, verdict in slotted:
        if verdict is True or needs_slot(
            rule, verdict, req.method, req.path, peer, header, view
        ):
            rules.append(rule)
            keys.append(rule.slot_key(peer, header))
            lanes.append(lane_of(rule, view))
    if not rules:
        return None
    holds = environ.get(_HOLDS)
    if holds is None:
        holds = environ[_HOLDS] = Holds()
        _RateHeaders.holding = True
    return holds.take_all(rules, keys, lanes)


#: The environ key of the list of rate limit headers for the response.
_HEADERS = "stanchion.headers"
#: The environ key of the concurrency slots the request holds (Holds).
_HOLDS = "stanchion.holds"
#: The environ key of a decision made as the request entered the app:
#: True (allowed) or the refusal's Verdict (see _RateHeaders).
_DOOR = "stanchion.door"


class _RateHeaders:
    """The app's WSGI callable with the rate limit headers of its allowed
    requests (the verdicts ``_before_request`` left in the environ) added
    as the response starts: to the list werkzeug hands the server, after
    its header checks and copies, which cost more than the decision.

    The concurrency slots the request took (in the environ, ``_HOLDS``)
    are given back when the server closes the response (a streamed one
    once it is sent), or at once if the app raises.

    When every request of the app gets one rule keyed by the socket peer
    (``STANCHION_DEFAULT_LIMIT`` alone: no view or blueprint limit, no
    exemption, no concurrency limit), the request is decided here, as it
    enters the app, and the ``before_request`` hook is taken off the
    app's list: it costs Flask a dispatch per request. A refused request
    puts the hook back for as long as it runs, so its refusal is
    answered by the hook as before (the app's other hooks, after_request
    and teardown functions all run)."""

    __slots__ = ("_early", "_hook_at", "_lock", "_refusing", "app", "ext", "flask")

    #: True once a request took a concurrency slot (in any app): only
    #: then is the environ looked at for slots to give back.
    holding = False

    def __init__(self, app: Any, flask: Flask | None = None, ext: Any = None) -> None:
        self.app = app
        self.flask = flask
        self.ext = ext
        self._lock = threading.Lock()
        self._refusing = 0  # refused requests running with the hook back
        self._early = 0  # requests in before the door was chosen
        #: The hook's place in the app's list while it is off (None: on).
        self._hook_at: int | None = None

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        flask = self.flask
        early = False
        if flask is not None:
            state: Any = flask.extensions.get("stanchion")
            front = state.front if state is not None else None
            if front is not None:
                gate = front.gate
                if state.version == self.ext._version and gate is not None:
                    peer = environ.get("REMOTE_ADDR")
                    d = gate(peer)
                    if d:
                        # A known client let through: one C call, its
                        # headers rendered in C as the response starts.
                        environ[_DOOR] = True
                        render = front.allowed_render
                        if render is not None:
                            start_response = HeaderStart(start_response, render, d)
                        return self.app(environ, start_response)
                    return self._at_the_door(front, environ, start_response, peer, d)
                # Limits declared since: the hook decides from now on.
                state.front = None
                with self._lock:
                    self.hook_on()
            elif state is not None and not state.checked:
                # In before the first request's hook chose the door: the
                # hook stays on (or is put back, if it went off since
                # ``checked`` was read) until this one went through it, or
                # the request would be decided neither here nor there.
                early = True
                with self._lock:
                    self._early += 1
                    self.hook_on()
        # A list per call: an app mounted in another (DispatcherMiddleware)
        # puts its own in the environ, so each layer sends its own once.
        extra: list[tuple[str, str]] = []
        environ[_HEADERS] = extra
        try:
            body = self.app(environ, HeaderStart(start_response, extra))
        except BaseException:
            if self.holding:
                holds = environ.pop(_HOLDS, None)
                if holds is not None:
                    holds.release()
            raise
        finally:
            if early:
                with self._lock:
                    self._early -= 1
                    now: Any = flask.extensions.get("stanchion")  # type: ignore[union-attr]
                    if self._early == 0 and now is not None and now.front is not None:
                        self.hook_off()
        if not self.holding:
            return body
        holds = environ.pop(_HOLDS, None)
        if not holds:  # none taken, or refused (busy): nothing held
            return body
        return _Releasing(body, holds)

    def _at_the_door(
        self,
        rule: Rule,
        environ: dict[str, Any],
        start_response: Any,
        peer: str | None,
        d: Decision | None,
    ) -> Any:
        """The door's answer to a request its gate did not let through:
        a client it does not know yet (``d`` None), or refused."""
        if d is None:
            verdict = rule.check_simple(
                environ.get("REQUEST_METHOD", "GET"),
                environ.get("PATH_INFO", "") or "/",
                peer,
            )
        else:
            verdict = rule.refused(peer, d)
        extra: list[tuple[str, str]] = []
        environ[_HEADERS] = extra
        if verdict is None or not verdict.blocked:
            environ[_DOOR] = True
            if verdict is not None and verdict.rule.headers_on_allowed:
                extra.extend(verdict.headers())
            return self.app(environ, HeaderStart(start_response, extra))
        environ[_DOOR] = verdict
        with self._lock:
            self._refusing += 1
            if self._refusing == 1:
                self.hook_on()
        try:
            return self.app(environ, HeaderStart(start_response, extra))
        finally:
            with self._lock:
                self._refusing -= 1
                # Not when the hook decides again since (a limit declared,
                # init_app again): it would stay off, nothing limited.
                state = self.flask.extensions.get("stanchion")  # type: ignore[union-attr]
                if self._refusing == 0 and state is not None and state.front is rule:
                    self.hook_off()

    def wraps_flask_itself(self) -> bool:
        """True when the wrapped callable is the app's own ``wsgi_app``:
        a middleware in between (werkzeug's ProxyFix, say) may change
        the environ the hook would read, so requests are then decided in
        the hook only."""
        inner, flask = self.app, self.flask
        return (
            flask is not None
            and getattr(inner, "__self__", None) is flask
            and getattr(inner, "__func__", None)
            is getattr(type(flask), "wsgi_app", None)
        )

    def hook_off(self) -> None:
        """Take the hook off the app's list (while requests are decided
        at the door and none refused runs); the lock is held. The list
        is replaced, never changed in place: a request going through it
        sees it whole."""
        flask, ext = self.flask, self.ext
        if flask is None or self._hook_at is not None or self._refusing or self._early:
            return
        hook = ext._before_request
        funcs = flask.before_request_funcs.get(None, [])
        for i, f in enumerate(funcs):
            if f == hook:
                flask.before_request_funcs[None] = funcs[:i] + funcs[i + 1 :]
                self._hook_at = i
                return

    def hook_on(self) -> None:
        """Put the hook back in its place in the app's list; the lock is
        held."""
        flask, at = self.flask, self._hook_at
        if flask is None or at is None:
            return
        funcs = flask.before_request_funcs.get(None, [])
        flask.before_request_funcs[None] = [
            *funcs[:at],
            self.ext._before_request,
            *funcs[at:],
        ]
        self._hook_at = None


def _hook_needed(app: Flask, ext: Any) -> None:
    """init_app again: settings read anew, decided in the hook until the
    next first request says otherwise."""
    wrapper = app.wsgi_app
    if isinstance(wrapper, _RateHeaders):
        with wrapper._lock:
            wrapper.hook_on()


class _Releasing:
    """A WSGI response body whose ``close`` also gives back the request's
    concurrency slots (PEP 3333: the server calls it once the body is
    sent, or the client went away)."""

    __slots__ = ("_body", "_holds")

    def __init__(self, body: Any, holds: Holds) -> None:
        self._body = body
        self._holds = holds

    def __iter__(self) -> Any:
        return iter(self._body)

    def close(self) -> None:
        try:
            close = getattr(self._body, "close", None)
            if close is not None:
                close()
        finally:
            self._holds.release()


def _flask_upstream(app: Flask, view: Any, args: Any, kwargs: Any, limit: int) -> Any:
    from .respcache import Upstream

    response = app.make_response(app.ensure_sync(view)(*args, **kwargs))
    headers = list(response.headers.items())
    if response.is_streamed:
        return Upstream(response.status_code, headers, None, response)
    body = response.get_data()
    if len(body) > limit:
        return Upstream(response.status_code, headers, None, response)
    return Upstream(response.status_code, headers, body, private=_session_used())


def _session_used() -> bool:
    """Whether the view read or wrote ``flask.session``: Flask then adds
    ``Vary: Cookie`` (and maybe ``Set-Cookie``) after the view returns,
    outside the cache, so the page is this visitor's."""
    from flask.globals import request_ctx

    ctx = request_ctx._get_current_object()  # type: ignore[attr-defined]
    # Flask 3.1 keeps the opened session in ``_session`` (its ``session``
    # property marks it accessed); earlier versions in ``session``.
    sess = ctx.__dict__.get("_session", ctx.__dict__.get("session"))
    if sess is None:
        return False
    return bool(getattr(sess, "accessed", False) or getattr(sess, "modified", False))


def _g_user() -> Any:
    return g.get("user")
