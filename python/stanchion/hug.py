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

``RateLimitMiddleware`` is falcon-style (``process_request`` /
``process_response``) and limits every request of the API.

hug 2.6.1 pins falcon 2.0.0, which imports the ``cgi`` module: that
works on Python 3.10 to 3.12 (``cgi`` is deprecated there and prints a
DeprecationWarning) and not on 3.13, where ``cgi`` was removed.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any, TypeVar

import falcon
import hug

from .http import LimiterCache, Request, Rule, Verdict
from .wsgi import status_line

__all__ = ["FalconRequest", "RateLimitMiddleware", "limit"]

F = TypeVar("F", bound=Callable[..., Any])

default_limiters: LimiterCache | None = None
_OWN_CACHE = ("limiters", "algorithm", "storage", "max_keys", "clock")


def _share_limiters(settings: dict[str, Any]) -> None:
    global default_limiters
    if not any(k in settings for k in _OWN_CACHE):
        if default_limiters is None:
            default_limiters = LimiterCache()
        settings["limiters"] = default_limiters


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
    if rule.simple:
        return rule.check_simple(req.method, req.path, req.remote_addr)
    return rule.check(FalconRequest(req), req.remote_addr)


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
    has_x = response.get_header("X-RateLimit-Limit") is not None
    for k, v in headers:
        if k.startswith("X-RateLimit-"):
            if not has_x:
                response.set_header(k, v)
        else:
            response.append_header(k, v)


def limit(limit: Any, *, scope: str | None = None, **settings: Any) -> Callable[[F], F]:
    """Endpoint decorator, placed under ``@hug.get(...)`` (or any other
    hug route decorator). ``scope`` defaults to the endpoint's module and
    qualified name; other keywords are :class:`stanchion.http.Rule`
    settings, checked here (at import). Calling the function directly
    from Python (no HTTP request) is never limited."""
    _share_limiters(settings)

    def decorate(func: F) -> F:
        rule = Rule(
            limit, scope=scope or f"{func.__module__}.{func.__qualname__}", **settings
        )
        spec = getattr(func, "original", func)
        code = spec.__code__
        wanted = code.co_varnames[: code.co_argcount + code.co_kwonlyargcount]
        takes_kwargs = bool(code.co_flags & 0x08)
        pass_request = "request" in wanted or takes_kwargs
        pass_response = "response" in wanted or takes_kwargs

        def forward(kwargs: dict[str, Any], request: Any, response: Any) -> None:
            if pass_request:
                kwargs["request"] = request
            if pass_response:
                kwargs["response"] = response

        if hug.introspect.is_coroutine(spec):

            @hug.wraps(func)  # type: ignore[untyped-decorator]
            async def async_wrapper(
                request: Any = None, response: Any = None, *args: Any, **kwargs: Any
            ) -> Any:
                forward(kwargs, request, response)
                if request is None or response is None:
                    return await func(*args, **kwargs)
                verdict = (
                    await rule.acheck_simple(
                        request.method, request.path, request.remote_addr
                    )
                    if rule.simple
                    else await rule.acheck(FalconRequest(request), request.remote_addr)
                )
                if verdict is not None and verdict.blocked:
                    return io.BytesIO(_blocked(verdict, response))
                result = await func(*args, **kwargs)
                if verdict is not None:
                    _add_headers(response, verdict)
                return result

            wrapper: Any = async_wrapper
        else:

            @hug.wraps(func)  # type: ignore[untyped-decorator]
            def sync_wrapper(
                request: Any = None, response: Any = None, *args: Any, **kwargs: Any
            ) -> Any:
                forward(kwargs, request, response)
                if request is None or response is None:
                    return func(*args, **kwargs)
                verdict = _check(rule, request)
                if verdict is not None and verdict.blocked:
                    return io.BytesIO(_blocked(verdict, response))
                result = func(*args, **kwargs)
                if verdict is not None:
                    _add_headers(response, verdict)
                return result

            wrapper = sync_wrapper
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
        limit: Any = None,
        *,
        limiter: Any = None,
        scope: str = "global",
        **settings: Any,
    ) -> None:
        if limit is not None and limiter is not None:
            raise ValueError("give either limit= or limiter=, not both")
        self.rule = Rule(limit if limiter is None else limiter, scope=scope, **settings)

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        verdict = _check(self.rule, req)
        if verdict is None:
            return
        if verdict.blocked:
            resp.data = _blocked(verdict, resp)
            resp.complete = True
            return
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
