"""The Redis limiter against a real redis-server: API, validation, and a
differential test against the in-process engine on the same sequences."""

from __future__ import annotations

import asyncio
import inspect
import math
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import pytest
import redis
import redis.asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import stanchion
from stanchion import Decision, Limiter
from stanchion.redis import RedisLimiter, RedisStorage

from ._redis import SLOW, RedisServer

ALGORITHMS = ["token_bucket", "fixed_window", "sliding_window"]

# Periods used by the differential tests, and a time near today's clock
# (in us) that is a multiple of all of them: the in-process limiter runs at
# small times (exact as float seconds), the script at BASE_US + the same
# times, so both see the same offsets inside every window.
PERIODS = [0.001, 0.0025, 0.5, 1, 2, 3, 60, 3600, 86400, 604800]
BASE_US = 2800 * 604_800_000_000


@pytest.fixture
def storage(redis_server: RedisServer) -> Iterator[RedisStorage]:
    s = RedisStorage(redis_server.url, timeout=SLOW, prefix=f"t{uuid.uuid4().hex[:8]}:")
    yield s
    s.close()


@pytest.fixture
def rclient(redis_server: RedisServer) -> Iterator[redis.Redis]:
    c = redis.Redis(port=redis_server.port)
    yield c
    c.close()


class Clock:
    """One time, in us, seen by both limiters."""

    def __init__(self) -> None:
        self.us = 1_000_000_000

    def local(self) -> float:
        return self.us / 1e6

    def remote(self) -> int:
        return BASE_US + self.us


def pair(
    rates: object, algorithm: str, storage: RedisStorage, burst: object = None
) -> tuple[stanchion.Limiter, RedisLimiter, Clock]:
    clock = Clock()
    local = stanchion.Limiter(
        rates, algorithm=algorithm, burst=burst, clock=clock.local
    )
    remote = stanchion.Limiter(rates, algorithm=algorithm, burst=burst, storage=storage)
    assert isinstance(remote, RedisLimiter)
    remote._script_clock = clock.remote
    return local, remote, clock


# -- construction and validation ------------------------------------------------


