"""Limits and a cache shared by every process and host, through Redis.

::

    storage = stanchion.RedisStorage("redis://localhost:6379/0")
    limiter = stanchion.Limiter("10/second;1000/day", storage=storage,
                                on_error="allow")
    limiter.hit("client-42")            # or: await limiter.ahit("client-42")

    cache = stanchion.redis.RedisCache("redis://localhost:6379/0", ttl=60)

How it works
------------
Each algorithm is one Lua script (``stanchion._redis_lua``), run by EVALSHA:
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
client learns it from each answered hit: the server time the script read
minus the client's monotonic time when the hit was sent. That difference
is at most one round trip too large, so a deadline is never early by the
client's reckoning, and a hit can be applied at most that round trip
after its caller gave up. A hit past its deadline whose caller is still
waiting (the server's clock stepped, or a failover put another server
there) is sent once more with a corrected one. Before the first answer,
and on Redis Cluster (each node has its own clock), hits carry none. A
timed-out ``reset`` or cache write can still be applied late.

A command that failed on a reused connection with a connection error
(server restarted) is sent once more on a new connection.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import json
import logging
import math
import os
import pickle
import socket
import sys
import threading
import time
import weakref
from collections.abc import Callable, Hashable, Mapping
from typing import Any, Protocol

import hiredis as _hiredis
import redis as _redis
import redis.asyncio as _aredis
from redis.asyncio.cluster import RedisCluster as _AsyncRedisCluster
from redis.asyncio.sentinel import SentinelConnectionPool as _AsyncSentinelPool
from redis.asyncio.sentinel import (
    SentinelManagedConnection as _AsyncSentinelManaged,
)
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster as _RedisCluster
from redis.exceptions import ConnectionError as _RedisConnectionError
from redis.exceptions import NoScriptError, RedisError, ResponseError
from redis.exceptions import TimeoutError as _RedisTimeoutError
from redis.retry import Retry
from redis.sentinel import SentinelConnectionPool as _SentinelPool
from redis.sentinel import SentinelManagedConnection as _SentinelManaged

from . import _core
from ._checks import check_seconds
from ._core import Decision
from ._errors import StorageUnavailable
from ._limiter import ALGORITHMS, ON_ERROR, await_hit, wait_for_hit
from ._rates import Rate
from ._redis_lua import SCRIPTS

__all__ = ["RedisCache", "RedisLimiter", "RedisStorage", "StorageUnavailable"]

logger = logging.getLogger("stanchion.redis")


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Outage lines for an application that configured no logging (plain
    uvicorn configures its own loggers only): on the stderr of the
    moment, with time, level and logger, as logging's last resort would
    write warnings without them."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
        )

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


_stderr_handler = _StderrHandler()


def _log(level: int, msg: str, *args: Any) -> None:
    """Log an outage line on ``stanchion.redis``; to stderr when no
    handler would take it. Then the threshold is the level set on our
    loggers, if any, else INFO (the default WARNING of a root logger
    nobody configured would hide that Redis is back)."""
    if logger.hasHandlers():
        logger.log(level, msg, *args)
        return
    if logger.disabled:
        return
    threshold = logger.level or logging.getLogger("stanchion").level or logging.INFO
    if level >= threshold:
        record = logger.makeRecord(logger.name, level, __file__, 0, msg, args, None)
        _stderr_handler.handle(record)


# Errors that mean "Redis could not answer": everything redis-py raises,
# socket errors, and asyncio timeouts (builtins.TimeoutError on 3.11+).
_FAILURES: tuple[type[BaseException], ...] = (RedisError, OSError, asyncio.TimeoutError)

# redis[hiredis]: the C packer (redis.asyncio packs in Python) and parser.
_pack: Callable[[tuple[Any, ...]], bytes] = _hiredis.pack_command


_ALGORITHM_CODES = {"token_bucket": "tb", "fixed_window": "fw", "sliding_window": "sw"}

if sys.version_info >= (3, 11):
    _timeout = asyncio.timeout
else:  # pragma: no cover - Python 3.10

    class _timeout:
        """asyncio.timeout for 3.10, by a call_later that cancels the task."""

        def __init__(self, delay: float) -> None:
            self._delay = delay
            self._handle: asyncio.TimerHandle | None = None
            self._fired = False

        async def __aenter__(self) -> None:
            task = asyncio.current_task()
            assert task is not None
            self._handle = asyncio.get_running_loop().call_later(
                self._delay, self._fire, task
            )

        def _fire(self, task: asyncio.Task[Any]) -> None:
            self._fired = True
            task.cancel()

        async def __aexit__(self, et: Any, exc: Any, tb: Any) -> bool:
            assert self._handle is not None
            self._handle.cancel()
            if self._fired and et is asyncio.CancelledError:
                raise asyncio.TimeoutError from exc
            return False


def _key_bytes(key: object) -> bytes:
    if isinstance(key, str):
        return key.encode()
    if isinstance(key, bytes):
        return key
    raise TypeError(f"key must be str or bytes, not {type(key).__name__}")


# =============================================================================
# Links: how commands reach the server
# =============================================================================


class _SyncLink(Protocol):
    def call(self, *args: Any) -> Any: ...
    def scan_delete(self, pattern: bytes) -> int: ...
    def close(self) -> None: ...


class _AsyncLink(Protocol):
    async def call(self, *args: Any) -> Any: ...
    async def scan_delete(self, pattern: bytes) -> int: ...
    async def aclose(self) -> None: ...


def _own_kwargs(kwargs: dict[str, Any], timeout: float | None) -> dict[str, Any]:
    """A client's connection settings with our timeout and no retries."""
    kw = dict(kwargs)
    kw["socket_timeout"] = timeout
    kw["socket_connect_timeout"] = timeout
    kw["retry"] = Retry(NoBackoff(), 0)
    kw["decode_responses"] = False  # cached values are bytes
    kw.pop("retry_on_timeout", None)
    kw.pop("retry_on_error", None)
    return kw


