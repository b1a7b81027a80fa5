"""The penalty box of the in-process limiter: when a key is banned, for how
long, how bans escalate and are forgotten, the ban API, the log line and
the memory bound."""

from __future__ import annotations

import asyncio
import logging
import math

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from stanchion import Ban, Decision, Limiter, Penalty, RateLimitExceeded

from .conftest import FakeClock

ALGORITHMS = ["token_bucket", "fixed_window", "sliding_window"]


def refuse(lim: Limiter, key: str, n: int) -> list[float]:
    """``n`` hits that must all be refused; their retry_after."""
    out = []
    for _ in range(n):
        d = lim.hit(key)
        assert not d.allowed
        out.append(d.retry_after)
    return out


def limiter(clock: FakeClock, algorithm: str = "token_bucket", **kw: object) -> Limiter:
    penalty = Penalty(
        after=kw.pop("after", 3),  # type: ignore[arg-type]
        within=kw.pop("within", 60),  # type: ignore[arg-type]
        ban=kw.pop("ban", 10),  # type: ignore[arg-type]
        factor=kw.pop("factor", 2),  # type: ignore[arg-type]
        max_ban=kw.pop("max_ban", None),  # type: ignore[arg-type]
    )
    rate = kw.pop("rate", "1/hour")
    return Limiter(rate, algorithm=algorithm, clock=clock, penalty=penalty, **kw)  # type: ignore[call-overload]


# -- when a key is banned ---------------------------------------------------------


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_refusals_up_to_after_do_not_ban(clock: FakeClock, algorithm: str) -> None:
    lim = limiter(clock, algorithm)
    assert lim.hit("a")
    retries = refuse(lim, "a", 3)  # K = 3 refusals: tolerated
    assert all(r > 60 for r in retries)  # the rate's retry: about an hour
    assert lim.get_ban("a") == Ban("a", 0.0, 0, 3)
    assert lim.bans() == []
    d = lim.hit("a")  # the 4th within 60 s bans
    assert not d and d.retry_after == 10.0 and d.remaining == 0 and d.banned
    assert lim.bans() == [Ban("a", 10.0, 1)]


def test_refusals_spread_beyond_within_do_not_ban(clock: FakeClock) -> None:
    lim = limiter(clock)
    assert lim.hit("a")
    for _ in range(5):
        refuse(lim, "a", 3)
        clock.advance(60)  # the window that the first refusal opened ends
        assert lim.get_ban("a") is None
    assert lim.bans() == []
    # but the 4th refusal inside one window bans
    refuse(lim, "a", 3)
    clock.advance(59.999)
    assert lim.hit("a").retry_after == 10.0


def test_other_keys_are_not_banned(clock: FakeClock) -> None:
    lim = limiter(clock, after=1)
    assert lim.hit("a") and lim.hit("b")
    refuse(lim, "a", 2)
    assert lim.get_ban("a") is not None and lim.get_ban("a").banned  # type: ignore[union-attr]
    assert lim.get_ban("b") is None
    assert lim.get_ban(b"a") is None  # bytes and str keys are apart


def test_a_ban_refuses_whatever_the_rate_allows_and_expires(clock: FakeClock) -> None:
    lim = Limiter("2/second", clock=clock, penalty=Penalty(after=2, within=1, ban=30))
    assert lim.hit("a") and lim.hit("a")
    refuse(lim, "a", 2)
    assert lim.hit("a").retry_after == 30.0  # banned now
    clock.advance(5)  # the bucket is full again, the ban holds
    for _ in range(10):
        d = lim.hit("a")
        assert not d and d.retry_after == pytest.approx(25.0) and d.remaining == 0
        assert d.limit == 2 and d.banned
        assert repr(d).endswith(", banned=True)")
    assert not lim.peek("a")
    clock.advance(24.999999999)
    assert lim.hit("a").retry_after_ns == 1
    clock.advance(1e-9)
    # over: and banned hits charged nothing, so the burst is whole
    d = lim.hit("a")
    assert d and not d.banned and "banned" not in repr(d)
    assert lim.hit("a")
    d = lim.hit("a")
    assert not d and not d.banned  # a rate's refusal
    assert lim.bans() == []


