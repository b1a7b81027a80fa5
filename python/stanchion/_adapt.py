"""What every framework adapter shares: the default scope names, the one
limiter cache of route limits, deciding a request (blocking), the
rule for merging the rate limit headers of two layers, header reading
from a WSGI environ, and status lines. Adapters import these from here,
never from one another.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

from ._limiter import RateLimiter
from .http import LimiterCache, RateSpec, Request, Rule, Verdict, middleware_rule

#: The scope of a middleware limit (every request of the app), in every
#: framework: its buckets and the name in its ``RateLimit`` headers.
MIDDLEWARE_SCOPE = "global"

_N = TypeVar("_N")
_App = TypeVar("_App")

# -- scopes and shared limiters -------------------------------------------------


def route_scope(func: Any) -> str:
    """The default scope of a route (view, endpoint) limit: the function's
    module and qualified name, never its ``repr``, so every process and
    every restart names it alike."""
    return f"{func.__module__}.{func.__qualname__}"


_shared: LimiterCache | None = None
#: Settings that ask a route limit for limiters of its own.
_OWN_CACHE = ("limiters", "algorithm", "storage", "max_keys", "clock", "penalty")


def shared_limiters() -> LimiterCache:
    """The limiters shared by every route limit that gives no ``limiters=``:
    two routes with the same ``scope`` and rate share buckets."""
    global _shared
    if _shared is None:
        _shared = LimiterCache()
    return _shared


def share_limiters(settings: dict[str, Any]) -> None:
    """Use the shared limiters unless ``settings`` ask for their own."""
    if not any(k in settings for k in _OWN_CACHE):
        settings["limiters"] = shared_limiters()


def module_getattr(module: str) -> Callable[[str], Any]:
    """An adapter module's ``__getattr__``: its ``default_limiters`` is
    :func:`shared_limiters` (one cache for every adapter)."""

    def __getattr__(name: str) -> Any:
        if name == "default_limiters":
            return shared_limiters()
        raise AttributeError(f"module {module!r} has no attribute {name!r}")

    return __getattr__


class AppMiddleware(Generic[_App]):
    """The construction every app-wrapping rate limit middleware shares
    (ASGI, WSGI): the app, and the rule from ``limit=`` or ``limiter=``
    and the other :class:`~stanchion.http.Rule` settings."""

    def __init__(
        self,
        app: _App,
        /,
        limit: RateSpec | Callable[[Request], Any] | None = None,
        *,
        limiter: RateLimiter | None = None,
        scope: str = MIDDLEWARE_SCOPE,
        **settings: Any,
    ) -> None:
        self.app = app
        self.rule = middleware_rule(limit, limiter, scope, settings)


# -- deciding -------------------------------------------------------------------


def decide(
    rule: Rule,
    method: str,
    path: str,
    peer: str | None,
    view: Callable[[_N], Request],
    native: _N,
) -> Verdict | None:
    """``rule``'s verdict on a request (blocking ``hit``): from the method,
    path and peer alone when the rule is simple, else from ``view(native)``,
    the framework's :class:`~stanchion.http.Request` view. The asyncio
    adapters write the same choice inline with ``acheck_simple`` and
    ``acheck``."""
    if rule.simple:
        return rule.check_simple(method, path, peer)
    return rule.check(view(native), peer)


# -- two layers of rate limit headers -------------------------------------------

# Per type: a set holding both "x" and b"x" would compare bytes with str
# (a BytesWarning under python -bb).
_X_STR = frozenset(f"x-ratelimit-{n}" for n in ("limit", "remaining", "reset"))
_X_NAMES: dict[type, frozenset[Any]] = {
    str: _X_STR,
    bytes: frozenset(n.encode() for n in _X_STR),
}
_X_LIMIT: dict[type, Any] = {str: "x-ratelimit-limit", bytes: b"x-ratelimit-limit"}

_H = TypeVar("_H", str, bytes)


def outer_headers(
    extra: list[tuple[_H, _H]],
    response: Any,
    has_x_limit: Callable[[Any], bool] | None = None,
) -> list[tuple[_H, _H]]:
    """The rate limit headers ``extra`` an outer layer (a middleware, or an
    app-wide limit) adds to a response an inner layer (a route limit) may
    have given its own. The one rule, in every framework:

    - ``RateLimit`` and ``RateLimit-Policy`` of both layers are sent (as
      two fields, or one comma-joined list where a framework keeps one
      value per name: the same thing in HTTP);
    - ``X-RateLimit-*`` of the inner layer are kept and the outer layer's
      dropped: the trio holds one quota, the more specific one.

    ``response`` holds the headers set so far: a list of pairs (WSGI,
    werkzeug's list, ASGI's byte pairs), scanned here in any case, or
    anything ``has_x_limit(response)`` can ask whether it has
    ``X-RateLimit-Limit``. Either is looked at only when ``extra`` carries
    that family. The C wrappers (``_core.HeaderSend``, ``HeaderStart``,
    ``RateHeaders.extend`` and ``into_store``) apply the same rule."""
    if not extra:
        return extra
    names = _X_NAMES.get(type(extra[0][0].lower()), _X_STR)
    if not any(len(k) >= 17 and k.lower() in names for k, _ in extra):
        return extra
    if has_x_limit is not None:
        inner = has_x_limit(response)
    else:
        # A plain scan: faster than the frameworks' own lookups when
        # the name is absent.
        inner = any(
            len(k) == 17 and (lk := k.lower()) == _X_LIMIT.get(type(lk))
            for k, _ in response
        )
    if not inner:
        return extra
    return [(k, v) for k, v in extra if k.lower() not in names]


# -- reading and writing --------------------------------------------------------


def header_from_environ(environ: dict[str, Any], name: str) -> str | None:
    """Header ``name`` (lower case) from a WSGI environ / Django META."""
    if name == "content-type":
        return environ.get("CONTENT_TYPE") or None
    if name == "content-length":
        return environ.get("CONTENT_LENGTH") or None
    value = environ.get("HTTP_" + name.upper().replace("-", "_"))
    return value if value is not None else None


_STATUS = {429: "429 Too Many Requests", 503: "503 Service Unavailable"}


def status_line(status: int) -> str:
    """``"429 Too Many Requests"`` for 429: the status line WSGI and falcon
    want."""
    from http import HTTPStatus

    line = _STATUS.get(status)
    if line is None:
        try:
            line = f"{status} {HTTPStatus(status).phrase}"
        except ValueError:
            line = f"{status} Unknown"
    return line
