"""SharedMemoryStorage: limits shared by processes through shared memory.

Real processes (fork) and real segments under /dev/shm, one unique name
per test, removed at teardown."""

from __future__ import annotations

import inspect
import multiprocessing
import os
import random
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import stanchion
from stanchion import _core
from stanchion._shm import SharedMemoryLimiter, SharedMemoryStorage

ALGORITHMS = ("token_bucket", "fixed_window", "sliding_window")
PERIODS = [1, 2, 60, 3600, 86400, 0.25, 7.5]
_fork = multiprocessing.get_context("fork")

Storages = Callable[..., SharedMemoryStorage]


@pytest.fixture
def storages() -> Iterator[Storages]:
    """Makes storages with unique names; removes their segments after."""
    made: list[SharedMemoryStorage] = []

    def make(max_keys: int = 1000) -> SharedMemoryStorage:
        s = SharedMemoryStorage(f"test-{uuid.uuid4().hex}", max_keys=max_keys)
        made.append(s)
        return s

    yield make
    for s in made:
        s.unlink(missing_ok=True)


class FakeClock:
    def __init__(self) -> None:
        self.ns = 10**12

    def __call__(self) -> float:
        return self.ns / 1e9


def _file(segment: str) -> Path:
    return Path("/dev/shm") / segment.lstrip("/")


# -- the storage and the limiter's surface ------------------------------------


def test_limiter_with_the_storage_is_a_shared_memory_limiter(
    storages: Storages,
) -> None:
    s = storages()
    lim = stanchion.Limiter("3/minute", storage=s)
    assert isinstance(lim, SharedMemoryLimiter)
    assert isinstance(lim, stanchion.RateLimiter)
    assert stanchion.SharedMemoryStorage is SharedMemoryStorage
    assert [lim.hit("a").allowed for _ in range(4)] == [True, True, True, False]
    assert s.segments() == [lim.name]
    assert _file(lim.name).exists()
    s.unlink()
    assert not _file(lim.name).exists()
    assert s.segments() == []
    with pytest.raises(FileNotFoundError):
        s.unlink()
    s.unlink(missing_ok=True)


def _shape(method: object) -> list[tuple[str, object, object]]:
    sig = inspect.signature(method)  # type: ignore[arg-type]
    return [(p.name, p.kind, p.default) for p in sig.parameters.values()]


def test_same_surface_as_the_in_process_limiter(storages: Storages) -> None:
    local = stanchion.Limiter("5/second;100/hour", algorithm="sliding_window")
    shared = stanchion.Limiter(
        "5/second;100/hour", algorithm="sliding_window", storage=storages()
    )
    for name in (
        "hit",
        "peek",
        "reset",
        "acquire",
        "ahit",
        "apeek",
        "areset",
        "aacquire",
    ):
        assert _shape(getattr(shared, name)) == _shape(getattr(local, name)), name
        assert inspect.iscoroutinefunction(
            getattr(shared, name)
        ) == inspect.iscoroutinefunction(getattr(local, name)), name
    assert shared.rates == local.rates
    assert shared.algorithm == local.algorithm == "sliding_window"
    assert set(local.stats()) <= set(shared.stats())


def test_storage_rejects_bad_arguments() -> None:
    with pytest.raises(TypeError, match="name must be a str"):
        SharedMemoryStorage(b"x")  # type: ignore[arg-type]
    for bad in ["", "a/b", "../x", ".x", "x" * 201, "é", "a b", "a\0b"]:
        with pytest.raises(ValueError, match="name must be"):
            SharedMemoryStorage(bad)
    with pytest.raises(TypeError, match="max_keys must be an int"):
        SharedMemoryStorage("x", max_keys=1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="max_keys must be an int"):
        SharedMemoryStorage("x", max_keys=True)
    for bad_n in (0, -1, 2**30 + 1):
        with pytest.raises(ValueError, match="max_keys must be between"):
            SharedMemoryStorage("x", max_keys=bad_n)


