"""The report model: what the parser's summary says, worked into tables,
peaks, bursts, abusive clients and a suggested limit. Plain dicts and
lists throughout, so ``--json`` is the model itself."""

from __future__ import annotations

import bisect
import math
import statistics
from collections.abc import Callable, Iterable, Sequence
from typing import Any

__all__ = [
    "ABUSE_RULE",
    "BURST_RULE",
    "analyze",
    "friendly",
    "suggest_rates",
]

# Robust outliers: a figure is far above the rest when it passes both the
# median plus K scaled MADs and F times the median of all clients'.
MAD_K = 6.0
MEDIAN_F = 5.0
MAD_SCALE = 1.4826  # MAD -> standard deviation for normal data
MIN_CLIENTS = 5  # fewer: no "rest" to compare with
FLOORS = {"max_1s": 10, "max_60s": 60}
ERROR_SHARE = 0.5  # 4xx share that marks a client...
ERROR_MIN_REQUESTS = 20  # ...with at least this many requests (and the median)
BURST_K = 6.0
BURST_F = 3.0
HEADROOM = 2.0

ABUSE_RULE = (
    "a client looks abusive when its max 1-s or max 60-s request rate is "
    f"above both median + {MAD_K:g} x MAD (scaled) and {MEDIAN_F:g} x the "
    "median of all clients' (and at least "
    f"{FLOORS['max_1s']}/s or {FLOORS['max_60s']}/min; needs {MIN_CLIENTS}+ "
    "clients), or when at least "
    f"{ERROR_SHARE:.0%} of its requests got a 4xx and it sent "
    f"{ERROR_MIN_REQUESTS}+ requests and at least the median client's count"
)
BURST_RULE = (
    f"a minute is a burst when its requests are above both median + {BURST_K:g}"
    f" x MAD (scaled) and {BURST_F:g} x the median minute of the log "
    "(minutes without traffic count as 0)"
)

_FRIENDLY = (1, 2, 3, 5)


def friendly(x: float) -> int:
    """The smallest of 1, 2, 3, 5, 10, 20, 30, 50, 100... that is >= x."""
    if x <= 1:
        return 1
    scale = 1
    while True:
        for f in _FRIENDLY:
            if f * scale >= x:
                return f * scale
        scale *= 10


def _threshold(values: Sequence[float], floor: float) -> tuple[float, float, float]:
    """(threshold, median, MAD) of a figure over clients."""
    med = statistics.median(values)
    mad = statistics.median(abs(v - med) for v in values)
    return max(med + MAD_K * MAD_SCALE * mad, MEDIAN_F * med, floor), med, mad


