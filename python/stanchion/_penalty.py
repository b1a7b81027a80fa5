"""The penalty box: :class:`Penalty` (when and how long a key is banned),
:class:`Ban` (what the ban API answers) and the log line of each ban.

A key refused more than ``after`` times within ``within`` seconds is banned
for ``ban`` seconds: every hit is refused while the ban lasts, whatever its
rates would allow. Its n-th ban lasts ``ban * factor ** (n - 1)`` seconds,
at most ``max_ban`` (fail2ban's ``bantime.increment``).

* Refusals are counted in a window that opens at the first refusal counted
  and lasts ``within`` seconds (as mod_evasive's interval): the
  ``after + 1``-th refusal inside it bans, a refusal after it opens a new
  window, and a ban closes it. Refusals while banned are not counted.
* The ban count is forgotten when a key is not banned again within
  ``max(its last ban, within)`` seconds after that ban ended: a client
  must behave for as long as it was last banned (and at least ``within``)
  before its next ban is a first ban again.

The engines (``src/penalty.c`` in process, the Lua scripts of
``stanchion.redis``) implement exactly this; the rules are here once.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Hashable
from typing import NamedTuple

__all__ = ["Ban", "Penalty"]

logger = logging.getLogger("stanchion")

#: The longest span an engine stores (2**60 ns, about 36 years).
MAX_SPAN = 2**60 / 1e9


def _seconds(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(
            f"{name} must be a number of seconds, not {type(value).__name__}"
        )
    try:
        seconds = float(value)
    except OverflowError:
        seconds = math.inf
    if not math.isfinite(seconds) or not 1e-9 <= seconds <= MAX_SPAN:
        raise ValueError(
            f"{name} must be a finite number of seconds from 1e-9 to about "
            f"36 years, got {value!r}"
        )
    return seconds


class Penalty:
    """Ban keys that keep being refused: ``Penalty(after=K, within=W,
    ban=P, factor=2, max_ban=None)``; see the module's docstring for the
    exact rules. Pass it as ``Limiter(..., penalty=...)``.

    ``after``: refusals tolerated within ``within`` seconds (an int >= 1);
    ``ban``: the first ban in seconds; ``factor``: each further ban of the
    same key multiplied by it (>= 1; 1 keeps every ban at ``ban``);
    ``max_ban``: the longest ban in seconds (None: no cap but the
    engines' 36 years). Bad values raise TypeError or ValueError.
    """

    __slots__ = ("after", "ban", "factor", "max_ban", "within")

    after: int
    within: float
    ban: float
    factor: float
    max_ban: float | None

    def __init__(
        self,
        *,
        after: int,
        within: float,
        ban: float,
        factor: float = 2,
        max_ban: float | None = None,
    ) -> None:
        if isinstance(after, bool) or not isinstance(after, int):
            raise TypeError(f"after must be an int, not {type(after).__name__}")
        if not 1 <= after < 2**63:
            raise ValueError(f"after must be from 1 to 2**63 - 1, got {after!r}")
        within_s = _seconds("within", within)
        ban_s = _seconds("ban", ban)
        if isinstance(factor, bool) or not isinstance(factor, (int, float)):
            raise TypeError(f"factor must be a number, not {type(factor).__name__}")
        try:
            factor_f = float(factor)
        except OverflowError:
            factor_f = math.inf
        if not math.isfinite(factor_f) or factor_f < 1:
            raise ValueError(f"factor must be a finite number >= 1, got {factor!r}")
        max_s = None
        if max_ban is not None:
            max_s = _seconds("max_ban", max_ban)
            if max_s < ban_s:
                raise ValueError(
                    f"max_ban must be >= ban ({ban!r} seconds), got {max_ban!r}"
                )
        for name, value in (
            ("after", after),
            ("within", within_s),
            ("ban", ban_s),
            ("factor", factor_f),
            ("max_ban", max_s),
        ):
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Penalty is immutable")

    def __repr__(self) -> str:
        return (
            f"Penalty(after={self.after}, within={self.within:g}, ban={self.ban:g}, "
            f"factor={self.factor:g}, max_ban={self.max_ban!r})"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Penalty):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def _key(self) -> tuple[object, ...]:
        return (self.after, self.within, self.ban, self.factor, self.max_ban)

    def duration(self, n: int) -> float:
        """Seconds of a key's ``n``-th ban (n >= 1) in a row."""
        if isinstance(n, bool) or not isinstance(n, int):
            raise TypeError(f"n must be an int, not {type(n).__name__}")
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        cap = MAX_SPAN if self.max_ban is None else self.max_ban
        try:
            d = self.ban * self.factor ** (n - 1)
        except OverflowError:
            return cap
        return min(d, cap)

    def compiled(self) -> tuple[int, int, int, float, int]:
        """``(after, within_ns, ban_ns, factor, max_ban_ns)``, as the C
        engine takes it."""
        max_ns = 2**60 if self.max_ban is None else round(self.max_ban * 1e9)
        ban_ns = max(1, round(self.ban * 1e9))
        return (
            self.after,
            max(1, round(self.within * 1e9)),
            ban_ns,
            self.factor,
            max(ban_ns, min(max_ns, 2**60)),
        )


def check_penalty(penalty: object) -> Penalty | None:
    """``penalty`` if it is None or a Penalty; TypeError otherwise."""
    if penalty is not None and not isinstance(penalty, Penalty):
        raise TypeError(
            f"penalty must be a stanchion.Penalty or None, not {type(penalty).__name__}"
        )
    return penalty


class Ban(NamedTuple):
    """A key's penalty state, as ``bans()`` and ``get_ban(key)`` report it."""

    #: The client key, as the limiter was given it (Redis: as bytes; in
    #: shared memory, which stores hashes of keys, None in ``bans()``).
    key: str | bytes | None
    #: Seconds left on its ban; 0.0 when it is not banned now.
    remaining: float
    #: Its bans remembered for escalation (the current one included).
    ban_count: int
    #: Refusals counted in its open window (0 while banned).
    refusals: int = 0

    @property
    def banned(self) -> bool:
        return self.remaining > 0


#: The most characters (or bytes) of a key a log line shows.
LOG_KEY_CHARS = 200


def log_ban(key: object, seconds: float, count: int) -> None:
    """The log line of one ban (once per ban, never per refused hit). A
    client chooses its key's text: a long one is cut, so one ban cannot
    write megabytes to the log."""
    from .http.keys import describe_key  # a ban is rare: imported then

    described = describe_key(key)
    if described is not None:  # a web rule's packed client address
        shown = described
    elif isinstance(key, (str, bytes)) and len(key) > LOG_KEY_CHARS:
        shown = f"key {key[:LOG_KEY_CHARS]!r}... ({len(key)} long)"
    else:
        shown = f"key {key!r}"
    logger.warning(
        "stanchion: %s banned for %.3f s (ban %d in a row)", shown, seconds, count
    )


class DryRunBans:
    """The penalty box of a rule in dry run: which keys *would* be banned,
    by the rules above, kept in this process only (at most ``max_keys``
    keys; the table is emptied when full), never enforced, stored or
    listed by ``bans()``. Refusals that did not happen leave no ban in
    the limiter's storage; this table only says what to log."""

    __slots__ = ("_clock", "_keys", "_lock", "max_keys", "penalty")

    def __init__(
        self,
        penalty: Penalty,
        clock: Callable[[], float] | None = None,
        max_keys: int = 100_000,
    ) -> None:
        self.penalty = penalty
        self.max_keys = max_keys
        self._clock = clock or time.monotonic
        self._lock = threading.Lock()
        # key -> [window opened at, refusals in it, ban ends at, last ban's
        # length, bans in a row]
        self._keys: dict[Hashable, list[float]] = {}

    def banned(self, key: Hashable) -> float:
        """Seconds left on ``key``'s would-be ban (0.0: none)."""
        state = self._keys.get(key)
        if state is None:
            return 0.0
        left = state[2] - self._clock()
        return left if left > 0 else 0.0

    def refused(self, key: Hashable) -> tuple[float, int] | None:
        """Count a would-be refusal of ``key`` by its rates: ``(seconds,
        n)`` when it would be the key's n-th ban in a row, else None."""
        p = self.penalty
        with self._lock:
            now = self._clock()
            state = self._keys.get(key)
            if state is None:
                if len(self._keys) >= self.max_keys:
                    self._keys.clear()
                state = self._keys[key] = [now, 0, -math.inf, 0.0, 0]
            if now < state[2]:
                return None  # refusals while banned are not counted
            if state[1] == 0 or now - state[0] >= p.within:
                state[0], state[1] = now, 0
            state[1] += 1
            if state[1] <= p.after:
                return None
            if state[4] and now >= state[2] + max(state[3], p.within):
                state[4] = 0  # behaved long enough: a first ban again
            count = int(state[4]) + 1
            seconds = p.duration(count)
            state[1:] = [0, now + seconds, seconds, count]
            return seconds, count
