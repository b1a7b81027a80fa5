"""What an upstream provider's answer says about waiting.

``pause_from_answer(status, headers)`` reads one answer of a rate-limited
API and gives the seconds its callers should wait before the next
request, or None when the answer says nothing about it:

1. ``Retry-After`` (delta-seconds or an HTTP-date), on any status, wins;
   ``Retry-After-Ms`` (milliseconds, sent by some APIs next to it) is
   read first when present, for its precision.
2. Otherwise, when the budget is spent (status 429 or 503, or an
   advertised remaining of 0), the time until the budget resets, from the
   first of these that holds a usable value: the IETF ``RateLimit`` field
   (``"default";r=0;t=30``, or the older ``limit=10, remaining=0,
   reset=5``), ``RateLimit-Reset``, ``X-RateLimit-Reset-After``,
   ``X-RateLimit-Reset`` (or ``X-Rate-Limit-Reset``), then
   ``X-RateLimit-Reset-Requests`` and ``X-RateLimit-Reset-Tokens``
   (durations such as ``6m0s``, each paired with its own remaining). A
   reset above 1e9 is a Unix time (seconds, or milliseconds when it reads
   as a time near ``now``), turned into seconds from ``now``.
3. Otherwise None: a 200 with budget left, or a 429 with nothing usable
   (the caller then applies its own back-off).

Headers come from anywhere: ``httpx.Headers``, a requests-style
case-insensitive mapping, a plain dict (names matched case-insensitively;
a value may be a list), or an iterable of ``(name, value)`` pairs of str
or bytes (latin-1). Several values of one header: the first valid one.

Providers' headers are untrusted input: a value that does not parse is
ignored, one longer than 1000 characters is not read, at most 4096 header
lines are looked at, and parsing is linear (no regular expressions). The
answer is None or a finite number in ``[0, max_seconds]``, never an
exception.
"""

from __future__ import annotations

import calendar
import math
import time
from collections.abc import Callable, Iterable, Iterator
from email.utils import parsedate_tz

__all__ = ["pause_from_answer", "retry_after_seconds"]

# A header value longer than this is not read (a date is 29 characters, a
# RateLimit field with a few policies well under 200).
MAX_VALUE = 1000
# Header lines looked at, at most (an answer has a few dozen).
MAX_LINES = 4096
# A number token longer than this is not a count of seconds.
_MAX_NUMBER = 40
# Resets above this are Unix times (1e9 s is 2001-09-09), below it deltas.
_EPOCH_FROM = 1e9
# A reset read as Unix milliseconds must land within this of now.
_MS_WINDOW = 366 * 86400.0

_RETRY_AFTER = "retry-after"
_RETRY_AFTER_MS = "retry-after-ms"
_RATELIMIT = "ratelimit"
# Deltas in seconds, or Unix times (above 1e9), in the order read.
_RESETS = (
    "ratelimit-reset",
    "x-ratelimit-reset-after",
    "x-ratelimit-reset",
    "x-rate-limit-reset",
)
_REMAINING = (
    "ratelimit-remaining",
    "x-ratelimit-remaining",
    "x-rate-limit-remaining",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-remaining-tokens",
)
_WATCHED = frozenset(
    (
        _RETRY_AFTER,
        _RETRY_AFTER_MS,
        _RATELIMIT,
        *_RESETS,
        "x-ratelimit-reset-requests",
        "x-ratelimit-reset-tokens",
        *_REMAINING,
    )
)
_SPENT_STATUSES = (429, 503)


# =============================================================================
# Headers: from whatever the caller has to {lowercase name: [values]}
# =============================================================================


def _text(item: object) -> str | None:
    if isinstance(item, str):
        return item
    if isinstance(item, (bytes, bytearray)):
        return bytes(item).decode("latin-1")
    if isinstance(item, (int, float)) and not isinstance(item, bool):
        return str(item)
    return None


