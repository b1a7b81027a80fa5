"""A Django cache backend on stanchion's C cache: ``CacheBackend`` and
its settings (its keys are made in ``cache_keys``, its entries kept in
``cache_store``).

::

    CACHES = {
        "default": {
            "BACKEND": "stanchion.django.CacheBackend",
            "LOCATION": "pages",            # caches of one LOCATION share entries
            "TIMEOUT": 300,                 # None: keep until evicted
            "OPTIONS": {
                "MAX_ENTRIES": 10_000,      # least recently used evicted past it
                "MAX_BYTES": 64 * 2**20,    # optional bound on the values' size
                "CLOCK": None,              # tests: a callable giving seconds
            },
        }
    }

It behaves as Django's ``LocMemCache`` does (``TIMEOUT``, ``KEY_PREFIX``,
``VERSION`` and ``KEY_FUNCTION``, keys warned about as Django warns,
values pickled so that a cached list is not shared with the code that
stored it, numbers given as text read as Django reads them, aliases of
one ``LOCATION`` sharing entries while each evicts down to its own
``MAX_ENTRIES``), with these differences:

- Eviction is least recently used, one entry at a time, at exactly
  ``MAX_ENTRIES``; ``CULL_FREQUENCY`` has nothing to tune and is ignored.
- ``incr``/``decr`` are atomic across threads, keep the entry's expiry,
  and ``incr_version``/``decr_version`` move the entry with its expiry.
- The ``a*`` methods run in the caller's event loop: nothing here waits
  on I/O, so a hop to a thread would only add cost. Only a value whose
  pickling may not run in an event loop (a lazy ``QuerySet`` runs its
  query) is pickled in a thread.
- Values of the exact types ``str``, ``int``, ``float``, ``bool`` and
  ``None`` are stored as they are (they cannot be changed in place, so
  sharing them is safe); everything else is pickled.
- A ``TIMEOUT`` with a fraction (0.5) is kept as given; Django's own
  backends truncate it (to 0: "do not cache").
- Expiry follows the monotonic clock, so a change of the wall clock does
  not expire entries or keep them alive. A lifetime is capped at about
  35 years; longer timeouts (and ``None``) keep entries until evicted.
- ``OPTIONS["CLOCK"]`` (a callable returning seconds, or its dotted
  path) replaces that clock, for tests that move time by hand. It is the
  ``LOCATION``'s: the aliases of that ``LOCATION`` built later follow it,
  and one naming another clock is refused.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final, cast

from django.core.cache.backends.base import DEFAULT_TIMEOUT
from django.utils.module_loading import import_string

from .._core import Cache
from ..http import SettingError
from .cache_keys import InlineKeys
from .cache_store import _LONGEST, _apack, _Entry, _pack, _store_for, _unpack

__all__ = ["CacheBackend"]

_MISSING: Any = object()


# The largest MAX_ENTRIES and MAX_BYTES the C cache takes.
_MOST: Final = {"MAX_ENTRIES": 2**30 - 1, "MAX_BYTES": 2**63 - 1}


def _positive_int(options: Mapping[str, Any], name: str, default: int | None) -> Any:
    value = options.get(name, default)
    if value is None and default is None:
        return None
    if isinstance(value, str):
        # Django's BaseCache reads MAX_ENTRIES with int(): "300" is 300.
        try:
            value = int(value)
        except ValueError:
            raise SettingError(
                f"OPTIONS[{name!r}]", f"must be an int, got {value!r}"
            ) from None
    if isinstance(value, bool) or not isinstance(value, int):
        raise SettingError(
            f"OPTIONS[{name!r}]", f"must be an int, not {type(value).__name__}"
        )
    if value < 1:
        raise SettingError(f"OPTIONS[{name!r}]", f"must be >= 1, got {value}")
    if value > _MOST[name]:
        raise SettingError(
            f"OPTIONS[{name!r}]", f"must be at most {_MOST[name]}, got {value}"
        )
    return value


def _seconds_from_text(text: str) -> int | float:
    """A TIMEOUT given as text ("60", as Django's int() reads it, or
    "0.5", a fraction kept as given)."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        raise SettingError(
            "TIMEOUT", f"must be a number of seconds or None, got {text!r}"
        ) from None


