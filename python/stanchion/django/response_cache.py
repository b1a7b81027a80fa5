"""Response caching for Django: ``CacheMiddleware``, the
``@cache_response`` decorator, and the system check of their place in
``MIDDLEWARE``."""

from __future__ import annotations

import difflib
import functools
import inspect
from collections.abc import Callable
from typing import Any, TypeVar

from asgiref.sync import sync_to_async
from django.conf import settings as django_settings
from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest, HttpResponse
from django.utils.module_loading import import_string

from .limits import _is_async
from .middleware import SyncAndAsyncMiddleware

F = TypeVar("F", bound=Callable[..., Any])


#: Middleware that set a visitor's cookie on the way out: a cache inside
#: them stores the page before they add it.
_COOKIE_MIDDLEWARE = (
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
)


def _middleware_class(path: Any) -> Any:

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


#: Django's own cache middleware: they store pages whole, headers and all.
_DJANGO_CACHE = (
    "django.middleware.cache.UpdateCacheMiddleware",
    "django.middleware.cache.CacheMiddleware",
)


@checks.register("stanchion")  # type: ignore[untyped-decorator]
def check_rate_limit_outside_django_cache(
    app_configs: Any = None, **kwargs: Any
) -> list[checks.CheckMessage]:
    """System check: ``RateLimitMiddleware`` listed after (inside) Django's
    ``UpdateCacheMiddleware`` or ``CacheMiddleware`` has its headers
    stored with the page: every client the page is served to gets the
    quota of the one whose request filled the cache."""
    from .limits import RateLimitMiddleware

    listed = list(getattr(django_settings, "MIDDLEWARE", None) or ())
    classes = [_middleware_class(p) for p in listed]
    for i, cls in enumerate(classes):
        if not (isinstance(cls, type) and issubclass(cls, RateLimitMiddleware)):
            continue
        outer = [
            p
            for p, c in zip(listed[:i], classes[:i], strict=True)
            if isinstance(c, type)
            and any(
                f"{m.__module__}.{m.__qualname__}" in _DJANGO_CACHE for m in c.__mro__
            )
        ]
        if outer:
            return [
                checks.Warning(
                    f"{listed[i]} is listed after {', '.join(outer)} in "
                    "MIDDLEWARE: Django's cache stores the page with one "
                    "client's rate limit headers and serves them to every "
                    "client.",
                    hint="List RateLimitMiddleware before Django's cache "
                    "middleware (every request is then counted and gets its "
                    "own headers), or use stanchion.django.CacheMiddleware, "
                    "which never stores them.",
                    id="stanchion.W002",
                )
            ]
    return []


def _response_cache(settings: dict[str, Any]) -> tuple[tuple[str, ...] | None, Any]:
    """``(paths, ResponseCache)`` of CacheMiddleware's keywords."""
    from ..respcache import ResponseCache

    settings = dict(settings)
    paths = settings.pop("paths", None)
    if paths is not None:
        if isinstance(paths, str) or not all(isinstance(p, str) for p in paths):
            raise TypeError("paths must be a list of path prefixes")
        paths = tuple(paths)
    return paths, ResponseCache(**settings)


def _response_cache_from_settings() -> tuple[tuple[str, ...] | None, Any]:
    """``_response_cache`` of ``settings.STANCHION_RESPONSE_CACHE``; a bad
    value is an ImproperlyConfigured naming the setting (and, for an
    unknown key, the closest valid one)."""
    from ..respcache import ResponseCache

    name = "STANCHION_RESPONSE_CACHE"
    raw = getattr(django_settings, name, None) or {}
    if not isinstance(raw, dict):
        raise ImproperlyConfigured(f"{name} must be a dict, not {type(raw).__name__}")
    valid = ["paths", *inspect.signature(ResponseCache).parameters]
    unknown = sorted(str(k) for k in raw if k not in valid)
    if unknown:
        hints = [
            f"{k!r}: did you mean {close[0]!r}?"
            for k in unknown
            if (close := difflib.get_close_matches(k, valid, n=1))
        ]
        reason = f"unknown keys {unknown}"
        reason += f" ({'; '.join(hints)})" if hints else f" (known: {sorted(valid)})"
        raise ImproperlyConfigured(f"{name}: {reason}")
    try:
        return _response_cache(raw)
    except (TypeError, ValueError) as exc:
        raise ImproperlyConfigured(f"{name}: {exc}") from None


