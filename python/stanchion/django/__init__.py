"""Rate limiting for Django.

Settings (all optional) in one dict::

    STANCHION = {
        "LIMIT": "100/minute",             # the middleware's limit, every request
        "KEY": None,                       # function or dotted path: request -> identity
        "TRUSTED_PROXIES": ["10.0.0.0/8"],
        "FORWARDED_HEADER": "X-Forwarded-For",
        "HEADERS": ["ratelimit", "x-ratelimit", "retry-after"],
        "HEADERS_ON_ALLOWED": True,
        "DRY_RUN": False,
        "EXEMPT_PATHS": ["/health", "/static/*"],
        "EXEMPT_METHODS": [],
        "UNIDENTIFIED": "deny",
        "CONCURRENCY": None,               # the middleware's: requests in flight
        "QUEUE": 0,                        # waiting for a slot, in arrival order
        "QUEUE_TIMEOUT": 30,               # seconds; then 503 (429 per client)
        "CONCURRENCY_PER": "global",       # or "client"
        "ALGORITHM": "token_bucket",
        "MAX_KEYS": 1_000_000,
        "STORAGE_URL": None,               # or "shm://myapp", "redis://..."
        "ENABLED": True,
    }

``MIDDLEWARE = [..., "stanchion.django.RateLimitMiddleware"]`` applies
``LIMIT`` to every request; it is sync and async capable (no thread hop
under ASGI). ``@ratelimit("5/minute", scope="login")`` limits one view
(function views, ``async def`` views, and class-based views through
``method_decorator``). Add ``"stanchion.django"`` to ``INSTALLED_APPS``
for the system check (``manage.py check``) of these settings; the
middleware and decorators also refuse bad settings when they are built,
at startup.

``CACHES = {"default": {"BACKEND": "stanchion.django.CacheBackend"}}`` is
a Django cache backend on stanchion's C cache (see
:mod:`stanchion.django.cache`).
"""

from __future__ import annotations

from .cache import CacheBackend
from .limits import DjangoRequest, RateLimitMiddleware, ratelimit
from .limits import _acheck as _acheck
from .limits import _add_headers as _add_headers
from .limits import _add_headers_slow as _add_headers_slow
from .limits import _check as _check
from .limits import _is_async as _is_async
from .limits import _needs_user as _needs_user
from .limits import _response as _response
from .limits import _view_of as _view_of
from .response_cache import CacheMiddleware, cache_response
from .response_cache import _CachedCall as _CachedCall
from .response_cache import _django_reply as _django_reply
from .response_cache import _django_upstream as _django_upstream
from .response_cache import _plan as _plan
from .response_cache import _visitors_own as _visitors_own
from .response_cache import check_middleware_order as check_middleware_order
from .settings import _named_errors as _named_errors
from .settings import _Settings as _Settings
from .settings import check_settings, stanchion_settings

__all__ = [
    "CacheBackend",
    "CacheMiddleware",
    "DjangoRequest",
    "RateLimitMiddleware",
    "cache_response",
    "check_settings",
    "ratelimit",
    "stanchion_settings",
]
