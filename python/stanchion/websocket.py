"""Rate limits for ASGI WebSockets: messages and connection attempts.

A :class:`WebSocketLimit` limits, on one WebSocket endpoint (or every one
of an app):

- the messages a client sends on one connection (``messages=``), kept in
  this process (a connection lives in one process) and dropped when the
  connection ends;
- the messages a client sends across all its connections
  (``per_client=``), keyed on the client as the HTTP rules key it (the
  socket peer, or ``key=``; ``trusted_proxies=`` for X-Forwarded-For),
  in any storage (in process, shared memory, Redis, Memcached);
- the connection attempts of a client (``connections=``): a refused
  handshake is answered 429 with ``Retry-After`` through the ASGI
  ``websocket.http.response`` extension when the server offers it, else
  closed before accept (the server answers 403).

A message over a limit either closes the connection with code 1008
(policy violation) and ``reason`` (``action="close"``, the default), or
is dropped, unseen by the app (``action="drop"``), the client then told
so in an error frame when ``error_frame`` is set.

Two ways to use it::

    from stanchion.asgi import RateLimitMiddleware
    from stanchion.websocket import WebSocketLimit

    ws = WebSocketLimit("10/second", per_client="50/second",
                        connections="20/minute")
    app = RateLimitMiddleware(app, limit="100/minute", websocket=ws)

or, in FastAPI, per route: ``dependencies=[Depends(WebSocketRateLimit(...))]``
(:class:`stanchion.fastapi.WebSocketRateLimit`).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from ._core import Decision
from ._limiter import Limiter, RateLimiter
from .http import ClientAddress, LimiterCache, Request, Rule, SettingError, Verdict
from .http.request import RateSpec, log
from .http.rule import _Pending

__all__ = ["CLOSE_POLICY_VIOLATION", "WebSocketLimit", "WebSocketRequest"]

Scope = Any
Message = Any
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

#: The close code of a connection closed over a limit (RFC 6455, 7.4.1).
CLOSE_POLICY_VIOLATION = 1008
#: A close frame's reason is at most 123 bytes (a control frame carries
#: 125, two of them the code).
_MAX_REASON = 123
#: The ASGI extension that lets an app answer a handshake with HTTP.
_DENIAL = "websocket.http.response"


class WebSocketRequest(Request):
    """The rules' view of an ASGI websocket scope (``native`` is the
    scope); its method is ``GET``, the handshake's."""

    __slots__ = ()

    def __init__(self, scope: Scope) -> None:
        super().__init__("GET", scope["path"], None, scope)

    def _header(self, name: str) -> str | None:
        want = name.encode("latin-1")
        found = [v for k, v in self.native.get("headers", ()) if k == want]
        if not found:
            return None
        return b", ".join(found).decode("latin-1")

    @property
    def user(self) -> Any:
        return self.native.get("user")


def _peer(scope: Scope) -> str | None:
    client = scope.get("client")
    return client[0] if client else None


ErrorFrame = bool | str | bytes | Callable[[Decision | None], "str | bytes"]


