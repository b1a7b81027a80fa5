"""Stores: where entries live, behind one small protocol.

:class:`Store` is what the serving flow asks of a store, blocking and
asyncio: the Vary names of a resource, an entry, storing both, and the
invalidations. ``_LocalStore`` keeps them in a C :class:`stanchion.Cache`
bounded by bytes; ``_RedisStore`` in Redis through a
``stanchion.RedisCache``; ``_MemcachedStore`` in Memcached through a
``stanchion.MemcachedCache``.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from .._core import Cache
from .entries import Entry

_MISSING: Any = object()
_VARY_OVERHEAD = 320  # per Vary record: the record, its tuple, the slot


class Store(Protocol):
    """What the serving flow asks of a store. ``shared`` says whether
    other processes see the entries (Redis) or only this one."""

    shared: bool

    def get_vary(self, path: str) -> tuple[str, ...] | None: ...
    def get(self, key: str) -> Entry | None: ...
    def put(self, entry: Entry, vary: tuple[str, ...], ttl: float) -> None: ...
    def delete(self, key: str) -> bool: ...
    def delete_prefix(self, prefix: str) -> int: ...
    def delete_tag(self, tag: str) -> int: ...
    def clear(self) -> None: ...
    def close(self) -> None: ...
    async def aclose(self) -> None: ...
    async def aget_vary(self, path: str) -> tuple[str, ...] | None: ...
    async def aget(self, key: str) -> Entry | None: ...
    async def aput(self, entry: Entry, vary: tuple[str, ...], ttl: float) -> None: ...


class _VaryRecord:
    """The Vary names stored for one resource, and what they weigh (the
    key included)."""

    __slots__ = ("names", "weight")

    def __init__(self, key: str, names: tuple[str, ...]) -> None:
        self.names = names
        self.weight = len(key) + sum(len(n) + 64 for n in names) + _VARY_OVERHEAD


class _LocalStore:
    """Entries and per-resource Vary names in a C Cache bounded by bytes.
    An entry heavier than the whole bound is not kept."""

    shared = False

    def __init__(self, cache: Cache[str, Any]) -> None:
        self.cache = cache

    def get_vary(self, path: str) -> tuple[str, ...] | None:
        record = self.cache.get("v:" + path)
        return None if record is None else record.names

    def get(self, key: str) -> Entry | None:
        return self.cache.get(key)

    def put(self, entry: Entry, vary: tuple[str, ...], ttl: float) -> None:
        vkey = "v:" + entry.path
        record = self.cache.get(vkey)
        if record is None or record.names != vary:
            record = _VaryRecord(vkey, vary)
        bound = self.cache.maxweight
        if bound is not None and entry.weight() + record.weight > bound:
            return  # it would push its own Vary record out
        try:
            self.cache.set(vkey, record, ttl)
            self.cache.set(entry.key, entry, ttl)
        except ValueError:
            pass  # heavier than the bound by the cache's own weigh

    def delete(self, key: str) -> bool:
        return self.cache.pop(key, _MISSING) is not _MISSING

    def delete_where(self, match: Callable[[str, Any], bool]) -> int:
        doomed = [k for k, v in self.cache.items() if match(k, v)]
        return sum(1 for k in doomed if self.cache.pop(k, _MISSING) is not _MISSING)

    def delete_prefix(self, prefix: str) -> int:
        """Delete the keys (``e:`` entries, ``v:`` Vary records) that
        start with ``prefix``."""
        return self.delete_where(lambda k, _: k.startswith(prefix))

    def delete_tag(self, tag: str) -> int:
        return self.delete_where(lambda k, v: isinstance(v, Entry) and tag in v.tags)

    def clear(self) -> None:
        self.cache.clear()

    def close(self) -> None:
        pass  # nothing held outside this process

    async def aclose(self) -> None:
        pass

    async def aget_vary(self, path: str) -> tuple[str, ...] | None:
        return self.get_vary(path)

    async def aget(self, key: str) -> Entry | None:
        return self.cache.get(key)

    async def aput(self, entry: Entry, vary: tuple[str, ...], ttl: float) -> None:
        self.put(entry, vary, ttl)


class _RedisStore:
    """Entries in Redis (through a ``stanchion.RedisCache``, its
    connections and outage handling), packed as JSON head + raw body, so
    no pickle is ever loaded from the server. Tags are Redis sets of the
    keys stored under them."""

    shared = True

    def __init__(self, cache: Any) -> None:
        rc = self.rc = cache.namespace("http")
        # The raw RedisCache methods this store is built on, in one place.
        self._raw_key: Callable[[str], Any] = rc._raw_key
        self._command: Callable[..., Any] = rc._command
        self._acommand: Callable[..., Awaitable[Any]] = rc._acommand
        self._delete_raw_prefix: Callable[[bytes], int] = rc._delete_raw_prefix

    def _k(self, key: str) -> bytes:
        return bytes(self._raw_key(key))

    @staticmethod
    def _vary(data: Any) -> tuple[str, ...] | None:
        if data is None:
            return None
        text = bytes(data).decode()
        return tuple(text.split(",")) if text else ()

    def _put_cmds(
        self, entry: Entry, vary: tuple[str, ...], ttl: float
    ) -> list[tuple[Any, ...]]:
        px = max(1, math.ceil(ttl * 1000))
        rkey = self._k(entry.key)
        cmds: list[tuple[Any, ...]] = [
            ("SET", self._k("v:" + entry.path), ",".join(vary).encode(), "PX", px),
            ("SET", rkey, entry.pack(), "PX", px),
        ]
        for tag in entry.tags:
            tkey = self._k("t:" + tag)
            cmds.append(("SADD", tkey, rkey))
            cmds.append(("PEXPIRE", tkey, px))
        return cmds

    def get_vary(self, path: str) -> tuple[str, ...] | None:
        return self._vary(self._command("GET", self._k("v:" + path)))

    def get(self, key: str) -> Entry | None:
        data = self._command("GET", self._k(key))
        return None if data is None else Entry.unpack(bytes(data))

    def put(self, entry: Entry, vary: tuple[str, ...], ttl: float) -> None:
        for cmd in self._put_cmds(entry, vary, ttl):
            self._command(*cmd)

    def delete(self, key: str) -> bool:
        n = self._command("UNLINK", self._k(key))
        return n is not None and int(n) > 0

    def delete_prefix(self, prefix: str) -> int:
        return int(self._delete_raw_prefix(self._k(prefix)))

    def delete_tag(self, tag: str) -> int:
        tkey = self._k("t:" + tag)
        members = self._command("SMEMBERS", tkey)
        n = 0
        if members:
            n = int(self._command("UNLINK", *members) or 0)
        self._command("UNLINK", tkey)
        return n

    def clear(self) -> None:
        self.rc.clear()

    def close(self) -> None:
        self.rc.close()

    async def aclose(self) -> None:
        await self.rc.aclose()

    async def aget_vary(self, path: str) -> tuple[str, ...] | None:
        return self._vary(await self._acommand("GET", self._k("v:" + path)))

    async def aget(self, key: str) -> Entry | None:
        data = await self._acommand("GET", self._k(key))
        return None if data is None else Entry.unpack(bytes(data))

    async def aput(self, entry: Entry, vary: tuple[str, ...], ttl: float) -> None:
        for cmd in self._put_cmds(entry, vary, ttl):
            await self._acommand(*cmd)


def _path_of(key: str) -> str:
    """The raw path of an entry key (``e:<path>?<query> ...``) or a Vary
    record's resource (``<path> <scheme>://<authority>``)."""
    if key.startswith("e:"):
        return key[2:].split("?", 1)[0]
    return key.split(" ", 1)[0]


