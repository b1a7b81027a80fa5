"""Bans made, refused, listed, inspected and lifted a million times leave
refcounts and RSS flat, in process and in shared memory.

Run in its own process so RSS is not disturbed by other tests.
"""

from __future__ import annotations

import gc
import logging
import os
import sys
import uuid

import psutil

import stanchion
from stanchion import Decision, Limiter, Penalty
from stanchion._shm import SharedMemoryLimiter

proc = psutil.Process()
logging.getLogger("stanchion").setLevel(logging.ERROR)  # a ban per 2 hits


def rss() -> int:
    return int(proc.memory_info().rss)


t = [0.0]
penalty = Penalty(after=1, within=1, ban=0.001, factor=2, max_ban=0.01)
lim = Limiter("1/hour", max_keys=500, clock=lambda: t[0], penalty=penalty)
storage = stanchion.SharedMemoryStorage(f"leak-{uuid.uuid4().hex}", max_keys=500)
shm = SharedMemoryLimiter(storage, "1/hour", clock=lambda: t[0], penalty=penalty)
key = "client-42"
bkey = b"client-bytes"


def burst(n: int) -> None:
    for i in range(n):
        t[0] += 0.0005
        for target in (lim, shm):
            target.hit(key)
            target.hit(bkey)
            target.hit(f"k{i % 2000}")
            if i % 50 == 0:
                target.get_ban(key)
                target.bans()
                target.lift(bkey)
                try:
                    target.lift(42)  # type: ignore[arg-type]
                except TypeError:
                    pass


try:
    burst(20_000)  # warm up: freelists, the tables, pymalloc arenas
    gc.collect()
    refs = (
        sys.getrefcount(key),
        sys.getrefcount(bkey),
        sys.getrefcount(Decision),
        sys.getrefcount(lim),
        sys.getrefcount(shm),
        sys.getrefcount(stanchion._penalty.log_ban),
    )
    before = rss()
    burst(150_000)  # over a million calls
    gc.collect()
    after = rss()
    refs_after = (
        sys.getrefcount(key),
        sys.getrefcount(bkey),
        sys.getrefcount(Decision),
        sys.getrefcount(lim),
        sys.getrefcount(shm),
        sys.getrefcount(stanchion._penalty.log_ban),
    )
finally:
    storage.unlink(missing_ok=True)
assert refs == refs_after, (refs, refs_after)
assert lim.stats()["penalty_keys"] <= 500
grown = after - before
if not os.environ.get("STANCHION_SANITIZED"):
    assert grown < 1024 * 1024, f"RSS grew by {grown} bytes over a million calls"
print("ok", grown)
