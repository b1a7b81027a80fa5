"""A Django cache backend on stanchion's C cache.

::

    CACHES = {
        "default": {
            "BACKEND": "stanchion.django.CacheBackend",
            "LOCATION": "pages",            # caches of one LOCATION share entries
            "TIMEOUT": 300,                 # None: keep until evicted
            "OPTIONS": {
                "MAX_ENTRIES": 10_000,      # least recently used evicted past it
                "MAX_BYTES": 64 * 2**20,    # optional bound on the values' size
            },
        }
    }

It behaves as Django's ``LocMemCache`` does (``TIMEOUT``, ``KEY_PREFIX``,
``VERSION`` and ``KEY_FUNCTION``, keys warned about as Django warns,
values pickled so that a cached list is not shared with the code that
stored it), with these differences:

- Eviction is least recently used, one entry at a time, at exactly
  ``MAX_ENTRIES``; ``CULL_FREQUENCY`` has nothing to tune and is ignored.
- ``incr``/``decr`` are atomic across threads, keep the entry's expiry,
  and ``incr_version``/``decr_version`` move the entry with its expiry.
- The ``a*`` methods run in the caller's event loop: nothing here waits
  on I/O, so a hop to a thread would only add cost.
- Values of the exact types ``str``, ``int``, ``float``, ``bool`` and
  ``None`` are stored as they are (they cannot be changed in place, so
  sharing them is safe); everything else is pickled.
- A ``TIMEOUT`` with a fraction (0.5) is kept as given; Django's own
  backends truncate it (to 0: "do not cache").
- Expiry follows the monotonic clock, so a change of the wall clock does
  not expire entries or keep them alive. A lifetime is capped at about
  35 years; longer timeouts (and ``None``) keep entries until evicted.
"""

from __future__ import annotations

import math
import pickle
import re
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any, Final

from django.core.cache.backends.base import (
    DEFAULT_TIMEOUT,
    BaseCache,
    default_key_func,
)

from .._core import Cache
from ..http import SettingError

__all__ = ["CacheBackend"]

_PICKLE_PROTOCOL: Final = pickle.HIGHEST_PROTOCOL

# Values stored without pickling: immutable, so sharing one is harmless.
# `bytes` is left out: a stored payload of type bytes means "pickled".
_PLAIN: Final = frozenset({str, int, float, bool, type(None)})

# The C cache's longest lifetime is 2**60 ns (about 36.5 years); longer
# timeouts are kept as "until evicted" at this (about 34.9 years).
_LONGEST: Final = 1.1e9

# What Django's memcached key check looks for (base.memcache_key_warnings).
_MEMCACHED_BAD_CHARS: Final = re.compile(r"[\x00-\x20\x7f]")
_MEMCACHED_MAX_KEY_LENGTH: Final = 250

_MISSING: Any = object()

# An entry in the C cache: (payload, expires). The payload is the value
# itself (a _PLAIN type) or its pickle (bytes). `expires` is the
# time.monotonic() deadline, or None: the C cache expires entries by
# itself, and the deadline is kept only so that incr/decr and
# incr_version can store a new entry that expires when the old one would.
_Entry = tuple[Any, "float | None"]


def _weigh(entry: _Entry) -> int:
    """MAX_BYTES counts what the payload occupies in memory."""
    return sys.getsizeof(entry[0])


def _pack(value: Any) -> Any:
    """The payload for ``value`` (pickling runs the value's own code, so
    it happens before any lock is taken)."""
    if type(value) in _PLAIN:
        return value
    return pickle.dumps(value, _PICKLE_PROTOCOL)


def _unpack(payload: Any) -> Any:
    if type(payload) is bytes:
        return pickle.loads(payload)
    return payload


class _Store:
    """The entries of one LOCATION (shared by every CacheBackend built
    for it, in every thread) and the lock its writers take.

    Why a lock: the C cache makes each single call atomic (it runs no
    Python code while it changes its table, and the keys here are exact
    str and the values tuples, so none of theirs either), but a read
    followed by a write is two calls, and another thread can run between
    them. add (check, then store), touch (read, then store with a new
    expiry) and incr (read, add, store) are such pairs, so every write
    holds this lock, which makes each of them one step as seen by the
    other writers. Reads (get, has_key) are single calls and take no
    lock. Only C calls and our own small code run under the lock: never
    pickle, unpickle or a value's ``+`` (user code that could be slow or
    reenter the cache). incr therefore computes outside the lock and
    stores only if the entry is still the one it read (compare and
    swap: every write stores a new entry tuple, so identity tells); if
    another writer got in between, it starts again. Held for well under
    a microsecond, the lock is also cheap to take from an event loop.
    """

    __slots__ = ("cache", "lock")

    def __init__(self, cache: Cache[str, _Entry]) -> None:
        self.cache = cache
        self.lock = threading.Lock()