class _StackedSync:
    """A blocking link of one server whose idle connections sit in a list
    used as a stack (``pop``/``append`` are atomic under the GIL): a thread
    takes one, sends one command, reads its reply and puts it back. No
    pool lock, no per-call health check. Subclasses say how to make a
    connection, exchange one packed command on it (an error reply comes
    back as a ResponseError value: the connection is still good) and
    drop it."""

    _idle: list[Any]

    def _new(self) -> Any:
        raise NotImplementedError

    def _exchange(self, conn: Any, packed: bytes) -> Any:
        raise NotImplementedError

    def _drop(self, conn: Any) -> None:
        raise NotImplementedError

    def _forget(self) -> None:
        self._idle = []  # in a forked child the parent's sockets are not ours

    def call(self, *args: Any) -> Any:
        packed = _pack(args)
        idle = self._idle
        try:
            conn = idle.pop()
            reused = True
        except IndexError:
            conn = self._new()
            reused = False
        try:
            reply = self._exchange(conn, packed)
        except _RedisConnectionError:
            self._drop(conn)
            if not reused:
                raise
            # The server closed this idle connection (restart, idle
            # timeout): one more try on a new one.
            conn = self._new()
            try:
                reply = self._exchange(conn, packed)
            except BaseException:
                self._drop(conn)
                raise
        except BaseException:
            self._drop(conn)
            raise
        idle.append(conn)
        if isinstance(reply, ResponseError):
            _raise_reply(reply)
        return reply

    def close(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            self._drop(conn)

    def scan_delete(self, pattern: bytes) -> int:
        cursor: Any = b"0"
        deleted = 0
        while True:
            cursor, keys = self.call("SCAN", cursor, "MATCH", pattern, "COUNT", 1000)
            if keys:
                deleted += int(self.call("UNLINK", *keys))
            if cursor in (b"0", 0, "0"):
                return deleted


class _AsyncScan:
    """scan_delete for an asyncio link of one server, over its ``call``."""

    async def call(self, *args: Any) -> Any:
        raise NotImplementedError

    async def scan_delete(self, pattern: bytes) -> int:
        cursor: Any = b"0"
        deleted = 0
        while True:
            cursor, keys = await self.call(
                "SCAN", cursor, "MATCH", pattern, "COUNT", 1000
            )
            if keys:
                deleted += int(await self.call("UNLINK", *keys))
            if cursor in (b"0", 0, "0"):
                return deleted


class _DirectSync(_StackedSync):
    """redis-py's blocking connections, made like a client's."""

    def __init__(
        self, connection_class: type[Any], kwargs: dict[str, Any], timeout: float
    ):
        self._class = connection_class
        self._kwargs = _own_kwargs(kwargs, timeout)
        self._idle = []
        _after_fork.add(self)

    def _new(self) -> Any:
        conn = self._class(**self._kwargs)
        try:
            # connect() rather than the implicit connect of the first
            # send, which skips a connection class's own: a Sentinel-
            # managed one asks Sentinel for the master there.
            conn.connect()
        except BaseException:
            conn.disconnect()
            raise
        return conn

    def _exchange(self, conn: Any, packed: bytes) -> Any:
        # A list of chunks, as redis-py's own packer gives (bytes alone
        # would be iterated byte by byte).
        conn.send_packed_command([packed], check_health=False)
        try:
            return conn.read_response()
        except ResponseError as exc:
            return exc

    def _drop(self, conn: Any) -> None:
        conn.disconnect()


class _DirectAsync(_AsyncScan):
    """asyncio connections of our own, made like a client's, one stack of
    idle connections per event loop. The whole exchange runs under
    ``asyncio.timeout``, which also bounds connecting."""

    def __init__(
        self, connection_class: type[Any], kwargs: dict[str, Any], timeout: float
    ):
        self._class = connection_class
        self._kwargs = _own_kwargs(kwargs, None)
        self._timeout = timeout
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, list[Any]] = (
            weakref.WeakKeyDictionary()
        )
        self._last: tuple[asyncio.AbstractEventLoop | None, list[Any]] = (None, [])
        _after_fork.add(self)

    def _forget(self) -> None:
        self._loops = weakref.WeakKeyDictionary()
        self._last = (None, [])

    def _idle(self) -> list[Any]:
        loop = asyncio.get_running_loop()
        last_loop, idle = self._last
        if last_loop is not loop:
            idle = self._loops.get(loop)  # type: ignore[assignment]
            if idle is None:
                idle = self._loops[loop] = []
            self._last = (loop, idle)
        return idle

    async def _exchange(self, conn: Any, packed: Any) -> Any:
        try:
            async with _timeout(self._timeout):
                if not conn.is_connected:
                    await conn.connect()  # as _DirectSync._new: Sentinel
                await conn.send_packed_command(packed, check_health=False)
                return await conn.read_response()
        except asyncio.TimeoutError:
            raise _RedisTimeoutError(f"no answer within {self._timeout} s") from None

    async def call(self, *args: Any) -> Any:
        idle = self._idle()
        try:
            conn = idle.pop()
            reused = True
        except IndexError:
            conn = self._class(**self._kwargs)
            reused = False
        packed = _pack(args)
        try:
            reply = await self._exchange(conn, packed)
        except ResponseError:
            idle.append(conn)
            raise
        except _RedisConnectionError:
            await conn.disconnect(nowait=True)
            if not reused:
                raise
            conn = self._class(**self._kwargs)
            try:
                reply = await self._exchange(conn, packed)
            except ResponseError:
                idle.append(conn)
                raise
            except BaseException:
                await conn.disconnect(nowait=True)
                raise
        except BaseException:
            await conn.disconnect(nowait=True)
            raise
        idle.append(conn)
        return reply

    async def aclose(self) -> None:
        loop = asyncio.get_running_loop()
        idle = self._loops.pop(loop, [])
        if self._last[0] is loop:
            self._last = (None, [])
        for conn in idle:
            await conn.disconnect()


# Connection settings the pipelined link honours (the rest of a client's
# settings either do not apply to it or must be at their defaults).
_LEAN_HONOURED = frozenset(
    {"host", "port", "path", "db", "username", "password", "client_name"}
)
_LEAN_IGNORED = frozenset(
    {
        "socket_timeout",  # ours bounds every call
        "socket_connect_timeout",
        "encoding",  # replies stay bytes, as everywhere here
        "encoding_errors",
        "decode_responses",
        "retry",  # never retried but once on a lost connection, as _DirectAsync
        "retry_on_error",
        "retry_on_timeout",
        "health_check_interval",
        "driver_info",
        "lib_name",
        "lib_version",
        "socket_read_size",  # hiredis takes what recv gives
        "legacy_responses",  # redis-py's own reply shaping; replies stay raw
        "himport_registry",
        # redis-py 8's maintenance notifications work over RESP3 only (a
        # RESP3 client keeps redis-py's connections) and their bookkeeping.
        "maint_notifications_pool_handler",
        "maint_notifications_config",
        "orig_host_address",
        "orig_socket_timeout",
        "orig_socket_connect_timeout",
        "socket_keepalive",  # honoured: see _keepalive
        "socket_keepalive_options",
    }
)
_LEAN_DEFAULTS: dict[str, tuple[Any, ...]] = {
    "credential_provider": (None,),
    "redis_connect_func": (None,),
    "protocol": (None, 2, "2"),
}


_UNIX_CLASSES = (_aredis.UnixDomainSocketConnection, _redis.UnixDomainSocketConnection)
_LEAN_CLASSES = (_aredis.Connection, _redis.Connection, *_UNIX_CLASSES)


def _lean_settings(
    connection_class: type[Any], kwargs: dict[str, Any]
) -> dict[str, Any] | None:
    """The settings of a plain TCP or Unix socket connection that the lean
    links can make themselves; None for anything else (TLS, RESP3,
    credential providers, ...), which keeps redis-py's connections."""
    if connection_class not in _LEAN_CLASSES:
        return None
    for k, v in kwargs.items():
        if k in _LEAN_HONOURED or k in _LEAN_IGNORED:
            continue
        if v not in _LEAN_DEFAULTS.get(k, ()):
            return None
    out = {k: kwargs[k] for k in _LEAN_HONOURED if kwargs.get(k) is not None}
    if connection_class in _UNIX_CLASSES:
        return out if "path" in out else None
    out.setdefault("host", "localhost")
    out.setdefault("port", 6379)
    if kwargs.get("socket_keepalive"):
        # Options as a {TCP option: value} mapping; redis-py 8's default
        # (a sentinel for "its defaults") leaves the system's.
        options = kwargs.get("socket_keepalive_options")
        out["keepalive"] = dict(options) if isinstance(options, Mapping) else {}
    return out


def _keepalive(sock: Any, settings: dict[str, Any]) -> None:
    """TCP keepalive as the client asked for it (``socket_keepalive``), on
    a socket or an event loop's stand-in for one."""
    options = settings.get("keepalive")
    if options is not None and hasattr(sock, "setsockopt"):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for k, v in options.items():
            sock.setsockopt(socket.IPPROTO_TCP, k, v)


def _handshake_commands(settings: dict[str, Any]) -> list[bytes]:
    """AUTH, SELECT and CLIENT SETNAME as a new connection needs them."""
    out = []
    password = settings.get("password")
    if password is not None:
        user = settings.get("username")
        args = ("AUTH", user, password) if user else ("AUTH", password)
        out.append(_pack(args))
    if settings.get("db"):
        out.append(_pack(("SELECT", settings["db"])))
    if settings.get("client_name"):
        out.append(_pack(("CLIENT", "SETNAME", settings["client_name"])))
    return out


