"""Budget: one upstream's rates, the pauses its answers ask for, its
circuit breaker and the "auto" pace, on an injected clock."""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time
import uuid
from typing import Any

import pytest

from stanchion import Limiter, SharedMemoryStorage
from stanchion._budget import Budget, answer_of

from ._redis import SLOW, RedisServer
from .conftest import FakeClock


class Answer:
    def __init__(
        self, status: int = 200, headers: dict[str, str] | None = None
    ) -> None:
        self.status_code = status
        self.headers = headers or {}


class Failed(Exception):
    def __init__(self, response: object) -> None:
        super().__init__("failed")
        self.response = response


def test_several_rates_are_paced_together(clock: FakeClock) -> None:
    # burst=1 (the default) with several rates: one burst per rate.
    b = Budget("up", "5/second;2 per 0.1 seconds", clock=clock)
    assert b.take() == 0.0
    assert b.take() == pytest.approx(0.2)  # the slower pace binds
    clock.advance(0.2)
    assert b.take() == 0.0


def test_several_rates_with_their_whole_bursts(clock: FakeClock) -> None:
    b = Budget("up", "5/second;2 per 0.1 seconds", burst=None, clock=clock)

    def allowed() -> int:
        n = 0
        while b.take() == 0.0:
            n += 1
        return n

    # 2 per 0.1 s binds first, then 5/s (refilling 1 per 0.2 s).
    counts = []
    for _ in range(5):
        counts.append(allowed())
        clock.advance(0.1)
    assert counts == [2, 2, 2, 0, 1]


def test_answer_of_reads_results_and_exceptions() -> None:
    assert answer_of(Answer(429, {"a": "b"})) == (429, {"a": "b"})
    assert answer_of(Failed(Answer(503))) == (503, {})
    assert answer_of(ValueError("x")) == (None, None)
    assert answer_of("text") == (None, None)

    class Aio:
        status = 201
        headers = {"x": "y"}

    assert answer_of(Aio()) == (201, {"x": "y"})


def test_retry_after_pauses_exactly_that_long(clock: FakeClock) -> None:
    b = Budget("up", "100/second", clock=clock)
    assert b.take() == 0.0
    assert b.settle(False, answer=Answer(429, {"Retry-After": "7"})) == 7.0
    assert b.state() == "open"
    assert b.take() == pytest.approx(7.0)
    clock.advance(6.999)
    assert b.take() == pytest.approx(0.001)
    clock.advance(0.001)
    assert b.take() == 0.0
    assert b.state() == "closed"


def test_an_exception_carrying_a_response_is_read(clock: FakeClock) -> None:
    b = Budget("up", "100/second", clock=clock)
    b.take()
    b.settle(False, error=Failed(Answer(503, {"Retry-After": "3"})))
    assert b.take() == pytest.approx(3.0)


def test_a_spent_ratelimit_on_a_success_pauses_until_its_reset(
    clock: FakeClock,
) -> None:
    b = Budget("up", "100/second", clock=clock)
    b.take()
    headers = {"RateLimit": '"default";r=0;t=12'}
    assert b.settle(True, answer=Answer(200, headers)) == 12.0
    assert b.take() == pytest.approx(12.0)


def test_bare_429s_back_off_doubling_up_to_the_cooldown(clock: FakeClock) -> None:
    b = Budget("up", "1000/second", burst=None, failures=100, cooldown=5.0, clock=clock)
    pauses = []
    for _ in range(5):
        clock.advance(10)
        assert b.take() == 0.0
        pauses.append(b.settle(False, answer=Answer(429)))
    assert pauses == [1.0, 2.0, 4.0, 5.0, 5.0]
    clock.advance(10)
    b.take()
    b.settle(True, answer=Answer(200))
    clock.advance(10)
    b.take()
    assert b.settle(False, answer=Answer(429)) == 1.0  # back to the start


def test_bare_429s_forever_stay_at_the_cooldown(clock: FakeClock) -> None:
    # An upstream answering bare 429s for hours: the back-off stays at the
    # cooldown (its doubling must not overflow a float after ~1024 429s).
    b = Budget("up", None, failures=1, cooldown=30.0, clock=clock)
    for _ in range(1100):
        clock.advance(100)
        assert b.take() == 0.0
        assert b.settle(False, answer=Answer(429)) == 30.0


class Odd:
    """A provider's own answer type: a status, and headers in no shape a
    header reader knows, or whose reading fails."""

    def __init__(self, headers: object) -> None:
        self.status = 429
        self._headers = headers

    @property
    def headers(self) -> object:
        if isinstance(self._headers, Exception):
            raise self._headers
        return self._headers