class WebSocketLimit:
    """Limits on the messages and connections of ASGI WebSocket clients.

    ``messages``: rate of the messages one connection may send
    (``"10/second"``); ``per_client``: rate of the messages one client
    may send over all its connections; ``connections``: rate of one
    client's connection attempts. Any may be None (not limited); at
    least one is needed. Each is a rate string or list of rates.

    ``action``: ``"close"`` (close the connection with code 1008 and
    ``reason``) or ``"drop"`` (the app never sees the message).
    ``error_frame``: with ``"drop"``, tell the client: True sends a JSON
    text frame ``{"error": reason, "retry_after": seconds}``; a str or
    bytes is sent as a text or binary frame; a function of the Decision
    (None when the client could not be identified) gives either.

    ``key``, ``trusted_proxies``, ``forwarded_header``, ``ipv6_prefix``,
    ``unidentified``, ``allow``, ``deny`` are the HTTP
    :class:`~stanchion.http.Rule` settings, applied to the handshake
    request (key functions get a :class:`WebSocketRequest`).
    ``exempt_paths`` (exact, or a prefix ending in ``*``): WebSockets on
    these paths are not limited at all.
    ``algorithm``, ``storage``, ``max_keys``, ``clock`` choose the
    limiters of ``per_client`` and ``connections`` (``messages`` always
    lives in this process, bounded by ``max_keys`` connections).
    ``dry_run``: decide and log, never close, drop nor refuse (counted
    in ``dry_run_denials``). ``scope`` names the limits (bucket keys and
    the 429's ``RateLimit-Policy``).
    """

    def __init__(
        self,
        messages: RateSpec | None = None,
        *,
        per_client: RateSpec | None = None,
        connections: RateSpec | None = None,
        action: str = "close",
        reason: str = "rate limit exceeded",
        error_frame: ErrorFrame = False,
        key: Callable[[Request], Any] | None = None,
        trusted_proxies: Iterable[str] | ClientAddress = (),
        forwarded_header: str = "X-Forwarded-For",
        ipv6_prefix: int = 64,
        unidentified: str = "deny",
        allow: Iterable[str] | str = (),
        deny: Iterable[str] | str = (),
        exempt_paths: Iterable[str] = (),
        algorithm: str = "token_bucket",
        storage: Any = None,
        max_keys: int = 1_000_000,
        clock: Callable[[], float] | None = None,
        dry_run: bool = False,
        scope: str = "websocket",
    ) -> None:
        if messages is None and per_client is None and connections is None:
            raise SettingError(
                "messages", "give messages=, per_client= or connections= (a rate)"
            )
        if isinstance(messages, RateLimiter):
            raise SettingError(
                "messages",
                "a rate such as '10/second': a connection's budget lives in "
                "this process (give limiter objects to per_client=)",
            )
        if action not in ("close", "drop"):
            raise SettingError("action", f"must be 'close' or 'drop', got {action!r}")
        if not isinstance(reason, str):
            raise SettingError("reason", f"must be a str, got {reason!r}")
        if len(reason.encode("utf-8")) > _MAX_REASON:
            raise SettingError(
                "reason", f"a close reason is at most {_MAX_REASON} bytes in UTF-8"
            )
        if not (isinstance(error_frame, (bool, str, bytes)) or callable(error_frame)):
            raise SettingError(
                "error_frame",
                f"must be True/False, a str, bytes or a function, got {error_frame!r}",
            )
        if error_frame is not False and action != "drop":
            raise SettingError("error_frame", "applies to action='drop'")
        if not isinstance(dry_run, bool):
            raise SettingError("dry_run", f"must be True or False, got {dry_run!r}")
        if not isinstance(scope, str) or not scope:
            raise SettingError("scope", f"must be a non-empty str, got {scope!r}")
        self.action = action
        self.reason = reason
        self.error_frame = error_frame
        self.dry_run = dry_run
        self.scope = scope
        self._dry_denials = 0
        if unidentified not in ("deny", "allow", "share"):
            raise SettingError(
                "unidentified",
                f"must be 'deny', 'allow' or 'share', got {unidentified!r}",
            )
        if per_client is None and connections is None:
            for name, value in (("key", key), ("allow", allow), ("deny", deny)):
                if value:
                    raise SettingError(
                        name, "applies to per_client= or connections= (a client's)"
                    )
        if not isinstance(trusted_proxies, ClientAddress):
            trusted_proxies = ClientAddress(
                trusted_proxies, header=forwarded_header, ipv6_prefix=ipv6_prefix
            )
        limiters = LimiterCache(
            algorithm=algorithm, storage=storage, max_keys=max_keys, clock=clock
        )
        common: dict[str, Any] = {
            "key": key,
            "trusted_proxies": trusted_proxies,
            "unidentified": unidentified,
            "allow": allow,
            "deny": deny,
            "limiters": limiters,
            "dry_run": dry_run,
        }
        #: The rule of connection attempts (None: not limited).
        self.connect_rule = (
            Rule(connections, scope=f"{scope}.connect", **common)
            if connections is not None
            else None
        )
        #: The rule of a client's messages over its connections.
        self.client_rule = (
            Rule(per_client, scope=f"{scope}.messages", **common)
            if per_client is not None
            else None
        )
        #: The in-process limiter of each connection's messages, keyed
        #: by a connection number (reset when the connection ends).
        self.connection_limiter = (
            Limiter(messages, algorithm=algorithm, max_keys=max_keys, clock=clock)
            if messages is not None
            else None
        )
        self._numbers = itertools.count()
        # Parsed and checked as the HTTP rules do (a throwaway rule).
        exempt = Rule("1/second", exempt_paths=exempt_paths)
        self._exempt_exact = exempt._exempt_exact
        self._exempt_prefixes = exempt._exempt_prefixes

    def exempt(self, scope: Scope) -> bool:
        """Whether the websocket ``scope`` is on an exempt path."""
        path = scope["path"]
        return path in self._exempt_exact or bool(
            self._exempt_prefixes and path.startswith(self._exempt_prefixes)
        )

    @property
    def dry_run_denials(self) -> int:
        """Would-be closes, drops and refusals in dry run."""
        n = self._dry_denials
        for rule in (self.connect_rule, self.client_rule):
            if rule is not None:
                n += rule.dry_run_denials
        return n

    # -- the handshake -----------------------------------------------------------

    async def admit(
        self, scope: Scope, request: Request | None = None
    ) -> Verdict | None:
        """The verdict on a connection attempt (None: not limited, or
        no ``connections`` limit); refuse it when ``blocked``."""
        rule = self.connect_rule
        if rule is None:
            return None
        if request is None:
            request = WebSocketRequest(scope)
        return await rule.acheck(request, _peer(scope))

    async def refuse(self, scope: Scope, verdict: Verdict, send: Send) -> None:
        """Refuse the handshake: the verdict's 429 (or 403) reply through
        the ``websocket.http.response`` extension when the server offers
        it, else ``websocket.close`` before accept (the server answers
        403)."""
        if _DENIAL in (scope.get("extensions") or {}):
            status, headers, body = verdict.reply()
            raw = [
                (k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers
            ]
            raw.append((b"content-length", str(len(body)).encode()))
            await send(
                {
                    "type": "websocket.http.response.start",
                    "status": status,
                    "headers": raw,
                }
            )
            await send({"type": "websocket.http.response.body", "body": body})
        else:
            await send(
                {
                    "type": "websocket.close",
                    "code": CLOSE_POLICY_VIOLATION,
                    "reason": self.reason,
                }
            )

    # -- a connection --------------------------------------------------------------

    async def connection(
        self, scope: Scope, receive: Receive, send: Send, request: Request | None = None
    ) -> Connection:
        """A :class:`Connection` whose ``receive`` and ``send`` the app
        uses in place of the server's; call its ``end()`` when the app
        returns."""
        if request is None:
            request = WebSocketRequest(scope)
        plan: Any = None
        rule = self.client_rule
        if rule is not None:
            peer = _peer(scope)
            plan = (
                await rule._aplan_funcs(request, peer)
                if rule._has_funcs
                else rule._plan_request(request, peer)
            )
        return Connection(self, request, plan, receive, send)

    async def __call__(
        self, app: Any, scope: Scope, receive: Receive, send: Send
    ) -> None:
        """Run the ASGI ``app`` on a websocket ``scope`` under these limits."""
        if self.exempt(scope):
            await app(scope, receive, send)
            return
        request = WebSocketRequest(scope)
        verdict = await self.admit(scope, request)
        if verdict is not None and verdict.blocked:
            message = await receive()  # websocket.connect
            if message["type"] == "websocket.connect":
                await self.refuse(scope, verdict, send)
            return
        conn = await self.connection(scope, receive, send, request)
        try:
            await app(scope, conn.receive, conn.send)
        finally:
            conn.end()

    def _frame(self, d: Decision | None) -> Message | None:
        """The error frame of a dropped message, or None."""
        spec = self.error_frame
        if spec is False:
            return None
        if spec is True:
            body: str | bytes = json.dumps(
                {
                    "error": self.reason,
                    "retry_after": round(d.retry_after, 3) if d is not None else None,
                }
            )
        elif isinstance(spec, (str, bytes)):
            body = spec
        else:
            assert callable(spec)
            body = spec(d)
        if isinstance(body, bytes):
            return {"type": "websocket.send", "bytes": body}
        if isinstance(body, str):
            return {"type": "websocket.send", "text": body}
        raise TypeError(
            f"error_frame() must return str or bytes, not {type(body).__name__}"
        )


class Connection:
    """One WebSocket connection under a :class:`WebSocketLimit`: its
    ``receive`` checks each client message against the limits; its
    ``send`` passes the app's messages on, and swallows them once the
    limit closed the connection (the client is gone for the app)."""

    __slots__ = (
        "_fast",
        "_number",
        "_per_conn",
        "_plan",
        "_receive",
        "_send",
        "closed",
        "limit",
        "request",
    )

    def __init__(
        self,
        limit: WebSocketLimit,
        request: Request,
        plan: Any,
        receive: Receive,
        send: Send,
    ) -> None:
        self.limit = limit
        self.request = request
        self._plan: _Pending | Verdict | None = plan
        self._receive = receive
        self._send = send
        #: True once the limit closed the connection (or the app did).
        self.closed = False
        self._per_conn = limit.connection_limiter
        self._number = str(next(limit._numbers)) if self._per_conn is not None else ""
        #: The client's hit when it is one C call (the in-process limiter,
        #: no dry-run bans): (limiter, key, cost); else None.
        self._fast: tuple[Limiter, str | bytes, int] | None = None
        rule = limit.client_rule
        if (
            isinstance(plan, tuple)
            and type(plan[0].limiter) is Limiter
            and rule is not None
            and rule._dry_bans is None
        ):
            self._fast = (plan[0].limiter, plan[1], plan[2])

    async def receive(self) -> Message:
        while True:
            message = await self._receive()
            if message["type"] != "websocket.receive" or self.closed:
                return message
            # The connection's limit first (a refused message spends
            # nothing of the client's); each hit on the in-process
            # limiter is one C call, awaited nowhere.
            per_conn = self._per_conn
            if per_conn is not None:
                d: Decision | None = per_conn.hit(self._number)
                if d is not None and not d.allowed and self._refused_by_connection():
                    if await self._over(d):
                        return _closed()
                    continue
            fast = self._fast
            if fast is not None:
                d = fast[0].hit(fast[1], fast[2])
                if d.allowed:
                    return message
                assert isinstance(self._plan, tuple)
                rule = self.limit.client_rule
                assert rule is not None
                verdict = rule._conclude(self._plan, d, self.request)
                d, refused = verdict.decision, verdict.blocked
            elif self._plan is None:
                return message
            else:
                d, refused = await self._check_client()
            if not refused:
                return message
            if await self._over(d):
                return _closed()

    async def send(self, message: Message) -> None:
        if self.closed:
            return
        if message["type"] == "websocket.close":
            self.closed = True
        await self._send(message)

    def _refused_by_connection(self) -> bool:
        """Whether a message over the connection's limit is refused (not
        in dry run, where it is logged and counted)."""
        limit = self.limit
        if not limit.dry_run:
            return True
        limit._dry_denials += 1
        log.info(
            "stanchion dry run: would have %s a websocket message "
            "(scope %r, connection limit)",
            "closed on" if limit.action == "close" else "dropped",
            limit.scope,
        )
        return False

    async def _over(self, d: Decision | None) -> bool:
        """Act on a refused message: close the connection (True), or drop
        the message, telling the client if so configured (False)."""
        limit = self.limit
        if limit.action == "close":
            self.closed = True
            await self._send(
                {
                    "type": "websocket.close",
                    "code": CLOSE_POLICY_VIOLATION,
                    "reason": limit.reason,
                }
            )
            return True
        frame = limit._frame(d)
        if frame is not None:
            await self._send(frame)
        return False

    async def _check_client(self) -> tuple[Decision | None, bool]:
        """``(decision, refused)`` of the client's limit for one message,
        awaiting a shared storage."""
        plan = self._plan
        if isinstance(plan, Verdict):  # decided once: unidentified, denied
            return plan.decision, plan.blocked
        assert plan is not None
        rule = self.limit.client_rule
        assert rule is not None
        if rule._dry_bans is not None:
            d = await rule._adry_hit(plan)
        else:
            lim = plan[0].limiter
            d = (
                lim.hit(plan[1], plan[2])
                if type(lim) is Limiter
                else await lim.ahit(plan[1], plan[2])
            )
            if d.allowed:
                return d, False
        verdict = rule._conclude(plan, d, self.request)
        return verdict.decision, verdict.blocked

    def end(self) -> None:
        """Forget this connection's own message budget."""
        if self._per_conn is not None:
            self._per_conn.reset(self._number)


def _closed() -> Message:
    """What the app receives once the limit closed its connection."""
    return {"type": "websocket.disconnect", "code": CLOSE_POLICY_VIOLATION}