class _RespSocket:
    """One blocking Redis connection on a bare socket: a command is one
    ``sendall``, its reply what hiredis parses from ``recv``."""

    __slots__ = ("reader", "sock", "timeout")

    def __init__(self, settings: dict[str, Any], timeout: float) -> None:
        self.timeout = timeout
        try:
            if "path" in settings:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    sock.settimeout(timeout)
                    sock.connect(settings["path"])
                except BaseException:
                    sock.close()
                    raise
            else:
                sock = socket.create_connection(
                    (settings["host"], settings["port"]), timeout
                )
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                _keepalive(sock, settings)
        except TimeoutError:
            raise _RedisTimeoutError(f"no connection within {timeout} s") from None
        except OSError as exc:
            raise _RedisConnectionError(f"cannot connect to Redis: {exc}") from exc
        self.sock = sock
        self.reader = _hiredis.Reader(replyError=ResponseError)
        handshake = _handshake_commands(settings)
        if handshake:
            try:
                sock.sendall(b"".join(handshake))
                replies = [self._read() for _ in handshake]
            except BaseException:
                sock.close()
                raise
            for reply in replies:
                if isinstance(reply, ResponseError):
                    sock.close()
                    raise _RedisConnectionError(
                        f"Redis refused the connection set-up: {reply}"
                    )

    def _read(self) -> Any:
        reader = self.reader
        while True:
            reply = reader.gets()
            if reply is not False:
                return reply
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                raise _RedisTimeoutError(f"no answer within {self.timeout} s") from None
            except OSError as exc:
                raise _RedisConnectionError(f"connection to Redis lost: {exc}") from exc
            if not data:
                raise _RedisConnectionError("Redis closed the connection")
            reader.feed(data)

    def exchange(self, packed: bytes) -> Any:
        try:
            self.sock.sendall(packed)
        except TimeoutError:
            raise _RedisTimeoutError(f"no answer within {self.timeout} s") from None
        except OSError as exc:
            raise _RedisConnectionError(f"connection to Redis lost: {exc}") from exc
        return self._read()

    def close(self) -> None:
        self.sock.close()

    def __del__(self) -> None:
        # A storage dropped without close() lets its idle sockets go
        # quietly, as redis-py's connections do.
        sock = getattr(self, "sock", None)
        if sock is not None:
            sock.close()


class _LeanSync(_StackedSync):
    """Blocking link on bare sockets (see _RespSocket)."""

    def __init__(self, settings: dict[str, Any], timeout: float) -> None:
        self._settings = settings
        self._timeout = timeout
        self._idle = []
        _after_fork.add(self)

    def _new(self) -> _RespSocket:
        return _RespSocket(self._settings, self._timeout)

    def _exchange(self, conn: _RespSocket, packed: bytes) -> Any:
        return conn.exchange(packed)

    def _drop(self, conn: _RespSocket) -> None:
        conn.close()


class _RespProtocol(asyncio.Protocol):
    """One Redis connection as an asyncio protocol: commands are written
    as they come (any number in flight) and hiredis parses the replies,
    which answer the waiting futures in order. A future whose caller
    gave up (timed out, cancelled) keeps its place and its reply is
    dropped, so the replies never shift."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._reader = _hiredis.Reader(replyError=ResponseError)
        self._waiting: collections.deque[asyncio.Future[Any]] = collections.deque()
        self._transport: asyncio.Transport | None = None
        self.closed = False
        self.dropped_by_server = False  # closed by the other end, not by us
        self.gone: asyncio.Future[None] = loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        waiting = self._waiting
        reader.feed(data)
        while True:
            try:
                reply = reader.gets()
            except Exception as exc:  # a protocol error: this stream is lost
                self.abort(_RedisConnectionError(f"bad reply from Redis: {exc}"))
                return
            if reply is False:
                return
            if not waiting:  # a reply nobody asked for
                self.abort(_RedisConnectionError("unexpected reply from Redis"))
                return
            fut = waiting.popleft()
            if not fut.done():
                fut.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed:
            self.dropped_by_server = True
        self.closed = True
        err = _RedisConnectionError(
            f"connection to Redis lost: {exc}" if exc else "Redis closed the connection"
        )
        waiting = self._waiting
        while waiting:
            fut = waiting.popleft()
            if not fut.done():
                fut.set_exception(err)
        if not self.gone.done():
            self.gone.set_result(None)

    def send(self, packed: bytes) -> asyncio.Future[Any]:
        fut = self._loop.create_future()
        self._waiting.append(fut)
        assert self._transport is not None
        self._transport.write(packed)
        return fut

    def abort(self, exc: BaseException) -> None:
        """Fail everything in flight and drop the connection."""
        self.closed = True
        waiting = self._waiting
        while waiting:
            fut = waiting.popleft()
            if not fut.done():
                fut.set_exception(exc)
        if self._transport is not None:
            self._transport.abort()


def _expire(fut: asyncio.Future[Any], conn: _RespProtocol, timeout: float) -> None:
    if not fut.done():
        fut.set_exception(_RedisTimeoutError(f"no answer within {timeout} s"))
        # What follows it on this connection waits behind the same stall.
        conn.abort(_RedisConnectionError(f"no answer within {timeout} s"))


def _raise_reply(reply: ResponseError) -> None:
    if str(reply).startswith("NOSCRIPT"):
        raise NoScriptError(str(reply))
    raise reply


class _PipelinedAsync(_AsyncScan):
    """asyncio link over one connection per event loop that every task
    shares: each call writes its command at once and awaits its reply,
    so concurrent calls are pipelined (one round trip serves many) and a
    call costs a write, a parse and a future, with no stream reader,
    lock or pool in between. ``timeout`` bounds each call, connecting
    included; a call that times out drops the connection (what waits
    behind a stalled reply would not be answered in time either)."""

    def __init__(self, settings: dict[str, Any], timeout: float) -> None:
        self._settings = settings
        self._timeout = timeout
        self._conns: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, _RespProtocol | asyncio.Future[_RespProtocol]
        ] = weakref.WeakKeyDictionary()
        self._last: tuple[asyncio.AbstractEventLoop | None, _RespProtocol | None] = (
            None,
            None,
        )
        self._handshake = _handshake_commands(settings)
        _after_fork.add(self)

    def _forget(self) -> None:
        self._conns = weakref.WeakKeyDictionary()
        self._last = (None, None)

    async def _connect(
        self, loop: asyncio.AbstractEventLoop, timeout: float
    ) -> _RespProtocol:
        s = self._settings
        proto: _RespProtocol | None = None
        try:
            async with _timeout(timeout):
                if "path" in s:
                    _, proto = await loop.create_unix_connection(
                        lambda: _RespProtocol(loop), s["path"]
                    )
                else:
                    transport, proto = await loop.create_connection(
                        lambda: _RespProtocol(loop), s["host"], s["port"]
                    )
                    _keepalive(transport.get_extra_info("socket"), s)
                replies = [proto.send(cmd) for cmd in self._handshake]
                for reply in replies:
                    if isinstance(await reply, ResponseError):
                        raise _RedisConnectionError(
                            f"Redis refused the connection set-up: {await reply}"
                        )
        except BaseException as exc:
            if proto is not None:  # connected, not set up: not ours to keep
                proto.abort(_RedisConnectionError("connection set-up failed"))
            if isinstance(exc, asyncio.TimeoutError):
                raise _RedisTimeoutError(f"no connection within {timeout} s") from None
            raise
        assert proto is not None
        return proto

    async def _conn(
        self, loop: asyncio.AbstractEventLoop, timeout: float
    ) -> _RespProtocol:
        """This loop's live connection, made if need be (once, however
        many tasks ask at the same time)."""
        conn = self._conns.get(loop)
        if isinstance(conn, _RespProtocol) and not conn.closed:
            self._last = (loop, conn)
            return conn
        if isinstance(conn, asyncio.Future):  # another task is connecting
            try:
                async with _timeout(timeout):
                    return await asyncio.shield(conn)
            except asyncio.TimeoutError:
                raise _RedisTimeoutError(f"no connection within {timeout} s") from None
        pending: asyncio.Future[_RespProtocol] = loop.create_future()
        self._conns[loop] = pending
        try:
            proto = await self._connect(loop, timeout)
        except BaseException as exc:
            if self._conns.get(loop) is pending:
                del self._conns[loop]
            # Tasks waiting for this connection were not cancelled
            # themselves: they learn that there is no connection.
            if not isinstance(exc, Exception):
                exc = _RedisConnectionError("connecting to Redis was interrupted")
            pending.set_exception(exc)
            pending.exception()  # retrieved: waiters, if any, re-raise it
            raise
        self._conns[loop] = proto
        self._last = (loop, proto)
        pending.set_result(proto)
        return proto

    async def call(self, *args: Any) -> Any:
        packed = _pack(args)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout
        last_loop, conn = self._last
        if last_loop is loop and conn is not None and not conn.closed:
            try:
                return await self._exchange(loop, conn, packed, deadline)
            except _RedisConnectionError:
                if not conn.dropped_by_server or loop.time() >= deadline:
                    raise
            # The server closed a connection made earlier (restart, idle
            # timeout): one more try on a new one, in the time left.
        conn = await self._conn(loop, deadline - loop.time())
        return await self._exchange(loop, conn, packed, deadline)

    async def _exchange(
        self,
        loop: asyncio.AbstractEventLoop,
        conn: _RespProtocol,
        packed: bytes,
        deadline: float,
    ) -> Any:
        """Send one command on ``conn``; its reply, by ``deadline``."""
        fut = conn.send(packed)
        timer = loop.call_at(deadline, _expire, fut, conn, self._timeout)
        try:
            reply = await fut
        finally:
            timer.cancel()
        if type(reply) is ResponseError:
            _raise_reply(reply)
        return reply

    async def aclose(self) -> None:
        loop = asyncio.get_running_loop()
        conn = self._conns.pop(loop, None)
        if self._last[0] is loop:
            self._last = (None, None)
        if isinstance(conn, _RespProtocol) and conn._transport is not None:
            conn.closed = True  # ours: in-flight calls fail, none retries
            conn._transport.close()
            await conn.gone


def _sync_link(
    connection_class: type[Any], kwargs: dict[str, Any], timeout: float
) -> _LeanSync | _DirectSync:
    """Bare sockets for plain TCP and Unix sockets; redis-py's own
    connections for the rest (TLS, RESP3, custom credentials)."""
    lean = _lean_settings(connection_class, kwargs)
    if lean is None:
        return _DirectSync(connection_class, kwargs, timeout)
    return _LeanSync(lean, timeout)


def _async_link(
    connection_class: type[Any], kwargs: dict[str, Any], timeout: float
) -> _PipelinedAsync | _DirectAsync:
    """``_sync_link`` for asyncio: the pipelined link where it applies."""
    lean = _lean_settings(connection_class, kwargs)
    if lean is None:
        return _DirectAsync(connection_class, kwargs, timeout)
    return _PipelinedAsync(lean, timeout)


class _ClusterSync:
    """A RedisCluster client's own command path (slot routing, MOVED)."""

    def __init__(self, client: _RedisCluster) -> None:
        self._client: Any = client

    def call(self, *args: Any) -> Any:
        return self._client.execute_command(*args)

    def scan_delete(self, pattern: bytes) -> int:
        deleted = 0
        for key in self._client.scan_iter(match=pattern, count=1000):
            deleted += int(self._client.execute_command("UNLINK", key))
        return deleted

    def close(self) -> None:
        pass


