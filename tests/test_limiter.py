from __future__ import annotations

import asyncio
import math
import sys
import threading
import time

import pytest

import stanchion
from stanchion import Decision, Limiter, RateLimitExceeded

from .conftest import FakeClock

ALGORITHMS = ["token_bucket", "fixed_window", "sliding_window"]


# -- token bucket ---------------------------------------------------------------


def test_token_bucket_burst_then_exact_retry(clock: FakeClock) -> None:
    lim = Limiter("3/second", clock=clock)
    got = [lim.hit("a") for _ in range(4)]
    assert [d.allowed for d in got] == [True, True, True, False]
    assert [d.remaining for d in got] == [2, 1, 0, 0]
    assert all(d.limit == 3 for d in got)
    # One token comes back every 1/3 s: 333333333 ns (rounded to the ns).
    assert got[3].retry_after_ns == 333_333_333
    assert got[3].retry_after == pytest.approx(1 / 3)
    assert got[2].reset_after_ns == 999_999_999
    assert got[0].retry_after == 0.0
    clock.advance(0.333_333_332)
    assert not lim.hit("a")
    clock.advance(0.000_000_001)
    assert lim.hit("a")


def test_denied_hit_consumes_nothing(clock: FakeClock) -> None:
    lim = Limiter("2/second", clock=clock)
    assert lim.hit("a") and lim.hit("a")
    for _ in range(100):
        assert not lim.hit("a")
    clock.advance(0.5)  # exactly one token back, despite 100 denials
    assert lim.hit("a")
    assert not lim.hit("a")


def test_fractional_refill_is_exact(clock: FakeClock) -> None:
    # 0.9/second with a burst of 1: one hit every 1/0.9 s, not every 1 s.
    lim = Limiter("0.9/second", burst=1, clock=clock)
    assert lim.hit("a")
    d = lim.hit("a")
    assert not d
    assert d.retry_after_ns == round(1e9 / 0.9)
    clock.advance(1.0)  # a 1/second limiter would allow now
    assert not lim.hit("a")
    clock.advance(0.12)
    assert lim.hit("a")
    # 10 per minute: after 3 s half a token has accrued.
    lim = Limiter("10/minute", burst=1, clock=clock)
    assert lim.hit("b")
    clock.advance(3)
    d = lim.hit("b")
    assert not d and d.retry_after_ns == 3_000_000_000


def test_burst_overrides_capacity(clock: FakeClock) -> None:
    lim = Limiter("1/second", burst=5, clock=clock)
    assert sum(lim.hit("a").allowed for _ in range(10)) == 5
    clock.advance(2)
    assert sum(lim.hit("a").allowed for _ in range(10)) == 2


def test_cost(clock: FakeClock) -> None:
    lim = Limiter("10/second", clock=clock)
    d = lim.hit("a", cost=4)
    assert d.allowed and d.remaining == 6
    d = lim.hit("a", 7)
    assert not d and d.remaining == 6
    assert d.retry_after_ns == 100_000_000
    assert lim.hit("a", cost=6)


def test_peek_consumes_nothing_and_matches_hit(clock: FakeClock) -> None:
    for alg in ALGORITHMS:
        lim = Limiter("2/second", algorithm=alg, clock=clock)
        for _ in range(3):
            p = lim.peek("a")
            assert lim.peek("a") == p
            assert lim.hit("a") == p
        assert lim.stats()["keys"] == 1
        lim.peek("never-hit")
        assert lim.stats()["keys"] == 1


def test_reset_one_and_all(clock: FakeClock) -> None:
    lim = Limiter("1/hour", clock=clock)
    assert lim.hit("a") and lim.hit("b")
    assert not lim.hit("a") and not lim.hit("b")
    lim.reset("a")
    assert lim.hit("a") and not lim.hit("b")
    lim.reset()
    assert lim.stats()["keys"] == 0
    assert lim.hit("a") and lim.hit("b")
    lim.reset(key="missing")
    with pytest.raises(TypeError):
        lim.reset(5)  # type: ignore[arg-type]


def test_keys_str_and_bytes_are_distinct(clock: FakeClock) -> None:
    lim = Limiter("1/hour", clock=clock)
    assert lim.hit("k")
    assert lim.hit(b"k")
    assert not lim.hit("k") and not lim.hit(b"k")
    long_key = "x" * 1000
    assert lim.hit(long_key) and not lim.hit("x" * 1000)
    assert lim.hit("x" * 999)
    uni = "clé-🔑"
    assert lim.hit(uni) and not lim.hit("clé-🔑")

    class S(str):
        def __hash__(self) -> int:
            raise AssertionError("a key's __hash__ must not be called")

    assert not lim.hit(S("k"))  # same client as "k"


# -- fixed and sliding windows -----------------------------------------------------


