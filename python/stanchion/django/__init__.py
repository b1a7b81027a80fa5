"""Rate limiting for Django.

Settings (all optional) in one dict::

    STANCHION = {
        "LIMIT": "100/minute",             # the middleware's limit, every request
        "KEY": None,                       # function or dotted path: request -> identity
        "TRUSTED_PROXIES": ["10.0.0.0/8"],
        "FORWARDED_HEADER": "X-Forwarded-For",
        "HEADERS": ["ratelimit", "x-ratelimit", "retry-after"],
        "HEADERS_ON_ALLOWED": True,
        "DRY_RUN": False,
        "EXEMPT_PATHS": ["/health", "/static/*"],
        "EXEMPT_METHODS": [],
        "UNIDENTIFIED": "deny",
        "ALGORITHM": "token_bucket",
        "MAX_KEYS": 1_000_000,
        "STORAGE_URL": None,               # or "redis://..."
        "ENABLED": True,
    }

``MIDDLEWARE = [..., "stanchion.django.RateLimitMiddleware"]`` applies
``LIMIT`` to every request; it is sync and async capable (no thread hop
under ASGI). ``@ratelimit("5/minute", scope="login")`` limits one view
(function views, ``async def`` views, and class-based views through
``method_decorator``). Add ``"stanchion.django"`` to ``INSTALLED_APPS``
for the system check (``manage.py check``) of these settings; the
middleware and decorators also refuse bad settings when they are built,
at startup.

``CACHES = {"default": {"BACKEND": "stanchion.django.CacheBackend"}}`` is
a Django cache backend on stanchion's C cache (see
:mod:`stanchion.django.cache`).
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from typing import Any, TypeVar

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.conf import settings as django_settings
from django.core import checks
from django.core.exceptions import ImproperlyConfigured, MiddlewareNotUsed
from django.http import HttpRequest, HttpResponse
from django.utils.module_loading import import_string

from ..http import LimiterCache, Request, Rule, SettingError, Verdict
from ..wsgi import header_from_environ
from .cache import CacheBackend

__all__ = [
    "CacheBackend",
    "CacheMiddleware",
    "DjangoRequest",
    "RateLimitMiddleware",
    "cache_response",
    "check_settings",
    "ratelimit",
    "stanchion_settings",
]

F = TypeVar("F", bound=Callable[..., Any])

# STANCHION key -> Rule keyword
_RULE_KEYS = {
    "KEY": "key",
    "TRUSTED_PROXIES": "trusted_proxies",
    "FORWARDED_HEADER": "forwarded_header",
    "HEADERS": "headers",
    "HEADERS_ON_ALLOWED": "headers_on_allowed",
    "DRY_RUN": "dry_run",
    "EXEMPT_PATHS": "exempt_paths",
    "EXEMPT_METHODS": "exempt_methods",
    "UNIDENTIFIED": "unidentified",
}
_CACHE_KEYS = {"ALGORITHM": "algorithm", "MAX_KEYS": "max_keys"}
_KNOWN = {*_RULE_KEYS, *_CACHE_KEYS, "LIMIT", "STORAGE_URL", "ENABLED"}
_NAMES = {
    **{v: f"STANCHION[{k!r}]" for k, v in _RULE_KEYS.items()},
    "limit": "STANCHION['LIMIT']",
    "algorithm/max_keys": "STANCHION['ALGORITHM'] / STANCHION['MAX_KEYS']",
}


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
    if rule.simple:
        return rule.check_simple(
            request.method or "GET", request.path, request.META.get("REMOTE_ADDR")
        )
    return rule.check(DjangoRequest(request), request.META.get("REMOTE_ADDR"))


async def _acheck(rule: Rule, request: HttpRequest) -> Verdict | None:
    if rule.simple:
        return await rule.acheck_simple(
            request.method or "GET", request.path, request.META.get("REMOTE_ADDR")
        )
    return await rule.acheck(
        await _view_of(request, rule), request.META.get("REMOTE_ADDR")
    )


class _Settings:
    """``settings.STANCHION`` read and checked once."""

    def __init__(self, raw: Any) -> None:
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise SettingError("STANCHION", f"must be a dict, not {type(raw).__name__}")
        unknown = set(raw) - _KNOWN
        if unknown:
            raise SettingError(
                "STANCHION", f"unknown keys {sorted(unknown)} (known: {sorted(_KNOWN)})"
            )
        self.enabled = bool(raw.get("ENABLED", True))
        self.limit = raw.get("LIMIT")
        rule_kw: dict[str, Any] = {}
        for k, kw in _RULE_KEYS.items():
            if k in raw:
                rule_kw[kw] = raw[k]
        key = rule_kw.get("key")
        if isinstance(key, str):
            try:
                rule_kw["key"] = import_string(key)
            except ImportError as exc:
                raise SettingError(
                    "STANCHION['KEY']", f"cannot import {key!r}: {exc}"
                ) from None
        cache_kw = {kw: raw[k] for k, kw in _CACHE_KEYS.items() if k in raw}
        storage = _storage(raw.get("STORAGE_URL"))
        with _named_errors():
            self.limiters = LimiterCache(storage=storage, **cache_kw)
            self.rule_kw = {**rule_kw, "limiters": self.limiters}
            # Every setting checked now, with or without a LIMIT.
            self.probe = Rule(
                self.limit if self.limit is not None else "1/second",
                scope="global",
                **self.rule_kw,
            )


def _storage(url: Any) -> Any:
    if url is None or url == "memory://":
        return None
    if not isinstance(url, str) or not url.startswith(
        ("redis://", "rediss://", "unix://")
    ):
        raise SettingError(
            "STANCHION['STORAGE_URL']",
            f"expected None, memory:// or redis://..., got {url!r}",
        )
    try:
        return importlib.import_module("stanchion.redis").RedisStorage(url)
    except (ImportError, AttributeError) as exc:
        raise SettingError(
            "STANCHION['STORAGE_URL']", f"Redis storage is not available: {exc}"
        ) from None


class _named_errors:
    def __enter__(self) -> None:
        return None

    def __exit__(self, tp: Any, exc: BaseException | None, tb: Any) -> None:
        if isinstance(exc, SettingError) and not exc.setting.startswith("STANCHION"):
            raise SettingError(
                _NAMES.get(exc.setting, exc.setting), exc.reason
            ) from None


_cached: tuple[Any, _Settings] | None = None


def stanchion_settings() -> _Settings:
    """The checked ``STANCHION`` settings (re-read when the dict changes,
    e.g. under ``override_settings``)."""
    global _cached
    raw = getattr(django_settings, "STANCHION", None)
    if _cached is None or _cached[0] is not raw:
        _cached = (raw, _Settings(raw))
    return _cached[1]


@checks.register("stanchion")  # type: ignore[untyped-decorator]
def check_settings(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """System check: ``manage.py check`` reports bad ``STANCHION`` settings."""
    try:
        stanchion_settings()
    except (SettingError, TypeError, ValueError) as exc:
        return [
            checks.Error(
                f"bad rate limit setting: {exc}",
                hint="See the STANCHION settings in stanchion.django's documentation.",
                id="stanchion.E001",
            )
        ]
    return []


#: Middleware that set a visitor's cookie on the way out: a cache inside
#: them stores the page before they add it.
_COOKIE_MIDDLEWARE = (
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
)


def _middleware_class(path: Any) -> Any:
    from django.utils.module_loading import import_string

    try:
        return import_string(path)
    except Exception:  # a bad entry: Django itself reports it
        return None


def _sets_cookies(path: Any) -> bool:
    """Whether a MIDDLEWARE entry is (a subclass of) one of Django's
    cookie-setting middleware; matched by name, so nothing is imported
    that Django would not import itself."""
    if path in _COOKIE_MIDDLEWARE:
        return True
    cls = _middleware_class(path)
    return isinstance(cls, type) and any(
        f"{c.__module__}.{c.__qualname__}" in _COOKIE_MIDDLEWARE for c in cls.__mro__
    )


@checks.register("stanchion")  # type: ignore[untyped-decorator]
def check_middleware_order(
    app_configs: Any = None, **kwargs: Any
) -> list[checks.CheckMessage]:
    """System check: stanchion's ``CacheMiddleware`` listed after (inside)
    Session, CSRF or Authentication middleware cannot see the cookies
    they set on the way out."""
    listed = list(getattr(django_settings, "MIDDLEWARE", None) or ())
    found: list[checks.CheckMessage] = []
    for i, path in enumerate(listed):
        cls = _middleware_class(path)
        if not (isinstance(cls, type) and issubclass(cls, CacheMiddleware)):
            continue
        outer = [p for p in listed[:i] if _sets_cookies(p)]
        if outer:
            found.append(
                checks.Warning(
                    f"{path} is listed after {', '.join(outer)} in MIDDLEWARE: "
                    "it runs inside them and cannot see the cookies they add "
                    "after it stored a page.",
                    hint="List the cache middleware before SessionMiddleware, "
                    "CsrfViewMiddleware and AuthenticationMiddleware; it then "
                    "sees their Set-Cookie and Vary: Cookie and never stores "
                    "such a page.",
                    id="stanchion.W001",
                )
            )
    return found


def _response(verdict: Verdict) -> HttpResponse:
    status, headers, body = verdict.reply()
    response = HttpResponse(body, status=status)
    for k, v in headers:
        response[k] = v
    return response


def _add_headers(response: HttpResponse, verdict: Verdict) -> None:
    headers = verdict.headers()
    if not headers:
        return
    # Our names and values are plain ASCII made here, so they can skip
    # Django's per-header charset checks when its store is at hand; and
    # its dict answers "is it there" without Mapping.__contains__, which
    # raises and catches KeyError for every absent name.
    store = getattr(response.headers, "_store", None)
    if type(store) is not dict:
        _add_headers_slow(response, headers)
        return
    skip_x = headers[-1][0] == "X-RateLimit-Reset" and "x-ratelimit-limit" in store
    for k, v in headers:
        lk = k.lower()
        if k[0] == "X":
            if skip_x:
                continue
        else:
            old = store.get(lk)
            if old is not None:
                v = f"{old[1]}, {v}"  # structured field lists merge
        store[lk] = (k, v)


def _add_headers_slow(response: HttpResponse, headers: list[tuple[str, str]]) -> None:
    skip_x = headers[-1][0] == "X-RateLimit-Reset" and response.has_header(
        "X-RateLimit-Limit"
    )
    for k, v in headers:
        if k[0] == "X":
            if skip_x:
                continue
        elif k in response.headers:
            v = f"{response.headers[k]}, {v}"
        response.headers[k] = v


class RateLimitMiddleware:
    """``STANCHION["LIMIT"]`` on every request (except exemptions).

    Sync and async capable: under ASGI it awaits ``limiter.ahit`` and
    never blocks the loop; under WSGI it calls ``hit``."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        try:
            conf = stanchion_settings()
        except SettingError as exc:
            raise ImproperlyConfigured(str(exc)) from None
        if not conf.enabled or conf.limit is None:
            raise MiddlewareNotUsed("STANCHION['LIMIT'] is not set")
        self.rule = conf.probe
        self.async_mode = iscoroutinefunction(get_response)
        if self.async_mode:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        if self.async_mode:
            return self.__acall__(request)
        verdict = self.rule.check(
            DjangoRequest(request), request.META.get("REMOTE_ADDR")
        )
        if verdict is None:
            return self.get_response(request)
        if verdict.blocked:
            return _response(verdict)
        response = self.get_response(request)
        _add_headers(response, verdict)
        return response

    async def __acall__(self, request: HttpRequest) -> Any:
        verdict = await _acheck(self.rule, request)
        if verdict is None:
            return await self.get_response(request)
        if verdict.blocked:
            return _response(verdict)
        response = await self.get_response(request)
        _add_headers(response, verdict)
        return response


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
                for k in ("algorithm", "storage", "max_keys", "clock")
            ):
                kw.pop("limiters", None)
            rule = self._rules[scope] = Rule(self.limit, scope=scope, **kw)
        return rule

    def __call__(self, view: F) -> F:
        scope = self.scope or f"{view.__module__}.{view.__qualname__}"
        block = self.block

        if _is_async(view):

            @functools.wraps(view)
            async def async_view(
                request: HttpRequest, *args: Any, **kwargs: Any
            ) -> Any:
                rule = self._rule(scope)
                verdict = await _acheck(rule, request)
                if verdict is not None:
                    limited = verdict.blocked or (
                        verdict.decision is not None and not verdict.decision.allowed
                    )
                    request.limited = limited or getattr(request, "limited", False)
                    if verdict.blocked and block:
                        return _response(verdict)
                response = await view(request, *args, **kwargs)
                if verdict is not None:
                    _add_headers(response, verdict)
                return response

            return async_view  # type: ignore[return-value]

        @functools.wraps(view)
        def sync_view(request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
            rule = self._rule(scope)
            verdict = rule.check(
                DjangoRequest(request), request.META.get("REMOTE_ADDR")
            )
            if verdict is not None:
                limited = verdict.blocked or (
                    verdict.decision is not None and not verdict.decision.allowed
                )
                request.limited = limited or getattr(request, "limited", False)
                if verdict.blocked and block:
                    return _response(verdict)
            response = view(request, *args, **kwargs)
            if verdict is not None:
                _add_headers(response, verdict)
            return response

        return sync_view  # type: ignore[return-value]


# =============================================================================
# Response caching
# =============================================================================


def _django_upstream(response: Any, limit: int, request: HttpRequest) -> Any:
    """A Django response as the cache's ``Upstream``; streamed or too big
    ones pass through unbuffered. Cookies set through ``set_cookie`` count
    as ``Set-Cookie`` headers (so such answers are never stored), and so
    does a cookie that Session, CSRF or Auth middleware outside the cache
    will set (``_visitors_own``)."""
    from .._respcache import Upstream

    headers = list(response.items())
    for morsel in response.cookies.values():
        headers.append(("Set-Cookie", morsel.output(header="").strip()))
    if getattr(response, "streaming", False):
        return Upstream(response.status_code, headers, None, response)
    body = response.content
    if len(body) > limit:
        return Upstream(response.status_code, headers, None, response)
    # The view's own response goes back as is when nothing is stored
    # (its cookies and attributes kept).
    return Upstream(
        response.status_code, headers, body, response, _visitors_own(request)
    )


def _visitors_own(request: HttpRequest) -> bool:
    """Whether middleware outside the cache will make this answer one
    visitor's: the session was read or written (SessionMiddleware then
    adds ``Vary: Cookie`` and maybe the session cookie; reading
    ``request.user`` reads it), or a CSRF token was used (CsrfViewMiddleware
    then sets the CSRF cookie). The signals Django's own cache middleware
    is placed to see."""
    session = getattr(request, "session", None)
    if session is not None and (
        getattr(session, "accessed", False) or getattr(session, "modified", False)
    ):
        return True
    meta = request.META
    return bool(meta.get("CSRF_COOKIE_NEEDS_UPDATE") or meta.get("CSRF_COOKIE_USED"))


def _django_reply(reply: Any) -> Any:
    if reply.passthrough:
        native = reply.native
        for k, v in reply.headers:
            native[k] = v
        return native
    out = HttpResponse(reply.body, status=reply.status)
    if "content-type" not in {k.lower() for k, _ in reply.headers}:
        del out["Content-Type"]
    for k, v in reply.headers:
        out[k] = v
    return out


def _plan(rc: Any, request: HttpRequest) -> Any:
    scope = getattr(request, "scope", None)  # Django's ASGIRequest
    if scope is not None:
        return rc.plan_scope(scope, request.headers.get)
    # Django rewrites META's PATH_INFO and SCRIPT_NAME as decoded text.
    path = request.path
    return rc.plan_environ(request.META, request.headers.get, path, path)


def _unrendered(response: Any) -> bool:
    """Whether ``response`` is a TemplateResponse (what generic views
    return) not rendered yet: Django renders it after the view, so a
    cached view renders it first, to store the page and to see what its
    template did (``request.user``, ``{% csrf_token %}``) before storing.
    Template response middleware then sees it rendered."""
    return callable(getattr(response, "render", None)) and not getattr(
        response, "is_rendered", True
    )


class _CachedCall:
    """One cached callable (a view or the rest of the middleware chain),
    sync or async, on a ``ResponseCache``."""

    def __init__(self, rc: Any, func: Callable[..., Any]) -> None:
        self.rc = rc
        self.func = func

    def call(self, request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
        rc = self.rc
        plan = _plan(rc, request)
        if plan is None:
            return self.func(request, *args, **kwargs)

        def upstream() -> Any:
            response = self.func(request, *args, **kwargs)
            if _unrendered(response):
                response = response.render()
            return _django_upstream(response, rc.max_body, request)

        return _django_reply(rc.serve(plan, upstream, upstream))

    async def acall(self, request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
        rc = self.rc
        plan = _plan(rc, request)
        if plan is None:
            return await self.func(request, *args, **kwargs)

        async def upstream() -> Any:
            response = await self.func(request, *args, **kwargs)
            if _unrendered(response):
                # As Django's handler does: templates may query the database.
                response = await sync_to_async(response.render)()
            return _django_upstream(response, rc.max_body, request)

        return _django_reply(await rc.aserve(plan, upstream, upstream))


def cache_response(**settings: Any) -> Callable[[F], F]:
    """View decorator: ``@cache_response(ttl=60)`` caches the view's answers
    by the rules of :class:`stanchion._respcache.ResponseCache`, whose
    keywords it takes (``ttl``, ``backend``, ``statuses``, ``max_age``,
    ``vary_identity``, ...). Sync and ``async def`` views (an async view
    never blocks its loop); class-based views through ``method_decorator``.
    Streamed responses pass through uncached. The view's ``cache``
    attribute has ``invalidate``, ``clear``, ``stats`` and ``aclose``."""
    from .._respcache import ResponseCache

    rc = ResponseCache(**settings)

    def decorate(view: F) -> F:
        if not callable(view):
            raise TypeError(f"cache_response decorates a view, not {view!r}")
        cached = _CachedCall(rc, view)
        if _is_async(view):

            @functools.wraps(view)
            async def async_view(request: HttpRequest, *a: Any, **kw: Any) -> Any:
                return await cached.acall(request, *a, **kw)

            async_view.cache = rc  # type: ignore[attr-defined]
            return async_view  # type: ignore[return-value]

        @functools.wraps(view)
        def sync_view(request: HttpRequest, *a: Any, **kw: Any) -> Any:
            return cached.call(request, *a, **kw)

        sync_view.cache = rc  # type: ignore[attr-defined]
        return sync_view  # type: ignore[return-value]

    return decorate


class CacheMiddleware:
    """Caches every GET/HEAD answer under the path prefixes in
    ``settings.STANCHION_RESPONSE_CACHE["paths"]`` (all paths when absent)
    by the rules of :class:`stanchion._respcache.ResponseCache`; the other
    keys of that dict are its keywords (``ttl``, ``backend``, ...).
    Keywords given to the constructor replace the setting (for
    subclasses and tests). Sync and async capable: under ASGI it never
    blocks the loop. ``cache`` has ``invalidate``, ``clear`` and ``stats``."""

    sync_capable = True
    async_capable = True

    def __init__(
        self, get_response: Callable[[HttpRequest], Any], **settings: Any
    ) -> None:
        from .._respcache import ResponseCache

        self.get_response = get_response
        if not settings:
            raw = getattr(django_settings, "STANCHION_RESPONSE_CACHE", None) or {}
            if not isinstance(raw, dict):
                raise ImproperlyConfigured(
                    f"STANCHION_RESPONSE_CACHE must be a dict, not {type(raw).__name__}"
                )
            settings = dict(raw)
        paths = settings.pop("paths", None)
        if paths is not None:
            if isinstance(paths, str) or not all(isinstance(p, str) for p in paths):
                raise TypeError("paths must be a list of path prefixes")
            paths = tuple(paths)
        self.paths: tuple[str, ...] | None = paths
        self.cache = ResponseCache(**settings)
        self._cached = _CachedCall(self.cache, get_response)
        self.async_mode = iscoroutinefunction(get_response)
        if self.async_mode:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        if self.async_mode:
            return self.__acall__(request)
        if self.paths is not None and not request.path.startswith(self.paths):
            return self.get_response(request)
        return self._cached.call(request)

    async def __acall__(self, request: HttpRequest) -> Any:
        if self.paths is not None and not request.path.startswith(self.paths):
            return await self.get_response(request)
        return await self._cached.acall(request)
