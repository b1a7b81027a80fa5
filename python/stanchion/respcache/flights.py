"""What blocking and asyncio callers do differently: the waiting.

The steps of a miss and of a background refresh are written once, in
:mod:`stanchion.respcache.serving`, as generators that yield each I/O
step instead of doing it: :data:`CALL` (call the upstream; the answer
is sent back), an :class:`Entry` (store it), or a flight (wait until it
lands; the entry it stored is sent back). :func:`arun` does those
steps, awaiting each; :func:`run` drives the same coroutine without an
event loop, for blocking callers. :class:`_ThreadFlight` (a
``threading.Event``) and :class:`_LoopFlight` (an asyncio future) are
the two ways to wait for another caller's flight: with the spawning of
a background refresh (a thread or a task), the only things that differ
between ``serve`` and ``aserve``.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Generator
from typing import Any, TypeAlias, TypeVar

from .._sync import at_once, run_at_once
from .entries import Entry, Upstream

R = TypeVar("R")

#: The step that calls the upstream.
CALL = "call"


class _ThreadFlight:
    """An upstream call in flight for blocking callers."""

    __slots__ = ("done", "entry")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.entry: Entry | None = None

    def can_join(self, other: Flight) -> bool:
        return type(other) is _ThreadFlight

    async def wait(self) -> Entry | None:
        # Awaited only by run(), outside any event loop: blocking is its job.
        self.done.wait()
        return self.entry

    def land(self, entry: Entry | None) -> None:
        self.entry = entry
        self.done.set()


class _LoopFlight:
    """An upstream call in flight for the tasks of one event loop."""

    __slots__ = ("future",)

    def __init__(self) -> None:
        self.future: asyncio.Future[Entry | None] = (
            asyncio.get_running_loop().create_future()
        )

    def can_join(self, other: Flight) -> bool:
        return (
            type(other) is _LoopFlight
            and other.future.get_loop() is self.future.get_loop()
        )

    async def wait(self) -> Entry | None:
        return await asyncio.shield(self.future)

    def land(self, entry: Entry | None) -> None:
        self.future.set_result(entry)


Flight: TypeAlias = "_ThreadFlight | _LoopFlight"
#: The steps of a flow: what it yields, what it is sent, what it returns.
Steps: TypeAlias = Generator["str | Entry | Flight", Any, R]


async def arun(
    steps: Steps[R],
    upstream: Callable[[], Awaitable[Upstream]],
    put: Callable[[Entry], Awaitable[None]],
) -> R:
    """Do the steps of a flow, awaiting each; its result. The flow's own
    ``except`` and ``finally`` clauses see every error of a step, and
    any exception it does not catch comes out of here."""
    sent: Any = None
    error: BaseException | None = None
    while True:
        try:
            step = steps.send(sent) if error is None else steps.throw(error)
        except StopIteration as stop:
            result: R = stop.value
            return result
        sent = error = None
        try:
            if step is CALL:
                sent = await upstream()
            elif isinstance(step, Entry):
                await put(step)
            elif not isinstance(step, str):
                sent = await step.wait()
        except BaseException as exc:  # thrown into the flow at its step
            error = exc


def run(
    steps: Steps[R],
    upstream: Callable[[], Upstream],
    put: Callable[[Entry], None],
) -> R:
    """Do the steps of a flow blocking; its result. This is :func:`arun`
    without an event loop: every step it awaits is done at once (a
    ``_ThreadFlight`` blocks in its ``wait``), so its coroutine never
    suspends and one ``send`` runs it to the end."""
    return run_at_once(arun(steps, at_once(upstream), at_once(put)))