def test_bad_input_is_rejected_before_any_state_changes(storages: Storages) -> None:
    s = storages()
    with pytest.raises(ValueError, match="burst applies"):
        stanchion.Limiter("3/minute", algorithm="fixed_window", burst=2, storage=s)
    with pytest.raises(ValueError):
        stanchion.Limiter("0/minute", storage=s)
    with pytest.raises(ValueError, match="unknown algorithm"):
        stanchion.Limiter("3/minute", algorithm="leaky", storage=s)
    # None of these created a segment.
    assert s.segments() == []
    lim = stanchion.Limiter("3/minute", storage=s)
    lim.hit("a")
    before = lim.stats()
    with pytest.raises(TypeError, match="key must be str or bytes"):
        lim.hit(42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="cost must be an int"):
        lim.hit("a", cost=1.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="cost must be an int"):
        lim.hit("a", cost=True)
    with pytest.raises(ValueError, match="cost must be >= 1"):
        lim.hit("a", cost=0)
    with pytest.raises(ValueError, match="can never be allowed"):
        lim.hit("b", cost=4)
    with pytest.raises(ValueError, match="can never be allowed"):
        lim.peek("a", cost=2**70)
    with pytest.raises(TypeError):
        lim.reset(3.5)  # type: ignore[arg-type]
    assert lim.stats() == before
    # As a hit would answer now: one more for "a" leaves 1, for "b" 2.
    assert lim.peek("a").remaining == 1
    assert lim.peek("b").remaining == 2


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_hit_peek_reset(storages: Storages, algorithm: str) -> None:
    lim = stanchion.Limiter("3/minute", algorithm=algorithm, storage=storages())
    assert lim.peek("k").remaining == 2
    assert [lim.hit("k").allowed for _ in range(4)] == [True, True, True, False]
    assert lim.peek("k").allowed is False
    assert lim.hit(b"k").allowed  # bytes and str are different clients
    lim.reset("k")
    assert lim.hit("k").remaining == 2
    lim.reset()
    assert lim.stats()["keys"] == 0
    assert lim.hit("k").remaining == 2


def test_two_limiters_and_one_segment(storages: Storages) -> None:
    s = storages()
    a = stanchion.Limiter("2/minute", storage=s)
    b = stanchion.Limiter("2/minute", storage=s)
    assert a.hit("k").allowed and b.hit("k").allowed
    assert not a.hit("k").allowed and not b.hit("k").allowed
    assert a.stats()["keys"] == b.stats()["keys"] == 1


def test_http_rules_take_the_storage_url(storages: Storages) -> None:
    """Rule(storage="shm://name") as the framework settings take it: two
    rules (two processes' middleware, say) on one URL share the limit."""
    from stanchion.http import LimiterCache, Rule

    s = storages()
    url = f"shm://{s.name}?max_keys=1000"
    a = Rule("2/day", scope="one", limiters=LimiterCache(storage=url))
    b = Rule("2/day", scope="one", limiters=LimiterCache(storage=url))
    verdicts = [r.check_simple("GET", "/", "192.0.2.7") for r in (a, b, a)]
    assert [v is not None and v.blocked for v in verdicts] == [False, False, True]


def test_each_policy_of_a_storage_has_its_own_segment(storages: Storages) -> None:
    """One storage serves an app's rules (a default limit, per-view ones):
    limiters with other rates or another algorithm keep their own state."""
    s = storages()
    a = stanchion.Limiter("2/minute", storage=s)
    b = stanchion.Limiter("3/minute", storage=s)
    c = stanchion.Limiter("2/minute", algorithm="fixed_window", storage=s)
    assert [a.hit("k").allowed for _ in range(3)] == [True, True, False]
    assert b.peek("k").remaining == 2 and c.peek("k").remaining == 1
    assert len({a.name, b.name, c.name}) == 3
    assert s.segments() == sorted([a.name, b.name, c.name])


def test_other_settings_on_one_segment_fail_naming_both(storages: Storages) -> None:
    s = storages(max_keys=100)
    lim = stanchion.Limiter("10/minute", storage=s)
    lim.hit("k")
    with pytest.raises(ValueError, match=r"max_keys=100;.*max_keys=101"):
        stanchion.Limiter(
            "10/minute", storage=SharedMemoryStorage(s.name, max_keys=101)
        )
    # The segment itself holds its settings: the engine refuses others.
    other = _core.Limiter("10/minute", "fixed_window", None, 100)
    with pytest.raises(ValueError) as e:
        _core.SharedMemoryLimiter(lim.name, other)
    assert "token_bucket 10 per 60s" in str(e.value)
    assert "fixed_window 10 per 60s" in str(e.value)
    with pytest.raises(ValueError, match=r"10 per 60s.*11 per 60s"):
        _core.SharedMemoryLimiter(lim.name, _core.Limiter("11/minute", max_keys=100))
    # The segment is untouched: the first limiter's state is still there.
    assert stanchion.Limiter("10/minute", storage=s).peek("k").remaining == 8


