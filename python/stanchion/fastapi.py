"""Rate limiting for FastAPI routes.

Two ways, both keeping the endpoint's own signature, validation and
OpenAPI schema::

    from stanchion.fastapi import RateLimit, limit

    @app.get("/items/{item_id}")
    @limit("10/minute")                      # no `request: Request` needed
    async def read_item(item_id: int): ...

    @app.get("/search", dependencies=[Depends(RateLimit("5/second"))])
    def search(q: str): ...

``limit`` adds a hidden ``Request`` (and ``Response``) parameter through
``__signature__``, so FastAPI injects them and the endpoint never sees
them; blocked requests get the 429 problem+json response directly.
``RateLimit`` as a dependency raises :class:`RateLimited` (an
``HTTPException`` carrying the headers); FastAPI's default handler turns
it into ``{"detail": ...}``; pass ``exception_handlers=stanchion.fastapi.
exception_handlers`` to ``FastAPI()`` for the problem+json body.

For a limit on the whole app use :class:`stanchion.asgi.RateLimitMiddleware`
(also re-exported here).

WebSocket routes take :class:`WebSocketRateLimit` as a dependency::

    @app.websocket("/ws", dependencies=[Depends(WebSocketRateLimit("5/second"))])
    async def ws(websocket: WebSocket): ...
"""

from __future__ import annotations

import functools
import inspect
import operator
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

from fastapi import Depends, HTTPException, WebSocket, WebSocketException
from fastapi.routing import APIRoute, APIRouter
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request as StarletteRequest
from starlette.responses import Response

from ._adapt import (
    module_getattr,
    route_scope,
    share_limiters,
)
from ._adapt_slots import needs_slot
from ._concurrency import Concurrency, ConcurrencyLimitExceeded
from ._openapi import IF_NONE_MATCH, Responses, cache_responses, merge, rule_responses
from .asgi import CacheMiddleware, RateLimitMiddleware, give_back
from .http import Request, Rule, Verdict
from .websocket import CLOSE_POLICY_VIOLATION, WebSocketLimit

__all__ = [
    "CacheMiddleware",
    "DocumentedRoute",
    "RateLimit",
    "RateLimitMiddleware",
    "RateLimited",
    "WebSocketRateLimit",
    "cache",
    "document",
    "exception_handlers",
    "limit",
    "problem_response",
]

F = TypeVar("F", bound=Callable[..., Any])


#: ``default_limiters``: the limiters shared by route limits.
__getattr__ = module_getattr(__name__)


class StarletteView(Request):
    """The rules' view of a Starlette request (``native`` is the request)."""

    __slots__ = ()

    def __init__(self, request: StarletteRequest) -> None:
        super().__init__(request.method, request.url.path, None, request)

    def _header(self, name: str) -> str | None:
        values = self.native.headers.getlist(name)
        return ", ".join(values) if values else None

    @property
    def user(self) -> Any:
        return self.native.scope.get("user")


async def _acheck(rule: Rule, request: StarletteRequest) -> Verdict | None:
    scope = request.scope
    client = scope.get("client")  # request.client builds a tuple
    peer = client[0] if client else None
    gate = rule.gate
    if gate is not None:  # a known client: one C call
        d = gate(peer)
        if d:
            return Verdict(rule, d, rule._fixed, False, None)
        if d is not None:
            return rule.refused(peer, d)
    if rule.simple_in_c:  # never waits: no coroutine
        return rule.check_simple(scope["method"], scope["path"], peer)
    if rule.simple:
        return await rule.acheck_simple(scope["method"], scope["path"], peer)
    return await rule.acheck(StarletteView(request), peer)


