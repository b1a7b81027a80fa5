"""stanchion.Concurrency in shared memory: leases named by their owner
process, the shared queue, a killed holder, several processes."""

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

import stanchion
from stanchion import Concurrency, ConcurrencyLimitExceeded, SharedMemoryStorage
from stanchion._shm_concurrency import SharedMemoryConcurrency

CTX = multiprocessing.get_context("fork")


@pytest.fixture
def storage() -> Iterator[SharedMemoryStorage]:
    s = SharedMemoryStorage(f"cc-{uuid.uuid4().hex[:12]}")
    yield s
    s.unlink(missing_ok=True)


def make(
    storage: SharedMemoryStorage, limit: int, **kw: Any
) -> SharedMemoryConcurrency:
    c = Concurrency(limit, storage=storage, **kw)
    assert isinstance(c, SharedMemoryConcurrency)
    return c


def wait_until(cond: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.002)


def test_limit_refusals_and_the_segment(storage: SharedMemoryStorage) -> None:
    c = make(storage, 2, queue=0)
    a, b = c.acquire("k"), c.acquire(b"k")
    assert c.try_acquire("k") is not None  # "k" and b"k" are apart
    assert c.try_acquire("k") is None
    with pytest.raises(ConcurrencyLimitExceeded) as info:
        c.acquire("k")
    assert info.value.reason == "queue_full"
    with c.hold():  # the global key
        assert c.in_flight() == 1
    a.release()
    b.release()
    assert c.segment in storage.segments()
    same = Concurrency(2, storage=f"shm://{storage.name}")
    assert isinstance(same, SharedMemoryConcurrency) and same.segment == c.segment
    assert same.in_flight("k") == 1  # the try_acquire's lease, never released


def test_threads_are_served_in_arrival_order(storage: SharedMemoryStorage) -> None:
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


def test_deadline_and_timeout_zero(storage: SharedMemoryStorage) -> None:
    c = make(storage, 1, queue=5, timeout=0.2)
    with c.hold():
        start = time.monotonic()
        with pytest.raises(ConcurrencyLimitExceeded) as info:
            c.acquire()
        assert info.value.reason == "timeout"
        assert 0.19 <= time.monotonic() - start < 1.0
        assert c.queued() == 0
        with pytest.raises(ConcurrencyLimitExceeded, match="timeout"):
            c.acquire(timeout=0)
    assert c.in_flight() == 0


def test_priorities_reserve_and_shedding(storage: SharedMemoryStorage) -> None:
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


def test_asyncio_cancel_while_waiting_and_holding(storage: SharedMemoryStorage) -> None:
    async def main() -> None:
        c = make(storage, 1, queue=5)
        first = await c.aacquire("k")
        task = asyncio.ensure_future(c.aacquire("k"))
        while await c.aqueued("k") != 1:
            await asyncio.sleep(0.002)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert (await c.aqueued("k"), await c.ain_flight("k")) == (0, 1)
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

    asyncio.run(main())


def test_lease_expires_and_extend_renews(storage: SharedMemoryStorage) -> None:
    c = make(storage, 1, lease=0.3)
    h = c.acquire("k")
    time.sleep(0.2)
    assert h.extend()
    time.sleep(0.2)
    assert c.in_flight("k") == 1  # renewed
    time.sleep(0.3)
    assert c.in_flight("k") == 0  # expired
    assert not h.extend()
    h.release()


def test_max_keys_refuses_a_key_whose_bucket_is_full(
    storage: SharedMemoryStorage,
) -> None:
    c = make(storage, 1, max_keys=1)  # one bucket of 8 keys
    holds = [c.acquire(f"k{i}") for i in range(8)]
    with pytest.raises(ConcurrencyLimitExceeded) as info:
        c.acquire("k8")
    assert info.value.reason == "max_keys"
    by_url = Concurrency(1, storage=f"shm://{storage.name}?max_keys=1")
    assert isinstance(by_url, SharedMemoryConcurrency)
    assert by_url.segment == c.segment and by_url.max_keys == 1
    holds[0].release()
    c.acquire("k8").release()  # a freed entry is reused
    for h in holds[1:]:
        h.release()


HOLDER = """
import sys, time, stanchion
c = stanchion.Concurrency(1, storage=sys.argv[1], lease=30)
h = c.acquire("victim")
print("held", flush=True)
time.sleep(60)
"""


def test_a_killed_holders_slot_frees_at_once(storage: SharedMemoryStorage) -> None:
    # Its lease is 30 s, but its process is gone: the next attempt of
    # another process frees the slot.
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    url = f"shm://{storage.name}"
    with subprocess.Popen(
        [sys.executable, "-c", HOLDER, url], stdout=subprocess.PIPE, text=True, env=env
    ) as child:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "held"
        c = Concurrency(1, storage=url, lease=30)
        assert c.try_acquire("victim") is None  # alive: its slot holds
        child.send_signal(signal.SIGKILL)
        child.wait()
    h = c.try_acquire("victim")
    assert h is not None
    h.release()


