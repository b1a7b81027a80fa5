"""Test helpers: switch limiting off, reset everything, drive time by hand.

``disabled()``
    a context manager (``with``/``async with``) and decorator under which
    every limiter of the process allows every hit and charges nothing:
    the in-process, shared-memory and Redis limiters, and so every
    middleware, decorator and dependency of the framework adapters built
    on them (no 429, no ban); every concurrency limit grants every hold
    at once, on no slot. Blocks nest and may be opened from any
    thread; they are process-wide, not per thread or task, so a server
    thread under test sees them too.
``reset_all()``
    every live ``Limiter``, ``Cache`` (``@cached``'s included) and
    response cache the process made, back to empty.
``fake_clock()`` / ``FakeClock``
    one clock for every limiter and cache of the process, advanced by
    hand: ``clock.advance(seconds)``. Objects made before it (an app
    built at import time) take it too, as do objects made while it is
    on; an object given a clock of its own (``clock=``) keeps it.

This module is also a pytest plugin (entry point ``stanchion``), with the
fixtures ``stanchion_clock`` (a :class:`FakeClock` installed for the
test, every limiter and cache reset before and after) and
``stanchion_reset`` (``reset_all()`` before and after the test).
"""

from __future__ import annotations

import functools
import inspect
import math
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from . import _core, _registry

__all__ = ["FakeClock", "disabled", "fake_clock", "reset_all"]

F = TypeVar("F", bound=Callable[..., Any])


class disabled:
    """Every limiter allows everything while a block is open.

    ``with disabled():``, ``async with disabled():``, or ``@disabled()``
    on a test function (plain or ``async def``). A denied hit becomes an
    allowed one that charges nothing (``remaining`` equals ``limit``), a
    banned key is let through, and the framework adapters therefore send
    no 429. A concurrency hold is held at once on no slot (its release,
    even after the block, gives nothing back). Keys are still checked (a
    bad key still raises). Blocks nest
    and count across threads; the limiting comes back when the last one
    closes.
    """

    __slots__ = ()

    def __enter__(self) -> disabled:
        _core._testing_disable(1)
        return self

    def __exit__(self, *exc: object) -> None:
        _core._testing_disable(-1)

    async def __aenter__(self) -> disabled:
        return self.__enter__()

    async def __aexit__(self, *exc: object) -> None:
        self.__exit__(*exc)

    def __call__(self, func: F) -> F:
        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                with disabled():
                    return await func(*args, **kwargs)

            return async_wrapper  # type: ignore[return-value]

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with disabled():
                return func(*args, **kwargs)

        return wrapper  # type: ignore[return-value]


def reset_all() -> None:
    """Forget every key of every live limiter (bans included) and every
    entry of every live cache and response cache (with their counts).

    Covers what the process made, at any time: the objects are tracked
    (weakly) as they are built. A shared-memory limiter's policy is
    emptied for every process; a Redis limiter's keys are deleted on the
    server. Concurrency limits are left alone: their holders are work in
    flight."""
    for obj in _registry.live():
        _registry.reset(obj)


class FakeClock:
    """A clock that moves only when told: ``clock()`` returns seconds,
    ``clock.advance(seconds)`` moves it on. Thread-safe.

    It starts at the wall-clock time it was made (any value would do:
    the objects given it start afresh), so wall-clock readers such as
    the response cache's ``Age`` see a plausible time."""

    __slots__ = ("_lock", "_now")

    def __init__(self, start: float | None = None) -> None:
        self._lock = threading.Lock()
        self._now = time.time() if start is None else _seconds(start, "start")

    def __call__(self) -> float:
        return self._now

    @property
    def now(self) -> float:
        """The current reading, in seconds."""
        return self._now

    def advance(self, seconds: float) -> float:
        """Move the clock ``seconds`` (>= 0) on; returns the new time."""
        step = _seconds(seconds, "seconds")
        with self._lock:
            self._now += step
            return self._now

    def __repr__(self) -> str:
        return f"FakeClock(now={self._now!r})"


def _seconds(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{what} must be a number, not {type(value).__name__}")
    s = float(value)
    if not math.isfinite(s) or s < 0:
        raise ValueError(f"{what} must be a finite number >= 0, got {value!r}")
    return s


@contextmanager
def fake_clock(start: float | None = None) -> Iterator[FakeClock]:
    """Install one :class:`FakeClock` for every limiter and cache of the
    process (on their default clock) for the block, resetting them as
    it starts and as it ends."""
    clock = FakeClock(start)
    reset_all()
    _registry.install_clock(clock)
    try:
        yield clock
    finally:
        _registry.uninstall_clock()
        reset_all()


# ---------------------------------------------------------------------------
# pytest plugin (loaded through the ``pytest11`` entry point)
# ---------------------------------------------------------------------------

try:
    import pytest
except ImportError:  # pragma: no cover - the helpers work without pytest
    pass
else:

    @pytest.fixture
    def stanchion_clock() -> Iterator[FakeClock]:
        """One fake clock for every limiter and cache of the app, for this
        test; advance it with ``stanchion_clock.advance(seconds)``."""
        with fake_clock() as clock:
            yield clock

    @pytest.fixture
    def stanchion_reset() -> Iterator[None]:
        """Every limiter and cache of the app empty as the test starts and
        again once it ends."""
        reset_all()
        yield
        reset_all()