def test_fixed_window(clock: FakeClock) -> None:
    clock.now = 100.25
    lim = Limiter("3/second", algorithm="fixed_window", clock=clock)
    got = [lim.hit("a") for _ in range(4)]
    assert [d.allowed for d in got] == [True, True, True, False]
    assert [d.remaining for d in got] == [2, 1, 0, 0]
    # The window is [100, 101): it resets in 0.75 s.
    assert got[3].retry_after_ns == 750_000_000
    assert got[0].reset_after_ns == 750_000_000
    clock.advance(0.75)
    assert lim.hit("a").remaining == 2


def test_sliding_window_weights_previous_window(clock: FakeClock) -> None:
    clock.now = 100.0
    lim = Limiter("10/second", algorithm="sliding_window", clock=clock)
    assert sum(lim.hit("a").allowed for _ in range(12)) == 10
    clock.advance(1.25)  # previous window weighs 0.75: 7.5 of 10 used
    d = lim.hit("a")
    assert d.allowed and d.remaining == 1  # floor(10 - 7.5 - 1)
    assert lim.hit("a")
    d = lim.hit("a")
    assert not d
    # Needs 10 * (1 - e) + 2 + 1 <= 10, so e >= 0.3: 0.05 s from e = 0.25.
    assert d.retry_after_ns == 50_000_000
    clock.advance(0.05)
    assert lim.hit("a")


def test_window_algorithms_need_whole_requests() -> None:
    with pytest.raises(ValueError, match="at least 1 request"):
        Limiter("0.5/second", algorithm="fixed_window")


# -- several rates -----------------------------------------------------------------


@pytest.mark.parametrize("alg", ALGORITHMS)
def test_several_rates_all_or_nothing(alg: str, clock: FakeClock) -> None:
    clock.now = 3600.0
    lim = Limiter("3/second;5/hour", algorithm=alg, clock=clock)
    assert sum(lim.hit("a").allowed for _ in range(10)) == 3
    clock.advance(2)  # the per-second rate is full again for every algorithm
    # The hourly rate has 2 left: the denied per-second hits charged nothing.
    assert sum(lim.hit("a").allowed for _ in range(10)) == 2
    d = lim.hit("a")
    assert not d and d.limit == 5  # the hourly rate binds
    clock.advance(2)
    assert not lim.hit("a")


def test_decision_fields_come_from_most_restrictive_rate(clock: FakeClock) -> None:
    lim = Limiter("10/second;12/minute", clock=clock)
    d = lim.hit("a")
    assert (d.limit, d.remaining) == (10, 9)
    for _ in range(8):
        lim.hit("a")
    d = lim.hit("a")  # 10th hit: per-second has 0 left, per-minute 2
    assert (d.limit, d.remaining) == (10, 0)
    clock.advance(1)
    d = lim.hit("a")  # per-second has 9 left, per-minute 1
    assert (d.limit, d.remaining) == (12, 1)
    lim.hit("a")
    d = lim.hit("a")
    assert not d and d.limit == 12
    # 13 tokens of 5 s each against a 60 s tolerance, 1 s in: 4 s to wait.
    assert d.retry_after_ns == 4_000_000_000


def test_several_rates_retry_is_the_longest(clock: FakeClock) -> None:
    lim = Limiter("1/second;2/minute", clock=clock)
    assert lim.hit("a")
    clock.advance(1)
    assert lim.hit("a")
    d = lim.hit("a")
    # per-second: 1 s to wait; per-minute: a token every 30 s, the next
    # one 30 s after the first hit, 29 s from now. The longest wait wins.
    assert not d
    assert d.retry_after_ns == 29_000_000_000
    assert d.limit == 2


# -- acquire and asyncio ---------------------------------------------------------


def test_acquire_waits_then_succeeds() -> None:
    lim = Limiter("20/second", burst=1)
    assert lim.acquire("a")
    start = time.monotonic()
    d = lim.acquire("a", timeout=1.0)
    assert d.allowed
    assert time.monotonic() - start >= 0.04


def test_acquire_times_out_without_waiting_in_vain() -> None:
    lim = Limiter("1/minute")
    lim.hit("a")
    start = time.monotonic()
    with pytest.raises(RateLimitExceeded) as info:
        lim.acquire("a", timeout=0.2)
    assert time.monotonic() - start < 0.1
    assert info.value.retry_after > 59
    assert info.value.decision.allowed is False
    assert isinstance(info.value.decision, Decision)


async def test_acquire_with_a_timeout_too_large_for_a_float() -> None:
    """A timeout past any float is no deadline (as inf is), never an
    OverflowError; a negative one is still a ValueError."""
    lim = Limiter("20/second", burst=1)
    assert lim.acquire("a", timeout=10**400).allowed
    assert (await lim.aacquire("a", timeout=10**400)).allowed
    with pytest.raises(ValueError, match="timeout must be >= 0"):
        lim.acquire("a", timeout=-(10**400))


