"""Holds taken, refused and queued in a hot loop leave refcounts and the
traced Python memory flat.

Run in its own process so other tests' allocations do not disturb it.
"""

from __future__ import annotations

import asyncio
import gc
import os
import sys
import tracemalloc

import psutil

from stanchion import Concurrency, ConcurrencyLimitExceeded

c = Concurrency(2, queue=1, timeout=0, max_keys=4)
q = Concurrency(1, queue=4)
key = "client-42"
bkey = b"client-bytes"


async def queued_once() -> None:
    first = await q.aacquire(key)
    task = asyncio.ensure_future(q.aacquire(key, timeout=1))
    await asyncio.sleep(0)
    first.release()
    (await task).release()
    task = asyncio.ensure_future(q.aacquire(key))
    await asyncio.sleep(0)
    task.cancel()  # cancelled while queued
    try:
        await task
    except asyncio.CancelledError:
        pass


def burst(n: int, loop: asyncio.AbstractEventLoop) -> None:
    hold, try_acquire = c.hold, c.try_acquire
    for i in range(n):
        with hold(key):
            pass
        with hold(bkey), hold(bkey):
            try:
                with hold(bkey):
                    pass
            except ConcurrencyLimitExceeded:
                pass
        h = try_acquire()
        assert h is not None
        h.release()
        if i % 10 == 0:
            try:
                hold(42)  # type: ignore[arg-type]
            except TypeError:
                pass
            with hold(f"k{i % 3}"):
                pass
            loop.run_until_complete(queued_once())


loop = asyncio.new_event_loop()
burst(5_000, loop)  # warm up
gc.collect()
refs = (
    sys.getrefcount(key),
    sys.getrefcount(bkey),
    sys.getrefcount(c),
    sys.getrefcount(q),
)
rss = psutil.Process().memory_info().rss
tracemalloc.start()
snap = tracemalloc.take_snapshot()
burst(50_000, loop)
gc.collect()
grown = sum(
    s.size_diff for s in tracemalloc.take_snapshot().compare_to(snap, "filename")
)
tracemalloc.stop()
assert refs == (
    sys.getrefcount(key),
    sys.getrefcount(bkey),
    sys.getrefcount(c),
    sys.getrefcount(q),
), refs
assert c.stats()["in_flight"] == c.stats()["keys"] == 0
assert q.stats()["in_flight"] == q.stats()["queued"] == 0
assert grown < 64 * 1024, f"traced memory grew by {grown} bytes"
# The C tables live outside tracemalloc's view: RSS covers them (but means
# nothing under ASan, whose quarantine keeps freed memory).
rss_grown = psutil.Process().memory_info().rss - rss
if not os.environ.get("STANCHION_SANITIZED"):
    assert rss_grown < 1024 * 1024, f"RSS grew by {rss_grown} bytes"
loop.close()
print("ok", grown)
