"""stanchion: rate limiting and caching for Python web apps, with a C core."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._cache import CacheBackend, cached
from ._core import Cache, CacheInfo, Decision
from ._errors import StorageUnavailable
from ._limiter import Limiter, RateLimiter, RateLimitExceeded
from ._rates import Rate, parse_rates

if TYPE_CHECKING:
    from .redis import RedisCache, RedisStorage

__all__ = [
    "Cache",
    "CacheBackend",
    "CacheInfo",
    "Decision",
    "Limiter",
    "Rate",
    "RateLimitExceeded",
    "RateLimiter",
    "RedisCache",
    "RedisStorage",
    "StorageUnavailable",
    "cached",
    "parse_rates",
]

__version__ = "0.1.0"

# Imported on first use, so that `import stanchion` does not import redis.
_LAZY = {"RedisStorage": "redis", "RedisCache": "redis"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'stanchion' has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