async def test_async_twins() -> None:
    lim = Limiter("2/second")
    assert (await lim.ahit("a")).allowed
    # A peek answers as the hit would: allowed, leaving 0.
    assert (await lim.apeek("a")).remaining == 0
    await lim.areset("a")
    assert (await lim.apeek("a")).remaining == 1
    await lim.ahit("a")
    await lim.ahit("a")
    with pytest.raises(RateLimitExceeded):
        await lim.aacquire("a", timeout=0.1)


async def test_aacquire_does_not_block_the_loop() -> None:
    lim = Limiter("10/second", burst=1)
    await lim.ahit("a")
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.005)
            ticks += 1

    t = asyncio.create_task(ticker())
    d = await lim.aacquire("a", timeout=1)
    t.cancel()
    assert d.allowed
    assert ticks >= 5  # the loop kept running during the ~100 ms wait


# -- bad input -----------------------------------------------------------------------


def test_a_key_longer_than_4_gib_is_a_value_error(clock: FakeClock) -> None:
    """The table records key lengths in 32 bits: a longer key was stored
    with its length cut (never found again, its copy never freed)."""
    lim = Limiter("10/second", clock=clock)
    key = bytes(2**32 + 1)  # zero pages from calloc: nothing is committed
    for call in (lim.hit, lim.peek, lim.reset):
        with pytest.raises(ValueError, match="key must be at most 4294967295 bytes"):
            call(key)
    assert lim.stats()["keys"] == 0 and lim.stats()["memory_bytes"] < 2**20
    assert lim.hit(key[: 2**10]).remaining == 9


def test_bad_keys(clock: FakeClock) -> None:
    lim = Limiter("1/second", clock=clock)
    for bad in (1, None, 1.5, ["a"], bytearray(b"a"), memoryview(b"a")):
        with pytest.raises(TypeError, match="key must be str or bytes"):
            lim.hit(bad)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="key must be str or bytes"):
            lim.peek(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        lim.hit("\ud800")  # a lone surrogate cannot be encoded
    assert lim.stats()["keys"] == 0


def test_bad_costs(clock: FakeClock) -> None:
    lim = Limiter("5/second;100/hour", clock=clock)
    for cost, exc in [
        (0, ValueError),
        (-1, ValueError),
        (1.0, TypeError),
        ("1", TypeError),
        (True, TypeError),
        (None, TypeError),
        (6, ValueError),
        (10**30, ValueError),
    ]:
        with pytest.raises(exc):
            lim.hit("a", cost)
        with pytest.raises(exc):
            lim.hit("a", cost=cost)
    with pytest.raises(ValueError, match="can never be allowed"):
        lim.hit("a", 6)
    assert lim.stats()["keys"] == 0
    with pytest.raises(TypeError, match="unexpected keyword"):
        lim.hit("a", weight=1)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="multiple values"):
        lim.hit("a", 1, cost=1)  # type: ignore[misc]
    with pytest.raises(TypeError, match="positional"):
        lim.hit()  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="positional"):
        lim.hit("a", 1, 2)  # type: ignore[call-arg]
    assert lim.hit("a", 5)


@pytest.mark.parametrize(
    ("kwargs", "exc", "fragment"),
    [
        ({"rates": "10/fortnight"}, ValueError, "fortnight"),
        ({"rates": 10}, TypeError, "rates must be"),
        ({"rates": []}, ValueError, "at least one rate"),
        ({"rates": [(float("nan"), 1.0)]}, ValueError, "positive finite"),
        ({"rates": [(10, float("inf"))]}, ValueError, "positive finite"),
        ({"rates": [(10, -1.0)]}, ValueError, "positive finite"),
        ({"rates": [(0, 1.0)]}, ValueError, "positive finite"),
        ({"rates": [("10", 1.0)]}, TypeError, "must be a number"),
        ({"rates": "1/s", "algorithm": "leaky"}, ValueError, "unknown algorithm"),
        ({"rates": "1/s", "algorithm": 1}, TypeError, "algorithm must be a str"),
        ({"rates": "1/s", "burst": 0}, ValueError, "burst must be >= 1"),
        ({"rates": "1/s", "burst": -3}, ValueError, "burst must be >= 1"),
        ({"rates": "1/s", "burst": -(2**70)}, ValueError, f"got {-(2**70)}"),
        ({"rates": "1/s", "burst": [-(2**70)]}, ValueError, f"got {-(2**70)}"),
        ({"rates": "1/s", "burst": 1.5}, TypeError, "burst must be"),
        ({"rates": "1/s;2/m", "burst": 3}, ValueError, "one entry"),
        ({"rates": "1/s;2/m", "burst": [3]}, ValueError, "1 entries for 2 rates"),
        (
            {"rates": "1/s", "algorithm": "fixed_window", "burst": 2},
            ValueError,
            "token_bucket",
        ),
        ({"rates": "1/s", "max_keys": 0}, ValueError, "max_keys"),
        ({"rates": "1/s", "max_keys": 1.5}, TypeError, "max_keys"),
        ({"rates": "1/s", "clock": 5}, TypeError, "clock must be a callable"),
        ({"rates": "1/s", "on_error": "ignore"}, ValueError, "on_error"),
        ({"rates": "1/s", "storage": object()}, TypeError, "unsupported storage"),
        (
            {"rates": "1/s", "storage": object(), "clock": lambda: 0.0},
            ValueError,
            "in-process table only",
        ),
        ({"rates": "1000000/second", "burst": 10**18}, ValueError, "36 years"),
    ],
)
def test_bad_constructor_arguments(
    kwargs: dict[str, object], exc: type, fragment: str
) -> None:
    with pytest.raises(exc) as info:
        Limiter(**kwargs)  # type: ignore[arg-type]
    assert fragment in str(info.value)


