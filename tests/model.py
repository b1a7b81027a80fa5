"""A small pure-Python reference model of the three limiter algorithms.

Written from the definitions with exact integers and Fractions, so the
C engine can be checked against it decision by decision. Times are
integer nanoseconds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    limit: int
    remaining: int
    reset_ns: int
    retry_ns: int


class _TokenBucket:
    """GCRA: a key is a theoretical arrival time (tat). A hit of cost c
    fits when, after adding c emission intervals, the tat is no further
    ahead of now than the burst tolerance."""

    def __init__(self, amount: float, period_ns: int, burst: int | None) -> None:
        self.interval = max(1, round(period_ns / amount))
        self.capacity = burst if burst else max(1, math.floor(amount))
        self.tolerance = self.capacity * self.interval
        self.tat: dict[str, int] = {}

    def check(self, key: str, now: int, cost: int) -> tuple[Verdict, object]:
        tat = max(self.tat.get(key, now), now)
        new_tat = tat + cost * self.interval
        if new_tat - now <= self.tolerance:
            left = (self.tolerance - (new_tat - now)) // self.interval
            return Verdict(True, self.capacity, left, new_tat - now, 0), new_tat
        left = (self.tolerance - (tat - now)) // self.interval
        retry = new_tat - now - self.tolerance
        return Verdict(False, self.capacity, left, tat - now, retry), None

    def commit(self, key: str, state: object) -> None:
        assert isinstance(state, int)
        self.tat[key] = state


class _FixedWindow:
    def __init__(self, amount: float, period_ns: int, burst: int | None) -> None:
        self.period = period_ns
        self.capacity = math.floor(amount)
        self.windows: dict[str, tuple[int, int]] = {}

    def check(self, key: str, now: int, cost: int) -> tuple[Verdict, object]:
        idx = now // self.period
        w, count = self.windows.get(key, (None, 0))
        if w != idx:
            count = 0
        end_in = (idx + 1) * self.period - now
        if count + cost <= self.capacity:
            count += cost
            return Verdict(True, self.capacity, self.capacity - count, end_in, 0), (
                idx,
                count,
            )
        reset = end_in if count > 0 else 0
        return Verdict(False, self.capacity, self.capacity - count, reset, end_in), None

    def commit(self, key: str, state: object) -> None:
        assert isinstance(state, tuple)
        self.windows[key] = state


class _SlidingWindow:
    """The count of the previous window weighted by the part of it still
    inside the sliding period, plus the current window's count."""

    def __init__(self, amount: float, period_ns: int, burst: int | None) -> None:
        self.period = period_ns
        self.capacity = math.floor(amount)
        self.windows: dict[str, tuple[int, int, int]] = {}

    def _load(self, key: str, now: int) -> tuple[int, int, int, int]:
        idx = now // self.period
        w, prev, cur = self.windows.get(key, (None, 0, 0))
        if w == idx:
            pass
        elif w == idx - 1:
            prev, cur = cur, 0
        else:
            prev, cur = 0, 0
        return idx, prev, cur, now - idx * self.period

    def _reset(self, prev: int, cur: int, e: int) -> int:
        if cur:
            return 2 * self.period - e
        return self.period - e if prev else 0

    def check(self, key: str, now: int, cost: int) -> tuple[Verdict, object]:
        P, L = self.period, self.capacity
        idx, prev, cur, e = self._load(key, now)
        estimate = Fraction(prev * (P - e), P) + cur
        if estimate + cost <= L:
            cur += cost
            left = math.floor(L - Fraction(prev * (P - e), P) - cur)
            return (
                Verdict(True, L, max(0, left), self._reset(prev, cur, e), 0),
                (idx, prev, cur),
            )
        # The earliest whole nanosecond at which the hit fits.
        if cur + cost <= L:
            e_ok = P - math.floor(Fraction((L - cur - cost) * P, prev))
            retry = e_ok - e
        else:
            e2 = max(0, P - math.floor(Fraction((L - cost) * P, cur)))
            retry = (P - e) + e2
        left = math.floor(L - estimate)
        return Verdict(False, L, max(0, left), self._reset(prev, cur, e), retry), None

    def commit(self, key: str, state: object) -> None:
        assert isinstance(state, tuple)
        self.windows[key] = state


_KINDS = {
    "token_bucket": _TokenBucket,
    "fixed_window": _FixedWindow,
    "sliding_window": _SlidingWindow,
}


class ModelLimiter:
    """Several rates decided together: all allow and all are charged, or
    nothing is charged. Fields come from the most restrictive rate."""

    def __init__(
        self,
        rates: list[tuple[float, int]],
        algorithm: str,
        burst: list[int | None] | None = None,
    ) -> None:
        bursts = burst or [None] * len(rates)
        self.rates = [
            _KINDS[algorithm](a, p, b) for (a, p), b in zip(rates, bursts, strict=True)
        ]

    def decide(self, key: str, now: int, cost: int, commit: bool = True) -> Verdict:
        results = [r.check(key, now, cost) for r in self.rates]
        verdicts = [v for v, _ in results]
        allowed = all(v.allowed for v in verdicts)
        if allowed:
            if commit:
                for r, (_, state) in zip(self.rates, results, strict=True):
                    r.commit(key, state)
            best = verdicts[0]
            for v in verdicts[1:]:
                if (v.remaining, -v.reset_ns) < (best.remaining, -best.reset_ns):
                    best = v
            return best
        denying = [v for v in verdicts if not v.allowed]
        best = denying[0]
        for v in denying[1:]:
            if v.retry_ns > best.retry_ns:
                best = v
        return best
