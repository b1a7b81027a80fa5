"""Limits and a cache shared by every process and host, through Memcached.

For sites that run Memcached rather than Redis (``pip install
'stanchion[memcached]'``, which brings pymemcache)::

    storage = stanchion.memcached.MemcachedStorage("memcached://localhost:11211")
    limiter = stanchion.Limiter("10/second;1000/day", storage=storage,
                                on_error="allow")
    limiter.hit("client-42")            # or: await limiter.ahit("client-42")

    cache = stanchion.memcached.MemcachedCache("memcached://localhost:11211", ttl=60)

How it works, and what is atomic
--------------------------------
Memcached runs no scripts; each algorithm uses one of its atomic
primitives, and the decisions are the in-process engine's formulas:

* ``fixed_window``: one counter per client, rate and window, created by
  ``add`` with the window's expiry and counted by ``incr`` (atomic on the
  server). Never more hits than the limit are let through in a window.
  Approximate: a hit over a limit (or, with several rates, over any of
  them) has added its cost before it gives it back with ``decr``; a
  concurrent hit that reads the count in between may be refused though it
  would have fit, and a process that dies in between leaves its cost
  counted until the window ends. A hit over several rates is therefore
  not one atomic step: each counter is.
* ``token_bucket`` and ``sliding_window``: all the rates of a client in
  one value, read with ``gets`` and written with ``cas`` (``add`` for a
  new client); a write that lost a race to another client's is retried
  on the new value. Each decision is atomic for its key, across every
  rate: exact as on one host. After 32 lost races in a row (extreme
  contention on one key) the hit is refused with a short ``retry_after``
  instead of spinning.

Time is each host's wall clock (``time.time_ns``), as Memcached gives no
clock of its own: keep hosts in sync (NTP). A client state written by a
host whose clock is ahead is never read as time running backwards.
Every write carries an expiry (the time until the key is back to full,
rounded up to Memcached's whole seconds): nothing is left behind.
Memcached evicts under memory pressure; an evicted client starts full
again. Penalties (bans) are not supported on Memcached, and
``reset()`` without a key is not possible (Memcached cannot list keys):
reset one key at a time.

Keys: Memcached stores keys of at most 250 bytes of printable ASCII
without spaces. Any other key (long, non-ASCII, with spaces or control
characters) is stored as a 40-digit hash of it, never refused.

When Memcached fails
--------------------
Down, refusing, or slower than ``timeout`` (default 50 ms for limits,
100 ms for the cache, on every socket operation): the limiter answers by
its ``on_error`` policy (``"allow"``, ``"deny"``, ``"raise"``), the cache
misses and drops writes (or raises with ``on_error="raise"``), as with
Redis. An outage is logged once on the ``"stanchion.memcached"`` logger
(a warning when it starts, an info line when Memcached answers again);
while it lasts one call per ``retry_interval`` (default 0.1 s) tries the
server and the others answer at once. Nothing needs recreating.

asyncio: pymemcache is a blocking client; the ``a``-methods run the same
calls in the loop's default executor, so the event loop never waits on
the network.
"""

from __future__ import annotations

from .._errors import StorageUnavailable
from .cache import MemcachedCache
from .connection import _safe_key as _safe_key
from .connection import logger as logger
from .limiter import MemcachedLimiter, MemcachedStorage

__all__ = [
    "MemcachedCache",
    "MemcachedLimiter",
    "MemcachedStorage",
    "StorageUnavailable",
]
