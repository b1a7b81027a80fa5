"""A million cache operations (hits, misses, writes with evictions and
expirations, deletes, error paths, @cached calls) leave refcounts and RSS
flat.

Run in its own process so RSS is not disturbed by other tests.
"""

from __future__ import annotations

import gc
import os
import sys

import psutil

import stanchion
from stanchion import Cache

proc = psutil.Process()


def rss() -> int:
    return int(proc.memory_info().rss)


t = [0.0]
lru: Cache[object, object] = Cache(5000)
ttl: Cache[object, object] = Cache(5000, ttl=0.5, clock=lambda: t[0])
weighted: Cache[object, bytes] = Cache(None, maxweight=50_000, weigh=len)
key = "leak-key"
value = object()
dflt = object()
blob = b"x" * 100
unhashable: list[int] = []
calls = [0]
evicted = [0]


def on_evict(k: object, v: object) -> None:
    evicted[0] += 1
    if evicted[0] % 97 == 0:
        raise RuntimeError("from on_evict")  # reported as unraisable


sys.unraisablehook = lambda unraisable: None
noted: Cache[object, object] = Cache(50, ttl=0.3, clock=lambda: t[0], on_evict=on_evict)
pairs = [(j, value) for j in range(5)]


@stanchion.cached(ttl=60, maxsize=100)
def square(x: int) -> int:
    calls[0] += 1
    if x < 0:
        raise ValueError(x)
    return x * x


def burst(n: int) -> None:
    for i in range(n):
        t[0] += 1e-3
        lru[key] = value
        lru.get(key)
        lru.get(i, dflt)  # miss
        lru[i % 20_000] = value  # inserts and evictions
        ttl.set(i % 3000, value, ttl=0.2 if i % 2 else None)  # FIFO + heap, expiry
        ttl.get((i * 7) % 3000, dflt)
        weighted[i % 1000] = blob
        square(i % 200)
        noted[i % 300] = value  # evictions and expiries told to on_evict
        noted.setdefault(("d", i % 60), value)
        if i % 10 == 0:
            noted.update(pairs, extra=value)
            noted == {key: value}  # noqa: B015
            noted.__setstate__(noted.__getstate__())
            noted.currsize  # noqa: B018
            lru.pop(key, dflt)
            key in ttl  # noqa: B015
            try:
                lru[unhashable] = value  # type: ignore[index]
            except TypeError:
                pass
            try:
                ttl.set(key, value, ttl=-1)
            except ValueError:
                pass
            try:
                square(-1)
            except ValueError:
                pass
            try:
                lru[("absent", i)]
            except KeyError:
                pass


burst(20_000)  # warm up: freelists, the tables, pymalloc arenas
gc.collect()
objs = (key, value, dflt, blob, unhashable, Cache, lru, ttl, square, noted, on_evict)
refs = [sys.getrefcount(o) for o in objs]
before = rss()
burst(100_000)  # about 1,000,000 operations plus error paths
gc.collect()
after = rss()
refs_after = [sys.getrefcount(o) for o in objs]
assert refs == refs_after, (refs, refs_after)
grown = after - before
# Under ASan freed memory is quarantined: RSS means nothing there.
if not os.environ.get("STANCHION_SANITIZED"):
    assert grown < 1024 * 1024, f"RSS grew by {grown} bytes over a million operations"
print("ok", grown)
