"""Verdicts, 429 replies and the rate limit headers a rule sends."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, TypeAlias, overload

from .._core import Decision, RateHeaders
from .limiters import _RateInfo
from .request import NS, PROBLEM_TYPE, Request

if TYPE_CHECKING:
    from .rule import Rule


class Reply(NamedTuple):
    """A 429 body: ``Reply(status, body, content_type)``. ``status`` may be
    changed (503 for a maintenance rule, say); stanchion adds the rate
    limit headers and ``Cache-Control: no-store`` itself."""

    status: int
    body: bytes
    content_type: str


class Verdict:
    """What a rule decided for one request.

    ``blocked`` is True only when the request must be refused (never in
    dry run): a 429, or a 403 for a banned client (``ban_status``) or an
    address on the deny list (``reason == "access"``); ``decision`` is
    the limiter's Decision (``None`` when the request could not be
    identified and ``unidentified="deny"``, or was denied by address)."""

    __slots__ = (
        "blocked",
        "decision",
        "info",
        "reason",
        "request",
        "retry_after",
        "rule",
    )

    def __init__(
        self,
        rule: Rule,
        decision: Decision | None,
        info: _RateInfo | None,
        blocked: bool,
        request: Request | None,
        reason: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.rule = rule
        self.decision = decision
        self.info = info
        self.blocked = blocked
        self.request = request
        #: Why a request was refused other than by its rates: ``"access"``
        #: (the deny list), ``"busy"`` (no concurrency slot: 503) or
        #: ``"client busy"`` (none of the client's own: 429); None
        #: otherwise (a ban is ``decision.banned``).
        self.reason = reason
        #: For a ``"busy"`` refusal: when a slot may be free, if known.
        self.retry_after = retry_after

    @property
    def allowed(self) -> bool:
        return not self.blocked

    def headers(self) -> list[tuple[str, str]]:
        """The rate limit headers this verdict adds to the response."""
        return self.rule._render(self, False)

    def raw_headers(self) -> list[tuple[bytes, bytes]]:
        """The same, as ASGI's lower-case byte pairs."""
        return self.rule._render(self, True)

    def extend_headers(self, headers: list[Any], *, raw: bool = False) -> None:
        """Append the same to the list ``headers`` (ASGI byte pairs with
        ``raw``), leaving out the ``X-RateLimit-*`` trio when the list has
        an inner layer's (see :func:`stanchion._adapt.outer_headers`)."""
        render = self.rule._renderer(self)
        if render is None:
            return
        d = self.decision
        if type(d) is Decision:
            if raw:
                render.extend_raw(d, headers)
            else:
                render.extend(d, headers)
            return
        from .._adapt import outer_headers

        pairs: list[Any] = (
            self.rule._render(self, True) if raw else self.rule._render(self, False)
        )
        headers.extend(outer_headers(pairs, headers))

    def reply(self) -> tuple[int, list[tuple[str, str]], bytes]:
        """``(status, headers, body)`` of the 429 response."""
        return self.rule._reply(self)

    def __repr__(self) -> str:
        return f"<Verdict blocked={self.blocked} {self.decision!r}>"


