"""The penalty box with the Redis storage, against a real redis-server:
the same bans as the in-process engine, bans seen by other processes,
the ban API and the log line."""

from __future__ import annotations

import asyncio
import logging
import random
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator

import pytest

import stanchion
from stanchion import Ban, Penalty, StorageUnavailable
from stanchion.redis import RedisLimiter, RedisStorage

from ._redis import SLOW, RedisServer, free_port

ALGORITHMS = ["token_bucket", "fixed_window", "sliding_window"]
BASE_US = 2800 * 604_800_000_000


@pytest.fixture
def storage(redis_server: RedisServer) -> Iterator[RedisStorage]:
    s = RedisStorage(redis_server.url, timeout=SLOW, prefix=f"t{uuid.uuid4().hex[:8]}:")
    yield s
    s.close()


class Clock:
    def __init__(self) -> None:
        self.us = 1_000_000_000

    def local(self) -> float:
        return self.us / 1e6

    def remote(self) -> int:
        return BASE_US + self.us


def pair(
    storage: RedisStorage, penalty: Penalty, rates: str = "2/second", **kw: str
) -> tuple[stanchion.Limiter, RedisLimiter, Clock]:
    clock = Clock()
    local = stanchion.Limiter(rates, clock=clock.local, penalty=penalty, **kw)  # type: ignore[call-overload]
    remote = stanchion.Limiter(rates, storage=storage, penalty=penalty, **kw)  # type: ignore[call-overload]
    assert isinstance(remote, RedisLimiter)
    remote._script_clock = clock.remote
    return local, remote, clock


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_redis_bans_exactly_as_the_in_process_engine(
    storage: RedisStorage, algorithm: str
) -> None:
    penalty = Penalty(after=2, within=3, ban=2, factor=2, max_ban=9)
    local, remote, clock = pair(storage, penalty, algorithm=algorithm)
    rng = random.Random(algorithm)
    bans = 0
    for step in range(3000):
        key = rng.choice(["a", "b"])
        op = rng.random()
        if op < 0.1:
            clock.us += rng.choice([1, 1000, 250_000, 1_000_000, 4_000_000])
            continue
        if op < 0.15:
            want, got = local.peek(key), remote.peek(key)
        else:
            want, got = local.hit(key), remote.hit(key)
        assert (got.allowed, got.remaining, got.retry_after_ns, got.banned) == (
            want.allowed,
            want.remaining,
            want.retry_after_ns,
            want.banned,
        ), (step, key)
        assert got.limit == want.limit
        bans += want.banned
        clock.us += rng.choice([0, 1, 10_000])
    assert bans > 20  # the sequence did ban, and escalate
    for key in ("a", "b"):
        assert remote.get_ban(key) == local.get_ban(key)
    assert sorted(b.key for b in remote.bans() if isinstance(b.key, bytes)) == sorted(
        b.key.encode()
        for b in local.bans()  # type: ignore[union-attr]
    )


def test_escalation_and_forgetting(storage: RedisStorage) -> None:
    _, lim, clock = pair(storage, Penalty(after=1, within=5, ban=10, factor=3))

    def ban() -> float:
        assert lim.hit("a") and lim.hit("a")
        assert not lim.hit("a")
        return lim.hit("a").retry_after

    assert ban() == 10
    clock.us += 10_000_000
    assert ban() == 30
    clock.us += 30_000_000 + 29_999_999  # remembered max(30, 5) s after
    assert lim.get_ban("a") == Ban("a", 0.0, 2, 0)
    assert ban() == 90
    clock.us += 90_000_000 + 90_000_000
    assert lim.get_ban("a") is None
    assert ban() == 10