def _clock_setting(value: Any) -> Callable[[], float] | None:
    """OPTIONS["CLOCK"]: a callable returning seconds (a monotonic clock;
    tests give a fake one), or its dotted path."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = import_string(value)
        except ImportError as e:
            raise SettingError("OPTIONS['CLOCK']", str(e)) from None
    if not callable(value):
        raise SettingError(
            "OPTIONS['CLOCK']",
            f"must be a callable returning seconds, not {type(value).__name__}",
        )
    return cast("Callable[[], float]", value)


class CacheBackend(InlineKeys):
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
        if isinstance(timeout, str):
            # Django's BaseCache reads TIMEOUT with int(): "60" is 60 s.
            timeout = _seconds_from_text(timeout)
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
        clock = _clock_setting(options.get("CLOCK"))
        # BaseCache reads TIMEOUT, MAX_ENTRIES and CULL_FREQUENCY with
        # int(), an OverflowError for an infinity: they are checked above
        # (CULL_FREQUENCY is ignored), so it is given plain ones.
        super().__init__(
            {**params, "timeout": None, "max_entries": 300, "cull_frequency": 3}
        )
        # BaseCache truncates TIMEOUT to an int, so 0.5 would mean "never
        # cache"; a fraction of a second is kept as given.
        self.default_timeout = timeout
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        # The bounds this backend keeps to (MAX_ENTRIES, MAX_BYTES).
        self._limits = (max_entries, max_bytes)
        location = str(location or "")

        default = self.default_timeout
        store = _store_for(
            location,
            max_entries,
            max_bytes,
            default if default is not None and 0 < default < _LONGEST else None,
            clock,
        )
        self._store = store
        self._lock = store.lock
        self._now = store.now
        # What the C cache takes as "never expires": None when it has no
        # TTL of its own, else the longest lifetime it accepts.
        self._never: float | None = None if store.ttl is None else _LONGEST

    # -- timeouts and writes -------------------------------------------------

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

    def _put(
        self, key: str, payload: Any, ttl: float | None, expires: float | None = None
    ) -> None:
        """Store under the lock; ttl from _ttl (0.0: remove instead). The
        entry's deadline is ``expires`` when given, else now + ttl."""
        cache = self._store.cache
        max_bytes = self._limits[1]
        if max_bytes is not None and sys.getsizeof(payload) > max_bytes:
            # Too big to keep at all: drop the old value, as memcached
            # does with a value past its size limit, and do not raise.
            cache.pop(key, None)
        elif ttl is None:
            cache.set(key, (payload, None), self._never)
            self._trim(cache)
        elif ttl > 0.0:
            if expires is None:
                expires = self._now() + ttl
            cache.set(key, (payload, expires), ttl)
            self._trim(cache)
        else:
            cache.pop(key, None)

    def _trim(self, cache: Cache[str, _Entry]) -> None:
        """Under the lock, after a write: evict the least recently used
        entries down to this backend's own bounds, where they are
        tighter than the C cache's (an alias of a LOCATION shared with a
        larger one). Otherwise one len() finds nothing to do."""
        max_entries, max_bytes = self._limits
        while len(cache) > max_entries or (
            max_bytes is not None and cache.weight > max_bytes
        ):
            cache.popitem()
            self._store.trimmed += 1

    # -- the BaseCache interface ----------------------------------------------

    def get(self, key: Any, default: Any = None, version: Any = None) -> Any:
        entry = self._store.cache.get(self._key(key, version), _MISSING)
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
        return self._add(self._key(key, version), self._ttl(timeout), _pack(value))

    def _add(self, k: str, ttl: float | None, payload: Any) -> bool:
        with self._lock:
            if k in self._store.cache:
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
            entry = self._store.cache.peek(k, _MISSING)
            if entry is _MISSING:
                return False
            self._put(k, entry[0], ttl)
            return True

    def delete(self, key: Any, version: Any = None) -> bool:
        k = self._key(key, version)
        with self._lock:
            return self._store.cache.pop(k, _MISSING) is not _MISSING

    def has_key(self, key: Any, version: Any = None) -> bool:
        return self._key(key, version) in self._store.cache

    def incr(self, key: Any, delta: Any = 1, version: Any = None) -> Any:
        k = self._key(key, version)
        store = self._store
        while True:
            entry = store.cache.peek(k, _MISSING)
            if entry is _MISSING:
                raise ValueError(f"Key '{k}' not found")
            new_value = _unpack(entry[0]) + delta
            payload = _pack(new_value)
            with self._lock:
                # (A widened store's new C cache holds the same entries.)
                if store.cache.peek(k, _MISSING) is entry:
                    self._store_again(k, payload, entry[1])
                    return new_value
            # Another writer changed the entry since we read it: again.

    def decr(self, key: Any, delta: Any = 1, version: Any = None) -> Any:
        return self.incr(key, -delta, version)

    def _store_again(self, key: str, payload: Any, expires: float | None) -> None:
        """Store under the lock, expiring at ``expires`` (a monotonic
        deadline, or None): the life left to the entry it replaces."""
        if expires is None:
            self._put(key, payload, None)
        else:
            self._put(key, payload, expires - self._now(), expires)

    def get_many(self, keys: Iterable[Any], version: Any = None) -> dict[Any, Any]:
        get = self._store.cache.get
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
        self._put_many(
            [(self._key(k, version), _pack(v)) for k, v in data.items()], ttl
        )
        return []

    def _put_many(self, items: list[tuple[str, Any]], ttl: float | None) -> None:
        with self._lock:
            for k, payload in items:
                self._put(k, payload, ttl)

    def delete_many(self, keys: Iterable[Any], version: Any = None) -> None:
        made = [self._key(k, version) for k in keys]
        with self._lock:
            for k in made:
                self._store.cache.pop(k, None)

    def clear(self) -> None:
        with self._lock:
            self._store.cache.clear()

    def incr_version(self, key: Any, delta: int = 1, version: Any = None) -> int:
        """Move the entry to version + delta, keeping its expiry."""
        if version is None:
            version = self.version
        old = self._key(key, version)
        new = self._key(key, version + delta)
        with self._lock:
            entry = self._store.cache.pop(old, _MISSING)
            if entry is _MISSING:
                raise ValueError(f"Key '{key}' not found")
            self._store_again(new, entry[0], entry[1])
        return int(version + delta)

    def decr_version(self, key: Any, delta: int = 1, version: Any = None) -> int:
        return self.incr_version(key, -delta, version)

    def stats(self) -> dict[str, int | None]:
        """The counts of this LOCATION's entries (shared by every backend
        of it): hits, misses, evictions, expirations, size; and this
        backend's bounds: maxsize (MAX_ENTRIES), and weight, maxweight
        (MAX_BYTES) when it has one."""
        store = self._store
        stats = store.cache.stats()
        for name, carried in store.carried.items():
            stats[name] = (stats[name] or 0) + carried
        stats["evictions"] = (stats["evictions"] or 0) + store.trimmed
        max_entries, max_bytes = self._limits
        stats["maxsize"] = max_entries
        if max_bytes is None:
            stats.pop("weight", None)
            stats.pop("maxweight", None)
        else:
            stats["maxweight"] = max_bytes
        return stats

    # -- async: the same work, in the caller's event loop ---------------------

    async def aget(self, key: Any, default: Any = None, version: Any = None) -> Any:
        return self.get(key, default, version)

    async def aset(
        self, key: Any, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: Any = None
    ) -> None:
        k = self._key(key, version)
        ttl = self._ttl(timeout)
        payload = await _apack(value)
        with self._lock:
            self._put(k, payload, ttl)

    async def aadd(
        self, key: Any, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: Any = None
    ) -> bool:
        k = self._key(key, version)
        ttl = self._ttl(timeout)
        return self._add(k, ttl, await _apack(value))

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
        ttl = self._ttl(timeout)
        items = [(self._key(k, version), await _apack(v)) for k, v in data.items()]
        self._put_many(items, ttl)
        return []

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
        # As get_or_set, with aadd: the default may be a lazy QuerySet.
        value = self.get(key, _MISSING, version)
        if value is _MISSING:
            if callable(default):
                default = default()
            await self.aadd(key, default, timeout, version)
            return self.get(key, default, version)
        return value

    async def aincr_version(self, key: Any, delta: int = 1, version: Any = None) -> int:
        return self.incr_version(key, delta, version)

    async def adecr_version(self, key: Any, delta: int = 1, version: Any = None) -> int:
        return self.incr_version(key, -delta, version)
