"""A response cache flooded with distinct long URLs (8 KiB queries, 1.5
KiB paths) keeps its weight within ``maxweight`` and grows RSS by little
more than that: keys and Vary records are counted.

Run in its own process (``python respcache_memory.py ADAPTER [FLOOD
[MORE]]``) so RSS is not disturbed by other tests; prints ``grown more
total weight maxweight`` in bytes: ``grown`` what the first flood of FLOOD
URLs added; then MORE (default 3) floods of as many new URLs, ``more`` the
least any of them added, ``total`` what all the floods added.

The process keeps growing a little past the first flood (about 1 MiB more
over the next 2000 URLs for Django on CPython 3.10 and 3.11), and now and
then by a step of about 1.3 MiB once; memory that grew with the URLs
would grow on every flood.
"""

from __future__ import annotations

import asyncio
import gc
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.web._respcache_apps import ADAPTERS, AsgiHarness

MAXWEIGHT = 1024 * 1024
FLOOD = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
MORE = int(sys.argv[3]) if len(sys.argv) > 3 else 3

proc = psutil.Process()
h = ADAPTERS[sys.argv[1]](ttl=3600, maxweight=MAXWEIGHT)
query = "q=" + "x" * 8192
path = "/wiki/" + "y" * 1500


def urls(start: int, n: int) -> Iterator[str]:
    for i in range(start, start + n):
        yield f"/items?i={i}&{query}"
        if i % 4 == 0:
            yield f"{path}{i}"


def flood(start: int, n: int) -> None:
    if isinstance(h, AsgiHarness):  # one event loop for the whole flood

        async def go() -> None:
            async with h.client() as c:
                for url in urls(start, n):
                    assert (await h.arequest(c, "GET", url, None)).status == 200

        asyncio.run(go())
        return
    for url in urls(start, n):
        assert h.get(url).status == 200


# Warm up the framework and the allocator, then start from an empty cache:
# the growth measured is what the entries hold.
flood(0, 200)
h.cache.clear()
gc.collect()
before = proc.memory_info().rss
flood(1000, FLOOD)
gc.collect()
grown = proc.memory_info().rss - before
stats = h.cache.stats()
assert stats["stores"] >= FLOOD, stats
assert h.get(f"/items?i={FLOOD + 999}&{query}").x_cache == "HIT"
# Once full, more floods of new URLs only replace entries.
added = []
for k in range(1, MORE + 1):
    rss = proc.memory_info().rss
    flood(1000 + k * FLOOD, FLOOD)
    gc.collect()
    added.append(proc.memory_info().rss - rss)
total = proc.memory_info().rss - before
print(grown, min(added, default=0), total, h.cache.store.cache.weight, MAXWEIGHT)
h.close()
