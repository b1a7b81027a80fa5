"""Rate limiting for Django views: ``RateLimitMiddleware`` and the
``@ratelimit`` decorator.

Both also apply a concurrency limit (``STANCHION["CONCURRENCY"]`` for
the middleware, ``@ratelimit(..., concurrency=N, queue=Q)`` for a view):
a request the rate let through takes a slot, waiting in the queue if
none is free (``await``-ed under ASGI, never blocking the loop), and is
answered 503 (429 per client) with ``Retry-After`` if none frees up in
time. The slot is given back when the response is built, or, for a
streamed response (``StreamingHttpResponse``, ``FileResponse``), when
it is closed (sent, or the client went away).
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable, ItemsView, Iterator
from typing import Any, TypeVar

from asgiref.sync import iscoroutinefunction
from django.core.exceptions import ImproperlyConfigured, MiddlewareNotUsed
from django.http import HttpRequest, HttpResponse

from .._adapt import decide, header_from_environ, outer_headers, route_scope
from .._adapt_slots import Holds, lane_of, needs_slot
from .._core import Decision, RateHeaders
from ..http import Request, Rule, SettingError, Verdict
from .middleware import SyncAndAsyncMiddleware
from .settings import stanchion_settings

F = TypeVar("F", bound=Callable[..., Any])


class DjangoRequest(Request):
    """The rules' view of a Django ``HttpRequest``."""

    __slots__ = ("_async_user",)

    def __init__(self, request: HttpRequest, user: Any = None) -> None:
        super().__init__(request.method or "GET", request.path, None, request)
        self._async_user = user

    def _header(self, name: str) -> str | None:
        return header_from_environ(self.native.META, name)

    @property
    def user(self) -> Any:
        if self._async_user is not None:
            return self._async_user
        return getattr(self.native, "user", None)


def _needs_user(rule: Rule) -> bool:
    return rule._key is not None and getattr(rule._key, "needs_user", False)


async def _view_of(request: HttpRequest, rule: Rule) -> DjangoRequest:
    """In async mode the user must be loaded with ``auser()`` (the lazy
    ``request.user`` would touch the database synchronously)."""
    user = None
    if _needs_user(rule) and hasattr(request, "auser"):
        user = await request.auser()
    return DjangoRequest(request, user)


def _check(rule: Rule, request: HttpRequest) -> Verdict | None:
    return decide(
        rule,
        request.method or "GET",
        request.path,
        request.META.get("REMOTE_ADDR"),
        DjangoRequest,
        request,
    )


async def _acheck(rule: Rule, request: HttpRequest) -> Verdict | None:
    if rule.simple_in_c:  # never waits: no coroutine
        return _check(rule, request)
    if rule.simple:
        return await rule.acheck_simple(
            request.method or "GET", request.path, request.META.get("REMOTE_ADDR")
        )
    return await rule.acheck(
        await _view_of(request, rule), request.META.get("REMOTE_ADDR")
    )


def _response(verdict: Verdict) -> HttpResponse:
    status, headers, body = verdict.reply()
    response = HttpResponse(body, status=status)
    for k, v in headers:
        response[k] = v
    return response


def _add_headers(response: HttpResponse, verdict: Verdict) -> None:
    render = verdict.rule._renderer(verdict)
    if render is None:
        return
    d = verdict.decision
    if type(d) is Decision:
        _render_headers(response, render, d)
    else:  # a decision of the user's limiter object
        _add_headers_slow(response, verdict.headers())


class _StoreItems(ItemsView[str, str]):
    """``response.items()`` of a response stanchion added headers to:
    the same view of the same (name, value) pairs, iterated straight off
    Django's header store (whose values are those pairs) rather than
    through one ``headers[name]`` lookup per header, which is what
    Django's handlers pay for every header they send."""

    __slots__ = ()

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self._mapping._store.values())  # type: ignore[attr-defined]


def _render_headers(response: HttpResponse, render: RateHeaders, d: Decision) -> None:
    # Our names and values are plain ASCII made here, so they skip
    # Django's per-header charset checks when its store is at hand: the
    # C renderer writes them there, by the rule of outer_headers; and the
    # handler reads them back through _StoreItems.
    headers = response.headers
    store = getattr(headers, "_store", None)
    if type(store) is dict:
        render.into_store(d, store)
        response.items = functools.partial(_StoreItems, headers)
    else:
        _add_headers_slow(response, render.pairs(d))


