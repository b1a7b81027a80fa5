"""Replay parsed log lines through a real :class:`~stanchion.Limiter`.

The limiter's clock is injected: before each line's hit it reads that
line's timestamp (epoch seconds), so the log is judged on its own time,
as fast as the lines come. The limiter counts each line once (cost 1);
what it refuses is tallied per key (a bounded space-saving table, like
the parser's), per second of the log, and, with a penalty, the bans it
hands out: a hit refused with ``Decision.banned`` at or after the end of
the key's last ban starts a new one (the engine reports the ban's full
length on the hit that triggers it).
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from .._limiter import Limiter
from .._penalty import Penalty
from .._rates import normalize_rates
from ._pyparse import Events, _Table

__all__ = ["KEYS", "Replay", "parse_penalty"]

KEYS = ("ip", "path", "ip+path")
# The limiter's clock ends at 2**62 ns (early 2116); the parsers read
# dates up to 2261. Lines from that far on are not replayed.
CLOCK_END_NS = 4_611_686_017 * 1_000_000_000
# The limiter holds up to max_keys keys: a longer key (a path is up to
# 2 kB) goes into it as its digest, so its memory stays near 150 bytes
# a key whatever the log's paths. A digest is itself that long, so it
# never stands for a key that is one.
DIGEST_FROM = 64


def _limiter_key(key: str) -> str:
    if len(key) < DIGEST_FROM:
        return key
    data = key.encode("utf-8", "surrogatepass")
    return "#" + hashlib.blake2b(data, digest_size=32).hexdigest()


_PENALTY_PART = re.compile(r"\s*(after|within|ban|factor|max_ban)\s*=\s*([^,\s]+)\s*")
_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|s|m|h|d)?")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def _duration(name: str, text: str) -> float:
    m = _DURATION.fullmatch(text)
    if m is None:
        raise ValueError(
            f"penalty {name}={text!r}: expected seconds, or a number with "
            "ms, s, m, h or d (30s, 5m)"
        )
    return float(m.group(1)) * _UNIT[m.group(2) or "s"]


def parse_penalty(text: str) -> Penalty:
    """``"after=5,within=60,ban=300"`` -> Penalty. Durations take
    ``ms``/``s``/``m``/``h``/``d``; ``factor`` and ``max_ban`` are optional."""
    if not isinstance(text, str):
        raise TypeError(f"penalty must be a str, not {type(text).__name__}")
    values: dict[str, str] = {}
    for part in text.split(","):
        m = _PENALTY_PART.fullmatch(part)
        if m is None:
            raise ValueError(
                f"bad penalty part {part.strip()!r} in {text!r} (expected "
                "after=K,within=W,ban=P[,factor=F][,max_ban=M])"
            )
        if m.group(1) in values:
            raise ValueError(f"penalty {m.group(1)} given twice in {text!r}")
        values[m.group(1)] = m.group(2)
    missing = [k for k in ("after", "within", "ban") if k not in values]
    if missing:
        raise ValueError(f"penalty {text!r} lacks {', '.join(missing)}")
    if not values["after"].isdigit():
        raise ValueError(f"penalty after={values['after']!r}: expected an integer")
    kw: dict[str, Any] = {
        "after": int(values["after"]),
        "within": _duration("within", values["within"]),
        "ban": _duration("ban", values["ban"]),
    }
    if "factor" in values:
        try:
            kw["factor"] = float(values["factor"])
        except ValueError:
            raise ValueError(
                f"penalty factor={values['factor']!r}: expected a number"
            ) from None
    if "max_ban" in values:
        kw["max_ban"] = _duration("max_ban", values["max_ban"])
    return Penalty(**kw)


class _DropBanLogs(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("stanchion: %s banned")


@contextmanager
def _quiet_bans() -> Iterator[None]:
    """The limiter logs each ban; a replay reports them itself."""
    logger = logging.getLogger("stanchion")
    f = _DropBanLogs()
    logger.addFilter(f)
    try:
        yield
    finally:
        logger.removeFilter(f)


class Replay:
    """Feed ``Events`` chunks (``feed``) through a fresh in-process
    limiter; ``result()`` tells what it refused.

    ``rates``: a rate string (``"10/second;1000/day"``) or Rates;
    ``key``: ``"ip"``, ``"path"`` or ``"ip+path"`` (joined by a space);
    ``algorithm``, ``penalty``: as for ``Limiter``; ``top`` bounds the
    per-key tables, ``max_keys`` the limiter's own table.
    """

    def __init__(
        self,
        rates: Any,
        *,
        key: str = "ip",
        algorithm: str = "token_bucket",
        penalty: Penalty | None = None,
        top: int = 10_000,
        max_keys: int = 1_000_000,
    ) -> None:
        if key not in KEYS:
            raise ValueError(f"key must be one of {', '.join(KEYS)}, got {key!r}")
        self.rates = normalize_rates(rates)
        self.key = key
        self.algorithm = algorithm
        self.penalty = penalty
        self._now = 0.0
        self.limiter = Limiter(
            list(self.rates),
            algorithm=algorithm,
            penalty=penalty,
            max_keys=max_keys,
            clock=self._clock,
        )
        self.hits = 0
        self.refused = 0
        self.banned_hits = 0
        self.beyond_clock = 0  # lines dated past CLOCK_END_NS, not replayed
        self._refused_by_key = _Table(top)
        self._hits_by_key = _Table(top)
        self._per_second: dict[int, int] = {}
        self._bans: dict[str, list[float]] = {}  # key -> [bans, until, first]
        self._max_ban_keys = 10 * top
        self.bans_untracked = 0
        self.bans = 0

    def _clock(self) -> float:
        return self._now

    def feed(self, events: Events | None) -> None:
        if events is None:
            return
        ts_ns, clients, paths, _ = events
        if self.key == "ip":
            keys: Any = clients
        elif self.key == "path":
            keys = paths
        else:
            keys = [f"{c} {p}" for c, p in zip(clients, paths, strict=True)]
        hit = self.limiter.hit
        per_second = self._per_second
        hits_by_key = self._hits_by_key
        refused_by_key = self._refused_by_key
        seq = self.hits
        with _quiet_bans():
            for ts, k in zip(ts_ns, keys, strict=True):
                if ts >= CLOCK_END_NS:
                    self.beyond_clock += 1
                    continue
                now = ts / 1e9
                self._now = now
                seq += 1
                d = hit(k if len(k) < DIGEST_FROM else _limiter_key(k))
                hits_by_key.touch(k, seq)
                if d.allowed:
                    continue
                self.refused += 1
                sec = ts // 1_000_000_000
                per_second[sec] = per_second.get(sec, 0) + 1
                refused_by_key.touch(k, seq)
                if d.banned:
                    self.banned_hits += 1
                    self._ban(k, now, d.retry_after)
        self.hits = seq

    def _ban(self, key: str, now: float, left: float) -> None:
        state = self._bans.get(key)
        if state is None:
            if len(self._bans) >= self._max_ban_keys:
                self.bans_untracked += 1
                return
            state = self._bans[key] = [0, -math.inf, now]
        if now >= state[1]:
            state[0] += 1
            state[1] = now + left
            self.bans += 1

    def result(self, top: int | None = None) -> dict[str, Any]:
        """What was refused: totals, per key (hits, refused, share), per
        second of the log, and the bans."""
        hits = {k: e.requests for k, e in self._hits_by_key.entries.items()}
        keys = [
            {
                "key": k,
                "refused": e.requests,
                "hits": hits.get(k),
                "error": e.error,
                "bans": int(self._bans[k][0]) if k in self._bans else 0,
            }
            for k, e in self._refused_by_key.ranked()
        ]
        if top is not None:
            keys = keys[:top]
        ranked = sorted(self._bans.items(), key=lambda kv: (-kv[1][0], kv[1][2], kv[0]))
        bans = [{"key": k, "bans": int(v[0]), "first_ban_ts": v[2]} for k, v in ranked]
        return {
            "rates": ";".join(str(r) for r in self.rates),
            "key": self.key,
            "algorithm": self.algorithm,
            "penalty": None
            if self.penalty is None
            else {
                "after": self.penalty.after,
                "within": self.penalty.within,
                "ban": self.penalty.ban,
                "factor": self.penalty.factor,
                "max_ban": self.penalty.max_ban,
            },
            "hits": self.hits,
            "refused": self.refused,
            "refused_share": self.refused / self.hits if self.hits else 0.0,
            "keys_refused": len(self._refused_by_key.entries),
            "keys_exact": not self._refused_by_key.evicted,
            "refused_by_key": keys,
            "refused_per_second": sorted([s, n] for s, n in self._per_second.items()),
            "banned_hits": self.banned_hits,
            "beyond_clock": self.beyond_clock,
            "bans": self.bans,
            "banned_keys": bans,
        }
