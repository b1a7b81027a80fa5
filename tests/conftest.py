from __future__ import annotations

import os

import pytest


class FakeClock:
    """A clock for limiters and caches: seconds as a float, moved by hand."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


# Under ASan (scripts/test-sanitize) freed memory sits in quarantine, so RSS
# says nothing about leaks there; the leak and flood tests check RSS only
# in the normal pass and rely on ASan itself in the sanitizer pass.
SANITIZED = bool(os.environ.get("STANCHION_SANITIZED"))


def pytest_report_header(config: pytest.Config) -> str:
    import stanchion._core

    if SANITIZED and "sanitize" not in str(stanchion._core.__file__):
        raise pytest.UsageError(
            f"sanitizer pass is testing the wrong build: {stanchion._core.__file__}"
        )
    return f"stanchion._core: {stanchion._core.__file__}"


# Real redis-server fixtures (redis_server, private_redis, redis_cluster,
# redis_sentinel).
from ._redis import (  # noqa: E402, F401
    private_redis,
    redis_cluster,
    redis_sentinel,
    redis_server,
)