async def _take_slot(rule: Rule, request: StarletteRequest) -> Any:
    """One of ``rule.slots`` for the request (a Hold, waiting in the
    queue if need be), or the refusal to send when none is free in time
    (None in dry run: served without a slot)."""
    slots = rule.slots
    assert slots is not None
    scope = request.scope
    client = scope.get("client")
    view = StarletteView(request)
    key = rule.slot_key(
        client[0] if client else None, view._header if rule.slots_per_client else None
    )
    lane = rule.lane(view) if rule.slot_priority is not None else 0
    try:
        hold = (
            slots.try_acquire(key, priority=lane)
            if type(slots) is Concurrency
            else None
        )
        if hold is None:
            hold = await slots.aacquire(key, priority=lane)
    except ConcurrencyLimitExceeded as exc:
        busy = rule.busy(exc)
        return problem_response(busy) if busy.blocked else None
    return hold


def _in_threadpool(func: Callable[..., Any]) -> Callable[..., Any]:
    """``func`` called in Starlette's thread pool, as FastAPI calls a sync
    endpoint."""

    async def call(*args: Any, **kwargs: Any) -> Any:
        return await run_in_threadpool(func, *args, **kwargs)

    return call


def problem_response(verdict: Verdict) -> Response:
    """The verdict's 429 as a Starlette response."""
    status, headers, body = verdict.reply()
    media_type = next(v for k, v in headers if k == "Content-Type")
    rest = [(k, v) for k, v in headers if k != "Content-Type"]
    response = Response(body, status_code=status, media_type=media_type)
    for k, v in rest:
        response.headers.append(k, v)
    return response


_X_RAW = (b"x-ratelimit-limit", b"x-ratelimit-remaining", b"x-ratelimit-reset")


def _set_headers(response: Response, verdict: Verdict) -> None:
    # raw_headers is the list both Starlette and FastAPI's header merge use.
    raw = response.raw_headers
    # Several limits of one route (a router's RateLimit, the route's own
    # dependency or @limit): the X-RateLimit-* trio is the one with the
    # fewest requests left, not the first checked.
    if _fewer_left(raw, verdict):
        raw[:] = [(k, v) for k, v in raw if k not in _X_RAW]
    verdict.extend_headers(raw, raw=True)


def _fewer_left(raw: list[tuple[bytes, bytes]], verdict: Verdict) -> bool:
    """Whether ``verdict``'s trio shows fewer requests left than the one
    already in ``raw`` (False when either has none)."""
    held = next((v for k, v in raw if k == b"x-ratelimit-remaining"), None)
    if held is None:
        return False
    new = next(
        (v for k, v in verdict.raw_headers() if k == b"x-ratelimit-remaining"), None
    )
    return new is not None and held.isdigit() and int(new) < int(held)


def _headers_on_allowed(result: Any, response: Response | None, v: Verdict) -> None:
    """Put an allowed request's headers on the endpoint's own Response,
    else on the injected one that FastAPI merges into what it sends."""
    if isinstance(result, Response):
        _set_headers(result, v)
    elif response is not None:
        _set_headers(response, v)


def _take(name: str | None, own: bool) -> Callable[[dict[str, Any]], Any]:
    """How a wrapper gets one parameter out of the endpoint's kwargs:
    read (the endpoint declares it too), popped (injected for the
    wrapper alone), or None (neither)."""
    if name is None:
        return lambda kwargs: None
    if own:
        return operator.itemgetter(name)
    return lambda kwargs: kwargs.pop(name)


def _signature(func: Callable[..., Any]) -> inspect.Signature:
    """``func``'s signature, its annotations evaluated where they can be
    (FastAPI would evaluate a wrapper's in the wrong module)."""
    try:
        return inspect.signature(func, eval_str=True)
    except NameError:
        return inspect.signature(func)


def _is_generator(func: Callable[..., Any]) -> bool:
    """Whether FastAPI streams ``func``'s items: it looks at the function
    unwrapped (under a decorator of the user's own, say)."""
    inner = inspect.unwrap(func)
    return inspect.isgeneratorfunction(inner) or inspect.isasyncgenfunction(inner)


