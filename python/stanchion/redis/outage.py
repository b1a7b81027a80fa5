"""Outages: what a Redis component does while Redis does not answer.

The log lines (one warning when an outage starts, one info line when it
ends, on the ``stanchion.redis`` logger, on stderr when nothing else would
show them) and who they name.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

logger = logging.getLogger("stanchion.redis")


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Outage lines for an application that configured no logging (plain
    uvicorn configures its own loggers only): on the stderr of the
    moment, with time, level and logger, as logging's last resort would
    write warnings without them."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
        )

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


_stderr_handler = _StderrHandler()


def _log(level: int, msg: str, *args: Any) -> None:
    """Log an outage line on ``stanchion.redis``; to stderr when no
    handler would take it. Then the threshold is the level set on our
    loggers, if any, else INFO (the default WARNING of a root logger
    nobody configured would hide that Redis is back)."""
    if logger.hasHandlers():
        logger.log(level, msg, *args)
        return
    if logger.disabled:
        return
    threshold = logger.level or logging.getLogger("stanchion").level or logging.INFO
    if level >= threshold:
        record = logger.makeRecord(logger.name, level, __file__, 0, msg, args, None)
        _stderr_handler.handle(record)


class _Who:
    """Who logs an outage: the component's name and what its callers get
    while Redis is down (its on_error policy)."""

    __slots__ = ("meanwhile", "name")

    def __init__(self, name: str, meanwhile: str) -> None:
        self.name = name
        self.meanwhile = meanwhile