def _has_x_limit(response: HttpResponse) -> bool:
    return bool(response.has_header("X-RateLimit-Limit"))


def _add_headers_slow(response: HttpResponse, headers: list[tuple[str, str]]) -> None:
    for k, v in outer_headers(headers, response, _has_x_limit):
        if k[0] != "X" and k in response.headers:
            v = f"{response.headers[k]}, {v}"
        response.headers[k] = v


# -- concurrency slots ------------------------------------------------------------


def _wants_slot(rule: Rule, verdict: Verdict | None, request: HttpRequest) -> bool:
    """Whether a request ``rule`` let through takes one of its slots."""
    meta = request.META
    return needs_slot(
        rule,
        verdict,
        request.method or "GET",
        request.path,
        meta.get("REMOTE_ADDR"),
        lambda name: header_from_environ(meta, name),
        lambda: DjangoRequest(request),
    )


def _slot_key(rule: Rule, request: HttpRequest) -> str | None:
    meta = request.META
    return rule.slot_key(
        meta.get("REMOTE_ADDR"), lambda name: header_from_environ(meta, name)
    )


def _take(rule: Rule, request: HttpRequest) -> Holds | HttpResponse:
    """A slot of ``rule`` for the request (waiting in its queue), or the
    response refusing it (503, or 429 per client)."""
    holds = Holds()
    lane = lane_of(rule, lambda: DjangoRequest(request))
    busy = holds.take_all([rule], [_slot_key(rule, request)], [lane])
    return holds if busy is None else _response(busy)


async def _atake(rule: Rule, request: HttpRequest) -> Holds | HttpResponse:
    """:func:`_take`, awaiting the queue."""
    holds = Holds()
    lane = lane_of(rule, lambda: DjangoRequest(request))
    busy = await holds.atake_all([rule], [_slot_key(rule, request)], [lane])
    return holds if busy is None else _response(busy)


def _keep_until_sent(response: Any, holds: Holds) -> bool:
    """For a streamed response: give ``holds`` back when it is closed
    (Django's handlers close every response once sent, or once the
    client went away), or, if an outer layer dropped it unclosed, when
    it is collected; True then. False for any other response: its
    content is built, the caller gives the slots back now."""
    if not getattr(response, "streaming", False):
        return False
    closers = getattr(response, "_resource_closers", None)
    if closers is not None:
        closers.append(holds.release)
    weakref.finalize(response, holds.release)
    return True


