"""Links: how commands reach one Redis server (or a cluster).

A link sends one command and returns its reply, bounded by the storage's
timeout and retried once on a new connection when a reused one was closed
by the server. This module holds the link protocols, the links over
redis-py's own connections (blocking and asyncio, made like a client's),
the Redis Cluster links, and the pieces every link shares: the errors
that mean "Redis could not answer", the command packer, the reset after
``fork``. The lean links on bare sockets are in ``wire``.
"""

from __future__ import annotations

import asyncio
import os
import sys
import weakref
from collections.abc import Callable
from typing import Any, Protocol

import hiredis as _hiredis
from redis.asyncio.cluster import RedisCluster as _AsyncRedisCluster
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster as _RedisCluster
from redis.exceptions import ConnectionError as _RedisConnectionError
from redis.exceptions import NoScriptError, RedisError, ResponseError
from redis.exceptions import TimeoutError as _RedisTimeoutError
from redis.retry import Retry

# Errors that mean "Redis could not answer": everything redis-py raises,
# socket errors, and asyncio timeouts (builtins.TimeoutError on 3.11+).
_FAILURES: tuple[type[BaseException], ...] = (RedisError, OSError, asyncio.TimeoutError)

# redis[hiredis]: the C packer (redis.asyncio packs in Python) and parser.
_pack: Callable[[tuple[Any, ...]], bytes] = _hiredis.pack_command

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


# =============================================================================
# Links: how commands reach the server
# =============================================================================


class _SyncLink(Protocol):
    def call(self, *args: Any) -> Any: ...
    def scan_delete(self, pattern: bytes) -> int: ...
    def scan_keys(self, pattern: bytes) -> list[bytes]: ...
    def close(self) -> None: ...


class _AsyncLink(Protocol):
    async def call(self, *args: Any) -> Any: ...
    async def scan_delete(self, pattern: bytes) -> int: ...
    async def scan_keys(self, pattern: bytes) -> list[bytes]: ...
    async def aclose(self) -> None: ...


def _own_kwargs(
    kwargs: dict[str, Any], timeout: float | None, *, for_asyncio: bool = False
) -> dict[str, Any]:
    """A client's connection settings with our timeout and no retries
    (an asyncio connection takes redis-py's asyncio Retry: recent
    releases warn of a blocking one)."""
    kw = dict(kwargs)
    kw["socket_timeout"] = timeout
    kw["socket_connect_timeout"] = timeout
    kw["retry"] = (AsyncRetry if for_asyncio else Retry)(NoBackoff(), 0)
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

    def scan_keys(self, pattern: bytes) -> list[bytes]:
        cursor: Any = b"0"
        found: set[bytes] = set()  # SCAN may return a key twice
        while True:
            cursor, keys = self.call("SCAN", cursor, "MATCH", pattern, "COUNT", 1000)
            found.update(keys)
            if cursor in (b"0", 0, "0"):
                return sorted(found)


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

    async def scan_keys(self, pattern: bytes) -> list[bytes]:
        cursor: Any = b"0"
        found: set[bytes] = set()  # SCAN may return a key twice
        while True:
            cursor, keys = await self.call(
                "SCAN", cursor, "MATCH", pattern, "COUNT", 1000
            )
            found.update(keys)
            if cursor in (b"0", 0, "0"):
                return sorted(found)


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
        self._kwargs = _own_kwargs(kwargs, None, for_asyncio=True)
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


def _raise_reply(reply: ResponseError) -> None:
    if str(reply).startswith("NOSCRIPT"):
        raise NoScriptError(str(reply))
    raise reply


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

    def scan_keys(self, pattern: bytes) -> list[bytes]:
        return sorted(set(self._client.scan_iter(match=pattern, count=1000)))

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

    async def scan_keys(self, pattern: bytes) -> list[bytes]:
        return sorted(
            {k async for k in self._client.scan_iter(match=pattern, count=1000)}
        )

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


def _glob_escape(b: bytes) -> bytes:
    out = bytearray()
    for ch in b:
        if ch in b"*?[]\\":
            out.append(0x5C)
        out.append(ch)
    return bytes(out)