def _pairs(headers: object) -> Iterable[object]:
    """The (name, value) items of ``headers``, repeated names included
    where the container keeps them apart."""
    if headers is None:
        return ()
    multi = getattr(headers, "multi_items", None)  # httpx, starlette
    if callable(multi):
        return multi()  # type: ignore[no-any-return]
    items = getattr(headers, "items", None)  # mappings, email.message
    if callable(items):
        return items()  # type: ignore[no-any-return]
    if isinstance(headers, (str, bytes, bytearray)) or not isinstance(
        headers, Iterable
    ):
        raise TypeError(
            "headers must be a mapping or an iterable of (name, value) pairs, "
            f"not {type(headers).__name__}"
        )
    return headers


def _values_of(value: object) -> Iterator[str]:
    text = _text(value)
    if text is not None:
        yield text
    elif isinstance(value, (list, tuple)):
        for v in value[:16]:
            text = _text(v)
            if text is not None:
                yield text


def _collect(headers: object) -> dict[str, list[str]]:
    """The values of the watched headers, by lowercase name, in order;
    overlong values left out."""
    found: dict[str, list[str]] = {}
    for n, item in enumerate(_pairs(headers)):
        if n >= MAX_LINES:
            break
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            continue
        name = _text(item[0])
        if name is None or len(name) > 64:
            continue
        name = name.strip().lower()
        if name not in _WATCHED:
            continue
        for text in _values_of(item[1]):
            if len(text) <= MAX_VALUE:
                found.setdefault(name, []).append(text)
    return found


def _pieces(values: list[str]) -> Iterator[str]:
    """Each value, then split at commas (a list folded into one line)."""
    for value in values:
        yield from value.split(",")


# =============================================================================
# Values: numbers, durations, dates
# =============================================================================


def _number(text: str) -> float | None:
    """A non-negative decimal (``5``, ``1.5``, ``.5``), or None. No signs,
    exponents, ``inf`` or ``nan``: float() alone would take them."""
    s = text.strip()
    if not s or len(s) > _MAX_NUMBER:
        return None
    digits = 0
    dots = 0
    for ch in s:
        if "0" <= ch <= "9":
            digits += 1
        elif ch == ".":
            dots += 1
        else:
            return None
    if digits == 0 or dots > 1:
        return None
    return float(s)


def _integer(text: str) -> int | None:
    """A count (a remaining): an integer with an optional minus sign, or a
    decimal (``0.0``, rounded down); None otherwise."""
    s = text.strip()
    negative = s.startswith("-")
    number = _number(s[1:] if negative else s)
    if number is None:
        return None
    count = math.floor(number)
    return -count if negative else count


_DURATION_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6}


def _duration(text: str) -> float | None:
    """A duration such as ``1s``, ``6m0s``, ``20ms``, ``1h2m3.5s`` (Go's
    notation, used by some APIs' reset headers), or a bare number of
    seconds; None otherwise."""
    s = text.strip().lower()
    plain = _number(s)
    if plain is not None:
        return plain
    if not s or len(s) > _MAX_NUMBER:
        return None
    total = 0.0
    i = 0
    while i < len(s):
        start = i
        while i < len(s) and ("0" <= s[i] <= "9" or s[i] == "."):
            i += 1
        amount = _number(s[start:i])
        start = i
        while i < len(s) and "a" <= s[i] <= "z":
            i += 1
        unit = _DURATION_UNITS.get(s[start:i])
        if amount is None or unit is None:
            return None
        total += amount * unit
    return total


def _http_date(text: str) -> float | None:
    """The Unix time of an HTTP-date (IMF-fixdate, RFC 850 or asctime;
    GMT unless it says otherwise), or None."""
    s = text.strip()
    if not s or not any("a" <= ch.lower() <= "z" for ch in s):
        return None  # a bare number is no date
    try:
        parts = parsedate_tz(s)
    except Exception:  # a parser of untrusted text: never let it raise
        return None
    if parts is None:
        return None
    year, month, day, hour, minute, second = parts[:6]
    offset = parts[9] or 0
    if not (
        1900 <= year <= 9999
        and 1 <= month <= 12
        and 1 <= day <= calendar.monthrange(year, month)[1]
        and 0 <= hour <= 23
        and 0 <= minute <= 59
        and 0 <= second <= 60
        and abs(offset) <= 86400
    ):
        return None
    return calendar.timegm((year, month, day, hour, minute, second)) - offset