class _ClusterAsync:
    def __init__(self, client: _AsyncRedisCluster, timeout: float) -> None:
        self._client: Any = client
        self._timeout = timeout

    async def call(self, *args: Any) -> Any:
        try:
            async with _timeout(self._timeout):
                return await self._client.execute_command(*args)
        except asyncio.TimeoutError:
            raise _RedisTimeoutError(f"no answer within {self._timeout} s") from None

    async def scan_delete(self, pattern: bytes) -> int:
        deleted = 0
        keys = [k async for k in self._client.scan_iter(match=pattern, count=1000)]
        for key in keys:
            deleted += int(await self.call("UNLINK", key))
        return deleted

    async def aclose(self) -> None:
        pass


class _AfterFork:
    """Links to reset in a forked child (weakly held)."""

    def __init__(self) -> None:
        self._links: weakref.WeakSet[Any] = weakref.WeakSet()
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self._run)

    def add(self, link: Any) -> None:
        self._links.add(link)

    def _run(self) -> None:
        for link in list(self._links):
            link._forget()


_after_fork = _AfterFork()


# =============================================================================
# The connector: links, and the outage state shared by limiters and caches
# =============================================================================

_URL_SCHEMES = ("redis://", "rediss://", "unix://")


class _Connector:
    def __init__(
        self, client_or_url: object, timeout: float, retry_interval: float
    ) -> None:
        self.timeout = timeout
        self.retry_interval = retry_interval
        self.sync: _SyncLink | None = None
        self._async: _AsyncLink | None = None
        self._async_url: str | None = None
        self.where = ""
        c = client_or_url
        if isinstance(c, str):
            if not c.startswith(_URL_SCHEMES):
                raise ValueError(
                    f"unsupported Redis URL {c!r}: use redis://, rediss:// or unix://"
                )
            pool = _redis.ConnectionPool.from_url(c)
            self.sync = _sync_link(
                pool.connection_class, pool.connection_kwargs, timeout
            )
            self._async_url = c
            self.where = _describe(pool.connection_kwargs)
        elif isinstance(c, _RedisCluster):
            self.sync = _ClusterSync(c)
            self.where = "Redis Cluster"
        elif isinstance(c, _AsyncRedisCluster):
            self._async = _ClusterAsync(c, timeout)
            self.where = "Redis Cluster"
        elif isinstance(c, _redis.Redis):
            pool = c.connection_pool
            self.where = _followed(pool)
            self.sync = _sync_link(
                pool.connection_class, pool.connection_kwargs, timeout
            )
        elif isinstance(c, _aredis.Redis):
            apool = c.connection_pool
            self.where = _followed(apool)
            self._async = _async_link(
                apool.connection_class, apool.connection_kwargs, timeout
            )
        else:
            raise TypeError(
                "expected a redis.Redis, redis.asyncio.Redis or RedisCluster client, "
                f"or a redis:// URL, not {type(c).__name__}"
            )
        self.has_async = self._async is not None or self._async_url is not None
        # The server's clock as seen from here: server time (us) minus
        # time.monotonic() (us) when the last answered hit was sent, an
        # upper bound of the true difference (the server read its clock
        # after the send), off by at most that round trip. None until a
        # hit is answered, and on Redis Cluster, whose nodes have clocks
        # of their own (hits there carry no deadline).
        self.skew: float | None = None
        self.deadlines = not isinstance(c, (_RedisCluster, _AsyncRedisCluster))
        self.timeout_us = timeout * 1e6
        self._lock = threading.Lock()
        # The clock of the outage state (its start, the retry interval):
        # monotonic seconds; tests move a fake one by hand.
        self.clock: Callable[[], float] = time.monotonic
        self.down_since: float | None = None  # clock() at the start of an outage
        self._retry_at = 0.0
        # Bumped when an outage starts and when it ends. A call takes the
        # epoch when it starts, and its outcome counts only if the state
        # is still the one it started in: a call sent before Redis came
        # back that fails afterwards does not open a new outage, and one
        # sent before the outage began that succeeds during it (threads,
        # tasks in flight) does not end it.
        self.epoch = 0
        self.last_error: BaseException | None = None

    @property
    def async_link(self) -> _AsyncLink:
        link = self._async
        if link is None:
            if self._async_url is None:
                raise TypeError(
                    "this Redis storage was given a blocking client: use the "
                    "blocking methods, or give it a redis.asyncio client or a URL"
                )
            apool = _aredis.ConnectionPool.from_url(self._async_url)
            link = self._async = _async_link(
                apool.connection_class, apool.connection_kwargs, self.timeout
            )
        return link

    def sync_link(self) -> _SyncLink:
        if self.sync is None:
            raise TypeError(
                "this Redis storage was given an asyncio client: use the async "
                "methods (ahit, apeek, ...), or give it a blocking client or a URL"
            )
        return self.sync

    # -- outages -----------------------------------------------------------

    def skip(self) -> bool:
        """During an outage, True for calls that should not try Redis now
        (one call per retry_interval probes it)."""
        now = self.clock()
        if now < self._retry_at:
            return True
        with self._lock:
            if now < self._retry_at:
                return True
            self._retry_at = now + self.retry_interval
        return False

    def failed(self, exc: BaseException, epoch: int, who: _Who) -> None:
        """Record a failed call of ``who`` that started at ``epoch``."""
        now = self.clock()
        with self._lock:
            if epoch != self.epoch:
                return  # started in another state: stale news
            self._retry_at = now + self.retry_interval
            self.last_error = exc
            if self.down_since is not None:
                return
            self.down_since = now
            self.epoch += 1
        _log(
            logging.WARNING,
            "%s: Redis at %s is unavailable (%s: %s); %s until it answers again",
            who.name,
            self.where,
            type(exc).__name__,
            exc,
            who.meanwhile,
        )

    def recovered(self, epoch: int, who: _Who) -> None:
        """Record a success of ``who``'s call that started at ``epoch``:
        the end of the outage if the call started during it."""
        with self._lock:
            since = self.down_since
            if since is None or epoch != self.epoch:
                return
            self.down_since = None
            self._retry_at = 0.0
            self.last_error = None
            self.epoch += 1
        _log(
            logging.INFO,
            "%s: Redis at %s is available again after %.3f s",
            who.name,
            self.where,
            self.clock() - since,
        )

    def close(self) -> None:
        if self.sync is not None:
            self.sync.close()

    async def aclose(self) -> None:
        if self._async is not None:
            await self._async.aclose()