@checks.register("stanchion")  # type: ignore[untyped-decorator]
def check_response_cache_settings(
    app_configs: Any = None, **kwargs: Any
) -> list[checks.CheckMessage]:
    """System check: ``manage.py check`` reports a bad
    ``STANCHION_RESPONSE_CACHE`` (read by ``CacheMiddleware``)."""
    if getattr(django_settings, "STANCHION_RESPONSE_CACHE", None) is None:
        return []
    try:
        _response_cache_from_settings()
    except ImproperlyConfigured as exc:
        return [
            checks.Error(
                f"bad response cache setting: {exc}",
                hint="Its keys are stanchion.respcache.ResponseCache's "
                "keywords and 'paths'.",
                id="stanchion.E002",
            )
        ]
    return []


# =============================================================================


def _django_upstream(response: Any, limit: int, request: HttpRequest) -> Any:
    """A Django response as the cache's ``Upstream``; streamed or too big
    ones pass through unbuffered. Cookies set through ``set_cookie`` count
    as ``Set-Cookie`` headers (so such answers are never stored), and so
    does a cookie that Session, CSRF or Auth middleware outside the cache
    will set (``_visitors_own``)."""
    from ..respcache import Upstream

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
    n = reply.entry_headers
    store = getattr(out.headers, "_store", None)
    entry = reply.entry
    if n and type(store) is dict and entry.store is not False:
        # A hit: the stored headers go into the response's store as it
        # keeps them, made once per entry (Django's per-header checks cost
        # more than the rest of the hit), when they are what those checks
        # pass as they are: printable ASCII (an entry of a cache shared
        # with other adapters may hold other text, which Django encodes).
        ours = entry.store
        if ours is None:
            if not all(_plain(k) and _plain(v) for k, v in entry.headers):
                entry.store = False
                return _checked(out, reply.headers)
            ours = entry.store = {k.lower(): (k, v) for k, v in entry.headers}
        store.clear()  # the default Content-Type, unless stored
        store.update(ours)
        # Age and X-Cache are ours; on a miss, the view's own per-client
        # headers (checked by Django when it set them).
        for k, v in reply.headers[n:]:
            store[k.lower()] = (k, v)
        return out
    return _checked(out, reply.headers)


def _checked(out: HttpResponse, headers: list[tuple[str, str]]) -> HttpResponse:
    """``out`` with ``headers``, set through Django's own checks."""
    if "content-type" not in {k.lower() for k, _ in headers}:
        del out["Content-Type"]
    for k, v in headers:
        out[k] = v
    return out


def _plain(text: str) -> bool:
    """Printable ASCII: a header name or value Django keeps as it is."""
    return text.isascii() and text.isprintable()


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
    by the rules of :class:`stanchion.respcache.ResponseCache`, whose
    keywords it takes (``ttl``, ``backend``, ``statuses``, ``max_age``,
    ``vary_identity``, ...). Sync and ``async def`` views (an async view
    never blocks its loop); class-based views through ``method_decorator``.
    Streamed responses pass through uncached. The view's ``cache``
    attribute has ``invalidate``, ``clear``, ``stats`` and ``aclose``."""
    from ..respcache import ResponseCache

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


class CacheMiddleware(SyncAndAsyncMiddleware):
    """Caches every GET/HEAD answer under the path prefixes in
    ``settings.STANCHION_RESPONSE_CACHE["paths"]`` (all paths when absent)
    by the rules of :class:`stanchion.respcache.ResponseCache`; the other
    keys of that dict are its keywords (``ttl``, ``backend``, ...).
    Keywords given to the constructor replace the setting (for
    subclasses and tests). Sync and async capable: under ASGI it never
    blocks the loop. ``cache`` has ``invalidate``, ``clear`` and ``stats``."""

    def __init__(
        self, get_response: Callable[[HttpRequest], Any], **settings: Any
    ) -> None:
        super().__init__(get_response)
        paths: tuple[str, ...] | None
        if settings:
            paths, self.cache = _response_cache(settings)
        else:
            paths, self.cache = _response_cache_from_settings()
        self.paths = paths
        self._cached = _CachedCall(self.cache, get_response)

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
