"""Rate limiting for hug (which runs on falcon).

::

    import hug
    from stanchion.hug import RateLimitMiddleware, limit

    api = hug.API(__name__)
    api.http.add_middleware(RateLimitMiddleware(limit="100/minute"))

    @hug.get("/search")
    @limit("5/second")
    def search(q: hug.types.text):
        ...

``limit`` builds its wrapper with ``hug.wraps``, so hug still reads the
endpoint's own signature: its type annotations, validation, directives
and generated documentation are unchanged. The wrapper asks hug for the
``request`` and ``response`` it needs and passes them on only if the
endpoint asked for them too. A blocked request gets status 429, the
rate limit headers and the problem+json body (served as is by hug's
default JSON output format).

``@cache(max_age=3600)`` (under the route decorator) caches an
endpoint's rendered answers in this process (or in Redis with
``backend=RedisCache(...)``) by the rules of
:class:`stanchion.respcache.ResponseCache`, and sends
``Cache-Control: public, max-age=3600``.

``RateLimitMiddleware`` is falcon-style (``process_request`` /
``process_response``) and limits every request of the API.

Both take a concurrency limit too (``concurrency=``, ``queue=``,
``queue_timeout=``, ``concurrency_per=``; ``limit=None`` for that
alone): a request its rate let through takes a slot, waiting in the
queue if none is free, or is answered 503 (429 per client) with
``Retry-After``. The middleware holds the slot from ``process_request``
to ``process_response``, the decorator while the endpoint runs; a
streamed answer (a file-like object) keeps it until the server closes
the body.

hug 2.6.1 pins falcon 2.0.0, which imports the ``cgi`` module: that
works on Python 3.10 to 3.12 (``cgi`` is deprecated there and prints a
DeprecationWarning) and not on 3.13, where ``cgi`` was removed.
"""

from __future__ import annotations

import io
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import falcon
import hug

from ._adapt import (
    MIDDLEWARE_SCOPE,
    decide,
    module_getattr,
    outer_headers,
    route_scope,
    share_limiters,
    status_line,
)
from ._adapt_slots import Holds, lane_of, needs_slot
from ._limiter import RateLimiter
from .http import RateSpec, Request, Rule, Verdict, middleware_rule

__all__ = ["FalconRequest", "RateLimitMiddleware", "cache", "limit"]

F = TypeVar("F", bound=Callable[..., Any])


#: ``default_limiters``: the limiters shared by route limits.
__getattr__ = module_getattr(__name__)


class FalconRequest(Request):
    """The rules' view of a falcon request (``native``)."""

    __slots__ = ()

    def __init__(self, req: falcon.Request) -> None:
        super().__init__(req.method, req.path, None, req)

    def _header(self, name: str) -> str | None:
        value = self.native.get_header(name)
        return value if value is None else str(value)

    @property
    def user(self) -> Any:
        ctx = self.native.context
        try:
            return ctx.get("user")
        except AttributeError:
            return getattr(ctx, "user", None)


def _check(rule: Rule, req: falcon.Request) -> Verdict | None:
    return decide(rule, req.method, req.path, req.remote_addr, FalconRequest, req)


def _blocked(verdict: Verdict, response: falcon.Response) -> bytes:
    status, headers, body = verdict.reply()
    response.status = status_line(status)
    for k, v in headers:
        if k == "Content-Type":
            response.content_type = v
        else:
            response.set_header(k, v)
    return body


def _add_headers(response: falcon.Response, verdict: Verdict) -> None:
    headers = verdict.headers()
    if not headers:
        return
    for k, v in outer_headers(headers, response, _has_x_limit):
        if k[0] == "X":
            response.set_header(k, v)
        else:
            response.append_header(k, v)


def _has_x_limit(response: falcon.Response) -> bool:
    return response.get_header("X-RateLimit-Limit") is not None


def _forwarding(func: Any) -> tuple[Any, Callable[[dict[str, Any], Any, Any], None]]:
    """The function hug introspects behind ``func`` (its ``original`` when
    hug wrapped it already), and how a wrapper that takes ``request`` and
    ``response`` from hug passes them on: only if the function takes them
    (by name or ``**kwargs``), as hug itself would. Another of our
    wrappers (``limit`` over ``cache`` or the reverse) always takes them,
    whatever the function under it takes."""
    spec = getattr(func, "original", func)
    code = spec.__code__
    wanted = code.co_varnames[: code.co_argcount + code.co_kwonlyargcount]
    takes_kwargs = bool(code.co_flags & 0x08)
    ours = getattr(func, "__stanchion_http__", False)
    pass_request = ours or "request" in wanted or takes_kwargs
    pass_response = ours or "response" in wanted or takes_kwargs

    def forward(kwargs: dict[str, Any], request: Any, response: Any) -> None:
        if pass_request:
            kwargs["request"] = request
        if pass_response:
            kwargs["response"] = response

    return spec, forward


