"""The request as the rules see it, the settings error, and the
constants the HTTP layer shares."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeAlias, Union

from .._limiter import RateLimiter
from .._rates import Rate

log = logging.getLogger("stanchion.http")

#: Header families a rule can send: the IETF draft fields (``RateLimit``
#: and ``RateLimit-Policy``), the common ``X-RateLimit-*`` trio, and
#: ``Retry-After`` (on 429 only).
HEADER_FAMILIES = ("ratelimit", "x-ratelimit", "retry-after")

#: Longest identity kept as is; longer ones (and ones that are not valid
#: UTF-8) are replaced by a hash, so a huge header cannot bloat the table.
MAX_IDENTITY = 200
#: Most forwarded hops examined (right to left) before giving up.
MAX_HOPS = 16
#: Longest peer or client name remembered in the per-address tables. A
#: peer is not always an address: uvicorn's --proxy-headers with
#: --forwarded-allow-ips='*' makes the client's own X-Forwarded-For text
#: the peer, up to the server's header limit.
MAX_ADDRESS = 64
#: Distinct rates a LimiterCache keeps before dropping the least used.
MAX_LIMITERS = 1024

PROBLEM_TYPE = "https://iana.org/assignments/http-problem-types#quota-exceeded"
NS = 1_000_000_000

#: A limit: a rate string, a Rate, a list of them, or a limiter object.
RateSpec: TypeAlias = Union[str, Rate, "list[str | Rate]", RateLimiter]


class SettingError(ValueError):
    """A bad setting, found when the rule is built (not on a request).

    ``setting`` is the keyword the value was given as; adapters re-raise
    with their own name for it (``STANCHION_DEFAULT_LIMIT``, ...)."""

    def __init__(self, setting: str, reason: str) -> None:
        self.setting = setting
        self.reason = reason
        super().__init__(f"{setting}: {reason}")


# -- the request as the rules see it -------------------------------------------


class Request:
    """A framework's request as the rules see it.

    ``native`` is the framework's own object (ASGI scope or Starlette
    request, WSGI environ, Flask or Django request, falcon request), for
    key functions that need more. ``client`` is the client address after
    the trusted-proxy walk, ``key`` the identity the rule settled on
    (both set while a rule decides, so a rate or cost function can use
    them). Adapters subclass it to read headers and the user their way.
    """

    __slots__ = ("_getter", "_user", "client", "key", "method", "native", "path")

    def __init__(
        self,
        method: str,
        path: str,
        get_header: Callable[[str], str | None] | None = None,
        native: Any = None,
        user: Callable[[], Any] | None = None,
    ) -> None:
        self.method = method
        self.path = path
        self._getter = get_header
        self.native = native
        self._user = user
        self.client: str | None = None
        self.key: str | None = None

    def _header(self, name: str) -> str | None:
        """Header ``name`` (lower case); adapters override this."""
        return self._getter(name) if self._getter is not None else None

    def header(self, name: str) -> str | None:
        """The value of header ``name`` (any case), repeated fields joined
        with ``", "``; ``None`` when absent."""
        return self._header(name.lower())

    @property
    def user(self) -> Any:
        """The authenticated user as the framework knows it, or ``None``."""
        return self._user() if self._user is not None else None

    def __repr__(self) -> str:
        return f"<stanchion.http.Request {self.method} {self.path!r}>"
