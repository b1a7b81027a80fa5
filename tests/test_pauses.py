"""Pauses shared through a storage: in-process, shared memory, Redis."""

from __future__ import annotations

import asyncio
import fcntl
import logging
import math
import multiprocessing
import os
import signal
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import stanchion
from stanchion._pauses import (
    MemoryPauses,
    Pauses,
    RedisPauses,
    ShmPauses,
    pauses_for,
    pauses_segment,
)
from stanchion.redis import RedisStorage

from ._redis import SLOW, RedisServer
from .conftest import FakeClock

_fork = multiprocessing.get_context("fork")
_spawn = multiprocessing.get_context("spawn")
PYTHON_PATH = str(Path(stanchion.__file__).resolve().parent.parent)


class Env:
    """One table under test and a way to let time pass: a fake clock for
    the in-process and shared-memory tables, real time for Redis (whose
    clock is the server's), so waits there are short and answers
    approximate to ``tol``."""

    def __init__(self, pauses: Pauses, clock: FakeClock | None) -> None:
        self.pauses = pauses
        self.clock = clock
        self.tol = 0.0 if clock is not None else 0.5

    def advance(self, seconds: float) -> None:
        if self.clock is not None:
            self.clock.advance(seconds)
        else:
            time.sleep(seconds)


@pytest.fixture
def shm_storage() -> Iterator[stanchion.SharedMemoryStorage]:
    storage = stanchion.SharedMemoryStorage(f"test-pauses-{uuid.uuid4().hex}")
    yield storage
    storage.unlink(missing_ok=True)


@pytest.fixture
async def redis_storage(redis_server: RedisServer) -> AsyncIterator[RedisStorage]:
    # Async, so that the asyncio connections of an async test close in
    # its own event loop.
    storage = RedisStorage(
        redis_server.url, prefix=f"test-{uuid.uuid4().hex}:", timeout=SLOW
    )
    yield storage
    storage.close()
    await storage.aclose()


@pytest.fixture(params=["memory", "shm", "redis"])
def env(request: pytest.FixtureRequest) -> Env:
    if request.param == "redis":
        storage = request.getfixturevalue("redis_storage")
        return Env(pauses_for(storage), None)
    clock = FakeClock()
    if request.param == "shm":
        storage = request.getfixturevalue("shm_storage")
        return Env(pauses_for(storage, clock=clock), clock)
    return Env(pauses_for(None, clock=clock), clock)


def close_to(value: float, expected: float, tol: float) -> bool:
    return expected - tol <= value <= expected + 1e-9


# -- behaviour shared by every storage --------------------------------------------


def test_the_table_of_each_storage(env: Env) -> None:
    assert isinstance(env.pauses, Pauses)
    assert isinstance(env.pauses, (MemoryPauses, ShmPauses, RedisPauses))


def test_not_paused(env: Env) -> None:
    assert env.pauses.remaining("nobody") == 0.0


def test_pause_then_remaining(env: Env) -> None:
    env.pauses.pause("a", 10)
    assert close_to(env.pauses.remaining("a"), 10.0, env.tol)
    env.advance(0.5)
    assert close_to(env.pauses.remaining("a"), 9.5, env.tol)
    assert env.pauses.remaining("b") == 0.0


def test_a_pause_extends_and_never_shortens(env: Env) -> None:
    p = env.pauses
    p.pause("a", 10)
    p.pause("a", 2)
    assert close_to(p.remaining("a"), 10.0, env.tol)
    p.pause("a", 20)
    assert close_to(p.remaining("a"), 20.0, env.tol)
    p.pause("a", 0)
    assert close_to(p.remaining("a"), 20.0, env.tol)


def test_a_pause_ends(env: Env) -> None:
    env.pauses.pause("a", 0.2)
    env.advance(0.35)
    assert env.pauses.remaining("a") == 0.0
    # And can start again.
    env.pauses.pause("a", 5)
    assert close_to(env.pauses.remaining("a"), 5.0, env.tol)


def test_fractions_are_rounded_up_never_down(env: Env) -> None:
    if env.clock is None:
        # Redis keeps whole milliseconds: a read may come after the
        # first one has passed, so the rounding itself is checked.
        assert RedisPauses._ms(0.0004) == 1
        assert RedisPauses._ms(1.0001) == 1001
        assert RedisPauses._ms(2.0) == 2000
        return
    env.pauses.pause("a", 1e-10)
    assert env.pauses.remaining("a") > 0.0


