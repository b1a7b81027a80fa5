"""Rate limiting for any WSGI app (Flask, Django, Bottle, Pyramid, ...).

``app = RateLimitMiddleware(app, limit="100/minute")`` decides before
calling the app, answers 429 itself, and adds the rate limit headers
through ``start_response``. It calls the limiter's blocking ``hit`` (WSGI
servers run each request in its own thread or process).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from ._adapt import (
    AppMiddleware,
    header_from_environ,
    outer_headers,
    status_line,
)
from ._adapt_slots import needs_slot
from ._concurrency import Concurrency, ConcurrencyLimitExceeded
from ._core import HeaderStart
from .http import Request, Rule, Verdict
from .respcache import CacheFront, environ_header

__all__ = [
    "CacheMiddleware",
    "RateLimitMiddleware",
    "WsgiRequest",
    "header_from_environ",
]

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


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


def reply(verdict: Verdict, start_response: StartResponse) -> list[bytes]:
    """Send the verdict's 429 through WSGI."""
    status, headers, body = verdict.reply()
    headers.append(("Content-Length", str(len(body))))
    start_response(status_line(status), headers)
    return [body]


def merge_headers(
    headers: list[tuple[str, str]], extra: list[tuple[str, str]]
) -> list[tuple[str, str]]:
    """Rate limit headers added to an app's own, by the rule of
    :func:`stanchion._adapt.outer_headers`."""
    return headers + outer_headers(extra, headers)


class RateLimitMiddleware(AppMiddleware[WSGIApp]):
    """``app = RateLimitMiddleware(app, limit="100/minute", ...)``.

    ``limit`` is a rate string, a :class:`stanchion.http.Plans`, or a
    function of the request; ``limiter`` a limiter object to use instead.
    Every other keyword is a :class:`stanchion.http.Rule` setting. Key,
    cost and limit functions get a :class:`WsgiRequest`.
    """

    def __call__(
        self, environ: dict[str, Any], start_response: StartResponse
    ) -> Iterable[bytes]:
        rule = self.rule
        gate = rule.gate
        if gate is not None:
            # This runs on every request: a known client's hit is one C
            # call, its headers are rendered in C as the response starts.
            peer = environ.get("REMOTE_ADDR")
            d = gate(peer)
            if d:
                render = rule.allowed_render
                out = (
                    start_response
                    if render is None
                    else HeaderStart(start_response, render, d)
                )
                if rule.slots is None:
                    return self.app(environ, out)
                return run_holding(rule, self.app, environ, start_response, out)
            if d is None:
                verdict = rule.check_simple(
                    environ.get("REQUEST_METHOD", "GET"),
                    environ.get("PATH_INFO") or "/",
                    peer,
                )
            else:
                verdict = rule.refused(peer, d)
        elif not rule.decides:  # a concurrency limit alone
            verdict = None
        # _adapt.decide, inlined.
        elif rule.simple:
            verdict = rule.check_simple(
                environ.get("REQUEST_METHOD", "GET"),
                environ.get("PATH_INFO") or "/",
                environ.get("REMOTE_ADDR"),
            )
        else:
            verdict = rule.check(WsgiRequest(environ), environ.get("REMOTE_ADDR"))
        if verdict is not None and verdict.blocked:
            return reply(verdict, start_response)
        extra = verdict.headers() if verdict is not None else None
        out = HeaderStart(start_response, extra) if extra else start_response
        if rule.slots is None or (
            verdict is None
            and not needs_slot(
                rule,
                None,
                environ.get("REQUEST_METHOD", "GET"),
                environ.get("PATH_INFO") or "/",
                environ.get("REMOTE_ADDR"),
                lambda name: WsgiRequest(environ)._header(name),
                lambda: WsgiRequest(environ),
            )
        ):
            return self.app(environ, out)
        return run_holding(rule, self.app, environ, start_response, out)


def run_holding(
    rule: Rule,
    app: WSGIApp,
    environ: dict[str, Any],
    start_response: StartResponse,
    out: StartResponse,
) -> Iterable[bytes]:
    """Call ``app`` holding one of ``rule.slots`` (starting its response
    through ``out``), waiting in the queue if need be; with no slot in
    time, ``rule.busy``'s answer through ``start_response``. The slot is
    given back when the server closes the response (the body may be sent
    after the app returns), or at once if the app raises."""
    slots = rule.slots
    assert slots is not None
    view = WsgiRequest(environ) if rule.slots_per_client or rule.slot_priority else None
    key = rule.slot_key(
        environ.get("REMOTE_ADDR"), view._header if view is not None else None
    )
    lane = rule.lane(view) if view is not None and rule.slot_priority else 0
    hold = slots.try_acquire(key, priority=lane) if type(slots) is Concurrency else None
    if hold is None:
        try:
            hold = slots.acquire(key, priority=lane)
        except ConcurrencyLimitExceeded as exc:
            busy = rule.busy(exc)
            if busy.blocked:
                return reply(busy, start_response)
            return app(environ, out)  # dry run: served without a slot
    try:
        body = app(environ, out)
    except BaseException:
        hold.release()
        raise
    return _Holding(body, hold)


