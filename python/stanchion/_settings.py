"""The one table of rate limit settings read by the Flask extension
(``app.config["STANCHION_..."]``) and by Django (``settings.STANCHION``):
each setting's key, the keyword it gives, its name in each framework,
the check of unknown keys and of the storage URL, and errors renamed to
the name the user wrote.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, NamedTuple

from .http import SettingError


class Setting(NamedTuple):
    """One setting: ``key`` as Django writes it (``"TRUSTED_PROXIES"``),
    the ``keyword`` it gives and to what (``kind``): a Rule keyword
    (``"rule"``), a LimiterCache keyword (``"limiters"``), a Rule keyword
    of the app-wide concurrency limit alone (``"concurrency"``: the
    middleware's in Django, every request's in Flask, never a view
    limit's), or one of ``"limit"``, ``"storage"``, ``"enabled"``."""

    key: str
    keyword: str
    kind: str
    #: Flask's config name when it is not ``"STANCHION_" + key``.
    flask: str = ""


SETTINGS = (
    Setting("LIMIT", "limit", "limit", flask="STANCHION_DEFAULT_LIMIT"),
    Setting("KEY", "key", "rule"),
    Setting("TRUSTED_PROXIES", "trusted_proxies", "rule"),
    Setting("FORWARDED_HEADER", "forwarded_header", "rule"),
    Setting("HEADERS", "headers", "rule"),
    Setting("HEADERS_ON_ALLOWED", "headers_on_allowed", "rule"),
    Setting("DRY_RUN", "dry_run", "rule"),
    Setting("EXEMPT_PATHS", "exempt_paths", "rule"),
    Setting("EXEMPT_METHODS", "exempt_methods", "rule"),
    Setting("UNIDENTIFIED", "unidentified", "rule"),
    Setting("BAN_STATUS", "ban_status", "rule"),
    Setting("ALLOW", "allow", "rule"),
    Setting("DENY", "deny", "rule"),
    Setting("CONCURRENCY", "concurrency", "concurrency"),
    Setting("QUEUE", "queue", "concurrency"),
    Setting("QUEUE_TIMEOUT", "queue_timeout", "concurrency"),
    Setting("CONCURRENCY_PER", "concurrency_per", "concurrency"),
    Setting("ALGORITHM", "algorithm", "limiters"),
    Setting("MAX_KEYS", "max_keys", "limiters"),
    Setting("PENALTY", "penalty", "limiters"),
    Setting("STORAGE_URL", "storage", "storage"),
    Setting("ENABLED", "enabled", "enabled"),
)

Namer = Callable[[Setting], str]


def flask_name(s: Setting) -> str:
    return s.flask or "STANCHION_" + s.key


def django_name(s: Setting) -> str:
    return f"STANCHION[{s.key!r}]"


def read(
    given: Mapping[Any, Any], *, where: str, key: Namer, name: Namer | None = None
) -> dict[str, Any]:
    """The settings ``given`` (under the names ``key`` gives them) by
    keyword, after rejecting unknown names: a SettingError for ``where``
    naming each unknown key and the closest valid one. ``name`` names a
    setting in errors (default ``key``)."""
    valid = {key(s): s for s in SETTINGS}
    unknown = sorted(str(k) for k in given if k not in valid)
    if unknown:
        hints = []
        for k in unknown:
            close = difflib.get_close_matches(k, list(valid), n=1)
            if close:
                hints.append(f"{k!r}: did you mean {close[0]!r}?")
        reason = f"unknown keys {unknown}"
        if hints:
            reason += " (" + "; ".join(hints) + ")"
        else:
            reason += f" (known: {sorted(valid)})"
        raise SettingError(where, reason)
    for k, v in given.items():
        if valid[k].kind == "enabled" and not isinstance(v, bool):
            # bool("false") is True: a string here would enable the limits.
            setting = (name or key)(valid[k])
            raise SettingError(setting, f"must be True or False, got {v!r}")
    out = {valid[k].keyword: v for k, v in given.items()}
    penalty = out.get("penalty")
    if isinstance(penalty, Mapping):
        # A penalty written in a config file: Penalty's keywords.
        from ._penalty import Penalty

        try:
            out["penalty"] = Penalty(**penalty)
        except (TypeError, ValueError) as exc:
            penalty_setting = next(s for s in SETTINGS if s.keyword == "penalty")
            raise SettingError((name or key)(penalty_setting), str(exc)) from None
    return out


_KINDS = {s.keyword: s.kind for s in SETTINGS}


def split(values: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(Rule keywords, LimiterCache keywords)`` of read settings."""
    rule = {k: v for k, v in values.items() if _KINDS[k] == "rule"}
    limiters = {k: v for k, v in values.items() if _KINDS[k] == "limiters"}
    return rule, limiters


def concurrency_settings(values: dict[str, Any], name: Namer) -> dict[str, Any] | None:
    """The Rule keywords of the app-wide concurrency limit in read
    ``values`` (None: no such limit); ``QUEUE`` and the others without
    ``CONCURRENCY`` are refused, naming the setting."""
    kw = {k: v for k, v in values.items() if _KINDS[k] == "concurrency"}
    if kw.get("concurrency") is None:
        given = [s for s in SETTINGS if s.kind == "concurrency" and s.keyword in kw]
        given = [s for s in given if s.keyword != "concurrency"]
        if given:
            raise SettingError(
                name(given[0]),
                f"applies to a concurrency limit: set {name(_by_kind('concurrency'))}",
            )
        return None
    return kw


def _by_kind(kind: str) -> Setting:
    return next(s for s in SETTINGS if s.kind == kind)


#: URL schemes of the Redis storage (``stanchion.redis`` accepts these).
REDIS_SCHEMES = ("redis://", "rediss://", "unix://")
SHM_SCHEME = "shm://"
MEMCACHED_SCHEME = "memcached://"


def storage_from_url(url: Any, name: Namer) -> Any:
    """The storage a ``STORAGE_URL`` names: ``None`` (or ``"memory://"``)
    for the in-process table, a ``SharedMemoryStorage`` for
    ``shm://name[?max_keys=N]``, a ``RedisStorage`` for ``redis://``,
    ``rediss://`` and ``unix://`` URLs, a ``MemcachedStorage`` for
    ``memcached://host:port``; anything else is refused with the
    setting's name."""
    if url is None or url == "memory://":
        return None
    setting = name(_by_kind("storage"))
    if not isinstance(url, str):
        raise SettingError(setting, f"expected a URL string, got {url!r}")
    if url.startswith(SHM_SCHEME):
        return _shm_storage(url, setting)
    if url.startswith(MEMCACHED_SCHEME):
        try:
            memcached = importlib.import_module("stanchion.memcached")
        except ImportError as exc:
            raise SettingError(
                setting, f"Memcached storage is not available: {exc}"
            ) from None
        try:
            return memcached.MemcachedStorage(url)
        except ValueError as exc:
            raise SettingError(setting, str(exc)) from None
    if not url.startswith(REDIS_SCHEMES):
        raise SettingError(
            setting,
            f"unsupported URL {url!r} "
            "(memory://, shm://, redis://, rediss://, unix:// or memcached://)",
        )
    try:
        redis_storage = importlib.import_module("stanchion.redis").RedisStorage
    except (ImportError, AttributeError) as exc:
        raise SettingError(setting, f"Redis storage is not available: {exc}") from None
    return redis_storage(url)


def _shm_storage(url: str, setting: str) -> Any:
    """``shm://name`` or ``shm://name?max_keys=N``."""
    from urllib.parse import parse_qsl

    from ._shm import SharedMemoryStorage

    rest = url[len(SHM_SCHEME) :]
    segment, _, query = rest.partition("?")
    kwargs: dict[str, int] = {}
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        pairs = [("", "")]
    for key, value in pairs:
        # ASCII digits only: str.isdigit() also holds for superscripts
        # and other scripts' digits.
        digits = value.isascii() and value.isdigit()
        if key != "max_keys" or not digits or "max_keys" in kwargs:
            raise SettingError(
                setting,
                f"bad shm:// URL {url!r}: the only option is ?max_keys=N",
            )
        kwargs["max_keys"] = int(value)
    try:
        return SharedMemoryStorage(segment, **kwargs)
    except (TypeError, ValueError) as exc:
        raise SettingError(setting, f"bad shm:// URL {url!r}: {exc}") from None


def _names(name: Namer) -> dict[str, str]:
    names = {s.keyword: name(s) for s in SETTINGS}
    names["algorithm/max_keys"] = (
        f"{names['algorithm']} / {names['max_keys']}"  # LimiterCache's check
    )
    return names


@contextmanager
def named_errors(name: Namer, names_done: Iterable[str] = ()) -> Iterator[None]:
    """Re-raise a SettingError named by keyword (``trusted_proxies``) with
    the framework's name for it (``STANCHION_TRUSTED_PROXIES``). Errors
    already named by the framework (starting with one of ``names_done``)
    pass as they are."""
    try:
        yield
    except SettingError as exc:
        if exc.setting.startswith(tuple(names_done)):
            raise
        raise SettingError(
            _names(name).get(exc.setting, exc.setting), exc.reason
        ) from None
