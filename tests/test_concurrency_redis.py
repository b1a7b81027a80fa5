"""stanchion.Concurrency with Redis storage: leases, the shared queue,
crashed holders, several processes, and Redis failures."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import redis.cluster

import stanchion
from stanchion import Concurrency, ConcurrencyLimitExceeded
from stanchion.redis import RedisConcurrency, RedisStorage

from ._redis import SLOW, RedisServer

CTX = multiprocessing.get_context("fork")


@pytest.fixture
def storage(redis_server: RedisServer) -> Iterator[RedisStorage]:
    s = RedisStorage(redis_server.url, prefix=f"t{uuid.uuid4().hex[:8]}:", timeout=SLOW)
    yield s
    s.close()


def make(storage: RedisStorage, limit: int, **kw: Any) -> RedisConcurrency:
    c = Concurrency(limit, storage=storage, **kw)
    assert isinstance(c, RedisConcurrency)
    return c


def wait_until(cond: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.005)


def test_storage_values_make_a_redis_concurrency(redis_server: RedisServer) -> None:
    for storage in (redis_server.url, redis.Redis.from_url(redis_server.url)):
        c = Concurrency(2, storage=storage, lease=5)
        assert isinstance(c, RedisConcurrency) and c.lease == 5.0
        with c.hold("k") as h:
            assert h.held and c.in_flight("k") == 1
        assert c.in_flight("k") == 0
        c.close()
    with pytest.raises(ValueError, match="unsupported"):
        Concurrency(1, storage="memcached://x")
    with pytest.raises(ValueError, match="Redis"):
        Concurrency(1, storage=redis_server.url, max_keys=10)
    with pytest.raises(TypeError, match="unsupported"):
        Concurrency(1, storage=object())


def test_limit_queue_and_release(storage: RedisStorage) -> None:
    c = make(storage, 2, queue=0)
    a, b = c.acquire("k"), c.acquire(b"k2")
    assert c.try_acquire("k") is not None  # second slot of "k"
    assert c.try_acquire("k") is None
    with pytest.raises(ConcurrencyLimitExceeded) as info:
        c.acquire("k")
    assert info.value.reason == "queue_full" and info.value.retry_after is None
    a.release()
    assert c.in_flight("k") == 1 and c.in_flight(b"k2") == 1
    b.release()
    with pytest.raises(RuntimeError, match="idle"):
        b.release()


def test_threads_are_served_in_arrival_order(storage: RedisStorage) -> None:
    c = make(storage, 1, queue=10, timeout=10)
    first = c.acquire("k")
    order: list[int] = []

    def worker(i: int) -> None:
        with c.hold("k"):
            order.append(i)

    threads = []
    for i in range(5):
        t = threading.Thread(target=worker, args=(i,))
        t.start()
        threads.append(t)
        wait_until(lambda i=i: c.queued("k") == i + 1)  # type: ignore[misc]
    first.release()
    for t in threads:
        t.join()
    assert order == list(range(5))
    assert (c.in_flight("k"), c.queued("k")) == (0, 0)


def test_deadline_is_respected_and_the_waiter_leaves(storage: RedisStorage) -> None:
    c = make(storage, 1, queue=5, timeout=0.3)
    with c.hold():
        start = time.monotonic()
        with pytest.raises(ConcurrencyLimitExceeded) as info:
            c.acquire()
        waited = time.monotonic() - start
        assert info.value.reason == "timeout" and 0.29 <= waited < 1.5
        assert c.queued() == 0
        with pytest.raises(ConcurrencyLimitExceeded, match="timeout"):
            c.acquire(timeout=0)
    assert c.in_flight() == 0


def test_priorities_reserve_and_shedding(storage: RedisStorage) -> None:
    c = make(storage, 2, queue=1, priorities=2, reserve=1, timeout=5)
    low = c.acquire("k")
    assert c.try_acquire("k") is None  # the last slot is kept for priority 1
    high = c.acquire("k", priority=1)
    errors: list[str] = []

    def waiter(priority: int) -> None:
        try:
            c.acquire("k", priority=priority).release()
        except ConcurrencyLimitExceeded as exc:
            errors.append(exc.reason)

    t_low = threading.Thread(target=waiter, args=(0,))
    t_low.start()
    wait_until(lambda: c.queued("k") == 1)
    t_high = threading.Thread(target=waiter, args=(1,))
    t_high.start()  # the queue is full: takes the low waiter's place
    t_low.join(5)
    assert errors == ["shed"]
    high.release()
    t_high.join(5)
    low.release()
    assert (c.in_flight("k"), c.queued("k")) == (0, 0)


def test_asyncio_cancel_while_waiting_and_holding(storage: RedisStorage) -> None:
    async def main() -> None:
        c = make(storage, 1, queue=5)
        first = await c.aacquire("k")
        task = asyncio.ensure_future(c.aacquire("k"))
        while await c.aqueued("k") != 1:
            await asyncio.sleep(0.005)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await c.aqueued("k") == 0 and await c.ain_flight("k") == 1
        await first.arelease()

        started = asyncio.Event()

        async def holder() -> None:
            async with c.ahold("k"):
                started.set()
                await asyncio.sleep(10)

        task = asyncio.ensure_future(holder())
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await c.ain_flight("k") == 0
        assert await c.atry_acquire("k") is not None
        await storage.aclose()

    asyncio.run(main())


def test_lease_expires_and_extend_renews(storage: RedisStorage) -> None:
    c = make(storage, 1, lease=0.3)
    h = c.acquire("k")
    time.sleep(0.2)
    assert h.extend()
    time.sleep(0.2)
    assert c.in_flight("k") == 1  # renewed: still held
    time.sleep(0.3)
    assert c.in_flight("k") == 0  # expired
    assert not h.extend()
    h.release()


HOLDER = """
import sys, time, stanchion
c = stanchion.Concurrency(1, storage=sys.argv[1], lease=float(sys.argv[2]))
h = c.acquire("victim")
print("held", flush=True)
time.sleep(60)
"""


def test_a_killed_holders_slot_frees_within_its_lease(
    redis_server: RedisServer,
) -> None:
    lease = 1.0
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    with subprocess.Popen(
        [sys.executable, "-c", HOLDER, redis_server.url, str(lease)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    ) as child:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "held"
        killed = time.monotonic()
        child.send_signal(signal.SIGKILL)
        child.wait()
    c = Concurrency(1, storage=redis_server.url, lease=lease)
    assert c.try_acquire("victim") is None  # the dead holder's lease runs
    while (h := c.try_acquire("victim")) is None:
        assert time.monotonic() - killed < lease + 0.5
        time.sleep(0.01)
    assert time.monotonic() - killed <= lease + 0.5
    h.release()
    c.close()


def _share(url: str, prefix: str, rounds: int, out: Any) -> None:
    storage = RedisStorage(url, prefix=prefix, timeout=SLOW)
    c = Concurrency(2, queue=16, timeout=30, storage=storage)
    r = redis.Redis.from_url(url)
    seen: list[int] = []

    def work() -> None:
        for _ in range(rounds):
            with c.hold("shared"):
                seen.append(int(r.incr(prefix + "active")))
                time.sleep(0.002)
                r.decr(prefix + "active")

    threads = [threading.Thread(target=work) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.put((len(seen), max(seen)))


def test_two_processes_share_the_limit_exactly(redis_server: RedisServer) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}:"
    out = CTX.Queue()
    procs = [
        CTX.Process(target=_share, args=(redis_server.url, prefix, 40, out))
        for _ in range(2)
    ]
    for p in procs:
        p.start()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(10)
        assert p.exitcode == 0
    assert sum(n for n, _ in results) == 2 * 2 * 40  # every hold served
    assert max(m for _, m in results) == 2  # four workers, never above 2
    c = Concurrency(2, storage=redis_server.url)
    assert (c.in_flight("shared"), c.queued("shared")) == (0, 0)


@pytest.mark.parametrize("on_error", ["allow", "deny", "raise"])
def test_redis_down_follows_on_error(private_redis: RedisServer, on_error: str) -> None:
    storage = RedisStorage(private_redis.url, timeout=0.2, retry_interval=0.0)
    c = make(storage, 1, on_error=on_error)
    c.acquire("k").release()
    private_redis.kill()
    if on_error == "allow":
        with c.hold("k") as h:  # runs without a slot
            assert h.held
    elif on_error == "deny":
        with pytest.raises(ConcurrencyLimitExceeded) as info:
            c.acquire("k")
        assert info.value.reason == "unavailable"
    else:
        with pytest.raises(stanchion.StorageUnavailable):
            c.acquire("k")
    private_redis.start()
    c.acquire("k").release()
    storage.close()


def test_bad_input(storage: RedisStorage) -> None:
    for kwargs, exc in [
        ({"limit": 0}, ValueError),
        ({"limit": 1, "queue": -1}, ValueError),
        ({"limit": 1, "timeout": float("nan")}, ValueError),
        ({"limit": 1, "lease": 0}, ValueError),
        ({"limit": 1, "lease": "1"}, TypeError),
        ({"limit": 1, "on_error": "ignore"}, ValueError),
        ({"limit": 2, "priorities": 2, "reserve": 2}, ValueError),
    ]:
        with pytest.raises(exc):
            Concurrency(storage=storage, **kwargs)  # type: ignore[arg-type]
    c = make(storage, 1, priorities=2)
    for args, kw, exc in [
        ((42,), {}, TypeError),
        (("k",), {"priority": 2}, ValueError),
        (("k",), {"priority": True}, TypeError),
        (("k",), {"timeout": -1}, ValueError),
    ]:
        with pytest.raises(exc):
            c.hold(*args, **kw)
    assert c.in_flight("k") == 0


def test_on_redis_cluster(redis_cluster: Any) -> None:
    # Every key of one client key carries it as hash tag: one slot, so the
    # script runs on Redis Cluster; keys of many clients spread out.
    client = redis.cluster.RedisCluster(host="127.0.0.1", port=redis_cluster.port)
    try:
        c = Concurrency(1, queue=2, timeout=0.2, storage=RedisStorage(client))
        for i in range(20):
            with c.hold(f"client-{i}"):
                assert c.try_acquire(f"client-{i}") is None
            assert c.in_flight(f"client-{i}") == 0
        with c.hold(), pytest.raises(ConcurrencyLimitExceeded, match="timeout"):
            c.acquire()
        assert (c.in_flight(), c.queued()) == (0, 0)
    finally:
        client.close()