class _Holding:
    """An app's answer whose ``close`` also gives back its concurrency
    slot (once)."""

    __slots__ = ("body", "hold")

    def __init__(self, body: Iterable[bytes], hold: Any) -> None:
        self.body = body
        self.hold = hold

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.body)

    def close(self) -> None:
        hold, self.hold = self.hold, None
        try:
            close = getattr(self.body, "close", None)
            if close is not None:
                close()
        finally:
            if hold is not None:
                hold.release()


# ---------------------------------------------------------------------------
# Response caching
# ---------------------------------------------------------------------------


class _Passing:
    """An app's answer that goes to the client as it comes: the part
    already read, then the rest, and the app's ``close``."""

    def __init__(self, head: list[bytes], rest: Any, source: Any) -> None:
        self.head = head
        self.rest = rest
        self.source = source

    def __iter__(self) -> Any:
        yield from self.head
        if self.rest is not None:
            yield from self.rest

    def close(self) -> None:
        close = getattr(self.source, "close", None)
        if close is not None:
            close()


class CacheMiddleware(CacheFront):
    """Cache GET/HEAD answers of any WSGI app (Flask, Django, ...).

    ``app.wsgi_app = CacheMiddleware(app.wsgi_app, ttl=60)``. Keywords
    are :class:`stanchion.respcache.ResponseCache` settings, as for
    :class:`stanchion.asgi.CacheMiddleware` (``paths`` too). A list
    (or tuple) body, an iterable the app gave a ``Content-Length``, or
    Django's ``HttpResponse`` (``streaming = False``) is buffered up to
    ``max_body`` bytes and may be stored; any other iterable (a
    generator, a ``wsgi.file_wrapper``, a ``StreamingHttpResponse``) is
    a stream: it goes to the client as it comes, uncached, and its
    ``close()`` is called by the server as usual. Concurrent identical misses call the app
    once (the others wait in their threads).
    """

    app: WSGIApp

    def __call__(
        self, environ: dict[str, Any], start_response: StartResponse
    ) -> Iterable[bytes]:
        path = environ.get("PATH_INFO") or "/"
        if self.paths is not None and not path.startswith(self.paths):
            return self.app(environ, start_response)
        cache = self.cache
        plan = cache.plan_environ(environ, environ_header(environ), path)
        if plan is None:
            return self.app(environ, start_response)

        def background() -> Any:
            import io

            env = dict(environ)
            env["wsgi.input"] = io.BytesIO()
            return self._run(env)

        reply = cache.serve(plan, lambda: self._run(environ), background)
        if reply.passthrough:
            passing = reply.native
            start_response(status_line(passing.status), passing.headers + reply.headers)
            return passing.body_iter  # type: ignore[no-any-return]
        start_response(status_line(reply.status), reply.headers)
        return [reply.body]

    def _run(self, environ: dict[str, Any]) -> Any:
        from .respcache import Upstream

        got: list[Any] = []
        written: list[bytes] = []

        def start(
            status: str, headers: list[tuple[str, str]], exc_info: Any = None
        ) -> Any:
            if exc_info is not None and got:
                raise exc_info[1].with_traceback(exc_info[2])
            got[:] = [status, headers]
            return written.append

        result = self.app(environ, start)
        chunks = written
        it = iter(result)
        try:
            # PEP 3333 lets a generator call start_response on its first
            # step: take that step to learn the status and headers.
            while not got:
                chunks.append(next(it))
        except StopIteration:
            pass
        except BaseException:
            _close(result)
            raise
        if not got:
            _close(result)
            raise RuntimeError("the app did not call start_response")
        status = int(got[0].split(" ", 1)[0])
        headers = list(got[1])
        if not isinstance(result, (list, tuple)) and not _bounded(result, headers):
            # A stream: it goes to the client as it comes, uncached.
            up = Upstream(status, headers, None, None)
            up.native = _Native(status, headers, _Passing(chunks, it, result))
            return up
        limit = self.cache.max_body
        size = sum(len(c) for c in chunks)
        overflow = size > limit
        try:
            while not overflow:
                chunk = next(it, None)
                if chunk is None:
                    break
                if chunk:
                    chunks.append(chunk)
                    size += len(chunk)
                    overflow = size > limit
        except BaseException:
            _close(result)
            raise
        if overflow:
            up = Upstream(status, headers, None, None)
            up.native = _Native(status, headers, _Passing(chunks, it, result))
            return up
        _close(result)
        return Upstream(status, headers, b"".join(chunks))


def _close(result: Any) -> None:
    close = getattr(result, "close", None)
    if close is not None:
        close()


def _bounded(result: Any, headers: list[tuple[str, str]]) -> bool:
    """Whether an iterable answer (not a list) is a whole body rather
    than a stream: it says so (Django's ``HttpResponse`` has ``streaming
    = False``, its ``StreamingHttpResponse`` and ``FileResponse`` True),
    or the app gave it a ``Content-Length`` (werkzeug's buffered
    responses). Generators, event streams and ``wsgi.file_wrapper``
    files are sent as they come."""
    streaming = getattr(result, "streaming", None)
    if isinstance(streaming, bool):
        return not streaming
    if type(result).__name__ == "FileWrapper":
        return False
    return any(k.lower() == "content-length" for k, _ in headers)


class _Native:
    __slots__ = ("body_iter", "headers", "status")

    def __init__(
        self, status: int, headers: list[tuple[str, str]], body_iter: Any
    ) -> None:
        self.status = status
        self.headers = headers
        self.body_iter = body_iter

    def close(self) -> None:
        self.body_iter.close()
