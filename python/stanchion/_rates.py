"""Rates: the ``"10/second;1000/day"`` notation and the Rate type."""

from __future__ import annotations

import math
from typing import NamedTuple

from . import _core

_UNITS = (
    (365 * 86400, "year"),
    (30 * 86400, "month"),
    (86400, "day"),
    (3600, "hour"),
    (60, "minute"),
    (1, "second"),
)


class Rate(NamedTuple):
    """``limit`` requests (or cost units) per ``period`` seconds."""

    limit: float
    period: float

    def __str__(self) -> str:
        n = int(self.limit) if float(self.limit).is_integer() else self.limit
        for seconds, name in _UNITS:
            k = self.period / seconds
            if k >= 1 and float(k).is_integer():
                if k == 1:
                    return f"{n}/{name}"
                return f"{n} per {int(k)} {name}s"
        return f"{n} per {self.period:g} seconds"

    @property
    def period_ns(self) -> int:
        return round(self.period * 1_000_000_000)


def parse_rates(text: str) -> list[Rate]:
    """Parse ``"10/second"``, ``"10 per minute"``, ``"100 per 2 hours"`` or
    several rates separated by ``;``, ``,`` or ``|`` (``"5/s;1000/day"``).

    Units: second, minute, hour, day, month (30 days) and year (365 days;
    the limits package counts 360), singular or plural, and the shorthands
    s/sec, m/min, h/hr, d, mo, y/yr. N and K may be fractional.

    Raises ValueError naming the bad part.

    Example:
        >>> parse_rates("5/s;1000/day")
        [Rate(limit=5, period=1.0), Rate(limit=1000, period=86400.0)]
    """
    return [Rate(n, ns / 1e9) for n, ns in _core.parse_rates(text)]


def normalize_rates(rates: object) -> list[Rate]:
    """Rates from a string, a Rate, or a list of strings and Rates."""
    if isinstance(rates, str):
        return parse_rates(rates)
    if (
        isinstance(rates, tuple)
        and len(rates) == 2
        and not isinstance(rates[0], (str, tuple))
    ):
        return [_checked(rates)]
    if isinstance(rates, (list, tuple)):
        out: list[Rate] = []
        for item in rates:
            if isinstance(item, str):
                out.extend(parse_rates(item))
            elif isinstance(item, tuple) and len(item) == 2:
                out.append(_checked(item))
            else:
                raise TypeError(
                    "rates must be a rate string such as '10/second', or a list "
                    f"of such strings or Rate objects, not {type(item).__name__}"
                )
        if not out:
            raise ValueError("a limiter needs at least one rate")
        return out
    raise TypeError(
        "rates must be a rate string such as '10/second', or a list of such "
        f"strings or Rate objects, not {type(rates).__name__}"
    )


def _checked(pair: tuple[object, object]) -> Rate:
    limit, period = pair
    for name, v in (("limit", limit), ("period", period)):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise TypeError(f"Rate {name} must be a number, not {type(v).__name__}")
        try:
            finite = math.isfinite(v)
        except OverflowError:  # an int too large for a float
            finite = False
        if not finite or v <= 0:
            raise ValueError(f"Rate {name} must be a positive finite number, got {v!r}")
    return Rate(limit, period)  # type: ignore[arg-type]