#: What one of our decorators does with a request from hug:
#: ``step(request, response, args, kwargs)`` answers it, calling the
#: endpoint as ``func(*args, **kwargs)`` if it calls it at all.
_Step = Callable[[Any, Any, tuple[Any, ...], dict[str, Any]], Any]
_AsyncStep = Callable[[Any, Any, tuple[Any, ...], dict[str, Any]], Awaitable[Any]]


def _wrap(func: Any, step: _Step, astep: _AsyncStep) -> Any:
    """``func`` wrapped for hug by one of our decorators: built with
    ``hug.wraps`` (hug reads ``func``'s own signature), taking hug's
    ``request`` and ``response`` and passing them on as :func:`_forwarding`
    says; a call without them (from Python) goes straight to ``func``,
    one from hug to ``step``, or, when ``func`` is a coroutine function,
    to ``astep`` awaited in a coroutine function wrapper."""
    spec, forward = _forwarding(func)
    if hug.introspect.is_coroutine(spec):

        @hug.wraps(func)  # type: ignore[untyped-decorator]
        async def async_wrapper(
            request: Any = None, response: Any = None, *args: Any, **kwargs: Any
        ) -> Any:
            forward(kwargs, request, response)
            if request is None or response is None:
                return await func(*args, **kwargs)
            return await astep(request, response, args, kwargs)

        wrapper: Any = async_wrapper
    else:

        @hug.wraps(func)  # type: ignore[untyped-decorator]
        def sync_wrapper(
            request: Any = None, response: Any = None, *args: Any, **kwargs: Any
        ) -> Any:
            forward(kwargs, request, response)
            if request is None or response is None:
                return func(*args, **kwargs)
            return step(request, response, args, kwargs)

        wrapper = sync_wrapper
    wrapper.__stanchion_http__ = True
    return wrapper


def _allowed(result: Any, verdict: Verdict | None, response: falcon.Response) -> Any:
    """An allowed endpoint's ``result``, its verdict's headers on ``response``."""
    if verdict is not None:
        _add_headers(response, verdict)
    return result


# -- concurrency slots ------------------------------------------------------------


def _wants_slot(rule: Rule, verdict: Verdict | None, req: falcon.Request) -> bool:
    return needs_slot(
        rule,
        verdict,
        req.method,
        req.path,
        req.remote_addr,
        req.get_header,
        lambda: FalconRequest(req),
    )


def _slot_key(rule: Rule, req: falcon.Request) -> str | None:
    return rule.slot_key(req.remote_addr, req.get_header)


def _lane(rule: Rule, req: falcon.Request) -> int:
    return lane_of(rule, lambda: FalconRequest(req))


def _released_with(
    result: Any, holds: Holds, req: falcon.Request, resp: falcon.Response
) -> Any:
    """An endpoint's ``result``, the request's slots given back now, or,
    for a file-like answer (hug streams it), when the body is closed."""
    if hasattr(result, "read") and _sends_body(req, resp):
        return _ReleasingStream(result, holds)
    holds.release()
    return result


def _sends_body(req: falcon.Request, resp: falcon.Response) -> bool:
    """Whether falcon sends (and so closes) ``resp.stream``: not for HEAD
    nor a status without a body."""
    return req.method != "HEAD" and not str(resp.status).startswith(("1", "204", "304"))


class _ReleasingStream:
    """A streamed answer whose ``close`` (called by falcon's body
    iterator or the server's ``wsgi.file_wrapper`` once it is sent) also
    gives back the request's concurrency slots."""

    __slots__ = ("_holds", "_stream")

    def __init__(self, stream: Any, holds: Holds) -> None:
        self._stream = stream
        self._holds = holds

    def read(self, size: int = -1) -> Any:
        return self._stream.read(size)

    def close(self) -> None:
        try:
            close = getattr(self._stream, "close", None)
            if close is not None:
                close()
        finally:
            self._holds.release()


