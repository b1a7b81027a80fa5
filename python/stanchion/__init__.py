"""stanchion: rate limiting and caching for Python web apps, with a C core."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import _registry  # noqa: F401  (tracks limiters and caches)
from ._cache import CacheBackend, cached
from ._concurrency import Concurrency, ConcurrencyLimitExceeded, Hold
from ._core import Cache, CacheInfo, Decision
from ._errors import StorageUnavailable
from ._limiter import Limiter, RateLimiter, RateLimitExceeded
from ._penalty import Ban, Penalty
from ._pool import Pool, PoolExhausted, Provider
from ._rates import Rate, parse_rates
from ._shm import SharedMemoryStorage

if TYPE_CHECKING:
    from .memcached import MemcachedCache, MemcachedStorage
    from .redis import RedisCache, RedisStorage

__all__ = [
    "Ban",
    "Cache",
    "CacheBackend",
    "CacheInfo",
    "Concurrency",
    "ConcurrencyLimitExceeded",
    "Decision",
    "Hold",
    "Limiter",
    "MemcachedCache",
    "MemcachedStorage",
    "Penalty",
    "Pool",
    "PoolExhausted",
    "Provider",
    "Rate",
    "RateLimitExceeded",
    "RateLimiter",
    "RedisCache",
    "RedisStorage",
    "SharedMemoryStorage",
    "StorageUnavailable",
    "cached",
    "parse_rates",
]


def _version() -> str:
    """The installed distribution's version: pyproject.toml is its one source."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("stanchion")
    except PackageNotFoundError:  # a source tree on sys.path, not installed
        return "0+unknown"


__version__ = _version()

# Imported on first use, so that `import stanchion` does not import redis
# or pymemcache.
_LAZY = {
    "RedisStorage": "redis",
    "RedisCache": "redis",
    "MemcachedStorage": "memcached",
    "MemcachedCache": "memcached",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'stanchion' has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