def test_claim_is_exclusive_until_released(env: Env) -> None:
    p = env.pauses
    assert p.claim("probe", 10)
    assert not p.claim("probe", 10)
    assert p.claim("other", 10)
    p.release("probe")
    assert p.claim("probe", 10)
    assert not p.claim("probe", 1)
    p.release("never-claimed")


def test_claim_ends_by_itself(env: Env) -> None:
    assert env.pauses.claim("probe", 0.2)
    env.advance(0.35)
    assert env.pauses.claim("probe", 0.2)


def test_claims_and_pauses_are_independent(env: Env) -> None:
    p = env.pauses
    p.pause("k", 10)
    assert p.claim("k", 10)
    p.release("k")
    assert close_to(p.remaining("k"), 10.0, env.tol)
    assert p.claim("k", 10)
    p.pause("k", 20)
    assert not p.claim("k", 10)


def _race_to_claim(pauses: Pauses, key: str, n: int) -> list[bool]:
    barrier = threading.Barrier(n)
    won: list[bool] = []

    def go() -> None:
        barrier.wait()
        won.append(pauses.claim(key, 30))

    threads = [threading.Thread(target=go) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return won


def test_claim_across_threads_is_won_once(env: Env) -> None:
    for round_ in range(5):
        won = _race_to_claim(env.pauses, f"probe-{round_}", 8)
        assert sorted(won) == [False] * 7 + [True]


def test_pauses_across_threads_keep_the_longest(env: Env) -> None:
    seconds = list(range(1, 41))

    def go(s: int) -> None:
        env.pauses.pause("busy", s)

    threads = [threading.Thread(target=go, args=(s,)) for s in seconds]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert close_to(env.pauses.remaining("busy"), 40.0, env.tol + 0.5)


async def test_async_twins(env: Env) -> None:
    p = env.pauses
    await p.apause("a", 10)
    await p.apause("a", 1)
    assert close_to(await p.aremaining("a"), 10.0, env.tol)
    assert p.remaining("a") > 9
    assert await p.aremaining("b") == 0.0
    assert await p.aclaim("c", 10)
    assert not await p.aclaim("c", 10)
    assert not p.claim("c", 10)
    await p.arelease("c")
    assert await p.aclaim("c", 10)


def test_any_str_is_a_key(env: Env) -> None:
    for key in ("", "é", "\ud800", "x" * 5000, "{tag}", "a:b", "*"):
        env.pauses.pause(key, 5)
        assert env.pauses.remaining(key) > 4
        assert env.pauses.claim(key, 5)
    assert env.pauses.remaining("x" * 4999) == 0.0


BAD: list[Any] = [
    (b"a", 1, TypeError),
    (None, 1, TypeError),
    (1, 1, TypeError),
    ("a", "1", TypeError),
    ("a", None, TypeError),
    ("a", True, TypeError),
    ("a", -1, ValueError),
    ("a", math.nan, ValueError),
    ("a", math.inf, ValueError),
    ("a", 1e10, ValueError),
    pytest.param("a", 10**400, ValueError, id="past-float-range"),
]


@pytest.mark.parametrize(("key", "seconds", "error"), BAD)
def test_bad_arguments_change_nothing(
    env: Env, key: Any, seconds: Any, error: type[Exception]
) -> None:
    p = env.pauses
    with pytest.raises(error):
        p.pause(key, seconds)
    with pytest.raises(error):
        p.claim(key, seconds)
    assert p.remaining("a") == 0.0
    assert p.claim("a", 1)


async def test_bad_arguments_async(env: Env) -> None:
    p = env.pauses
    with pytest.raises(TypeError):
        await p.apause(b"a", 1)
    with pytest.raises(ValueError):
        await p.apause("a", -1)
    with pytest.raises(ValueError):
        await p.aclaim("a", 0)
    with pytest.raises(TypeError):
        await p.aremaining(1)
    with pytest.raises(TypeError):
        await p.arelease(None)
    assert await p.aremaining("a") == 0.0


def test_claim_needs_a_duration(env: Env) -> None:
    with pytest.raises(ValueError):
        env.pauses.claim("a", 0)
    with pytest.raises(TypeError):
        env.pauses.remaining(b"a")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        env.pauses.release(None)  # type: ignore[arg-type]


# -- pauses_for ------------------------------------------------------------------


def test_unknown_storages_are_refused() -> None:
    for storage in ("shm://x", "redis://localhost", object(), 1, {}):
        with pytest.raises(TypeError, match=r"SharedMemoryStorage.*RedisStorage"):
            pauses_for(storage)


def test_pauses_for_does_not_import_redis() -> None:
    code = (
        "import sys, stanchion\n"
        "from stanchion._pauses import pauses_for\n"
        "pauses_for(None)\n"
        "try:\n"
        "    pauses_for(object())\n"
        "except TypeError:\n"
        "    pass\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'redis'))\n"
    )
    env = {**os.environ, "PYTHONPATH": PYTHON_PATH}
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_a_bad_clock_is_refused(redis_storage: RedisStorage) -> None:
    with pytest.raises(TypeError):
        pauses_for(None, clock=1.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="server's clock"):
        pauses_for(redis_storage, clock=time.monotonic)


def test_a_clock_reading_must_be_seconds() -> None:
    # The clock is read, and checked, whenever the answer depends on it;
    # with nothing paused or claimed, remaining() is 0.0 without it.
    for bad in (math.nan, 10**400):
        p = MemoryPauses(clock=lambda bad=bad: bad)
        assert p.remaining("a") == 0.0
        with pytest.raises(ValueError):
            p.pause("a", 1.0)
        with pytest.raises(ValueError):
            p.claim("a", 1.0)
        assert len(p) == 0
    readings = iter([1.0, math.nan])
    p = MemoryPauses(clock=lambda: next(readings))
    p.pause("a", 5.0)
    with pytest.raises(ValueError):
        p.remaining("a")


# -- in-process ------------------------------------------------------------------


def test_memory_default_clock_is_monotonic() -> None:
    p = pauses_for(None)
    p.pause("b", 60)
    assert 0 < p.remaining("b") <= 60
    p.pause("a", 0.05)
    time.sleep(0.07)
    assert p.remaining("a") == 0.0


def test_memory_drops_expired_entries(clock: FakeClock) -> None:
    p = MemoryPauses(clock=clock)
    for i in range(1000):
        p.pause(f"k{i}", 1)
        p.claim(f"c{i}", 1)
    clock.advance(2)
    for i in range(1000):
        p.pause(f"new{i}", 10)
    assert len(p) <= 1100


def test_memory_is_capped_and_keeps_the_longest(clock: FakeClock) -> None:
    p = MemoryPauses(clock=clock, max_keys=100)
    for i in range(1, 1001):
        p.pause(f"k{i}", i)
        assert len(p) <= 100
    # The longest pauses stay; the ones closest to ending went first.
    assert p.remaining("k1000") == 1000
    assert p.remaining("k950") == 950
    assert p.remaining("k1") == 0.0
    assert p.claim("k1", 5)


def test_memory_long_keys_take_bounded_room(clock: FakeClock) -> None:
    p = MemoryPauses(clock=clock)
    key = "k" * 1_000_000
    p.pause(key, 5)
    assert p.remaining(key) == 5
    (slot,) = p._table
    assert len(slot) <= 256


def test_memory_settings() -> None:
    with pytest.raises(TypeError):
        MemoryPauses(max_keys=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        MemoryPauses(max_keys=0)


# -- shared memory ---------------------------------------------------------------


def _shm_file(storage: stanchion.SharedMemoryStorage) -> Path:
    return Path("/dev/shm") / pauses_segment(storage).lstrip("/")


def test_shm_segment_is_one_of_the_storage_segments(
    shm_storage: stanchion.SharedMemoryStorage,
) -> None:
    assert shm_storage.segments() == []
    p = pauses_for(shm_storage)
    assert isinstance(p, ShmPauses)
    assert shm_storage.segments() == [pauses_segment(shm_storage)]
    assert _shm_file(shm_storage).exists()
    # The storage's limits live beside it.
    stanchion.Limiter("5/minute", storage=shm_storage).hit("x")
    assert pauses_segment(shm_storage) in shm_storage.segments()
    assert len(shm_storage.segments()) == 2
    p.pause("a", 60)
    shm_storage.unlink()
    assert shm_storage.segments() == []
    assert not _shm_file(shm_storage).exists()
    # Who still has it keeps it; a new table starts empty.
    assert p.remaining("a") > 59
    assert pauses_for(shm_storage).remaining("a") == 0.0


def test_shm_tables_of_one_storage_share(
    shm_storage: stanchion.SharedMemoryStorage,
) -> None:
    a = pauses_for(shm_storage)
    b = pauses_for(shm_storage)
    a.pause("x", 30)
    assert 29 < b.remaining("x") <= 30
    assert b.claim("probe", 30)
    assert not a.claim("probe", 30)
    other = stanchion.SharedMemoryStorage(shm_storage.name + "-other")
    try:
        assert pauses_for(other).remaining("x") == 0.0
    finally:
        other.unlink(missing_ok=True)


def test_shm_default_clock_is_monotonic(
    shm_storage: stanchion.SharedMemoryStorage,
) -> None:
    p = pauses_for(shm_storage)
    p.pause("b", 60)
    assert 0 < p.remaining("b") <= 60
    p.pause("a", 0.05)
    time.sleep(0.07)
    assert p.remaining("a") == 0.0


def test_shm_a_full_table_keeps_working(
    shm_storage: stanchion.SharedMemoryStorage, clock: FakeClock
) -> None:
    p = ShmPauses(shm_storage, clock=clock)
    n = 6000  # more than the 4096 slots
    for i in range(1, n + 1):
        p.pause(f"k{i}", i)
    # A bucket keeps its longest pauses: the 16 longest of all stay.
    for i in range(n - 15, n + 1):
        assert p.remaining(f"k{i}") == i
    kept = sum(p.remaining(f"k{i}") > 0 for i in range(1, n + 1))
    assert 3000 < kept <= 4096
    # Expired entries make room; claims still work on a full table.
    assert p.claim("k1", 5) and not p.claim("k1", 5)
    clock.advance(n + 1)
    for i in range(1, 100):
        p.pause(f"fresh{i}", 10)
        assert p.remaining(f"fresh{i}") == 10


def test_shm_a_foreign_file_is_refused(
    shm_storage: stanchion.SharedMemoryStorage,
) -> None:
    path = _shm_file(shm_storage)
    path.write_bytes(b"not a pauses segment, but long enough to have a header" * 4)
    with pytest.raises(ValueError, match="not a stanchion pauses segment"):
        pauses_for(shm_storage)
    path.write_bytes(b"tiny")
    with pytest.raises(ValueError, match="not a stanchion pauses segment"):
        pauses_for(shm_storage)


def test_shm_a_fifo_is_refused(shm_storage: stanchion.SharedMemoryStorage) -> None:
    os.mkfifo(_shm_file(shm_storage), 0o600)
    with pytest.raises(ValueError, match="not a regular file"):
        pauses_for(shm_storage)


def test_shm_a_symlink_is_not_followed(
    shm_storage: stanchion.SharedMemoryStorage, tmp_path: Path
) -> None:
    target = tmp_path / "target"
    target.write_bytes(b"")
    _shm_file(shm_storage).symlink_to(target)
    with pytest.raises(OSError):
        pauses_for(shm_storage)
    assert target.read_bytes() == b""


def test_shm_another_layout_is_refused(
    shm_storage: stanchion.SharedMemoryStorage,
) -> None:
    pauses_for(shm_storage).close()
    path = _shm_file(shm_storage)
    with path.open("r+b") as f:
        f.seek(8)
        f.write(struct.pack("<I", 99))
    with pytest.raises(ValueError, match="another layout"):
        pauses_for(shm_storage)


def test_shm_a_half_made_segment_is_made_again(
    shm_storage: stanchion.SharedMemoryStorage,
) -> None:
    path = _shm_file(shm_storage)
    path.write_bytes(b"")  # created, then its creator died
    pauses_for(shm_storage).pause("a", 10)
    assert pauses_for(shm_storage).remaining("a") > 9
    # Sized and headed, but not marked ready.
    with path.open("r+b") as f:
        f.seek(20)
        f.write(struct.pack("<I", 0))
    p = pauses_for(shm_storage)
    assert p.remaining("a") == 0.0
    p.pause("a", 10)
    assert pauses_for(shm_storage).remaining("a") > 9


def test_shm_closed_table(shm_storage: stanchion.SharedMemoryStorage) -> None:
    p = ShmPauses(shm_storage)
    p.close()
    p.close()
    with pytest.raises(ValueError, match="closed"):
        p.remaining("a")


def test_shm_storage_type_is_checked() -> None:
    with pytest.raises(TypeError):
        ShmPauses(None)


def _claim_in_child(storage: Any, key: str, start: Any, out: Any) -> None:
    p = pauses_for(storage)
    start.wait(30)
    out.put(p.claim(key, 60))


def _claim_inherited(p: ShmPauses, key: str, start: Any, out: Any) -> None:
    start.wait(30)
    out.put(p.claim(key, 60))


@pytest.mark.parametrize("ctx", [_fork, _spawn], ids=["fork", "spawn"])
def test_shm_claim_across_processes_is_won_once(
    shm_storage: stanchion.SharedMemoryStorage, ctx: Any
) -> None:
    start = ctx.Event()
    out = ctx.Queue()
    procs = [
        ctx.Process(
            target=_claim_in_child, args=(shm_storage, "probe", start, out), daemon=True
        )
        for _ in range(6)
    ]
    for proc in procs:
        proc.start()
    start.set()
    won = [out.get(timeout=60) for _ in procs]
    for proc in procs:
        proc.join(30)
    assert sorted(won) == [False] * 5 + [True]
    assert not pauses_for(shm_storage).claim("probe", 1)


def test_shm_a_table_made_before_fork_excludes_across_processes(
    shm_storage: stanchion.SharedMemoryStorage,
) -> None:
    p = pauses_for(shm_storage)
    assert isinstance(p, ShmPauses)
    for round_ in range(3):
        start = _fork.Event()
        out = _fork.Queue()
        key = f"probe-{round_}"
        procs = [
            _fork.Process(
                target=_claim_inherited, args=(p, key, start, out), daemon=True
            )
            for _ in range(6)
        ]
        for proc in procs:
            proc.start()
        start.set()
        mine = p.claim(key, 60)
        won = [out.get(timeout=60) for _ in procs] + [mine]
        for proc in procs:
            proc.join(30)
        assert sorted(won) == [False] * 6 + [True]


def _pause_timed(p: ShmPauses, trying: Any, out: Any) -> None:
    trying.set()
    p.pause("a", 10)
    out.put(time.monotonic())


def test_shm_a_forked_child_has_a_lock_of_its_own(
    shm_storage: stanchion.SharedMemoryStorage,
) -> None:
    """Forked while the parent holds the segment's lock (and its thread
    lock): the child waits for the parent's flock, not for a thread lock
    no thread of its own will release, and not past a flock it shares."""
    p = pauses_for(shm_storage)
    assert isinstance(p, ShmPauses)
    trying = _fork.Event()
    out = _fork.Queue()
    with p._locked(fcntl.LOCK_EX):
        child = _fork.Process(target=_pause_timed, args=(p, trying, out), daemon=True)
        child.start()
        assert trying.wait(30)
        time.sleep(0.2)
        released = time.monotonic()  # CLOCK_MONOTONIC: the host's
    done = out.get(timeout=30)
    child.join(10)
    assert done >= released
    assert p.remaining("a") > 9


def _pause_unable_to_open(p: ShmPauses, trying: Any, out: Any) -> None:
    # As in a worker that dropped its privileges after the fork: the
    # segment (mode 0600, the parent's) cannot be opened any more.
    def refused(*args: Any, **kwargs: Any) -> int:
        raise PermissionError(13, "Permission denied", args[0])

    os.open = refused  # this child's only
    trying.set()
    try:
        p.pause("a", 10)
    except OSError as exc:
        out.put(repr(exc))
    else:
        out.put(time.monotonic())


def test_shm_a_forked_child_that_cannot_open_the_segment(
    shm_storage: stanchion.SharedMemoryStorage,
) -> None:
    """The child's own open file is made by the parent before the fork:
    it has a lock of its own (it waits for the parent's) without opening
    anything."""
    p = pauses_for(shm_storage)
    assert isinstance(p, ShmPauses)
    trying = _fork.Event()
    out = _fork.Queue()
    with p._locked(fcntl.LOCK_EX):
        child = _fork.Process(
            target=_pause_unable_to_open, args=(p, trying, out), daemon=True
        )
        child.start()
        assert trying.wait(30)
        time.sleep(0.2)
        released = time.monotonic()
    done = out.get(timeout=30)
    child.join(10)
    assert isinstance(done, float), done
    assert done >= released
    assert p.remaining("a") > 9
    assert p._spare == -1  # the parent's copy is closed after the fork


def test_shm_a_pause_from_another_program(
    shm_storage: stanchion.SharedMemoryStorage,
) -> None:
    code = (
        "import stanchion; from stanchion._pauses import pauses_for; "
        f"p = pauses_for(stanchion.SharedMemoryStorage({shm_storage.name!r})); "
        "p.pause('provider-a', 30); print(p.claim('probe', 30))"
    )
    env = {**os.environ, "PYTHONPATH": PYTHON_PATH}
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "True"
    p = pauses_for(shm_storage)
    assert 15 < p.remaining("provider-a") <= 30
    assert not p.claim("probe", 30)


def _hold_the_lock(storage: Any, ready: Any) -> None:
    p = pauses_for(storage)
    assert isinstance(p, ShmPauses)
    with p._locked(fcntl.LOCK_EX):
        ready.set()
        time.sleep(60)


def test_shm_a_process_killed_holding_the_lock_blocks_nobody(
    shm_storage: stanchion.SharedMemoryStorage,
) -> None:
    p = pauses_for(shm_storage)
    ready = _fork.Event()
    holder = _fork.Process(
        target=_hold_the_lock, args=(shm_storage, ready), daemon=True
    )
    holder.start()
    assert ready.wait(30)
    done = threading.Event()

    def pause() -> None:
        p.pause("a", 10)
        done.set()

    t = threading.Thread(target=pause, daemon=True)
    t.start()
    assert not done.wait(0.2)  # waits for the holder
    assert holder.pid is not None
    os.kill(holder.pid, signal.SIGKILL)
    holder.join(10)
    assert done.wait(10)
    assert p.remaining("a") > 9


# -- Redis -----------------------------------------------------------------------


def test_redis_keys_expire_by_themselves(
    redis_server: RedisServer, redis_storage: RedisStorage
) -> None:
    p = pauses_for(redis_storage)
    p.pause("provider-a", 30)
    assert p.claim("provider-a", 20)
    prefix = redis_storage.prefix
    ttl = int(redis_server.cli("PTTL", f"{prefix}pause:provider-a"))
    assert 29_000 < ttl <= 30_000
    ttl = int(redis_server.cli("PTTL", f"{prefix}claim:provider-a"))
    assert 19_000 < ttl <= 20_000
    p.release("provider-a")
    assert redis_server.cli("EXISTS", f"{prefix}claim:provider-a").strip() == "0"


def test_redis_a_key_without_expiry_is_not_a_pause(
    redis_server: RedisServer, redis_storage: RedisStorage
) -> None:
    key = f"{redis_storage.prefix}pause:forever"
    redis_server.cli("SET", key, "x")
    p = pauses_for(redis_storage)
    assert p.remaining("forever") == 0.0
    p.pause("forever", 5)
    assert 4 < p.remaining("forever") <= 5


def test_redis_a_lost_script_is_sent_again(
    redis_server: RedisServer, redis_storage: RedisStorage
) -> None:
    p = pauses_for(redis_storage)
    p.pause("a", 5)
    redis_server.cli("SCRIPT", "FLUSH")
    p.pause("a", 50)
    assert 49 < p.remaining("a") <= 50


async def test_redis_async_lost_script(redis_server: RedisServer) -> None:
    storage = RedisStorage(
        redis_server.url, prefix=f"t-{uuid.uuid4().hex}:", timeout=SLOW
    )
    try:
        p = pauses_for(storage)
        redis_server.cli("SCRIPT", "FLUSH")
        await p.apause("a", 50)
        assert 49 < await p.aremaining("a") <= 50
    finally:
        await storage.aclose()


def _redis_claim(url: str, prefix: str, start: Any, out: Any) -> None:
    p = pauses_for(RedisStorage(url, prefix=prefix, timeout=SLOW))
    start.wait(30)
    out.put(p.claim("probe", 60))
    p.pause("provider-a", 30)


def test_redis_across_processes(
    redis_server: RedisServer, redis_storage: RedisStorage
) -> None:
    start = _spawn.Event()
    out = _spawn.Queue()
    args = (redis_server.url, redis_storage.prefix, start, out)
    procs = [
        _spawn.Process(target=_redis_claim, args=args, daemon=True) for _ in range(4)
    ]
    for proc in procs:
        proc.start()
    start.set()
    won = [out.get(timeout=60) for _ in procs]
    for proc in procs:
        proc.join(30)
    assert sorted(won) == [False] * 3 + [True]
    p = pauses_for(redis_storage)
    assert not p.claim("probe", 1)
    assert 15 < p.remaining("provider-a") <= 30


def test_redis_a_blocking_only_storage_has_no_async_side(
    redis_server: RedisServer,
) -> None:
    import redis

    client = redis.Redis.from_url(redis_server.url)
    storage = RedisStorage(client, prefix=f"t-{uuid.uuid4().hex}:", timeout=SLOW)
    p = pauses_for(storage)
    p.pause("a", 5)
    assert p.remaining("a") > 4
    with pytest.raises(TypeError, match="blocking client"):
        asyncio.run(p.aremaining("a"))
    client.close()
    storage.close()


OUTAGE_TIMEOUT = 0.1
MARGIN = 1.0


def _outage_records(caplog: pytest.LogCaptureFixture) -> list[int]:
    return [r.levelno for r in caplog.records if r.name == "stanchion.redis"]


def test_redis_down_is_ignored_quickly(
    private_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="stanchion")
    storage = RedisStorage(private_redis.url, timeout=OUTAGE_TIMEOUT, retry_interval=0)
    p = pauses_for(storage)
    p.pause("a", 60)
    assert p.claim("probe", 60)
    private_redis.kill()
    for _ in range(3):
        t0 = time.monotonic()
        assert p.remaining("a") == 0.0
        p.pause("a", 60)
        assert p.claim("probe", 60)
        assert p.claim("probe", 60)  # anyone may: nobody can tell
        p.release("probe")
        assert time.monotonic() - t0 < 5 * OUTAGE_TIMEOUT + MARGIN
    assert _outage_records(caplog) == [logging.WARNING]
    (warning,) = [r for r in caplog.records if r.name == "stanchion.redis"]
    message = warning.getMessage()
    assert message.startswith("stanchion upstream pauses: Redis at 127.0.0.1:")
    assert "every claim is granted" in message
    private_redis.start()  # empty: the pause is gone with the server
    assert p.remaining("a") == 0.0
    p.pause("a", 60)
    assert p.remaining("a") > 59
    assert p.claim("probe", 60) and not p.claim("probe", 60)
    assert _outage_records(caplog) == [logging.WARNING, logging.INFO]
    storage.close()


def test_redis_paused_server_is_bounded_by_the_timeout(
    private_redis: RedisServer,
) -> None:
    storage = RedisStorage(private_redis.url, timeout=OUTAGE_TIMEOUT, retry_interval=0)
    p = pauses_for(storage)
    p.pause("a", 60)
    private_redis.pause()
    try:
        t0 = time.monotonic()
        assert p.remaining("a") == 0.0
        assert p.claim("probe", 1)
        p.pause("a", 1)
        assert time.monotonic() - t0 < 3 * OUTAGE_TIMEOUT + MARGIN
    finally:
        private_redis.resume()
    assert p.remaining("a") > 58
    storage.close()


async def test_redis_async_down_is_ignored(
    private_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="stanchion")
    storage = RedisStorage(private_redis.url, timeout=OUTAGE_TIMEOUT, retry_interval=0)
    p = pauses_for(storage)
    try:
        await p.apause("a", 60)
        private_redis.kill()
        t0 = time.monotonic()
        assert await p.aremaining("a") == 0.0
        await p.apause("a", 60)
        assert await p.aclaim("probe", 60)
        assert await p.aclaim("probe", 60)
        await p.arelease("probe")
        assert time.monotonic() - t0 < 4 * OUTAGE_TIMEOUT + MARGIN
        assert _outage_records(caplog) == [logging.WARNING]
        private_redis.start()
        await p.apause("a", 60)
        assert await p.aremaining("a") > 59
        assert _outage_records(caplog) == [logging.WARNING, logging.INFO]
    finally:
        await storage.aclose()


# -- a model of the rules ----------------------------------------------------------

_KEYS = st.sampled_from(["a", "b"])
_QUARTERS = st.integers(min_value=1, max_value=40).map(lambda n: n / 4)
_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("pause"), _KEYS, _QUARTERS),
        st.tuples(st.just("claim"), _KEYS, _QUARTERS),
        st.tuples(st.just("release"), _KEYS, st.just(0.0)),
        st.tuples(st.just("remaining"), _KEYS, st.just(0.0)),
        st.tuples(st.just("advance"), st.just(""), _QUARTERS),
    ),
    max_size=40,
)


