"""The concurrency limit (``Rule(concurrency=...)``) in the Flask, Django
and hug adapters: which requests take one of a rule's slots, taking it
(the in-process engine's free slot first, with no waiting; else waiting
in the queue), and giving it back exactly once.

A request takes a slot of each of its rules after every rule's rate
limit let it through: a request refused by a rate never waits in a
queue. No slot in time: the rule's ``busy`` verdict (503, or 429 for a
client's own slots), without the rate limit headers of the rules that
let it through.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ._concurrency import Concurrency, ConcurrencyLimitExceeded
from .http import Request, Rule, Verdict

__all__ = ["Holds", "atake", "lane_of", "needs_slot", "take"]


def needs_slot(
    rule: Rule,
    verdict: Verdict | None,
    method: str,
    path: str,
    peer: str | None,
    header: Callable[[str], str | None] | None,
    view: Callable[[], Request] | None,
) -> bool:
    """Whether a request ``rule`` did not refuse (``verdict``) takes one
    of its slots (``rule.slots`` is not None): yes when its rate let it
    through (or would have, in dry run); with no verdict, only when the
    rule has no fixed rate (a concurrency limit alone, or a limit
    function that set none) and the request is neither exempt nor from
    an address on the allow list. ``view()`` builds the rule's Request
    view (for ``exempt_when``)."""
    if verdict is not None:
        return not verdict.blocked
    if rule._fixed is not None:
        return False  # exempt, on the allow list, or unidentified="allow"
    if rule._plain:
        return True
    if rule._exempt_simple(method, path):
        return False
    if rule._exempt_when is not None and view is not None and rule._exempt_when(view()):
        return False
    if rule.access:
        if header is not None and rule.client_address.has_proxies:
            client = rule.client_address.address(peer, header)
        else:
            client = peer or ""
        if rule.access.check(client) == "allow":
            return False
    return True


def take(rule: Rule, key: str | None, lane: int = 0) -> Any:
    """One of ``rule``'s slots for ``key`` in priority ``lane``, waiting
    in the queue if none is free (blocks the thread). Raises
    ConcurrencyLimitExceeded."""
    slots: Any = rule.slots
    if type(slots) is Concurrency:
        hold = slots.try_acquire(key, priority=lane)
        if hold is not None:
            return hold
    return slots.acquire(key, priority=lane)


async def atake(rule: Rule, key: str | None, lane: int = 0) -> Any:
    """:func:`take` for asyncio code (waits without blocking the loop)."""
    slots: Any = rule.slots
    if type(slots) is Concurrency:
        hold = slots.try_acquire(key, priority=lane)
        if hold is not None:
            return hold
    return await slots.aacquire(key, priority=lane)


def lane_of(rule: Rule, view: Callable[[], Request]) -> int:
    """The request's priority lane for ``rule`` (``view()`` builds the
    rule's Request view, only when the rule has a priority function)."""
    return rule.lane(view()) if rule.slot_priority is not None else 0


class Holds:
    """The slots one request holds, given back once: ``release()`` (or
    ``arelease()``) may be called from every exit path, from any thread;
    the first call gives them back, later ones do nothing."""

    __slots__ = ("_holds",)

    def __init__(self) -> None:
        self._holds: list[Any] = []

    def __bool__(self) -> bool:
        return bool(self._holds)

    def add(self, hold: Any) -> None:
        self._holds.append(hold)

    def take_all(
        self,
        rules: list[Rule],
        keys: list[str | None],
        lanes: list[int] | None = None,
    ) -> Verdict | None:
        """A slot of each rule (``keys[i]`` for ``rules[i]``, in lane
        ``lanes[i]``); on a refusal the slots taken so far are given back
        and the rule's ``busy`` verdict returned (a rule in dry run
        refuses nothing: the request goes on without its slot)."""
        lanes = lanes or [0] * len(rules)
        for rule, key, lane in zip(rules, keys, lanes, strict=True):
            try:
                self._holds.append(take(rule, key, lane))
            except ConcurrencyLimitExceeded as exc:
                busy = rule.busy(exc)
                if not busy.blocked:
                    continue  # dry run: served without this rule's slot
                self.release()
                return busy
        return None

    async def atake_all(
        self,
        rules: list[Rule],
        keys: list[str | None],
        lanes: list[int] | None = None,
    ) -> Verdict | None:
        """:meth:`take_all` for asyncio code."""
        lanes = lanes or [0] * len(rules)
        for rule, key, lane in zip(rules, keys, lanes, strict=True):
            try:
                self._holds.append(await atake(rule, key, lane))
            except ConcurrencyLimitExceeded as exc:
                busy = rule.busy(exc)
                if not busy.blocked:
                    continue  # dry run: served without this rule's slot
                await self.arelease()
                return busy
            except BaseException:  # cancelled while waiting
                await self.arelease()
                raise
        return None

    def release(self) -> None:
        """Give every slot back (the first call only)."""
        holds = self._holds
        while holds:
            try:
                hold = holds.pop()
            except IndexError:  # emptied by another thread meanwhile
                return
            hold.release()

    async def arelease(self) -> None:
        """:meth:`release` for asyncio code: a shared storage's slot is
        given back without blocking the loop."""
        holds = self._holds
        while holds:
            try:
                hold = holds.pop()
            except IndexError:
                return
            arelease = getattr(hold, "arelease", None)
            if arelease is None:
                hold.release()
            else:
                await arelease()