def test_peeks_are_not_counted(clock: FakeClock) -> None:
    lim = limiter(clock, after=1)
    assert lim.hit("a")
    for _ in range(10):
        assert not lim.peek("a")
    assert lim.get_ban("a") is None
    refuse(lim, "a", 1)
    assert lim.get_ban("a") == Ban("a", 0.0, 0, 1)


def test_refusals_while_banned_are_not_counted(clock: FakeClock) -> None:
    lim = limiter(clock, after=2, ban=10)
    assert lim.hit("a")
    refuse(lim, "a", 3)
    refuse(lim, "a", 50)  # all refused by the ban
    clock.advance(10)
    # a fresh window: two refusals are tolerated again
    assert refuse(lim, "a", 2)[0] > 60
    assert lim.get_ban("a") == Ban("a", 0.0, 1, 2)


def test_acquire_gives_up_on_a_ban(clock: FakeClock) -> None:
    lim = limiter(clock, after=1, ban=1000)
    assert lim.hit("a")
    refuse(lim, "a", 2)
    with pytest.raises(RateLimitExceeded) as err:
        lim.acquire("a", timeout=5)
    assert err.value.retry_after == 1000


# -- escalation and its memory -----------------------------------------------------


def ban_once(lim: Limiter, clock: FakeClock, key: str = "a") -> float:
    """Refusals until the key is banned; the ban's length (a 1/second
    limiter: one second later its rate allows one hit)."""
    clock.advance(1)
    assert lim.hit(key)
    refuse(lim, key, lim.penalty.after)  # type: ignore[union-attr]
    d = lim.hit(key)
    assert not d
    return d.retry_after


def test_bans_escalate_by_factor_up_to_max_ban(clock: FakeClock) -> None:
    lim = limiter(clock, ban=10, factor=3, max_ban=200, within=60, rate="1/second")
    lengths = []
    for _ in range(5):
        lengths.append(ban_once(lim, clock))
        clock.advance(lengths[-1])  # serve it; the next comes at once
    assert lengths == [10, 30, 90, 200, 200]
    assert lim.get_ban("a") == Ban("a", 0.0, 5, 0)


def test_escalation_is_forgotten_after_max_of_last_ban_and_within() -> None:
    # after a ban ends, a key must go max(that ban, within) without a new
    # ban for its count to be forgotten
    for within, ban, wait, expect in [
        (5, 100, 99.999, 200),  # last ban 100 s: remembered 100 s
        (5, 100, 100, 100),
        (500, 100, 499.9, 200),  # within longer: remembered 500 s
        (500, 100, 500, 100),
    ]:
        clock = FakeClock(0)
        lim = Limiter(
            "1/second", clock=clock, penalty=Penalty(after=1, within=within, ban=ban)
        )
        assert lim.hit("a")
        refuse(lim, "a", 1)
        assert lim.hit("a").retry_after == ban
        clock.advance(ban + wait)
        assert lim.get_ban("a") == (
            Ban("a", 0.0, 1, 0) if expect == 2 * ban else None
        ), (within, ban, wait)
        assert lim.hit("a")
        refuse(lim, "a", 1)
        assert lim.hit("a").retry_after == expect, (within, ban, wait)


def test_factor_one_keeps_every_ban_equal(clock: FakeClock) -> None:
    lim = limiter(clock, ban=7, factor=1, rate="1/second")
    lengths = []
    for _ in range(3):
        lengths.append(ban_once(lim, clock))
        clock.advance(7)
    assert lengths == [7, 7, 7]


