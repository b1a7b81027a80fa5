"""Many processes, one limit: exact admission counts and all-or-nothing
multi-rate charging across processes, on one server and on a Cluster."""

from __future__ import annotations

import multiprocessing
import random
import struct
import uuid
from typing import Any

import pytest
import redis
import redis.cluster

import stanchion
from stanchion.redis import RedisLimiter, RedisStorage

from ._redis import SLOW, RedisCluster, RedisServer

ALGORITHMS = ["token_bucket", "fixed_window", "sliding_window"]
PROCESSES = 8
CTX = multiprocessing.get_context("fork")


def safe_period(client: Any) -> int:
    """A period (s) whose next window boundary is over 10 minutes away by
    the server's clock, so no window rolls over during a test."""
    seconds, _ = client.time()
    for period in (365 * 86400, 30 * 86400, 7 * 86400, 86400):
        if period - seconds % period > 600:
            return period
    raise AssertionError("unreachable: two of these boundaries are days apart")


def _worker(
    lim: RedisLimiter | None,
    make: tuple[str, Any, list[tuple[int, int]], str] | None,
    key: str,
    hits: int,
    seed: int,
    max_cost: int,
    barrier: Any,
    out: Any,
) -> None:
    if lim is None:
        assert make is not None
        _, where, rates, algorithm = make
        client = redis.cluster.RedisCluster(host="127.0.0.1", port=where)
        lim = stanchion.Limiter(
            rates, algorithm=algorithm, storage=RedisStorage(client)
        )
    rng = random.Random(seed)
    admitted = charged = 0
    barrier.wait()
    for _ in range(hits):
        cost = rng.randint(1, max_cost)
        d = lim.hit(key, cost)
        if d.allowed:
            admitted += 1
            charged += cost
    out.put((admitted, charged))


def run_processes(
    lim: RedisLimiter | None,
    key: str,
    hits: int,
    max_cost: int = 1,
    make: tuple[str, Any, list[tuple[int, int]], str] | None = None,
) -> tuple[int, int]:
    barrier = CTX.Barrier(PROCESSES)
    out = CTX.Queue()
    procs = [
        CTX.Process(
            target=_worker, args=(lim, make, key, hits, n, max_cost, barrier, out)
        )
        for n in range(PROCESSES)
    ]
    for p in procs:
        p.start()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    return sum(a for a, _ in results), sum(c for _, c in results)


def consumed(raw: bytes, algorithm: str, rates: list[tuple[int, int]]) -> list[int]:
    """What each rate has charged, read from the stored state."""
    words = {"token_bucket": 1, "fixed_window": 2, "sliding_window": 3}[algorithm]
    state = struct.unpack(f"<{1 + words * len(rates)}d", raw)
    out = []
    for i, (n, period) in enumerate(rates):
        w = state[1 + i * words : 1 + (i + 1) * words]
        if algorithm == "token_bucket":
            interval = period * 10**9 // n
            # tat - t, with t (the last write) within seconds of the first
            # hit and the interval far longer.
            out.append(-(-int(w[0]) // interval))
        else:
            out.append(int(w[-1]))
    return out


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_exactly_the_limit_across_processes(
    redis_server: RedisServer, algorithm: str
) -> None:
    client = redis.Redis(port=redis_server.port)
    storage = RedisStorage(
        redis_server.url, timeout=SLOW, prefix=f"p{uuid.uuid4().hex[:6]}:"
    )
    lim = stanchion.Limiter(
        [(1000, safe_period(client))], algorithm=algorithm, storage=storage
    )
    assert isinstance(lim, RedisLimiter)
    lim.hit("warm-up")  # the children inherit an open connection: forked
    # children must not share it.
    admitted, _ = run_processes(lim, "one-key", 500)
    assert admitted == 1000
    assert lim.peek("one-key").allowed is False
    client.close()
    storage.close()


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_rates_charged_together_across_processes(
    redis_server: RedisServer, algorithm: str
) -> None:
    client = redis.Redis(port=redis_server.port)
    period = safe_period(client)
    storage = RedisStorage(
        redis_server.url, timeout=SLOW, prefix=f"p{uuid.uuid4().hex[:6]}:"
    )
    rates = [(1000, period), (50, period), (400, period)]
    lim = stanchion.Limiter(rates, algorithm=algorithm, storage=storage)
    assert isinstance(lim, RedisLimiter)
    admitted, charged = run_processes(lim, "k", 60, max_cost=3)
    # The 50 rate binds; when it denies, the others are not charged.
    assert 48 <= charged <= 50 and admitted <= 50
    raw = client.get(lim._key("k"))
    assert raw is not None
    assert consumed(raw, algorithm, rates) == [charged] * 3
    client.close()
    storage.close()


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_cluster_multi_rate_across_processes(
    redis_cluster: RedisCluster, algorithm: str
) -> None:
    client = redis.cluster.RedisCluster(host="127.0.0.1", port=redis_cluster.port)
    period = safe_period(client)
    rates = [(1000, period), (50, period), (400, period)]
    lim = stanchion.Limiter(
        rates, algorithm=algorithm, storage=RedisStorage(client, timeout=SLOW)
    )
    assert isinstance(lim, RedisLimiter)
    # One client key on each master.
    run_id = uuid.uuid4().hex[:6]
    by_node: dict[str, str] = {}
    for i in range(1000):
        key = f"{run_id}-user-{i}"
        by_node.setdefault(client.get_node_from_key(lim._key(key)).name, key)
        if len(by_node) == 3:
            break
    assert len(by_node) == 3
    for key in by_node.values():
        admitted, charged = run_processes(
            None,
            key,
            40,
            max_cost=3,
            make=("cluster", redis_cluster.port, rates, algorithm),
        )
        assert 48 <= charged <= 50 and admitted <= 50
        raw = client.get(lim._key(key))
        assert raw is not None
        assert consumed(raw, algorithm, rates) == [charged] * 3
        assert not lim.peek(key, 3)
    client.close()