def limit(limit: Any, *, scope: str | None = None, **settings: Any) -> Callable[[F], F]:
    """Endpoint decorator, placed under ``@hug.get(...)`` (or any other
    hug route decorator). ``scope`` defaults to the endpoint's module and
    qualified name; other keywords are :class:`stanchion.http.Rule`
    settings, checked here (at import). Calling the function directly
    from Python (no HTTP request) is never limited."""
    share_limiters(settings)

    def decorate(func: F) -> F:
        rule = Rule(limit, scope=scope or route_scope(func), **settings)

        def step(request: Any, response: Any, args: Any, kwargs: Any) -> Any:
            verdict = _check(rule, request)
            if verdict is not None and verdict.blocked:
                return io.BytesIO(_blocked(verdict, response))
            if rule.slots is not None and _wants_slot(rule, verdict, request):
                holds = Holds()
                busy = holds.take_all(
                    [rule], [_slot_key(rule, request)], [_lane(rule, request)]
                )
                if busy is not None:
                    return io.BytesIO(_blocked(busy, response))
                try:
                    result = func(*args, **kwargs)
                except BaseException:
                    holds.release()
                    raise
                return _allowed(
                    _released_with(result, holds, request, response), verdict, response
                )
            return _allowed(func(*args, **kwargs), verdict, response)

        async def astep(request: Any, response: Any, args: Any, kwargs: Any) -> Any:
            peer = request.remote_addr
            verdict = await (
                rule.acheck_simple(request.method, request.path, peer)
                if rule.simple
                else rule.acheck(FalconRequest(request), peer)
            )
            if verdict is not None and verdict.blocked:
                return io.BytesIO(_blocked(verdict, response))
            if rule.slots is not None and _wants_slot(rule, verdict, request):
                holds = Holds()
                busy = await holds.atake_all(
                    [rule], [_slot_key(rule, request)], [_lane(rule, request)]
                )
                if busy is not None:
                    return io.BytesIO(_blocked(busy, response))
                try:
                    result = await func(*args, **kwargs)
                except BaseException:
                    await holds.arelease()
                    raise
                return _allowed(
                    _released_with(result, holds, request, response), verdict, response
                )
            return _allowed(await func(*args, **kwargs), verdict, response)

        wrapper = _wrap(func, step, astep)
        wrapper.__stanchion_rule__ = rule
        return wrapper  # type: ignore[no-any-return]

    return decorate


class RateLimitMiddleware:
    """Falcon-style middleware limiting every request of a hug API:
    ``api.http.add_middleware(RateLimitMiddleware(limit="100/minute"))``.

    ``limit`` / ``limiter`` and the other keywords are as for
    :class:`stanchion.asgi.RateLimitMiddleware`."""

    def __init__(
        self,
        limit: RateSpec | Callable[[Request], Any] | None = None,
        *,
        limiter: RateLimiter | None = None,
        scope: str = MIDDLEWARE_SCOPE,
        **settings: Any,
    ) -> None:
        self.rule = middleware_rule(limit, limiter, scope, settings)

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        rule = self.rule
        verdict = _check(rule, req)
        if rule.slots is not None:
            self._take_slot(req, resp, verdict)
            return
        if verdict is None:
            return
        if verdict.blocked:
            resp.data = _blocked(verdict, resp)
            resp.complete = True
            return
        req.context.stanchion_verdict = verdict

    def _take_slot(
        self, req: falcon.Request, resp: falcon.Response, verdict: Verdict | None
    ) -> None:
        """``process_request`` for a rule with a concurrency limit: a slot
        held (until ``process_response``), or the refusal answered."""
        rule = self.rule
        if verdict is not None and verdict.blocked:
            resp.data = _blocked(verdict, resp)
            resp.complete = True
            return
        if _wants_slot(rule, verdict, req):
            holds = Holds()
            busy = holds.take_all([rule], [_slot_key(rule, req)], [_lane(rule, req)])
            if busy is not None:
                resp.data = _blocked(busy, resp)
                resp.complete = True
                return
            req.context.stanchion_holds = holds
        if verdict is not None:
            req.context.stanchion_verdict = verdict

    def process_response(
        self,
        req: falcon.Request,
        resp: falcon.Response,
        resource: Any,
        req_succeeded: bool,
    ) -> None:
        verdict = getattr(req.context, "stanchion_verdict", None)
        if verdict is not None:
            _add_headers(resp, verdict)
        if self.rule.slots is not None:
            holds = getattr(req.context, "stanchion_holds", None)
            if holds is not None:
                stream = resp.stream
                if stream is not None and _sends_body(req, resp):
                    # Sent after this: the slot is kept until it is closed.
                    resp.stream = _ReleasingStream(stream, holds)
                else:
                    holds.release()


# =============================================================================
# Response caching
# =============================================================================


def _falcon_headers(response: falcon.Response) -> list[tuple[str, str]]:
    headers = list(response.headers.items())
    cookies = getattr(response, "_cookies", None)
    if cookies:
        for morsel in cookies.values():
            headers.append(("Set-Cookie", morsel.OutputString()))
    return headers


