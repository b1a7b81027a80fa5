"""A Sentinel-managed client: the storage and the cache talk to the
master its Sentinels name, follow a failover, and refuse at construction
a client whose server they could not follow. Real redis-server processes:
a master, a replica and a Sentinel (``redis-server --sentinel``)."""

from __future__ import annotations

import pytest
import redis
import redis.asyncio as aredis
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.sentinel import Sentinel

import stanchion
from stanchion.redis import RedisCache, RedisStorage

from ._redis import SLOW, RedisSentinelGroup, RedisServer


def _keys(server: RedisServer, pattern: str) -> list[str]:
    return server.cli("--scan", "--pattern", pattern).split()


def test_blocking_client_follows_a_failover(redis_sentinel: RedisSentinelGroup) -> None:
    group = redis_sentinel
    client = Sentinel([("127.0.0.1", group.sentinel_port)]).master_for(group.NAME)
    storage = RedisStorage(client, timeout=SLOW)
    lim = stanchion.Limiter("4/minute", storage=storage, on_error="allow")
    cache = RedisCache(storage)
    try:
        assert "mymaster" in repr(storage)
        assert lim.hit("k").remaining == 3
        assert lim.hit("k").remaining == 2
        cache.set("c", 1)
        old = group.master
        assert len(_keys(old, "stanchion:{k}*")) == 1
        new = group.failover()
        # The next calls go to the new master: the count goes on there and
        # the limit holds (with on_error="allow" a lost server would allow).
        assert lim.hit("k").remaining == 1
        assert lim.hit("k").remaining == 0
        assert not lim.hit("k")
        assert cache.get("c") == 1
        cache.set("c2", 2)
        assert "role:master" in new.cli("INFO", "replication")
        assert "role:slave" in old.cli("INFO", "replication")
        # The old master, now gone, is not needed.
        old.kill()
        assert not lim.hit("k")
        assert lim.peek("k").limit == 4
        assert storage._connector.down_since is None
        assert sorted(_keys(new, "stanchion:cache:*")) == [
            "stanchion:cache:c",
            "stanchion:cache:c2",
        ]
    finally:
        storage.close()


async def test_asyncio_client_follows_a_failover(
    redis_sentinel: RedisSentinelGroup,
) -> None:
    group = redis_sentinel
    sentinel = AsyncSentinel([("127.0.0.1", group.sentinel_port)])
    client = sentinel.master_for(group.NAME)
    storage = RedisStorage(client, timeout=SLOW)
    lim = stanchion.Limiter("4/minute", storage=storage, on_error="allow")
    try:
        assert (await lim.ahit("k")).remaining == 3
        assert (await lim.ahit("k")).remaining == 2
        old = group.master
        new = group.failover()
        assert (await lim.ahit("k")).remaining == 1
        assert (await lim.ahit("k")).remaining == 0
        assert not await lim.ahit("k")
        old.kill()
        assert not await lim.ahit("k")
        assert storage._connector.down_since is None
        assert len(_keys(new, "stanchion:{k}*")) == 1
    finally:
        await storage.aclose()
        await client.aclose()
        for conn in sentinel.sentinels:
            await conn.aclose()


def test_clients_that_cannot_be_followed_are_refused() -> None:
    # Nothing connects at construction: no server is needed.
    sentinel = Sentinel([("127.0.0.1", 1)])
    with pytest.raises(ValueError, match="replica"):
        RedisStorage(sentinel.slave_for("x"))
    with pytest.raises(ValueError, match="replica"):
        RedisCache(AsyncSentinel([("127.0.0.1", 1)]).slave_for("x"))
    # A pool that hands out connections its own way.

    class Elsewhere(redis.ConnectionPool):
        def make_connection(self) -> redis.connection.ConnectionInterface:
            conn = super().make_connection()
            conn.port = 6380  # type: ignore[attr-defined]
            return conn

    class AsyncElsewhere(aredis.BlockingConnectionPool):
        async def get_connection(self, *args: object, **kw: object) -> object:
            return await super().get_connection()

    with pytest.raises(ValueError, match="make_connection"):
        RedisStorage(redis.Redis(connection_pool=Elsewhere()))
    with pytest.raises(ValueError, match="get_connection"):
        RedisCache(aredis.Redis(connection_pool=AsyncElsewhere()))
    # redis-py's own pools, without a host (localhost), are followed.
    RedisStorage(redis.Redis(connection_pool=redis.BlockingConnectionPool(port=1)))