def _inject(
    func: Callable[..., Any], need_response: bool
) -> tuple[
    inspect.Signature, Callable[[dict[str, Any]], Any], Callable[[dict[str, Any]], Any]
]:
    """The signature FastAPI should see for a wrapper of ``func``: the
    endpoint's own parameters plus, when it lacks them, the Request and
    (if ``need_response``) the Response the wrapper needs; and the two
    getters of those from the kwargs FastAPI passes."""
    sig = _signature(func)
    req_name = _find_param(sig, StarletteRequest)
    resp_name = _find_param(sig, Response)
    own_req = req_name is not None
    own_resp = resp_name is not None
    extra = []
    if req_name is None:
        req_name = "_stanchion_request"
        extra.append(
            inspect.Parameter(
                req_name, inspect.Parameter.KEYWORD_ONLY, annotation=StarletteRequest
            )
        )
    if resp_name is None and need_response:
        resp_name = "_stanchion_response"
        extra.append(
            inspect.Parameter(
                resp_name, inspect.Parameter.KEYWORD_ONLY, annotation=Response
            )
        )
    params = list(sig.parameters.values())
    if params and params[-1].kind is inspect.Parameter.VAR_KEYWORD:
        params[-1:-1] = extra
    else:
        params.extend(extra)
    return (
        sig.replace(parameters=params),
        _take(req_name, own_req),
        _take(resp_name, own_resp),
    )


class RateLimited(HTTPException):
    """Raised by the :class:`RateLimit` dependency when a request is
    limited; ``verdict`` holds the decision."""

    def __init__(self, verdict: Verdict) -> None:
        self.verdict = verdict
        status, headers, _ = verdict.reply()
        super().__init__(
            status_code=status,
            detail="Too Many Requests",
            headers={k: v for k, v in headers if k != "Content-Type"},
        )


async def _rate_limited_handler(request: StarletteRequest, exc: Exception) -> Response:
    assert isinstance(exc, RateLimited)
    return problem_response(exc.verdict)


#: ``FastAPI(exception_handlers=stanchion.fastapi.exception_handlers)``
#: answers :class:`RateLimited` with the problem+json 429.
exception_handlers: dict[Any, Callable[..., Any]] = {RateLimited: _rate_limited_handler}


class RateLimit:
    """A FastAPI dependency: ``Depends(RateLimit("10/minute"))`` in a
    route's parameters or ``dependencies=[...]``, or in a router's or the
    app's ``dependencies``.

    Without ``scope=`` each route it guards gets its own buckets (scope =
    the endpoint's module and qualified name); give ``scope="..."`` to
    share one limit across routes. Other keywords are
    :class:`stanchion.http.Rule` settings.
    """

    def __init__(
        self, limit: Any, *, scope: str | None = None, **settings: Any
    ) -> None:
        share_limiters(settings)
        self._settings = settings
        self._limit = limit
        self._rules: dict[str, Rule] = {}
        self.rule = Rule(limit, scope=scope or "default", **settings)
        self._fixed_scope = scope is not None
        if self._fixed_scope:
            self._rules[scope or "default"] = self.rule

    def _rule_for(self, request: StarletteRequest) -> Rule:
        if self._fixed_scope:
            return self.rule
        endpoint = request.scope.get("endpoint")
        name = route_scope(endpoint) if endpoint is not None else request.url.path
        return self._rule_named(name)

    def _rule_named(self, name: str) -> Rule:
        rule = self._rules.get(name)
        if rule is None:
            if len(self._rules) >= 4096:  # one per route; bound it anyway
                self._rules.clear()
            rule = self._rules[name] = Rule(self._limit, scope=name, **self._settings)
        return rule

    async def __call__(self, request: StarletteRequest, response: Response) -> None:
        verdict = await _acheck(self._rule_for(request), request)
        if verdict is None:
            return
        if verdict.blocked:
            raise RateLimited(verdict)
        _set_headers(response, verdict)

    def openapi_responses(
        self, success: int | str = 200, endpoint: Callable[..., Any] | None = None
    ) -> Responses:
        """The OpenAPI ``responses`` this dependency adds to a route whose
        success status is ``success`` (the route of ``endpoint``): the
        429 and the rate limit headers; :class:`DocumentedRoute` puts
        them on every route it guards. Usable as ``responses=`` too."""
        rule = self.rule
        if not self._fixed_scope and endpoint is not None:
            rule = self._rule_named(route_scope(endpoint))
        return rule_responses(rule, success, raised=True)