def _session_used(request: falcon.Request) -> bool:
    """Whether hug's ``SessionMiddleware`` session (``request.context``'s
    ``"session"``) holds anything: the middleware saves it and sets its
    cookie after the endpoint, outside the cache, so the page (a CSRF
    token in it, say) is this visitor's."""
    get = getattr(request.context, "get", None)
    return get is not None and bool(get("session"))


def _falcon_status(response: falcon.Response) -> int:
    return int(str(response.status).split(" ", 1)[0])


def _send(reply: Any, response: falcon.Response) -> Any:
    """Put a cache reply on hug's response; what the endpoint returns."""
    response.status = status_line(reply.status)
    for k, v in reply.headers:
        low = k.lower()
        if low == "content-type":
            response.content_type = v
        elif low == "set-cookie":
            pass  # only ever from this request's own answer: already set
        else:
            response.set_header(k, v)
    if reply.passthrough:
        return reply.native
    return io.BytesIO(reply.body or b"")


def _refresh_call(
    response: falcon.Response, kwargs: dict[str, Any]
) -> tuple[falcon.Response, dict[str, Any]]:
    """A response of its own for a refresh of the cache and the endpoint's
    keyword arguments with it. A refresh runs while this request's hit is
    sent: on the hit's response, the hit's headers (its ETag) would be
    stored with the new body, and the endpoint's sent with the hit.
    ``kwargs`` holds ``response`` only where the wrapper forwarded it (hug
    gives it to the wrapper's own parameter)."""
    fresh = type(response)()
    kw = dict(kwargs)
    if "response" in kw:
        kw["response"] = fresh
    return fresh, kw


def cache(
    max_age: int | None = None,
    *,
    ttl: float | None = None,
    output: Callable[..., Any] | None = None,
    **settings: Any,
) -> Callable[[F], F]:
    """Endpoint decorator, placed under ``@hug.get(...)``:
    ``@cache(max_age=3600)`` keeps each answer for ``max_age`` seconds
    (``ttl`` to keep it a different time) and sends
    ``Cache-Control: public, max-age=3600``. Other keywords are those of
    :class:`stanchion.respcache.ResponseCache` (``backend``, ``statuses``,
    ``vary_identity``, ``tags``, ...). ``output`` is the route's output
    format (hug's JSON by default): the answer is rendered with it once and
    the bytes are stored. Built with ``hug.wraps``, so the endpoint's
    signature, types and documentation are unchanged; a direct call from
    Python is never cached. The wrapper's ``cache`` attribute has
    ``invalidate``, ``clear`` and ``stats``."""
    from .respcache import ResponseCache, Upstream

    if ttl is None:
        if max_age is None:
            raise TypeError("cache needs max_age or ttl")
        ttl = max_age
    render = hug.output_format.json if output is None else output
    if not callable(render):
        raise TypeError("output must be a hug output format")
    rc = ResponseCache(ttl=ttl, max_age=max_age, **settings)

    def upstream_of(result: Any, request: Any, response: Any) -> Any:
        headers = _falcon_headers(response)
        status = _falcon_status(response)
        if hasattr(result, "read"):
            return Upstream(status, headers, None, result)
        body = render(result, request=request, response=response)
        if hasattr(body, "read"):
            return Upstream(status, headers, None, body)
        if isinstance(body, str):
            body = body.encode("utf-8")
        if len(body) > rc.max_body:
            return Upstream(status, headers, None, io.BytesIO(body))
        return Upstream(status, headers, bytes(body), private=_session_used(request))

    def plan_for(request: Any) -> Any:
        return rc.plan_environ(request.env, request.get_header, request.path)

    def decorate(func: F) -> F:
        def step(request: Any, response: Any, args: Any, kwargs: Any) -> Any:
            plan = plan_for(request)
            if plan is None:
                return func(*args, **kwargs)

            def upstream() -> Any:
                return upstream_of(func(*args, **kwargs), request, response)

            def background() -> Any:
                fresh, kw = _refresh_call(response, kwargs)
                return upstream_of(func(*args, **kw), request, fresh)

            return _send(rc.serve(plan, upstream, background), response)

        async def astep(request: Any, response: Any, args: Any, kwargs: Any) -> Any:
            plan = plan_for(request)
            if plan is None:
                return await func(*args, **kwargs)

            async def upstream() -> Any:
                return upstream_of(await func(*args, **kwargs), request, response)

            async def background() -> Any:
                fresh, kw = _refresh_call(response, kwargs)
                return upstream_of(await func(*args, **kw), request, fresh)

            return _send(await rc.aserve(plan, upstream, background), response)

        wrapper = _wrap(func, step, astep)
        wrapper.cache = rc
        return wrapper  # type: ignore[no-any-return]

    return decorate
