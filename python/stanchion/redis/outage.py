"""Outages of a Redis server: the shared outage machinery
(``stanchion._outage``) with Redis's name, logger and errors.

``_Outage`` is the state machine of one server's outages, shared by every
limiter and cache on the same connections; ``_Guard`` is the one way a
call goes through it. The log lines go to the ``stanchion.redis``
logger (on stderr when nothing else would show them).
"""

from __future__ import annotations

import logging

from .._outage import _Guard as _Guard
from .._outage import _Outage as _BaseOutage
from .._outage import _stderr_handler as _stderr_handler
from .._outage import _StderrHandler as _StderrHandler
from .._outage import _Unavailable as _Unavailable
from .._outage import _Who as _Who
from .links import _FAILURES

logger = logging.getLogger("stanchion.redis")


class _Outage(_BaseOutage):
    """The outage state of one Redis server (or cluster)."""

    service = "Redis"
    logger = logger
    failures = _FAILURES
