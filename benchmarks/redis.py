"""Rate limiting through Redis: stanchion's RedisStorage against limits,
throttled-py and fastapi-limiter, on one redis-server started here.

    python benchmarks/redis.py            # full run, rewrites RESULTS.md
    python benchmarks/redis.py --quick    # smoke run, writes nothing

Every implementation decides hits on a rate so large that every hit
passes, on 100 keys per client thread (or task), against the same local
server (no persistence). Measured, for 1 and 8 client threads (asyncio: 1
and 8 tasks on one loop): decisions per second, and p50/p99 latency of one
decision. The floor is a redis-py ``PING`` (the cheapest round trip the
client library can make). Each figure is the median over rounds; rounds
interleave the implementations so a noisy neighbour hurts them all alike.

Round trips per decision are counted by wrapping redis-py's
``send_packed_command`` (every request a client sends, a pipeline being
one) and each write of stanchion's own links, and server commands per decision from ``INFO commandstats`` (a
script's inner commands included).
"""

# The imports wait for sys.path to be fixed (see below).
# ruff: noqa: E402, I001
from __future__ import annotations

import argparse
import asyncio
import inspect
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import types
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

# This file is named redis.py: keep its directory off the import path while
# the redis package is imported, then put it back for _bench.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]
import redis
import redis.asyncio
import redis.asyncio.connection
import redis.connection

sys.path.append(_HERE)
from _bench import machine, md_table, print_table, quick, write_section

import stanchion
from stanchion.redis import _RespProtocol, _RespSocket

HUGE = 1_000_000  # per second: never exhausted while we measure
ONE_RATE = "1000000/second"
THREE_RATES = "1000000/second;10000000/minute;100000000/hour"
ALGORITHMS = ("token_bucket", "fixed_window", "sliding_window")

LIMITS_ASYNC = "limits (asyncio) fixed window, 1 rate"

# Targets from the issue.
FLOOR_TARGET = 1.3  # p50 <= 1.3x the PING floor
SPEEDUP_TARGET = 1.5  # >= 1.5x the throughput of limits' fixed window


# -- the server ---------------------------------------------------------------


