"""The Memcached cache: ``MemcachedCache``, the ``stanchion.Cache`` subset a
remote store can keep, with its asyncio twins.

Keys are encoded as for ``RedisCache`` (the same in every process), then
made storable by Memcached (hashed when too long or not plain ASCII).
Each value carries a small header: the cache's generation when it was
written and its exact expiry. ``clear()`` starts a new generation (one
``incr``), since Memcached cannot list keys: entries of an older one are
never served again and expire by themselves. A read asks for the value
and the generation in one round trip.
"""

from __future__ import annotations

import math
import os
import struct
import time
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

from .._checks import check_seconds
from .._errors import StorageUnavailable
from .._outage import _Guard, _Unavailable, _Who
from .._shared_cache import _MISSING, _cache_key, _serializer
from .connection import _check_prefix, _Connector, _safe_key
from .limiter import MAX_EXPIRY, MemcachedStorage

_CACHE_MEANWHILE = {
    "ignore": "reads miss and writes are dropped",
    "raise": "calls raise StorageUnavailable (on_error='raise')",
}
#: A stored value: generation, expiry (Unix seconds, 0: none), the token
#: of the value's group (the response cache's path; 0: none), the data.
_HEADER = struct.Struct("<QdQ")
#: The generation counter's key body (stored bodies never start with
#: ``#`` unless hashed, and a hash is 40 hex digits).
_GENERATION = b"#generation"
#: Memcached reads an expiry over 30 days as a Unix time.
_RELATIVE_EXPIRY = 30 * 24 * 3600

_T = TypeVar("_T")


def _connector_of(
    client_or_url: object, timeout: float, retry_interval: float
) -> _Connector:
    if isinstance(client_or_url, MemcachedStorage):
        return client_or_url._connector
    return _Connector(client_or_url, timeout, retry_interval)


def _too_large(exc: BaseException) -> bool:
    return "too large" in str(exc).lower()


