"""A million hits (allowed, denied and failing) leave refcounts and RSS flat.

Run in its own process so RSS is not disturbed by other tests.
"""

from __future__ import annotations

import gc
import os
import sys

import psutil

import stanchion
from stanchion import Decision, Limiter

proc = psutil.Process()


def rss() -> int:
    return int(proc.memory_info().rss)


t = [0.0]
lim = Limiter("5/second;1000/minute", max_keys=5000, clock=lambda: t[0])
fast = Limiter("1000000000/second", algorithm="sliding_window", max_keys=5000)
key = "client-42"
bkey = b"client-bytes"
bad_key = 42
tick = 1e-4


def burst(n: int) -> None:
    hit, peek, fhit = lim.hit, lim.peek, fast.hit
    for i in range(n):
        t[0] += tick
        hit(key)  # mostly denied
        hit(bkey, 2)
        peek(key)
        fhit(key)  # allowed
        if i % 10 == 0:
            hit(f"k{i % 20000}")  # inserts and evictions
            try:
                hit(bad_key)  # type: ignore[arg-type]
            except TypeError:
                pass
            try:
                hit(key, 0)
            except ValueError:
                pass
            try:
                hit(key, cost="x")  # type: ignore[arg-type]
            except TypeError:
                pass


burst(50_000)  # warm up: freelists, the table, pymalloc arenas
gc.collect()
refs = (
    sys.getrefcount(key),
    sys.getrefcount(bkey),
    sys.getrefcount(bad_key),
    sys.getrefcount(Decision),
    sys.getrefcount(lim),
    sys.getrefcount(stanchion._core.Limiter),
)
before = rss()
burst(250_000)  # 1,000,000 hit/peek calls plus error paths
gc.collect()
after = rss()
refs_after = (
    sys.getrefcount(key),
    sys.getrefcount(bkey),
    sys.getrefcount(bad_key),
    sys.getrefcount(Decision),
    sys.getrefcount(lim),
    sys.getrefcount(stanchion._core.Limiter),
)
assert refs == refs_after, (refs, refs_after)
grown = after - before
# Under ASan freed memory is quarantined: RSS means nothing there.
if not os.environ.get("STANCHION_SANITIZED"):
    assert grown < 1024 * 1024, f"RSS grew by {grown} bytes over a million calls"
print("ok", grown)