def retry_after_seconds(value: str, now: float | None = None) -> float | None:
    """Seconds from ``now`` (wall clock, default time.time()) that one
    ``Retry-After`` value asks for: delta-seconds (fractions accepted) or
    an HTTP-date (0.0 once past); None when it is neither. Not clamped:
    ``pause_from_answer`` bounds it."""
    if not isinstance(value, str) or len(value) > MAX_VALUE:
        return None
    delta = _number(value)
    if delta is not None:
        return delta
    when = _http_date(value)
    if when is None:
        return None
    return max(0.0, when - (time.time() if now is None else now))


def _reset(value: float, now: float) -> float | None:
    """Seconds until a reset given as ``value``: a delta, or above 1e9 a
    Unix time in seconds, or in milliseconds when that lands near now."""
    if value <= _EPOCH_FROM:
        return value
    if value > 1e12:  # past the year 33658 in seconds: milliseconds?
        if abs(value / 1000.0 - now) <= _MS_WINDOW:
            return max(0.0, value / 1000.0 - now)
        return None
    return max(0.0, value - now)


# =============================================================================
# The IETF RateLimit field
# =============================================================================


def _split_outside_quotes(text: str, sep: str) -> list[str]:
    """``text`` split at ``sep`` where not inside a quoted string."""
    out: list[str] = []
    start = 0
    quoted = False
    escaped = False
    for i, ch in enumerate(text):
        if escaped:
            escaped = False
        elif quoted and ch == "\\":
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch == sep and not quoted:
            out.append(text[start:i])
            start = i + 1
    out.append(text[start:])
    return out


def _ratelimit_field(values: list[str]) -> list[tuple[int | None, float | None]]:
    """The (remaining, reset seconds) of each quota in ``RateLimit``
    values: the structured form's members (``"name";r=0;t=30``), or the
    older dictionary (``limit=10, remaining=0, reset=5``) as one quota."""
    quotas: list[tuple[int | None, float | None]] = []
    for value in values:
        old_remaining: int | None = None
        old_reset: float | None = None
        old = False
        for member in _split_outside_quotes(value, ","):
            parts = _split_outside_quotes(member, ";")
            head = parts[0].strip()
            if "=" in head and not head.startswith('"'):
                # The older dictionary: limit=, remaining=, reset=.
                name, _, raw = head.partition("=")
                name = name.strip().lower()
                if name == "remaining" and old_remaining is None:
                    old_remaining = _integer(raw)
                    old = True
                elif name == "reset" and old_reset is None:
                    old_reset = _number(raw)
                    old = True
                elif name == "limit":
                    old = True
                continue
            remaining: int | None = None
            reset: float | None = None
            for param in parts[1:]:
                name, _, raw = param.partition("=")
                name = name.strip().lower()
                if name == "r" and remaining is None:
                    remaining = _integer(raw)
                elif name == "t" and reset is None:
                    reset = _number(raw)
            if remaining is not None or reset is not None:
                quotas.append((remaining, reset))
        if old:
            quotas.append((old_remaining, old_reset))
    return quotas


# =============================================================================
# The answer
# =============================================================================


def _check_now(now: object) -> float:
    if now is None:
        return time.time()
    if isinstance(now, bool) or not isinstance(now, (int, float)):
        raise TypeError(f"now must be a number of seconds, not {type(now).__name__}")
    if not math.isfinite(now):
        raise ValueError(f"now must be a finite number of seconds, got {now!r}")
    return float(now)


