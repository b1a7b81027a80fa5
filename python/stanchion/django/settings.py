"""The ``STANCHION`` settings dict: read, checked once, and the system
check that reports bad settings."""

from __future__ import annotations

import importlib
from typing import Any

from django.conf import settings as django_settings
from django.core import checks
from django.utils.module_loading import import_string

from .._adapt import MIDDLEWARE_SCOPE
from ..http import LimiterCache, Rule, SettingError

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
                scope=MIDDLEWARE_SCOPE,
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