def test_api_list_inspect_lift_reset(storage: RedisStorage) -> None:
    _, lim, clock = pair(storage, Penalty(after=1, within=5, ban=10), "2/minute")
    for k in ("a", "b", "c"):
        assert lim.hit(k) and lim.hit(k)
        assert not lim.hit(k) and not lim.hit(k)
    assert lim.hit("d") and lim.hit("d") and not lim.hit("d")  # one refusal
    assert sorted(lim.bans()) == [Ban(k, 10.0, 1) for k in (b"a", b"b", b"c")]
    assert lim.get_ban("d") == Ban("d", 0.0, 0, 1)
    assert lim.get_ban("e") is None
    clock.us += 4_000_000
    assert lim.get_ban("a") == Ban("a", 6.0, 1, 0)
    assert lim.lift("a") is True and lim.lift("a") is False
    assert lim.get_ban("a") is None
    assert not lim.hit("a")  # the rate still refuses: lift is not reset
    lim.reset("b")
    assert lim.hit("b")
    assert [b.key for b in lim.bans()] == [b"c"]
    lim.reset()
    assert lim.bans() == [] and lim.hit("c")


def test_async_twins(redis_server: RedisServer) -> None:
    async def main() -> None:
        st = RedisStorage(
            redis_server.url, timeout=SLOW, prefix=f"a{uuid.uuid4().hex[:8]}:"
        )
        lim = stanchion.Limiter(
            "1/minute", storage=st, penalty=Penalty(after=1, within=60, ban=100)
        )
        assert await lim.ahit("x")
        assert not await lim.ahit("x")
        d = await lim.ahit("x")
        assert d.retry_after == pytest.approx(100, abs=0.01)
        assert not await lim.ahit("x")
        got = await lim.abans()  # type: ignore[attr-defined]
        assert [(b.key, b.ban_count) for b in got] == [(b"x", 1)]
        ban = await lim.aget_ban("x")  # type: ignore[attr-defined]
        assert ban.banned and 99 < ban.remaining <= 100
        assert await lim.alift("x") is True  # type: ignore[attr-defined]
        assert await lim.abans() == []  # type: ignore[attr-defined]
        await st.aclose()

    asyncio.run(main())


def test_one_log_line_per_ban(
    storage: RedisStorage, caplog: pytest.LogCaptureFixture
) -> None:
    _, lim, clock = pair(storage, Penalty(after=1, within=5, ban=10), "2/minute")
    with caplog.at_level(logging.INFO, logger="stanchion"):
        assert lim.hit("k") and lim.hit("k")
        for _ in range(50):
            assert not lim.hit("k")
        clock.us += 10_000_000
        for _ in range(50):
            assert not lim.hit("k")
    lines = [r.getMessage() for r in caplog.records if r.name == "stanchion"]
    assert len(lines) == 2
    assert "'k'" in lines[0] and "10.000 s" in lines[0] and "ban 1" in lines[0]
    assert "20.000 s" in lines[1] and "ban 2" in lines[1]


def test_on_error_is_unchanged_and_the_api_raises() -> None:
    st = RedisStorage(f"redis://127.0.0.1:{free_port()}", timeout=0.05)
    lim = stanchion.Limiter(
        "1/hour", storage=st, penalty=Penalty(after=1, within=1, ban=1)
    )
    for _ in range(5):
        assert lim.hit("a")  # on_error="allow": Redis is down
    with pytest.raises(StorageUnavailable):
        lim.bans()  # type: ignore[attr-defined]
    with pytest.raises(StorageUnavailable):
        lim.get_ban("a")  # type: ignore[attr-defined]
    st.close()


def test_ban_api_rejects_bad_keys(storage: RedisStorage) -> None:
    _, lim, _ = pair(storage, Penalty(after=1, within=5, ban=10))
    for bad in (None, 5, ["a"]):
        for method in (lim.get_ban, lim.lift):
            with pytest.raises(TypeError):
                method(bad)  # type: ignore[arg-type]


def test_bad_penalty_is_refused_before_anything(storage: RedisStorage) -> None:
    with pytest.raises(TypeError):
        stanchion.Limiter("1/second", storage=storage, penalty={"after": 1})  # type: ignore[call-overload]
    with pytest.raises(TypeError):
        RedisLimiter(
            storage, [stanchion.Rate(1, 1)], algorithm="token_bucket", penalty=3
        )  # type: ignore[arg-type]


