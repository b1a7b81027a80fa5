"""Fixtures shared by the framework adapter tests.

``storage`` is what every adapter test builds its limits on. Today it is
the in-process table only; the Redis storage joins the parameter list
(with a real redis-server fixture) once it lands, and every adapter test
then runs against both.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from stanchion import Decision, Limiter

from ..conftest import FakeClock
from ._respcache_apps import ADAPTERS, Harness


@pytest.fixture(params=["memory"])
def storage(request: pytest.FixtureRequest) -> Any:
    """The ``storage=`` value for limits: None is the in-process table."""
    return None


@pytest.fixture
def limits(storage: Any, clock: FakeClock) -> dict[str, Any]:
    """Settings every test limit gets: the storage, and a fake clock so
    that header values are exact."""
    return {"storage": storage, "clock": clock}


def problem(detail_wait: int, limit: int) -> dict[str, Any]:
    return {
        "type": "https://iana.org/assignments/http-problem-types#quota-exceeded",
        "title": "Too Many Requests",
        "status": 429,
        "detail": f"Rate limit of {limit} exceeded; retry in {detail_wait} "
        f"second{'s' if detail_wait != 1 else ''}.",
    }


class AsyncOnlyLimiter(Limiter):
    """An in-process limiter standing in for one whose blocking ``hit``
    must never run inside an event loop (a Redis storage on an asyncio
    client raises there; on a URL it blocks the loop): its ``hit``
    fails, ``ahit`` decides."""

    def hit(self, key: str | bytes, cost: int = 1) -> Decision:
        raise AssertionError("the blocking hit() ran inside the event loop")

    async def ahit(self, key: str | bytes, cost: int = 1) -> Decision:
        await asyncio.sleep(0)
        return Limiter.hit(self, key, cost)


@pytest.fixture(params=sorted(ADAPTERS))
def make(request: pytest.FixtureRequest, clock: FakeClock) -> Iterator[Any]:
    """For the response-cache tests: a function building harnesses of one adapter (every adapter in
    turn) on the test's fake clock, each closed after the test."""
    built: list[Harness] = []

    def build(**opts: Any) -> Harness:
        opts.setdefault("clock", clock)
        opts.setdefault("ttl", 10)
        h = ADAPTERS[request.param](**opts)
        built.append(h)
        return h

    yield build
    for h in built:
        h.close()
