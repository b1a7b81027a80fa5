"""The links to a plain TCP or Unix socket Redis. Blocking: bare sockets
that threads take from a stack. asyncio: one connection per event loop
that every task pipelines on, replies matched to calls in order even when
a caller gives up. Both set up with AUTH, SELECT and CLIENT SETNAME from
the URL; redis-py's connections serve what they do not do."""

from __future__ import annotations

import asyncio
import os
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator

import pytest
import redis
import redis.asyncio as aredis
from redis.exceptions import ConnectionError as RedisConnectionError

import stanchion
from stanchion.redis import (
    RedisCache,
    RedisStorage,
    _async_link,
    _DirectAsync,
    _DirectSync,
    _LeanSync,
    _PipelinedAsync,
    _sync_link,
)

from ._redis import SLOW, RedisServer

PASSWORD = "s3cret-pw"


@pytest.fixture(scope="module")
def locked_redis() -> Iterator[tuple[RedisServer, str]]:
    """A server that wants a password, also on a Unix socket."""
    with tempfile.TemporaryDirectory(prefix="stanchion-redis-") as d:
        sock = os.path.join(d, "redis.sock")
        server = RedisServer(d, None, "--requirepass", PASSWORD, "--unixsocket", sock)
        server.start()
        try:
            yield server, sock
        finally:
            server.stop()


def _clients_named(server: RedisServer, name: str, *auth: str) -> int:
    listing = server.cli(*auth, "CLIENT", "LIST")
    return sum(f" name={name} " in line + " " for line in listing.splitlines())


def _all_gone(server: RedisServer, name: str) -> bool:
    """Whether the server has seen every connection named ``name`` close
    (it learns of a close on its own time: poll up to 2 s)."""
    deadline = time.monotonic() + 2
    while _clients_named(server, name):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


async def test_concurrent_calls_share_one_pipelined_connection(
    redis_server: RedisServer,
) -> None:
    name = f"pipe-{uuid.uuid4().hex[:8]}"
    storage = RedisStorage(f"{redis_server.url}?client_name={name}", timeout=2.0)
    assert isinstance(storage._connector.async_link, _PipelinedAsync)
    lim = stanchion.Limiter("20/minute", storage=storage)
    scope = uuid.uuid4().hex
    try:
        many = await asyncio.gather(*(lim.ahit(f"{scope}-{i}") for i in range(200)))
        one = await asyncio.gather(*(lim.ahit(f"{scope}-hot") for _ in range(50)))
        assert all(d.allowed and d.remaining == 19 for d in many)
        assert sum(d.allowed for d in one) == 20
        assert sorted(d.remaining for d in one if d.allowed) == list(range(20))
        assert _clients_named(redis_server, name) == 1
    finally:
        await storage.aclose()
    assert _all_gone(redis_server, name)


def test_threads_share_the_blocking_sockets(redis_server: RedisServer) -> None:
    name = f"sync-{uuid.uuid4().hex[:8]}"
    storage = RedisStorage(f"{redis_server.url}?client_name={name}", timeout=2.0)
    assert isinstance(storage._connector.sync, _LeanSync)
    lim = stanchion.Limiter("1000/day", storage=storage)
    key = uuid.uuid4().hex
    allowed = []

    def work() -> None:
        allowed.extend(lim.hit(key).allowed for _ in range(150))

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert sum(allowed) == 1000 and len(allowed) == 1200
        assert 1 <= _clients_named(redis_server, name) <= 8
    finally:
        storage.close()
    assert _all_gone(redis_server, name)