_BAN_ONE = """
import sys, stanchion
from stanchion.redis import RedisStorage
url, prefix, mode = sys.argv[1:]
lim = stanchion.Limiter("2/minute", storage=RedisStorage(url, prefix=prefix, timeout=1.0),
                        penalty=stanchion.Penalty(after=2, within=60, ban=120))
if mode == "abuse":
    got = [lim.hit("203.0.113.9").allowed for _ in range(6)]
    print(got, round(lim.hit("203.0.113.9").retry_after))
else:
    a = lim.hit("203.0.113.9")
    b = lim.hit("198.51.100.1")
    print(a.allowed, round(a.retry_after), b.allowed, lim.bans()[0].key.decode())
"""


def test_a_ban_holds_in_another_process(redis_server: RedisServer) -> None:
    prefix = f"p{uuid.uuid4().hex[:8]}:"

    def run(mode: str) -> str:
        out = subprocess.run(
            [sys.executable, "-c", _BAN_ONE, redis_server.url, prefix, mode],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        return out.stdout.strip()

    # 2 allowed, 2 refusals tolerated, the 3rd bans for 120 s
    assert run("abuse") == "[True, True, False, False, False, False] 120"
    # a fresh process, with a fresh limiter: the client is still banned
    # for about 120 s (the rate alone would say 30 s), others are not
    allowed, left, other, listed = run("check").split()
    assert allowed == "False" and 115 <= int(left) <= 120
    assert other == "True" and listed == "203.0.113.9"


def test_penalty_with_a_storage_url(redis_server: RedisServer) -> None:
    from stanchion.http import LimiterCache

    penalty = Penalty(after=1, within=60, ban=50)
    cache = LimiterCache(storage=redis_server.url, penalty=penalty)
    lim = cache.get("1/minute").limiter
    assert isinstance(lim, RedisLimiter) and lim.penalty == penalty
    key = f"url-{uuid.uuid4().hex}"
    assert lim.hit(key) and not lim.hit(key)
    assert lim.hit(key).retry_after == pytest.approx(50, abs=0.01)
    assert [b.key for b in lim.bans()] == [key.encode()]
    lim.reset()
    local = LimiterCache(storage="memory://", penalty=penalty).get("1/minute")
    assert local.limiter.penalty == penalty
    with pytest.raises(stanchion.http.SettingError):
        LimiterCache(penalty="3 strikes")  # type: ignore[arg-type]


# -- lift against a racing hit -----------------------------------------------------


class _HitsBetween:
    """A lifting limiter's link whose every command, once answered, lets
    ``between`` run (another client's hits) before lift's next command:
    the worst interleaving a non-atomic lift could meet."""

    def __init__(self, link: object, between: Callable[[], object]) -> None:
        self._link = link
        self._between = between

    def call(self, *args: object) -> object:
        reply = self._link.call(*args)  # type: ignore[attr-defined]
        self._between()
        return reply


class _AsyncHitsBetween(_HitsBetween):
    """:class:`_HitsBetween` for an asyncio link."""

    async def call(self, *args: object) -> object:  # type: ignore[override]
        reply = await self._link.call(*args)  # type: ignore[attr-defined]
        self._between()
        return reply


def _lifter_and_hitter(
    url: str, penalty: Penalty
) -> tuple[RedisLimiter, RedisLimiter, list[RedisStorage]]:
    """Two limiters on one prefix, each with connections of its own."""
    prefix = f"l{uuid.uuid4().hex[:8]}:"
    stores = [RedisStorage(url, timeout=SLOW, prefix=prefix) for _ in range(2)]
    lifter, hitter = (
        stanchion.Limiter("1/hour", storage=s, penalty=penalty) for s in stores
    )
    assert isinstance(lifter, RedisLimiter) and isinstance(hitter, RedisLimiter)
    return lifter, hitter, stores


def _ban_once(hitter: RedisLimiter) -> Callable[[], None]:
    """Two refusals of "k" by ``hitter`` (the second bans it), once."""
    done: list[bool] = []

    def ban() -> None:
        if not done:
            done.append(True)
            assert not hitter.hit("k")
            assert hitter.hit("k").banned

    return ban


def test_lift_racing_a_hit_lifts_exactly_what_it_reports(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    penalty = Penalty(after=1, within=600, ban=1000)
    lifter, hitter, stores = _lifter_and_hitter(redis_server.url, penalty)
    try:
        assert hitter.hit("k")  # the hour's one hit: the next are refused
        link = lifter._connector.sync_link()
        between = _ban_once(hitter)
        monkeypatch.setattr(
            lifter._connector, "sync_link", lambda: _HitsBetween(link, between)
        )
        lifted = lifter.lift("k")
        ban = hitter.get_ban("k")
        # The ban came after the lift (reported False, and it stays) or
        # before it (reported True, and gone): never gone unreported.
        assert lifted is False and ban is not None and ban.banned
        monkeypatch.undo()
        assert lifter.lift("k") is True and hitter.get_ban("k") is None
        assert not hitter.hit("k").banned  # a refusal counted afresh
    finally:
        for s in stores:
            s.close()


def test_alift_racing_a_hit_lifts_exactly_what_it_reports(
    redis_server: RedisServer,
) -> None:
    async def main() -> None:
        penalty = Penalty(after=1, within=600, ban=1000)
        lifter, hitter, stores = _lifter_and_hitter(redis_server.url, penalty)
        assert hitter.hit("k")
        link = lifter._connector.async_link
        lifter._connector._async = _AsyncHitsBetween(link, _ban_once(hitter))  # type: ignore[assignment]
        lifted = await lifter.alift("k")  # type: ignore[attr-defined]
        ban = hitter.get_ban("k")
        assert lifted is False and ban is not None and ban.banned
        lifter._connector._async = link
        assert await lifter.alift("k") is True  # type: ignore[attr-defined]
        assert hitter.get_ban("k") is None
        for s in stores:
            s.close()
            await s.aclose()

    asyncio.run(main())


def test_lifts_and_hits_in_threads_never_lose_a_ban(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Hits banning "k" over and over in one thread, lifts in another:
    every ban started is lifted by a lift that reports it, or still on."""
    penalty = Penalty(after=1, within=600, ban=1000)
    lifter, hitter, stores = _lifter_and_hitter(redis_server.url, penalty)
    lifted: list[bool] = []
    stop = threading.Event()

    def lift() -> None:
        while not stop.is_set():
            lifted.append(lifter.lift("k"))

    try:
        assert hitter.hit("k")
        t = threading.Thread(target=lift)
        with caplog.at_level(logging.WARNING, logger="stanchion"):
            t.start()
            try:
                for _ in range(1500):
                    hitter.hit("k")
            finally:
                stop.set()
                t.join(30)
        started = sum("banned for" in r.getMessage() for r in caplog.records)
        ban = hitter.get_ban("k")
        still = int(ban is not None and ban.banned)
        assert started > 10 and sum(lifted) > 10  # they did race
        assert started == sum(lifted) + still
    finally:
        for s in stores:
            s.close()


def test_lift_clears_a_record_of_another_type(
    storage: RedisStorage, redis_server: RedisServer
) -> None:
    # Something else wrote under the penalty record's key: lift (the
    # admin's way out) removes it, instead of failing on it and leaving
    # it there, and the storage is not taken for down.
    lim = stanchion.Limiter(
        "1/minute", storage=storage, penalty=Penalty(after=1, within=60, ban=30)
    )
    assert isinstance(lim, RedisLimiter)
    pkey = lim._pkey("k")
    redis_server.cli("RPUSH", pkey.decode(), "x")
    assert lim.lift("k") is False
    assert redis_server.cli("EXISTS", pkey.decode()).strip() == "0"
    assert lim.get_ban("k") is None
    assert lim.hit("k") and not lim.hit("k") and not lim.hit("k")
    ban = lim.get_ban("k")
    assert ban is not None and ban.ban_count == 1 and ban.remaining > 29
    assert lim.lift("k") is True
    redis_server.cli("SADD", pkey.decode(), "x")

    async def alift() -> bool:
        try:
            return await lim.alift("k")  # type: ignore[no-any-return]
        finally:
            await storage.aclose()

    assert asyncio.run(alift()) is False
    assert redis_server.cli("EXISTS", pkey.decode()).strip() == "0"
