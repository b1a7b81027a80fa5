"""Outages: what a component on a shared server (Redis, Memcached) does
while the server does not answer.

``_Outage`` is the state machine of one server's outages (when one
started, which call may probe the server next, which outcomes are
stale), shared by every limiter and cache on the same connections; a
storage subclasses it to name its server (``service``), its logger and
the errors that mean "no answer" (``failures``). ``_Guard`` is the one
way a call goes through it, blocking (``call``) or asyncio (``acall``):
skip the server during an outage except to probe it, record a failure or
a recovery, and hand the caller either the reply or an ``_Unavailable``
that it turns into its ``on_error`` answer. Also the log lines (one
warning when an outage starts, one info line when it ends, on the
storage's logger, on stderr when nothing else would show them) and who
they name.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any


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


def _log(logger: logging.Logger, level: int, msg: str, *args: Any) -> None:
    """Log an outage line on ``logger`` (``stanchion.redis``, ...); to
    stderr when no handler would take it. Then the threshold is the level
    set on our loggers, if any, else INFO (the default WARNING of a root
    logger nobody configured would hide that the server is back)."""
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


class _Outage:
    """The outage state of one server: ``skip``, ``failed``, ``recovered``.

    ``where`` names the server in the log lines; a subclass sets
    ``service`` (its name in them), ``logger`` and ``failures`` (the
    exceptions a call raises when the server did not answer)."""

    service = "the server"
    logger = logging.getLogger("stanchion")
    failures: tuple[type[BaseException], ...] = (OSError,)

    def __init__(self, retry_interval: float) -> None:
        self.retry_interval = retry_interval
        self.where = ""
        self._lock = threading.Lock()
        # The clock of the outage state (its start, the retry interval):
        # monotonic seconds; tests move a fake one by hand.
        self.clock: Callable[[], float] = time.monotonic
        self.down_since: float | None = None  # clock() at the start of an outage
        self._retry_at = 0.0
        # Bumped when an outage starts and when it ends. A call takes the
        # epoch when it starts, and its outcome counts only if the state
        # is still the one it started in: a call sent before Redis came
        # back that fails afterwards does not open a new outage, and one
        # sent before the outage began that succeeds during it (threads,
        # tasks in flight) does not end it.
        self.epoch = 0
        self.last_error: BaseException | None = None

    def skip(self) -> bool:
        """During an outage, True for calls that should not try Redis now
        (one call per retry_interval probes it)."""
        now = self.clock()
        if now < self._retry_at:
            return True
        with self._lock:
            if now < self._retry_at:
                return True
            self._retry_at = now + self.retry_interval
        return False

    def failed(self, exc: BaseException, epoch: int, who: _Who) -> None:
        """Record a failed call of ``who`` that started at ``epoch``."""
        now = self.clock()
        with self._lock:
            if epoch != self.epoch:
                return  # started in another state: stale news
            self._retry_at = now + self.retry_interval
            self.last_error = exc
            if self.down_since is not None:
                return
            self.down_since = now
            self.epoch += 1
        _log(
            self.logger,
            logging.WARNING,
            "%s: %s at %s is unavailable (%s: %s); %s until it answers again",
            who.name,
            self.service,
            self.where,
            type(exc).__name__,
            exc,
            who.meanwhile,
        )

    def recovered(self, epoch: int, who: _Who) -> None:
        """Record a success of ``who``'s call that started at ``epoch``:
        the end of the outage if the call started during it."""
        with self._lock:
            since = self.down_since
            if since is None or epoch != self.epoch:
                return
            self.down_since = None
            self._retry_at = 0.0
            self.last_error = None
            self.epoch += 1
        _log(
            self.logger,
            logging.INFO,
            "%s: %s at %s is available again after %.3f s",
            who.name,
            self.service,
            self.where,
            self.clock() - since,
        )


class _Unavailable:
    """What a guarded call gives instead of a reply when the server did
    not answer (or was not asked, during an outage): the error to chain."""

    __slots__ = ("cause",)

    def __init__(self, cause: BaseException | None) -> None:
        self.cause = cause


class _Guard:
    """One component's calls through its server's outage state.

    ``call``/``acall`` run one I/O step (a function of a link) and give
    its reply, or an ``_Unavailable``: during an outage only one call per
    retry interval tries the server (the others are not sent), a failure is
    recorded (and logged once per outage) and the first answer to a call
    started during the outage ends it. The two differ only in awaiting."""

    __slots__ = ("outage", "who")

    def __init__(self, outage: _Outage, who: _Who) -> None:
        self.outage = outage
        self.who = who

    def _failed(self, exc: BaseException, epoch: int) -> _Unavailable:
        self.outage.failed(exc, epoch, self.who)
        return _Unavailable(exc)

    # The two shells share every step but the await; the outage checks
    # are inlined (a hit goes through here: no extra calls when the server
    # is up; ``outage.failures`` is looked up only when a call raised).

    def call(self, io: Callable[..., Any], *args: Any) -> Any:
        outage = self.outage
        epoch = outage.epoch
        if outage.down_since is not None and outage.skip():
            return _Unavailable(outage.last_error)
        try:
            reply = io(*args)
        except outage.failures as exc:
            return self._failed(exc, epoch)
        if outage.down_since is not None:
            outage.recovered(epoch, self.who)
        return reply

    async def acall(self, io: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        outage = self.outage
        epoch = outage.epoch
        if outage.down_since is not None and outage.skip():
            return _Unavailable(outage.last_error)
        try:
            reply = await io(*args)
        except outage.failures as exc:
            return self._failed(exc, epoch)
        if outage.down_since is not None:
            outage.recovered(epoch, self.who)
        return reply