def _describe(kwargs: dict[str, Any]) -> str:
    """Where a connection made from ``kwargs`` goes (never its password)."""
    if kwargs.get("path"):
        where = f"unix:{kwargs['path']}"
    else:
        where = f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}"
    db = kwargs.get("db")
    return f"{where}/{db}" if db else where


_SENTINEL_CLASSES = (_SentinelManaged, _AsyncSentinelManaged)


def _pool_method(cls: type[Any], name: str) -> Any:
    return getattr(cls, name, None)


# How redis-py's own pools hand out connections: made from the pool's
# connection class and settings (Sentinel's pools through the same
# methods, their connections asking Sentinel for the master).
_KNOWN_POOL_METHODS = frozenset(
    _pool_method(cls, name)
    for cls in (
        _redis.ConnectionPool,
        _redis.BlockingConnectionPool,
        _aredis.ConnectionPool,
        _aredis.BlockingConnectionPool,
        _SentinelPool,
        _AsyncSentinelPool,
    )
    for name in ("get_connection", "make_connection")
)


def _followed(pool: Any) -> str:
    """Check that the links, which make connections from ``pool``'s
    connection class and settings and connect them with connect(), reach
    the server the pool's own connections reach; where that is.

    A Sentinel-managed connection asks its pool's Sentinels for the
    master whenever it connects, so the links follow a failover. A pool
    class that hands out connections its own way could send them
    elsewhere: refused."""
    kwargs = pool.connection_kwargs
    if issubclass(pool.connection_class, _SENTINEL_CLASSES):
        if not getattr(pool, "is_master", False):
            raise ValueError(
                "a Sentinel replica client (slave_for) cannot take the writes "
                "of limits and caches: give Sentinel.master_for(...)"
            )
        if kwargs.get("connection_pool") is None:
            raise ValueError(
                "this Sentinel-managed client's connections have no pool to ask "
                "Sentinel for the master"
            )
        service = getattr(pool, "service_name", "?")
        db = kwargs.get("db")
        return f"Sentinel master {service!r}" + (f" db {db}" if db else "")
    own = [
        name
        for name in ("get_connection", "make_connection")
        if _pool_method(type(pool), name) not in _KNOWN_POOL_METHODS
    ]
    if own:
        raise ValueError(
            f"cannot follow this client: its pool ({type(pool).__name__}) has its "
            f"own {' and '.join(own)}, so connections made from its settings "
            "might reach another server; give a redis.Redis with a redis-py "
            "pool, a Sentinel.master_for(...) client or a URL"
        )
    return _describe(kwargs)


class _Who:
    """Who logs an outage: the component's name and what its callers get
    while Redis is down (its on_error policy)."""

    __slots__ = ("meanwhile", "name")

    def __init__(self, name: str, meanwhile: str) -> None:
        self.name = name
        self.meanwhile = meanwhile


_LIMITER_MEANWHILE = {
    "allow": "hits are allowed (on_error='allow')",
    "deny": "hits are denied (on_error='deny')",
    "raise": "hits raise StorageUnavailable (on_error='raise')",
}
_CACHE_MEANWHILE = {
    "ignore": "reads miss and writes are dropped",
    "raise": "calls raise StorageUnavailable (on_error='raise')",
}


def _connector_of(
    client_or_url: object, timeout: float, retry_interval: float
) -> _Connector:
    if isinstance(client_or_url, RedisStorage):
        return client_or_url._connector
    return _Connector(client_or_url, timeout, retry_interval)


# =============================================================================
# The storage and its limiter
# =============================================================================


class RedisStorage:
    """Rate limits shared through Redis: pass it as ``Limiter(storage=...)``.

    ``client_or_url``: a ``redis.Redis``, ``redis.asyncio.Redis``,
    ``redis.cluster.RedisCluster`` or ``redis.asyncio.cluster.RedisCluster``
    client, or a ``redis://`` / ``rediss://`` / ``unix://`` URL (which gives
    both blocking and asyncio methods). ``prefix`` starts every key it
    writes; ``timeout`` (seconds) bounds each decision; ``retry_interval``
    (seconds) spaces the attempts while Redis is down.
    """

    def __init__(
        self,
        client_or_url: object,
        *,
        prefix: str = "stanchion:",
        timeout: float = 0.05,
        retry_interval: float = 0.1,
    ) -> None:
        if not isinstance(prefix, str):
            raise TypeError(f"prefix must be a str, not {type(prefix).__name__}")
        if "{" in prefix or "}" in prefix:
            raise ValueError(
                f"prefix must not contain '{{' or '}}' (hash tags), got {prefix!r}"
            )
        timeout = check_seconds("timeout", timeout, zero_ok=False)
        retry_interval = check_seconds("retry_interval", retry_interval, zero_ok=True)
        self.prefix = prefix
        self.timeout = timeout
        self._connector = _Connector(client_or_url, timeout, retry_interval)

    def __repr__(self) -> str:
        return f"RedisStorage({self._connector.where!r}, prefix={self.prefix!r})"

    def make_limiter(
        self,
        rates: list[Rate],
        *,
        algorithm: str,
        burst: int | list[int | None] | None,
        on_error: str,
    ) -> RedisLimiter:
        """Called by ``stanchion.Limiter(..., storage=self)``."""
        return RedisLimiter(
            self, rates, algorithm=algorithm, burst=burst, on_error=on_error
        )

    def close(self) -> None:
        """Close the blocking connections (new ones open on next use)."""
        self._connector.close()

    async def aclose(self) -> None:
        """Close this event loop's asyncio connections."""
        await self._connector.aclose()


def _llround(x: float) -> int:
    """C's llround for x >= 0 (half away from zero)."""
    f = math.floor(x)
    return int(f) + 1 if x - f >= 0.5 else int(f)