@pytest.mark.parametrize("asynchronous", [False, True])
async def test_password_and_database_over_tcp_and_unix_socket(
    locked_redis: tuple[RedisServer, str], asynchronous: bool
) -> None:
    server, sock = locked_redis
    auth = ("-a", PASSWORD, "--no-auth-warning")
    prefix = f"t-{uuid.uuid4().hex[:8]}:"
    tcp = RedisCache(
        f"redis://:{PASSWORD}@127.0.0.1:{server.port}/3", prefix=prefix, timeout=2.0
    )
    unix = RedisCache(
        f"unix://{sock}?db=5&password={PASSWORD}", prefix=prefix, timeout=2.0
    )
    try:
        for cache in (tcp, unix):
            if asynchronous:
                assert isinstance(cache._connector.async_link, _PipelinedAsync)
                await cache.aset("k", f"via {cache is tcp}")
                assert await cache.aget("k") == f"via {cache is tcp}"
            else:
                assert isinstance(cache._connector.sync, _LeanSync)
                cache.set("k", f"via {cache is tcp}")
                assert cache.get("k") == f"via {cache is tcp}"
        exists = [
            server.cli(*auth, "-n", db, "EXISTS", f"{prefix}k").strip()
            for db in ("3", "5", "0")
        ]
        assert exists == ["1", "1", "0"]
    finally:
        for cache in (tcp, unix):
            cache.close()
            await cache.aclose()


@pytest.mark.parametrize("asynchronous", [False, True])
async def test_a_wrong_password_is_an_outage_with_its_reason(
    locked_redis: tuple[RedisServer, str], asynchronous: bool
) -> None:
    server, _ = locked_redis
    storage = RedisStorage(f"redis://:wrong@127.0.0.1:{server.port}/0", timeout=2.0)
    lim = stanchion.Limiter("5/minute", storage=storage, on_error="raise")
    try:
        with pytest.raises(stanchion.StorageUnavailable) as info:
            if asynchronous:
                await lim.ahit("k")
            else:
                lim.hit("k")
        cause = info.value.__cause__
        assert isinstance(cause, RedisConnectionError), repr(cause)
        assert "refused the connection set-up: WRONGPASS" in str(cause)
    finally:
        storage.close()
        await storage.aclose()


async def test_a_caller_that_gives_up_does_not_shift_the_replies(
    redis_server: RedisServer,
) -> None:
    """A call cancelled while its command runs keeps its place: its reply
    is dropped and the next call gets its own."""
    storage = RedisStorage(redis_server.url, timeout=2.0)
    link = storage._connector.async_link
    key = f"nothing-{uuid.uuid4().hex}"
    try:
        assert await link.call("ECHO", b"warm") == b"warm"
        slow = asyncio.create_task(link.call("BLPOP", key, "0.2"))
        await asyncio.sleep(0.05)
        slow.cancel()
        with pytest.raises(asyncio.CancelledError):
            await slow
        replies = await asyncio.gather(
            link.call("ECHO", b"a"), link.call("ECHO", b"b"), link.call("PING")
        )
        assert replies == [b"a", b"b", b"PONG"]
    finally:
        await storage.aclose()


def test_what_the_lean_links_do_not_do_keeps_redis_py() -> None:
    def kind(url: str) -> type:
        pool = aredis.ConnectionPool.from_url(url)
        return type(_async_link(pool.connection_class, pool.connection_kwargs, 0.1))

    def sync_kind(url: str) -> type:
        pool = redis.ConnectionPool.from_url(url)
        return type(_sync_link(pool.connection_class, pool.connection_kwargs, 0.1))

    assert sync_kind("redis://127.0.0.1:6379/0") is _LeanSync
    assert sync_kind("unix:///tmp/redis.sock?db=1") is _LeanSync
    assert sync_kind("rediss://127.0.0.1:6379/0") is _DirectSync
    assert sync_kind("redis://127.0.0.1:6379/0?protocol=3") is _DirectSync
    assert kind("redis://127.0.0.1:6379/0") is _PipelinedAsync
    assert kind("unix:///tmp/redis.sock?db=1") is _PipelinedAsync
    assert kind("rediss://127.0.0.1:6379/0") is _DirectAsync
    assert kind("redis://127.0.0.1:6379/0?protocol=3") is _DirectAsync
    client = aredis.Redis(host="127.0.0.1", port=6379, db=2, password="x")
    pool = client.connection_pool
    link = _async_link(pool.connection_class, pool.connection_kwargs, 0.1)
    assert isinstance(link, _PipelinedAsync)
    creds = aredis.Redis(
        host="127.0.0.1", credential_provider=redis.UsernamePasswordCredentialProvider()
    )
    pool = creds.connection_pool
    link2 = _async_link(pool.connection_class, pool.connection_kwargs, 0.1)
    assert isinstance(link2, _DirectAsync)