def _ceil_seconds(ns: int) -> int:
    return -(-ns // NS)


def problem_json(
    request: Request | None, decision: Decision | None, status: int = 429
) -> Reply:
    """The default refusal body: RFC 9457 problem details, with the quota
    exceeded type of the IETF rate limit headers draft for a 429.
    ``status`` is 403 for a ban answered so (see ``Rule``'s
    ``ban_status``)."""
    if decision is None:
        detail = "The client could not be identified, so it cannot be served."
    else:
        wait = _ceil_seconds(decision.retry_after_ns)
        again = f"retry in {wait} second{'s' if wait != 1 else ''}."
        if getattr(decision, "banned", False):
            detail = f"Too many requests were refused: this client is banned; {again}"
        else:
            detail = f"Rate limit of {decision.limit} exceeded; {again}"
    return _problem(status, detail)


def _problem(status: int, detail: str) -> Reply:
    body: dict[str, Any] = {"type": PROBLEM_TYPE, "title": "Too Many Requests"}
    if status != 429:
        body = {"type": "about:blank", "title": "Forbidden"}
    body.update(status=status, detail=detail)
    return Reply(status, json.dumps(body).encode(), "application/problem+json")


def _busy_reply(v: Verdict) -> tuple[int, list[tuple[str, str]], bytes]:
    """The 503 (or 429 for a client's own limit) of a request that got no
    concurrency slot in time."""
    wait = max(1, math.ceil(v.retry_after or 1))
    again = f"retry in {wait} second{'s' if wait != 1 else ''}."
    if v.reason == "busy":
        status, title = 503, "Service Unavailable"
        detail = f"The server is busy; {again}"
    else:
        status, title = 429, "Too Many Requests"
        detail = f"Too many requests of this client are in progress; {again}"
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail}
    headers = [
        ("Content-Type", "application/problem+json"),
        ("Cache-Control", "no-store"),
        ("Retry-After", str(wait)),
    ]
    return status, headers, json.dumps(body).encode()


def access_denied() -> Reply:
    """The 403 for an address on the deny list."""
    return _problem(403, "This client's address is not allowed.")


def _sf_string(text: str) -> str:
    """``text`` as an RFC 8941 sf-string (printable ASCII, quoted)."""
    safe = "".join(c if " " <= c <= "~" else "_" for c in text)
    return '"' + safe.replace("\\", "\\\\").replace('"', '\\"') + '"'


ResponseFunc: TypeAlias = Callable[[Request, "Decision | None"], Reply]


class _HeaderParts:
    """The parts of the rate limit headers that never change for one
    (rule, limiter) pair, and their renderer (``_core.RateHeaders``)."""

    __slots__ = ("info", "policy", "render")

    def __init__(
        self,
        info: _RateInfo,
        policy: str,
        names: tuple[str, ...],
        capacities: tuple[int, ...],
        ietf: bool = True,
        x: bool = True,
    ) -> None:
        self.info = info
        self.policy = policy
        # One name per capacity; a lone name answers for every capacity.
        if len(capacities) != len(names):
            capacities = (*capacities, 0)[:1]
        self.render = RateHeaders(policy, names, capacities, ietf, x)

    def py_pairs(self, d: Any) -> list[tuple[str, str]]:
        """What ``render.pairs`` gives, for a decision that is not a
        ``Decision`` (from a limiter object of the user's)."""
        return _py_pairs(self.render, d)

    def py_raw_pairs(self, d: Any) -> list[tuple[bytes, bytes]]:
        """``py_pairs`` as lower-case ASGI byte pairs."""
        return _py_raw_pairs(self.render, d)


