"""Limits and a cache shared by every process and host, through Redis.

::

    storage = stanchion.RedisStorage("redis://localhost:6379/0")
    limiter = stanchion.Limiter("10/second;1000/day", storage=storage,
                                on_error="allow")
    limiter.hit("client-42")            # or: await limiter.ahit("client-42")

    cache = stanchion.redis.RedisCache("redis://localhost:6379/0", ttl=60)

How it works
------------
Each algorithm is one Lua script (``stanchion.redis.scripts``), run by EVALSHA:
a decision is one round trip whatever the number of rates, atomic on the
server, with the server's clock (``TIME``), so hosts with skewed clocks
agree. All the rates of one client key live in one Redis key whose name
carries the client key as its hash tag (``stanchion:{client-42}:tb:<id>``),
so it works on Redis Cluster, and every write sets an expiry of the time
until the key is back to full, so nothing is left behind. When the server
has lost the script (restart, failover, SCRIPT FLUSH) it is sent again with
EVAL, which loads it. Needs Redis 5 or later, or Valkey (a script that
reads TIME and then writes relies on effects replication).

The decisions are the in-process engine's, field for field: denied hits
consume nothing, several rates are charged together or not at all, the
fields come from the same binding rate, and ``remaining``, ``reset_after``
and ``retry_after`` are computed by the same formulas. Lua numbers are
doubles and the server clock is near 2**60 ns, so ``reset_after`` and
``retry_after`` agree with the in-process engine to within a microsecond
(usually to the nanosecond); ``allowed``, ``limit`` and ``remaining`` agree
exactly.
Differences: time is the server's wall clock in microseconds (windows are
aligned on multiples of the period since the Unix epoch, so "1000/day"
resets at 00:00 UTC), window periods must be whole microseconds, and a str
key and its UTF-8 bytes name the same client.

Connections and timeouts
------------------------
``RedisStorage`` and ``RedisCache`` take a ``redis.Redis`` /
``redis.asyncio.Redis`` client or a URL. For these they open their own
connections, made exactly like the client's (same connection class, host,
credentials, TLS, database, protocol), but with their own ``timeout`` on
every socket operation and no retry: a decision never waits much longer
than ``timeout`` (default 50 ms), whatever the client's settings. A URL
gives both a blocking and an asyncio side; a client gives its own side
only. asyncio connections belong to the event loop that made them; call
``await storage.aclose()`` before that loop ends.

A Sentinel-managed client (``Sentinel(...).master_for(name)``, blocking or
asyncio) gives connections that ask its Sentinels for the master each
time they connect: a failover drops them (the old master answers a write
with READONLY, or is gone) and the next call reconnects to the new master.
Asking Sentinel is bounded by the Sentinel client's own socket timeouts
(``sentinel_kwargs``). The connections are connected with the class's
own ``connect()``, so custom connection classes keep their behaviour. A
replica client (``slave_for``), which cannot take writes, or a pool class
that hands out connections its own way (its own ``get_connection`` or
``make_connection``), is refused with a ValueError.

A ``redis.cluster.RedisCluster`` (or its asyncio twin) is used through its
own command path, for its slot routing and redirections: blocking calls are
then bounded by that client's ``socket_timeout`` and retry settings (set
them), asyncio calls by ``asyncio.timeout(timeout)``.

When Redis fails
----------------
Down, refusing, or slower than ``timeout``: the limiter answers by its
``on_error`` policy instead of raising:

* ``"allow"`` (default): an allowed Decision, as for a new key.
* ``"deny"``: a denied Decision with ``retry_after`` = the shortest period
  of its rates, at most 1 s.
* ``"raise"``: ``stanchion.StorageUnavailable`` (the Redis error chained).

An outage is logged once on the ``"stanchion.redis"`` logger: a warning
when it starts, an info line when Redis answers again, each naming the
component (rate limiter or cache), the server (never its password), what
callers get meanwhile and the cause. An application that configured no
logging still gets them, on stderr with time and level. While it lasts,
one call per ``retry_interval`` (default 0.1 s) tries Redis and the
others answer at once; the first call that started during the outage and
succeeds ends it (a call that started before it, still in flight on
another thread or task, does not). Nothing needs recreating.

A hit that timed out was already sent: a paused or stalled server runs
it when it resumes. So every hit carries a deadline, the server time at
which its caller gives up, and the script applies nothing past it. The
server's clock is the only one (hosts' clocks may be skewed), so the
client bounds it from each answered hit: the script read the server's
clock after the hit was sent and before its answer came back. The
deadline uses the bound that is never late, so no hit is applied after
its caller gave up; at worst one that reaches the server in the last
round trip of its timeout is refused. A hit past its deadline whose
caller is still waiting (the server's clock stepped, or a failover put
another server there) is sent once more with a corrected one. Before the first answer,
and on Redis Cluster (each node has its own clock), hits carry none. A
timed-out ``reset`` or cache write can still be applied late.

A command that failed on a reused connection with a connection error
(server restarted) is sent once more on a new connection.
"""

from __future__ import annotations

# Besides the public names, importable from here as before the split into
# modules: the serializer protocol, the logger, and the internals that
# tests and benchmarks reach (``x as x`` marks a re-export).
from .._errors import StorageUnavailable
from .cache import RedisCache
from .cache import Serializer as Serializer
from .cache import _cache_key as _cache_key
from .concurrency import RedisConcurrency, RedisHold
from .connections import _Connector as _Connector
from .limiter import RedisLimiter, RedisStorage
from .links import _DirectAsync as _DirectAsync
from .links import _DirectSync as _DirectSync
from .outage import logger as logger
from .wire import _async_link as _async_link
from .wire import _LeanSync as _LeanSync
from .wire import _PipelinedAsync as _PipelinedAsync
from .wire import _RespProtocol as _RespProtocol
from .wire import _RespSocket as _RespSocket
from .wire import _sync_link as _sync_link

__all__ = [
    "RedisCache",
    "RedisConcurrency",
    "RedisHold",
    "RedisLimiter",
    "RedisStorage",
    "StorageUnavailable",
]