class RateLimitMiddleware(SyncAndAsyncMiddleware):
    """``STANCHION["LIMIT"]`` on every request (except exemptions), and
    ``STANCHION["CONCURRENCY"]`` (``"QUEUE"``, ``"QUEUE_TIMEOUT"``,
    ``"CONCURRENCY_PER"``) if set.

    Sync and async capable: under ASGI it awaits ``limiter.ahit`` and
    never blocks the loop; under WSGI it calls ``hit``."""

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        super().__init__(get_response)
        try:
            conf = stanchion_settings()
        except SettingError as exc:
            raise ImproperlyConfigured(str(exc)) from None
        if not conf.enabled or (conf.limit is None and conf.concurrency is None):
            raise MiddlewareNotUsed(
                "neither STANCHION['LIMIT'] nor STANCHION['CONCURRENCY'] is set"
            )
        self.rule = conf.probe

    def __call__(self, request: HttpRequest) -> Any:
        if self.async_mode:
            return self.__acall__(request)
        rule = self.rule
        gate = rule.gate
        if gate is not None:
            # A known client's hit is one C call; its headers are
            # rendered in C into the response's header store.
            peer = request.META.get("REMOTE_ADDR")
            d = gate(peer)
            if d:
                if rule.slots is not None:
                    return self._held(request, None, d)
                response = self.get_response(request)
                render = rule.allowed_render
                if render is not None:
                    _render_headers(response, render, d)
                return response
            verdict = _check(rule, request) if d is None else rule.refused(peer, d)
        else:
            verdict = _check(rule, request)
        if rule.slots is not None:
            return self._held(request, verdict, None)
        if verdict is None:
            return self.get_response(request)
        if verdict.blocked:
            return _response(verdict)
        response = self.get_response(request)
        _add_headers(response, verdict)
        return response

    def _held(
        self, request: HttpRequest, verdict: Verdict | None, d: Decision | None
    ) -> Any:
        """``__call__`` for a rule with a concurrency limit: the verdict
        (or the gate's allowing Decision ``d``) answered, holding a slot
        while the response is made (and sent, if streamed)."""
        rule = self.rule
        if verdict is not None and verdict.blocked:
            return _response(verdict)
        if d is None and not _wants_slot(rule, verdict, request):
            response = self.get_response(request)
        else:
            holds = _take(rule, request)
            if not isinstance(holds, Holds):
                return holds
            try:
                response = self.get_response(request)
            except BaseException:
                holds.release()
                raise
            if not _keep_until_sent(response, holds):
                holds.release()
        _finish(response, rule, verdict, d)
        return response

    async def _aheld(
        self, request: HttpRequest, verdict: Verdict | None, d: Decision | None
    ) -> Any:
        """:meth:`_held` under ASGI: waits for a slot without blocking."""
        rule = self.rule
        if verdict is not None and verdict.blocked:
            return _response(verdict)
        if d is None and not _wants_slot(rule, verdict, request):
            response = await self.get_response(request)
        else:
            holds = await _atake(rule, request)
            if not isinstance(holds, Holds):
                return holds
            try:
                response = await self.get_response(request)
            except BaseException:
                await holds.arelease()
                raise
            if not _keep_until_sent(response, holds):
                await holds.arelease()
        _finish(response, rule, verdict, d)
        return response

    async def __acall__(self, request: HttpRequest) -> Any:
        rule = self.rule
        gate = rule.gate
        if gate is not None:  # as __call__: the C limiter never waits
            peer = request.META.get("REMOTE_ADDR")
            d = gate(peer)
            if d:
                if rule.slots is not None:
                    return await self._aheld(request, None, d)
                response = await self.get_response(request)
                render = rule.allowed_render
                if render is not None:
                    _render_headers(response, render, d)
                return response
            verdict = _check(rule, request) if d is None else rule.refused(peer, d)
        else:
            verdict = await _acheck(rule, request)
        if rule.slots is not None:
            return await self._aheld(request, verdict, None)
        if verdict is None:
            return await self.get_response(request)
        if verdict.blocked:
            return _response(verdict)
        response = await self.get_response(request)
        _add_headers(response, verdict)
        return response


def _finish(
    response: Any, rule: Rule, verdict: Verdict | None, d: Decision | None
) -> None:
    """The allowed request's rate limit headers on its ``response``: those
    of the Decision ``d`` of ``rule.gate``, or the verdict's."""
    if d is not None:
        render = rule.allowed_render
        if render is not None:
            _render_headers(response, render, d)
    elif verdict is not None:
        _add_headers(response, verdict)


def _before_view(
    request: HttpRequest, verdict: Verdict | None, block: bool
) -> HttpResponse | None:
    """What ``@ratelimit`` does before the view, sync or async: sets
    ``request.limited``; the 429 to answer instead of the view, if any."""
    if verdict is None:
        return None
    limited = verdict.blocked or (
        verdict.decision is not None and not verdict.decision.allowed
    )
    request.limited = limited or getattr(request, "limited", False)
    if verdict.blocked and block:
        return _response(verdict)
    return None


def _is_async(func: Callable[..., Any]) -> bool:
    if iscoroutinefunction(func):
        return True
    # method_decorator hands us partial(bound async method) wrapped to look
    # like the method; look through both.
    inner = getattr(func, "__wrapped__", None)
    if inner is not None and iscoroutinefunction(inner):
        return True
    target = getattr(func, "func", None)
    return target is not None and iscoroutinefunction(target)