def test_huge_factor_is_capped(clock: FakeClock) -> None:
    lim = limiter(clock, ban=1, factor=1e300, max_ban=3600, rate="1/second")
    assert ban_once(lim, clock) == 1
    clock.advance(1)
    assert ban_once(lim, clock) == 3600
    assert Penalty(after=1, within=1, ban=1, factor=1e300).duration(50) == 2**60 / 1e9


# -- the ban API ------------------------------------------------------------------


def test_lift_forgets_ban_and_escalation(clock: FakeClock) -> None:
    lim = limiter(clock, ban=10, rate="1/second")
    assert ban_once(lim, clock) == 10
    clock.advance(10)
    assert ban_once(lim, clock) == 20
    assert lim.lift("a") is True
    assert lim.get_ban("a") is None and lim.bans() == []
    assert lim.lift("a") is False
    assert ban_once(lim, clock) == 10  # a first ban again
    clock.advance(10)
    assert lim.lift("a") is False  # not banned now, but state dropped
    assert lim.get_ban("a") is None


def test_reset_forgets_bans_too(clock: FakeClock) -> None:
    lim = limiter(clock, ban=10, rate="1/second")
    ban_once(lim, clock, "a")
    ban_once(lim, clock, "b")
    lim.reset("a")
    assert [b.key for b in lim.bans()] == ["b"]
    assert lim.hit("a")
    lim.reset()
    assert lim.bans() == [] and lim.hit("b")
    assert lim.stats()["penalty_keys"] == 0


def test_bans_lists_keys_as_given(clock: FakeClock) -> None:
    lim = limiter(clock, after=1, ban=50)
    keys: list[str | bytes] = ["a", b"a", "é" * 40, b"\xff" * 40]
    for k in keys:
        assert lim.hit(k)
        refuse(lim, k, 2)  # type: ignore[arg-type]
        clock.advance(1)
    got = sorted(lim.bans(), key=lambda b: b.remaining)
    assert [b.key for b in got] == keys
    assert [b.remaining for b in got] == [46, 47, 48, 49]
    assert all(b.ban_count == 1 and b.banned for b in got)


def test_async_twins(clock: FakeClock) -> None:
    lim = limiter(clock, after=1, ban=50)

    async def main() -> None:
        assert await lim.ahit("a")
        assert not await lim.ahit("a")
        assert not await lim.ahit("a")
        assert await lim.abans() == [Ban("a", 50.0, 1)]
        assert await lim.aget_ban("a") == Ban("a", 50.0, 1, 0)
        assert await lim.alift("a") is True
        assert await lim.abans() == []

    asyncio.run(main())


def test_decision_banned_field() -> None:
    d = Decision(False, 5, 0, 3.0, 3.0, banned=True)
    assert d.banned and not d and d.retry_after == 3.0
    assert d != Decision(False, 5, 0, 3.0, 3.0)
    assert d == Decision(False, 5, 0, 3.0, 3.0, True)
    assert not Decision(True, 5, 4).banned
    with pytest.raises(ValueError, match="banned"):
        Decision(True, 5, 4, banned=True)


def test_ban_api_rejects_bad_keys(clock: FakeClock) -> None:
    lim = limiter(clock)
    for bad in (None, 5, ["a"], 1.5):
        for method in (lim.get_ban, lim.lift):
            with pytest.raises(TypeError):
                method(bad)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        lim.lift()  # type: ignore[call-arg]


def test_without_a_penalty_nothing_is_banned(clock: FakeClock) -> None:
    lim = Limiter("1/hour", clock=clock)
    assert lim.penalty is None
    assert lim.hit("a")
    refuse(lim, "a", 1000)
    assert lim.bans() == [] and lim.get_ban("a") is None and not lim.lift("a")
    assert "penalty_keys" not in lim.stats()


# -- the log line --------------------------------------------------------------