def _compile(
    rates: list[Rate], algorithm: str, burst: int | list[int | None] | None
) -> list[tuple[int, int, int]]:
    """(capacity, a, b) per rate, as st_policy_add compiles them."""
    bursts: list[int | None]
    if burst is None:
        bursts = [None] * len(rates)
    elif isinstance(burst, int):
        bursts = [burst]
    else:
        bursts = list(burst)
    out = []
    for (amount, period), b in zip(rates, bursts, strict=True):
        period_ns = _llround(float(period) * 1e9)
        if algorithm == "token_bucket":
            interval = max(1, round(period_ns / float(amount)))
            cap = b if b else (1 if amount < 1 else math.floor(amount))
            out.append((cap, interval, cap * interval))
        else:
            if period_ns % 1000:
                raise ValueError(
                    f"rate {Rate(amount, period)}: a window period must be a whole "
                    "number of microseconds with Redis storage"
                )
            out.append((math.floor(amount), period_ns // 1000, period_ns))
    return out


class RedisLimiter:
    """A limiter whose state lives in Redis; made by
    ``stanchion.Limiter(..., storage=RedisStorage(...))``.

    Same methods as ``stanchion.Limiter``: ``hit``/``peek``/``reset``/
    ``acquire`` (blocking client or URL) and ``ahit``/``apeek``/``areset``/
    ``aacquire`` (asyncio client or URL).
    """

    __slots__ = (
        "_allow_base",
        "_connector",
        "_deny",
        "_head",
        "_min_cap",
        "_params",
        "_scan",
        "_script_clock",
        "_sha",
        "_src",
        "_tail",
        "_who",
        "algorithm",
        "max_cost",
        "on_error",
        "rates",
        "storage",
    )

    def __init__(
        self,
        storage: RedisStorage,
        rates: list[Rate],
        *,
        algorithm: str,
        burst: int | list[int | None] | None = None,
        on_error: str = "allow",
    ) -> None:
        if not isinstance(storage, RedisStorage):
            raise TypeError(
                f"storage must be a RedisStorage, not {type(storage).__name__}"
            )
        if algorithm not in ALGORITHMS:
            raise ValueError(f"unknown algorithm {algorithm!r}")
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
        if burst is not None and algorithm != "token_bucket":
            raise ValueError("burst applies to algorithm='token_bucket' only")
        # The in-process engine validates rates and bursts with the very
        # same rules and messages; it is then dropped.
        probe = _core.Limiter(rates, algorithm, burst, 1, None)
        compiled = _compile(list(rates), algorithm, burst)

        self.storage = storage
        self._connector = storage._connector
        self.rates = tuple(rates)
        self.algorithm = algorithm
        self.on_error = on_error
        self.max_cost: int = probe.max_cost
        self._src, self._sha = SCRIPTS[algorithm]
        params: list[bytes] = []
        for triple in compiled:
            params.extend(str(v).encode() for v in triple)
        self._params = tuple(params)
        ident = hashlib.blake2b(b" ".join(params), digest_size=5).hexdigest()
        code = _ALGORITHM_CODES[algorithm]
        prefix = storage.prefix.encode()
        self._head = prefix + b"{"
        self._tail = f"}}:{code}:{ident}".encode()
        self._scan = _glob_escape(prefix) + b"{*" + _glob_escape(self._tail)
        self._min_cap = min(c for c, _, _ in compiled)
        shortest = min(float(r[1]) for r in rates)
        wait = min(1.0, shortest)
        self._deny = Decision(False, self._min_cap, 0, wait, wait)
        self._allow_base = self._min_cap
        self._script_clock: Callable[[], int] | None = None
        self._who = _Who("stanchion rate limiter", _LIMITER_MEANWHILE[on_error])

    def __repr__(self) -> str:
        rates = ";".join(str(r) for r in self.rates)
        return (
            f"RedisLimiter({rates!r}, algorithm={self.algorithm!r}, "
            f"storage={self.storage!r})"
        )

    # -- arguments -----------------------------------------------------------

    def _key(self, key: object) -> bytes:
        return self._head + _key_bytes(key) + self._tail

    def _cost(self, cost: object) -> int:
        if type(cost) is int and 1 <= cost <= self.max_cost:
            return cost
        if isinstance(cost, bool) or not isinstance(cost, int):
            raise TypeError(f"cost must be an int, not {type(cost).__name__}")
        if cost < 1:
            raise ValueError(f"cost must be >= 1, got {cost!r}")
        if cost > self.max_cost:
            raise ValueError(
                f"cost {cost!r} can never be allowed: the smallest capacity of "
                f"this limiter's rates is {self.max_cost}"
            )
        return int(cost)

    def _args(
        self, rkey: bytes, cost: int, commit: bytes, sent: float
    ) -> tuple[Any, ...]:
        """The script's arguments for a call sent at ``sent`` (monotonic
        seconds). A hit carries a deadline: the server time at which its
        caller gives up (sent + timeout), in the server's clock by the
        connector's ``skew``. A hit that reaches the server after that
        (queued behind a stall, sent before a pause and read on resume)
        is not applied: its caller already got the on_error answer."""
        clock = self._script_clock
        if clock is not None:
            return (rkey, int(clock()), cost, commit, *self._params)
        skew = self._connector.skew
        if skew is not None and commit == b"1":
            # An int: hiredis packs one faster than a float's repr.
            deadline = int(sent * 1e6 + skew + self._connector.timeout_us)
            return (rkey, b"", cost, deadline, *self._params)
        return (rkey, b"", cost, commit, *self._params)

    # -- answers -------------------------------------------------------------

    @staticmethod
    def _decision(reply: Any) -> Decision:
        return Decision(
            reply[0] == 1, reply[1], reply[2], reply[3] / 1e9, reply[4] / 1e9
        )

    def _fallback(self, cost: int) -> Decision:
        if self.on_error == "allow":
            return Decision(True, self._min_cap, self._min_cap - cost, 0.0, 0.0)
        if self.on_error == "deny":
            return self._deny
        conn = self._connector
        raise StorageUnavailable(
            f"Redis at {conn.where} is unavailable"
        ) from conn.last_error

    def _failure(self, exc: BaseException, cost: int, epoch: int) -> Decision:
        self._connector.failed(exc, epoch, self._who)
        try:
            return self._fallback(cost)
        except StorageUnavailable as err:
            raise err from exc

    # -- blocking ------------------------------------------------------------

    def _run(self, args: tuple[Any, ...]) -> Any:
        link = self._connector.sync_link()
        try:
            return link.call("EVALSHA", self._sha, 1, *args)
        except NoScriptError:
            return link.call("EVAL", self._src, 1, *args)

    def _decide(self, key: object, cost: object, commit: bytes) -> Decision:
        rkey = self._key(key)
        c = self._cost(cost)
        conn = self._connector
        epoch = conn.epoch
        if conn.down_since is not None and conn.skip():
            return self._fallback(c)
        try:
            sent = time.monotonic()
            reply = self._run(self._args(rkey, c, commit, sent))
            if conn.deadlines:
                # The server's clock, learnt from the answer.
                conn.skew = reply[-1] - sent * 1e6
                if reply[0] == -1:
                    # Past its deadline, yet its caller is still here:
                    # the deadline was wrong, not late (the server's
                    # clock stepped, or another server answers since a
                    # failover). Once more with the corrected clock.
                    sent = time.monotonic()
                    reply = self._run(self._args(rkey, c, commit, sent))
                    conn.skew = reply[-1] - sent * 1e6
                    if reply[0] == -1:
                        raise _RedisTimeoutError("Redis ran the hit after its deadline")
        except _FAILURES as exc:
            return self._failure(exc, c, epoch)
        if conn.down_since is not None:
            conn.recovered(epoch, self._who)
        return self._decision(reply)

    def hit(self, key: str | bytes, cost: int = 1) -> Decision:
        """Consume ``cost`` from every rate for ``key`` if all allow it;
        otherwise consume nothing."""
        return self._decide(key, cost, b"1")

    def peek(self, key: str | bytes, cost: int = 1) -> Decision:
        """The Decision ``hit`` would return now, consuming nothing."""
        return self._decide(key, cost, b"0")

    def reset(self, key: str | bytes | None = None) -> None:
        """Forget one key (back to full), or every key of this limiter."""
        rkey = None if key is None else self._key(key)
        link = self._connector.sync_link()
        epoch = self._connector.epoch
        try:
            if rkey is None:
                link.scan_delete(self._scan)
            else:
                link.call("UNLINK", rkey)
        except _FAILURES as exc:
            self._reset_failed(exc, epoch)
            return
        if self._connector.down_since is not None:
            self._connector.recovered(epoch, self._who)

    def _reset_failed(self, exc: BaseException, epoch: int) -> None:
        self._connector.failed(exc, epoch, self._who)
        if self.on_error == "raise":
            raise StorageUnavailable(
                f"Redis at {self._connector.where} is unavailable"
            ) from exc

    def acquire(
        self, key: str | bytes, cost: int = 1, timeout: float | None = None
    ) -> Decision:
        """Hit, waiting while denied. With a ``timeout`` (seconds), raises
        RateLimitExceeded as soon as the wait would exceed it."""
        return wait_for_hit(self.hit, key, cost, timeout)

    # -- asyncio -------------------------------------------------------------

    async def _arun(self, args: tuple[Any, ...]) -> Any:
        link = self._connector.async_link
        try:
            return await link.call("EVALSHA", self._sha, 1, *args)
        except NoScriptError:
            return await link.call("EVAL", self._src, 1, *args)

    async def _adecide(self, key: object, cost: object, commit: bytes) -> Decision:
        rkey = self._key(key)
        c = self._cost(cost)
        conn = self._connector
        if not conn.has_async:
            conn.async_link  # noqa: B018 - raises the TypeError
        epoch = conn.epoch
        if conn.down_since is not None and conn.skip():
            return self._fallback(c)
        try:
            sent = time.monotonic()
            reply = await self._arun(self._args(rkey, c, commit, sent))
            if conn.deadlines:
                # The server's clock, learnt from the answer.
                conn.skew = reply[-1] - sent * 1e6
                if reply[0] == -1:
                    # Past its deadline, yet its caller is still here:
                    # the deadline was wrong, not late (the server's
                    # clock stepped, or another server answers since a
                    # failover). Once more with the corrected clock.
                    sent = time.monotonic()
                    reply = await self._arun(self._args(rkey, c, commit, sent))
                    conn.skew = reply[-1] - sent * 1e6
                    if reply[0] == -1:
                        raise _RedisTimeoutError("Redis ran the hit after its deadline")
        except _FAILURES as exc:
            return self._failure(exc, c, epoch)
        if conn.down_since is not None:
            conn.recovered(epoch, self._who)
        return self._decision(reply)

    async def ahit(self, key: str | bytes, cost: int = 1) -> Decision:
        return await self._adecide(key, cost, b"1")

    async def apeek(self, key: str | bytes, cost: int = 1) -> Decision:
        return await self._adecide(key, cost, b"0")

    async def areset(self, key: str | bytes | None = None) -> None:
        rkey = None if key is None else self._key(key)
        link = self._connector.async_link
        epoch = self._connector.epoch
        try:
            if rkey is None:
                await link.scan_delete(self._scan)
            else:
                await link.call("UNLINK", rkey)
        except _FAILURES as exc:
            self._reset_failed(exc, epoch)
            return
        if self._connector.down_since is not None:
            self._connector.recovered(epoch, self._who)

    async def aacquire(
        self, key: str | bytes, cost: int = 1, timeout: float | None = None
    ) -> Decision:
        """Like ``acquire``, sleeping with asyncio (never blocks the loop)."""
        return await await_hit(self.ahit, key, cost, timeout)


def _glob_escape(b: bytes) -> bytes:
    out = bytearray()
    for ch in b:
        if ch in b"*?[]\\":
            out.append(0x5C)
        out.append(ch)
    return bytes(out)


# =============================================================================
# The cache
# =============================================================================


class Serializer(Protocol):
    def dumps(self, value: Any, /) -> bytes | str: ...
    def loads(self, data: bytes, /) -> Any: ...


class _Pickle:
    @staticmethod
    def dumps(value: Any) -> bytes:
        return pickle.dumps(value, pickle.HIGHEST_PROTOCOL)

    loads = staticmethod(pickle.loads)


class _Json:
    @staticmethod
    def dumps(value: Any) -> bytes:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()

    @staticmethod
    def loads(data: bytes) -> Any:
        return json.loads(data)


_MISSING: Any = object()

# Cache keys: str and bytes keys are stored as they are (readable in
# redis-cli); any other key, such as the tuples @cached builds from a
# call's arguments, as a 0x00 byte and a canonical encoding of its value,
# which every process computes alike (hash() and repr() do not). A str or
# bytes key that itself starts with 0x00 is encoded too, so two different
# keys never share a Redis key. Long encodings are replaced by a SHA-256.
_LONG_KEY = 256


def _encode(value: object, out: bytearray) -> None:
    if isinstance(value, str):
        b = value.encode()
        out += b"s%d:" % len(b)
        out += b
    elif isinstance(value, bool):
        out += b"T" if value else b"F"
    elif isinstance(value, int):
        out += b"i%d;" % value
    elif isinstance(value, tuple):
        out += b"t%d:" % len(value)
        for item in value:
            _encode(item, out)
    elif isinstance(value, bytes):
        out += b"b%d:" % len(value)
        out += value
    elif value is None:
        out += b"N"
    elif isinstance(value, float):
        out += b"f" + value.hex().encode() + b";"
    elif isinstance(value, frozenset):
        parts = []
        for item in value:
            buf = bytearray()
            _encode(item, buf)
            parts.append(bytes(buf))
        out += b"z%d:" % len(parts)
        for part in sorted(parts):
            out += part
    elif type(value) is object:
        # A bare object() is @cached's marker between positional and
        # keyword arguments (typed=True keys hold types, below).
        out += b"K"
    elif isinstance(value, type):
        out += f"y{value.__module__}.{value.__qualname__};".encode()
    else:
        raise TypeError(
            "RedisCache keys must be str, bytes, int, float, bool, None, or tuples "
            f"and frozensets of them, not {type(value).__name__} (give @cached a "
            "key= function that returns a str)"
        )


def _cache_key(key: object) -> bytes:
    if isinstance(key, str):
        b = key.encode()
        if not b.startswith(b"\x00"):
            return b
    elif isinstance(key, bytes) and not key.startswith(b"\x00"):
        return bytes(key)
    elif type(key) is object:
        raise TypeError(
            "RedisCache keys must be str, bytes, int, float, bool, None, or tuples "
            "and frozensets of them, not object"
        )
    out = bytearray(b"\x00")
    _encode(key, out)
    if len(out) > _LONG_KEY:
        return b"\x00h" + hashlib.sha256(out).hexdigest().encode()
    return bytes(out)


class RedisCache:
    """A cache in Redis, shared by every process: the ``stanchion.Cache``
    subset that a remote store can keep (``get``/``set``/``delete``/``ttl``/
    ``clear``, ``c[k]``, ``k in c``) and their asyncio twins (``aget``...).

    Keys are stored under ``prefix``: str and bytes keys as they are,
    other keys (ints, floats, None, and tuples or frozensets of these, as
    ``@cached`` builds them) by a canonical encoding that is the same in
    every process. Values go through ``serializer``: ``"pickle"``
    (default; only for data you trust: a pickle can run code when loaded),
    ``"json"``, or any object with ``dumps(value) -> bytes | str`` and
    ``loads(bytes) -> value``. ``ttl`` is the default lifetime in seconds
    (None: no expiry), used whenever ``set`` is given no ttl; it is kept
    as ``default_ttl``.

    It follows ``stanchion.CacheBackend``, so ``@cached(backend=cache)``
    keeps results in Redis. Keys from ``@cached`` are built from the
    arguments only: give each cached function its own namespace,
    ``@cached(backend=cache.namespace("users"))``.

    When Redis fails, reads miss, writes are dropped and deletes report
    False, logged once per outage; ``on_error="raise"`` raises
    ``stanchion.StorageUnavailable`` instead. There is no single-flight
    across processes: ``@cached`` computes once per key per process, so on
    a cold key each process may compute it once.

    ``client_or_url`` is as for ``RedisStorage``, or a ``RedisStorage``
    whose connections, timeout and outage state are then shared.
    """

    def __init__(
        self,
        client_or_url: object,
        *,
        prefix: str = "stanchion:cache:",
        ttl: float | None = None,
        serializer: str | Serializer = "pickle",
        timeout: float = 0.1,
        on_error: str = "ignore",
    ) -> None:
        if not isinstance(prefix, str):
            raise TypeError(f"prefix must be a str, not {type(prefix).__name__}")
        if not prefix:
            raise ValueError(
                "prefix must not be empty: clear() deletes every key under it"
            )
        if ttl is not None:
            ttl = check_seconds("ttl", ttl, zero_ok=False)
        if isinstance(serializer, str):
            if serializer not in ("pickle", "json"):
                raise ValueError(
                    "serializer must be 'pickle', 'json' or an object with "
                    f"dumps/loads, "
                    f"got {serializer!r}"
                )
            ser: Any = _Pickle if serializer == "pickle" else _Json
        elif callable(getattr(serializer, "dumps", None)) and callable(
            getattr(serializer, "loads", None)
        ):
            ser = serializer
        else:
            raise TypeError(
                "serializer must be 'pickle', 'json' or an object with dumps and loads "
                f"methods, not {type(serializer).__name__}"
            )
        timeout = check_seconds("timeout", timeout, zero_ok=False)
        if on_error not in ("ignore", "raise"):
            raise ValueError(f"on_error must be 'ignore' or 'raise', got {on_error!r}")
        self._connector = _connector_of(client_or_url, timeout, 0.1)
        self.prefix = prefix
        self._prefix = prefix.encode()
        self.default_ttl = ttl
        self.on_error = on_error
        self._who = _Who("stanchion cache", _CACHE_MEANWHILE[on_error])
        self._dumps = ser.dumps
        self._loads = ser.loads

    def __repr__(self) -> str:
        where = self._connector.where
        return f"RedisCache({where!r}, prefix={self.prefix!r}, ttl={self.default_ttl})"

    def namespace(self, name: str) -> RedisCache:
        """The same cache under ``prefix + name + ":"`` (same connections,
        serializer, ttl and on_error): one per cached function."""
        if not isinstance(name, str):
            raise TypeError(f"name must be a str, not {type(name).__name__}")
        if not name:
            raise ValueError("name must not be empty")
        child = object.__new__(RedisCache)
        child.__dict__.update(self.__dict__)
        child.prefix = f"{self.prefix}{name}:"
        child._prefix = child.prefix.encode()
        return child

    # -- pieces shared by both sides ------------------------------------------

    def _key(self, key: object) -> bytes:
        return self._prefix + _cache_key(key)

    def _set_args(self, key: object, value: Any, ttl: float | None) -> tuple[Any, ...]:
        rkey = self._key(key)
        if ttl is None:
            ttl = self.default_ttl
        else:
            ttl = check_seconds("ttl", ttl, zero_ok=False)
        data = self._dumps(value)
        if isinstance(data, str):
            data = data.encode()
        elif isinstance(data, (bytearray, memoryview)):
            data = bytes(data)
        elif not isinstance(data, bytes):
            raise TypeError(
                f"the serializer's dumps returned {type(data).__name__}, "
                "not bytes or str"
            )
        if ttl is None:
            return ("SET", rkey, data)
        return ("SET", rkey, data, "PX", max(1, math.ceil(ttl * 1000)))

    def _failed(self, exc: BaseException, epoch: int) -> None:
        self._connector.failed(exc, epoch, self._who)
        if self.on_error == "raise":
            raise StorageUnavailable(
                f"Redis at {self._connector.where} is unavailable"
            ) from exc

    def _ok(self, epoch: int) -> None:
        if self._connector.down_since is not None:
            self._connector.recovered(epoch, self._who)

    def _skip(self) -> bool:
        conn = self._connector
        if conn.down_since is not None and conn.skip():
            if self.on_error == "raise":
                raise StorageUnavailable(
                    f"Redis at {conn.where} is unavailable"
                ) from conn.last_error
            return True
        return False

    @staticmethod
    def _pttl(reply: Any) -> float | None:
        ms = int(reply)
        if ms == -2:
            raise KeyError("no such key")
        return None if ms < 0 else ms / 1000

    # -- blocking --------------------------------------------------------------

    def _call(self, *args: Any) -> Any:
        """A command's reply; _MISSING when Redis failed (and on_error lets
        it pass)."""
        link = self._connector.sync_link()
        epoch = self._connector.epoch
        if self._skip():
            return _MISSING
        try:
            reply = link.call(*args)
        except _FAILURES as exc:
            self._failed(exc, epoch)
            return _MISSING
        self._ok(epoch)
        return reply

    def get(self, key: Hashable, default: Any = None) -> Any:
        """The value for ``key``, or ``default`` when absent (or Redis is
        unavailable)."""
        data = self._call("GET", self._key(key))
        if data is None or data is _MISSING:
            return default
        return self._loads(data)

    def set(self, key: Hashable, value: Any, ttl: float | None = None) -> None:
        """Store ``value`` for ``ttl`` seconds (default: the cache's ttl)."""
        self._call(*self._set_args(key, value, ttl))

    def delete(self, key: Hashable) -> bool:
        """Remove ``key``; True if it was there."""
        n = self._call("UNLINK", self._key(key))
        return n is not _MISSING and int(n) > 0

    def ttl(self, key: Hashable) -> float | None:
        """Seconds until ``key`` expires, or None when it never does (or
        Redis is unavailable); KeyError when it is absent."""
        reply = self._call("PTTL", self._key(key))
        return None if reply is _MISSING else self._pttl(reply)

    def clear(self) -> None:
        """Delete every key under the prefix (SCAN + UNLINK on every master,
        never FLUSHDB)."""
        link = self._connector.sync_link()
        epoch = self._connector.epoch
        try:
            link.scan_delete(_glob_escape(self._prefix) + b"*")
        except _FAILURES as exc:
            self._failed(exc, epoch)
            return
        self._ok(epoch)

    def __getitem__(self, key: Hashable) -> Any:
        value = self.get(key, _MISSING)
        if value is _MISSING:
            raise KeyError(key)
        return value

    def __setitem__(self, key: Hashable, value: Any) -> None:
        self.set(key, value)

    def __delitem__(self, key: Hashable) -> None:
        if not self.delete(key):
            raise KeyError(key)

    def __contains__(self, key: object) -> bool:
        """True when ``key`` is stored (False when Redis is unavailable)."""
        n = self._call("EXISTS", self._key(key))
        return n is not _MISSING and int(n) > 0

    def close(self) -> None:
        self._connector.close()

    # -- raw commands under this cache's prefix -------------------------------

    def raw_key(self, key: str | bytes) -> bytes:
        """``key`` under this cache's prefix, as stored in Redis (no
        serialization: for callers that build their own commands)."""
        if isinstance(key, str):
            key = key.encode("utf-8", "surrogateescape")
        elif not isinstance(key, bytes):
            raise TypeError(f"key must be str or bytes, not {type(key).__name__}")
        return self._prefix + key

    def command(self, *args: Any) -> Any:
        """Run one Redis command; its reply, or None when Redis is
        unavailable and ``on_error`` lets that pass."""
        reply = self._call(*args)
        return None if reply is _MISSING else reply

    async def acommand(self, *args: Any) -> Any:
        """``command`` with asyncio."""
        reply = await self._acall(*args)
        return None if reply is _MISSING else reply

    def delete_raw_prefix(self, prefix: bytes) -> int:
        """Delete every key starting with ``prefix`` (a full key from
        ``raw_key``); how many were deleted (0 when Redis is unavailable
        and ``on_error`` lets that pass)."""
        if not isinstance(prefix, bytes):
            raise TypeError(f"prefix must be bytes, not {type(prefix).__name__}")
        link = self._connector.sync_link()
        if self._skip():
            return 0
        epoch = self._connector.epoch
        try:
            n = int(link.scan_delete(_glob_escape(prefix) + b"*"))
        except _FAILURES as exc:
            self._failed(exc, epoch)
            return 0
        self._ok(epoch)
        return n

    # -- asyncio ---------------------------------------------------------------

    async def _acall(self, *args: Any) -> Any:
        link = self._connector.async_link
        if self._skip():
            return _MISSING
        epoch = self._connector.epoch
        try:
            reply = await link.call(*args)
        except _FAILURES as exc:
            self._failed(exc, epoch)
            return _MISSING
        self._ok(epoch)
        return reply

    async def aget(self, key: Hashable, default: Any = None) -> Any:
        data = await self._acall("GET", self._key(key))
        if data is None or data is _MISSING:
            return default
        return self._loads(data)

    async def aset(self, key: Hashable, value: Any, ttl: float | None = None) -> None:
        await self._acall(*self._set_args(key, value, ttl))

    async def adelete(self, key: Hashable) -> bool:
        n = await self._acall("UNLINK", self._key(key))
        return n is not _MISSING and int(n) > 0

    async def attl(self, key: Hashable) -> float | None:
        reply = await self._acall("PTTL", self._key(key))
        return None if reply is _MISSING else self._pttl(reply)

    async def acontains(self, key: Hashable) -> bool:
        n = await self._acall("EXISTS", self._key(key))
        return n is not _MISSING and int(n) > 0

    async def aclear(self) -> None:
        link = self._connector.async_link
        epoch = self._connector.epoch
        try:
            await link.scan_delete(_glob_escape(self._prefix) + b"*")
        except _FAILURES as exc:
            self._failed(exc, epoch)
            return
        self._ok(epoch)

    async def aclose(self) -> None:
        await self._connector.aclose()