def test_another_layout_version_fails_naming_both(storages: Storages) -> None:
    s = storages()
    lim = stanchion.Limiter("10/minute", storage=s)
    with open(_file(lim.name), "r+b") as f:
        f.seek(8)  # the layout version, after the magic number
        f.write((99).to_bytes(4, "little"))
    with pytest.raises(ValueError, match="layout version 99, this stanchion uses"):
        stanchion.Limiter("10/minute", storage=s)


def test_a_foreign_segment_is_refused(storages: Storages) -> None:
    s = storages()
    template = _core.Limiter("10/minute", "token_bucket", None, s.max_keys)
    _file(s.segment(template)).write_bytes(b"x" * 8192)
    with pytest.raises(ValueError, match="not a stanchion segment"):
        stanchion.Limiter("10/minute", storage=s)


@pytest.mark.parametrize("delta", [-4096, 4096])
def test_a_segment_of_the_wrong_size_is_refused(storages: Storages, delta: int) -> None:
    """A segment truncated (or grown) behind stanchion's back keeps a valid
    header: using it would touch memory past the file's end (SIGBUS or
    SIGSEGV), so it is refused, naming both sizes."""
    s = storages()
    lim = stanchion.Limiter("10/minute", storage=s)
    size = _file(lim.name).stat().st_size
    os.truncate(_file(lim.name), size + delta)
    with pytest.raises(ValueError, match=rf"damaged.*{size + delta} bytes.*{size}"):
        stanchion.Limiter("10/minute", storage=s)


def test_a_segment_abandoned_by_its_creator_is_made_again(
    storages: Storages,
) -> None:
    """A creator killed after sizing the segment, before its header was
    written, leaves zeros: the next process creates it afresh."""
    s = storages()
    template = _core.Limiter("10/minute", "token_bucket", None, s.max_keys)
    _file(s.segment(template)).write_bytes(b"\0" * 8192)
    lim = stanchion.Limiter("10/minute", storage=s)
    assert lim.hit("k").remaining == 9
    assert lim.stats()["memory_bytes"] == _file(lim.name).stat().st_size > 8192


def test_stats(storages: Storages) -> None:
    lim = stanchion.Limiter("3/minute", storage=storages(max_keys=1000))
    for k in range(10):
        lim.hit(f"k{k}")
    lim.peek("never")  # peeks and denials store nothing
    st_ = lim.stats()
    assert st_["keys"] == 10
    assert st_["max_keys"] == 1000
    assert st_["slots"] >= 1250
    assert st_["evicted"] == st_["expired"] == 0
    assert st_["memory_bytes"] == _file(lim.name).stat().st_size


def test_a_full_segment_keeps_a_blocked_client_blocked(storages: Storages) -> None:
    lim = stanchion.Limiter("5/hour", storage=storages(max_keys=16))
    for _ in range(5):
        assert lim.hit("victim").allowed
    for i in range(3000):
        assert lim.hit(f"flood-{i}").allowed
    assert not lim.hit("victim").allowed
    st_ = lim.stats()
    assert st_["keys"] <= st_["slots"] < 32
    assert st_["evicted"] > 0


# -- differential against the in-process limiter ------------------------------


def _rates(algorithm: str) -> st.SearchStrategy[list[tuple[float, float]]]:
    amounts = [1.5, 2.5, 7.3, 1000.0]
    if algorithm == "token_bucket":
        amounts.append(0.5)
    amount = st.one_of(st.integers(1, 40), st.sampled_from(amounts))
    return st.lists(st.tuples(amount, st.sampled_from(PERIODS)), min_size=1, max_size=3)