def test_one_log_line_per_ban(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    lim = limiter(clock, after=2, ban=10)
    with caplog.at_level(logging.INFO, logger="stanchion"):
        assert lim.hit("client-7")
        refuse(lim, "client-7", 100)  # one ban, then refused while banned
        clock.advance(10)
        refuse(lim, "client-7", 100)  # a second ban
    lines = [r for r in caplog.records if r.name == "stanchion"]
    assert len(lines) == 2
    assert [r.levelno for r in lines] == [logging.WARNING] * 2
    text = [r.getMessage() for r in lines]
    assert "'client-7'" in text[0] and "10.000 s" in text[0] and "ban 1" in text[0]
    assert "20.000 s" in text[1] and "ban 2" in text[1]


def test_log_line_cuts_long_keys(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    lim = limiter(clock, after=1, ban=10)
    key = "x" * 100_000
    with caplog.at_level(logging.INFO, logger="stanchion"):
        assert lim.hit(key)
        refuse(lim, key, 2)
    (line,) = [r.getMessage() for r in caplog.records if r.name == "stanchion"]
    assert len(line) < 400 and "100000 long" in line


# -- memory -----------------------------------------------------------------------


def test_penalty_state_is_bounded_under_a_key_flood(clock: FakeClock) -> None:
    lim = limiter(clock, after=1, ban=1000, max_keys=200)
    assert lim.hit("abuser")
    refuse(lim, "abuser", 2)
    for i in range(20_000):
        k = f"k{i}"
        assert lim.hit(k)
        assert not lim.hit(k)  # one refusal: a record, no ban
    stats = lim.stats()
    assert stats["penalty_keys"] <= 200 and stats["keys"] <= 200
    assert stats["memory_bytes"] < 200 * 200
    # refusal counts went first: the ban survived the flood
    assert lim.get_ban("abuser") == Ban("abuser", 1000.0, 1, 0)
    assert not lim.hit("abuser")


def test_a_flood_of_bans_stays_bounded(clock: FakeClock) -> None:
    lim = limiter(clock, after=1, ban=1000, max_keys=64)
    for i in range(5000):
        k = f"k{i}"
        assert lim.hit(k)
        refuse(lim, k, 2)
    stats = lim.stats()
    assert stats["penalty_keys"] <= 64
    assert stats["penalty_evicted"] > 0
    assert 0 < len(lim.bans()) <= 64


def test_idle_records_are_dropped_first(clock: FakeClock) -> None:
    lim = limiter(clock, after=5, within=1, max_keys=50)
    for i in range(5000):
        k = f"k{i}"
        assert lim.hit(k)
        refuse(lim, k, 1)
        clock.advance(0.5)  # every window ends 1 s later: nothing lost
    assert lim.stats()["penalty_evicted"] == 0


# -- input checks ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"after": 0}, ValueError),
        ({"after": -1}, ValueError),
        ({"after": True}, TypeError),
        ({"after": 2.0}, TypeError),
        ({"after": "3"}, TypeError),
        ({"within": 0}, ValueError),
        ({"within": -1}, ValueError),
        ({"within": math.nan}, ValueError),
        ({"within": math.inf}, ValueError),
        ({"within": 10**400}, ValueError),
        ({"within": "60"}, TypeError),
        ({"ban": 0}, ValueError),
        ({"ban": -5}, ValueError),
        ({"ban": math.nan}, ValueError),
        ({"ban": None}, TypeError),
        ({"factor": 0.5}, ValueError),
        ({"factor": 0}, ValueError),
        ({"factor": math.nan}, ValueError),
        ({"factor": math.inf}, ValueError),
        ({"factor": True}, TypeError),
        ({"factor": "2"}, TypeError),
        ({"max_ban": 5}, ValueError),  # < ban
        ({"max_ban": math.inf}, ValueError),
        ({"max_ban": "1h"}, TypeError),
    ],
)
def test_bad_penalties_are_refused(kwargs: dict[str, object], error: type) -> None:
    args: dict[str, object] = {"after": 3, "within": 60, "ban": 10}
    args.update(kwargs)
    with pytest.raises(error):
        Penalty(**args)  # type: ignore[arg-type]


