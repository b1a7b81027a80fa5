"""The penalty box in shared memory: the same bans as the in-process
engine, seen by every process of the host, the ban API and eviction."""

from __future__ import annotations

import logging
import random
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator

import pytest

import stanchion
from stanchion import Ban, Penalty, _core
from stanchion._shm import SharedMemoryLimiter, SharedMemoryStorage

from .conftest import FakeClock

ALGORITHMS = ("token_bucket", "fixed_window", "sliding_window")
Storages = Callable[..., SharedMemoryStorage]


@pytest.fixture
def storages() -> Iterator[Storages]:
    made: list[SharedMemoryStorage] = []

    def make(max_keys: int = 1000) -> SharedMemoryStorage:
        s = SharedMemoryStorage(f"test-{uuid.uuid4().hex}", max_keys=max_keys)
        made.append(s)
        return s

    yield make
    for s in made:
        s.unlink(missing_ok=True)


def shm_limiter(
    storage: SharedMemoryStorage,
    penalty: Penalty,
    clock: FakeClock | None,
    rate: str = "2/second",
    algorithm: str = "token_bucket",
) -> SharedMemoryLimiter:
    return SharedMemoryLimiter(
        storage, rate, algorithm=algorithm, clock=clock, penalty=penalty
    )


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_shared_memory_bans_exactly_as_in_process(
    storages: Storages, algorithm: str
) -> None:
    penalty = Penalty(after=2, within=3, ban=2, factor=2, max_ban=9)
    clock = FakeClock()
    local = stanchion.Limiter(
        "2/second", algorithm=algorithm, clock=clock, penalty=penalty
    )
    shared = shm_limiter(storages(), penalty, clock, algorithm=algorithm)
    rng = random.Random(algorithm)
    bans = 0
    for step in range(3000):
        key = rng.choice(["a", "b", b"a"])
        op = rng.random()
        if op < 0.1:
            clock.advance(rng.choice([1e-6, 1e-3, 0.25, 1, 4]))
            continue
        if op < 0.15:
            want, got = local.peek(key), shared.peek(key)
        else:
            want, got = local.hit(key), shared.hit(key)
        assert got == want, (step, key)
        bans += want.banned
        clock.advance(rng.choice([0, 1e-6, 0.01]))
    assert bans > 20
    for key in ("a", "b", b"a"):
        assert shared.get_ban(key) == local.get_ban(key)
    assert sorted((b.remaining, b.ban_count) for b in shared.bans()) == sorted(
        (b.remaining, b.ban_count) for b in local.bans()
    )
    assert all(b.key is None for b in shared.bans())


def test_api_lift_reset_and_log(
    storages: Storages, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    lim = shm_limiter(storages(), Penalty(after=1, within=60, ban=10), clock, "1/hour")
    with caplog.at_level(logging.INFO, logger="stanchion"):
        for k in ("a", "b"):
            assert lim.hit(k)
            assert not lim.hit(k)
            assert lim.hit(k).retry_after == 10
            for _ in range(20):
                assert not lim.hit(k)
    lines = [r.getMessage() for r in caplog.records if r.name == "stanchion"]
    assert len(lines) == 2 and "'a'" in lines[0] and "'b'" in lines[1]
    assert lim.get_ban("a") == Ban("a", 10.0, 1, 0)
    assert sorted(lim.bans()) == [Ban(None, 10.0, 1)] * 2
    assert lim.lift("a") is True and lim.lift("a") is False
    assert lim.get_ban("a") is None
    assert not lim.hit("a")  # the rate still refuses: lift is not reset
    assert lim.get_ban("a") == Ban("a", 0.0, 0, 1)
    lim.reset("b")
    assert lim.get_ban("b") is None and lim.hit("b")
    lim.reset()
    assert lim.bans() == [] and lim.hit("a")


def test_a_banned_key_outlasts_a_flood(storages: Storages) -> None:
    clock = FakeClock()
    lim = shm_limiter(
        storages(max_keys=16), Penalty(after=1, within=60, ban=1000), clock, "1/hour"
    )
    assert lim.hit("abuser")
    assert not lim.hit("abuser") and not lim.hit("abuser")
    for i in range(5000):
        assert lim.hit(f"k{i}")
        assert not lim.hit(f"k{i}")  # a refusal counted: a record
    assert lim.get_ban("abuser") == Ban("abuser", 1000.0, 1, 0)
    assert lim.stats()["evicted"] > 4000


def test_the_penalty_is_a_setting_of_the_segment(storages: Storages) -> None:
    storage = storages()
    a = shm_limiter(storage, Penalty(after=1, within=60, ban=10), None)
    b = shm_limiter(storage, Penalty(after=2, within=60, ban=10), None)
    plain = SharedMemoryLimiter(storage, "2/second")
    assert len({a.name, b.name, plain.name}) == 3
    assert len(storage.segments()) == 3
    # the same name opened with another penalty is refused, naming both
    other = _core.Limiter(
        "2/second", "token_bucket", None, 1000, None, (3, 10**9, 10**9, 2.0, 10**9)
    )
    with pytest.raises(ValueError, match="penalty after 1"):
        _core.SharedMemoryLimiter(a.name, other)
    with pytest.raises(ValueError, match="holds other settings"):
        _core.SharedMemoryLimiter(plain.name, other)
    with pytest.raises(TypeError):
        SharedMemoryLimiter(storage, "1/second", penalty=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        _core.SharedMemoryLimiter(a.name, other, None, 5)  # type: ignore[arg-type]


_BAN_ONE = """
import sys, stanchion
name, mode = sys.argv[1:]
lim = stanchion.Limiter("2/minute", storage=stanchion.SharedMemoryStorage(name),
                        penalty=stanchion.Penalty(after=2, within=60, ban=120))
if mode == "abuse":
    got = [lim.hit("203.0.113.9").allowed for _ in range(6)]
    print(got, round(lim.hit("203.0.113.9").retry_after))
else:
    a = lim.hit("203.0.113.9")
    b = lim.hit("198.51.100.1")
    print(a.allowed, round(a.retry_after), b.allowed, len(lim.bans()))
"""


def test_a_ban_holds_in_another_process(storages: Storages) -> None:
    storage = storages()

    def run(mode: str) -> str:
        out = subprocess.run(
            [sys.executable, "-c", _BAN_ONE, storage.name, mode],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        return out.stdout.strip()

    assert run("abuse") == "[True, True, False, False, False, False] 120"
    allowed, left, other, listed = run("check").split()
    assert allowed == "False" and 115 <= int(left) <= 120
    assert other == "True" and listed == "1"