_steps = st.lists(
    st.tuples(
        st.one_of(
            st.sampled_from([0, 0, 1, 999, 10**6, 10**9, 60 * 10**9]),
            st.integers(0, 3 * 10**9),
            st.integers(0, 90 * 10**12),
        ),
        st.sampled_from(["hit", "hit", "hit", "peek", "reset", "reset_all"]),
        st.sampled_from(["a", "b", b"a", "é"]),
        st.integers(1, 8),
    ),
    min_size=1,
    max_size=30,
)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_differential_against_in_process(
    storages: Storages, algorithm: str, data: st.DataObject
) -> None:
    rates = data.draw(_rates(algorithm), label="rates")
    burst = None
    if algorithm == "token_bucket" and data.draw(st.booleans(), label="burst"):
        burst = [data.draw(st.one_of(st.none(), st.integers(1, 30))) for _ in rates]
    clock = FakeClock()
    local = stanchion.Limiter(rates, algorithm=algorithm, burst=burst, clock=clock)
    s = storages()
    shared = s.make_limiter(
        [stanchion.Rate(a, p) for a, p in rates],
        algorithm=algorithm,
        burst=burst,
        clock=clock,
    )
    try:
        for advance, op, key, cost in data.draw(_steps, label="steps"):
            clock.ns += advance
            cost = min(cost, local.max_cost)
            if op == "reset":
                local.reset(key)
                shared.reset(key)
            elif op == "reset_all":
                local.reset()
                shared.reset()
            else:
                a = getattr(local, op)(key, cost)
                b = getattr(shared, op)(key, cost)
                assert a == b, (op, key, cost, clock.ns, a, b)
                assert (a.reset_after_ns, a.retry_after_ns) == (
                    b.reset_after_ns,
                    b.retry_after_ns,
                )
        assert local.stats()["keys"] == shared.stats()["keys"]
    finally:
        s.unlink()


# -- real processes -------------------------------------------------------------


def _hammer(args: tuple[SharedMemoryStorage, int]) -> int:
    storage, n = args
    lim = stanchion.Limiter("500/day", storage=storage)
    return sum(lim.hit("one").allowed for _ in range(n))


def test_eight_processes_on_one_key_admit_exactly_the_limit(
    storages: Storages,
) -> None:
    s = storages()
    with _fork.Pool(8) as pool:
        counts = pool.map(_hammer, [(s, 200)] * 8)
    assert sum(counts) == 500
    assert stanchion.Limiter("500/day", storage=s).peek("one").remaining == 0


def _hit_inherited(
    lim: SharedMemoryLimiter, n: int, out: multiprocessing.Queue
) -> None:
    out.put(sum(lim.hit("one").allowed for _ in range(n)))


def test_a_limiter_made_before_fork_is_shared_by_the_children(
    storages: Storages,
) -> None:
    lim = stanchion.Limiter("300/day", storage=storages())
    assert isinstance(lim, SharedMemoryLimiter)
    out = _fork.Queue()
    procs = [
        _fork.Process(target=_hit_inherited, args=(lim, 100, out), daemon=True)
        for _ in range(4)
    ]
    for p in procs:
        p.start()
    total = sum(out.get(timeout=30) for _ in procs)
    for p in procs:
        p.join(10)
    assert total + lim.hit("one").allowed == 300


def _hold_then_sleep(storage: SharedMemoryStorage, ready: object) -> None:
    lim = stanchion.Limiter("10/day", storage=storage)
    assert isinstance(lim, SharedMemoryLimiter)
    lim._hold_lock("held")
    ready.set()  # type: ignore[attr-defined]
    time.sleep(60)


def _hit_n(storage: SharedMemoryStorage, n: int, out: multiprocessing.Queue) -> None:
    lim = stanchion.Limiter("10/day", storage=storage)
    out.put(sum(lim.hit("held").allowed for _ in range(n)))