@pytest.mark.parametrize("headers", [5, "Retry-After: 3", object(), RuntimeError("x")])
def test_unreadable_headers_are_a_bare_answer(
    clock: FakeClock, headers: object
) -> None:
    # The headers are the upstream's (untrusted): unreadable ones are
    # ignored, the 429 still backs off, and a probe's claim is freed.
    b = Budget("up", None, failures=1, cooldown=10.0, clock=clock)
    assert b.take() == 0.0
    assert b.settle(False, answer=Odd(headers)) == 10.0  # the breaker opened
    clock.advance(10)
    assert b.take() == 0.0  # the probe
    assert b.settle(False, error=Failed(Odd(headers))) == 10.0
    clock.advance(10)
    assert b.take() == 0.0  # its claim was freed
    b.settle(True)
    assert b.state() == "closed"


def fail(b: Budget, n: int) -> None:
    for _ in range(n):
        assert b.take() == 0.0
        b.settle(False, error=ConnectionError("down"))


def test_breaker_opens_after_failures_then_one_probe(clock: FakeClock) -> None:
    b = Budget("up", "1000/second", burst=None, failures=3, cooldown=10.0, clock=clock)
    fail(b, 2)
    assert b.state() == "closed"
    fail(b, 1)
    assert b.state() == "open"
    assert b.take() == pytest.approx(10.0)
    clock.advance(10)
    assert b.state() == "half_open"
    assert b.take() == 0.0  # the probe
    assert b.take() > 0  # nobody else while it runs
    b.settle(True, answer=Answer(200))
    assert b.state() == "closed"
    assert b.take() == 0.0
    b.settle(True)


def test_a_failed_probe_opens_the_breaker_again(clock: FakeClock) -> None:
    b = Budget("up", "1000/second", burst=None, failures=3, cooldown=10.0, clock=clock)
    fail(b, 3)
    clock.advance(10)
    fail(b, 1)  # the probe, failing at once (not after 3)
    assert b.state() == "open"
    assert b.take() == pytest.approx(10.0)
    clock.advance(10)
    assert b.take() == 0.0
    b.settle(True)
    assert b.state() == "closed"


def test_another_calls_outcome_is_not_taken_for_the_probes(clock: FakeClock) -> None:
    b = Budget("up", "1000/second", burst=None, failures=3, cooldown=10.0, clock=clock)
    slow_taken = threading.Event()
    settle_now = threading.Event()

    def slow_call() -> None:
        # Let through while the breaker was closed; answers late.
        assert b.take() == 0.0
        slow_taken.set()
        settle_now.wait(10)
        b.settle(True, answer=Answer(200))

    t = threading.Thread(target=slow_call)
    t.start()
    assert slow_taken.wait(10)
    fail(b, 3)
    clock.advance(10)
    assert b.take() == 0.0  # this thread's probe
    settle_now.set()
    t.join()
    # The slow call's success is not the probe's: the breaker stays
    # half-open, and the probe's failure opens it again.
    assert b.state() == "half_open"
    b.settle(False, error=ConnectionError("still down"))
    assert b.state() == "open"


def test_cancel_frees_the_probe(clock: FakeClock) -> None:
    b = Budget("up", "1000/second", burst=None, failures=1, cooldown=10.0, clock=clock)
    fail(b, 1)
    clock.advance(10)
    assert b.take() == 0.0
    assert b.take() > 0
    b.abandon()
    assert b.take() == 0.0  # another caller may probe
    b.settle(True)
    assert b.state() == "closed"
    b.abandon()  # not probing: nothing to free
    assert b.state() == "closed"


class Stuck:
    """A limiter (a wrapped one) whose next hit raises, or whose asyncio
    hits wait until cancelled: a storage failing or slow at the moment a
    half-open probe spends its budget."""

    def __init__(self, clock: FakeClock) -> None:
        self.inner = Limiter("1000/second", clock=clock)
        self.rates = self.inner.rates
        self.algorithm = self.inner.algorithm
        self.fail = False
        self.entered = asyncio.Event()

    def hit(self, key: Any, cost: int = 1) -> Any:
        if self.fail:
            raise RuntimeError("storage failed")
        return self.inner.hit(key, cost)

    async def ahit(self, key: Any, cost: int = 1) -> Any:
        if self.fail:
            self.entered.set()
            await asyncio.Event().wait()  # until cancelled
        return self.inner.hit(key, cost)

    def peek(self, key: Any, cost: int = 1) -> Any:
        return self.inner.peek(key, cost)

    async def apeek(self, key: Any, cost: int = 1) -> Any:
        return self.inner.peek(key, cost)

    def reset(self, key: Any = None) -> None:
        self.inner.reset(key)

    async def areset(self, key: Any = None) -> None:
        self.inner.reset(key)

    def acquire(self, key: Any, cost: int = 1, timeout: Any = None) -> Any:
        raise NotImplementedError  # a Budget never waits in its limiter

    async def aacquire(self, key: Any, cost: int = 1, timeout: Any = None) -> Any:
        raise NotImplementedError