# (LOCATION, MAX_ENTRIES, MAX_BYTES) -> store. Django builds a backend per
# alias per thread (and per override_settings), so the entries must live
# outside the backend object for threads to share them.
_stores: dict[tuple[str, int, int | None], _Store] = {}
_stores_lock = threading.Lock()


def _positive_int(options: Mapping[str, Any], name: str, default: int | None) -> Any:
    value = options.get(name, default)
    if value is None and default is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise SettingError(
            f"OPTIONS[{name!r}]", f"must be an int, not {type(value).__name__}"
        )
    if value < 1:
        raise SettingError(f"OPTIONS[{name!r}]", f"must be >= 1, got {value}")
    return value


class CacheBackend(BaseCache):  # type: ignore[misc]
    """``BACKEND = "stanchion.django.CacheBackend"``: see the module doc."""

    def __init__(self, location: str, params: dict[str, Any]) -> None:
        if not isinstance(params, dict):
            raise TypeError(f"params must be a dict, not {type(params).__name__}")
        options = params.get("OPTIONS", {})
        if not isinstance(options, Mapping):
            raise SettingError(
                "OPTIONS", f"must be a dict, not {type(options).__name__}"
            )
        # Django's BaseCache turns a bad TIMEOUT or MAX_ENTRIES into its
        # default without a word; refuse them instead, at startup.
        timeout = params.get("timeout", params.get("TIMEOUT", 300))
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, (int, float))
        ):
            raise SettingError(
                "TIMEOUT",
                f"must be a number of seconds or None, not {type(timeout).__name__}",
            )
        if isinstance(timeout, float) and math.isnan(timeout):
            raise SettingError("TIMEOUT", "must be a number of seconds, not NaN")
        max_entries: int = _positive_int(options, "MAX_ENTRIES", 300)
        max_bytes: int | None = _positive_int(options, "MAX_BYTES", None)
        super().__init__(params)
        # BaseCache truncates TIMEOUT to an int, so 0.5 would mean "never
        # cache"; a fraction of a second is kept as given.
        self.default_timeout = timeout
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        location = str(location or "")

        ident = (location, max_entries, max_bytes)
        with _stores_lock:
            store = _stores.get(ident)
            if store is None:
                default = self.default_timeout
                store = _Store(
                    Cache(
                        max_entries,
                        # Entries given the cache's own TTL take its
                        # cheaper expiry path (a queue, not a heap).
                        default
                        if default is not None and 0 < default < _LONGEST
                        else None,
                        maxweight=max_bytes,
                        weigh=_weigh if max_bytes is not None else None,
                    )
                )
                _stores[ident] = store
        self._store = store
        self._cache: Cache[str, _Entry] = store.cache
        self._lock = store.lock
        # What the C cache takes as "never expires": None when it has no
        # TTL of its own, else the longest lifetime it accepts.
        self._never: float | None = None if store.cache.ttl is None else _LONGEST

    # -- keys and timeouts ----------------------------------------------------

    # Django's own key making and checking, done inline (the same key, the
    # same warnings) unless a subclass or KEY_FUNCTION changes it. The
    # "prefix:version:" head is rebuilt whenever key_prefix, version or
    # key_func is assigned (Django and its tests assign them).
    _head: str | None = None
    _key_prefix: Any = ""
    _version: Any = 1
    _key_func: Any = None

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

    @property
    def key_prefix(self) -> Any:
        return self._key_prefix

    @key_prefix.setter
    def key_prefix(self, value: Any) -> None:
        self._key_prefix = value
        self._refresh_head()

    @property
    def version(self) -> Any:
        return self._version

    @version.setter
    def version(self, value: Any) -> None:
        self._version = value
        self._refresh_head()

    @property
    def key_func(self) -> Any:
        return self._key_func

    @key_func.setter
    def key_func(self, value: Any) -> None:
        self._key_func = value
        self._refresh_head()

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

    def _ttl(self, timeout: Any) -> float | None:
        """Seconds to live for ``timeout`` as Django means it: the default
        for DEFAULT_TIMEOUT; None (and anything past the C cache's
        longest lifetime) for ever; 0.0 for a timeout <= 0, "not at
        all". Bad values raise before anything is stored."""
        if timeout is DEFAULT_TIMEOUT:
            timeout = self.default_timeout
        if timeout is None:
            return None
        t = type(timeout)
        if (t is int or t is float) and timeout > 0 and timeout < _LONGEST:
            return float(timeout)
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
            raise TypeError(
                f"timeout must be a number of seconds or None, not "
                f"{type(timeout).__name__}"
            )
        if timeout != timeout:
            raise ValueError("timeout must be a number of seconds, not NaN")
        if timeout <= 0:
            return 0.0
        if timeout >= _LONGEST:
            return None
        return float(timeout)

    def _put(self, key: str, payload: Any, ttl: float | None) -> None:
        """Store under the lock; ttl from _ttl (0.0: remove instead)."""
        cache = self._cache
        if self._max_bytes is not None and sys.getsizeof(payload) > self._max_bytes:
            # Too big to keep at all: drop the old value, as memcached
            # does with a value past its size limit, and do not raise.
            cache.pop(key, None)
        elif ttl is None:
            cache.set(key, (payload, None), self._never)
        elif ttl > 0.0:
            cache.set(key, (payload, time.monotonic() + ttl), ttl)
        else:
            cache.pop(key, None)

    # -- the BaseCache interface ----------------------------------------------

    def get(self, key: Any, default: Any = None, version: Any = None) -> Any:
        entry = self._cache.get(self._key(key, version), _MISSING)
        if entry is _MISSING:
            return default
        return _unpack(entry[0])

    def set(
        self, key: Any, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: Any = None
    ) -> None:
        k = self._key(key, version)
        ttl = self._ttl(timeout)
        payload = _pack(value)
        lock = self._lock
        lock.acquire()
        try:
            self._put(k, payload, ttl)
        finally:
            lock.release()

    def add(
        self, key: Any, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: Any = None
    ) -> bool:
        k = self._key(key, version)
        ttl = self._ttl(timeout)
        payload = _pack(value)
        with self._lock:
            if k in self._cache:
                return False
            # As in Django, a timeout <= 0 "adds" a value that is gone at once.
            self._put(k, payload, ttl)
            return True

    def touch(
        self, key: Any, timeout: Any = DEFAULT_TIMEOUT, version: Any = None
    ) -> bool:
        k = self._key(key, version)
        ttl = self._ttl(timeout)
        with self._lock:
            entry = self._cache.peek(k, _MISSING)
            if entry is _MISSING:
                return False
            self._put(k, entry[0], ttl)
            return True

    def delete(self, key: Any, version: Any = None) -> bool:
        k = self._key(key, version)
        with self._lock:
            return self._cache.pop(k, _MISSING) is not _MISSING

    def has_key(self, key: Any, version: Any = None) -> bool:
        return self._key(key, version) in self._cache

    def incr(self, key: Any, delta: Any = 1, version: Any = None) -> Any:
        k = self._key(key, version)
        cache = self._cache
        while True:
            entry = cache.peek(k, _MISSING)
            if entry is _MISSING:
                raise ValueError(f"Key '{k}' not found")
            new_value = _unpack(entry[0]) + delta
            payload = _pack(new_value)
            with self._lock:
                if cache.peek(k, _MISSING) is entry:
                    self._store_again(k, payload, entry[1])
                    return new_value
            # Another writer changed the entry since we read it: again.

    def decr(self, key: Any, delta: Any = 1, version: Any = None) -> Any:
        return self.incr(key, -delta, version)

    def _store_again(self, key: str, payload: Any, expires: float | None) -> None:
        """Store under the lock, expiring at ``expires`` (a monotonic
        deadline, or None): the life left to the entry it replaces."""
        if self._max_bytes is not None and sys.getsizeof(payload) > self._max_bytes:
            self._cache.pop(key, None)
        elif expires is None:
            self._cache.set(key, (payload, None), self._never)
        else:
            left = expires - time.monotonic()
            if left > 0.0:
                self._cache.set(key, (payload, expires), left)
            else:
                self._cache.pop(key, None)

    def get_many(self, keys: Iterable[Any], version: Any = None) -> dict[Any, Any]:
        get = self._cache.get
        found = {}
        for key in keys:
            entry = get(self._key(key, version), _MISSING)
            if entry is not _MISSING:
                found[key] = _unpack(entry[0])
        return found

    def set_many(
        self,
        data: Mapping[Any, Any],
        timeout: Any = DEFAULT_TIMEOUT,
        version: Any = None,
    ) -> list[Any]:
        ttl = self._ttl(timeout)
        items = [(self._key(k, version), _pack(v)) for k, v in data.items()]
        with self._lock:
            for k, payload in items:
                self._put(k, payload, ttl)
        return []

    def delete_many(self, keys: Iterable[Any], version: Any = None) -> None:
        made = [self._key(k, version) for k in keys]
        with self._lock:
            for k in made:
                self._cache.pop(k, None)

    def clear(self) -> None:
        with self._lock:
            self._cache.clear()

    def incr_version(self, key: Any, delta: int = 1, version: Any = None) -> int:
        """Move the entry to version + delta, keeping its expiry."""
        if version is None:
            version = self.version
        old = self._key(key, version)
        new = self._key(key, version + delta)
        with self._lock:
            entry = self._cache.pop(old, _MISSING)
            if entry is _MISSING:
                raise ValueError(f"Key '{key}' not found")
            self._store_again(new, entry[0], entry[1])
        return int(version + delta)

    def decr_version(self, key: Any, delta: int = 1, version: Any = None) -> int:
        return self.incr_version(key, -delta, version)

    def stats(self) -> dict[str, int | None]:
        """The C cache's counts: hits, misses, evictions, expirations,
        size, maxsize (and weight, maxweight with MAX_BYTES). Shared by
        every backend of this LOCATION."""
        return self._cache.stats()

    # -- async: the same work, in the caller's event loop ---------------------

    async def aget(self, key: Any, default: Any = None, version: Any = None) -> Any:
        return self.get(key, default, version)

    async def aset(
        self, key: Any, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: Any = None
    ) -> None:
        self.set(key, value, timeout, version)

    async def aadd(
        self, key: Any, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: Any = None
    ) -> bool:
        return self.add(key, value, timeout, version)

    async def atouch(
        self, key: Any, timeout: Any = DEFAULT_TIMEOUT, version: Any = None
    ) -> bool:
        return self.touch(key, timeout, version)

    async def adelete(self, key: Any, version: Any = None) -> bool:
        return self.delete(key, version)

    async def ahas_key(self, key: Any, version: Any = None) -> bool:
        return self.has_key(key, version)

    async def aincr(self, key: Any, delta: Any = 1, version: Any = None) -> Any:
        return self.incr(key, delta, version)

    async def adecr(self, key: Any, delta: Any = 1, version: Any = None) -> Any:
        return self.incr(key, -delta, version)

    async def aget_many(
        self, keys: Iterable[Any], version: Any = None
    ) -> dict[Any, Any]:
        return self.get_many(keys, version)

    async def aset_many(
        self,
        data: Mapping[Any, Any],
        timeout: Any = DEFAULT_TIMEOUT,
        version: Any = None,
    ) -> list[Any]:
        return self.set_many(data, timeout, version)

    async def adelete_many(self, keys: Iterable[Any], version: Any = None) -> None:
        self.delete_many(keys, version)

    async def aclear(self) -> None:
        self.clear()

    async def aclose(self, **kwargs: Any) -> None:
        # Django 6's BaseCache.aclose runs close() through sync_to_async.
        self.close(**kwargs)

    async def aget_or_set(
        self,
        key: Any,
        default: Any,
        timeout: Any = DEFAULT_TIMEOUT,
        version: Any = None,
    ) -> Any:
        return self.get_or_set(key, default, timeout, version)

    async def aincr_version(self, key: Any, delta: int = 1, version: Any = None) -> int:
        return self.incr_version(key, delta, version)

    async def adecr_version(self, key: Any, delta: int = 1, version: Any = None) -> int:
        return self.incr_version(key, -delta, version)
