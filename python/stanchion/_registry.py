"""Every live limiter and cache the process made, for stanchion.testing.

``_core`` tells :func:`track` of each ``Limiter`` and ``Cache`` as its
``__init__`` ends; the Python classes that keep state of their own (the
Redis limiter, the response cache) call it themselves. Objects are held
weakly: tracking keeps nothing alive. While a fake clock is installed
(:func:`install_clock`), objects made from then on take it at once.

A tracked object takes part through duck typing:

``reset()`` or ``clear()``
    what :func:`stanchion.testing.reset_all` calls (``reset_stats()``
    too, when it has one);
``clock`` and ``_set_clock(clock)``
    the clock it reads now and how to replace it; only an object on a
    default clock (None, ``time.monotonic``, ``time.time``) is given the
    fake one, since a clock a test injected itself is that test's.
"""

from __future__ import annotations

import functools
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

from . import _core

__all__ = [
    "disabled_now",
    "install_clock",
    "live",
    "reset",
    "track",
    "uninstall_clock",
]

_DEFAULT_CLOCKS: tuple[Any, ...] = (None, time.monotonic, time.time)

_lock = threading.RLock()
# By id, not by the object: a Cache is unhashable (a mutable mapping).
# A weak reference's callback drops the entry as the object dies, before
# its id can be reused.
_live: dict[int, weakref.ref[Any]] = {}
# id -> the clock the object had before it was given the fake one.
_swapped: dict[int, Any] = {}
_fake: Callable[[], float] | None = None


def _forget(ident: int, _ref: object = None) -> None:
    _live.pop(ident, None)
    _swapped.pop(ident, None)


def track(obj: Any) -> None:
    """Remember ``obj`` (weakly); give it the fake clock if one is on."""
    ident = id(obj)
    with _lock:
        if ident not in _live:
            try:
                _live[ident] = weakref.ref(obj, functools.partial(_forget, ident))
            except TypeError:
                # A bare _core object without a weak reference slot
                # (the public classes have one): it cannot be tracked.
                return
        if _fake is not None:
            _swap(obj, _fake)


def disabled_now() -> bool:
    """Whether a ``stanchion.testing.disabled()`` block is open: the
    limiters written in Python ask this; the C ones read it directly."""
    return bool(_core._testing_disable(0))


def live() -> list[Any]:
    """The tracked objects still alive."""
    with _lock:
        refs = list(_live.values())
    return [o for o in (r() for r in refs) if o is not None]


def reset(obj: Any) -> None:
    """Bring one tracked object back to its empty state."""
    if hasattr(obj, "reset"):
        obj.reset()
    elif hasattr(obj, "clear"):
        obj.clear()
    if hasattr(obj, "reset_stats"):
        obj.reset_stats()


def _swap(obj: Any, clock: Callable[[], float]) -> None:
    set_clock = getattr(obj, "_set_clock", None)
    if set_clock is None or id(obj) in _swapped:
        return
    current = getattr(obj, "clock", None)
    if not any(current is c for c in _DEFAULT_CLOCKS):
        return
    reset(obj)  # its state counts in the old clock's time
    set_clock(clock)
    _swapped[id(obj)] = current


def install_clock(clock: Callable[[], float]) -> None:
    """Give every tracked object on a default clock ``clock`` (their
    state reset), and every object made until :func:`uninstall_clock`."""
    global _fake
    with _lock:
        if _fake is not None:
            raise RuntimeError("a fake clock is installed already")
        _fake = clock
        for obj in live():
            _swap(obj, clock)


def uninstall_clock() -> None:
    """Give every object its own clock back, its state reset."""
    global _fake
    with _lock:
        _fake = None
        swapped = dict(_swapped)
        _swapped.clear()
        for ident, original in swapped.items():
            ref = _live.get(ident)
            obj = None if ref is None else ref()
            if obj is not None:
                reset(obj)
                obj._set_clock(original)


_core._testing_set_tracker(track)