class MemcachedCache:
    """A cache in Memcached, shared by every process: ``get``/``set``/
    ``delete``/``ttl``/``clear``, ``c[k]``, ``k in c``, and their asyncio
    twins (``aget``..., run in the loop's default executor).

    ``client_or_url`` is as for :class:`MemcachedStorage`, or a
    ``MemcachedStorage`` whose connections and outage state are then
    shared. ``prefix`` starts every key; ``ttl`` is the default lifetime
    in seconds (None: until evicted); ``serializer`` is ``"pickle"``
    (default; only for data you trust), ``"json"`` or an object with
    ``dumps``/``loads``.

    It follows ``stanchion.CacheBackend``: ``@cached(backend=cache.
    namespace("users"))`` keeps results in Memcached, and the response
    cache takes it as ``backend=``. A value Memcached refuses as too
    large (1 MB by default) is not stored, and that is no outage.

    When Memcached fails, reads miss, writes are dropped and deletes
    report False, logged once per outage on the ``stanchion.memcached``
    logger; ``on_error="raise"`` raises ``stanchion.StorageUnavailable``.
    """

    def __init__(
        self,
        client_or_url: object,
        *,
        prefix: str = "stanchion:cache:",
        ttl: float | None = None,
        serializer: Any = "pickle",
        timeout: float = 0.1,
        on_error: str = "ignore",
    ) -> None:
        raw = _check_prefix(prefix)
        if not raw:
            raise ValueError("prefix must not be empty")
        if ttl is not None:
            ttl = check_seconds("ttl", ttl, zero_ok=False)
        ser = _serializer(serializer)
        timeout = check_seconds("timeout", timeout, zero_ok=False)
        if on_error not in ("ignore", "raise"):
            raise ValueError(f"on_error must be 'ignore' or 'raise', got {on_error!r}")
        self._connector = _connector_of(client_or_url, timeout, 0.1)
        self.prefix = prefix
        self._prefix = raw
        self.default_ttl = ttl
        self.on_error = on_error
        self._who = _Who("stanchion cache", _CACHE_MEANWHILE[on_error])
        self._guard = _Guard(self._connector, self._who)
        self._dumps = ser.dumps
        self._loads = ser.loads
        self._gen_key = raw + _GENERATION
        #: The last generation seen (None: not read yet).
        self._gen: int | None = None
        self._clock: Callable[[], float] = time.time

    def __repr__(self) -> str:
        where = self._connector.where
        return (
            f"MemcachedCache({where!r}, prefix={self.prefix!r}, ttl={self.default_ttl})"
        )

    def namespace(self, name: str) -> MemcachedCache:
        """The same cache under ``prefix + name + ":"`` (same connections,
        serializer, ttl and on_error; a generation of its own)."""
        if not isinstance(name, str):
            raise TypeError(f"name must be a str, not {type(name).__name__}")
        if not name:
            raise ValueError("name must not be empty")
        prefix = f"{self.prefix}{name}:"
        raw = _check_prefix(prefix)
        child = object.__new__(MemcachedCache)
        child.__dict__.update(self.__dict__)
        child.prefix = prefix
        child._prefix = raw
        child._gen_key = raw + _GENERATION
        child._gen = None
        return child

    # -- the I/O steps (each a function of the pymemcache client) ---------------

    def _key(self, key: object) -> bytes:
        return _safe_key(self._prefix, _cache_key(key, "MemcachedCache"))

    def _raw_key(self, body: str | bytes) -> bytes:
        """A key under this cache's prefix, from a str or bytes of the
        caller's own (the response cache's)."""
        if isinstance(body, str):
            body = body.encode("utf-8", "surrogateescape")
        elif not isinstance(body, bytes):
            raise TypeError(f"key must be str or bytes, not {type(body).__name__}")
        return _safe_key(self._prefix, body)

    def _read(
        self, client: Any, mkey: bytes, group: bytes | None = None
    ) -> bytes | None:
        """The data stored at ``mkey`` for the current generation (and,
        with ``group``, the group's current token) and not expired, or
        None; generation and token are read in the same round trip."""
        keys = [self._gen_key, mkey] if group is None else [self._gen_key, group, mkey]
        got = client.get_many(keys)
        raw = got.get(self._gen_key)
        # None: no counter (never set, or evicted); a write starts one.
        self._gen = None if raw is None else int(raw)
        gen = self._gen or 0
        value = got.get(mkey)
        if value is None or len(value) < _HEADER.size:
            return None
        vgen, expires, vtoken = _HEADER.unpack_from(value)
        token = 0 if group is None else int(got.get(group) or 0)
        if vgen != gen or vtoken != token or (expires and expires <= self._clock()):
            return None
        return bytes(value[_HEADER.size :])

    def _write(
        self,
        client: Any,
        mkey: bytes,
        data: bytes,
        ttl: float | None,
        group: bytes | None = None,
    ) -> bool:
        # Never under 0, what a missing counter reads as: a counter
        # evicted later (Memcached keeps small items apart from large
        # ones) must not bring back what clear() or an invalidation hid.
        token = 0
        if group is not None:
            got = client.get_many([self._gen_key, group])
            gen = self._gen = self._counter(client, self._gen_key, got)
            token = self._counter(client, group, got)
        elif self._gen is not None:
            gen = self._gen
        else:
            got = client.get_many([self._gen_key])
            gen = self._gen = self._counter(client, self._gen_key, got)
        now = self._clock()
        expires = 0.0 if ttl is None else now + ttl
        expire = 0
        if ttl is not None:
            expire = math.ceil(ttl) + 1
            if expire > _RELATIVE_EXPIRY:
                expire += int(now)
                if expire > MAX_EXPIRY:
                    expire = 0  # past 2038: kept until evicted (the header expires it)
        try:
            return bool(
                client.set(
                    mkey,
                    _HEADER.pack(gen, expires, token) + data,
                    expire=expire,
                    noreply=False,
                )
            )
        except self._connector.failures as exc:
            if _too_large(exc):
                return False  # not stored; the server is fine
            raise

    def _ttl_of(self, client: Any, mkey: bytes) -> float | None:
        got = client.get_many([self._gen_key, mkey])
        gen = int(got.get(self._gen_key) or 0)
        value = got.get(mkey)
        if value is None or len(value) < _HEADER.size:
            raise KeyError("no such key")
        vgen, expires, _ = _HEADER.unpack_from(value)
        now = self._clock()
        if vgen != gen or (expires and expires <= now):
            raise KeyError("no such key")
        return None if not expires else expires - now

    @staticmethod
    def _counter(client: Any, key: bytes, got: dict[bytes, Any]) -> int:
        """The generation counter at ``key`` (as read in ``got``); when
        there is none, one started at a random value (another writer's,
        if it started one first)."""
        raw = got.get(key)
        if raw is not None:
            return int(raw)
        start = int.from_bytes(os.urandom(6), "big") + 1
        if client.add(key, b"%d" % start, expire=0, noreply=False):
            return start
        return int(client.get(key) or start)

    @staticmethod
    def _remove(client: Any, mkey: bytes) -> bool:
        return bool(client.delete(mkey, noreply=False))

    def _new_generation(self, client: Any, group: bytes | None = None) -> int:
        """Start a new generation (of the cache, or of one ``group``):
        what was stored under the old one is never served again."""
        key = self._gen_key if group is None else group
        gen = client.incr(key, 1, noreply=False)
        if gen is None:
            # None yet: start at a random one, so entries written before
            # a lost counter are not served again.
            start = int.from_bytes(os.urandom(6), "big") + 1
            if client.add(key, b"%d" % start, expire=0, noreply=False):
                gen = start
            else:
                gen = client.incr(key, 1, noreply=False) or 0
        if group is None:
            self._gen = int(gen)
        return int(gen)

    # -- pieces shared by both sides ----------------------------------------------

    def _encode(self, value: Any) -> bytes:
        data = self._dumps(value)
        if isinstance(data, str):
            return data.encode()
        if isinstance(data, (bytearray, memoryview)):
            return bytes(data)
        if not isinstance(data, bytes):
            raise TypeError(
                f"the serializer's dumps returned {type(data).__name__}, "
                "not bytes or str"
            )
        return data

    def _ttl(self, ttl: float | None) -> float | None:
        if ttl is None:
            return self.default_ttl
        return check_seconds("ttl", ttl, zero_ok=False)

    def _settle(self, reply: Any) -> Any:
        if isinstance(reply, _Unavailable):
            # The server may come back empty (restarted): read the
            # generation again rather than write under a lost one.
            self._gen = None
            if self.on_error == "raise":
                raise StorageUnavailable(
                    f"Memcached at {self._connector.where} is unavailable"
                ) from reply.cause
            return _MISSING
        return reply

    def _value(self, data: Any, default: Any) -> Any:
        if data is None or data is _MISSING:
            return default
        return self._loads(data)

    # -- blocking ------------------------------------------------------------------

    def _call(self, io: Callable[..., _T], *args: Any) -> _T | Any:
        """``io``'s answer; _MISSING when Memcached failed (and on_error
        lets that pass)."""
        return self._settle(self._guard.call(self._connector.run, io, *args))

    def get(self, key: Hashable, default: Any = None) -> Any:
        """The value for ``key``, or ``default`` when absent (or Memcached
        is unavailable)."""
        return self._value(self._call(self._read, self._key(key)), default)

    def set(self, key: Hashable, value: Any, ttl: float | None = None) -> None:
        """Store ``value`` for ``ttl`` seconds (default: the cache's ttl)."""
        mkey, ttl = self._key(key), self._ttl(ttl)
        self._call(self._write, mkey, self._encode(value), ttl)

    def delete(self, key: Hashable) -> bool:
        """Remove ``key``; True if it was there."""
        return self._call(self._remove, self._key(key)) is True

    def ttl(self, key: Hashable) -> float | None:
        """Seconds until ``key`` expires, or None when it never does (or
        Memcached is unavailable); KeyError when it is absent."""
        left = self._call(self._ttl_of, self._key(key))
        return None if left is _MISSING else left

    def clear(self) -> None:
        """Forget every entry: a new generation (older entries are never
        served again and expire by themselves)."""
        self._call(self._new_generation)

    def __getitem__(self, key: Hashable) -> Any:
        value = self.get(key, _MISSING)
        if value is _MISSING:
            raise KeyError(key)
        return value

    def __setitem__(self, key: Hashable, value: Any) -> None:
        self.set(key, value)

    def __delitem__(self, key: Hashable) -> None:
        if not self.delete(key):
            raise KeyError(key)

    def __contains__(self, key: object) -> bool:
        """True when ``key`` is stored (False when Memcached is unavailable)."""
        data = self._call(self._read, self._key(key))
        return data is not None and data is not _MISSING

    def close(self) -> None:
        self._connector.close()

    # -- raw data under this cache's prefix, in groups (the response cache's
    # -- paths), each with a generation of its own ------------------------------

    def _group(self, name: str) -> bytes:
        return self._raw_key("#g:" + name)

    def _get_raw(self, body: str, group: str) -> bytes | None:
        data = self._call(self._read, self._raw_key(body), self._group(group))
        return None if data is _MISSING else data

    def _set_raw(self, body: str, data: bytes, ttl: float, group: str) -> None:
        self._call(self._write, self._raw_key(body), data, ttl, self._group(group))

    def _delete_raw(self, body: str) -> bool:
        return self._call(self._remove, self._raw_key(body)) is True

    def _forget_group(self, group: str) -> bool:
        """Forget everything stored in ``group``; False when Memcached
        was unavailable."""
        return self._call(self._new_generation, self._group(group)) is not _MISSING

    async def _aget_raw(self, body: str, group: str) -> bytes | None:
        data = await self._acall(self._read, self._raw_key(body), self._group(group))
        return None if data is _MISSING else data

    async def _aset_raw(self, body: str, data: bytes, ttl: float, group: str) -> None:
        mkey, gkey = self._raw_key(body), self._group(group)
        await self._acall(self._write, mkey, data, ttl, gkey)

    # -- asyncio: the same steps in the loop's executor --------------------------

    async def _acall(self, io: Callable[..., Any], *args: Any) -> Any:
        conn = self._connector
        return self._settle(await self._guard.acall(conn.arun, io, *args))

    async def aget(self, key: Hashable, default: Any = None) -> Any:
        return self._value(await self._acall(self._read, self._key(key)), default)

    async def aset(self, key: Hashable, value: Any, ttl: float | None = None) -> None:
        mkey, ttl = self._key(key), self._ttl(ttl)
        await self._acall(self._write, mkey, self._encode(value), ttl)

    async def adelete(self, key: Hashable) -> bool:
        return await self._acall(self._remove, self._key(key)) is True

    async def attl(self, key: Hashable) -> float | None:
        left = await self._acall(self._ttl_of, self._key(key))
        return None if left is _MISSING else left

    async def acontains(self, key: Hashable) -> bool:
        data = await self._acall(self._read, self._key(key))
        return data is not None and data is not _MISSING

    async def aclear(self) -> None:
        await self._acall(self._new_generation)

    async def aclose(self) -> None:
        self._connector.close()