@pytest.mark.parametrize("reap", [True, False], ids=["reaped", "zombie"])
def test_a_worker_killed_holding_a_lock_blocks_nobody(
    storages: Storages, reap: bool
) -> None:
    s = storages()
    ready = _fork.Event()
    holder = _fork.Process(target=_hold_then_sleep, args=(s, ready), daemon=True)
    holder.start()
    assert ready.wait(30)
    assert holder.pid is not None
    # The workers start first (starting a process reaps finished ones),
    # and wait on the held lock.
    out = _fork.Queue()
    workers = [
        _fork.Process(target=_hit_n, args=(s, 5, out), daemon=True) for _ in range(4)
    ]
    for w in workers:
        w.start()
    time.sleep(0.5)
    assert out.empty()
    os.kill(holder.pid, signal.SIGKILL)
    if reap:
        holder.join(10)
    # else: a zombie until the end, and the workers still get through.
    t0 = time.monotonic()
    total = sum(out.get(timeout=20) for _ in workers)
    assert time.monotonic() - t0 < 15
    if not reap:
        with open(f"/proc/{holder.pid}/stat") as f:
            assert f.read().rsplit(")", 1)[1].split()[0] == "Z"
    for w in workers:
        w.join(10)
    holder.join(10)
    assert total == 10


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_a_clock_reading_older_than_the_state_admits_no_extra(
    storages: Storages, algorithm: str
) -> None:
    """A process reads the clock before it takes the bucket's lock, so
    another process may store a later time first (it was descheduled in
    between, or their clocks differ by a little). The late decision must
    not read a window newer than its reading as empty and overwrite it:
    the segment admits what the in-process limiter admits for the same
    readings (where time never runs backwards)."""
    s = storages()
    ca, cb = FakeClock(), FakeClock()
    a = SharedMemoryLimiter(s, "3/second", algorithm=algorithm, clock=ca)
    b = SharedMemoryLimiter(s, "3/second", algorithm=algorithm, clock=cb)
    ref_clock = FakeClock()
    ref = _core.Limiter("3/second", algorithm, None, 1000, ref_clock)
    steps = [(b, 10.9)] * 3 + [(a, 11.95), (b, 10.9)] + [(a, 11.95)] * 5
    admitted = expected = 0
    for lim, t in steps:
        (ca if lim is a else cb).ns = ref_clock.ns = int(t * 1e9)
        admitted += lim.hit("k").allowed
        expected += ref.hit("k").allowed
    assert admitted == expected


def test_a_lock_named_by_a_reused_pid_blocks_nobody(storages: Storages) -> None:
    """A holder killed in a server whose pids are handed out again (a
    container restarted in a fresh pid namespace, with /dev/shm kept)
    leaves a lock naming a pid that a live process now has: the lock word
    also names the holder's start time, so waiters take it over. Here the
    holder lives on and its lock word is given another start time, as if
    its pid belonged to another process now."""
    s = storages()
    ready = _fork.Event()
    holder = _fork.Process(target=_hold_then_sleep, args=(s, ready), daemon=True)
    holder.start()
    workers: list[multiprocessing.process.BaseProcess] = []
    try:
        assert ready.wait(30)
        lim = stanchion.Limiter("10/day", storage=s)
        assert isinstance(lim, SharedMemoryLimiter)
        st_ = lim.stats()
        bucket_size = (st_["memory_bytes"] - 4096) // (st_["slots"] // 8)
        with open(_file(lim.name), "r+b") as f:
            data = f.read()
            held = [
                off
                for off in range(4096, len(data), bucket_size)
                if int.from_bytes(data[off : off + 4], "little") == holder.pid
            ]
            assert len(held) == 1
            start = int.from_bytes(data[held[0] + 4 : held[0] + 8], "little")
            assert start != 0  # the holder's start time is in the word
            f.seek(held[0] + 4)
            f.write(((start + 1) & 0xFFFFFFFF or 1).to_bytes(4, "little"))
        out = _fork.Queue()
        workers = [
            _fork.Process(target=_hit_n, args=(s, 5, out), daemon=True)
            for _ in range(2)
        ]
        for w in workers:
            w.start()
        assert sum(out.get(timeout=20) for _ in workers) == 10
        assert holder.is_alive()
    finally:
        for p in [holder, *workers]:
            if p.is_alive():
                p.kill()
            p.join(10)


def _hammer_forever(storage: SharedMemoryStorage) -> None:
    lim = stanchion.Limiter("1000000/second", storage=storage)
    keys = [f"k{i}" for i in range(4)]
    while True:
        for k in keys:
            lim.hit(k)