def _find_param(sig: inspect.Signature, cls: type) -> str | None:
    for p in sig.parameters.values():
        ann = p.annotation
        if isinstance(ann, type) and issubclass(ann, cls):
            return p.name
    return None


def _gated(func: Callable[..., Any], rule: Rule) -> Any:
    """``limit`` for a generator endpoint, which FastAPI calls without
    awaiting (the function it unwraps is a generator function) and
    streams: a coroutine wrapper would be streamed as nothing, unlimited,
    and a 429 can't be sent once streaming starts. So a dependency
    decides first, as :class:`RateLimit` does (a blocked request raises
    :class:`RateLimited`), and the wrapper only calls the endpoint."""

    async def gate(request: StarletteRequest, response: Response) -> None:
        verdict = await _acheck(rule, request)
        if verdict is None:
            return
        if verdict.blocked:
            raise RateLimited(verdict)
        _set_headers(response, verdict)

    @functools.wraps(func)
    def gated(*args: Any, **kwargs: Any) -> Any:
        del kwargs[_GATE]
        return func(*args, **kwargs)

    sig = _signature(func)
    params = list(sig.parameters.values())
    param = inspect.Parameter(
        _GATE, inspect.Parameter.KEYWORD_ONLY, default=Depends(gate)
    )
    if params and params[-1].kind is inspect.Parameter.VAR_KEYWORD:
        params.insert(len(params) - 1, param)
    else:
        params.append(param)
    gated.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
    _add_docs(
        gated, func, lambda success: (rule_responses(rule, success, raised=True), [])
    )
    return gated


_GATE = "_stanchion_limit"


def limit(limit: Any, *, scope: str | None = None, **settings: Any) -> Callable[[F], F]:
    """Route decorator: ``@limit("10/minute")`` under ``@app.get(...)``.

    The endpoint keeps its parameters (no ``request: Request`` needed),
    validation and OpenAPI schema; a sync endpoint still runs in FastAPI's
    thread pool, while the decision is made on the event loop. ``scope`` defaults to
    the endpoint's module and qualified name. Other keywords are
    :class:`stanchion.http.Rule` settings; bad ones fail here, at import.

    Requests that fail FastAPI's validation (422) never reach the
    endpoint and are not counted; use the middleware to count those too.
    A generator endpoint (streamed by FastAPI) is the exception: it is
    limited by a dependency, as :class:`RateLimit` limits, which decides
    before validation and raises :class:`RateLimited` when blocked.
    """
    share_limiters(settings)

    def decorate(func: F) -> F:
        rule = Rule(limit, scope=scope or route_scope(func), **settings)
        if _is_generator(func):
            gated = _gated(func, rule)
            gated.__stanchion_rule__ = rule
            return gated  # type: ignore[no-any-return]
        # The injected Response only carries headers on allowed requests;
        # without those FastAPI need not build and merge one per request.
        new_sig, take_req, take_resp = _inject(func, rule.headers_on_allowed)

        # One async wrapper: the decision awaits ahit on the loop, and a
        # sync endpoint runs in the thread pool, as FastAPI runs it.
        call = func if inspect.iscoroutinefunction(func) else _in_threadpool(func)

        async def limited(*args: Any, **kwargs: Any) -> Any:
            request = take_req(kwargs)
            response = take_resp(kwargs)
            verdict = await _acheck(rule, request)
            if verdict is not None and verdict.blocked:
                return problem_response(verdict)
            if rule.slots is None or (
                verdict is None
                and not needs_slot(
                    rule,
                    None,
                    request.method,
                    request.url.path,
                    request.client.host if request.client else None,
                    StarletteView(request)._header,
                    lambda: StarletteView(request),
                )
            ):
                result = await call(*args, **kwargs)
            else:
                hold = await _take_slot(rule, request)
                if isinstance(hold, Response):
                    return hold  # no slot in time: the 503 (or 429)
                try:
                    result = await call(*args, **kwargs)
                finally:
                    if hold is not None:
                        await give_back(hold)
            if verdict is not None:
                _headers_on_allowed(result, response, verdict)
            return result

        wrapper: Any = functools.wraps(func)(limited)
        wrapper.__signature__ = new_sig
        wrapper.__stanchion_rule__ = rule
        _add_docs(
            wrapper,
            func,
            lambda success: (rule_responses(rule, success, raised=False), []),
        )
        return wrapper  # type: ignore[no-any-return]

    return decorate


