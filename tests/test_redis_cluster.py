"""The Redis limiter and cache on a 3-master Redis Cluster started by the
tests: multi-rate decisions, reset across masters, script reload, asyncio."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import redis.asyncio.cluster
import redis.cluster

import stanchion
from stanchion.redis import RedisCache, RedisLimiter, RedisStorage

from ._redis import SLOW, RedisCluster
from .test_redis_limiter import ALGORITHMS, pair


@pytest.fixture
def cluster_client(redis_cluster: RedisCluster) -> Iterator[redis.cluster.RedisCluster]:
    client = redis.cluster.RedisCluster(host="127.0.0.1", port=redis_cluster.port)
    yield client
    client.close()


def _keys_on_every_master(
    client: redis.cluster.RedisCluster, lim: RedisLimiter
) -> list[str]:
    by_node: dict[str, str] = {}
    for i in range(1000):
        key = f"{uuid.uuid4().hex[:6]}-{i}"
        by_node.setdefault(client.get_node_from_key(lim._key(key)).name, key)
        if len(by_node) == 3:
            return list(by_node.values())
    raise AssertionError("keys never reached three masters")


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_multi_rate_on_cluster(
    cluster_client: redis.cluster.RedisCluster, algorithm: str
) -> None:
    storage = RedisStorage(
        cluster_client, timeout=SLOW, prefix=f"c{uuid.uuid4().hex[:6]}:"
    )
    local, remote, clock = pair([(3, 1), (5, 60), (100, 3600)], algorithm, storage)
    keys = _keys_on_every_master(cluster_client, remote)
    for step in range(40):
        clock.us += 250_000 if step % 3 else 0
        for key in keys:
            assert local.hit(key) == remote.hit(key)
            assert local.peek(key, 2) == remote.peek(key, 2)
    # reset() finds this limiter's keys on every master.
    remote.reset()
    for key in keys:
        local.reset(key)
        assert local.hit(key) == remote.hit(key)
    # reset(key) on one key only.
    remote.reset(keys[0])
    assert remote.peek(keys[0]).remaining == 2 and remote.peek(keys[1]).remaining == 1


def test_cluster_script_reload(cluster_client: redis.cluster.RedisCluster) -> None:
    storage = RedisStorage(
        cluster_client, timeout=SLOW, prefix=f"c{uuid.uuid4().hex[:6]}:"
    )
    lim = stanchion.Limiter(
        "5/minute;10/hour", algorithm="sliding_window", storage=storage
    )
    assert isinstance(lim, RedisLimiter)
    keys = _keys_on_every_master(cluster_client, lim)
    for key in keys:
        assert lim.hit(key).remaining == 4
    for node in cluster_client.get_primaries():
        cluster_client.execute_command("SCRIPT", "FLUSH", target_nodes=node)
    for key in keys:
        assert lim.hit(key).remaining == 3


async def test_async_cluster(
    redis_cluster: RedisCluster, cluster_client: redis.cluster.RedisCluster
) -> None:
    client = redis.asyncio.cluster.RedisCluster(
        host="127.0.0.1", port=redis_cluster.port
    )
    try:
        prefix = f"c{uuid.uuid4().hex[:6]}:"
        storage = RedisStorage(client, timeout=SLOW, prefix=prefix)
        for algorithm in ALGORITHMS:
            local, remote, clock = pair([(3, 1), (5, 60)], algorithm, storage)
            keys = _keys_on_every_master(cluster_client, remote)
            for step in range(20):
                clock.us += 400_000 if step % 2 else 0
                for key in keys:
                    assert local.hit(key) == await remote.ahit(key)
            await remote.areset()
            for key in keys:
                assert (await remote.apeek(key)).remaining == 2
            with pytest.raises(TypeError, match="asyncio client"):
                remote.hit(keys[0])
        # The cache works there too.
        cache = RedisCache(client, timeout=SLOW, prefix=prefix + "cache:")
        for i in range(20):
            await cache.aset(f"k{i}", {"i": i}, ttl=60)
        assert await cache.aget("k7") == {"i": 7}
        await cache.aclear()
        assert await cache.aget("k7") is None
    finally:
        await client.aclose()


def test_cluster_cache(cluster_client: redis.cluster.RedisCluster) -> None:
    cache = RedisCache(
        cluster_client,
        timeout=SLOW,
        prefix=f"c{uuid.uuid4().hex[:6]}:",
        serializer="json",
    )
    for i in range(30):
        cache.set(f"k{i}", [i, "x"])
    assert cache.get("k3") == [3, "x"]
    cache.clear()
    assert "k3" not in cache


def test_cluster_hits_carry_no_deadline(
    cluster_client: redis.cluster.RedisCluster,
) -> None:
    """Each node has its own clock: one skew would not fit them all."""
    storage = RedisStorage(cluster_client)
    lim = stanchion.Limiter("5/minute", storage=storage)
    key = uuid.uuid4().hex
    for i in range(10):
        assert lim.hit(f"{key}{i}").remaining == 4
    assert storage._connector.skew is None


def test_penalty_on_cluster(cluster_client: redis.cluster.RedisCluster) -> None:
    # the rate state and the penalty record of a key share its hash tag:
    # one script call per hit on any master; bans() finds every master's
    storage = RedisStorage(
        cluster_client, timeout=SLOW, prefix=f"c{uuid.uuid4().hex[:6]}:"
    )
    lim = stanchion.Limiter(
        "1/hour", storage=storage, penalty=stanchion.Penalty(after=1, within=60, ban=90)
    )
    assert isinstance(lim, RedisLimiter)
    keys = _keys_on_every_master(cluster_client, lim)
    for key in keys:
        assert lim.hit(key)
        assert not lim.hit(key).banned
        d = lim.hit(key)
        assert d.banned and 89 < d.retry_after <= 90
    assert sorted(b.key for b in lim.bans() if isinstance(b.key, bytes)) == sorted(
        k.encode() for k in keys
    )
    assert lim.lift(keys[0]) is True
    assert len(lim.bans()) == 2
    lim.reset()
    assert lim.bans() == [] and lim.hit(keys[1])
