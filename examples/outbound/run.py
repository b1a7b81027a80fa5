"""The outbound scene, in one command: ``python examples/outbound/run.py``.

Three loopback providers, each enforcing its own limit with 429s:

- ``a``: 350 per 30 seconds, a sliding log, advertising its limit;
- ``b``: 400 per 30 seconds, fixed windows, advertising its limit;
- ``c``: 300 per 30 seconds, a sliding log, silent (a bare 429).

First ``probe`` finds ``c``'s limit (``c`` then restarts, forgetting the
probe's requests). Then two processes of the search service
(``search.py``, under uvicorn) share the three budgets through Redis,
each provider's rate set a few % under its limit (for ``c``, under what
the probe found), and a load generator offers 3x the providers' combined
capacity for 30 seconds, half to each process. A third of the way in,
``b`` is killed; half-way, it comes back.

It prints, and returns as a dict (``--json``): the providers' 429s, the
share of searches answered, latencies, what happened to ``b``, and what
the probe found. ``--window W`` scales every limit and time to a window
of W seconds (same rates per second); the tests run it with a few
seconds. Needs redis-server on the PATH and the ``fastapi``, ``redis``
and ``test`` extras (``scripts/outbound`` sets them up).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from providers import FakeProvider  # noqa: E402

from stanchion._probe import probe  # noqa: E402

HEADROOM = 0.97  # the share of a provider's limit the pool spends
OVERLOAD = 3.0  # offered load, in multiples of the combined capacity


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _server_env() -> dict[str, str]:
    drop = ("LD_PRELOAD", "ASAN_OPTIONS", "UBSAN_OPTIONS")
    return {k: v for k, v in os.environ.items() if k not in drop}


@contextmanager
def redis_server() -> Iterator[str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit(
            "redis-server is not on the PATH (apt-get install redis-server)"
        )
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                tmp,
            ],
            stdout=subprocess.DEVNULL,
            env=_server_env(),
        )
        try:
            _wait_for_port(port, proc)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            proc.terminate()
            proc.wait(10)


def _wait_for_port(port: int, proc: subprocess.Popen[Any], timeout: float = 30) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(
                f"process exited with {proc.returncode} before listening"
            )
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on port {port} after {timeout} s")


@contextmanager
def search_services(
    n: int,
    providers: list[tuple[str, str, str]],
    redis_url: str,
    deadline: float,
    cooldown: float,
) -> Iterator[list[str]]:
    env = dict(
        os.environ,
        OUTBOUND_PROVIDERS=json.dumps(providers),
        REDIS_URL=redis_url,
        OUTBOUND_DEADLINE=str(deadline),
        OUTBOUND_COOLDOWN=str(cooldown),
        # search.py's directory; not this process's sys.path, whose first
        # entry is the running script's directory (benchmarks/ holds a
        # redis.py).
        PYTHONPATH=os.pathsep.join(
            p for p in (str(HERE), os.environ.get("PYTHONPATH", "")) if p
        ),
    )
    procs, urls = [], []
    try:
        for _ in range(n):
            port = free_port()
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "uvicorn",
                        "search:app",
                        "--port",
                        str(port),
                        "--log-level",
                        "warning",
                        "--no-access-log",
                    ],
                    cwd=HERE,
                    env=env,
                )
            )
            urls.append(f"http://127.0.0.1:{port}")
        for proc, url in zip(procs, urls, strict=True):
            _wait_for_port(int(url.rsplit(":", 1)[1]), proc)
        yield urls
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(10)


async def _offer(
    urls: list[str],
    rate: float,
    duration: float,
    deadline: float,
    events: list[tuple[float, Any]],
) -> list[tuple[float, float, int, Any, float]]:
    """Open-loop load: one search every 1/rate seconds for ``duration``,
    alternating between the services. Returns (start, latency, status,
    detail, held) per search: detail is the provider that answered (200)
    or the retry_after (503); status 0 for a failure to get an answer;
    held is how long the service says (Server-Timing) it held the search,
    NaN when it did not say. ``events`` are (time from start, callable)
    run on the way."""
    results: list[tuple[float, float, int, Any, float]] = []
    limits = httpx.Limits(max_connections=400, max_keepalive_connections=400)
    async with httpx.AsyncClient(timeout=deadline + 5, limits=limits) as client:

        async def one(i: int, t0: float) -> None:
            start = time.monotonic()
            try:
                r = await client.get(
                    urls[i % len(urls)] + "/search", params={"q": f"q{i}"}
                )
                status = r.status_code
                body = r.json()
                detail = (
                    body.get("retry_after") if status == 503 else body.get("provider")
                )
                held = _held(r.headers.get("server-timing", ""))
            except (httpx.HTTPError, ValueError):
                status, detail, held = 0, None, math.nan
            results.append((start - t0, time.monotonic() - start, status, detail, held))

        t0 = time.monotonic()
        tasks = []
        pending = sorted(events, key=lambda e: e[0])
        n = int(rate * duration)
        for i in range(n):
            at = t0 + i / rate
            while pending and pending[0][0] <= at - t0:
                await asyncio.to_thread(pending.pop(0)[1])
            delay = at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i, t0)))
        await asyncio.gather(*tasks)
    return results


def _held(timing: str) -> float:
    """Seconds from a ``Server-Timing: search;dur=<ms>`` header."""
    for metric in timing.split(","):
        name, _, params = metric.strip().partition(";")
        if name == "search" and params.startswith("dur="):
            return float(params[4:]) / 1000
    return math.nan


def _quantile(xs: list[float], q: float) -> float:
    if not xs:
        return math.nan
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def run_scene(window: float = 30.0, duration: float | None = None) -> dict[str, Any]:
    """The whole scene; returns its figures."""
    duration = window if duration is None else duration
    k = window / 30.0
    specs = [
        ("a", 350, "sliding", True),
        ("b", 400, "fixed", True),
        ("c", 300, "sliding", False),
    ]

    def make(name: str, limit: int, kind: str, advertise: bool) -> FakeProvider:
        limit = max(1, round(limit * k))
        return FakeProvider(name, limit, window, kind=kind, advertise=advertise)

    # 1. What is c's limit? It does not say.
    with make(*specs[2]) as c_alone:
        found = probe(
            c_alone.url + "/search?q=probe", concurrency="2,4", duration=window * 1.25
        )
    if found.limit is None or found.window is None:
        raise SystemExit(f"probe found no limit for c:\n{found.format()}")
    truth = c_alone.limit / window
    found_rate = found.limit / found.window
    fakes = {spec[0]: make(*spec) for spec in specs}
    for f in fakes.values():
        f.start()
    try:
        rates = {
            name: f"{math.floor(f.limit * HEADROOM)} per {window:g} seconds"
            for name, f in fakes.items()
            if name != "c"
        }
        rates["c"] = (
            f"{math.floor(found.limit * HEADROOM)} per {found.window:g} seconds"
        )
        # 2. The load, through two processes sharing the budgets in Redis.
        capacity = sum(f.limit for f in fakes.values()) / window
        deadline, cooldown = 0.25, window / 6
        providers = [(name, f.url, rates[name]) for name, f in fakes.items()]
        b = fakes["b"]
        downtime: dict[str, float] = {}
        with (
            redis_server() as redis_url,
            search_services(2, providers, redis_url, deadline, cooldown) as urls,
        ):
            before = {name: (f.served, f.refused) for name, f in fakes.items()}
            t0 = time.monotonic()

            def kill() -> None:
                downtime["killed"] = time.monotonic() - t0
                downtime["served_before"] = b.served
                b.stop()

            def revive() -> None:
                downtime["revived"] = time.monotonic() - t0
                b.restart()

            results = asyncio.run(
                _offer(
                    urls,
                    OVERLOAD * capacity,
                    duration,
                    deadline,
                    [(duration / 3, kill), (duration / 2, revive)],
                )
            )
        served_after = b.served - downtime["served_before"]
    finally:
        for f in fakes.values():
            f.stop()
    answered = [r for r in results if r[2] == 200]
    refused = [r for r in results if r[2] == 503]
    failed = [r for r in results if r[2] not in (200, 503)]
    late = [r for r in answered if r[1] > deadline + 0.1]
    return {
        "window_s": window,
        "duration_s": duration,
        # From the first search to the last answer: longer than the
        # duration when the services fall behind (a slow machine).
        "span_s": max((r[0] + r[1] for r in results), default=0.0),
        "offered": len(results),
        "offered_per_s": OVERLOAD * capacity,
        "capacity_per_s": capacity,
        "answered": len(answered),
        "answered_share": len(answered) / len(results),
        "refused": len(refused),
        "refused_with_retry_after": sum(
            1 for r in refused if r[3] is not None and r[3] >= 0
        ),
        "failed": len(failed),
        "answered_late": len(late),
        "provider_429s": {n: f.refused - before[n][1] for n, f in fakes.items()},
        "provider_served": {n: f.served - before[n][0] for n, f in fakes.items()},
        "answered_p50_ms": 1000 * _quantile([r[1] for r in answered], 0.5),
        "answered_p99_ms": 1000 * _quantile([r[1] for r in answered], 0.99),
        "refused_p50_ms": 1000 * _quantile([r[1] for r in refused], 0.5),
        "refused_p99_ms": 1000 * _quantile([r[1] for r in refused], 0.99),
        # What the services held the searches (Server-Timing): the part
        # the deadline bounds, without the client's and the accept queues.
        "answered_held_p99_ms": 1000 * _quantile([r[4] for r in answered], 0.99),
        "refused_held_p50_ms": 1000 * _quantile([r[4] for r in refused], 0.5),
        "refused_held_p99_ms": 1000 * _quantile([r[4] for r in refused], 0.99),
        "untimed": sum(1 for r in results if r[2] and math.isnan(r[4])),
        "b_killed_at_s": downtime["killed"],
        "b_revived_at_s": downtime["revived"],
        "b_served_after_revival": served_after,
        "b_rejoined_after_s": _rejoined(answered, downtime["revived"]),
        "probe_suggested": found.suggested,
        "probe_seconds": sum(step.elapsed for step in found.steps),
        "probe_error": found_rate / truth - 1,
        "rates": rates,
        "deadline_s": deadline,
        "cooldown_s": cooldown,
        "mean_answered_latency_ms": 1000 * statistics.fmean([r[1] for r in answered])
        if answered
        else math.nan,
    }


def _rejoined(
    answered: list[tuple[float, float, int, Any, float]], revived: float
) -> float | None:
    """Seconds from b's revival to the first search it answered after."""
    after = [r[0] for r in answered if r[3] == "b" and r[0] >= revived]
    return min(after) - revived if after else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--window", type=float, default=30.0, help="providers' window, s"
    )
    parser.add_argument(
        "--duration", type=float, default=None, help="load, s (= window)"
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    figures = run_scene(args.window, args.duration)
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        _report(figures)
    ok = sum(figures["provider_429s"].values()) == 0 and figures["failed"] == 0
    return 0 if ok else 1


def _report(f: dict[str, Any]) -> None:
    print(
        f"{f['offered']} searches in {f['duration_s']:g} s "
        f"({f['offered_per_s']:.0f}/s, {OVERLOAD:g}x the providers' "
        f"{f['capacity_per_s']:.0f}/s), two processes sharing the budgets in Redis"
    )
    print(f"  rates used:       {f['rates']}")
    print(f"  providers' 429s:  {f['provider_429s']}")
    print(f"  providers served: {f['provider_served']}")
    print(
        f"  answered:         {f['answered']} ({f['answered_share']:.1%}), "
        f"p50 {f['answered_p50_ms']:.1f} ms, p99 {f['answered_p99_ms']:.1f} ms, "
        f"{f['answered_late']} over 100 ms past the deadline "
        f"(held by the service: p99 {f['answered_held_p99_ms']:.1f} ms)"
    )
    print(
        f"  refused (503):    {f['refused']}, {f['refused_with_retry_after']} with "
        f"retry_after, p50 {f['refused_p50_ms']:.1f} ms, p99 {f['refused_p99_ms']:.1f} ms"
    )
    print(f"  failed:           {f['failed']}")
    rejoined = f["b_rejoined_after_s"]
    print(
        f"  b killed at {f['b_killed_at_s']:.1f} s, back at {f['b_revived_at_s']:.1f} s, "
        + (
            f"answering again {rejoined:.1f} s later ({f['b_served_after_revival']} served)"
            if rejoined is not None
            else "never answered again"
        )
    )
    print(
        f"  probe: c suggested {f['probe_suggested']!r}, "
        f"{f['probe_error']:+.1%} from its true limit"
    )


if __name__ == "__main__":
    sys.exit(main())