def _share(name: str, rounds: int, active: Any, peak: Any, out: Any) -> None:
    c = Concurrency(2, queue=16, timeout=30, storage=f"shm://{name}")
    served = 0
    lock = threading.Lock()

    def work() -> None:
        nonlocal served
        for _ in range(rounds):
            with c.hold("shared"):
                with active.get_lock():
                    active.value += 1
                    peak.value = max(peak.value, active.value)
                time.sleep(0.001)
                with active.get_lock():
                    active.value -= 1
            with lock:
                served += 1

    threads = [threading.Thread(target=work) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.put(served)


def test_two_processes_share_the_limit_exactly(storage: SharedMemoryStorage) -> None:
    active, peak = CTX.Value("i", 0), CTX.Value("i", 0)
    out = CTX.Queue()
    procs = [
        CTX.Process(target=_share, args=(storage.name, 50, active, peak, out))
        for _ in range(2)
    ]
    for p in procs:
        p.start()
    served = sum(out.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(10)
        assert p.exitcode == 0
    assert served == 2 * 2 * 50
    assert peak.value == 2  # four workers, never more than the limit
    c = Concurrency(2, queue=16, storage=f"shm://{storage.name}")
    assert (c.in_flight("shared"), c.queued("shared")) == (0, 0)


def test_bad_input(storage: SharedMemoryStorage) -> None:
    for kwargs, exc in [
        ({"limit": 0}, ValueError),
        ({"limit": 1, "lease": 0}, ValueError),
        ({"limit": 1, "max_keys": 0}, ValueError),
        ({"limit": 1, "on_error": "deny"}, ValueError),
        ({"limit": 1, "timeout": -1.0}, ValueError),
        ({"limit": 2, "priorities": 2, "reserve": 2}, ValueError),
    ]:
        with pytest.raises(exc):
            Concurrency(storage=storage, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="shm://"):
        Concurrency(1, storage="shm://bad/name")
    c = make(storage, 1)
    with pytest.raises(TypeError):
        c.hold(42)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        c.hold(priority=1)
    with pytest.raises(RuntimeError, match="idle"):
        c.hold().release()
    assert stanchion.Concurrency(1, storage=storage).in_flight() == 0


def test_no_lease_leaks_under_cancellations_and_timeouts(
    storage: SharedMemoryStorage,
) -> None:
    import random

    c = make(storage, 3, queue=4, priorities=2, reserve=1)

    async def main() -> None:
        rng = random.Random(3)
        active = {"a": 0, "b": 0}
        peak = dict(active)

        async def job(key: str, priority: int, timeout: float | None) -> None:
            async with c.ahold(key, priority=priority, timeout=timeout):
                active[key] += 1
                peak[key] = max(peak[key], active[key])
                try:
                    await asyncio.sleep(rng.choice((0, 0.001)))
                    if rng.random() < 0.2:
                        raise KeyError(key)
                finally:
                    active[key] -= 1

        for _ in range(20):
            tasks = [
                asyncio.ensure_future(
                    job(
                        rng.choice(("a", "b")),
                        rng.randrange(2),
                        rng.choice((None, 0, 0.005, 0.05)),
                    )
                )
                for _ in range(50)
            ]
            await asyncio.sleep(0.002)
            for t in rng.sample(tasks, 10):
                t.cancel()
            for r in await asyncio.gather(*tasks, return_exceptions=True):
                assert r is None or isinstance(
                    r, (KeyError, ConcurrencyLimitExceeded, asyncio.CancelledError)
                ), r
        assert max(peak.values()) <= 3

    asyncio.run(main())
    for key in ("a", "b"):
        assert (c.in_flight(key), c.queued(key)) == (0, 0)


def _hold_forever(name: str, ready: Any) -> None:
    c = Concurrency(10, storage=f"shm://{name}")
    c.acquire("many")
    ready.put(os.getpid())
    time.sleep(60)


def test_many_killed_holders_all_free_their_slots(storage: SharedMemoryStorage) -> None:
    ready = CTX.Queue()
    procs = [
        CTX.Process(target=_hold_forever, args=(storage.name, ready)) for _ in range(10)
    ]
    for p in procs:
        p.start()
    for _ in procs:
        ready.get(timeout=60)
    c = Concurrency(10, storage=f"shm://{storage.name}")
    assert c.in_flight("many") == 10 and c.try_acquire("many") is None
    for p in procs:
        os.kill(p.pid, signal.SIGKILL)  # type: ignore[arg-type]
        p.join()
    h = c.try_acquire("many")  # some of the dead owners are asked about at once
    assert h is not None
    h.release()
    # Each look asks about a few owners: all ten are found out in a few.
    for _ in range(10):
        if c.in_flight("many") == 0:
            break
    assert c.in_flight("many") == 0
