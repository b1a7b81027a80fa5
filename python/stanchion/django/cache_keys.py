"""Django's cache keys, made inline: the base of ``CacheBackend`` that
makes the key ``BaseCache.make_and_validate_key`` makes, with the same
warnings, from a "prefix:version:" head kept up to date, unless a
subclass or ``KEY_FUNCTION`` changes how keys are made."""

from __future__ import annotations

import re
from typing import Any, Final

from django.core.cache.backends.base import BaseCache, default_key_func

__all__ = ["InlineKeys"]

# What Django's memcached key check looks for (base.memcache_key_warnings).
_MEMCACHED_BAD_CHARS: Final = re.compile(r"[\x00-\x20\x7f]")
_MEMCACHED_MAX_KEY_LENGTH: Final = 250


class _KeySetting:
    """``key_prefix``, ``version`` or ``key_func``: kept as ``_<name>``
    in the instance; assigning it rebuilds the key head."""

    __slots__ = ("attr",)

    def __set_name__(self, owner: type, name: str) -> None:
        self.attr = "_" + name

    def __get__(self, obj: Any, objtype: Any = None) -> Any:
        if obj is None:
            return self
        return getattr(obj, self.attr)

    def __set__(self, obj: Any, value: Any) -> None:
        setattr(obj, self.attr, value)
        obj._refresh_head()


class InlineKeys(BaseCache):  # type: ignore[misc]
    """A ``BaseCache`` whose ``_key(key, version)`` is Django's key."""

    # Django's own key making and checking, done inline (the same key, the
    # same warnings) unless a subclass or KEY_FUNCTION changes it. The
    # "prefix:version:" head is rebuilt whenever key_prefix, version or
    # key_func is assigned (Django and its tests assign them).
    _head: str | None = None
    _key_prefix: Any = ""
    _version: Any = 1
    _key_func: Any = None

    key_prefix = _KeySetting()
    version = _KeySetting()
    key_func = _KeySetting()

    def _refresh_head(self) -> None:
        cls = type(self)
        plain = (
            self._key_func is default_key_func
            and cls.make_and_validate_key is BaseCache.make_and_validate_key
            and cls.make_key is BaseCache.make_key
            and cls.validate_key is BaseCache.validate_key
        )
        # As default_key_func's "%s:%s:%s" (!s: str(), not format()).
        self._head = f"{self._key_prefix!s}:{self._version!s}:" if plain else None

    def _key(self, key: Any, version: Any) -> str:
        head = self._head
        if head is None:
            k = self.make_and_validate_key(key, version=version)
            # The C table compares exact str without calling Python code.
            return k if type(k) is str else str(k)
        if version is not None:
            k = f"{self._key_prefix!s}:{version!s}:{key!s}"
        elif type(key) is str:
            k = head + key
        else:
            k = f"{head}{key!s}"
        # Django's check, quick when a key is plainly fine: printable text
        # has no control characters, so only a space can offend.
        if (len(k) > _MEMCACHED_MAX_KEY_LENGTH or not k.isprintable() or " " in k) and (
            len(k) > _MEMCACHED_MAX_KEY_LENGTH or _MEMCACHED_BAD_CHARS.search(k)
        ):
            self.validate_key(k)
        return k