def test_workers_killed_mid_load_never_block_the_others(storages: Storages) -> None:
    s = storages(max_keys=64)
    rng = random.Random(12)
    for _ in range(6):
        procs = [
            _fork.Process(target=_hammer_forever, args=(s,), daemon=True)
            for _ in range(3)
        ]
        for p in procs:
            p.start()
        time.sleep(rng.uniform(0.05, 0.2))
        for p in procs:
            assert p.pid is not None
            os.kill(p.pid, signal.SIGKILL)
        for p in procs:
            p.join(10)
    # Every bucket is usable: fresh clients are served at once.
    lim = stanchion.Limiter("1000000/second", storage=s)
    t0 = time.monotonic()
    for i in range(200):
        assert lim.hit(f"k{i % 4}").allowed
    assert time.monotonic() - t0 < 5


def test_clock_is_refused_through_limiter(storages: Storages) -> None:
    """Limiter(storage=...) keeps refusing clock=; tests inject one through
    make_limiter."""
    with pytest.raises(ValueError, match="clock applies"):
        stanchion.Limiter("1/second", storage=storages(), clock=FakeClock())


def test_core_type_checks_its_template() -> None:
    with pytest.raises(TypeError, match=r"expected a stanchion\._core\.Limiter"):
        _core.SharedMemoryLimiter("/stanchion.x", object())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="clock must be a callable"):
        _core.SharedMemoryLimiter(
            "/stanchion.x",
            _core.Limiter("1/second"),
            3,  # type: ignore[arg-type]
        )
    with pytest.raises(ValueError, match="invalid shared memory name"):
        _core.SharedMemoryLimiter("no-slash", _core.Limiter("1/second"))
    # A NUL would cut the name short in shm_open, even when non-ASCII
    # characters make the UTF-8 length match the character count.
    for name in ("/stanchion.x\0y", "/stanchion.x\u00e9\0"):
        with pytest.raises(ValueError, match="invalid shared memory name"):
            _core.SharedMemoryLimiter(name, _core.Limiter("1/second"))
        assert not _file(name.split("\0")[0]).exists()
        with pytest.raises(ValueError, match="invalid shared memory name"):
            _core.shm_unlink(name)


# -- settings: shm:// URLs --------------------------------------------------------


def _setting(_: object) -> str:
    return "STANCHION_STORAGE_URL"


def test_shm_urls_in_settings() -> None:
    from stanchion._settings import storage_from_url

    s = storage_from_url("shm://my.app", _setting)
    assert isinstance(s, SharedMemoryStorage)
    assert (s.name, s.max_keys) == ("my.app", 100_000)
    s = storage_from_url("shm://my-app?max_keys=50", _setting)
    assert (s.name, s.max_keys) == ("my-app", 50)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("shm://", "name must be"),
        ("shm://a/b", "name must be"),
        ("shm://x?max_keys=0", "max_keys must be between"),
        ("shm://x?max_keys=a", r"the only option is \?max_keys=N"),
        ("shm://x?maxkeys=5", r"the only option is \?max_keys=N"),
        ("shm://x?max_keys=1&max_keys=2", r"the only option is \?max_keys=N"),
        ("shm://x?&", r"the only option is \?max_keys=N"),
        # str.isdigit() holds for these, int() refuses the first
        ("shm://x?max_keys=\u00b2", r"the only option is \?max_keys=N"),
        ("shm://x?max_keys=\u0661\u0660", r"the only option is \?max_keys=N"),
        ("shmem://x", "unsupported URL 'shmem://x' .*shm://"),
    ],
)
def test_bad_shm_urls_are_refused_by_setting_name(url: str, message: str) -> None:
    from stanchion._settings import storage_from_url
    from stanchion.http import SettingError

    with pytest.raises(SettingError, match="^STANCHION_STORAGE_URL: .*" + message):
        storage_from_url(url, _setting)


def test_evictions_start_only_near_a_full_segment(storages: Storages) -> None:
    """max_keys live clients fit: each key may live in two buckets and
    goes to the emptier one, so a bucket filling early evicts (almost)
    nobody. (With one bucket per key, about 3% were evicted.)"""
    lim = stanchion.Limiter("5/hour", storage=storages(max_keys=20_000))
    for i in range(20_000):
        assert lim.hit(f"client-{i}").allowed
    st_ = lim.stats()
    assert st_["evicted"] <= 40, st_  # 0.2%
    assert st_["keys"] + st_["evicted"] == 20_000