def test_storage_rejects_bad_arguments(redis_server: RedisServer) -> None:
    url = redis_server.url
    with pytest.raises(TypeError, match="prefix"):
        RedisStorage(url, prefix=5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="hash tags"):
        RedisStorage(url, prefix="a{b}")
    for bad in (0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="timeout"):
            RedisStorage(url, timeout=bad)
    with pytest.raises(TypeError, match="timeout"):
        RedisStorage(url, timeout=True)
    with pytest.raises(TypeError, match="timeout"):
        RedisStorage(url, timeout="1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="retry_interval"):
        RedisStorage(url, retry_interval=-1)
    with pytest.raises(ValueError, match="URL"):
        RedisStorage("http://localhost")
    with pytest.raises(TypeError, match=r"redis\.Redis"):
        RedisStorage(object())


def test_limiter_rejects_bad_arguments(storage: RedisStorage) -> None:
    for bad_rates in ("10/fortnight", "", "0/second"):
        with pytest.raises(ValueError) as local_err:
            stanchion.Limiter(bad_rates)
        with pytest.raises(ValueError) as remote_err:
            stanchion.Limiter(bad_rates, storage=storage)
        assert str(local_err.value) == str(remote_err.value)
    with pytest.raises(ValueError, match="algorithm"):
        stanchion.Limiter("1/s", algorithm="leaky", storage=storage)
    with pytest.raises(ValueError, match="burst"):
        stanchion.Limiter("1/s", algorithm="fixed_window", burst=3, storage=storage)
    with pytest.raises(ValueError, match="burst"):
        stanchion.Limiter("1/s;2/m", burst=3, storage=storage)
    with pytest.raises(ValueError, match="at least 1 request"):
        stanchion.Limiter([(0.5, 1)], algorithm="fixed_window", storage=storage)
    with pytest.raises(ValueError, match="microseconds"):
        stanchion.Limiter([(3, 1 / 3)], algorithm="sliding_window", storage=storage)
    with pytest.raises(ValueError, match="on_error"):
        stanchion.Limiter("1/s", storage=storage, on_error="ignore")

    lim = stanchion.Limiter("5/second;3/minute", storage=storage)
    local = stanchion.Limiter("5/second;3/minute")
    for bad_key in (None, 5, ["a"]):
        with pytest.raises(TypeError, match="key must be str or bytes"):
            lim.hit(bad_key)  # type: ignore[arg-type]
    bad_costs = [
        (0, ValueError),
        (-1, ValueError),
        (4, ValueError),
        (1.0, TypeError),
        (True, TypeError),
        ("1", TypeError),
    ]
    for bad_cost, exc in bad_costs:
        with pytest.raises(exc) as remote_err:
            lim.hit("k", bad_cost)  # type: ignore[arg-type]
        with pytest.raises(exc) as local_err:
            local.hit("k", bad_cost)  # type: ignore[arg-type]
        assert str(remote_err.value) == str(local_err.value)
    assert lim.max_cost == local.max_cost == 3
    # Nothing was consumed by any of the rejected calls.
    assert lim.peek("k").remaining == 2  # as for a new key


def test_make_limiter_is_what_limiter_returns(storage: RedisStorage) -> None:
    lim = stanchion.Limiter("10/second", algorithm="sliding_window", storage=storage)
    assert isinstance(lim, RedisLimiter)
    assert lim.algorithm == "sliding_window"
    assert lim.rates == (stanchion.Rate(10, 1.0),)
    assert "10/second" in repr(lim)
    assert lim.on_error == "allow"


def test_lazy_import_of_redis() -> None:
    code = (
        "import sys, stanchion\n"
        "assert 'redis' not in sys.modules and 'stanchion.redis' not in sys.modules\n"
        "s = stanchion.RedisStorage\n"
        "assert s is stanchion.redis.RedisStorage and 'redis' in sys.modules\n"
        "assert stanchion.RedisCache is stanchion.redis.RedisCache\n"
        "try:\n    stanchion.Nope\nexcept AttributeError:\n    pass\n"
        "else:\n    raise SystemExit('no AttributeError')\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# -- behaviour with the server clock ------------------------------------------------


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_hit_peek_reset(storage: RedisStorage, algorithm: str) -> None:
    lim = stanchion.Limiter("3/minute", algorithm=algorithm, storage=storage)
    other = stanchion.Limiter("3/minute", algorithm=algorithm, storage=storage)
    assert lim.peek("a").allowed and lim.peek("a").remaining == 2
    first = [lim.hit("a") for _ in range(3)]
    assert [d.allowed for d in first] == [True, True, True]
    assert [d.remaining for d in first] == [2, 1, 0]
    denied = lim.hit("a")
    assert not denied and denied.remaining == 0 and denied.limit == 3
    assert 0 < denied.retry_after <= 120
    # A second limiter object with the same rates shares the state.
    assert not other.peek("a")
    assert lim.peek("b").allowed and lim.peek(b"b").remaining == lim.peek("b").remaining
    lim.hit("b")
    lim.reset("a")
    assert lim.hit("a").remaining == 2
    lim.reset()
    assert lim.peek("a").remaining == 2 and lim.peek("b").remaining == 2


def test_different_rates_do_not_share(storage: RedisStorage) -> None:
    a = stanchion.Limiter("2/minute", storage=storage)
    b = stanchion.Limiter("3/minute", storage=storage)
    c = stanchion.Limiter("2/minute", algorithm="fixed_window", storage=storage)
    a.hit("k")
    a.hit("k")
    assert not a.peek("k")
    assert b.peek("k").remaining == 2 and c.peek("k").remaining == 1
    # reset() of one limiter leaves the others alone.
    b.hit("k")
    a.reset()
    assert a.peek("k").remaining == 1 and b.peek("k").remaining == 1


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_keys_carry_a_hash_tag_and_an_expiry(
    storage: RedisStorage, rclient: redis.Redis, algorithm: str
) -> None:
    lim = stanchion.Limiter("5/minute;100/hour", algorithm=algorithm, storage=storage)
    d = lim.hit("client-42")
    keys = rclient.keys(storage.prefix + "*")
    assert len(keys) == 1
    key = keys[0].decode()
    assert key.startswith(storage.prefix + "{client-42}:")
    pttl = rclient.pttl(key)
    # The key lives until it is back to full on every rate: the longest
    # rate's reset, not the binding one's.
    full_in = {"token_bucket": 36.0, "fixed_window": 3600.0, "sliding_window": 7200.0}
    assert 0 < pttl <= full_in[algorithm] * 1000 + 1
    if algorithm == "token_bucket":
        assert pttl >= 36_000 - 1000
    assert d.allowed
    # A peek or a denial writes nothing.
    before = rclient.get(key)
    lim.peek("client-42")
    assert rclient.get(key) == before
    lim.peek("nobody")
    assert len(rclient.keys(storage.prefix + "*")) == 1


def test_key_expires_when_full(storage: RedisStorage, rclient: redis.Redis) -> None:
    lim = stanchion.Limiter("20/second", storage=storage)
    lim.hit("k")
    assert rclient.keys(storage.prefix + "*")
    time.sleep(0.1)
    assert not rclient.keys(storage.prefix + "*")


def test_script_reloaded_after_flush(
    storage: RedisStorage, rclient: redis.Redis
) -> None:
    lim = stanchion.Limiter("3/minute", storage=storage)
    assert lim.hit("k").remaining == 2
    rclient.script_flush()
    assert lim.hit("k").remaining == 1
    assert lim.peek("k").allowed and lim.peek("k").remaining == 0


def test_user_clients_share_state_with_url(
    redis_server: RedisServer, storage: RedisStorage
) -> None:
    client = redis.Redis(port=redis_server.port, socket_timeout=5)
    try:
        mine = RedisStorage(client, timeout=SLOW, prefix=storage.prefix)
        a = stanchion.Limiter("4/minute", storage=storage)
        b = stanchion.Limiter("4/minute", storage=mine)
        a.hit("k")
        assert b.hit("k").remaining == 2
        assert f"localhost:{redis_server.port}" in repr(mine)
        # A blocking client gives no asyncio side.
        with pytest.raises(TypeError, match="blocking client"):
            asyncio.run(b.ahit("k"))
    finally:
        client.close()


def test_acquire(storage: RedisStorage) -> None:
    lim = stanchion.Limiter(
        "2 per 0.2 seconds", algorithm="fixed_window", storage=storage
    )
    lim.hit("k")
    lim.hit("k")
    t0 = time.monotonic()
    d = lim.acquire("k", timeout=1.0)
    assert d.allowed and time.monotonic() - t0 < 0.5
    lim.hit("k")
    with pytest.raises(stanchion.RateLimitExceeded) as err:
        lim.acquire("k", timeout=0.0)
    assert err.value.decision.retry_after > 0
    with pytest.raises(ValueError, match="timeout"):
        lim.acquire("k", timeout=-1)


def test_clock_never_runs_backwards_for_a_key(storage: RedisStorage) -> None:
    _, remote, clock = pair("2/minute", "fixed_window", storage)
    key = uuid.uuid4().hex
    remote.hit(key)
    clock.us -= 120_000_000  # the server's clock steps back two minutes
    d = remote.hit(key)
    assert d.allowed and d.remaining == 0
    assert not remote.hit(key)


def test_one_round_trip_whatever_the_rates(
    storage: RedisStorage, rclient: redis.Redis
) -> None:
    lims = {
        n: stanchion.Limiter(
            ";".join(["100/second", "1000/minute", "10000/hour"][:n]), storage=storage
        )
        for n in (1, 3)
    }
    for lim in lims.values():
        lim.hit("warm")  # loads the script if needed
    calls = {}
    for n, lim in lims.items():
        rclient.config_resetstat()
        for _ in range(50):
            lim.hit("k")
            lim.peek("k")
        stats = rclient.info("commandstats")
        calls[n] = {k: v["calls"] for k, v in stats.items()}
    # One EVALSHA per decision, whose script reads the clock and the
    # state once and writes it once per hit, whatever the number of rates.
    for n in (1, 3):
        calls[n].pop("cmdstat_config|resetstat", None)
        assert calls[n] == {
            "cmdstat_evalsha": 100,
            "cmdstat_time": 100,
            "cmdstat_get": 100,
            "cmdstat_set": 50,
        }, calls[n]


# -- differential against the in-process engine ----------------------------------


def _rates(algorithm: str) -> st.SearchStrategy[list[tuple[float, float]]]:
    if algorithm == "token_bucket":
        amount = st.one_of(
            st.integers(1, 40), st.sampled_from([0.5, 1.5, 2.5, 7.3, 1000.0])
        )
    else:
        amount = st.one_of(st.integers(1, 40), st.sampled_from([1.5, 2.5, 7.3, 1000.0]))
    return st.lists(st.tuples(amount, st.sampled_from(PERIODS)), min_size=1, max_size=3)


_steps = st.lists(
    st.tuples(
        st.one_of(
            st.sampled_from([0, 0, 1, 999, 1000, 250_000, 1_000_000, 60_000_000]),
            st.integers(0, 3_000_000),
            st.integers(0, 90_000_000_000),
        ),
        st.sampled_from(["hit", "hit", "hit", "peek"]),
        st.integers(1, 8),
    ),
    min_size=1,
    max_size=25,
)


def same_decision(a: stanchion.Decision, b: stanchion.Decision) -> bool:
    """The same decision: allowed, limit and remaining exactly; the two
    times to within a microsecond (the script's doubles, at the server
    clock's magnitude, can round the last nanosecond)."""
    return (
        (a.allowed, a.limit, a.remaining) == (b.allowed, b.limit, b.remaining)
        and abs(a.reset_after_ns - b.reset_after_ns) < 1000
        and abs(a.retry_after_ns - b.retry_after_ns) < 1000
    )


def _differential(storage: RedisStorage, algorithm: str, data: st.DataObject) -> None:
    rates = data.draw(_rates(algorithm), label="rates")
    burst = None
    if algorithm == "token_bucket" and data.draw(st.booleans(), label="with burst"):
        burst = [data.draw(st.one_of(st.none(), st.integers(1, 30))) for _ in rates]
    local, remote, clock = pair(rates, algorithm, storage, burst)
    key = uuid.uuid4().hex
    for advance, op, cost in data.draw(_steps, label="steps"):
        clock.us += advance
        cost = min(cost, local.max_cost)
        a = getattr(local, op)(key, cost)
        b = getattr(remote, op)(key, cost)
        assert same_decision(a, b), (op, cost, clock.us, a, b)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_differential_against_in_process(
    storage: RedisStorage, algorithm: str, data: st.DataObject
) -> None:
    _differential(storage, algorithm, data)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_differential_long_runs(storage: RedisStorage, algorithm: str) -> None:
    """Long seeded sequences on one key, with many rates: the states the
    short hypothesis runs rarely reach (deep in a burst, long windows)."""
    import random

    rng = random.Random(algorithm)
    for _ in range(6):
        rates = [
            (rng.choice([3, 10, 97, 1000, 2.5]), rng.choice(PERIODS))
            for _ in range(rng.randint(1, 5))
        ]
        if algorithm == "token_bucket":
            rates[0] = (7.3, 1)
        local, remote, clock = pair(rates, algorithm, storage)
        key = uuid.uuid4().hex
        for _ in range(150):
            clock.us += rng.choice(
                [0, 1, 17, 1000, 33_333, 500_000, 7_000_000, 3_600_000_000]
            )
            cost = rng.randint(1, local.max_cost) if rng.random() < 0.2 else 1
            op = "peek" if rng.random() < 0.2 else "hit"
            assert getattr(local, op)(key, cost) == getattr(remote, op)(key, cost)


def test_exact_beyond_double_precision(storage: RedisStorage) -> None:
    """Counts and periods whose products pass 2**53 (the sliding window's
    exact comparison) still agree to the nanosecond."""
    rates = [(10**9, 604800), (3 * 10**8, 86400)]
    for algorithm in ALGORITHMS:
        local, remote, clock = pair(rates, algorithm, storage)
        key = uuid.uuid4().hex
        for step in range(40):
            clock.us += 86_399_999_999 if step % 7 == 0 else 12_345_678
            cost = 10**8 if step % 3 else 299_999_999
            assert local.hit(key, cost) == remote.hit(key, cost), (algorithm, step)
            assert local.peek(key, 1) == remote.peek(key, 1)


# -- asyncio ---------------------------------------------------------------------


async def test_async_api(redis_server: RedisServer, storage: RedisStorage) -> None:
    try:
        lim = stanchion.Limiter("3/minute", algorithm="sliding_window", storage=storage)
        assert (await lim.apeek("a")).remaining == 2
        ds = [await lim.ahit("a") for _ in range(4)]
        assert [d.allowed for d in ds] == [True, True, True, False]
        # Both sides see one state.
        blocking, asynchronous = lim.peek("a"), await lim.apeek("a")
        assert not blocking and not asynchronous
        assert 0 < asynchronous.retry_after <= blocking.retry_after
        await lim.areset("a")
        assert (await lim.ahit("a")).remaining == 2
        await lim.areset()
        assert (await lim.apeek("a")).remaining == 2
        with pytest.raises(TypeError):
            await lim.ahit(3)  # type: ignore[arg-type]
        fast = stanchion.Limiter(
            "2 per 0.2 seconds", algorithm="fixed_window", storage=storage
        )
        await fast.ahit("k")
        await fast.ahit("k")
        assert (await fast.aacquire("k", timeout=1.0)).allowed
        await fast.ahit("k")
        with pytest.raises(stanchion.RateLimitExceeded):
            await fast.aacquire("k", timeout=0)
    finally:
        await storage.aclose()


async def test_async_client(redis_server: RedisServer, storage: RedisStorage) -> None:
    client = redis.asyncio.Redis(port=redis_server.port)
    mine = RedisStorage(client, timeout=SLOW, prefix=storage.prefix)
    try:
        lim = stanchion.Limiter("4/minute;10/hour", storage=mine)
        d = await lim.ahit("k")
        assert d.remaining == 3
        many = await asyncio.gather(*(lim.ahit("k") for _ in range(6)))
        assert sum(d.allowed for d in many) == 3
        with pytest.raises(TypeError, match="asyncio client"):
            lim.hit("k")
        # The state is the one a URL storage with the same prefix sees.
        assert not stanchion.Limiter("4/minute;10/hour", storage=storage).peek("k")
    finally:
        await mine.aclose()
        await client.aclose()


async def test_async_differential(storage: RedisStorage) -> None:
    import random

    rng = random.Random(7)
    try:
        for algorithm in ALGORITHMS:
            local, remote, clock = pair([(5, 1), (20, 60)], algorithm, storage)
            key = uuid.uuid4().hex
            for _ in range(120):
                clock.us += rng.choice([0, 1000, 150_000, 999_999, 30_000_000])
                cost = rng.randint(1, 3)
                assert local.hit(key, cost) == await remote.ahit(key, cost)
                assert local.peek(key) == await remote.apeek(key)
    finally:
        await storage.aclose()


def test_decision_fields_are_exact_to_the_nanosecond(storage: RedisStorage) -> None:
    # 3 per second: the token bucket's interval is 333333333 ns, not a
    # whole number of microseconds.
    local, remote, _ = pair("3/second", "token_bucket", storage)
    key = uuid.uuid4().hex
    for _ in range(4):
        a, b = local.hit(key), remote.hit(key)
        assert a == b
    assert b.retry_after_ns == 333_333_333 and b.reset_after_ns == 999_999_999
    assert math.isclose(b.retry_after, 0.333333333)


_RATE_LIMITER_METHODS = (
    "hit",
    "peek",
    "reset",
    "acquire",
    "ahit",
    "apeek",
    "areset",
    "aacquire",
)


def _shape(method: object) -> list[tuple[str, object, object]]:
    """A method's parameters as callers see them: names, kinds, defaults."""
    sig = inspect.signature(method)  # type: ignore[arg-type]
    return [(p.name, p.kind, p.default) for p in sig.parameters.values()]


def test_same_rate_limiter_surface_as_the_in_process_limiter(
    storage: RedisStorage,
) -> None:
    """Code written against stanchion.Limiter works unchanged on a
    Redis one: the same methods called the same way, and the same
    ``rates`` and ``algorithm``."""
    local = stanchion.Limiter("5/second;100/hour", algorithm="sliding_window")
    remote = stanchion.Limiter(
        "5/second;100/hour", algorithm="sliding_window", storage=storage
    )
    assert isinstance(remote, RedisLimiter)
    for name in _RATE_LIMITER_METHODS:
        assert _shape(getattr(remote, name)) == _shape(getattr(local, name)), name
        assert inspect.iscoroutinefunction(
            getattr(remote, name)
        ) == inspect.iscoroutinefunction(getattr(local, name)), name
    assert remote.rates == local.rates
    assert all(isinstance(r, stanchion.Rate) for r in remote.rates)
    assert remote.algorithm == local.algorithm == "sliding_window"


def test_scripts_take_the_engines_compiled_rates(storage: RedisStorage) -> None:
    """One owner of the rate rules: the C engine compiles the rates (its
    ``limits``) and the scripts get exactly those numbers."""
    from stanchion import _core

    rates = stanchion.parse_rates("3/second;100 per 7 minutes")
    limits = _core.Limiter(rates, "token_bucket", [5, None], 1, None).limits
    interval = 333_333_333  # 1 s / 3, to the nearest ns
    assert limits == (
        (5, 10**9, interval, 5 * interval),
        (100, 420 * 10**9, 4_200_000_000, 420 * 10**9),
    )
    remote = stanchion.Limiter(
        "3/second;100 per 7 minutes", burst=[5, None], storage=storage
    )
    assert isinstance(remote, RedisLimiter)
    assert remote._params == tuple(
        str(v).encode() for cap, _, iv, tol in limits for v in (cap, iv, tol)
    )
    windows = _core.Limiter(rates, "sliding_window", None, 1, None).limits
    assert windows == ((3, 10**9, 10**9, 0), (100, 420 * 10**9, 420 * 10**9, 0))
    remote = stanchion.Limiter(
        "3/second;100 per 7 minutes", algorithm="sliding_window", storage=storage
    )
    assert isinstance(remote, RedisLimiter)
    assert remote._params == tuple(
        str(v).encode() for cap, p, _, _ in windows for v in (cap, p // 1000, p)
    )


def test_every_limiter_is_a_rate_limiter(redis_server: RedisServer) -> None:
    """Limiter(...) returns a RateLimiter, with or without a storage, and
    the HTTP layer takes exactly those as limiters."""
    from stanchion.http import Rule, SettingError
    from stanchion.redis import RedisStorage

    local = Limiter("5/second")
    assert isinstance(local, stanchion.RateLimiter)
    storage = RedisStorage(redis_server.url)
    try:
        shared = Limiter("5/second", storage=storage)
        assert not isinstance(shared, Limiter)
        assert isinstance(shared, stanchion.RateLimiter)
        assert Rule(shared).check_simple("GET", "/", "10.0.0.1")
    finally:
        storage.close()

    class HitOnly:
        """Not a limiter: a hit method alone (no peek, rates, ahit, ...)."""

        def hit(self, key: str | bytes, cost: int = 1) -> Decision:
            return local.hit(key, cost)

    assert not isinstance(HitOnly(), stanchion.RateLimiter)
    with pytest.raises(SettingError, match=r"a stanchion\.RateLimiter") as info:
        Rule(HitOnly())
    # What is missing is named, so a limiter class of one's own can be fixed.
    assert str(info.value).endswith(
        "(it lacks rates, algorithm, peek, reset, acquire, "
        "ahit, apeek, areset, aacquire)"
    )