def test_a_probe_whose_budget_fails_frees_its_claim(clock: FakeClock) -> None:
    limiter = Stuck(clock)
    b = Budget("up", limiter, failures=1, cooldown=10.0, clock=clock)
    fail(b, 1)
    clock.advance(10)
    limiter.fail = True
    with pytest.raises(RuntimeError):
        b.take()  # claimed the probe, then the limiter failed
    limiter.fail = False
    assert b.take() == 0.0  # the claim was freed: this is the probe
    b.settle(True)
    assert b.state() == "closed"


async def test_a_probe_cancelled_while_spending_frees_its_claim(
    clock: FakeClock,
) -> None:
    limiter = Stuck(clock)
    b = Budget("up", limiter, failures=1, cooldown=10.0, clock=clock)
    fail(b, 1)
    clock.advance(10)
    limiter.fail = True
    task = asyncio.ensure_future(b.atake())
    await limiter.entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    limiter.fail = False
    assert await b.atake() == 0.0  # the claim was freed: this is the probe
    await b.asettle(True)
    assert b.state() == "closed"


def test_probes_of_many_budgets_leave_the_context_its_size(clock: FakeClock) -> None:
    # A long-lived thread probing many upstreams (an httpx transport's
    # hosts, made and dropped as they come) must not keep one context
    # entry per budget it ever probed.
    def probed() -> int:
        b = Budget(uuid.uuid4().hex, None, failures=1, cooldown=1.0, clock=clock)
        fail(b, 1)
        clock.advance(1)
        assert b.take() == 0.0  # the probe
        b.settle(True)
        return len(contextvars.copy_context())

    def run() -> list[int]:
        return [probed() for _ in range(50)]

    sizes = contextvars.Context().run(run)
    assert sizes[-1] == sizes[0]


def test_a_probe_without_budget_lets_the_next_caller_try(clock: FakeClock) -> None:
    b = Budget("up", "1 per 100 seconds", failures=1, cooldown=10.0, clock=clock)
    fail(b, 1)
    clock.advance(10)
    wait = b.take()  # claims the probe, finds no budget, frees it
    assert wait == pytest.approx(90.0)
    clock.advance(90)
    assert b.state() == "closed"  # half-open (10 s) passed with no probe
    assert b.take() == 0.0


def test_headroom_spends_nothing(clock: FakeClock) -> None:
    b = Budget("up", "3/minute", burst=None, clock=clock)
    assert b.headroom() == 3.0
    assert b.headroom() == 3.0
    b.take()
    assert b.headroom() == 2.0
    paced = Budget("up", "3/minute", clock=clock)
    assert paced.headroom() == 1.0
    paced.take()
    assert paced.headroom() == 0.0


def test_auto_paces_increases_and_halves(clock: FakeClock) -> None:
    b = Budget("up", "auto", auto_start=2.0, auto_increase=1.0, clock=clock)
    assert b.auto is not None
    assert b.headroom() == 1.0
    assert b.take() == 0.0
    assert b.headroom() == 0.0
    assert b.take() == pytest.approx(0.5)
    clock.advance(0.5)
    b.settle(True)
    assert b.auto.rate == pytest.approx(2.5)  # +1/s per second of calls
    assert b.take() == 0.0
    assert b.settle(False, answer=Answer(429)) == 1.0
    assert b.auto.rate == pytest.approx(1.25)
    assert b.state() == "open"


def test_auto_stays_within_its_bounds(clock: FakeClock) -> None:
    b = Budget("up", "auto", auto_start=1.0, auto_min=0.5, auto_max=2.0, clock=clock)
    assert b.auto is not None
    for _ in range(50):
        b.settle(True)
    assert b.auto.rate == 2.0
    for _ in range(5):
        b.settle(False, answer=Answer(429, {"Retry-After": "0"}))
    assert b.auto.rate == 0.5


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"name": ""}, ValueError),
        ({"name": 3}, TypeError),
        # NUL ends a name in the keys of its breaker: "a\x00half" would
        # be upstream "a"'s half-open marker.
        ({"name": "a\x00half"}, ValueError),
        ({"failures": 0}, ValueError),
        ({"failures": 1.5}, TypeError),
        ({"cooldown": 0}, ValueError),
        ({"cooldown": float("nan")}, ValueError),
        ({"max_pause": -1}, ValueError),
        ({"rate": "5 per fortnight"}, ValueError),
        ({"rate": "auto", "auto_start": 5.0, "auto_max": 2.0}, ValueError),
        ({"rate": "auto", "auto_min": "1"}, TypeError),
    ],
)
def test_bad_arguments(kwargs: dict[str, object], error: type[Exception]) -> None:
    args: dict[str, object] = {"name": "up", "rate": "1/second", **kwargs}
    with pytest.raises(error):
        Budget(args.pop("name"), args.pop("rate"), **args)  # type: ignore[arg-type]


