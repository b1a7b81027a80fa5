"""The Redis cache: ``RedisCache``, the ``stanchion.Cache`` subset a
remote store can keep, with its asyncio twins.

Keys are the caller's str/bytes as they are, or a canonical encoding of
other hashable values (the same in every process); values go through a
serializer (pickle, JSON or the caller's). When Redis fails, reads miss
and writes are dropped, or ``StorageUnavailable`` is raised.
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from typing import Any

from .._checks import check_seconds
from .._errors import StorageUnavailable
from .._shared_cache import _MISSING, _serializer
from .._shared_cache import Serializer as Serializer
from .._shared_cache import _cache_key as _shared_key
from .connections import _Connector
from .limiter import RedisStorage
from .links import _glob_escape
from .outage import _Guard, _Unavailable, _Who

_CACHE_MEANWHILE = {
    "ignore": "reads miss and writes are dropped",
    "raise": "calls raise StorageUnavailable (on_error='raise')",
}


def _connector_of(
    client_or_url: object, timeout: float, retry_interval: float
) -> _Connector:
    if isinstance(client_or_url, RedisStorage):
        return client_or_url._connector
    return _Connector(client_or_url, timeout, retry_interval)


# =============================================================================
# The cache
# =============================================================================


def _cache_key(key: object) -> bytes:
    """``key`` as stored in Redis (under the cache's prefix): see
    ``stanchion._shared_cache._cache_key``."""
    return _shared_key(key, "RedisCache")


class RedisCache:
    """A cache in Redis, shared by every process: the ``stanchion.Cache``
    subset that a remote store can keep (``get``/``set``/``delete``/``ttl``/
    ``clear``, ``c[k]``, ``k in c``) and their asyncio twins (``aget``...).

    Keys are stored under ``prefix``: str and bytes keys as they are,
    other keys (ints, floats, None, and tuples or frozensets of these, as
    ``@cached`` builds them) by a canonical encoding that is the same in
    every process. Values go through ``serializer``: ``"pickle"``
    (default; only for data you trust: a pickle can run code when loaded),
    ``"json"``, or any object with ``dumps(value) -> bytes | str`` and
    ``loads(bytes) -> value``. ``ttl`` is the default lifetime in seconds
    (None: no expiry), used whenever ``set`` is given no ttl; it is kept
    as ``default_ttl``.

    It follows ``stanchion.CacheBackend``, so ``@cached(backend=cache)``
    keeps results in Redis. Keys from ``@cached`` are built from the
    arguments only: give each cached function its own namespace,
    ``@cached(backend=cache.namespace("users"))``.

    When Redis fails, reads miss, writes are dropped and deletes report
    False, logged once per outage; ``on_error="raise"`` raises
    ``stanchion.StorageUnavailable`` instead. There is no single-flight
    across processes: ``@cached`` computes once per key per process, so on
    a cold key each process may compute it once.

    ``client_or_url`` is as for ``RedisStorage``, or a ``RedisStorage``
    whose connections, timeout and outage state are then shared.
    """

    def __init__(
        self,
        client_or_url: object,
        *,
        prefix: str = "stanchion:cache:",
        ttl: float | None = None,
        serializer: str | Serializer = "pickle",
        timeout: float = 0.1,
        on_error: str = "ignore",
    ) -> None:
        if not isinstance(prefix, str):
            raise TypeError(f"prefix must be a str, not {type(prefix).__name__}")
        if not prefix:
            raise ValueError(
                "prefix must not be empty: clear() deletes every key under it"
            )
        if ttl is not None:
            ttl = check_seconds("ttl", ttl, zero_ok=False)
        ser = _serializer(serializer)
        timeout = check_seconds("timeout", timeout, zero_ok=False)
        if on_error not in ("ignore", "raise"):
            raise ValueError(f"on_error must be 'ignore' or 'raise', got {on_error!r}")
        self._connector = _connector_of(client_or_url, timeout, 0.1)
        self.prefix = prefix
        self._prefix = prefix.encode()
        self.default_ttl = ttl
        self.on_error = on_error
        self._who = _Who("stanchion cache", _CACHE_MEANWHILE[on_error])
        self._guard = _Guard(self._connector, self._who)
        self._dumps = ser.dumps
        self._loads = ser.loads

    def __repr__(self) -> str:
        where = self._connector.where
        return f"RedisCache({where!r}, prefix={self.prefix!r}, ttl={self.default_ttl})"

    def namespace(self, name: str) -> RedisCache:
        """The same cache under ``prefix + name + ":"`` (same connections,
        serializer, ttl and on_error): one per cached function."""
        if not isinstance(name, str):
            raise TypeError(f"name must be a str, not {type(name).__name__}")
        if not name:
            raise ValueError("name must not be empty")
        child = object.__new__(RedisCache)
        child.__dict__.update(self.__dict__)
        child.prefix = f"{self.prefix}{name}:"
        child._prefix = child.prefix.encode()
        return child

    # -- pieces shared by both sides ------------------------------------------

    def _key(self, key: object) -> bytes:
        return self._prefix + _cache_key(key)

    def _set_args(self, key: object, value: Any, ttl: float | None) -> tuple[Any, ...]:
        rkey = self._key(key)
        if ttl is None:
            ttl = self.default_ttl
        else:
            ttl = check_seconds("ttl", ttl, zero_ok=False)
        data = self._dumps(value)
        if isinstance(data, str):
            data = data.encode()
        elif isinstance(data, (bytearray, memoryview)):
            data = bytes(data)
        elif not isinstance(data, bytes):
            raise TypeError(
                f"the serializer's dumps returned {type(data).__name__}, "
                "not bytes or str"
            )
        if ttl is None:
            return ("SET", rkey, data)
        return ("SET", rkey, data, "PX", max(1, math.ceil(ttl * 1000)))

    def _settle(self, reply: Any) -> Any:
        """A command's reply; _MISSING when Redis did not answer (and
        on_error lets that pass)."""
        if isinstance(reply, _Unavailable):
            if self.on_error == "raise":
                raise StorageUnavailable(
                    f"Redis at {self._connector.where} is unavailable"
                ) from reply.cause
            return _MISSING
        return reply

    def _value(self, data: Any, default: Any) -> Any:
        if data is None or data is _MISSING:
            return default
        return self._loads(data)

    @staticmethod
    def _counted(n: Any) -> bool:
        return n is not _MISSING and int(n) > 0

    @staticmethod
    def _pttl(reply: Any) -> float | None:
        if reply is _MISSING:
            return None
        ms = int(reply)
        if ms == -2:
            raise KeyError("no such key")
        return None if ms < 0 else ms / 1000

    def _pattern(self) -> bytes:
        return _glob_escape(self._prefix) + b"*"

    # -- blocking --------------------------------------------------------------

    def _call(self, *args: Any) -> Any:
        """A command's reply; _MISSING when Redis failed (and on_error lets
        it pass)."""
        link = self._connector.sync_link()
        return self._settle(self._guard.call(link.call, *args))

    def _scan_delete(self, pattern: bytes) -> Any:
        link = self._connector.sync_link()
        return self._settle(self._guard.call(link.scan_delete, pattern))

    def get(self, key: Hashable, default: Any = None) -> Any:
        """The value for ``key``, or ``default`` when absent (or Redis is
        unavailable)."""
        return self._value(self._call("GET", self._key(key)), default)

    def set(self, key: Hashable, value: Any, ttl: float | None = None) -> None:
        """Store ``value`` for ``ttl`` seconds (default: the cache's ttl)."""
        self._call(*self._set_args(key, value, ttl))

    def delete(self, key: Hashable) -> bool:
        """Remove ``key``; True if it was there."""
        return self._counted(self._call("UNLINK", self._key(key)))

    def ttl(self, key: Hashable) -> float | None:
        """Seconds until ``key`` expires, or None when it never does (or
        Redis is unavailable); KeyError when it is absent."""
        return self._pttl(self._call("PTTL", self._key(key)))

    def clear(self) -> None:
        """Delete every key under the prefix (SCAN + UNLINK on every master,
        never FLUSHDB)."""
        self._scan_delete(self._pattern())

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
        """True when ``key`` is stored (False when Redis is unavailable)."""
        return self._counted(self._call("EXISTS", self._key(key)))

    def close(self) -> None:
        self._connector.close()

    # -- raw commands under this cache's prefix (for the response cache) ----

    def _raw_key(self, key: str | bytes) -> bytes:
        """``key`` under this cache's prefix, as stored in Redis (no
        serialization: for callers that build their own commands)."""
        if isinstance(key, str):
            key = key.encode("utf-8", "surrogateescape")
        elif not isinstance(key, bytes):
            raise TypeError(f"key must be str or bytes, not {type(key).__name__}")
        return self._prefix + key

    def _command(self, *args: Any) -> Any:
        """Run one Redis command; its reply, or None when Redis is
        unavailable and ``on_error`` lets that pass."""
        reply = self._call(*args)
        return None if reply is _MISSING else reply

    async def _acommand(self, *args: Any) -> Any:
        """``_command`` with asyncio."""
        reply = await self._acall(*args)
        return None if reply is _MISSING else reply

    def _delete_raw_prefix(self, prefix: bytes) -> int:
        """Delete every key starting with ``prefix`` (a full key from
        ``_raw_key``); how many were deleted (0 when Redis is unavailable
        and ``on_error`` lets that pass)."""
        if not isinstance(prefix, bytes):
            raise TypeError(f"prefix must be bytes, not {type(prefix).__name__}")
        n = self._scan_delete(_glob_escape(prefix) + b"*")
        return 0 if n is _MISSING else int(n)

    # -- asyncio: the same steps, awaiting the I/O -------------------------------

    async def _acall(self, *args: Any) -> Any:
        link = self._connector.async_link
        return self._settle(await self._guard.acall(link.call, *args))

    async def aget(self, key: Hashable, default: Any = None) -> Any:
        return self._value(await self._acall("GET", self._key(key)), default)

    async def aset(self, key: Hashable, value: Any, ttl: float | None = None) -> None:
        await self._acall(*self._set_args(key, value, ttl))

    async def adelete(self, key: Hashable) -> bool:
        return self._counted(await self._acall("UNLINK", self._key(key)))

    async def attl(self, key: Hashable) -> float | None:
        return self._pttl(await self._acall("PTTL", self._key(key)))

    async def acontains(self, key: Hashable) -> bool:
        return self._counted(await self._acall("EXISTS", self._key(key)))

    async def aclear(self) -> None:
        link = self._connector.async_link
        self._settle(await self._guard.acall(link.scan_delete, self._pattern()))

    async def aclose(self) -> None:
        await self._connector.aclose()