def test_penalty_takes_keywords_only_and_is_immutable() -> None:
    with pytest.raises(TypeError):
        Penalty(3, 60, 10)  # type: ignore[misc]
    p = Penalty(after=3, within=60, ban=10, max_ban=100)
    with pytest.raises(AttributeError):
        p.ban = 1  # type: ignore[misc]
    assert p == Penalty(after=3, within=60.0, ban=10.0, factor=2.0, max_ban=100)
    assert hash(p) == hash(Penalty(after=3, within=60, ban=10, max_ban=100))
    assert "after=3" in repr(p)
    assert [p.duration(n) for n in (1, 2, 3, 4, 5)] == [10, 20, 40, 80, 100]
    with pytest.raises(ValueError):
        p.duration(0)


def test_limiter_refuses_a_bad_penalty_before_changing_state(clock: FakeClock) -> None:
    with pytest.raises(TypeError, match=r"stanchion\.Penalty"):
        Limiter("1/second", penalty=(3, 60, 10))  # type: ignore[call-overload]
    lim = limiter(clock, after=1, ban=100)
    assert lim.hit("a")
    refuse(lim, "a", 2)
    with pytest.raises(TypeError):
        lim.__init__("1/hour", clock=clock, penalty="no")  # type: ignore[misc]
    from stanchion import _core

    for bad in [
        (0, 1, 1, 2.0, 1),
        (1, 1, 5, 2.0, 4),
        (1, 1, 1, 0.5, 1),
        (1, 0, 1, 2.0, 1),
    ]:
        with pytest.raises(ValueError):
            _core.Limiter.__init__(lim, "1/hour", "token_bucket", None, 10, clock, bad)
    with pytest.raises(TypeError):
        _core.Limiter.__init__(lim, "1/hour", "token_bucket", None, 10, clock, None, 5)
    assert lim.get_ban("a") == Ban("a", 100.0, 1, 0)  # state unchanged


def test_on_ban_may_reenter_the_limiter(clock: FakeClock) -> None:
    from stanchion import _core

    seen = []

    def on_ban(key: str | bytes, seconds: float, count: int) -> None:
        seen.append((key, seconds, count, lim._bans()))
        lim.reset()

    lim = _core.Limiter(
        "1/hour",
        "token_bucket",
        None,
        100,
        clock,
        (1, 60 * 10**9, 5 * 10**9, 2.0, 2**60),
        on_ban,
    )
    assert lim.hit("a")
    assert not lim.hit("a")
    d = lim.hit("a")
    assert not d and d.retry_after == 5
    assert seen == [("a", 5.0, 1, [("a", 5 * 10**9, 1)])]
    assert lim._bans() == [] and lim.hit("a")


# -- the documented rules, as a model ----------------------------------------------