def _py_raw_pairs(h: RateHeaders, d: Any) -> list[tuple[bytes, bytes]]:
    """``_py_pairs`` as lower-case ASGI byte pairs."""
    return [
        (k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in _py_pairs(h, d)
    ]


def _py_pairs(h: RateHeaders, d: Any) -> list[tuple[str, str]]:
    """What ``RateHeaders.pairs`` renders, for any object with a
    Decision's fields (a decision from a limiter object of the user's)."""
    limit = d.limit
    remaining = d.remaining
    reset = -(-d.reset_after_ns // NS)
    out: list[tuple[str, str]] = []
    if h.ietf:
        t = reset if d.allowed else -(-d.retry_after_ns // NS)
        name = h.names[0]
        if len(h.names) > 1 and limit in h.capacities:
            name = h.names[h.capacities.index(limit)]
        if h.policy:
            out.append(("RateLimit-Policy", h.policy))
        out.append(("RateLimit", f"{name};r={remaining};t={t}"))
    if h.x:
        out.append(("X-RateLimit-Limit", str(limit)))
        out.append(("X-RateLimit-Remaining", str(remaining)))
        out.append(("X-RateLimit-Reset", str(reset)))
    return out


class _RuleHeaders:
    """The header rendering of :class:`~stanchion.http.Rule` (a base
    class of it, so the rendering sits in one place)."""

    scope: str
    headers_on_allowed: bool
    _send_all: bool
    _send_ietf: bool
    _send_x: bool
    _send_retry: bool
    ban_status: int
    _response: ResponseFunc
    _parts_cache: dict[int, _HeaderParts]
    _fixed_parts: _HeaderParts | None

    # -- headers ---------------------------------------------------------------

    def _parts(self, info: _RateInfo) -> _HeaderParts:
        """The static parts of the headers for one limiter, cached."""
        parts = self._parts_cache.get(id(info))
        if parts is not None and parts.info is info:
            return parts
        windows = info.windows
        if len(windows) <= 1:
            names: tuple[str, ...] = (_sf_string(self.scope),)
        else:
            names = tuple(_sf_string(f"{self.scope}-{w}s") for _, w in windows)
        items = []
        for name, (q, w), cap in zip(names, windows, info.capacities, strict=False):
            item = f"{name};q={q};w={w}"
            if cap != q and getattr(info.limiter, "algorithm", "") == "token_bucket":
                item += f";stanchion-burst={cap}"
            items.append(item)
        parts = _HeaderParts(
            info,
            ", ".join(items),
            names,
            info.capacities,
            self._send_ietf,
            self._send_x,
        )
        if len(self._parts_cache) > 256:
            self._parts_cache.clear()
        self._parts_cache[id(info)] = parts
        return parts

    def _headers(self, v: Verdict) -> list[tuple[str, str]]:
        return self._render(v, False)

    def _raw_headers(self, v: Verdict) -> list[tuple[bytes, bytes]]:
        """``_headers`` as lower-case ASGI byte pairs, built directly."""
        return self._render(v, True)

    def _renderer(self, v: Verdict) -> RateHeaders | None:
        """What renders the rate limit headers of a verdict (None: it
        gets none); ``v.decision`` is then not None."""
        if v.decision is None or v.info is None:
            return None
        if not v.blocked and not self.headers_on_allowed:
            return None
        parts = self._fixed_parts
        if parts is None or parts.info is not v.info:
            parts = self._parts(v.info)
        return parts.render

    @overload
    def _render(self, v: Verdict, raw: Literal[False]) -> list[tuple[str, str]]: ...

    @overload
    def _render(self, v: Verdict, raw: Literal[True]) -> list[tuple[bytes, bytes]]: ...

    def _render(self, v: Verdict, raw: bool) -> list[Any]:
        """The rate limit headers of a verdict, the one renderer: as str
        pairs (WSGI, Flask, Django, falcon) or, with ``raw``, as ASGI's
        lower-case byte pairs, from the same parts and numbers."""
        render = self._renderer(v)
        if render is None:
            return []
        d = v.decision
        if type(d) is not Decision:  # from a limiter object of the user's
            return _py_raw_pairs(render, d) if raw else _py_pairs(render, d)
        return render.raw_pairs(d) if raw else render.pairs(d)

    def _reply(self, v: Verdict) -> tuple[int, list[tuple[str, str]], bytes]:
        d = v.decision
        banned = d is not None and getattr(d, "banned", False)
        if v.reason == "access":
            reply = access_denied()
        elif v.reason is not None:  # no concurrency slot in time
            return _busy_reply(v)
        elif self._response is problem_json:
            reply = problem_json(v.request, d, self.ban_status if banned else 429)
        else:
            reply = self._response(v.request, d)  # type: ignore[arg-type]
            if not isinstance(reply, Reply):
                reply = Reply(*reply)
            if banned and reply.status == 429:
                reply = reply._replace(status=self.ban_status)
        headers = [
            ("Content-Type", reply.content_type),
            ("Cache-Control", "no-store"),
        ]
        if d is not None:
            # A ban always says when it ends, whatever ``headers`` says
            # (as a busy refusal always does).
            if self._send_retry or banned:
                headers.append(
                    ("Retry-After", str(max(1, _ceil_seconds(d.retry_after_ns))))
                )
            headers.extend(self._headers(v))
        body = reply.body if isinstance(reply.body, bytes) else str(reply.body).encode()
        return reply.status, headers, body