class ratelimit:
    """``@ratelimit("5/minute", scope="login", key=..., block=True)``.

    ``scope`` names the buckets (default: the view's module and qualified
    name, never its repr); views sharing a scope and rate share limits.
    ``block=False`` never answers 429: the view runs with
    ``request.limited`` set to True when it would have been limited.
    Works on sync and ``async def`` views and, through
    ``method_decorator``, on class-based views. Other keywords are
    :class:`stanchion.http.Rule` settings on top of ``STANCHION``.
    """

    def __init__(
        self,
        limit: Any,
        *,
        scope: str | None = None,
        key: Any = None,
        block: bool = True,
        **settings: Any,
    ) -> None:
        if not isinstance(block, bool):
            raise SettingError("block", f"must be True or False, got {block!r}")
        self.limit = limit
        self.scope = scope
        self.block = block
        self.settings = settings
        if key is not None:
            self.settings["key"] = key
        self._rules: dict[str, Rule] = {}
        # Checked now (import time), against default settings; the rule
        # itself is built on first use, when Django's settings are ready.
        Rule(limit, scope=scope or "check", **{k: v for k, v in settings.items()})

    def _rule(self, scope: str) -> Rule:
        rule = self._rules.get(scope)
        if rule is None:
            conf = stanchion_settings()
            kw = {**conf.rule_kw, **self.settings}
            if any(
                k in self.settings
                for k in ("algorithm", "storage", "max_keys", "clock", "penalty")
            ):
                kw.pop("limiters", None)
            rule = self._rules[scope] = Rule(self.limit, scope=scope, **kw)
        return rule

    def __call__(self, view: F) -> F:
        scope = self.scope or route_scope(view)
        block = self.block

        if _is_async(view):

            @functools.wraps(view)
            async def async_view(
                request: HttpRequest, *args: Any, **kwargs: Any
            ) -> Any:
                rule = self._rule(scope)
                verdict = await _acheck(rule, request)
                refused = _before_view(request, verdict, block)
                if refused is not None:
                    return refused
                if rule.slots is not None:
                    return await _aview_held(rule, verdict, request, view, args, kwargs)
                response = await view(request, *args, **kwargs)
                if verdict is not None:
                    _add_headers(response, verdict)
                return response

            return async_view  # type: ignore[return-value]

        @functools.wraps(view)
        def sync_view(request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
            rule = self._rule(scope)
            verdict = _check(rule, request)
            refused = _before_view(request, verdict, block)
            if refused is not None:
                return refused
            if rule.slots is not None:
                return _view_held(rule, verdict, request, view, args, kwargs)
            response = view(request, *args, **kwargs)
            if verdict is not None:
                _add_headers(response, verdict)
            return response

        return sync_view  # type: ignore[return-value]


def _view_held(
    rule: Rule,
    verdict: Verdict | None,
    request: HttpRequest,
    view: Callable[..., Any],
    args: Any,
    kwargs: Any,
) -> Any:
    """A view under ``@ratelimit`` with a concurrency limit, run holding
    one of its slots (unless exempt). With ``block=False`` a request over
    the rate runs too: it takes a slot all the same."""
    if verdict is None and not _wants_slot(rule, None, request):
        response = view(request, *args, **kwargs)
    else:
        holds = _take(rule, request)
        if not isinstance(holds, Holds):
            return holds
        try:
            response = view(request, *args, **kwargs)
        except BaseException:
            holds.release()
            raise
        if not _keep_until_sent(response, holds):
            holds.release()
    if verdict is not None:
        _add_headers(response, verdict)
    return response


async def _aview_held(
    rule: Rule,
    verdict: Verdict | None,
    request: HttpRequest,
    view: Callable[..., Any],
    args: Any,
    kwargs: Any,
) -> Any:
    """:func:`_view_held` for an ``async def`` view."""
    if verdict is None and not _wants_slot(rule, None, request):
        response = await view(request, *args, **kwargs)
    else:
        holds = await _atake(rule, request)
        if not isinstance(holds, Holds):
            return holds
        try:
            response = await view(request, *args, **kwargs)
        except BaseException:
            await holds.arelease()
            raise
        if not _keep_until_sent(response, holds):
            await holds.arelease()
    if verdict is not None:
        _add_headers(response, verdict)
    return response
