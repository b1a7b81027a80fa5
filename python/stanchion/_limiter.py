"""The Limiter: the C core plus blocking and asyncio conveniences."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, overload, runtime_checkable

from . import _core
from ._core import Decision
from ._penalty import Ban, Penalty, check_penalty, log_ban
from ._rates import Rate, normalize_rates

__all__ = ["Decision", "Limiter", "RateLimitExceeded", "RateLimiter"]

ALGORITHMS = ("token_bucket", "fixed_window", "sliding_window")
ON_ERROR = ("allow", "deny", "raise")


def _check_algorithm(algorithm: object) -> str:
    if not isinstance(algorithm, str):
        raise TypeError(f"algorithm must be a str, not {type(algorithm).__name__}")
    if algorithm not in ALGORITHMS:
        raise ValueError(
            f"unknown algorithm {algorithm!r} (use 'token_bucket', "
            "'fixed_window' or 'sliding_window')"
        )
    return algorithm


class RateLimitExceeded(Exception):
    """Raised by ``acquire`` when a hit is not allowed within its timeout."""

    def __init__(self, decision: Decision, message: str | None = None) -> None:
        self.decision = decision
        self.retry_after = decision.retry_after
        super().__init__(
            message
            or f"rate limit exceeded (limit {decision.limit}); retry after "
            f"{decision.retry_after:.3f}s"
        )


@runtime_checkable
class RateLimiter(Protocol):
    """What every limiter offers, in process or shared: what
    ``Limiter(...)`` returns (a :class:`Limiter` for the in-process table,
    the storage's own limiter, such as ``RedisLimiter``, otherwise), and
    what the HTTP layer and the adapters take as ``limiter=``."""

    @property
    def rates(self) -> tuple[Rate, ...]: ...

    @property
    def algorithm(self) -> str: ...

    def hit(self, key: str | bytes, cost: int = 1) -> Decision: ...

    def peek(self, key: str | bytes, cost: int = 1) -> Decision: ...

    def reset(self, key: str | bytes | None = None) -> None: ...

    def acquire(
        self, key: str | bytes, cost: int = 1, timeout: float | None = None
    ) -> Decision: ...

    async def ahit(self, key: str | bytes, cost: int = 1) -> Decision: ...

    async def apeek(self, key: str | bytes, cost: int = 1) -> Decision: ...

    async def areset(self, key: str | bytes | None = None) -> None: ...

    async def aacquire(
        self, key: str | bytes, cost: int = 1, timeout: float | None = None
    ) -> Decision: ...


class InstantConveniences:
    """``acquire`` and the asyncio methods of a limiter whose ``hit``,
    ``peek`` and ``reset`` never wait (they decide in this process's
    memory): its ``a`` methods call them directly, without a thread hop."""

    __slots__ = ()

    def acquire(
        self, key: str | bytes, cost: int = 1, timeout: float | None = None
    ) -> Decision:
        """Hit, waiting while denied. With a ``timeout`` (seconds), raises
        RateLimitExceeded as soon as the wait would exceed it."""
        return wait_for_hit(self.hit, key, cost, timeout)  # type: ignore[attr-defined]

    async def ahit(self, key: str | bytes, cost: int = 1) -> Decision:
        """``hit`` for asyncio code (it decides at once: no thread hop)."""
        return self.hit(key, cost)  # type: ignore[attr-defined,no-any-return]

    async def apeek(self, key: str | bytes, cost: int = 1) -> Decision:
        """``peek`` for asyncio code."""
        return self.peek(key, cost)  # type: ignore[attr-defined,no-any-return]

    async def areset(self, key: str | bytes | None = None) -> None:
        """``reset`` for asyncio code."""
        self.reset(key)  # type: ignore[attr-defined]

    async def aacquire(
        self, key: str | bytes, cost: int = 1, timeout: float | None = None
    ) -> Decision:
        """Like ``acquire``, sleeping with asyncio (never blocks the loop)."""
        return await await_hit(self.ahit, key, cost, timeout)


class BanConveniences:
    """The ban API of a limiter whose C type answers ``_bans()``,
    ``_ban_state(key)`` and ``lift(key)`` in this process's memory (empty
    without a penalty): :class:`Ban` records and asyncio twins."""

    __slots__ = ()

    def bans(self) -> list[Ban]:
        """The keys banned now, as :class:`Ban` records."""
        return [Ban(k, left / 1e9, n) for k, left, n in self._bans()]  # type: ignore[attr-defined]

    def get_ban(self, key: str | bytes) -> Ban | None:
        """The key's penalty state (banned or not: ``Ban.remaining`` is 0.0
        when it is not banned now), or None when it has none."""
        state = self._ban_state(key)  # type: ignore[attr-defined]
        if state is None:
            return None
        left, count, refusals = state
        return Ban(key, left / 1e9, count, refusals)

    async def abans(self) -> list[Ban]:
        """``bans`` for asyncio code."""
        return self.bans()

    async def aget_ban(self, key: str | bytes) -> Ban | None:
        """``get_ban`` for asyncio code."""
        return self.get_ban(key)

    async def alift(self, key: str | bytes) -> bool:
        """``lift`` for asyncio code."""
        return self.lift(key)  # type: ignore[attr-defined,no-any-return]


class Limiter(BanConveniences, InstantConveniences, _core.Limiter):
    """Rate limiter keyed by client.

    ``hit``, ``peek`` and ``reset`` are C methods; this class adds the
    blocking ``acquire`` and the asyncio twins.

    ``Limiter(rates, storage=None)`` is an instance of this class (the
    in-process C table). ``Limiter(rates, storage=RedisStorage(...))``
    returns the storage's own limiter (a ``RedisLimiter``): not a
    ``Limiter``, but a :class:`RateLimiter` like it, with the same
    methods (``isinstance(lim, stanchion.RateLimiter)`` holds for both).

    ``clock`` (tests) is a callable returning seconds. A reading earlier
    than the last one counts as the last one, so time never runs backwards
    (even for a clock shared by threads); a reading that is not a finite
    number of seconds >= 0 raises ValueError. ``Cache`` treats its clock
    the same way.

    ``penalty`` (a :class:`stanchion.Penalty`) bans keys that keep being
    refused: a banned key's hits are refused (``Decision.banned``,
    ``retry_after`` the time left) whatever its rates would allow, in
    every storage. ``bans()``, ``get_ban(key)`` and ``lift(key)`` list,
    inspect and lift bans; each ban is logged once (logger
    ``"stanchion"``, WARNING). Penalty state counts against
    ``max_keys`` in a table of its own.
    """

    __slots__ = ("__weakref__", "_penalty", "_rates")

    # Without a storage: this class. With one: the storage's own limiter
    # (``RedisLimiter`` for a ``RedisStorage``), a :class:`RateLimiter`.
    @overload
    def __new__(
        cls,
        rates: str | Rate | list[str | Rate],
        *,
        algorithm: str = ...,
        burst: int | list[int | None] | None = ...,
        storage: None = ...,
        max_keys: int = ...,
        clock: Callable[[], float] | None = ...,
        on_error: str = ...,
        penalty: Penalty | None = ...,
    ) -> Limiter: ...

    @overload
    def __new__(  # type: ignore[misc]  # a storage's limiter is no Limiter
        cls,
        rates: str | Rate | list[str | Rate],
        *,
        algorithm: str = ...,
        burst: int | list[int | None] | None = ...,
        storage: object,
        max_keys: int = ...,
        clock: Callable[[], float] | None = ...,
        on_error: str = ...,
        penalty: Penalty | None = ...,
    ) -> RateLimiter: ...

    def __new__(
        cls,
        rates: str | Rate | list[str | Rate],
        *,
        algorithm: str = "token_bucket",
        burst: int | list[int | None] | None = None,
        storage: object = None,
        max_keys: int = 1_000_000,
        clock: Callable[[], float] | None = None,
        on_error: str = "allow",
        penalty: Penalty | None = None,
    ) -> Any:
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
        check_penalty(penalty)
        if storage is None:
            return super().__new__(cls)
        if clock is not None:
            raise ValueError(
                "clock applies to the in-process table only: a shared storage "
                "decides on its own clock (Redis: the server's TIME)"
            )
        make = getattr(storage, "make_limiter", None)
        if make is None:
            raise TypeError(
                f"unsupported storage {storage!r}: use None (in-process) or a "
                "stanchion storage such as RedisStorage"
            )
        # A shared storage decides elsewhere; it returns its own limiter
        # object with the same methods (and Limiter.__init__ is not run).
        # ``penalty`` is passed only when given, so a storage that knows
        # nothing of bans keeps working without one.
        extra = {} if penalty is None else {"penalty": penalty}
        return make(
            normalize_rates(rates),
            algorithm=_check_algorithm(algorithm),
            burst=burst,
            on_error=on_error,
            **extra,
        )

    def __init__(
        self,
        rates: str | Rate | list[str | Rate],
        *,
        algorithm: str = "token_bucket",
        burst: int | list[int | None] | None = None,
        storage: Any = None,
        max_keys: int = 1_000_000,
        clock: Callable[[], float] | None = None,
        on_error: str = "allow",
        penalty: Penalty | None = None,
    ) -> None:
        check_penalty(penalty)
        parsed = normalize_rates(rates)
        _check_algorithm(algorithm)
        if burst is not None and algorithm != "token_bucket":
            raise ValueError("burst applies to algorithm='token_bucket' only")
        if isinstance(max_keys, bool) or not isinstance(max_keys, int):
            raise TypeError(f"max_keys must be an int, not {type(max_keys).__name__}")
        super().__init__(
            parsed,
            algorithm,
            burst,
            max_keys,
            clock,
            None if penalty is None else penalty.compiled(),
            None if penalty is None else log_ban,
        )
        self._rates = tuple(parsed)
        self._penalty = penalty

    @property
    def rates(self) -> tuple[Rate, ...]:
        return self._rates

    @property
    def penalty(self) -> Penalty | None:
        """The :class:`Penalty` given, or None (no bans)."""
        return self._penalty

    def __repr__(self) -> str:
        rates = ";".join(str(r) for r in self._rates)
        extra = "" if self._penalty is None else f", penalty={self._penalty!r}"
        return f"Limiter({rates!r}, algorithm={self.algorithm!r}{extra})"


def wait_for_hit(
    hit: Callable[[str | bytes, int], Decision],
    key: str | bytes,
    cost: int,
    timeout: float | None,
) -> Decision:
    """``acquire`` for any limiter: hit, sleeping ``retry_after`` while
    denied; RateLimitExceeded at once when the wait would pass ``timeout``."""
    deadline = _deadline(timeout)
    while True:
        d = hit(key, cost)
        if d.allowed or not _can_wait(d, deadline):
            return _allowed_or_raise(d)
        time.sleep(d.retry_after)


async def await_hit(
    ahit: Callable[[str | bytes, int], Awaitable[Decision]],
    key: str | bytes,
    cost: int,
    timeout: float | None,
) -> Decision:
    """``aacquire`` for any limiter: ``wait_for_hit`` with asyncio sleeps."""
    deadline = _deadline(timeout)
    while True:
        d = await ahit(key, cost)
        if d.allowed or not _can_wait(d, deadline):
            return _allowed_or_raise(d)
        await asyncio.sleep(d.retry_after)


def _can_wait(d: Decision, deadline: float | None) -> bool:
    return deadline is None or time.monotonic() + d.retry_after <= deadline


def _allowed_or_raise(d: Decision) -> Decision:
    if not d.allowed:
        raise RateLimitExceeded(d)
    return d


def _deadline(timeout: float | None) -> float | None:
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(
            f"timeout must be a number of seconds, not {type(timeout).__name__}"
        )
    if timeout != timeout or timeout < 0:
        raise ValueError(f"timeout must be >= 0 seconds, got {timeout!r}")
    try:
        seconds = float(timeout)
    except OverflowError:  # an int too large for a float: no deadline
        seconds = math.inf
    return time.monotonic() + seconds