class PenaltyModel:
    """The rules of ``stanchion._penalty``'s docstring, written out in
    integer ns for a key whose every hit its rate refuses."""

    def __init__(self, p: Penalty) -> None:
        self.within = round(p.within * 1e9)
        self.ban = round(p.ban * 1e9)
        self.cap = 2**60 if p.max_ban is None else round(p.max_ban * 1e9)
        self.p = p
        self.window = self.until = self.last = 0
        self.strikes = self.bans = 0

    def duration(self, n: int) -> int:
        d = self.ban * self.p.factor ** (n - 1)
        return self.cap if d >= self.cap else max(self.ban, math.floor(d + 0.5))

    def remembered(self, now: int) -> int:
        """The ban count at ``now``: forgotten max(last ban, within) after
        the last ban ended."""
        if self.bans and now < self.until + max(self.last, self.within):
            return self.bans
        return 0

    def hit(self, now: int) -> tuple[bool, int]:
        """(banned, retry_after_ns) of a refused hit at ``now``."""
        if now < self.until:
            return True, self.until - now
        if self.strikes == 0 or now - self.window >= self.within:
            self.window, self.strikes = now, 0
        self.strikes += 1
        if self.strikes <= self.p.after:
            return False, -1  # the rate's own retry
        self.bans = self.remembered(now) + 1
        self.last = self.duration(self.bans)
        self.until = now + self.last
        self.strikes = 0
        return True, self.last


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    after=st.integers(1, 4),
    within=st.integers(1, 50),
    ban=st.integers(1, 40),
    factor=st.sampled_from([1, 1.5, 2, 3]),
    cap=st.one_of(st.none(), st.integers(0, 100)),
    steps=st.lists(st.integers(0, 30_000), min_size=1, max_size=120),
)
def test_engine_follows_the_documented_rules(
    after: int,
    within: int,
    ban: int,
    factor: float,
    cap: int | None,
    steps: list[int],
) -> None:
    # whole milliseconds: exact in ns and in float seconds alike
    p = Penalty(
        after=after,
        within=within,
        ban=ban,
        factor=factor,
        max_ban=None if cap is None else ban + cap,
    )
    now = 0
    lim = Limiter("1/day", clock=lambda: now / 1e9, penalty=p)
    assert lim.hit("k")
    model = PenaltyModel(p)
    for ms in steps:
        now += ms * 1_000_000
        d = lim.hit("k")
        banned, retry = model.hit(now)
        assert not d and d.banned == banned
        if banned:
            assert d.retry_after_ns == retry
        got = lim.get_ban("k")
        assert (got.ban_count if got else 0) == model.remembered(now)


def test_a_million_penalty_calls_leak_nothing() -> None:
    from .test_limiter_memory import run_isolated

    assert "ok" in run_isolated("leak_penalty.py")


# -- the would-be bans of a rule in dry run ----------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    steps=st.lists(st.integers(min_value=0, max_value=50), min_size=1, max_size=120),
    after=st.integers(min_value=1, max_value=4),
    factor=st.sampled_from([1, 2, 3]),
    max_ban=st.sampled_from([None, 100]),
)
@example(steps=[0, 0, 60], after=1, factor=2, max_ban=None)  # the window's end
@example(steps=[0, 0, 0, 80, 0], after=1, factor=2, max_ban=None)  # forgotten
def test_dry_run_bans_follow_the_engines_rules(
    steps: list[int], after: int, factor: int, max_ban: int | None
) -> None:
    """DryRunBans (a dry run's imagined penalty box) bans exactly when,
    and for as long as, the C engine does: driven side by side by the
    refusals of a 1/hour limiter, in whole seconds."""
    from stanchion._penalty import DryRunBans

    clock = FakeClock()
    penalty = Penalty(after=after, within=60, ban=20, factor=factor, max_ban=max_ban)
    engine = Limiter("1/hour", clock=clock, penalty=penalty)
    imagined = DryRunBans(penalty, clock)
    for step in steps:
        clock.advance(step)
        d = engine.hit("k")
        left = imagined.banned("k")
        if left:
            assert d.banned and d.retry_after == pytest.approx(left)
            continue
        if d.allowed:
            continue
        ban = imagined.refused("k")  # a refusal by the rate
        if ban is None:
            assert not d.banned
        else:
            assert d.banned and d.retry_after == pytest.approx(ban[0])
            assert engine.get_ban("k").ban_count == ban[1]  # type: ignore[union-attr]


def test_dry_run_bans_table_is_bounded(clock: FakeClock) -> None:
    from stanchion._penalty import DryRunBans

    imagined = DryRunBans(Penalty(after=1, within=60, ban=20), clock, max_keys=10)
    for i in range(1000):
        imagined.refused(f"k{i}")
        assert len(imagined._keys) <= 10
    assert imagined.refused("k999") == (20.0, 1)
    assert imagined.banned("k999") == 20.0
    clock.advance(20)
    assert imagined.banned("k999") == 0.0
