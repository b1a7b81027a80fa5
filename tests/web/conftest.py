"""Fixtures shared by the framework adapter tests.

``storage`` is what every adapter test builds its limits on. Today it is
the in-process table only; the Redis storage joins the parameter list
(with a real redis-server fixture) once it lands, and every adapter test
then runs against both.
"""

from __future__ import annotations

from typing import Any

import pytest

from ..conftest import FakeClock


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