async def test_tcp_keepalive_as_the_client_asks(redis_server: RedisServer) -> None:
    """socket_keepalive (redis-py 8 turns it on by default) reaches the
    lean links' sockets, blocking and asyncio; without it they have none."""

    def flag(sock: object) -> int:
        return int(sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE))  # type: ignore[attr-defined]

    for keepalive in (True, False):
        sync_client = redis.Redis(port=redis_server.port, socket_keepalive=keepalive)
        async_client = aredis.Redis(port=redis_server.port, socket_keepalive=keepalive)
        blocking = RedisStorage(sync_client, timeout=2)
        asynchronous = RedisStorage(async_client, timeout=2)
        try:
            link = blocking._connector.sync
            alink = asynchronous._connector.async_link
            assert isinstance(link, _LeanSync) and isinstance(alink, _PipelinedAsync)
            assert link.call("PING") == b"PONG"
            assert await alink.call("PING") == b"PONG"
            assert flag(link._idle[0].sock) == int(keepalive)
            conn = alink._last[1]
            assert conn is not None and conn._transport is not None
            assert flag(conn._transport.get_extra_info("socket")) == int(keepalive)
        finally:
            blocking.close()
            await asynchronous.aclose()
            sync_client.close()
            await async_client.aclose()


async def test_a_cancelled_connect_tells_the_waiting_tasks_no_connection(
    redis_server: RedisServer,
) -> None:
    """Tasks that wait for another task's connection attempt are not
    cancelled with it: they get a connection error (which the limiter
    answers by its policy), and the next call connects afresh."""
    storage = RedisStorage(redis_server.url, timeout=2.0)
    link = storage._connector.async_link
    try:
        first = asyncio.create_task(link.call("PING"))
        second = asyncio.create_task(link.call("PING"))
        await asyncio.sleep(0)  # the first is connecting, the second waits
        first.cancel()
        results = await asyncio.gather(first, second, return_exceptions=True)
        assert isinstance(results[0], asyncio.CancelledError)
        assert isinstance(results[1], RedisConnectionError), results[1]
        assert await link.call("PING") == b"PONG"
    finally:
        await storage.aclose()


class _CountingConnection(redis.Connection):
    """A custom connection class: its own connect() must be the one used
    (as a Sentinel-managed connection's is, to ask for the master)."""

    connects = 0

    def connect(self) -> None:
        type(self).connects += 1
        super().connect()


class _AsyncCountingConnection(aredis.Connection):
    connects = 0

    async def connect(self) -> None:
        type(self).connects += 1
        await super().connect()


async def test_custom_connection_classes_and_resp3_work(
    redis_server: RedisServer,
) -> None:
    sync_pool = redis.ConnectionPool(
        connection_class=_CountingConnection, port=redis_server.port
    )
    async_pool = aredis.ConnectionPool(
        connection_class=_AsyncCountingConnection, port=redis_server.port
    )
    resp3 = RedisStorage(redis.Redis(port=redis_server.port, protocol=3), timeout=SLOW)
    blocking = RedisStorage(redis.Redis(connection_pool=sync_pool), timeout=SLOW)
    asyncio_ = RedisStorage(aredis.Redis(connection_pool=async_pool), timeout=SLOW)
    key = uuid.uuid4().hex
    try:
        assert isinstance(blocking._connector.sync, _DirectSync)
        lims = [
            stanchion.Limiter("5/minute", storage=s, on_error="raise")
            for s in (blocking, asyncio_, resp3)
        ]
        assert lims[0].hit(key).remaining == 4
        assert (await lims[1].ahit(key)).remaining == 3
        assert lims[2].hit(key).remaining == 2
        assert _CountingConnection.connects == 1
        assert _AsyncCountingConnection.connects == 1
    finally:
        blocking.close()
        resp3.close()
        await asyncio_.aclose()
