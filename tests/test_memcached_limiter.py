"""The Memcached limiter against a real memcached: API, validation, keys
Memcached cannot store, a differential test against the in-process
engine on the same sequences, and processes sharing one limit."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import shutil
import ssl
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pymemcache.client.base import Client
from pymemcache.client.hash import HashClient

import stanchion
from stanchion import Decision, Limiter
from stanchion.memcached import MemcachedLimiter, MemcachedStorage, _safe_key

from ._memcached import MEMCACHED, MemcachedServer
from ._redis import SLOW, free_port, server_env

ALGORITHMS = ["token_bucket", "fixed_window", "sliding_window"]
PERIODS = [0.001, 0.0025, 0.5, 1, 2, 3, 60, 3600, 86400, 604800]
# A time near today's clock (ns), a multiple of every period: the
# in-process limiter runs at small times, the Memcached one at BASE_NS +
# the same times, so both see the same offsets inside every window.
BASE_NS = 2800 * 604_800_000_000_000


@pytest.fixture
def storage(memcached_server: MemcachedServer) -> Iterator[MemcachedStorage]:
    s = MemcachedStorage(
        memcached_server.url, timeout=SLOW, prefix=f"t{uuid.uuid4().hex[:8]}:"
    )
    yield s
    s.close()


class Clock:
    """One time, in us, seen by both limiters."""

    def __init__(self) -> None:
        self.us = 1_000_000_000

    def local(self) -> float:
        return self.us / 1e6

    def remote(self) -> int:
        return BASE_NS + self.us * 1000


def pair(
    rates: object, algorithm: str, storage: MemcachedStorage, burst: object = None
) -> tuple[Limiter, MemcachedLimiter, Clock]:
    clock = Clock()
    local = Limiter(rates, algorithm=algorithm, burst=burst, clock=clock.local)
    remote = Limiter(rates, algorithm=algorithm, burst=burst, storage=storage)
    assert isinstance(remote, MemcachedLimiter)
    remote._clock = clock.remote
    return local, remote, clock


def same(a: Decision, b: Decision) -> None:
    assert (a.allowed, a.limit, a.remaining) == (b.allowed, b.limit, b.remaining)
    assert a.reset_after == pytest.approx(b.reset_after, abs=1e-6)
    assert a.retry_after == pytest.approx(b.retry_after, abs=1e-6)


# -- construction and validation ------------------------------------------------


def test_storage_rejects_bad_arguments(memcached_server: MemcachedServer) -> None:
    url = memcached_server.url
    with pytest.raises(TypeError, match="prefix"):
        MemcachedStorage(url, prefix=5)  # type: ignore[arg-type]
    for bad in ("a b", "tab\t", "é", "x" * 101):
        with pytest.raises(ValueError, match="prefix"):
            MemcachedStorage(url, prefix=bad)
    for bad_timeout in (0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="timeout"):
            MemcachedStorage(url, timeout=bad_timeout)
    with pytest.raises(ValueError, match="retry_interval"):
        MemcachedStorage(url, retry_interval=-1)
    for bad_url in ("memcached://", "memcached://host:port", "host:99999"):
        with pytest.raises(ValueError, match="address"):
            MemcachedStorage(bad_url)
    with pytest.raises(TypeError, match="pymemcache"):
        MemcachedStorage(object())
    storage = MemcachedStorage(url)
    with pytest.raises(ValueError, match="penalty"):
        Limiter(
            "1/s", storage=storage, penalty=stanchion.Penalty(after=1, within=1, ban=1)
        )
    # A pymemcache client of the user's: its server, our connections.
    mine = Client(("127.0.0.1", memcached_server.port))
    theirs = MemcachedStorage(mine, prefix="mine:")
    try:
        lim = Limiter("2/minute", storage=theirs)
        assert lim.hit(uuid.uuid4().hex).allowed
    finally:
        theirs.close()


def test_limiter_rejects_bad_arguments(storage: MemcachedStorage) -> None:
    for bad_rates in ("10/fortnight", "", "0/second"):
        with pytest.raises(ValueError) as local_err:
            Limiter(bad_rates)
        with pytest.raises(ValueError) as remote_err:
            Limiter(bad_rates, storage=storage)
        assert str(local_err.value) == str(remote_err.value)
    with pytest.raises(ValueError, match="algorithm"):
        Limiter("1/s", algorithm="leaky", storage=storage)
    with pytest.raises(ValueError, match="burst"):
        Limiter("1/s", algorithm="fixed_window", burst=3, storage=storage)
    with pytest.raises(ValueError, match="on_error"):
        Limiter("1/s", storage=storage, on_error="ignore")
    lim = Limiter("5/second;3/minute", storage=storage)
    local = Limiter("5/second;3/minute")
    for bad_key in (None, 5, ["a"]):
        with pytest.raises(TypeError, match="key must be str or bytes"):
            lim.hit(bad_key)  # type: ignore[arg-type]
    for bad_cost, exc in [(0, ValueError), (4, ValueError), (1.0, TypeError)]:
        with pytest.raises(exc) as remote_err:
            lim.hit("k", bad_cost)  # type: ignore[arg-type]
        with pytest.raises(exc) as local_err:
            local.hit("k", bad_cost)  # type: ignore[arg-type]
        assert str(remote_err.value) == str(local_err.value)
    with pytest.raises(NotImplementedError, match="list keys"):
        lim.reset()
    assert "MemcachedLimiter('5/second;3/minute'" in repr(lim)


# -- keys Memcached cannot store ---------------------------------------------------


def test_safe_keys_hash_what_memcached_refuses() -> None:
    p = b"pre:"
    assert _safe_key(p, b"client-42") == b"pre:client-42"
    for body in (
        b"x" * 300,
        b"with space",
        b"new\nline",
        b"nul\x00",
        b"\x7f",
        "café".encode(),
        b"#starts-with-hash",
        b"ns:#generation",
    ):
        key = _safe_key(p, body)
        assert key.startswith(b"pre:#") and len(key) == len(p) + 41
        assert all(0x21 <= b < 0x7F for b in key)
    # Distinct bodies, distinct keys; the same body, the same key.
    bodies = [b"a b", b"a  b", b"x" * 300, b"x" * 301, b"#a b"]
    assert len({_safe_key(p, b) for b in bodies}) == len(bodies)
    assert _safe_key(p, b"a b") == _safe_key(p, b"a b")
    # 250 bytes in all is stored as it is; 251 is hashed.
    assert _safe_key(p, b"y" * 246) == p + b"y" * 246
    assert _safe_key(p, b"y" * 247).startswith(b"pre:#")


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_any_key_is_limited_apart(storage: MemcachedStorage, algorithm: str) -> None:
    lim = Limiter("2/minute", storage=storage, algorithm=algorithm)
    keys: list[str | bytes] = [
        "k" * 400,
        "k" * 401,
        "a b",
        "a\tb",
        "a\r\nb",
        "ключ",
        "🙂" * 80,
        b"\x00\xff",
        b"#" + b"0" * 40,
        "",
    ]
    for key in keys:
        got = [lim.hit(key).allowed for _ in range(3)]
        assert got == [True, True, False], key
    for key in keys:
        lim.reset(key)
        assert lim.hit(key).allowed


# -- the same decisions as the in-process engine -----------------------------------

ops = st.lists(
    st.tuples(
        st.sampled_from(["hit", "hit", "hit", "peek"]),
        st.integers(1, 3),
        st.integers(0, 2_000_000),  # us to advance first
    ),
    min_size=1,
    max_size=40,
)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    ops=ops,
    periods=st.lists(st.sampled_from(PERIODS), min_size=1, max_size=3, unique=True),
    counts=st.lists(st.integers(3, 12), min_size=3, max_size=3),
)
def test_same_decisions_as_in_process(
    storage: MemcachedStorage,
    algorithm: str,
    ops: list[tuple[str, int, int]],
    periods: list[float],
    counts: list[int],
) -> None:
    rates = [stanchion.Rate(c, p) for c, p in zip(counts, periods, strict=False)]
    local, remote, clock = pair(rates, algorithm, storage)
    key = uuid.uuid4().hex
    for op, cost, advance in ops:
        clock.us += advance
        cost = min(cost, local.max_cost)
        same(getattr(remote, op)(key, cost), getattr(local, op)(key, cost))


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_multi_rate_all_or_nothing(storage: MemcachedStorage, algorithm: str) -> None:
    local, remote, clock = pair("3/second;5/minute", algorithm, storage)
    for _ in range(12):
        clock.us += 400_000
        same(remote.hit("k"), local.hit("k"))
    assert not remote.hit("k").allowed


# -- asyncio -------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ALGORITHMS)
async def test_async_twins(storage: MemcachedStorage, algorithm: str) -> None:
    lim = Limiter("2/minute", storage=storage, algorithm=algorithm)
    assert (await lim.ahit("a")).allowed
    assert (await lim.apeek("a")).remaining == 0  # after such a hit
    assert (await lim.ahit("a")).allowed
    assert not (await lim.ahit("a")).allowed
    await lim.areset("a")
    assert (await lim.aacquire("a", timeout=0)).allowed
    with pytest.raises(stanchion.RateLimitExceeded):
        await lim.aacquire("a", 2, timeout=0.01)
    # Many at once through the executor: exactly the limit passes.
    results = await asyncio.gather(*(lim.ahit("b") for _ in range(10)))
    assert sum(d.allowed for d in results) == 2


# -- processes sharing one limit ---------------------------------------------------------


def _hammer(url: str, prefix: str, algorithm: str, n: int, out: object) -> None:
    storage = MemcachedStorage(url, prefix=prefix, timeout=SLOW)
    lim = Limiter("50/minute", storage=storage, algorithm=algorithm)
    allowed = sum(lim.hit("shared").allowed for _ in range(n))
    out.put(allowed)  # type: ignore[attr-defined]


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_processes_share_one_limit(
    memcached_server: MemcachedServer, algorithm: str
) -> None:
    """Four processes, 100 hits each on one key of 50/minute: exactly 50
    pass in all (cas for the bucket and sliding window; incr for the
    fixed window, exact for one rate at cost 1)."""
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    prefix = f"p{uuid.uuid4().hex[:8]}:"
    procs = [
        ctx.Process(
            target=_hammer, args=(memcached_server.url, prefix, algorithm, 100, out)
        )
        for _ in range(4)
    ]
    for p in procs:
        p.start()
    totals = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    assert sum(totals) == 50


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_threads_share_one_limit(storage: MemcachedStorage, algorithm: str) -> None:
    """Eight threads racing on one key (one connection each from the
    pool): exactly the limit passes, the cas loops retrying lost races."""

    lim = Limiter("40/minute", storage=storage, algorithm=algorithm)
    allowed: list[int] = []
    start = threading.Barrier(8)

    def work() -> None:
        start.wait()
        allowed.append(sum(lim.hit("raced").allowed for _ in range(20)))

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sum(allowed) == 40


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_hash_client_used_as_given(
    memcached_server: MemcachedServer, algorithm: str
) -> None:
    ring = HashClient(
        [("127.0.0.1", memcached_server.port)],
        timeout=SLOW,
        connect_timeout=SLOW,
        use_pooling=True,
    )
    storage = MemcachedStorage(ring, prefix=f"h{uuid.uuid4().hex[:8]}:")
    assert storage._connector.client is ring
    assert f"127.0.0.1:{memcached_server.port}" in repr(storage)
    try:
        lim = Limiter("2/minute", storage=storage, algorithm=algorithm)
        assert [lim.hit("k").allowed for _ in range(3)] == [True, True, False]
        lim.reset("k")
        assert lim.peek("k").allowed
        cache = stanchion.MemcachedCache(storage)
        cache.set(("a", 1), "v")
        assert cache.get(("a", 1)) == "v"
        cache.clear()
        assert cache.get(("a", 1)) is None
    finally:
        storage.close()


def test_hash_client_must_be_safe_for_threads_and_bounded(
    memcached_server: MemcachedServer,
) -> None:
    """A HashClient is used as given: one without pooling shares one
    socket per server among the threads that call it (replies mixed up:
    spurious outages, a cas answered with another call's STORED), and
    one without timeouts hangs on a stalled server. Both are refused,
    naming the setting; a pooled, bounded one keeps every quota exact
    under threads."""
    servers = [("127.0.0.1", memcached_server.port)]
    bounded = {"timeout": SLOW, "connect_timeout": SLOW}
    for make in (MemcachedStorage, stanchion.MemcachedCache):
        with pytest.raises(ValueError, match=r"use_pooling=True"):
            make(HashClient(servers, **bounded))
        with pytest.raises(ValueError, match=r"connect_timeout and timeout="):
            make(HashClient(servers, use_pooling=True))
        with pytest.raises(ValueError, match=r"connect_timeout="):
            make(HashClient(servers, use_pooling=True, timeout=SLOW))
    ring = HashClient(servers, use_pooling=True, **bounded)
    storage = MemcachedStorage(ring, prefix=f"h{uuid.uuid4().hex[:8]}:")
    try:
        lim = Limiter("40/minute", storage=storage, on_error="raise")
        start = threading.Barrier(8)
        allowed: list[int] = []

        def work() -> None:
            start.wait()
            allowed.append(sum(lim.hit("raced").allowed for _ in range(20)))

        threads = [threading.Thread(target=work) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert sum(allowed) == 40
    finally:
        storage.close()


def test_a_tls_client_keeps_its_tls(tmp_path: Any) -> None:
    """A pymemcache Client given with a TLS context: stanchion's own
    connections to its server speak TLS too (never the same data in the
    clear), against a real memcached listening with TLS only."""
    openssl = shutil.which("openssl")
    assert openssl is not None and MEMCACHED is not None
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    port = free_port()
    args = [MEMCACHED, "-p", str(port), "-U", "0", "-l", "127.0.0.1", "-Z",
            "-o", f"ssl_chain_cert={cert},ssl_key={key}"]  # fmt: skip
    if os.geteuid() == 0:
        args += ["-u", "root"]
    proc = subprocess.Popen(
        args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=server_env()
    )
    ctx = ssl.create_default_context(cafile=str(cert))
    given = Client(("127.0.0.1", port), tls_context=ctx, timeout=SLOW)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                given.version()
                break
            except OSError:
                assert time.monotonic() < deadline, "memcached with TLS did not start"
                time.sleep(0.05)
        storage = MemcachedStorage(given, prefix="tls:")
        lim = Limiter("2/minute", storage=storage, on_error="raise")
        assert [lim.hit("k").allowed for _ in range(3)] == [True, True, False]
        storage.close()
    finally:
        given.close()
        proc.terminate()
        proc.wait(10)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_periods_ending_past_2038_are_kept(
    storage: MemcachedStorage, algorithm: str
) -> None:
    """A state needed until past January 2038 (an expiry Memcached cannot
    hold in 31 bits) was stored already expired: the next hit found the
    client full again. It is kept until Memcached evicts it."""
    for rate, n in (("1 per 30 years", 1), ("2 per 20 years", 2)):
        lim = Limiter(rate, storage=storage, algorithm=algorithm, on_error="raise")
        assert [lim.hit("k").allowed for _ in range(n + 1)] == [True] * n + [False]
