"""The ``STANCHION`` settings dict: read, checked once, and the system
check that reports bad settings."""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

from django.conf import settings as django_settings
from django.core import checks
from django.utils.module_loading import import_string

from .._adapt import MIDDLEWARE_SCOPE
from .._settings import (
    Setting,
    concurrency_settings,
    django_name,
    named_errors,
    read,
    split,
    storage_from_url,
)
from ..http import LimiterCache, Rule, SettingError


class _Settings:
    """``settings.STANCHION`` read and checked once."""

    def __init__(self, raw: Any) -> None:
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise SettingError("STANCHION", f"must be a dict, not {type(raw).__name__}")
        values = read(raw, where="STANCHION", key=_bare_key, name=django_name)
        self.enabled = bool(values.get("enabled", True))
        self.limit = values.get("limit")
        rule_kw, cache_kw = split(values)
        key = rule_kw.get("key")
        if isinstance(key, str):
            try:
                rule_kw["key"] = import_string(key)
            except ImportError as exc:
                raise SettingError(
                    "STANCHION['KEY']", f"cannot import {key!r}: {exc}"
                ) from None
        storage = storage_from_url(values.get("storage"), django_name)
        with _named_errors():
            #: The middleware's concurrency limit (Rule keywords; None:
            #: none). Never the decorators': they take their own.
            self.concurrency = concurrency_settings(values, django_name)
            self.limiters = LimiterCache(storage=storage, **cache_kw)
            self.rule_kw = {**rule_kw, "limiters": self.limiters}
            # Every setting checked now, with or without a LIMIT: the
            # middleware's rule.
            limit = self.limit
            if limit is None and self.concurrency is None:
                limit = "1/second"
            self.probe = Rule(
                limit,
                scope=MIDDLEWARE_SCOPE,
                **self.rule_kw,
                **(self.concurrency or {}),
            )


def _bare_key(s: Setting) -> str:
    return s.key


def _named_errors() -> AbstractContextManager[None]:
    """SettingErrors renamed to the ``STANCHION['...']`` key."""
    return named_errors(django_name, ("STANCHION",))


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
    return _check_num_proxies()


def _check_num_proxies() -> list[checks.CheckMessage]:
    """DRF's ``NUM_PROXIES`` means nothing to stanchion.drf's throttles:
    without ``TRUSTED_PROXIES`` every client behind the proxies would be
    counted as the nearest proxy, one bucket for the whole site."""
    rest = getattr(django_settings, "REST_FRAMEWORK", None)
    if not isinstance(rest, dict):
        return []
    classes = rest.get("DEFAULT_THROTTLE_CLASSES") or ()
    ours = any(isinstance(c, str) and c.startswith("stanchion.drf.") for c in classes)
    raw = getattr(django_settings, "STANCHION", None) or {}
    if not ours or rest.get("NUM_PROXIES") is None or raw.get("TRUSTED_PROXIES"):
        return []
    return [
        checks.Warning(
            "REST_FRAMEWORK['NUM_PROXIES'] is set, but stanchion.drf's throttles "
            "ignore it: every client behind the proxies counts as the proxy",
            hint="Name the proxies' addresses in STANCHION['TRUSTED_PROXIES'] "
            "(X-Forwarded-For is then believed from them only).",
            id="stanchion.W003",
        )
    ]
