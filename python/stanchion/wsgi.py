"""Rate limiting for any WSGI app (Flask, Django, Bottle, Pyramid, ...).

``app = RateLimitMiddleware(app, limit="100/minute")`` decides before
calling the app, answers 429 itself, and adds the rate limit headers
through ``start_response``. It calls the limiter's blocking ``hit`` (WSGI
servers run each request in its own thread or process).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from .http import Request, Rule, Verdict

__all__ = ["RateLimitMiddleware", "WsgiRequest", "header_from_environ"]

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]

_STATUS = {429: "429 Too Many Requests", 503: "503 Service Unavailable"}


def header_from_environ(environ: dict[str, Any], name: str) -> str | None:
    """Header ``name`` (lower case) from a WSGI environ / Django META."""
    if name == "content-type":
        return environ.get("CONTENT_TYPE") or None
    if name == "content-length":
        return environ.get("CONTENT_LENGTH") or None
    value = environ.get("HTTP_" + name.upper().replace("-", "_"))
    return value if value is not None else None


class WsgiRequest(Request):
    """The rules' view of a WSGI environ (``native`` is the environ)."""

    __slots__ = ()

    def __init__(self, environ: dict[str, Any]) -> None:
        super().__init__(
            environ.get("REQUEST_METHOD", "GET"),
            environ.get("PATH_INFO", "") or "/",
            None,
            environ,
        )

    def _header(self, name: str) -> str | None:
        return header_from_environ(self.native, name)

    @property
    def user(self) -> Any:
        return self.native.get("REMOTE_USER") or None


def status_line(status: int) -> str:
    from http import HTTPStatus

    line = _STATUS.get(status)
    if line is None:
        try:
            line = f"{status} {HTTPStatus(status).phrase}"
        except ValueError:
            line = f"{status} Unknown"
    return line


def reply(verdict: Verdict, start_response: StartResponse) -> list[bytes]:
    """Send the verdict's 429 through WSGI."""
    status, headers, body = verdict.reply()
    headers.append(("Content-Length", str(len(body))))
    start_response(status_line(status), headers)
    return [body]


def merge_headers(
    headers: list[tuple[str, str]], extra: list[tuple[str, str]]
) -> list[tuple[str, str]]:
    """Rate limit headers added to an app's own. ``X-RateLimit-*`` set by
    an inner (route) limit are kept, as the more specific answer."""
    if extra[-1][0] == "X-RateLimit-Reset":  # we send that family
        for k, _ in headers:
            if k.lower() == "x-ratelimit-limit":
                extra = [(k, v) for k, v in extra if not k.startswith("X-RateLimit-")]
                break
    return headers + extra


class RateLimitMiddleware:
    """``app = RateLimitMiddleware(app, limit="100/minute", ...)``.

    ``limit`` is a rate string, a :class:`stanchion.http.Plans`, or a
    function of the request; ``limiter`` a limiter object to use instead.
    Every other keyword is a :class:`stanchion.http.Rule` setting. Key,
    cost and limit functions get a :class:`WsgiRequest`.
    """

    def __init__(
        self,
        app: WSGIApp,
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

    def __call__(
        self, environ: dict[str, Any], start_response: StartResponse
    ) -> Iterable[bytes]:
        rule = self.rule
        if rule.simple:
            verdict = rule.check_simple(
                environ.get("REQUEST_METHOD", "GET"),
                environ.get("PATH_INFO") or "/",
                environ.get("REMOTE_ADDR"),
            )
        else:
            verdict = rule.check(WsgiRequest(environ), environ.get("REMOTE_ADDR"))
        if verdict is None:
            return self.app(environ, start_response)
        if verdict.blocked:
            return reply(verdict, start_response)
        extra = verdict.headers()
        if not extra:
            return self.app(environ, start_response)

        def start_with_headers(
            status: str, headers: list[tuple[str, str]], exc_info: Any = None
        ) -> Any:
            return start_response(status, merge_headers(headers, extra), exc_info)

        return self.app(environ, start_with_headers)