@contextmanager
def redis_server() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    with tempfile.TemporaryDirectory(prefix="stanchion-bench-") as d:
        server = shutil.which("redis-server") or "redis-server"
        proc = subprocess.Popen(
            [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", d, "--logfile", os.path.join(d, "log")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            client = redis.Redis(port=port)
            deadline = time.monotonic() + 10
            while True:
                try:
                    client.ping()
                    break
                except redis.ConnectionError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.02)
            client.close()
            yield port
        finally:
            proc.terminate()
            proc.wait()


# -- implementations ------------------------------------------------------------

SyncFactory = Callable[[], Callable[[str], object]]
AsyncFactory = Callable[[], Awaitable[Callable[[str], Awaitable[object]]]]


@dataclass
class Case:
    name: str
    group: str  # "floor", "stanchion" or "peer"
    sync: SyncFactory | None = None
    aio: AsyncFactory | None = None


def sync_cases(url: str, port: int) -> list[Case]:
    from limits import parse
    from limits.storage import RedisStorage as LimitsRedis
    from limits.strategies import (
        FixedWindowRateLimiter,
        MovingWindowRateLimiter,
        SlidingWindowCounterRateLimiter,
    )
    from throttled import RateLimiterType, Throttled, rate_limiter
    from throttled import store as tstore

    cases: list[Case] = []

    ping_client = redis.Redis(port=port)
    cases.append(
        Case(
            "redis-py PING (floor)",
            "floor",
            sync=lambda: lambda key: ping_client.ping(),
        )
    )

    storage = stanchion.RedisStorage(url, prefix="bench:")
    for algorithm in ALGORITHMS:
        for label, rates in (("1 rate", ONE_RATE), ("3 rates", THREE_RATES)):
            lim = stanchion.Limiter(rates, algorithm=algorithm, storage=storage)
            cases.append(
                Case(
                    f"stanchion {algorithm}, {label}",
                    "stanchion",
                    sync=lambda lim=lim: lim.hit,
                )
            )

    one = parse(ONE_RATE)
    three = [parse(r) for r in THREE_RATES.split(";")]
    for name, cls in (
        ("fixed window", FixedWindowRateLimiter),
        ("moving window", MovingWindowRateLimiter),
        ("sliding window counter", SlidingWindowCounterRateLimiter),
    ):
        # Separate key prefixes: limits' strategies would share keys.
        lstorage = LimitsRedis(
            f"redis://127.0.0.1:{port}", key_prefix=f"LIMITS-{cls.__name__}"
        )
        strategy = cls(lstorage)
        cases.append(
            Case(
                f"limits {name}, 1 rate",
                "peer",
                sync=lambda s=strategy: lambda key: s.hit(one, key),
            )
        )
        if cls is FixedWindowRateLimiter:
            # limits checks several rates one call (one round trip) each.
            def three_hits(s: Any = strategy) -> Callable[[str], object]:
                return lambda key: all([s.hit(r, key) for r in three])

            cases.append(
                Case("limits fixed window, 3 rates (3 calls)", "peer", sync=three_hits)
            )

    tstore_ = tstore.RedisStore(server=f"redis://127.0.0.1:{port}/0")
    for using in (
        RateLimiterType.FIXED_WINDOW,
        RateLimiterType.SLIDING_WINDOW,
        RateLimiterType.TOKEN_BUCKET,
        RateLimiterType.GCRA,
    ):
        t = Throttled(
            using=using.value,
            quota=rate_limiter.per_sec(HUGE, burst=HUGE),
            store=tstore_,
            timeout=-1,
        )
        cases.append(
            Case(
                f"throttled-py {using.value}",
                "peer",
                sync=lambda t=t: lambda key: t.limit(key),
            )
        )
    return cases


def async_cases(url: str, port: int) -> list[Case]:
    from fastapi_limiter.depends import RateLimiter as FastAPIRateLimiter
    from limits import parse
    from limits.aio.storage import RedisStorage as LimitsAioRedis
    from limits.aio.strategies import FixedWindowRateLimiter
    from pyrate_limiter import Duration, Limiter, Rate
    from pyrate_limiter.buckets.redis_bucket import RedisBucket
    from starlette.requests import Request
    from starlette.responses import Response

    cases: list[Case] = []

    async def ping() -> Callable[[str], Awaitable[object]]:
        client = redis.asyncio.Redis(port=port)
        return lambda key: client.ping()

    cases.append(Case("redis-py asyncio PING (floor)", "floor", aio=ping))

    storage = stanchion.RedisStorage(url, prefix="abench:")
    for algorithm in ALGORITHMS:
        for label, rates in (("1 rate", ONE_RATE), ("3 rates", THREE_RATES)):
            lim = stanchion.Limiter(rates, algorithm=algorithm, storage=storage)

            async def make(lim: Any = lim) -> Callable[[str], Awaitable[object]]:
                return lim.ahit  # type: ignore[no-any-return]

            cases.append(Case(f"stanchion {algorithm}, {label}", "stanchion", aio=make))

    async def limits_fixed() -> Callable[[str], Awaitable[object]]:
        strategy = FixedWindowRateLimiter(
            LimitsAioRedis(f"async+redis://127.0.0.1:{port}", implementation="redispy")
        )
        item = parse(ONE_RATE)
        return lambda key: strategy.hit(item, key)

    cases.append(
        Case("limits (asyncio) fixed window, 1 rate", "peer", aio=limits_fixed)
    )

    async def fastapi_limiter() -> Callable[[str], Awaitable[object]]:
        # What its RateLimiter dependency does per request, called with a
        # bare Starlette Request: no FastAPI app, server or HTTP involved.
        client = redis.asyncio.Redis(port=port)
        bucket = await RedisBucket.init(
            [Rate(HUGE, Duration.SECOND)], client, "fl-bench"
        )
        dep = FastAPIRateLimiter(limiter=Limiter(bucket))
        app = types.SimpleNamespace(routes=[])
        response = Response()

        async def call(key: str) -> object:
            scope = {
                "type": "http", "app": app, "path": "/" + key, "method": "GET",
                "headers": [], "client": ("10.0.0.1", 1234), "query_string": b"",
            }  # fmt: skip
            return await dep(Request(scope), response)

        return call

    cases.append(
        Case(
            "fastapi-limiter (pyrate-limiter RedisBucket)", "peer", aio=fastapi_limiter
        )
    )
    return cases


# -- timing -----------------------------------------------------------------------


@dataclass
class Result:
    ops_per_s: float
    p50_us: float
    p99_us: float


def _summary(latencies: list[int], ops: int, elapsed: float) -> Result:
    latencies.sort()
    n = len(latencies)
    return Result(
        ops / elapsed,
        latencies[n // 2] / 1e3,
        latencies[min(n - 1, n * 99 // 100)] / 1e3,
    )


def run_threads(case: Case, threads: int, seconds: float) -> Result:
    assert case.sync is not None
    calls = [case.sync() for _ in range(threads)]
    start_gate = threading.Barrier(threads + 1)
    stop = threading.Event()
    per_thread: list[list[int]] = [[] for _ in range(threads)]

    def worker(n: int) -> None:
        call = calls[n]
        keys = [f"t{n}-{i}" for i in range(100)]
        for key in keys:  # warm-up: connections, scripts
            call(key)
        lat = per_thread[n]
        clock = time.perf_counter_ns
        i = 0
        start_gate.wait()
        while not stop.is_set():
            t0 = clock()
            call(keys[i % 100])
            lat.append(clock() - t0)
            i += 1

    pool = [threading.Thread(target=worker, args=(n,)) for n in range(threads)]
    for t in pool:
        t.start()
    start_gate.wait()
    t0 = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for t in pool:
        t.join()
    elapsed = time.perf_counter() - t0
    merged = [x for lat in per_thread for x in lat]
    return _summary(merged, len(merged), elapsed)


async def run_tasks(case: Case, tasks: int, seconds: float) -> Result:
    assert case.aio is not None
    call = await case.aio()
    stop = False
    per_task: list[list[int]] = [[] for _ in range(tasks)]

    async def worker(n: int) -> None:
        keys = [f"a{n}-{i}" for i in range(100)]
        lat = per_task[n]
        clock = time.perf_counter_ns
        i = 0
        while not stop:
            t0 = clock()
            await call(keys[i % 100])
            lat.append(clock() - t0)
            i += 1

    for key in (f"a0-{i}" for i in range(100)):  # warm-up
        await call(key)
    t0 = time.perf_counter()
    running = [asyncio.create_task(worker(n)) for n in range(tasks)]
    await asyncio.sleep(seconds)
    stop = True
    await asyncio.gather(*running)
    elapsed = time.perf_counter() - t0
    merged = [x for lat in per_task for x in lat]
    return _summary(merged, len(merged), elapsed)


# -- counting round trips -----------------------------------------------------------


class Counter:
    """Counts requests sent by every redis-py connection, sync and asyncio,
    and by stanchion's pipelined asyncio link."""

    def __init__(self) -> None:
        self.sent = 0
        self._patched: list[tuple[type, Any]] = []

    def __enter__(self) -> Counter:
        counter = self
        for cls in (
            redis.connection.AbstractConnection,
            redis.asyncio.connection.AbstractConnection,
        ):
            original = cls.send_packed_command
            self._patched.append((cls, original))

            if inspect.iscoroutinefunction(original):

                async def asend(
                    self: Any, *a: Any, _o: Any = original, **k: Any
                ) -> Any:
                    counter.sent += 1
                    return await _o(self, *a, **k)

                cls.send_packed_command = asend  # type: ignore[method-assign]
            else:

                def send(self: Any, *a: Any, _o: Any = original, **k: Any) -> Any:
                    counter.sent += 1
                    return _o(self, *a, **k)

                cls.send_packed_command = send  # type: ignore[method-assign]
        # stanchion's lean links write on their own sockets and protocol.
        proto_send = _RespProtocol.send
        sock_exchange = _RespSocket.exchange
        self._own = (proto_send, sock_exchange)

        def psend(self: Any, packed: bytes) -> Any:
            counter.sent += 1
            return proto_send(self, packed)

        def exchange(self: Any, packed: bytes) -> Any:
            counter.sent += 1
            return sock_exchange(self, packed)

        _RespProtocol.send = psend  # type: ignore[method-assign]
        _RespSocket.exchange = exchange  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        for cls, original in self._patched:
            cls.send_packed_command = original  # type: ignore[method-assign]
        _RespProtocol.send, _RespSocket.exchange = self._own  # type: ignore[method-assign]


def server_calls(client: redis.Redis) -> int:
    stats = client.info("commandstats")
    return sum(int(v["calls"]) for v in stats.values())


def count_round_trips(case: Case, port: int, n: int = 200) -> tuple[float, float]:
    """(requests sent, server commands) per decision."""
    admin = redis.Redis(port=port)
    if case.sync is not None:
        call = case.sync()
        for i in range(20):
            call(f"rt-{i}")
        before = server_calls(admin)
        with Counter() as c:
            for i in range(n):
                call(f"rt-{i % 20}")
        after = server_calls(admin)
    else:
        assert case.aio is not None

        async def go() -> tuple[int, int, int]:
            call = await case.aio()  # type: ignore[misc]
            for i in range(20):
                await call(f"rt-{i}")
            before = server_calls(admin)
            with Counter() as c:
                for i in range(n):
                    await call(f"rt-{i % 20}")
            return before, server_calls(admin), c.sent

        before, after, sent = asyncio.run(go())
        admin.close()
        return sent / n, (after - before - 1) / n
    admin.close()
    # INFO itself is counted once (the first one).
    return c.sent / n, (after - before - 1) / n


# -- the run -----------------------------------------------------------------------


def median_result(results: list[Result]) -> Result:
    return Result(
        statistics.median(r.ops_per_s for r in results),
        statistics.median(r.p50_us for r in results),
        statistics.median(r.p99_us for r in results),
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="smoke run, writes nothing"
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=0.6)
    args = parser.parse_args()
    if args.quick:
        os.environ["STANCHION_BENCH_QUICK"] = "1"
    rounds, seconds = (1, 0.05) if quick() else (args.rounds, args.seconds)

    load_before = os.getloadavg()[0]
    with redis_server() as port:
        url = f"redis://127.0.0.1:{port}/0"
        scases = sync_cases(url, port)
        acases = async_cases(url, port)

        trips = {c.name: count_round_trips(c, port) for c in scases}
        atrips = {c.name: count_round_trips(c, port) for c in acases}

        sync_res: dict[tuple[str, int], list[Result]] = {}
        async_res: dict[tuple[str, int], list[Result]] = {}
        for r in range(rounds):
            for case in scases:
                for threads in (1, 8):
                    res = run_threads(case, threads, seconds)
                    sync_res.setdefault((case.name, threads), []).append(res)
            for case in acases:
                for tasks in (1, 8):
                    res = asyncio.run(run_tasks(case, tasks, seconds))
                    async_res.setdefault((case.name, tasks), []).append(res)
            print(f"round {r + 1}/{rounds} done", file=sys.stderr)

    body = [
        "One local redis-server (no persistence) shared with the benchmark on "
        "this machine; every hit allowed (a 1,000,000/second rate). "
        f"Medians of {rounds} interleaved rounds of {seconds} s per figure. "
        "Ratios: p50 against the PING floor of the same kind (blocking or "
        "asyncio, same thread count), and decisions/s against limits' fixed "
        "window (blocking) or limits' asyncio fixed window (asyncio). "
        f"Load average {load_before:.1f} before the run and "
        f"{os.getloadavg()[0]:.1f} after it (the machine is shared): p99 and "
        "a single client's decisions/s include scheduling stalls of "
        "milliseconds; p50 is the steadiest figure."
    ]
    verdicts: list[str] = []
    sections = (
        (
            "Blocking clients",
            scases,
            sync_res,
            trips,
            "threads",
            "limits fixed window, 1 rate",
        ),
        ("asyncio clients", acases, async_res, atrips, "tasks", LIMITS_ASYNC),
    )
    for title, cases, res, trip, unit, base in sections:
        floor_name = next(c.name for c in cases if c.group == "floor")
        headers = [
            "implementation",
            unit,
            "decisions/s",
            "p50",
            "p99",
            "p50 / floor",
            "vs limits FW",
            "requests/decision",
            "server cmds/decision",
        ]
        rows = []
        for case in cases:
            for n in (1, 8):
                m = median_result(res[(case.name, n)])
                floor = median_result(res[(floor_name, n)])
                peer = median_result(res[(base, n)])
                sent, cmds = trip[case.name]
                vs_floor = m.p50_us / floor.p50_us
                vs_peer = m.ops_per_s / peer.ops_per_s
                rows.append(
                    [
                        case.name,
                        n,
                        f"{m.ops_per_s:,.0f}",
                        f"{m.p50_us:.1f} us",
                        f"{m.p99_us:.1f} us",
                        f"{vs_floor:.2f}x",
                        f"{vs_peer:.2f}x",
                        f"{sent:.2f}",
                        f"{cmds:.2f}",
                    ]
                )
                if case.group == "stanchion":
                    ok_floor = "met" if vs_floor <= FLOOR_TARGET else "NOT met"
                    ok_peer = "met" if vs_peer >= SPEEDUP_TARGET else "NOT met"
                    verdicts.append(
                        f"- {title.lower()}, {case.name}, {n} {unit}: p50 "
                        f"{vs_floor:.2f}x the floor (target <= {FLOOR_TARGET}x: "
                        f"{ok_floor}); {vs_peer:.2f}x limits' fixed window "
                        f"(target >= {SPEEDUP_TARGET}x: {ok_peer})"
                    )
        print(f"== {title}")
        print_table(headers, rows)
        body.append(f"### {title}\n\n" + md_table(headers, rows))

    rt = [
        counts[f"stanchion {a}, {label}"]
        for counts in (trips, atrips)
        for a in ALGORITHMS
        for label in ("1 rate", "3 rates")
    ]
    same = len({round(s, 2) for s, _ in rt}) == 1 and rt[0][0] == 1.0
    verdicts.append(
        "- 3 rates cost the same round trips as 1: "
        + ("met" if same else "NOT met")
        + f" ({', '.join(f'{s:.2f}' for s, _ in rt)} requests per decision)"
    )
    print("\n".join(verdicts))
    body.append("### Targets\n\n" + "\n".join(verdicts))
    write_section("Redis", "\n\n".join(body))
    print(machine())
    return 0


if __name__ == "__main__":
    sys.exit(main())