def _model_run(pauses: Pauses, clock: FakeClock, ops: list[Any]) -> None:
    """Run ``ops`` on ``pauses`` and on a model of the rules (times in
    quarters of a second, exact in both), comparing every answer."""
    paused: dict[str, float] = {}
    claimed: dict[str, float] = {}
    for op, key, seconds in ops:
        now = clock.now
        if op == "advance":
            clock.advance(seconds)
        elif op == "pause":
            pauses.pause(key, seconds)
            paused[key] = max(paused.get(key, 0.0), now + seconds)
        elif op == "claim":
            free = claimed.get(key, 0.0) <= now
            assert pauses.claim(key, seconds) == free
            if free:
                claimed[key] = now + seconds
        elif op == "release":
            pauses.release(key)
            claimed.pop(key, None)
        else:
            assert pauses.remaining(key) == max(0.0, paused.get(key, 0.0) - now)


@settings(max_examples=300, deadline=None)
@given(ops=_OPS)
def test_memory_follows_the_model(ops: list[Any]) -> None:
    clock = FakeClock()
    _model_run(MemoryPauses(clock=clock), clock, ops)


@settings(max_examples=200, deadline=None)
@given(ops=_OPS)
def test_shm_follows_the_model(ops: list[Any]) -> None:
    clock = FakeClock()
    storage = stanchion.SharedMemoryStorage(f"test-pauses-{uuid.uuid4().hex}")
    try:
        pauses = ShmPauses(storage, clock=clock)
        _model_run(pauses, clock, ops)
        pauses.close()
    finally:
        storage.unlink(missing_ok=True)


