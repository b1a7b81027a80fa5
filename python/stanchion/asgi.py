"""Rate limiting for any ASGI app (FastAPI, Starlette, Quart, ...).

``RateLimitMiddleware`` is plain ASGI: it decides before calling the app,
answers 429 itself, and adds the rate limit headers to the app's
``http.response.start``. Lifespan scopes pass through untouched; websocket
scopes too, unless ``websocket=`` gives a
:class:`stanchion.websocket.WebSocketLimit`. It awaits ``limiter.ahit`` so a Redis-backed limiter never
blocks the event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from ._adapt import AppMiddleware, outer_headers
from ._adapt_slots import needs_slot
from ._concurrency import Concurrency, ConcurrencyLimitExceeded
from ._core import HeaderSend
from .http import Request, Rule, Verdict
from .respcache import SENT, CacheFront
from .websocket import WebSocketLimit

__all__ = ["AsgiRequest", "CacheMiddleware", "RateLimitMiddleware", "send_reply"]

Scope = Any  # MutableMapping[str, Any], as Starlette types it
Message = Any  # MutableMapping[str, Any]; Any matches Starlette's own aliases
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


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
    """Append rate limit headers to an ``http.response.start`` message, by
    the rule of :func:`stanchion._adapt.outer_headers` (an inner, route
    limit's ``X-RateLimit-*`` are kept)."""
    headers = message.get("headers") or ()
    message["headers"] = [*headers, *outer_headers(extra, headers)]


class RateLimitMiddleware(AppMiddleware[ASGIApp]):
    """``app = RateLimitMiddleware(app, limit="100/minute", ...)``, or
    ``app.add_middleware(RateLimitMiddleware, limit="100/minute")``.

    ``limit`` is a rate string, a :class:`stanchion.http.Plans`, or a
    function of the request; ``limiter`` a limiter object to use instead
    (``Limiter``, ``RedisLimiter``). Every other keyword is a
    :class:`stanchion.http.Rule` setting (``key``, ``scope``, ``cost``,
    ``exempt_paths``, ``dry_run``, ``trusted_proxies``, ``headers``, ...).
    Key, cost and limit functions get a :class:`AsgiRequest`.

    ``websocket``: a :class:`stanchion.websocket.WebSocketLimit` applied
    to every websocket scope (messages and connection attempts); with it
    alone (no ``limit``/``limiter``), HTTP requests pass unlimited.
    """

    def __init__(
        self,
        app: ASGIApp,
        /,
        limit: Any = None,
        *,
        limiter: Any = None,
        websocket: WebSocketLimit | None = None,
        **settings: Any,
    ) -> None:
        if websocket is not None and not isinstance(websocket, WebSocketLimit):
            raise TypeError(
                f"websocket= must be a stanchion.websocket.WebSocketLimit, "
                f"not {type(websocket).__name__}"
            )
        if websocket is not None and limit is None and limiter is None:
            if settings:
                raise ValueError(
                    f"{', '.join(sorted(settings))}: HTTP settings without a "
                    "limit= or limiter="
                )
            self.app = app
            self.rule = None  # type: ignore[assignment]
        else:
            super().__init__(app, limit, limiter=limiter, **settings)
        self.websocket = websocket

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "websocket" and self.websocket is not None:
                await self.websocket(self.app, scope, receive, send)
            else:
                await self.app(scope, receive, send)
            return
        client = scope.get("client")
        peer = client[0] if client else None
        rule = self.rule
        if rule is None:  # websocket limits alone
            await self.app(scope, receive, send)
            return
        gate = rule.gate
        if gate is not None:
            # This runs on every request: a known client's hit is one C
            # call, its headers are rendered in C as the response starts.
            d = gate(peer)
            if d:
                render = rule.allowed_render
                out = send if render is None else HeaderSend(send, render, d)
                slots = rule.slots
                if slots is None:
                    await self.app(scope, receive, out)
                    return
                if rule.slots_plain:  # a free slot: taken in C
                    hold = slots.try_acquire()
                    if hold is not None:
                        try:
                            await self.app(scope, receive, out)
                        finally:
                            hold.release()
                        return
                await run_holding(rule, self.app, scope, receive, send, out, peer)
                return
            if d is None:
                verdict = rule.check_simple(scope["method"], scope["path"], peer)
            else:
                verdict = rule.refused(peer, d)
        elif not rule.decides:  # a concurrency limit alone
            verdict = None
        # Rule.acheck_simple or acheck. The C limiter's hit never waits:
        # no coroutine for it.
        elif rule.simple_in_c:
            verdict = rule.check_simple(scope["method"], scope["path"], peer)
        elif rule.simple:
            verdict = await rule.acheck_simple(scope["method"], scope["path"], peer)
        else:
            verdict = await rule.acheck(AsgiRequest(scope), peer)
        if verdict is not None and verdict.blocked:
            await send_reply(verdict, send)
            return
        # send, with the headers added to the response start (in C: one
        # object, no Python frame per message).
        extra = verdict.raw_headers() if verdict is not None else None
        out = HeaderSend(send, extra) if extra else send
        slots = rule.slots
        if slots is None or (verdict is None and not _needs_slot(rule, scope, peer)):
            await self.app(scope, receive, out)
            return
        if rule.slots_plain:  # a free slot: taken in C
            hold = slots.try_acquire()
            if hold is not None:
                try:
                    await self.app(scope, receive, out)
                finally:
                    hold.release()
                return
        await run_holding(rule, self.app, scope, receive, send, out, peer)


def _needs_slot(rule: Rule, scope: Scope, peer: str | None) -> bool:
    """Whether a request the rule did not decide on takes a slot: not
    when exempt or on the allow list (see ``_adapt_slots.needs_slot``)."""
    return needs_slot(
        rule,
        None,
        scope["method"],
        scope["path"],
        peer,
        lambda name: AsgiRequest(scope)._header(name),
        lambda: AsgiRequest(scope),
    )


async def run_holding(
    rule: Rule,
    app: ASGIApp,
    scope: Scope,
    receive: Receive,
    send: Send,
    out: Send,
    peer: str | None,
) -> None:
    """Run ``app`` holding one of ``rule.slots`` (sending through ``out``),
    waiting in its queue if need be; a request that gets no slot in time
    is answered ``rule.busy`` through ``send``, and one whose client
    disconnects while queued leaves the queue at once, answered nothing.
    The slot is given back when the app returns or raises."""
    slots = rule.slots
    assert slots is not None
    view = AsgiRequest(scope) if rule.slots_per_client or rule.slot_priority else None
    key = rule.slot_key(peer, view._header if view is not None else None)
    lane = rule.lane(view) if view is not None and rule.slot_priority else 0
    hold = slots.try_acquire(key, priority=lane) if type(slots) is Concurrency else None
    if hold is None:
        hold, receive = await _wait_for_slot(slots, key, lane, receive)
        if isinstance(hold, ConcurrencyLimitExceeded):
            busy = rule.busy(hold)
            if busy.blocked:
                await send_reply(busy, send)
            else:  # dry run: served without a slot
                await app(scope, receive, out)
            return
        if hold is None:
            return  # the client went away while it waited
    try:
        await app(scope, receive, out)
    finally:
        await give_back(hold)


async def give_back(hold: Any) -> None:
    """Give ``hold``'s slot back; a shared storage's (Redis, shared
    memory) without blocking the loop (and through an asyncio-only
    Redis client, which has no blocking calls)."""
    arelease = getattr(hold, "arelease", None)
    if arelease is None:
        hold.release()
    else:
        await arelease()


async def _wait_for_slot(
    slots: Any, key: str | None, lane: int, receive: Receive
) -> Any:
    """``(hold, receive)``: a slot taken from ``slots`` (None when the
    client disconnected first; the ConcurrencyLimitExceeded when none
    was free in time), and the receive to give the app (the body
    messages read while waiting come first)."""
    acquiring = asyncio.ensure_future(slots.aacquire(key, priority=lane))
    held: list[Message] = []
    listening: asyncio.Future[Message] | None = None
    try:
        while not acquiring.done():
            if listening is None:
                listening = asyncio.ensure_future(receive())
            await asyncio.wait(
                (acquiring, listening), return_when=asyncio.FIRST_COMPLETED
            )
            if listening.done():
                message = listening.result()
                listening = None
                if message["type"] == "http.disconnect":
                    acquiring.cancel()
                    hold = await _settled(acquiring)
                    if hold is not None:  # granted as the client left
                        await give_back(hold)
                    return None, receive
                held.append(message)
    except BaseException:
        acquiring.cancel()
        hold = await _settled(acquiring)
        if hold is not None:
            await give_back(hold)
        raise
    finally:
        if listening is not None:
            listening.cancel()
            try:
                await listening
            except asyncio.CancelledError:
                pass
            else:  # it had a message already: the app gets it
                held.append(listening.result())
    try:
        hold = acquiring.result()
    except ConcurrencyLimitExceeded as exc:
        hold = exc
    if not held:
        return hold, receive

    async def replay() -> Message:
        if held:
            return held.pop(0)
        return await receive()

    return hold, replay


async def _settled(task: asyncio.Future[Any]) -> Any:
    """The Hold a cancelled acquisition got anyway, or None."""
    try:
        return await task
    except (asyncio.CancelledError, ConcurrencyLimitExceeded):
        return None


# ---------------------------------------------------------------------------
# Response caching
# ---------------------------------------------------------------------------


class _RaisedAfterStart(BaseException):
    """The app's exception, raised after its answer started going to the
    client: carried past the cache's stale-if-error fallback (a second
    response start would break the protocol), then raised again as is."""


async def _no_body() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


def _decode(raw: Any) -> list[tuple[str, str]]:
    return [(k.decode("latin-1"), v.decode("latin-1")) for k, v in raw or ()]


def _length(headers: list[tuple[str, str]]) -> int | None:
    """The declared Content-Length, or None (none, or not a number)."""
    for k, v in headers:
        if k.lower() == "content-length":
            v = v.strip()
            return int(v) if v.isdigit() else None
    return None


async def send_cached(reply: Any, send: Send) -> None:
    """Send a :class:`stanchion.respcache.Reply` built by the cache."""
    n = reply.entry_headers
    if n:
        # The stored headers' encoding is made once, on the entry.
        entry = reply.entry
        raw = entry.raw
        if raw is None:
            raw = entry.raw = encode_headers(entry.headers)
        headers = [*raw, *encode_headers(reply.headers[n:])]
    else:
        headers = encode_headers(reply.headers)
    await send(
        {"type": "http.response.start", "status": reply.status, "headers": headers}
    )
    await send({"type": "http.response.body", "body": reply.body})


class CacheMiddleware(CacheFront):
    """Cache GET/HEAD answers of any ASGI app (FastAPI, Starlette, ...).

    ``app = CacheMiddleware(app, ttl=60)``, or
    ``app.add_middleware(CacheMiddleware, ttl=60, backend=RedisCache(url))``.
    Keywords are :class:`stanchion.respcache.ResponseCache` settings:
    ``ttl``, ``backend`` (None: in process, bounded by ``maxweight``
    bytes; a ``stanchion.Cache``; or a ``stanchion.RedisCache``, shared),
    ``statuses``, ``max_age``, ``maxweight``, ``max_body``,
    ``stale_while_revalidate``, ``stale_if_error``, ``vary_identity``,
    ``session_cookies``, ``identity_headers``, ``allowed_hosts``,
    ``trusted_proxies``, ``client_refresh``, ``tags``, ``clock``.
    ``paths`` (prefixes) limits caching to those paths.

    An answer of at most ``max_body`` bytes is buffered and may be
    stored when it is whole: one ``http.response.body`` message, or
    several adding up to its declared ``Content-Length``. A stream (body
    messages with ``more_body`` and no Content-Length, a
    ``text/event-stream``, ``http.response.pathsend`` or
    ``zerocopysend``) goes to the client as it comes, in order, uncached.
    ``invalidate(path=|prefix=|tag=)``, ``clear()`` and ``stats()``
    manage the cache.
    """

    app: ASGIApp

    def _on_shutdown(self, send: Send) -> Send:
        async def wrapped(message: Any) -> None:
            if message["type"] == "lifespan.shutdown.complete":
                await self.cache.aclose()
            await send(message)

        return wrapped

    async def aclose(self) -> None:
        """Close this event loop's backend connections (Redis); done at
        lifespan shutdown."""
        await self.cache.aclose()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                await self.app(scope, receive, self._on_shutdown(send))
            else:
                await self.app(scope, receive, send)
            return
        path = scope["path"]
        if self.paths is not None and not path.startswith(self.paths):
            await self.app(scope, receive, send)
            return
        cache = self.cache
        plan = cache.plan_scope(scope)
        if plan is None:
            await self.app(scope, receive, send)
            return
        store = plan.store

        def upstream() -> Awaitable[Any]:
            return self._run(scope, receive, send, store)

        def background() -> Awaitable[Any]:
            return self._run(dict(scope), _no_body, None, True)

        try:
            reply = await cache.aserve(plan, upstream, background)
        except _RaisedAfterStart as after:
            failed: Exception = after.args[0]
        else:
            if reply.native is not SENT:
                await send_cached(reply, send)
            return
        raise failed  # outside the handler: the app's own exception, as is

    async def _run(
        self, scope: Scope, receive: Receive, send: Send | None, store: bool
    ) -> Any:
        """Run the app; buffer its answer when it may be stored (or served
        stale instead of a 5xx), else forward it to ``send`` as it comes."""
        from .respcache import Upstream

        cache = self.cache
        limit = cache.max_body
        state: dict[str, Any] = {
            "start": None,
            "chunks": [],
            "size": 0,
            "passed": False,
            "length": None,
        }

        async def pass_on(message: Message) -> None:
            if send is not None:
                await send(message)

        async def go_through() -> None:
            start = state["start"]
            state["passed"] = True
            start["headers"] = [*(start.get("headers") or ()), (b"x-cache", b"MISS")]
            await pass_on(start)
            chunks, state["chunks"] = state["chunks"], []
            if chunks:
                await pass_on(
                    {
                        "type": "http.response.body",
                        "body": b"".join(chunks),
                        "more_body": True,
                    }
                )

        async def capture(message: Message) -> None:
            kind = message["type"]
            if state["passed"]:
                await pass_on(message)
                return
            if kind == "http.response.start":
                state["start"] = message
                status = message["status"]
                hdrs = _decode(message.get("headers"))
                keep = store and cache.storable(status, hdrs) is not None
                state["length"] = length = _length(hdrs)
                if length is not None and length > limit:
                    keep = False
                if not keep and not (status >= 500 and cache.sie > 0):
                    await go_through()
                return
            if kind == "http.response.body":
                body = message.get("body", b"")
                if body:
                    state["chunks"].append(body)
                    state["size"] += len(body)
                more = message.get("more_body", False)
                if more and state["length"] is None:
                    # A stream (server-sent events, chunks of unknown
                    # length): each part goes to the client as it comes,
                    # none is stored. A body of a declared Content-Length
                    # (a relayed answer) is whole once that much came.
                    await go_through()
                elif state["size"] > limit:
                    await go_through()
                    await pass_on({"type": "http.response.body", "body": b""})
                return
            # http.response.pathsend, zerocopysend, trailers, ...: the
            # body is not ours to see; send the start, then the message.
            if state["start"] is not None:
                await go_through()
            await pass_on(message)

        try:
            await self.app(scope, receive, capture)
        except Exception as exc:
            if state["passed"] and send is not None:
                raise _RaisedAfterStart(exc) from None
            raise
        start = state["start"]
        if start is None:
            raise RuntimeError("the app returned without starting a response")
        status = start["status"]
        hdrs = _decode(start.get("headers"))
        if state["passed"]:
            return Upstream(status, hdrs, None, SENT)
        # Starlette's SessionMiddleware outside sets its cookie after this
        # layer saw the page whenever the session holds anything.
        private = bool(scope.get("session"))
        return Upstream(status, hdrs, b"".join(state["chunks"]), private=private)
