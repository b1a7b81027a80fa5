"""Connections: from a client or URL to the links, and where they go.

``_Connector`` turns what the user gave (a ``redis://``/``rediss://``/
``unix://`` URL, a blocking or asyncio client, a Sentinel-managed client,
a Redis Cluster client) into a blocking and/or an asyncio link made like
the client's connections, checks that such links reach the server the
client reaches, and describes that server for log lines (never with its
password). It also carries the outage state shared by every limiter and
cache on the same connections.
"""

from __future__ import annotations

from typing import Any

import redis as _redis
import redis.asyncio as _aredis
from redis.asyncio.cluster import RedisCluster as _AsyncRedisCluster
from redis.asyncio.sentinel import SentinelConnectionPool as _AsyncSentinelPool
from redis.asyncio.sentinel import (
    SentinelManagedConnection as _AsyncSentinelManaged,
)
from redis.cluster import RedisCluster as _RedisCluster
from redis.sentinel import SentinelConnectionPool as _SentinelPool
from redis.sentinel import SentinelManagedConnection as _SentinelManaged

from .links import _AsyncLink, _ClusterAsync, _ClusterSync, _SyncLink
from .outage import _Outage
from .wire import _async_link, _sync_link

_URL_SCHEMES = ("redis://", "rediss://", "unix://")


class _Connector(_Outage):
    """The links to one server (or cluster), and its outage state."""

    def __init__(
        self, client_or_url: object, timeout: float, retry_interval: float
    ) -> None:
        super().__init__(retry_interval)
        self.timeout = timeout
        self.sync: _SyncLink | None = None
        self._async: _AsyncLink | None = None
        self._async_url: str | None = None
        self.where = ""
        c = client_or_url
        if isinstance(c, str):
            if not c.startswith(_URL_SCHEMES):
                raise ValueError(
                    f"unsupported Redis URL {c!r}: use redis://, rediss:// or unix://"
                )
            pool = _redis.ConnectionPool.from_url(c)
            self.sync = _sync_link(
                pool.connection_class, pool.connection_kwargs, timeout
            )
            self._async_url = c
            self.where = _describe(pool.connection_kwargs)
        elif isinstance(c, _RedisCluster):
            self.sync = _ClusterSync(c)
            self.where = "Redis Cluster"
        elif isinstance(c, _AsyncRedisCluster):
            self._async = _ClusterAsync(c, timeout)
            self.where = "Redis Cluster"
        elif isinstance(c, _redis.Redis):
            pool = c.connection_pool
            self.where = _followed(pool)
            self.sync = _sync_link(
                pool.connection_class, pool.connection_kwargs, timeout
            )
        elif isinstance(c, _aredis.Redis):
            apool = c.connection_pool
            self.where = _followed(apool)
            self._async = _async_link(
                apool.connection_class, apool.connection_kwargs, timeout
            )
        else:
            raise TypeError(
                "expected a redis.Redis, redis.asyncio.Redis or RedisCluster client, "
                f"or a redis:// URL, not {type(c).__name__}"
            )
        # The server's clock as seen from here: server time (us) minus
        # time.monotonic() (us) when an answer came back, a lower bound
        # of the true difference (the server read its clock before the
        # answer), the largest seen (see RedisLimiter._late). None until
        # a hit is answered, and on Redis Cluster, whose nodes have clocks
        # of their own (hits there carry no deadline).
        self.skew: float | None = None
        self.deadlines = not isinstance(c, (_RedisCluster, _AsyncRedisCluster))
        self.timeout_us = timeout * 1e6

    @property
    def async_link(self) -> _AsyncLink:
        link = self._async
        if link is None:
            if self._async_url is None:
                raise TypeError(
                    "this Redis storage was given a blocking client: use the "
                    "blocking methods, or give it a redis.asyncio client or a URL"
                )
            apool = _aredis.ConnectionPool.from_url(self._async_url)
            link = self._async = _async_link(
                apool.connection_class, apool.connection_kwargs, self.timeout
            )
        return link

    def sync_link(self) -> _SyncLink:
        if self.sync is None:
            raise TypeError(
                "this Redis storage was given an asyncio client: use the async "
                "methods (ahit, apeek, ...), or give it a blocking client or a URL"
            )
        return self.sync

    def close(self) -> None:
        if self.sync is not None:
            self.sync.close()

    async def aclose(self) -> None:
        if self._async is not None:
            await self._async.aclose()


def _describe(kwargs: dict[str, Any]) -> str:
    """Where a connection made from ``kwargs`` goes (never its password)."""
    if kwargs.get("path"):
        where = f"unix:{kwargs['path']}"
    else:
        where = f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}"
    db = kwargs.get("db")
    return f"{where}/{db}" if db else where


_SENTINEL_CLASSES = (_SentinelManaged, _AsyncSentinelManaged)


def _pool_method(cls: type[Any], name: str) -> Any:
    return getattr(cls, name, None)


# How redis-py's own pools hand out connections: made from the pool's
# connection class and settings (Sentinel's pools through the same
# methods, their connections asking Sentinel for the master).
_KNOWN_POOL_METHODS = frozenset(
    _pool_method(cls, name)
    for cls in (
        _redis.ConnectionPool,
        _redis.BlockingConnectionPool,
        _aredis.ConnectionPool,
        _aredis.BlockingConnectionPool,
        _SentinelPool,
        _AsyncSentinelPool,
    )
    for name in ("get_connection", "make_connection")
)


def _followed(pool: Any) -> str:
    """Check that the links, which make connections from ``pool``'s
    connection class and settings and connect them with connect(), reach
    the server the pool's own connections reach; where that is.

    A Sentinel-managed connection asks its pool's Sentinels for the
    master whenever it connects, so the links follow a failover. A pool
    class that hands out connections its own way could send them
    elsewhere: refused."""
    kwargs = pool.connection_kwargs
    if issubclass(pool.connection_class, _SENTINEL_CLASSES):
        if not getattr(pool, "is_master", False):
            raise ValueError(
                "a Sentinel replica client (slave_for) cannot take the writes "
                "of limits and caches: give Sentinel.master_for(...)"
            )
        if kwargs.get("connection_pool") is None:
            raise ValueError(
                "this Sentinel-managed client's connections have no pool to ask "
                "Sentinel for the master"
            )
        service = getattr(pool, "service_name", "?")
        db = kwargs.get("db")
        return f"Sentinel master {service!r}" + (f" db {db}" if db else "")
    own = [
        name
        for name in ("get_connection", "make_connection")
        if _pool_method(type(pool), name) not in _KNOWN_POOL_METHODS
    ]
    if own:
        raise ValueError(
            f"cannot follow this client: its pool ({type(pool).__name__}) has its "
            f"own {' and '.join(own)}, so connections made from its settings "
            "might reach another server; give a redis.Redis with a redis-py "
            "pool, a Sentinel.master_for(...) client or a URL"
        )
    return _describe(kwargs)