def test_burst_list_per_rate(clock: FakeClock) -> None:
    lim = Limiter("1/second;100/hour", burst=[3, None], clock=clock)
    assert sum(lim.hit("a").allowed for _ in range(5)) == 3
    assert lim.max_cost == 3


@pytest.mark.parametrize(
    ("value", "exc", "fragment"),
    [
        ("soon", TypeError, "must return a number"),
        (None, TypeError, "must return a number"),
        (True, TypeError, "must return a number"),
        (float("nan"), ValueError, "must be finite"),
        (float("inf"), ValueError, "must be finite"),
        (1e300, ValueError, "within"),
    ],
)
def test_bad_clock_values(value: object, exc: type, fragment: str) -> None:
    lim = Limiter("1/s", clock=lambda: value)  # type: ignore[arg-type,return-value]
    with pytest.raises(exc, match=fragment):
        lim.hit("a")
    assert lim.stats()["keys"] == 0


def test_clock_exception_propagates_and_changes_nothing() -> None:
    def broken() -> float:
        raise RuntimeError("clock broke")

    lim = Limiter("1/s", clock=broken)
    with pytest.raises(RuntimeError, match="clock broke"):
        lim.hit("a")
    assert lim.stats()["keys"] == 0


def test_uninitialised_core_limiter_is_an_error() -> None:
    core = stanchion._core.Limiter.__new__(stanchion._core.Limiter)
    with pytest.raises(RuntimeError, match="__init__"):
        core.hit("a")


# -- decisions -------------------------------------------------------------------------


def test_decision_type() -> None:
    d = Decision(True, 10, 9, 0.5, 0.0)
    assert bool(d) and d.allowed is True and d.limit == 10 and d.remaining == 9
    assert d.reset_after == 0.5 and d.reset_after_ns == 500_000_000
    assert d == Decision(True, 10, 9, 0.5)
    assert d != Decision(False, 10, 9, 0.5, 1.0)
    assert not Decision(False, 10, 0, 1.0, 1.0)
    assert "allowed=True" in repr(d) and "remaining=9" in repr(d)
    with pytest.raises(ValueError):
        Decision(True, -1, 0)
    with pytest.raises(ValueError):
        Decision(True, 1, 0, float("nan"))
    with pytest.raises(AttributeError):
        d.allowed = False  # type: ignore[misc]
    with pytest.raises(TypeError):
        hash(d)


def test_hit_docstrings_carry_signatures() -> None:
    assert Limiter.hit.__text_signature__ == "($self, key, /, cost=1)"
    assert Limiter.peek.__text_signature__ == "($self, key, /, cost=1)"


# -- threads -------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ALGORITHMS)
def test_threads_admit_exactly_the_limit(alg: str) -> None:
    lim = Limiter("1000/hour", algorithm=alg)
    admitted = [0] * 8
    barrier = threading.Barrier(8)

    def worker(i: int) -> None:
        barrier.wait()
        n = 0
        for _ in range(500):
            if lim.hit("shared"):
                n += 1
        admitted[i] = n

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # force interleaving
    try:
        threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(old)
    assert sum(admitted) == 1000
    assert lim.peek("shared").remaining == 0


def test_rates_repr() -> None:
    lim = Limiter("10/second;1000/day")
    assert repr(lim) == "Limiter('10/second;1000/day', algorithm='token_bucket')"
    assert lim.algorithm == "token_bucket" and lim.max_keys == 1_000_000
    assert math.isclose(lim.rates[1].period, 86400)