async def test_async_twins(clock: FakeClock) -> None:
    b = Budget("up", "1000/second", burst=None, failures=2, cooldown=10.0, clock=clock)
    assert await b.atake() == 0.0
    assert await b.asettle(False, answer=Answer(429, {"Retry-After": "4"})) == 4.0
    assert await b.atake() == pytest.approx(4.0)
    clock.advance(4)
    assert await b.atake() == 0.0
    await b.asettle(False, error=ConnectionError("down"))  # 2 in a row
    assert b.state() == "open"
    clock.advance(10)
    assert await b.atake() == 0.0
    assert await b.atake() > 0
    await b.aabandon()
    assert await b.atake() == 0.0
    await b.asettle(True)
    assert b.state() == "closed"
    assert await b.aheadroom() == 998.0  # 1000 - the two probes since the refill


def test_the_breaker_opens_again_after_it_closed(clock: FakeClock) -> None:
    b = Budget("up", "1000/second", burst=None, failures=2, cooldown=10.0, clock=clock)
    fail(b, 2)
    clock.advance(10)
    assert b.take() == 0.0
    b.settle(True)
    assert b.state() == "closed"
    clock.advance(1)
    fail(b, 2)  # within the first opening's half-open window
    assert b.state() == "open"
    clock.advance(10)
    assert b.state() == "half_open"
    assert b.take() == 0.0
    assert b.take() == pytest.approx(0.1)  # the probe is out: look again soon
    b.settle(True)
    assert b.state() == "closed"


def test_a_long_pause_then_a_short_cooldown_is_half_open_again(
    clock: FakeClock,
) -> None:
    b = Budget("up", "1000/second", burst=None, failures=1, cooldown=5.0, clock=clock)
    b.take()
    b.settle(False, answer=Answer(503, {"Retry-After": "100"}))  # opens for 100 s
    clock.advance(100)
    b.take()
    b.settle(True)  # closed, though the first opening's marker runs on
    clock.advance(1)
    fail(b, 1)
    clock.advance(5)
    assert b.state() == "half_open"
    assert b.take() == 0.0
    assert b.take() > 0


def test_huge_pauses_are_refused() -> None:
    with pytest.raises(ValueError, match="cooldown"):
        Budget("up", "1/second", cooldown=1e12)
    with pytest.raises(ValueError, match="max_pause"):
        Budget("up", "1/second", max_pause=10**400)


def two_budgets(storage: object) -> tuple[Budget, Budget]:
    """Two budgets of one upstream sharing ``storage``, as two processes
    would."""
    name = f"up-{uuid.uuid4().hex[:8]}"
    kw: dict[str, Any] = {
        "burst": None,
        "failures": 1,
        "cooldown": 0.3,
        "storage": storage,
    }
    return Budget(name, "1000/second", **kw), Budget(name, "1000/second", **kw)


def check_shared_breaker(a: Budget, b: Budget) -> None:
    assert a.take() == 0.0
    a.settle(False, error=ConnectionError("down"))
    assert b.state() == "open"
    assert 0.2 < b.take() <= 0.3
    time.sleep(0.35)
    assert b.state() == "half_open"
    assert a.take() == 0.0  # a's probe...
    assert b.take() == pytest.approx(0.1)  # ...is the only one
    a.settle(True)
    assert b.state() == "closed"
    assert b.take() == 0.0


def test_the_breaker_is_shared_through_shared_memory() -> None:
    storage = SharedMemoryStorage(f"test-budget-{uuid.uuid4().hex[:12]}")
    try:
        check_shared_breaker(*two_budgets(storage))
    finally:
        storage.unlink(missing_ok=True)


def test_the_breaker_is_shared_through_redis(redis_server: RedisServer) -> None:
    from stanchion.redis import RedisStorage

    storage = RedisStorage(redis_server.url, timeout=SLOW)
    try:
        check_shared_breaker(*two_budgets(storage))
    finally:
        storage.close()
