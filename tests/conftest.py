from __future__ import annotations

import importlib.util
import os
from pathlib import Path

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


# The core suite (-m core): the C core and the pure-Python layer over it,
# with neither redis-server nor a web framework. It runs against installed
# wheels and sdists (cibuildwheel's test-command, .ci/run), so it must not
# need the source tree beyond tests/.
CORE_MODULES = frozenset(
    {
        "test_rates.py",
        "test_limiter.py",
        "test_limiter_model.py",
        "test_limiter_memory.py",
        "test_penalty.py",
        "test_cache.py",
        "test_cache_mapping.py",
        "test_cached.py",
        "test_concurrency.py",
        "test_core_reentrancy.py",
        "test_rate_headers.py",
        "test_report_pyparse.py",
    }
)
TESTS = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        path = Path(str(item.path))
        if path.parent == TESTS and path.name in CORE_MODULES:
            item.add_marker(pytest.mark.core)
        # A 3-master Redis Cluster takes seconds to start and to drive
        # from several processes: not for a quick run.
        if "redis_cluster" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """With -m core, the other modules are not even imported: the core
    suite runs where redis-py and the frameworks are not installed."""
    if config.getoption("markexpr", "") != "core":
        return None
    if collection_path.is_dir():
        return collection_path != TESTS and collection_path.parent == TESTS
    if collection_path.suffix == ".py" and collection_path.name.startswith("test_"):
        return collection_path.name not in CORE_MODULES
    return None


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes", "on")


def require_peers(*modules: str) -> None:
    """For the benchmark smoke tests: the peers a benchmark compares with.
    On a developer's machine without them the test skips; in CI (CI=true),
    where `.[bench]` is installed, a missing peer fails the test."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if not missing:
        return
    what = f"benchmark peers not installed: {', '.join(missing)} (pip install -e '.[bench]')"
    if in_ci():
        pytest.fail(what + "; CI must have them", pytrace=False)
    pytest.skip(what)


# Real redis-server fixtures (redis_server, private_redis, redis_cluster,
# redis_sentinel).
# Real memcached fixtures (memcached_server, private_memcached).
from ._memcached import memcached_server, private_memcached  # noqa: E402, F401
from ._redis import (  # noqa: E402, F401
    private_redis,
    redis_cluster,
    redis_sentinel,
    redis_server,
)
