"""Django REST framework throttles on stanchion's limiters.

A DRF project switches by changing one setting::

    REST_FRAMEWORK = {
        "DEFAULT_THROTTLE_CLASSES": [
            "stanchion.drf.AnonRateThrottle",
            "stanchion.drf.UserRateThrottle",
        ],
        "DEFAULT_THROTTLE_RATES": {"anon": "100/day", "user": "1000/day"},
    }

The classes keep DRF's names, scopes and rate names
(``DEFAULT_THROTTLE_RATES``, a view's ``throttle_scope`` for
:class:`ScopedRateThrottle`) and DRF's rate syntax (``"5/min"``,
``"100/day"``: a period starting with ``s``, ``m``, ``h`` or ``d``), as
well as stanchion's (``"10/second;1000/day"``, ``"100 per 5 minutes"``).

What differs from DRF's own throttles:

- Each (scope, rate) is one stanchion limiter (the C table, or the
  ``STANCHION["STORAGE_URL"]`` storage: ``shm://`` for the workers of
  one host, ``redis://`` for many hosts), not a list of timestamps per
  client in Django's cache.
- The client address is stanchion's: the socket peer, or the forwarded
  address only from ``STANCHION["TRUSTED_PROXIES"]``. DRF's ``get_ident``
  believes ``X-Forwarded-For`` from anyone unless ``NUM_PROXIES`` is set.
- The algorithm is ``STANCHION["ALGORITHM"]`` (token bucket by default)
  or the class's ``algorithm``: a burst of N is allowed as in DRF, and
  ``wait()`` is when the next request is allowed (one token: period / N
  after a burst), where DRF waits for the oldest request of the window
  to leave it. ``algorithm = "fixed_window"`` waits for the window's end.
- The rate limit headers (``RateLimit``, ``RateLimit-Policy``,
  ``X-RateLimit-*``) are added to the response through the view's
  ``headers`` (DRF's ``finalize_response`` applies them), on 429s and,
  with ``STANCHION["HEADERS_ON_ALLOWED"]`` (default), on allowed
  responses. ``Retry-After`` stays DRF's (from :meth:`wait`).
- An address on ``STANCHION["DENY"]`` is answered 403 (DRF's
  ``PermissionDenied``); a banned client (``STANCHION["PENALTY"]``) is
  throttled (429 with ``Retry-After`` until the ban ends).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from rest_framework import exceptions
from rest_framework.settings import api_settings
from rest_framework.throttling import BaseThrottle

from ._rates import parse_rates
from .django.limits import DjangoRequest
from .django.settings import _Settings, stanchion_settings
from .http import LimiterCache, Rule, SettingError, Verdict

__all__ = [
    "AnonRateThrottle",
    "RateThrottle",
    "ScopedRateThrottle",
    "UserRateThrottle",
    "parse_drf_rate",
]

# DRF's own rule: "N/<period>" where the period's first letter is s, m, h
# or d ("5/min", "100/day", "10/sec"; DRF reads only that letter).
_DRF_RATE = re.compile(r"\s*(\d+)\s*/\s*([smhd])[a-z]*\s*", re.IGNORECASE)
_DRF_UNITS = {"s": "second", "m": "minute", "h": "hour", "d": "day"}


def parse_drf_rate(rate: Any) -> str:
    """``rate`` (a ``DEFAULT_THROTTLE_RATES`` value) as a stanchion rate
    string. Stanchion's notation is read first (``"5/min"``,
    ``"100/day"``, ``"10/second;1000/day"``, ``"100 per 5 minutes"``,
    ``"1/month"``), then DRF's (``"N/<period>"``, the period read by its
    first letter: ``"5/mxyz"`` is 5 a minute, as in DRF). A bad rate is a
    ValueError naming it; a rate that is not a str, a TypeError."""
    if not isinstance(rate, str):
        raise TypeError(
            f"a throttle rate is a string such as '100/day', not {type(rate).__name__}"
        )
    try:
        parse_rates(rate)
        return rate
    except ValueError as exc:
        m = _DRF_RATE.fullmatch(rate)
        if m is None or int(m.group(1)) < 1:
            raise ValueError(f"bad throttle rate {rate!r}: {exc}") from None
        return f"{int(m.group(1))}/{_DRF_UNITS[m.group(2).lower()]}"


class _ThrottledRequest(DjangoRequest):
    """The rule's view of the request, carrying the identity the
    throttle chose (None: the client address)."""

    __slots__ = ("ident",)

    def __init__(self, request: Any, ident: str | None) -> None:
        super().__init__(request)
        self.ident = ident


def _given_ident(request: Any) -> str | None:
    ident: str | None = request.ident
    return ident


# (settings, scope, rate, algorithm, clock) -> Rule; emptied when the
# STANCHION settings change (override_settings in tests).
_rules: dict[tuple[Any, ...], Rule] = {}
_rules_of: _Settings | None = None
_MAX_RULES = 1024
# Two threads building one scope's rule at once would give it two sets
# of limiters (with a class's own algorithm or clock): one builds it.
_building = threading.Lock()


def _rule(
    scope: str,
    rate: str,
    algorithm: str | None,
    clock: Callable[[], float] | None,
    setting: str,
) -> Rule:
    """The rule of one (scope, rate), built once on the ``STANCHION``
    settings: their limiters, storage and client identity."""
    conf = stanchion_settings()
    cache_key = (scope, rate, algorithm, clock)
    if conf is _rules_of:
        rule = _rules.get(cache_key)
        if rule is not None:
            return rule
    with _building:
        return _build_rule(conf, cache_key, setting)


def _build_rule(conf: _Settings, cache_key: tuple[Any, ...], setting: str) -> Rule:
    """:func:`_rule`'s slow path, under ``_building``."""
    global _rules_of
    if conf is not _rules_of:
        _rules.clear()
        _rules_of = conf
    rule = _rules.get(cache_key)
    if rule is not None:
        return rule
    scope, rate, algorithm, clock = cache_key
    kw = {**conf.rule_kw, "key": _given_ident}
    if algorithm is not None or clock is not None:
        # Limiters of their own, in the settings' storage.
        shared: LimiterCache = kw["limiters"]
        kw["limiters"] = LimiterCache(
            algorithm=algorithm or shared.algorithm,
            storage=shared.storage,
            max_keys=shared.max_keys,
            clock=clock,
            penalty=shared.penalty,
        )
    try:
        rule = Rule(rate, scope=scope, **kw)
    except SettingError as exc:
        raise ImproperlyConfigured(f"{setting}: {exc}") from None
    if len(_rules) >= _MAX_RULES:
        _rules.clear()
    _rules[cache_key] = rule
    return rule