def _percentile(values: Sequence[int], p: int) -> int:
    """Nearest-rank percentile (the parser's rule) of ints."""
    if not values:
        return 0
    ordered = sorted(values)
    return ordered[max(0, (p * len(ordered) + 99) // 100 - 1)]


def _series(per_second: Sequence[Sequence[int]], step: int) -> list[list[int]]:
    """Per-second rows -> rows of ``step`` seconds (only those with traffic)."""
    out: dict[int, list[int]] = {}
    for sec, *vals in per_second:
        start = sec - sec % step
        row = out.setdefault(start, [0] * len(vals))
        for i, v in enumerate(vals):
            row[i] += v
    return [[s, *row] for s, row in sorted(out.items())]


class _Counts:
    """The request counts of a series with its empty steps as zeros,
    without a list of the zeros: a log's first and last lines may lie
    centuries apart (its timestamps are anyone's to write)."""

    def __init__(self, series: Sequence[Sequence[int]], step: int) -> None:
        self.values = sorted(row[1] for row in series)  # the steps with traffic
        span = (series[-1][0] - series[0][0]) // step + 1 if series else 0
        self.zeros = span - len(self.values)
        self.n = span

    def nth(self, k: int) -> int:
        """The k-th smallest count (0-based)."""
        return 0 if k < self.zeros else self.values[k - self.zeros]

    def percentile(self, p: int) -> int:
        """Nearest rank, as ``_percentile``."""
        return self.nth(max(0, (p * self.n + 99) // 100 - 1)) if self.n else 0

    def median_and_mad(self) -> tuple[float, float]:
        """``statistics.median`` of the counts and of their distances to
        it (n >= 1)."""
        med = _median(self.nth, self.n)
        # distances: the zeros' are all med; the others' sorted apart
        dist = sorted(abs(v - med) for v in self.values)
        cut = bisect.bisect_left(dist, med)

        def nth_dist(k: int) -> float:
            if k < cut:
                return dist[k]
            if k < cut + self.zeros:
                return med
            return dist[k - self.zeros]

        return med, _median(nth_dist, self.n)


def _median(nth: Callable[[int], float], n: int) -> float:
    """``statistics.median`` of n sorted values read through ``nth``."""
    if n % 2:
        return nth(n // 2)
    return (nth(n // 2 - 1) + nth(n // 2)) / 2


def _rate_stats(counts: _Counts) -> dict[str, int]:
    return {
        "p50": counts.percentile(50),
        "p90": counts.percentile(90),
        "p99": counts.percentile(99),
        "max": counts.values[-1] if counts.values else 0,
    }


def _abusive(clients: list[dict[str, Any]]) -> dict[str, Any]:
    thresholds: dict[str, Any] = {}
    figures = {
        "max_1s": [c["rates"]["1"][3] for c in clients],
        "max_60s": [c["rates"]["60"][3] for c in clients],
    }
    if len(clients) >= MIN_CLIENTS:
        for name, values in figures.items():
            t, med, mad = _threshold(values, FLOORS[name])
            thresholds[name] = {"threshold": t, "median": med, "mad": mad}
    median_requests = (
        statistics.median(c["requests"] for c in clients) if clients else 0
    )
    found = []
    for c in clients:
        reasons = []
        for name, window, label in (
            ("max_1s", "1", "max 1-s rate"),
            ("max_60s", "60", "max 60-s rate"),
        ):
            if name in thresholds:
                v = c["rates"][window][3]
                t = thresholds[name]["threshold"]
                if v > t:
                    reasons.append(f"{label} {v} > {t:.4g}")
        share = c["n4xx"] / c["requests"] if c["requests"] else 0.0
        if (
            share >= ERROR_SHARE
            and c["requests"] >= ERROR_MIN_REQUESTS
            and c["requests"] >= median_requests
        ):
            reasons.append(f"{share:.0%} 4xx of {c['requests']} requests")
        if reasons:
            c["abusive"] = reasons
            found.append(
                {
                    "key": c["key"],
                    "requests": c["requests"],
                    "max_1s": c["rates"]["1"][3],
                    "max_60s": c["rates"]["60"][3],
                    "share_4xx": share,
                    "reasons": reasons,
                }
            )
    return {"rule": ABUSE_RULE, "thresholds": thresholds, "clients": found}


def _bursts(per_minute: list[list[int]]) -> dict[str, Any]:
    counts = _Counts(per_minute, 60)
    out: dict[str, Any] = {"rule": BURST_RULE, "minutes": []}
    if counts.n < 3:
        return out
    med, mad = counts.median_and_mad()
    t = max(med + BURST_K * MAD_SCALE * mad, BURST_F * med)
    out.update(threshold=t, median=med, mad=mad)
    episodes: list[dict[str, Any]] = []
    for r in per_minute:
        if r[1] <= t:
            continue
        last = episodes[-1] if episodes else None
        if last is not None and last["end"] == r[0]:
            last["end"] = r[0] + 60
            last["minutes"] += 1
            last["requests"] += r[1]
            if r[1] > last["peak"]:
                last["peak"], last["peak_minute"] = r[1], r[0]
        else:
            episodes.append(
                {
                    "start": r[0],
                    "end": r[0] + 60,
                    "minutes": 1,
                    "requests": r[1],
                    "peak_minute": r[0],
                    "peak": r[1],
                }
            )
    for e in episodes:
        e["times_median"] = e["peak"] / med if med else None
    episodes.sort(key=lambda e: (-e["peak"], e["start"]))
    out["minutes"] = episodes[:20]
    return out


def suggest_rates(
    clients: Iterable[dict[str, Any]], headroom: float = HEADROOM
) -> dict[str, Any]:
    """Rates per client that leave ``headroom`` above what normal clients
    do: per second and per minute, the 99th percentile over the
    non-abusive clients of their own 99th-percentile rate, times headroom,
    rounded up to a friendly number."""
    normal = [c for c in clients if not c.get("abusive")]
    if not normal:
        raise ValueError("no client to base a suggestion on")
    p99_1 = _percentile([c["rates"]["1"][2] for c in normal], 99)
    p99_60 = _percentile([c["rates"]["60"][2] for c in normal], 99)
    per_s = friendly(headroom * p99_1)
    per_min = max(friendly(headroom * p99_60), per_s)
    return {
        "rates": f"{per_s}/second;{per_min}/minute",
        "per_second": per_s,
        "per_minute": per_min,
        "headroom": headroom,
        "basis": {
            "clients": len(normal),
            "p99_of_p99_1s": p99_1,
            "p99_of_p99_60s": p99_60,
        },
        "rule": (
            f"per second and per minute: the 99th percentile over {len(normal)} "
            "non-abusive clients of their own 99th-percentile rate "
            f"({p99_1}/s, {p99_60}/min), x {headroom:g} headroom, rounded up to "
            "1, 2, 3, 5 x 10^k"
        ),
    }


def judge_replay(result: dict[str, Any], abusive: set[str]) -> dict[str, Any]:
    """Split a replay keyed by ip into abusive and other clients."""
    abusive_refused = other_refused = 0
    others_hit = 0
    for row in result["refused_by_key"]:
        if row["key"] in abusive:
            abusive_refused += row["refused"]
        else:
            other_refused += row["refused"]
            others_hit += 1
    return {
        "abusive_refused": abusive_refused,
        "other_refused": other_refused,
        "other_clients_refused": others_hit,
        "abusive_clients_refused": sorted(
            r["key"] for r in result["refused_by_key"] if r["key"] in abusive
        ),
    }


def analyze(summary: dict[str, Any], *, top: int = 10) -> dict[str, Any]:
    """Tables, series, peaks, bursts and abusive clients of a summary
    (the parser's, with windows (1, 60)); tables cut to ``top`` rows
    except the abuse verdicts, which look at every tracked client."""
    clients = [dict(c) for c in summary["clients"]]
    for c in clients:
        c["share_4xx"] = c["n4xx"] / c["requests"] if c["requests"] else 0.0
    abusive = _abusive(clients)
    per_second = summary["per_second"]
    per_minute = _series(per_second, 60)
    first, last = summary["first_ts"], summary["last_ts"]
    status_classes: dict[str, int] = {}
    for code, n in summary["status"].items():
        cls = code[0] + "xx"
        status_classes[cls] = status_classes.get(cls, 0) + n
    by_sec = sorted(per_second, key=lambda r: (-r[1], r[0]))[:5]
    by_min = sorted(per_minute, key=lambda r: (-r[1], r[0]))[:5]
    return {
        "totals": {
            "lines": summary["lines"],
            "parsed": summary["parsed"],
            "malformed": summary["malformed"],
            "bytes": summary["bytes"],
            "first_ts": first,
            "last_ts": last,
            "duration_s": None if first is None else last - first + 1,
            "clients_tracked": len(clients),
            "paths_tracked": len(summary["paths"]),
            "templates_tracked": len(summary["templates"]),
            "distinct_exact": summary["distinct_exact"],
        },
        "status": dict(sorted(summary["status"].items())),
        "status_classes": dict(sorted(status_classes.items())),
        "methods": dict(sorted(summary["methods"].items(), key=lambda kv: -kv[1])),
        "clients": clients[:top],
        "paths": summary["paths"][:top],
        "templates": summary["templates"][:top],
        "series": {"per_second": per_second, "per_minute": per_minute},
        "peaks": {
            "seconds": [{"start": r[0], "requests": r[1]} for r in by_sec],
            "minutes": [{"start": r[0], "requests": r[1]} for r in by_min],
        },
        "site_rates": {
            "per_second": _rate_stats(_Counts(per_second, 1)),
            "per_minute": _rate_stats(_Counts(per_minute, 60)),
        },
        "bursts": _bursts(per_minute),
        "abusive": abusive,
        "_all_clients": clients,
    }


def finite(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else x