# -- Redis Cluster (slow: three servers) ----------------------------------------------


def test_redis_cluster_pauses(redis_cluster: Any) -> None:
    import redis.cluster

    client = redis.cluster.RedisCluster(host="127.0.0.1", port=redis_cluster.port)
    try:
        storage = RedisStorage(client, prefix=f"c{uuid.uuid4().hex[:6]}:", timeout=SLOW)
        p = pauses_for(storage)
        keys = [f"provider-{i}" for i in range(30)]  # spread over the masters
        for i, key in enumerate(keys):
            p.pause(key, 100 + i)
            p.pause(key, 1)
            assert p.claim(key, 60) and not p.claim(key, 60)
        for i, key in enumerate(keys):
            assert 99 + i < p.remaining(key) <= 100 + i
            p.release(key)
            assert p.claim(key, 60)
        client.script_flush()
        p.pause(keys[0], 500)
        assert p.remaining(keys[0]) > 499
    finally:
        client.close()


async def test_redis_cluster_async_pauses(redis_cluster: Any) -> None:
    import redis.asyncio.cluster

    client = redis.asyncio.cluster.RedisCluster(
        host="127.0.0.1", port=redis_cluster.port
    )
    try:
        storage = RedisStorage(client, prefix=f"c{uuid.uuid4().hex[:6]}:", timeout=SLOW)
        p = pauses_for(storage)
        for i in range(10):
            await p.apause(f"k{i}", 50)
            assert await p.aremaining(f"k{i}") > 49
            assert await p.aclaim(f"k{i}", 5)
            assert not await p.aclaim(f"k{i}", 5)
            await p.arelease(f"k{i}")
            assert await p.aclaim(f"k{i}", 5)
    finally:
        await client.aclose()