def _timer_clock(cls: type) -> Callable[[], float]:
    """The clock of a throttle class that defines DRF's ``timer``: one
    function per class (the rules are cached by their clock) that calls
    the class's current ``timer`` as DRF does, through an instance."""
    held = cls.__dict__.get("_stanchion_timer")
    if held is not None:
        clock: Callable[[], float] = held.__func__
    else:

        def clock() -> float:
            return float(object.__new__(cls).timer())

        # A staticmethod: read through an instance it stays a function.
        cls._stanchion_timer = staticmethod(clock)  # type: ignore[attr-defined]
    return clock


def _is_authenticated(request: Any) -> bool:
    user = getattr(request, "user", None)
    return bool(user and user.is_authenticated)


class RateThrottle(BaseThrottle):  # type: ignore[misc]
    """A DRF throttle on a stanchion limiter: ``rate`` (or
    ``DEFAULT_THROTTLE_RATES[scope]``) per identity, the identity being
    what :meth:`get_ident_key` returns (default: the authenticated user,
    else the client address).

    Class attributes: ``scope`` (names the rate in
    ``DEFAULT_THROTTLE_RATES``, the buckets and the policy in the
    headers), ``rate`` (overrides the setting), ``THROTTLE_RATES`` (as
    in DRF: the rates of this class, in place of the setting),
    ``algorithm`` (default: ``STANCHION["ALGORITHM"]``), ``clock`` (a
    function giving seconds, for tests). DRF's ``timer`` (a method, or a
    callable, giving seconds) is the clock when a subclass defines one
    and no ``clock``: it is called on each reading, so a test that
    replaces it moves time. A scope whose rate is ``None`` is not
    throttled, as in DRF.

    DRF builds a throttle per request: the limiter lives in a cache of
    rules shared by every instance (one per scope and rate)."""

    scope: str | None = None
    rate: str | None = None
    #: DRF's key format, for subclasses that override ``get_cache_key``
    #: as they would DRF's ``SimpleRateThrottle``'s.
    cache_format = "throttle_%(scope)s_%(ident)s"
    THROTTLE_RATES: dict[str, Any] | None = None
    algorithm: str | None = None
    clock: Callable[[], float] | None = None

    def __init__(self) -> None:
        self.verdict: Verdict | None = None

    # -- what to limit: the hooks of subclasses ---------------------------------

    def get_scope(self, request: Any, view: Any) -> str | None:
        """The scope of this request (None: not throttled)."""
        return self.scope

    def get_rate(self, scope: str) -> str | None:
        """The rate of ``scope``: ``rate``, or ``DEFAULT_THROTTLE_RATES``;
        as a stanchion rate string (None: not throttled)."""
        setting = "REST_FRAMEWORK['DEFAULT_THROTTLE_RATES']"
        if self.rate is not None:
            rate: Any = self.rate
            setting = f"{type(self).__name__}.rate"
        else:
            rates = self.THROTTLE_RATES
            if rates is None:
                rates = api_settings.DEFAULT_THROTTLE_RATES
            else:
                setting = f"{type(self).__name__}.THROTTLE_RATES"
            if scope not in rates:
                raise ImproperlyConfigured(
                    f"No default throttle rate set for {scope!r} scope "
                    f"(set {setting}[{scope!r}])"
                )
            rate = rates[scope]
            setting = f"{setting}[{scope!r}]"
        if rate is None:
            return None
        try:
            return parse_drf_rate(rate)
        except (TypeError, ValueError) as exc:
            raise ImproperlyConfigured(f"{setting}: {exc}") from None

    def get_ident_key(self, request: Any, view: Any) -> str | bool | None:
        """The identity to count this request on: a string, ``None`` for
        the client address (stanchion's, through the trusted proxies), or
        ``False`` when this request is not throttled. Default: the
        authenticated user's ``pk``, else the client address.

        A subclass that defines DRF's ``get_cache_key(request, view)``
        instead is honoured: the key it returns is the identity, ``None``
        means not throttled (as in DRF)."""
        if _is_authenticated(request):
            return f"user:{request.user.pk}"
        return None

    # -- DRF's throttle API ---------------------------------------------------

    def allow_request(self, request: Any, view: Any) -> bool:
        """DRF's check: True to let the request through. Counts it on the
        scope's limiter and puts the rate limit headers on the view's
        response headers."""
        self.verdict = None
        conf = stanchion_settings()
        if not conf.enabled:
            return True
        scope = self.get_scope(request, view)
        if not scope:
            if self.rate is None:
                raise ImproperlyConfigured(
                    f"You must set either `.scope` or `.rate` for "
                    f"{type(self).__name__!r} throttle"
                )
            scope = type(self).__name__
        rate = self.get_rate(scope)
        if rate is None:
            return True
        # A subclass written for DRF's SimpleRateThrottle: its key is the
        # identity (None: this request is not throttled).
        keyed = getattr(type(self), "get_cache_key", None) is not None
        if keyed:
            key = self.get_cache_key(request, view)
            ident = False if key is None else key
        else:
            ident = self.get_ident_key(request, view)
        if ident is False:
            return True
        if ident is not None and not isinstance(ident, str):
            hook = (
                "get_cache_key() must return a str or None"
                if keyed
                else "get_ident_key() must return a str, None or False"
            )
            raise TypeError(f"{type(self).__name__}.{hook}, not {type(ident).__name__}")
        # Through the class: a plain function there is not a method.
        clock = getattr(type(self), "clock", None)
        if clock is None and getattr(type(self), "timer", None) is not None:
            clock = _timer_clock(type(self))
        rule = _rule(scope, rate, self.algorithm, clock, f"throttle {scope!r}")
        native = getattr(request, "_request", request)
        verdict = rule.check(
            _ThrottledRequest(native, ident), native.META.get("REMOTE_ADDR")
        )
        self.verdict = verdict
        if verdict is None:
            return True
        _add_view_headers(view, verdict)
        if verdict.blocked and verdict.reason == "access":
            raise exceptions.PermissionDenied("This client's address is not allowed.")
        return not verdict.blocked

    def wait(self) -> float | None:
        """Seconds until this client's next request would be allowed
        (DRF puts it in ``Retry-After``, rounded up); None when unknown
        (an unidentified client)."""
        v = self.verdict
        if v is None or v.decision is None or v.decision.allowed:
            return None
        return float(v.decision.retry_after)


