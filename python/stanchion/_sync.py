"""Blocking paths that reuse the asyncio code: a flow written once as a
coroutine runs blocking when everything it awaits is done at once, so
it never suspends and one ``send`` runs it to the end."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

R = TypeVar("R")


def at_once(call: Callable[..., R]) -> Callable[..., Awaitable[R]]:
    """``call`` as a coroutine function that does not suspend."""

    async def now(*args: Any) -> R:
        return call(*args)

    return now


def run_at_once(coro: Coroutine[Any, Any, R]) -> R:
    """The result of a coroutine that never suspends, without an event
    loop. One that does suspend is closed, and this raises RuntimeError."""
    try:
        coro.send(None)
    except StopIteration as stop:
        result: R = stop.value
        return result
    coro.close()
    raise RuntimeError("a blocking call waited for an event loop")
