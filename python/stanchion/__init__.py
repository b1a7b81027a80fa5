"""stanchion: rate limiting and caching for Python web apps, with a C core."""

from ._cache import CacheBackend, cached
from ._core import Cache, CacheInfo, Decision
from ._limiter import Limiter, RateLimitExceeded
from ._rates import Rate, parse_rates

__all__ = [
    "Cache",
    "CacheBackend",
    "CacheInfo",
    "Decision",
    "Limiter",
    "Rate",
    "RateLimitExceeded",
    "cached",
    "parse_rates",
]

__version__ = "0.1.0"