class AnonRateThrottle(RateThrottle):
    """DRF's ``AnonRateThrottle``: anonymous requests only, per client
    address; rate ``DEFAULT_THROTTLE_RATES["anon"]``."""

    scope = "anon"

    def get_ident_key(self, request: Any, view: Any) -> str | bool | None:
        if _is_authenticated(request):
            return False
        return None


class UserRateThrottle(RateThrottle):
    """DRF's ``UserRateThrottle``: per authenticated user, anonymous
    requests per client address; rate ``DEFAULT_THROTTLE_RATES["user"]``."""

    scope = "user"


class ScopedRateThrottle(RateThrottle):
    """DRF's ``ScopedRateThrottle``: views with a ``throttle_scope``
    attribute are throttled at ``DEFAULT_THROTTLE_RATES[throttle_scope]``,
    per user (or client address) and scope; other views are not."""

    scope_attr = "throttle_scope"

    def get_scope(self, request: Any, view: Any) -> str | None:
        scope = getattr(view, self.scope_attr, None)
        return scope if scope else None

    def allow_request(self, request: Any, view: Any) -> bool:
        if not self.get_scope(request, view):
            self.verdict = None
            return True
        return super().allow_request(request, view)


# -- headers ----------------------------------------------------------------------

_X_TRIO = ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset")


def _add_view_headers(view: Any, verdict: Verdict) -> None:
    """The verdict's rate limit headers into ``view.headers``, the dict
    DRF's ``finalize_response`` copies onto the response (a 429 too).
    Several throttles: their ``RateLimit`` and ``RateLimit-Policy`` items
    are joined into one list, and the ``X-RateLimit-*`` trio is the most
    restrictive one's (the fewest remaining)."""
    headers = getattr(view, "headers", None)
    if not isinstance(headers, dict):
        return
    pairs = verdict.headers()
    if not pairs:
        return
    trio = {k: v for k, v in pairs if k in _X_TRIO}
    for k, v in pairs:
        if k in _X_TRIO:
            continue
        headers[k] = f"{headers[k]}, {v}" if k in headers else v
    if trio:
        held = headers.get("X-RateLimit-Remaining")
        new = trio.get("X-RateLimit-Remaining")
        if held is None or (new is not None and int(new) < int(held)):
            headers.update(trio)
