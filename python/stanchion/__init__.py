"""stanchion: rate limiting and caching for Python web apps, with a C core."""

from ._core import Decision
from ._limiter import Limiter, RateLimitExceeded
from ._rates import Rate, parse_rates

__all__ = [
    "Decision",
    "Limiter",
    "Rate",
    "RateLimitExceeded",
    "parse_rates",
]

__version__ = "0.1.0"