# ---------------------------------------------------------------------------
# Response caching
# ---------------------------------------------------------------------------


def _as_response(result: Any, response: Response) -> Response:
    """What FastAPI would send for an endpoint's return value (JSON for
    anything but a Response), with what the endpoint set on its
    ``Response`` parameter."""
    if isinstance(result, Response):
        return result
    from fastapi.encoders import jsonable_encoder
    from fastapi.responses import JSONResponse

    out = JSONResponse(jsonable_encoder(result))
    if response.status_code:
        out.status_code = response.status_code
    out.raw_headers.extend(
        (k, v) for k, v in response.raw_headers if k != b"content-length"
    )
    return out


def cache(**settings: Any) -> Callable[[F], F]:
    """Route decorator: ``@cache(ttl=60)`` under ``@app.get(...)``.

    Answers of the endpoint are cached by the rules of
    :class:`stanchion.respcache.ResponseCache` (whose keywords it takes:
    ``ttl``, ``backend``, ``statuses``, ``max_age``, ...). The endpoint
    keeps its signature (no ``request: Request`` needed); values it
    returns are sent as FastAPI's JSON (a ``response_model`` is not
    applied to them: return a Response, or a value already shaped as
    the model). Streaming responses (and generator endpoints) pass
    through uncached. The wrapper's
    ``cache`` attribute has ``invalidate``, ``clear`` and ``stats``.
    """

    from .respcache import ResponseCache, Upstream

    rc = ResponseCache(**settings)

    def decorate(func: F) -> F:
        if _is_generator(func):
            # Streamed by FastAPI, which calls it without awaiting: it
            # passes through uncached, as other streams do.
            @functools.wraps(func)
            def streamed(*args: Any, **kwargs: Any) -> Any:
                return func(*args, **kwargs)

            streamed.__signature__ = _signature(func)  # type: ignore[attr-defined]
            streamed.cache = rc  # type: ignore[attr-defined]
            return streamed  # type: ignore[return-value]
        new_sig, take_req, take_resp = _inject(func, True)
        call = func if inspect.iscoroutinefunction(func) else _in_threadpool(func)

        @functools.wraps(func)
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            request = take_req(kwargs)
            response = take_resp(kwargs)

            async def upstream() -> Upstream:
                out = _as_response(await call(*args, **kwargs), response)
                headers = [
                    (k.decode("latin-1"), v.decode("latin-1"))
                    for k, v in out.raw_headers
                ]
                body = getattr(out, "body", None)
                if not isinstance(body, bytes) or len(body) > rc.max_body:
                    return Upstream(out.status_code, headers, None, out)
                # Starlette's SessionMiddleware sets its cookie after the
                # endpoint whenever the session holds anything: a page of
                # this visitor's own.
                private = bool(request.scope.get("session"))
                return Upstream(out.status_code, headers, body, private=private)

            plan = rc.plan_scope(request.scope)
            if plan is None:
                up = await upstream()
                return up.native if up.native is not None else _rebuild(up)
            reply = await rc.aserve(plan, upstream, upstream)
            if reply.passthrough:
                native: Response = reply.native
                native.raw_headers.extend(
                    (k.encode("latin-1"), v.encode("latin-1")) for k, v in reply.headers
                )
                return native
            out = Response(reply.body, status_code=reply.status)
            out.raw_headers = [
                (k.lower().encode("latin-1"), v.encode("latin-1"))
                for k, v in reply.headers
            ]
            return out

        wrapper.__signature__ = new_sig  # type: ignore[attr-defined]
        wrapper.cache = rc  # type: ignore[attr-defined]
        _add_docs(
            wrapper,
            func,
            lambda success: (cache_responses(rc, success), [IF_NONE_MATCH]),
        )
        return wrapper  # type: ignore[return-value]

    return decorate


