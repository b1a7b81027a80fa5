"""Rate limiting for any ASGI app (FastAPI, Starlette, Quart, ...).

``RateLimitMiddleware`` is plain ASGI: it decides before calling the app,
answers 429 itself, and adds the rate limit headers to the app's
``http.response.start``. Lifespan and websocket scopes pass through
untouched. It awaits ``limiter.ahit`` so a Redis-backed limiter never
blocks the event loop.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from .http import Request, Rule, Verdict

__all__ = ["AsgiRequest", "RateLimitMiddleware", "send_reply"]

Scope = Any  # MutableMapping[str, Any], as Starlette types it
Message = Any  # MutableMapping[str, Any]; Any matches Starlette's own aliases
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_X_LIMIT = b"x-ratelimit-limit"


class AsgiRequest(Request):
    """The rules' view of an ASGI http scope (``native`` is the scope)."""

    __slots__ = ()

    def __init__(self, scope: Scope) -> None:
        super().__init__(scope["method"], scope["path"], None, scope)

    def _header(self, name: str) -> str | None:
        want = name.encode("latin-1")
        found = [v for k, v in self.native["headers"] if k == want]
        if not found:
            return None
        return b", ".join(found).decode("latin-1")

    @property
    def user(self) -> Any:
        # Starlette's AuthenticationMiddleware stores the user in the scope.
        return self.native.get("user")


def peer_of(scope: Scope) -> str | None:
    client = scope.get("client")
    return client[0] if client else None


def encode_headers(headers: list[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    return [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers]


async def send_reply(verdict: Verdict, send: Send) -> None:
    """Send the verdict's 429 response over ASGI."""
    status, headers, body = verdict.reply()
    raw = encode_headers(headers)
    raw.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


def add_headers(message: Message, extra: list[tuple[bytes, bytes]]) -> None:
    """Append rate limit headers to an ``http.response.start`` message.
    ``X-RateLimit-*`` set by an inner limit (a route's) are kept: the
    inner, more specific limit speaks for that family."""
    headers = message.get("headers")
    headers = list(headers) if headers else []
    if extra[-1][0] == b"x-ratelimit-reset":  # we send that family
        for k, _ in headers:
            if k.lower() == _X_LIMIT:
                extra = [(k, v) for k, v in extra if not k.startswith(b"x-ratelimit-")]
                break
    headers += extra
    message["headers"] = headers


class RateLimitMiddleware:
    """``app = RateLimitMiddleware(app, limit="100/minute", ...)``, or
    ``app.add_middleware(RateLimitMiddleware, limit="100/minute")``.

    ``limit`` is a rate string, a :class:`stanchion.http.Plans`, or a
    function of the request; ``limiter`` a limiter object to use instead
    (``Limiter``, ``RedisLimiter``). Every other keyword is a
    :class:`stanchion.http.Rule` setting (``key``, ``scope``, ``cost``,
    ``exempt_paths``, ``dry_run``, ``trusted_proxies``, ``headers``, ...).
    Key, cost and limit functions get a :class:`AsgiRequest`.
    """

    def __init__(
        self,
        app: ASGIApp,
        limit: Any = None,
        *,
        limiter: Any = None,
        scope: str = "global",
        **settings: Any,
    ) -> None:
        if limit is not None and limiter is not None:
            raise ValueError("give either limit= or limiter=, not both")
        self.app = app
        self.rule = Rule(limit if limiter is None else limiter, scope=scope, **settings)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        rule = self.rule
        if rule.simple:
            verdict = await rule.acheck_simple(
                scope["method"], scope["path"], client[0] if client else None
            )
        else:
            verdict = await rule.acheck(
                AsgiRequest(scope), client[0] if client else None
            )
        if verdict is None:
            await self.app(scope, receive, send)
            return
        if verdict.blocked:
            await send_reply(verdict, send)
            return
        extra = verdict.raw_headers()
        if not extra:
            await self.app(scope, receive, send)
            return

        # A plain function returning send's awaitable: one coroutine frame
        # fewer per message than an async wrapper.
        def send_with_headers(message: Message) -> Awaitable[None]:
            if message["type"] == "http.response.start":
                add_headers(message, extra)
            return send(message)

        await self.app(scope, receive, send_with_headers)
