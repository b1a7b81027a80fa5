"""``stanchion probe``: find an HTTP endpoint's rate limit by experiment.

For each worker count in turn, the probe sends requests as fast as its
workers can for one step's duration, and reports per step the requests,
the 2xx, the 429s, the other answers, the connection errors, the offered
and successful rates and when failures began. It then suggests a rate
string for a :class:`~stanchion.Limiter`:

- from the answers when they advertise it: ``RateLimit-Policy`` (quota and
  window), else ``X-RateLimit-Limit`` with the longest ``X-RateLimit-Reset``
  seen as the window;
- otherwise from the timing of the 2xx and the 429s. From the first 429
  on, as long as the client keeps asking, an interval that starts at a 429
  (the quota is spent) and lasts one window holds exactly one quota of
  successes, for a sliding log as for fixed windows: the successes come in
  bursts (a fresh quota, a new fixed window, the replay one window after
  a burst) and such an interval holds the next one whole. Intervals of
  another length hold counts that depend on where they start. So the
  limit is the count that intervals of one length agree on, and the
  window the longest such interval that never holds more than one quota.
  Seeing it takes two windows of refused traffic; the window is rounded to
  a common value (1 s, 30 s, 1 minute...) when within 5 %. Successes
  that come evenly (no burst to see) tell only the sustained rate, which
  is then suggested per second or per minute once two steps agree on it.

The steps run back to back without a pause: a new step adds or stops
workers, and the answers so far are studied in a thread while the workers
go on. The provider is thus pressed continuously from the first 429 on,
the inference needs no rest between steps, and whatever quota earlier
steps used is part of what it sees. By default the probe stops after the
step at which the limit is known (``--all-steps`` runs them all).

It is meant for the user's own or test hosts and refuses more than the
bounds: at most 64 workers, 600 s per step and ``max_requests`` in all.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import json
import math
import re
import statistics
import sys
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, cast
from urllib.parse import urlsplit

from ._rates import Rate

MAX_CONCURRENCY = 64
MAX_DURATION = 600.0
MAX_STEPS = 64  # worker counts listed (each step lasts up to MAX_DURATION)
DEFAULT_MAX_REQUESTS = 100_000
MAX_REQUESTS = 10_000_000
COMMON_WINDOWS = (1, 2, 5, 10, 15, 20, 30, 60, 120, 300, 600, 900, 1800, 3600)
ROUNDING = 0.05  # a window within 5 % of a common one is that one

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_DURATION = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h)?\s*", re.IGNORECASE)
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
ERROR = -1  # the status recorded for a connection error or a timeout


# -- input ---------------------------------------------------------------------


def parse_concurrency(text: str | int | Sequence[int]) -> tuple[int, ...]:
    """Worker counts from ``"1..10"``, ``"4"``, ``"1,2,4,8"``, an int or a
    sequence of ints; each 1..64, at most 64 of them."""
    if isinstance(text, bool):
        raise TypeError("concurrency must be a str, an int or a list of ints")
    if isinstance(text, int):
        counts: list[int] = [text]
    elif isinstance(text, str):
        s = text.strip()
        try:
            if ".." in s:
                lo, _, hi = s.partition("..")
                bounds = (int(lo), int(hi))
            else:
                counts = [int(part) for part in s.split(",")]
        except ValueError:
            raise ValueError(
                f"concurrency must be N, A..B or a list N,M,..., not {text!r}"
            ) from None
        if ".." in s:
            if bounds[0] > bounds[1]:
                raise ValueError(f"concurrency range {text!r} is empty")
            # The bounds first: a huge range is not listed to be refused.
            counts = [n for n in bounds if not 1 <= n <= MAX_CONCURRENCY]
            if not counts:
                counts = list(range(bounds[0], bounds[1] + 1))
    elif isinstance(text, Sequence):
        counts = list(cast("Sequence[int]", text))
        for n in counts:
            if isinstance(n, bool) or not isinstance(n, int):
                raise TypeError(f"worker counts must be ints, not {n!r}")
    else:
        raise TypeError("concurrency must be a str, an int or a list of ints")
    if not counts:
        raise ValueError("concurrency names no worker count")
    if len(counts) > MAX_STEPS:
        raise ValueError(
            f"concurrency names at most {MAX_STEPS} steps, not {len(counts)}"
        )
    for n in counts:
        if not 1 <= n <= MAX_CONCURRENCY:
            raise ValueError(
                f"concurrency must be 1..{MAX_CONCURRENCY} workers, not {n}"
            )
    return tuple(counts)


def parse_duration(text: str | float) -> float:
    """Seconds from ``"30s"``, ``"2m"``, ``"500ms"``, ``"1h"``, ``"30"`` or a
    number; more than 0 and at most 600 s."""
    if isinstance(text, bool):
        raise TypeError("duration must be a str or a number of seconds")
    if isinstance(text, (int, float)):
        seconds = float(text)
    elif isinstance(text, str):
        m = _DURATION.fullmatch(text)
        if not m:
            raise ValueError(
                f"duration must be a number with ms, s, m or h, such as "
                f"'30s' or '500ms', not {text!r}"
            )
        seconds = float(m.group(1)) * _UNIT[(m.group(2) or "s").lower()]
    else:
        raise TypeError("duration must be a str or a number of seconds")
    if not 0 < seconds <= MAX_DURATION:  # NaN fails too
        raise ValueError(
            f"duration must be more than 0 and at most {MAX_DURATION:g} s per "
            f"step, not {text!r}"
        )
    return seconds


def parse_header(text: str) -> tuple[str, str]:
    """``"NAME:VALUE"`` as a (name, value) pair."""
    name, sep, value = text.partition(":")
    if not sep or not _TOKEN.fullmatch(name):
        raise ValueError(f"a header must be NAME:VALUE, not {text!r}")
    if any(c in value for c in "\r\n\0"):
        raise ValueError(f"a header value may not hold CR, LF or NUL: {text!r}")
    return name, value.strip()


def _check_url(url: str) -> str:
    if not isinstance(url, str):
        raise TypeError(f"url must be a str, not {type(url).__name__}")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"url must be an http:// or https:// URL, not {url!r}")
    try:
        parts.port  # noqa: B018  # raises for a port not in 0..65535
    except ValueError:
        raise ValueError(f"url has a bad port: {url!r}") from None
    return url


# -- results -------------------------------------------------------------------


@dataclass
class StepResult:
    """What one step (one worker count, one duration) saw."""

    concurrency: int
    started: float  # seconds from the probe's start
    elapsed: float  # seconds the step ran
    requests: int = 0  # answered or failed
    ok: int = 0  # 2xx
    limited: int = 0  # 429
    other: int = 0  # any other status
    errors: int = 0  # connection errors and timeouts
    offered_rate: float = 0.0  # requests per second
    success_rate: float = 0.0  # 2xx per second
    failures_began: float | None = None  # seconds into the step, first non-2xx
    rate_before_failures: float | None = None  # requests/s until then
    statuses: dict[str, int] = field(default_factory=dict)
    error_kinds: dict[str, int] = field(default_factory=dict)


@dataclass
class ProbeResult:
    """The steps, and what they tell of the limit.

    ``source`` is ``"advertised"`` (read from the answers' headers),
    ``"inferred"`` (from the timing: ``burst`` successes per ``window``
    seconds), ``"sustained"`` (successes came evenly: only their rate is
    known) or None (no refusal seen, or not long enough to tell).
    ``suggested`` is the rate string for a Limiter, or None.
    """

    url: str
    method: str
    steps: list[StepResult]
    suggested: str | None = None
    source: str | None = None
    limit: int | None = None
    window: float | None = None
    measured_window: float | None = None  # before rounding
    stopped: str = "all steps ran"
    failures_began: dict[str, float] | None = None
    advertised: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def rate(self) -> Rate | None:
        """The suggested rate as a Rate."""
        if self.limit is None or self.window is None:
            return None
        return Rate(self.limit, self.window)

    def to_dict(self) -> dict[str, Any]:
        """Everything as JSON-ready values."""
        return asdict(self)

    def format(self) -> str:
        """The report as text, one line per step."""
        out = [
            f"{self.method} {self.url}",
            "",
            "workers  requests     2xx     429   other  errors  offered/s"
            "    2xx/s  failures began",
        ]
        for s in self.steps:
            began = "-"
            if s.failures_began is not None:
                began = f"after {s.failures_began:.2f} s"
                if s.rate_before_failures is not None:
                    began += f" at {s.rate_before_failures:.1f}/s"
            out.append(
                f"{s.concurrency:7d} {s.requests:9d} {s.ok:7d} {s.limited:7d} "
                f"{s.other:7d} {s.errors:7d} {s.offered_rate:10.1f} "
                f"{s.success_rate:8.1f}  {began}"
            )
        out.append("")
        out.append(f"stopped: {self.stopped}")
        if self.failures_began:
            f = self.failures_began
            out.append(
                f"failures began {f['after']:.2f} s into the probe, with "
                f"{int(f['concurrency'])} workers offering {f['offered_rate']:.1f}/s"
            )
        if self.source == "advertised":
            out.append(f"limit advertised by the answers: {self.advertised}")
        elif self.source == "inferred":
            assert self.measured_window is not None
            out.append(
                f"limit inferred from the timing: {self.limit} successes per "
                f"{self.window:g} s (window measured {self.measured_window:.3f} s)"
            )
        elif self.source == "sustained":
            out.append(
                "successes came evenly: only the sustained rate is known, not the burst"
            )
        out.extend(self.notes)
        if self.suggested:
            out.append(f'suggested rate: "{self.suggested}"')
        else:
            out.append("suggested rate: none")
        return "\n".join(out)


# -- inference from the timing -------------------------------------------------


@dataclass(frozen=True)
class Inference:
    """``limit`` successes per ``window`` seconds; ``sustained`` when only
    the rate (``limit`` per ``window``) is known, not the burst."""

    limit: int
    window: float
    sustained: bool = False


def _spread(starts: Sequence[float], n: int, k: int) -> Iterable[float]:
    """``k`` of the first ``n`` starts, spread by the golden ratio rather
    than evenly, so that they do not fall in step with the limit's
    periodic pattern."""
    if k >= n:
        return starts[:n]
    golden = (math.sqrt(5) - 1) / 2
    return (starts[int(((i * golden) % 1.0) * n)] for i in range(k))


def _count_profile(
    s: Sequence[float], starts: Sequence[float], end: float, w: float, samples: int
) -> tuple[float, float]:
    """(median, share of outliers) of the number of successes ``s`` in
    (t, t + w] for up to ``samples`` of the ``starts`` t (evenly picked)
    that leave room for w before ``end``."""
    n = bisect.bisect_right(starts, end - w)
    if n == 0:
        return 0.0, 1.0
    k = min(n, samples)
    counts = []
    for t in _spread(starts, n, k):
        counts.append(bisect.bisect_right(s, t + w) - bisect.bisect_right(s, t))
    med = statistics.median(counts)
    tol = max(2.0, 0.05 * med)
    return med, sum(abs(c - med) > tol for c in counts) / k


def _best(
    s: Sequence[float],
    starts: Sequence[float],
    end: float,
    grid: Iterable[float],
    samples: int,
) -> tuple[float, float, float] | None:
    """(window, median, outliers) of the first well-fitting window on the
    grid: the middle one of those with the lowest outlier share in the
    first run of windows that come within 0.03 of the best share anywhere
    on the grid."""
    scored = []
    for w in grid:
        # The study runs in a thread beside the workers: let them in
        # often, so that they keep asking without a pause.
        time.sleep(0)
        med, bad = _count_profile(s, starts, end, w, samples)
        scored.append((w, med, bad if med >= 3 else math.inf))
    finite = [bad for _, _, bad in scored if bad < math.inf]
    if not finite:
        return None
    cut = min(finite) + 0.03
    block: list[tuple[float, float, float]] = []
    for item in scored:
        if item[2] <= cut:
            block.append(item)
        elif block:
            break
    low = min(bad for _, _, bad in block)
    ties = [item for item in block if item[2] == low]
    return ties[len(ties) // 2]


def _longest(
    s: Sequence[float],
    starts: Sequence[float],
    end: float,
    w0: float,
    w_max: float,
    limit: float,
) -> float:
    """The longest interval from ``w0`` up that, started at a refusal,
    holds no more than ``limit`` successes (bar one start, for jitter).

    Intervals that start at a refusal and are a bit shorter than the
    window may still hold a whole quota (the refusals went on after the
    quota's successes, in a fixed window or while earlier successes wait
    to expire), while one a bit longer reaches into the next quota."""
    over = limit + 1 + 0.01 * limit
    best = w0
    w = w0
    while w <= w_max:
        time.sleep(0)  # as in _best
        n = bisect.bisect_right(starts, end - w)
        if n == 0:
            break
        too_many = sum(
            bisect.bisect_right(s, t + w) - bisect.bisect_right(s, t) > over
            for t in _spread(starts, n, min(n, 1000))
        )
        if too_many > 1:
            break
        best = w
        w *= 1.001
    return best


def infer_limit(
    successes: Sequence[float], refusals: Sequence[float], end: float
) -> Inference | None:
    """The limit that explains the times (seconds) of ``successes`` and
    ``refusals`` (429s) in a run that kept asking from the first refusal
    until ``end``. None when the refused part is too short to tell (under
    two windows) or holds too few successes.

    At a refusal the quota is spent; from then on, a window-long interval
    holds exactly one quota of successes, and intervals of another length
    hold counts that depend on where they start.
    """
    s = sorted(successes)
    r = sorted(refusals)
    if not r:
        return None
    span = end - r[0]
    inside = s[bisect.bisect_right(s, r[0]) :]
    if len(inside) < 6 or span <= 0:
        return None
    # Room for two windows, and a little more to see past the window's end.
    w_max = span / 2.1
    w_min = max(1e-3, span / 2000)
    n = int(math.log(w_max / w_min) / math.log(1.02)) + 1
    coarse = [w_min * 1.02**i for i in range(n + 1) if w_min * 1.02**i <= w_max]
    found = _best(s, r, end, coarse, 100)
    if found is not None:
        w0 = found[0]
        fine = [w0 * 1.002**i for i in range(-15, 16) if w0 * 1.002**i <= w_max]
        window, med, bad = _best(s, r, end, fine, 400) or found
        # A window shows as a sharp fit: nearly every start gives the same
        # count, and intervals 20 % shorter hold counts that vary.
        _, shorter_bad = _count_profile(s, r, end, 0.8 * window, 600)
        if bad <= 0.05 and shorter_bad >= bad + 0.1:
            window = _longest(s, r, end, window, w_max, med)
            # A fit that runs into the longest window the run can show
            # may go on past it: not known yet.
            if window < w_max / 1.002:
                return Inference(round(med), window)
            return None
    # Successes spread evenly over the refused part (no long pause in
    # them) tell their rate and nothing of a burst.
    # (The first window after the first refusal replays whatever came
    # before it: evenly spread there, but not at the limit's rate, while
    # the two halves of the refused part differ.)
    gaps = [b - a for a, b in zip([r[0], *inside], [*inside, end], strict=True)]
    half = len(inside) - bisect.bisect_right(inside, r[0] + span / 2)
    if (
        max(gaps) <= span / 20
        and len(inside) >= 40
        and abs(2 * half - len(inside)) <= 0.05 * len(inside)
    ):
        per_second = len(inside) / span
        for seconds in (1.0, 60.0, 3600.0):
            if per_second * seconds >= 20:
                return Inference(math.floor(per_second * seconds), seconds, True)
        return None
    # Bursts, but not two windows of them yet.
    return None


def round_window(seconds: float) -> float:
    """A common window length within 5 % of ``seconds``, else ``seconds``
    to three significant digits."""
    for common in COMMON_WINDOWS:
        if abs(seconds - common) <= ROUNDING * common:
            return float(common)
    return float(f"{seconds:.3g}")


# -- what the answers advertise ------------------------------------------------


class _Advertised:
    """Limit headers seen in the answers."""

    def __init__(self) -> None:
        self.policies: Counter[str] = Counter()
        self.x_limits: Counter[int] = Counter()
        self.max_reset = 0.0

    def see(self, headers: Mapping[str, str]) -> None:
        policy = headers.get("ratelimit-policy")
        if policy:
            self.policies[policy] += 1
        limit = headers.get("x-ratelimit-limit")
        if limit is not None:
            try:
                self.x_limits[int(limit.split(",")[0])] += 1
            except ValueError:
                pass
            try:
                reset = float(headers.get("x-ratelimit-reset", ""))
            except ValueError:
                return
            if reset > 1e9:  # an epoch time, not a delay
                reset -= time.time()
            if math.isfinite(reset):
                self.max_reset = max(self.max_reset, reset)

    def rates(self) -> tuple[list[Rate], dict[str, Any]]:
        """The rates the answers advertise, and what was read."""
        if self.policies:
            policy = self.policies.most_common(1)[0][0]
            rates = _parse_policy(policy)
            if rates:
                return rates, {"RateLimit-Policy": policy}
        if self.x_limits:
            limit = self.x_limits.most_common(1)[0][0]
            info: dict[str, Any] = {"X-RateLimit-Limit": limit}
            if self.max_reset > 0:
                info["X-RateLimit-Reset (longest)"] = self.max_reset
                window = round_window(self.max_reset)
                if limit > 0:
                    return [Rate(limit, window)], info
        return [], {}


def _parse_policy(text: str) -> list[Rate]:
    """Rates from a ``RateLimit-Policy`` value, in the IETF draft's two
    forms: ``"name";q=100;w=60, ...`` and ``100;w=60, ...``."""
    rates = []
    for item in text.split(","):
        params: dict[str, str] = {}
        pieces = item.strip().split(";")
        head = pieces[0].strip()
        if head.isdigit():
            params["q"] = head
        for piece in pieces[1:]:
            key, _, value = piece.strip().partition("=")
            params[key.strip().lower()] = value.strip()
        try:
            q, w = int(params["q"]), float(params.get("w", "1"))
        except (KeyError, ValueError):
            continue
        if q > 0 and 0 < w < math.inf:
            rates.append(Rate(q, w))
    return rates


# -- the experiment ------------------------------------------------------------


class _Run:
    """The state of one probe, shared by its workers: one worker per
    index below ``active``, each asking in a loop and recording when each
    answer (or error) came."""

    def __init__(self, client: Any, httpx: Any, url: str, method: str, cap: int):
        self.client = client
        self.httpx = httpx
        self.url = url
        self.method = method
        self.left = cap
        self.active = 0
        self.workers: dict[int, asyncio.Task[None]] = {}
        self.spent = asyncio.Event()  # set when the cap is reached
        self.t0 = time.monotonic()
        self.times: list[float] = []  # seconds from t0
        self.statuses: list[int] = []
        self.error_kinds: list[str] = []  # one per ERROR, in order
        self.advertised = _Advertised()

    def resize(self, workers: int) -> None:
        """Run ``workers`` workers from now on: start the missing ones; the
        others stop after their request in flight."""
        self.active = workers
        for i in range(workers):
            task = self.workers.get(i)
            if task is None or task.done():
                self.workers[i] = asyncio.ensure_future(self._worker(i))

    async def stop(self) -> None:
        """Stop every worker once its request in flight is answered."""
        self.active = 0
        await asyncio.gather(*self.workers.values())

    async def _worker(self, i: int) -> None:
        httpx = self.httpx
        while i < self.active and self.left > 0:
            self.left -= 1
            if self.left == 0:
                self.spent.set()
            try:
                response = await self.client.request(self.method, self.url)
            except httpx.RequestError as e:  # a TransportError, a bad body
                self.times.append(time.monotonic() - self.t0)
                self.statuses.append(ERROR)
                self.error_kinds.append(type(e).__name__)
                await asyncio.sleep(0.01)  # a dead host is not hammered
                continue
            self.times.append(time.monotonic() - self.t0)
            self.statuses.append(response.status_code)
            self.advertised.see(response.headers)


def _httpx() -> Any:
    try:
        import httpx
    except ImportError:
        raise RuntimeError(
            "stanchion probe needs httpx: pip install stanchion[probe]"
        ) from None
    return httpx


def _summarize(
    run: _Run, workers: int, start: float, first: int, stop: int, end: float
) -> StepResult:
    """The step that ran ``workers`` workers from ``start`` to ``end``
    (seconds from the probe's start) and got answers ``first:stop``."""
    statuses = run.statuses[first:stop]
    times = run.times[first:stop]
    errors_before = run.statuses[:first].count(ERROR)
    kinds = run.error_kinds[errors_before : errors_before + statuses.count(ERROR)]
    step = StepResult(workers, start, end - start)
    step.requests = len(statuses)
    counts = Counter(statuses)
    step.statuses = {str(k): v for k, v in sorted(counts.items()) if k != ERROR}
    step.error_kinds = dict(Counter(kinds))
    step.ok = sum(v for k, v in counts.items() if 200 <= k < 300)
    step.limited = counts.get(429, 0)
    step.errors = counts.get(ERROR, 0)
    step.other = step.requests - step.ok - step.limited - step.errors
    if step.elapsed > 0:
        step.offered_rate = step.requests / step.elapsed
        step.success_rate = step.ok / step.elapsed
    for i, status in enumerate(statuses):
        if status != ERROR and not 200 <= status < 300:
            began = max(0.0, times[i] - start)
            step.failures_began = began
            if began > 0:
                step.rate_before_failures = (i + 1) / began
            break
    return step


def _conclude(
    result: ProbeResult,
    times: Sequence[float],
    statuses: Sequence[int],
    advertised: tuple[list[Rate], dict[str, Any]],
    end: float,
) -> bool:
    """Fill in the limit from the answers' ``times`` and ``statuses`` and
    the ``advertised`` rates; True when it is known."""
    rates, info = advertised
    if rates:
        result.source = "advertised"
        result.advertised = info
        result.limit, result.window = int(rates[0].limit), rates[0].period
        result.measured_window = None
        result.suggested = ";".join(str(r) for r in rates)
        return True
    refusals = [t for t, status in zip(times, statuses, strict=True) if status == 429]
    if not refusals:
        return False
    first_refusal = min(refusals)
    successes = [
        t for t, status in zip(times, statuses, strict=True) if 200 <= status < 300
    ]
    found = infer_limit(successes, refusals, end)
    if found is None:
        result.source = result.suggested = None
        result.notes = [
            "not enough refused traffic to tell the window: the probe needs "
            f"two windows of it and saw {end - first_refusal:.1f} s; run "
            "longer steps or more of them"
        ]
        return False
    result.notes = []
    result.limit = found.limit
    if found.sustained:
        result.source = "sustained"
        result.window = result.measured_window = found.window
    else:
        result.source = "inferred"
        result.measured_window = found.window
        result.window = round_window(found.window)
    result.suggested = str(Rate(result.limit, result.window))
    return True


def probe(
    url: str,
    concurrency: str | int | Sequence[int] = "1..10",
    duration: str | float = 30.0,
    *,
    method: str = "GET",
    headers: Mapping[str, str] | Sequence[tuple[str, str]] | None = None,
    timeout: float = 10.0,
    max_requests: int = DEFAULT_MAX_REQUESTS,
    stop_early: bool = True,
    verify: bool = True,
) -> ProbeResult:
    """Run the experiment against ``url`` (see the module docstring) and
    return what it saw. ``concurrency``: the worker counts of the steps,
    in order; ``duration``: each step's length; ``stop_early``: stop after
    the step at which the limit is known. Raises ValueError/TypeError for
    bad arguments before sending anything."""
    url = _check_url(url)
    plan = parse_concurrency(concurrency)
    seconds = parse_duration(duration)
    if not isinstance(method, str) or not _TOKEN.fullmatch(method):
        raise ValueError(f"method must be an HTTP method such as GET, not {method!r}")
    method = method.upper()
    pairs = (
        list(headers.items()) if isinstance(headers, Mapping) else list(headers or ())
    )
    for pair in pairs:
        if not (isinstance(pair, tuple) and len(pair) == 2):
            raise TypeError("headers must be a mapping or (name, value) pairs")
        parse_header(f"{pair[0]}:{pair[1]}")
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError("timeout must be a number of seconds")
    if not 0 < timeout <= MAX_DURATION:
        raise ValueError(
            f"timeout must be more than 0 and at most 600 s, not {timeout}"
        )
    if isinstance(max_requests, bool) or not isinstance(max_requests, int):
        raise TypeError("max_requests must be an int")
    if not 1 <= max_requests <= MAX_REQUESTS:
        raise ValueError(
            f"max_requests must be 1..{MAX_REQUESTS:_}, not {max_requests}"
        )
    httpx = _httpx()
    return asyncio.run(
        _probe(
            httpx,
            url,
            plan,
            seconds,
            method,
            pairs,
            timeout,
            max_requests,
            stop_early,
            verify,
        )
    )


async def _probe(
    httpx: Any,
    url: str,
    plan: tuple[int, ...],
    seconds: float,
    method: str,
    headers: list[tuple[str, str]],
    timeout: float,
    max_requests: int,
    stop_early: bool,
    verify: bool,
) -> ProbeResult:
    result = ProbeResult(url=url, method=method, steps=[])
    limits = httpx.Limits(
        max_connections=max(plan), max_keepalive_connections=max(plan)
    )
    async with httpx.AsyncClient(
        headers=headers, timeout=timeout, limits=limits, verify=verify
    ) as client:
        run = _Run(client, httpx, url, method, max_requests)
        # (workers, start, index of its first answer) per step. The workers
        # never pause: a step runs on while the answers so far are
        # studied, and the next one starts by adding or stopping workers.
        marks: list[tuple[int, float, int]] = []
        sustained: float | None = None  # the last step's sustained rate
        try:
            for i, workers in enumerate(plan):
                now = time.monotonic()
                marks.append((workers, now - run.t0, len(run.times)))
                run.resize(workers)
                try:
                    await asyncio.wait_for(
                        run.spent.wait(), now + seconds - time.monotonic()
                    )
                except asyncio.TimeoutError:
                    pass
                if run.left <= 0:
                    result.stopped = f"the cap of {max_requests} requests was reached"
                    break
                n = len(run.times)
                end = time.monotonic() - run.t0
                known = await asyncio.to_thread(
                    _conclude,
                    result,
                    run.times[:n],
                    run.statuses[:n],
                    run.advertised.rates(),
                    end,
                )
                if result.source == "sustained" and result.limit is not None:
                    # A rate measured over a few windows is off by up to a
                    # part of one: known once two steps agree.
                    rate = result.limit / (result.window or 1.0)
                    known = sustained is not None and abs(rate - sustained) <= (
                        0.05 * sustained
                    )
                    sustained = rate
                if known and stop_early and i < len(plan) - 1:
                    result.stopped = f"the limit was known after {i + 1} step(s)"
                    break
        finally:
            await run.stop()
        end = time.monotonic() - run.t0
        bounds = [*(m[1] for m in marks[1:]), end]
        stops = [*(m[2] for m in marks[1:]), len(run.times)]
        for (workers, start, first), step_end, stop in zip(
            marks, bounds, stops, strict=True
        ):
            result.steps.append(_summarize(run, workers, start, first, stop, step_end))
        for step in result.steps:
            if step.failures_began is not None:
                result.failures_began = {
                    "concurrency": step.concurrency,
                    "after": step.started + step.failures_began,
                    "offered_rate": step.rate_before_failures or step.offered_rate,
                }
                break
    return result


# -- command line --------------------------------------------------------------


def _arg(parse: Any) -> Any:
    """An argparse type from a parser that raises ValueError."""

    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    convert.__name__ = parse.__name__.replace("parse_", "")
    return convert


def _positive_int(text: str) -> int:
    try:
        return int(text.replace("_", ""))
    except ValueError:
        raise ValueError(f"expected a whole number, not {text!r}") from None


def add_probe_parser(sub: Any) -> None:
    """The ``probe`` subcommand's arguments."""
    p = sub.add_parser(
        "probe",
        help="find an HTTP endpoint's rate limit by experiment",
        description=(
            "Send requests to URL with more and more workers, one step per "
            "worker count, report what came back and suggest a rate string "
            "for a Limiter. Only for hosts you own or may test."
        ),
    )
    p.add_argument("url", metavar="URL", help="an http:// or https:// URL")
    p.add_argument(
        "--concurrency",
        type=_arg(parse_concurrency),
        default=parse_concurrency("1..10"),
        metavar="N|A..B|N,M,...",
        help=f"worker counts, one step each (default 1..10; at most {MAX_CONCURRENCY})",
    )
    p.add_argument(
        "--duration",
        type=_arg(parse_duration),
        default=30.0,
        metavar="TIME",
        help="length of each step: 30s, 2m, 500ms (default 30s; at most 600s)",
    )
    p.add_argument("--method", default="GET", help="HTTP method (default GET)")
    p.add_argument(
        "--header",
        type=_arg(parse_header),
        action="append",
        default=[],
        metavar="NAME:VALUE",
        help="a request header; repeat for more",
    )
    p.add_argument(
        "--timeout",
        type=_arg(parse_duration),
        default=10.0,
        metavar="TIME",
        help="timeout of each request (default 10s)",
    )
    p.add_argument(
        "--max-requests",
        type=_arg(_positive_int),
        default=DEFAULT_MAX_REQUESTS,
        metavar="N",
        help=f"cap on the requests of the whole probe (default {DEFAULT_MAX_REQUESTS:_})",
    )
    p.add_argument(
        "--all-steps",
        action="store_true",
        help="run every step even once the limit is known",
    )
    p.add_argument(
        "--insecure", action="store_true", help="do not verify TLS certificates"
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def run_probe_command(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """``stanchion probe``: run, print, exit status 0 (1 without httpx)."""
    try:
        result = probe(
            args.url,
            args.concurrency,
            args.duration,
            method=args.method,
            headers=args.header,
            timeout=args.timeout,
            max_requests=args.max_requests,
            stop_early=not args.all_steps,
            verify=not args.insecure,
        )
    except (ValueError, TypeError) as e:
        parser.error(str(e))
    except RuntimeError as e:
        print(f"stanchion probe: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("stanchion probe: interrupted", file=sys.stderr)
        return 130
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(result.format())
    return 0