def _check_max(max_seconds: object) -> float:
    if isinstance(max_seconds, bool) or not isinstance(max_seconds, (int, float)):
        raise TypeError(
            f"max_seconds must be a number of seconds, not {type(max_seconds).__name__}"
        )
    if not math.isfinite(max_seconds) or max_seconds <= 0:
        raise ValueError(
            f"max_seconds must be a finite number of seconds > 0, got {max_seconds!r}"
        )
    return float(max_seconds)


def _retry_after(found: dict[str, list[str]], now: float) -> float | None:
    for text in _pieces(found.get(_RETRY_AFTER_MS, [])):
        ms = _number(text)
        if ms is not None:
            return ms / 1000.0
    values = found.get(_RETRY_AFTER, [])
    for value in values:
        seconds = retry_after_seconds(value, now)
        if seconds is not None:
            return seconds
    # A list folded into one line ("120, 60").
    for text in _pieces(values):
        seconds = _number(text)
        if seconds is not None:
            return seconds
    return None


def _first(
    found: dict[str, list[str]], name: str, parse: Callable[[str], float | None]
) -> float | None:
    for text in _pieces(found.get(name, [])):
        value = parse(text)
        if value is not None:
            return float(value)
    return None


def _remaining_left(
    found: dict[str, list[str]], quotas: list[tuple[int | None, float | None]]
) -> int | None:
    """The smallest remaining the answer advertises, or None."""
    counts = [r for r, _ in quotas if r is not None]
    for name in _REMAINING:
        for text in _pieces(found.get(name, [])):
            count = _integer(text)
            if count is not None:
                counts.append(count)
                break
    return min(counts) if counts else None


def _reset_after(
    found: dict[str, list[str]],
    quotas: list[tuple[int | None, float | None]],
    now: float,
) -> float | None:
    """Seconds until the spent budget resets, from the first header that
    says it: the RateLimit field's spent quotas (the latest of them; or,
    when none reads as spent, the quota with the least left), then the
    reset headers."""
    timed = [(r, t) for r, t in quotas if t is not None]
    if timed:
        spent = [t for r, t in timed if r is not None and r <= 0]
        if spent:
            return _reset(max(spent), now)
        least = min((r for r, _ in timed if r is not None), default=None)
        resets = [t for r, t in timed if r == least]
        return _reset(max(resets), now)
    for name in _RESETS:
        value = _first(found, name, _number)
        if value is not None:
            seconds = _reset(value, now)
            if seconds is not None:
                return seconds
    # Per-resource budgets (requests, tokens), each with its remaining and
    # its reset: wait for the spent ones; for a refusal that names none,
    # for all.
    waits = []
    spent = []
    for resource in ("requests", "tokens"):
        wait = _first(found, f"x-ratelimit-reset-{resource}", _duration)
        if wait is None:
            continue
        waits.append(wait)
        left = _first(found, f"x-ratelimit-remaining-{resource}", _integer)
        if left is not None and left <= 0:
            spent.append(wait)
    if spent:
        return max(spent)
    return max(waits) if waits else None


def pause_from_answer(
    status: int,
    headers: object,
    *,
    now: float | None = None,
    max_seconds: float = 3600.0,
) -> float | None:
    """Seconds the provider asks its callers to wait before the next
    request, from one answer; None when it says nothing.

    ``status``: the answer's HTTP status. ``headers``: its headers (see
    the module's doc for the forms taken). ``now``: the wall clock
    (``time.time()``) for HTTP-dates and Unix-time resets. The result is
    clamped to ``[0, max_seconds]``."""
    if isinstance(status, bool) or not isinstance(status, int):
        raise TypeError(f"status must be an int, not {type(status).__name__}")
    wall = _check_now(now)
    bound = _check_max(max_seconds)
    found = _collect(headers)
    seconds = _retry_after(found, wall)
    if seconds is None:
        quotas = _ratelimit_field(found.get(_RATELIMIT, []))
        left = _remaining_left(found, quotas)
        if status in _SPENT_STATUSES or (left is not None and left <= 0):
            seconds = _reset_after(found, quotas, wall)
    if seconds is None or not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), bound)