class _MemcachedStore:
    """Entries in Memcached (through a ``stanchion.MemcachedCache``, its
    connections and outage handling), packed as for Redis (no pickle).

    Memcached cannot list keys, so invalidation works by generations:
    each path has one (its entries and Vary records are read only
    under the current one, in the same round trip), so ``invalidate(
    path=...)`` is exact for that path; ``prefix=``, ``query=``,
    ``tag=`` and ``clear()`` start a new generation of the whole cache
    (every entry goes, not only the ones named). The counts they return
    are of generations started (1), not of keys."""

    shared = True

    def __init__(self, cache: Any) -> None:
        self.rc = cache.namespace("http")

    def get_vary(self, path: str) -> tuple[str, ...] | None:
        return _RedisStore._vary(self.rc._get_raw("v:" + path, _path_of(path)))

    def get(self, key: str) -> Entry | None:
        data = self.rc._get_raw(key, _path_of(key))
        return None if data is None else Entry.unpack(data)

    def put(self, entry: Entry, vary: tuple[str, ...], ttl: float) -> None:
        group = _path_of(entry.path)
        self.rc._set_raw("v:" + entry.path, ",".join(vary).encode(), ttl, group)
        self.rc._set_raw(entry.key, entry.pack(), ttl, group)

    def delete(self, key: str) -> bool:
        return bool(self.rc._delete_raw(key))

    def delete_prefix(self, prefix: str) -> int:
        if prefix.startswith("v:"):
            return 0  # gone with the entries' generation
        if prefix.startswith("e:") and prefix.endswith("?") and prefix.count("?") == 1:
            return int(self.rc._forget_group(prefix[2:-1]))
        self.rc.clear()
        return 1

    def delete_tag(self, tag: str) -> int:
        self.rc.clear()
        return 1

    def clear(self) -> None:
        self.rc.clear()

    def close(self) -> None:
        self.rc.close()

    async def aclose(self) -> None:
        await self.rc.aclose()

    async def aget_vary(self, path: str) -> tuple[str, ...] | None:
        data = await self.rc._aget_raw("v:" + path, _path_of(path))
        return _RedisStore._vary(data)

    async def aget(self, key: str) -> Entry | None:
        data = await self.rc._aget_raw(key, _path_of(key))
        return None if data is None else Entry.unpack(data)

    async def aput(self, entry: Entry, vary: tuple[str, ...], ttl: float) -> None:
        group = _path_of(entry.path)
        await self.rc._aset_raw("v:" + entry.path, ",".join(vary).encode(), ttl, group)
        await self.rc._aset_raw(entry.key, entry.pack(), ttl, group)


def _weigh(value: Any) -> int:
    if isinstance(value, Entry):
        return value.weight()
    if isinstance(value, _VaryRecord):
        return value.weight
    return 64
