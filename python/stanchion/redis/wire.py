"""The lean wire clients: RESP on bare sockets, parsed by hiredis.

For plain TCP and Unix socket connections (no TLS, RESP2, no credential
provider) the links skip redis-py's connection machinery: a blocking call
is one ``sendall`` and a ``recv`` on a socket of its own (``_LeanSync``),
an asyncio call a write on the one connection its event loop shares, with
concurrent calls pipelined (``_PipelinedAsync``). ``_sync_link`` and
``_async_link`` choose between these and redis-py's connections.
"""

from __future__ import annotations

import asyncio
import collections
import socket
import weakref
from collections.abc import Mapping
from typing import Any

import hiredis as _hiredis
import redis as _redis
import redis.asyncio as _aredis
from redis.exceptions import ConnectionError as _RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as _RedisTimeoutError

from .links import (
    _after_fork,
    _AsyncScan,
    _DirectAsync,
    _DirectSync,
    _pack,
    _raise_reply,
    _StackedSync,
    _timeout,
)

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

    def drop_stalled(self) -> None:
        """Drop a connection whose server stopped answering. Nothing new
        is sent on it; the commands in flight keep waiting, each until its
        own deadline (its timer fails it then): the server may still run
        one until that deadline, and its caller must not get the
        ``on_error`` answer before, or a hit could count for a caller
        that was told otherwise."""
        self.closed = True
        self._waiting = collections.deque()
        if self._transport is not None:
            self._transport.abort()

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
        conn.drop_stalled()


class _PipelinedAsync(_AsyncScan):
    """asyncio link over one connection per event loop that every task
    shares: each call writes its command at once and awaits its reply,
    so concurrent calls are pipelined (one round trip serves many) and a
    call costs a write, a parse and a future, with no stream reader,
    lock or pool in between. ``timeout`` bounds each call, connecting
    included; a call that times out drops the connection (nothing new is
    sent behind a stalled reply), and the calls already in flight on it
    fail each at its own deadline."""

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
