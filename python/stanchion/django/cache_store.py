"""The entries of ``CacheBackend``: what an entry of the C cache is (a
payload and its deadline), how a value becomes a payload and back, and
the store of one ``LOCATION`` that every backend built for it shares
(its C cache, the lock its writers take, its clock)."""

from __future__ import annotations

import pickle
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, Final

from asgiref.sync import sync_to_async
from django.core.exceptions import SynchronousOnlyOperation

from .._core import Cache
from ..http import SettingError

_PICKLE_PROTOCOL: Final = pickle.HIGHEST_PROTOCOL

# Values stored without pickling: immutable, so sharing one is harmless.
# `bytes` is left out: a stored payload of type bytes means "pickled".
_PLAIN: Final = frozenset({str, int, float, bool, type(None)})

# The C cache's longest lifetime is 2**60 ns (about 36.5 years); longer
# timeouts are kept as "until evicted" at this (about 34.9 years).
_LONGEST: Final = 1.1e9

# An entry in the C cache: (payload, expires). The payload is the value
# itself (a _PLAIN type) or its pickle (bytes). `expires` is the
# deadline on the store's clock (time.monotonic() unless OPTIONS CLOCK
# gives one), or None: the C cache expires entries by
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


async def _apack(value: Any) -> Any:
    """_pack from an event loop. Pickling runs the value's own code, and
    some may not run in an event loop: a lazy QuerySet evaluates itself,
    and Django refuses a query there (SynchronousOnlyOperation). Such a
    value is pickled again in a thread, as Django's own backends run
    every ``a*`` method; everything else stays in the loop."""
    try:
        return _pack(value)
    except SynchronousOnlyOperation:
        return await sync_to_async(_pack)(value)


def _unpack(payload: Any) -> Any:
    if type(payload) is bytes:
        return pickle.loads(payload)
    return payload


class _Store:
    """The entries of one LOCATION (shared by every CacheBackend built
    for it, in every thread), the lock its writers take and its clock.

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

    Aliases of one LOCATION may bound it differently (MAX_ENTRIES,
    MAX_BYTES), as LocMemCache allows: the C cache keeps the loosest of
    their bounds itself, and a backend with a tighter one evicts the
    least recently used entries down to its own after each of its
    writes (see CacheBackend._trim). When a backend with a looser bound
    arrives, the entries move to a new, larger C cache (``widen``).
    """

    __slots__ = (
        "cache",
        "carried",
        "clock",
        "lock",
        "max_bytes",
        "max_entries",
        "now",
        "trimmed",
        "ttl",
        "weighs",
    )

    def __init__(
        self,
        max_entries: int,
        max_bytes: int | None,
        ttl: float | None,
        clock: Callable[[], float] | None,
    ) -> None:
        self.lock = threading.Lock()
        self.clock = clock  # None: the monotonic clock, read in C
        self.now: Callable[[], float] = time.monotonic if clock is None else clock
        self.ttl = ttl
        self.max_entries = max_entries
        self.max_bytes = max_bytes  # the C cache's weight bound; None: none
        self.weighs = max_bytes is not None  # some alias has MAX_BYTES
        self.trimmed = 0  # entries evicted by the tighter aliases
        self.carried = dict.fromkeys(_COUNTS, 0)  # counts of replaced C caches
        self.cache: Cache[str, _Entry] = self._new_cache()

    def _new_cache(self) -> Cache[str, _Entry]:
        maxweight = None
        if self.weighs:
            maxweight = self.max_bytes if self.max_bytes is not None else _UNBOUNDED
        return Cache(
            self.max_entries,
            # Entries given the cache's own TTL take its cheaper expiry
            # path (a queue, not a heap).
            self.ttl,
            self.clock,
            maxweight=maxweight,
            weigh=_weigh if self.weighs else None,
        )

    def widen(self, max_entries: int, max_bytes: int | None) -> None:
        """Make the C cache keep at least what a backend bounded at
        ``max_entries``/``max_bytes`` keeps. Called with _stores_lock
        held, at a backend's construction."""
        entries = max(self.max_entries, max_entries)
        weighs = self.weighs or max_bytes is not None
        # The loosest weight bound: none as soon as one alias has none.
        limit = None
        if self.max_bytes is not None and max_bytes is not None:
            limit = max(self.max_bytes, max_bytes)
        if (entries, weighs, limit) == (self.max_entries, self.weighs, self.max_bytes):
            return
        with self.lock:
            old = self.cache
            bounds = self.max_entries, self.weighs, self.max_bytes
            self.max_entries, self.weighs, self.max_bytes = entries, weighs, limit
            try:
                new = self._new_cache()
            except BaseException:
                # The store keeps the bounds of the cache it still has.
                self.max_entries, self.weighs, self.max_bytes = bounds
                raise
            never = None if new.ttl is None else _LONGEST
            now = self.now()
            for key, entry in old.items():  # least recently used first
                if entry[1] is None:
                    new.set(key, entry, never)
                elif entry[1] > now:
                    new.set(key, entry, entry[1] - now)
            counts = old.stats()
            for name in _COUNTS:
                self.carried[name] += counts[name] or 0
            self.cache = new


# The counts of a C cache's stats() that the Store carries over.
_COUNTS: Final = ("hits", "misses", "evictions", "expirations")

# The C cache's weight bound when it weighs for some alias but another
# of the same LOCATION has no MAX_BYTES.
_UNBOUNDED: Final = 2**62

# LOCATION -> store. Django builds a backend per alias per thread (and per
# override_settings), so the entries must live outside the backend object
# for threads to share them.
_stores: dict[str, _Store] = {}
_stores_lock = threading.Lock()


def _store_for(
    location: str,
    max_entries: int,
    max_bytes: int | None,
    ttl: float | None,
    clock: Callable[[], float] | None,
) -> _Store:
    """The store of ``location``: made with these bounds, TTL and clock
    if it is the first backend of it, else widened to keep what a
    backend bounded at ``max_entries``/``max_bytes`` keeps. A clock
    other than the store's is refused."""
    with _stores_lock:
        store = _stores.get(location)
        if store is None:
            store = _Store(max_entries, max_bytes, ttl, clock)
            _stores[location] = store
        elif clock is not None and clock is not store.clock:
            raise SettingError(
                "OPTIONS['CLOCK']",
                f"LOCATION {location!r} is already in use with another clock",
            )
        else:
            store.widen(max_entries, max_bytes)
    return store