def _rebuild(up: Any) -> Response:
    out = Response(up.body, status_code=up.status)
    out.raw_headers = [
        (k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in up.headers
    ]
    return out


# ---------------------------------------------------------------------------
# OpenAPI
# ---------------------------------------------------------------------------

#: A route decorator's OpenAPI: success status -> (responses, parameters).
_Docs = Callable[[Any], tuple[Responses, list[dict[str, Any]]]]
_DOCS = "__stanchion_openapi__"


def _add_docs(wrapper: Any, func: Callable[..., Any], docs: _Docs) -> None:
    """Record on ``wrapper`` what its decorator adds to the route's
    OpenAPI, after what decorators under it (on ``func``) add."""
    setattr(wrapper, _DOCS, (*getattr(func, _DOCS, ()), docs))


def _dependency_calls(route: APIRoute) -> list[Any]:
    """Every dependency callable of ``route`` (its parameters', its
    ``dependencies=``, its router's and app's), each once."""
    seen: set[int] = set()
    out: list[Any] = []
    stack = list(route.dependant.dependencies)
    while stack:
        dep = stack.pop(0)
        call = dep.call
        if call is not None and id(call) not in seen:
            seen.add(id(call))
            out.append(call)
        stack.extend(dep.dependencies)
    return out


class DocumentedRoute(APIRoute):
    """A FastAPI route class that documents what stanchion does to its
    routes in the OpenAPI schema: ``@limit`` and ``Depends(RateLimit(...))``
    add the 429 (problem+json, and FastAPI's ``{"detail"}`` where a
    dependency raises it) with ``Retry-After``, ``RateLimit``,
    ``RateLimit-Policy`` and ``X-RateLimit-*``, and those headers on the
    success response when allowed responses get them (403 and 503 where
    the rule bans or limits concurrency); ``@cache`` adds ``X-Cache``,
    ``Age``, ``ETag`` (and ``Cache-Control`` with ``max_age``), the 304
    and the ``If-None-Match`` parameter. What the route's own
    ``responses=`` says wins. Other routes are left as they are.

    ``app.router.route_class = DocumentedRoute`` (before the routes are
    added), or ``APIRouter(route_class=DocumentedRoute)``; or
    ``stanchion.fastapi.document(app)`` once the routes are there."""

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        super().__init__(path, endpoint, **kwargs)
        document_route(self)


def document_route(route: APIRoute) -> None:
    """Add to ``route.responses`` (and its ``openapi_extra`` parameters)
    what its stanchion decorators and ``RateLimit`` dependencies do (see
    :class:`DocumentedRoute`); a route without them is left untouched."""
    success = route.status_code or 200
    found: Responses = {}
    params: list[dict[str, Any]] = []
    for docs in getattr(route.endpoint, _DOCS, ()):
        more, extra = docs(success)
        merge(found, more)
        params += extra
    for call in _dependency_calls(route):
        if isinstance(call, RateLimit):
            merge(found, call.openapi_responses(success, route.endpoint))
    if not found and not params:
        return
    responses = dict(route.responses)
    merge(responses, found)
    route.responses = responses
    if params:
        declared = {
            (p.get("in"), str(p.get("name", "")).lower())
            for p in (route.openapi_extra or {}).get("parameters", [])
        }
        declared |= {
            ("header", (f.alias or f.name).lower().replace("_", "-"))
            for f in route.dependant.header_params
        }
        new = [p for p in params if (p["in"], p["name"].lower()) not in declared]
        if new:
            extra_params = (route.openapi_extra or {}).get("parameters", [])
            route.openapi_extra = {
                **(route.openapi_extra or {}),
                "parameters": [*extra_params, *new],
            }


def document(app: Any) -> None:
    """Document stanchion's limits and cache (see :class:`DocumentedRoute`)
    on every route ``app`` has: a ``FastAPI`` app or an ``APIRouter``,
    called once its routes (and included routers) are added, whatever
    their route class; routes added later are documented too (the
    router's route class becomes :class:`DocumentedRoute` unless it has
    one of its own). A schema generated already is made again."""
    router = getattr(app, "router", app)
    if not isinstance(router, APIRouter):
        raise TypeError(
            f"expected a FastAPI app or an APIRouter, not {type(app).__name__}"
        )
    _document_routes(router, set())
    if router.route_class is APIRoute:
        router.route_class = DocumentedRoute
    if getattr(app, "openapi_schema", None) is not None:
        app.openapi_schema = None


def _document_routes(router: Any, seen: set[int]) -> None:
    """document() on one router's routes, and on the routers included in
    it: FastAPI flattens them into the routes (older releases) or keeps
    each as an ``original_router`` (0.165 and later)."""
    if id(router) in seen:
        return
    seen.add(id(router))
    changed = False
    for route in router.routes:
        inner = getattr(route, "original_router", None)
        if isinstance(inner, APIRouter):
            _document_routes(inner, seen)
        elif (
            isinstance(route, APIRoute)
            and not isinstance(route, DocumentedRoute)
            and not getattr(route, _DOCUMENTED, False)
        ):
            document_route(route)
            setattr(route, _DOCUMENTED, True)
            changed = True
    # The routes FastAPI derived from these for an including router are
    # made again when this version moves.
    if changed and isinstance(getattr(router, "_routes_version", None), int):
        router._routes_version += 1


# Set on a route document() has documented (it may be called again).
_DOCUMENTED = "_stanchion_documented"


class WebSocketRateLimit:
    """A FastAPI dependency limiting a WebSocket route:
    ``@app.websocket("/ws", dependencies=[Depends(WebSocketRateLimit(
    "10/second", connections="20/minute"))])``.

    Takes the :class:`stanchion.websocket.WebSocketLimit` settings (or
    one ``WebSocketLimit``, to share its limits with the middleware). A
    refused connection attempt raises ``WebSocketException(1008)``
    before accept, which Starlette turns into a closed handshake (the
    server answers 403); the route's ``websocket`` then receives through
    the limits: a message over them closes the connection with code 1008
    and the reason, or is dropped (``action="drop"``)."""

    def __init__(self, messages: Any = None, /, **settings: Any) -> None:
        if isinstance(messages, WebSocketLimit):
            if settings:
                raise ValueError("give a WebSocketLimit or its settings, not both")
            self.limit = messages
        else:
            self.limit = WebSocketLimit(messages, **settings)

    async def __call__(self, websocket: WebSocket) -> AsyncIterator[None]:
        limit = self.limit
        if limit.exempt(websocket.scope):
            yield
            return
        verdict = await limit.admit(websocket.scope)
        if verdict is not None and verdict.blocked:
            raise WebSocketException(CLOSE_POLICY_VIOLATION, limit.reason)
        conn = await limit.connection(
            websocket.scope,
            websocket._receive,
            websocket._send,
        )
        # Starlette's WebSocket reads and writes through these two.
        websocket._receive = conn.receive
        websocket._send = conn.send
        try:
            yield
        finally:
            conn.end()
