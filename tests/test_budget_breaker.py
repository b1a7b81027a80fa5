"""Budget's circuit breaker over each pauses table, and budgets sharing
one limiter and one pauses table."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator

import pytest

import stanchion
from stanchion import SharedMemoryStorage
from stanchion._budget import Budget
from stanchion._pauses import pauses_for

from ._redis import SLOW, RedisServer


@pytest.fixture(params=["memory", "shm", "redis"])
def make(
    request: pytest.FixtureRequest, clock
) -> Iterator[tuple[Callable[..., Budget], Callable[[float], None]]]:
    """A Budget factory on one storage, and how to let time pass: the fake
    clock where the table takes one, real time on Redis."""
    if request.param == "redis":
        from stanchion.redis import RedisStorage

        server: RedisServer = request.getfixturevalue("redis_server")
        storage = RedisStorage(
            server.url, prefix=f"t{uuid.uuid4().hex[:12]}:", timeout=SLOW
        )
        yield (lambda *a, **k: Budget(*a, storage=storage, **k)), time.sleep
        storage.close()
        return
    storage = None
    if request.param == "shm":
        storage = SharedMemoryStorage(f"test-budget-{uuid.uuid4().hex[:12]}")
    yield (lambda *a, **k: Budget(*a, storage=storage, clock=clock, **k)), clock.advance
    if storage is not None:
        storage.unlink(missing_ok=True)


def test_a_successful_probe_closes_the_breaker(make) -> None:
    new, advance = make
    budget = new("up", None, failures=2, cooldown=0.3)
    for _ in range(2):
        assert budget.take() == 0.0
        budget.settle(False)
    assert budget.state() == "open"
    assert 0.2 < budget.take() <= 0.3
    advance(0.31)
    assert budget.state() == "half_open"
    assert budget.take() == 0.0  # the probe
    # Others wait while it is out, asking again every 0.1 s (a claim
    # tells no one when it ends), not in a tight loop.
    assert budget.take() == pytest.approx(0.1)
    budget.settle(True)
    assert budget.state() == "closed"
    assert budget.take() == 0.0
    assert budget.take() == 0.0


def test_a_failed_probe_opens_it_again_and_it_reopens_after_closing(make) -> None:
    new, advance = make
    budget = new("up", None, failures=1, cooldown=0.3)
    budget.take()
    budget.settle(False)
    advance(0.31)
    assert budget.take() == 0.0
    budget.settle(False)  # the probe failed
    assert budget.state() == "open"
    advance(0.31)
    assert budget.state() == "half_open"
    assert budget.take() == 0.0
    budget.settle(True)
    assert budget.state() == "closed"
    # A new failure opens it again, and half-open follows the pause, though
    # the pauses that closed it are still running.
    assert budget.take() == 0.0
    budget.settle(False)
    assert budget.state() == "open"
    advance(0.31)
    assert budget.state() == "half_open"
    assert budget.take() == 0.0
    assert budget.take() > 0.0
    budget.settle(True)
    assert budget.state() == "closed"


def test_async_breaker_closes_after_a_successful_probe(make) -> None:
    import asyncio

    new, advance = make
    budget = new("up", None, failures=1, cooldown=0.3)

    async def run() -> None:
        assert await budget.atake() == 0.0
        await budget.asettle(False)
        advance(0.31)
        assert await budget.atake() == 0.0
        assert await budget.atake() == pytest.approx(0.1)
        await budget.asettle(True)
        assert budget.state() == "closed"
        assert await budget.atake() == 0.0
        storage = getattr(budget.pauses, "storage", None)
        if hasattr(storage, "aclose"):
            await storage.aclose()

    asyncio.run(run())


def test_budgets_share_one_limiter_and_one_pauses_table(clock) -> None:
    limiter = stanchion.Limiter("1/second", burst=1, clock=clock)
    pauses = pauses_for(None, clock=clock)
    a = Budget("a", limiter, pauses=pauses, clock=clock)
    b = Budget("b", limiter, pauses=pauses, clock=clock)
    assert a.limiter is limiter and a.pauses is pauses
    assert a.take() == 0.0
    assert b.take() == 0.0  # each its own key
    assert a.take() == pytest.approx(1.0)
    a.settle(False, answer=_Answer(429, {"Retry-After": "5"}))
    assert pauses.remaining("a") == pytest.approx(5.0)
    assert pauses.remaining("b") == 0.0
    assert repr(a) == "Budget('a', '1/second')"


def test_a_budget_without_rates_only_pauses(clock) -> None:
    budget = Budget("a", None, clock=clock)
    assert budget.limiter is None and budget.auto is None
    assert all(budget.take() == 0.0 for _ in range(100))
    budget.settle(True, answer=_Answer(503, {"Retry-After": "2"}))
    assert budget.take() == pytest.approx(2.0)
    assert repr(budget) == "Budget('a', None)"


class _Answer:
    def __init__(self, status: int, headers: dict[str, str]) -> None:
        self.status_code = status
        self.headers = headers


def test_an_abandoned_probe_lets_the_next_caller_probe(make) -> None:
    new, advance = make
    budget = new("up", None, failures=1, cooldown=0.3)
    budget.take()
    budget.settle(False)
    advance(0.31)
    assert budget.take() == 0.0  # the probe, then cancelled
    budget.abandon()
    assert budget.state() == "half_open"
    assert budget.take() == 0.0  # another probe, at once
    budget.settle(True)
    assert budget.state() == "closed"


def test_an_abandoned_call_counts_neither_way(clock) -> None:
    import asyncio

    budget = Budget("up", None, failures=2, clock=clock)
    budget.take()
    budget.settle(False)
    budget.take()
    budget.abandon()
    assert budget.state() == "closed"
    budget.take()
    asyncio.run(budget.aabandon())
    budget.take()
    budget.settle(False)  # the second failure in a row
    assert budget.state() == "open"
