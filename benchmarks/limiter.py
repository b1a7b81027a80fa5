"""One ``hit`` on one key: stanchion's Limiter against limits, throttled-py
and PyrateLimiter, plus bytes of memory per tracked key.

    python benchmarks/limiter.py            # full run, rewrites RESULTS.md
    python benchmarks/limiter.py --quick    # smoke run, writes nothing

Speed: every implementation is called the same way, a pre-bound method on
one str key (``call(key)``), in this process, on two paths:

- allowed: a rate so large that every hit passes;
- denied: a key already exhausted (1 per hour, after one hit).

The floor is ``dict.get`` on one key, the cheapest keyed lookup Python has.
Each figure is the median over rounds of the median of repeats; rounds
interleave the implementations so a noisy neighbour hurts them all alike.
Times are process CPU time (``time.process_time``, every thread of this
process), so time the CPU spends on other processes is left out.

Memory: each implementation fills 1M keys ``client-0`` ... in a fresh
subprocess; RSS is read before and after (psutil). The caller's key string
is dropped after each hit, so the delta is what the limiter retains, keys
included.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

KEY = "client-42"
HUGE = 1_000_000_000  # per second: never exhausted while we measure
ALGORITHMS = ("token_bucket", "fixed_window", "sliding_window")
MEMORY_KEYS = 1_000_000
QUICK_MEMORY_KEYS = 20_000

# Targets from the issue.
FLOOR_TARGET = 2.5  # hit <= 2.5x dict.get
SPEEDUP_TARGET = 25.0  # >= 25x faster than limits' fixed window, throttled GCRA
BYTES_TARGET = 100.0  # bytes per tracked key, key included
CLIENT_BYTES_TARGET = 64.0  # bytes per client counted by the middleware


@dataclass
class Impl:
    """One implementation on one path, ready to time.

    ``stmt`` is timed with ``env`` as globals; ``allowed()`` makes one more
    call and says whether it passed (checked before and after timing, so a
    benchmark that silently measures the wrong path fails loudly)."""

    name: str
    counterpart: str  # the stanchion algorithm it is compared with
    stmt: str
    env: dict[str, Any]
    allowed: Callable[[], bool]
    close: Callable[[], None] = field(default=lambda: None)


# -- implementations -----------------------------------------------------------
# Each maker returns an Impl for path "allowed" or "denied". Denied keys are
# exhausted with one hit first.


def make_floor(path: str) -> Impl:
    table = {KEY: 1}
    return Impl(
        "dict.get (floor)",
        "",
        "call(key)",
        {"call": table.get, "key": KEY},
        lambda: path == "allowed",  # the floor has no paths: time it twice
    )


def make_stanchion(algorithm: str) -> Callable[[str], Impl]:
    def make(path: str) -> Impl:
        import stanchion

        rate = f"{HUGE}/second" if path == "allowed" else "1/hour"
        lim = stanchion.Limiter(rate, algorithm=algorithm)
        if path == "denied":
            lim.hit(KEY)
        return Impl(
            f"stanchion {algorithm}",
            algorithm,
            "call(key)",
            {"call": lim.hit, "key": KEY},
            lambda: bool(lim.hit(KEY)),
        )

    return make


def make_limits(strategy: str) -> Callable[[str], Impl]:
    def make(path: str) -> Impl:
        import limits
        from limits.storage import MemoryStorage

        storage = MemoryStorage()
        cls = getattr(limits.strategies, strategy)
        limiter = cls(storage)
        if path == "allowed":
            item = limits.RateLimitItemPerSecond(HUGE)
        else:
            item = limits.RateLimitItemPerHour(1)
            limiter.hit(item, KEY)
        counterpart = {
            "FixedWindowRateLimiter": "fixed_window",
            "MovingWindowRateLimiter": "sliding_window",
            "SlidingWindowCounterRateLimiter": "sliding_window",
        }[strategy]
        label = strategy.removesuffix("RateLimiter")
        return Impl(
            f"limits {label} (MemoryStorage)",
            counterpart,
            "call(item, key)",
            {"call": limiter.hit, "item": item, "key": KEY},
            lambda: bool(limiter.hit(item, KEY)),
        )

    return make


def make_throttled(using: str) -> Callable[[str], Impl]:
    def make(path: str) -> Impl:
        import throttled

        quota = throttled.per_sec(HUGE) if path == "allowed" else throttled.per_hour(1)
        t = throttled.Throttled(
            using=using, quota=quota, store=throttled.MemoryStore(), timeout=-1
        )
        if path == "denied":
            t.limit(KEY)
        counterpart = "token_bucket"
        return Impl(
            f"throttled-py {using} (MemoryStore)",
            counterpart,
            "call(key)",
            {"call": t.limit, "key": KEY},
            lambda: not t.limit(KEY).limited,
        )

    return make


def make_pyrate(kind: str) -> Callable[[str], Impl]:
    def make(path: str) -> Impl:
        import pyrate_limiter as pl

        if path == "allowed":
            rate = pl.Rate(HUGE, pl.Duration.SECOND)
        else:
            rate = pl.Rate(1, pl.Duration.HOUR)
        if kind == "InMemoryBucket":
            lim = pl.Limiter(rate)
            counterpart = "sliding_window"
        else:
            lim = pl.Limiter(pl.StateBucket([rate], algorithm=pl.GCRA()))
            counterpart = "token_bucket"
        if path == "denied":
            lim.try_acquire(KEY, blocking=False)
        return Impl(
            f"pyrate-limiter {kind}",
            counterpart,
            "call(key, blocking=False)",
            {"call": lim.try_acquire, "key": KEY},
            lambda: bool(lim.try_acquire(KEY, blocking=False)),
            lim.close,
        )

    return make


MAKERS: list[Callable[[str], Impl]] = [
    make_floor,
    *(make_stanchion(a) for a in ALGORITHMS),
    make_limits("FixedWindowRateLimiter"),
    make_limits("MovingWindowRateLimiter"),
    make_limits("SlidingWindowCounterRateLimiter"),
    make_throttled("token_bucket"),
    make_throttled("gcra"),
    make_pyrate("InMemoryBucket"),
    make_pyrate("StateBucket GCRA"),
]

FLOOR = "dict.get (floor)"


def time_impl(make: Callable[[str], Impl], path: str) -> tuple[str, str, float]:
    from _bench import per_call_ns

    impl = make(path)
    try:
        expect = path == "allowed"
        if impl.allowed() is not expect:
            raise AssertionError(f"{impl.name}: the {path} path is not {path}")
        ns = per_call_ns(impl.stmt, impl.env, clock=time.process_time)
        if impl.allowed() is not expect:
            raise AssertionError(f"{impl.name}: left the {path} path while timed")
        return impl.name, impl.counterpart, ns
    finally:
        impl.close()


def measure_speed(
    rounds: int,
) -> tuple[dict[str, dict[str, float]], dict[str, str], tuple[float, float]]:
    """{name: {path: median ns}}, {name: counterpart}, the floor's range."""
    samples: dict[str, dict[str, list[float]]] = {}
    counterparts: dict[str, str] = {}
    for _ in range(rounds):
        for make in MAKERS:
            for path in ("allowed", "denied"):
                name, counterpart, ns = time_impl(make, path)
                samples.setdefault(name, {}).setdefault(path, []).append(ns)
                counterparts[name] = counterpart
                gc.collect()
    medians = {
        name: {p: statistics.median(v) for p, v in paths.items()}
        for name, paths in samples.items()
    }
    # The floor has no paths: pool its samples, so both ratios share one
    # (steadier) denominator. Its spread shows how noisy the machine was.
    pooled = samples[FLOOR]["allowed"] + samples[FLOOR]["denied"]
    medians[FLOOR] = dict.fromkeys(("allowed", "denied"), statistics.median(pooled))
    return medians, counterparts, (min(pooled), max(pooled))


# -- where stanchion's time goes ------------------------------------------------


def measure_context(rounds: int) -> list[tuple[str, float]]:
    """Reference calls around stanchion's token bucket hit: a bare C method
    call that does nothing (what any C call costs from Python), the clock as
    Python sees it, and stanchion's own variants of the call."""
    import stanchion
    from _bench import per_call_ns

    lim = stanchion.Limiter(f"{HUGE}/second")
    full = stanchion.Limiter("1/hour")
    full.hit(KEY)
    # The penalty box: a hit on a limiter with a penalty, while no key has
    # penalty state (its ban table is empty) and while another key is
    # banned (one more probe per hit); and a banned client's refusal.
    penalty = stanchion.Penalty(after=1, within=3600, ban=3600)
    pen = stanchion.Limiter(f"{HUGE}/second", penalty=penalty)
    pen_busy = stanchion.Limiter(f"{HUGE}/hour", penalty=penalty)
    banned = stanchion.Limiter("1/hour", penalty=penalty)
    quiet = logging.getLogger("stanchion")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # the ban log lines of this set-up
    try:
        for lim_, key in ((pen_busy, "abuser"), (banned, KEY)):
            cost = lim_.max_cost  # all of it: the next two are refused
            assert lim_.hit(key, cost)
            assert not lim_.hit(key, cost) and not lim_.hit(key, cost)
    finally:
        quiet.setLevel(level)
    assert len(banned.bans()) == 1 and len(pen_busy.bans()) == 1
    assert pen.hit(KEY) and pen_busy.hit(KEY) and not banned.hit(KEY)
    # The same hits through shared memory (a segment of this run's own).
    storage = stanchion.SharedMemoryStorage(f"bench-{os.getpid()}", max_keys=1000)
    shm = stanchion.Limiter(f"{HUGE}/second", storage=storage)
    shm_full = stanchion.Limiter("1/hour", storage=storage)
    shm_full.hit(KEY)
    shm_pen = stanchion.Limiter(f"{HUGE}/second", storage=storage, penalty=penalty)
    shm_banned = stanchion.Limiter("1/hour", storage=storage, penalty=penalty)
    quiet.setLevel(logging.ERROR)
    try:
        assert shm_banned.hit(KEY)
        assert not shm_banned.hit(KEY) and not shm_banned.hit(KEY)
    finally:
        quiet.setLevel(level)
    assert shm_pen.hit(KEY) and shm_banned.hit(KEY).banned
    env: dict[str, Any] = {
        "noop": KEY.isascii,
        "get": {KEY: 1}.get,
        "clock": time.monotonic_ns,
        "hit": lim.hit,
        "peek": lim.peek,
        "denied": full.hit,
        "shm_hit": shm.hit,
        "shm_denied": shm_full.hit,
        "shm_pen_hit": shm_pen.hit,
        "shm_banned": shm_banned.hit,
        "pen_hit": pen.hit,
        "pen_busy_hit": pen_busy.hit,
        "banned": banned.hit,
        "key": KEY,
        "bkey": KEY.encode(),
    }
    cases = [
        ("key.isascii() (bare C method call, no work)", "noop()"),
        ("dict.get(key) (floor)", "get(key)"),
        ("time.monotonic_ns() (clock + int)", "clock()"),
        ("stanchion token_bucket peek(key)", "peek(key)"),
        ("stanchion token_bucket hit(key)", "hit(key)"),
        ("stanchion token_bucket hit(bytes key)", "hit(bkey)"),
        ("stanchion token_bucket hit(key), denied", "denied(key)"),
        (PENALTY_HIT, "pen_hit(key)"),
        (PENALTY_BUSY_HIT, "pen_busy_hit(key)"),
        (BANNED_HIT, "banned(key)"),
        ("stanchion token_bucket hit(key), shared memory", "shm_hit(key)"),
        ("stanchion token_bucket hit(key), shared memory, denied", "shm_denied(key)"),
        (
            "stanchion token_bucket hit(key), shared memory, with a penalty",
            "shm_pen_hit(key)",
        ),
        (
            "stanchion token_bucket hit(key), shared memory, banned client",
            "shm_banned(key)",
        ),
    ]
    samples: dict[str, list[float]] = {label: [] for label, _ in cases}
    try:
        for _ in range(rounds):
            for label, stmt in cases:
                samples[label].append(per_call_ns(stmt, env, clock=time.process_time))
    finally:
        storage.unlink(missing_ok=True)
    return [(label, statistics.median(v)) for label, v in samples.items()]


PENALTY_HIT = "stanchion token_bucket hit(key), with a penalty, no penalty state"
PENALTY_BUSY_HIT = "stanchion token_bucket hit(key), with a penalty, another key banned"
BANNED_HIT = "stanchion token_bucket hit(key), banned client"
PENALTY_TARGET = 1.25  # a hit with a penalty <= 1.25x a plain hit


# -- concurrency limits ----------------------------------------------------------

CONCURRENCY_TARGET = 2.0  # a free slot <= 2x a rate limit hit
ASYNC_BATCH = 100  # async cases run this many times per timed statement


def measure_concurrency(rounds: int) -> list[tuple[str, float]]:
    """A free slot of ``stanchion.Concurrency`` (taken and given back) on
    one key, beside a rate-limit hit and the stdlib's semaphores; asyncio
    cases run ``ASYNC_BATCH`` times in one coroutine per statement, so the
    event loop's cost of running it is spread over them."""
    import asyncio
    import threading

    import stanchion
    from _bench import per_call_ns

    lim = stanchion.Limiter(f"{HUGE}/second")
    conc = stanchion.Concurrency(1_000_000, queue=10)
    # The same free slot, shared by the processes of this host.
    storage = stanchion.SharedMemoryStorage(f"bench-cc-{os.getpid()}")
    shm = stanchion.Concurrency(8, queue=8, storage=storage)
    sem = threading.Semaphore(1_000_000)
    loop = asyncio.new_event_loop()
    asem = asyncio.Semaphore(1_000_000)

    async def a_hit() -> None:
        hit = lim.ahit
        for _ in range(ASYNC_BATCH):
            await hit(KEY)

    async def a_hold() -> None:
        ahold = conc.ahold
        for _ in range(ASYNC_BATCH):
            async with ahold(KEY):
                pass

    async def a_sem() -> None:
        for _ in range(ASYNC_BATCH):
            async with asem:
                pass

    env: dict[str, Any] = {
        "noop": KEY.isascii,
        "hit": lim.hit,
        "hold": conc.hold,
        "shm_hold": shm.hold,
        "try_acquire": conc.try_acquire,
        "sem": sem,
        "run": loop.run_until_complete,
        "a_hit": a_hit,
        "a_hold": a_hold,
        "a_sem": a_sem,
        "key": KEY,
    }
    cases = [
        ("key.isascii() (bare C method call, no work)", "noop()", 1),
        ("rate limit: lim.hit(key)", "hit(key)", 1),
        ("concurrency: with c.hold(key): pass", "with hold(key): pass", 1),
        ("concurrency: with c.hold(): pass (global)", "with hold(): pass", 1),
        ("concurrency: c.try_acquire(key).release()", "try_acquire(key).release()", 1),
        ("shared memory: with c.hold(key): pass", "with shm_hold(key): pass", 1),
        ("floor: with threading.Semaphore: pass", "with sem: pass", 1),
        ("asyncio: await lim.ahit(key)", "run(a_hit())", ASYNC_BATCH),
        ("asyncio: async with c.ahold(key): pass", "run(a_hold())", ASYNC_BATCH),
        ("asyncio floor: async with asyncio.Semaphore", "run(a_sem())", ASYNC_BATCH),
    ]
    samples: dict[str, list[float]] = {label: [] for label, _, _ in cases}
    try:
        for _ in range(rounds):
            for label, stmt, per in cases:
                ns = per_call_ns(stmt, env, clock=time.process_time)
                samples[label].append(ns / per)
    finally:
        loop.close()
        storage.unlink(missing_ok=True)
    if conc.stats()["in_flight"] != 0:
        raise AssertionError("a benchmarked hold was not given back")
    return [(label, statistics.median(v)) for label, v in samples.items()]


# -- shared memory across processes -------------------------------------------

SHM_TARGET = 2.0  # a shared-memory hit <= 2x an in-process one


def _shm_loop(name: str, key: str, n: int, out: Any) -> None:
    import stanchion

    storage = stanchion.SharedMemoryStorage(name)
    hit = stanchion.Limiter(f"{HUGE}/second", storage=storage).hit
    start = time.perf_counter()
    for _ in range(n):
        hit(key)
    out.put(time.perf_counter() - start)


def measure_shm(n_keys: int) -> tuple[list[list[str]], list[list[str]]]:
    """Aggregate decisions per second through one segment, by 1 and by 2
    processes (forked, one key each, all hitting at once); and the
    segment's bytes per key at ``n_keys`` (max_keys = n_keys, filled)."""
    import multiprocessing

    import stanchion

    n = 200_000 if os.environ.get("STANCHION_BENCH_QUICK") else 2_000_000
    ctx = multiprocessing.get_context("fork")
    rate_rows = []
    for procs in (1, 2):
        name = f"bench-{os.getpid()}-{procs}"
        out = ctx.Queue()
        workers = [
            ctx.Process(target=_shm_loop, args=(name, f"key-{i}", n, out))
            for i in range(procs)
        ]
        for w in workers:
            w.start()
        slowest = max(out.get(timeout=300) for _ in workers)
        for w in workers:
            w.join()
        stanchion.SharedMemoryStorage(name).unlink(missing_ok=True)
        rate_rows.append(
            [f"{procs} process(es)", f"{procs * n / slowest / 1e6:.2f} M decisions/s"]
        )
    mem_rows = []
    for algorithm in ALGORITHMS:
        storage = stanchion.SharedMemoryStorage(
            f"bench-{os.getpid()}-mem", max_keys=n_keys
        )
        try:
            lim = stanchion.Limiter(
                f"{HUGE}/second", algorithm=algorithm, storage=storage
            )
            for i in range(n_keys):
                lim.hit(f"client-{i}")
            st = lim.stats()
        finally:
            storage.unlink(missing_ok=True)
        mem_rows.append(
            [
                f"shared memory {algorithm}",
                f"{n_keys:,}",
                f"{st['memory_bytes'] / n_keys:.1f} B",
                f"{st['evicted']:,}",
            ]
        )
    return rate_rows, mem_rows


# -- memory --------------------------------------------------------------------

MEMORY_IMPLS = [
    "stanchion token_bucket",
    "stanchion fixed_window",
    "stanchion sliding_window",
    "stanchion token_bucket, 36-byte keys",
    "stanchion token_bucket, ASGI middleware, IPv4 clients",
    "stanchion token_bucket, ASGI middleware, IPv6 clients",
    "limits FixedWindow (MemoryStorage)",
    "throttled-py gcra (MemoryStore)",
]


def memory_child(name: str, n: int) -> dict[str, Any]:
    """Runs in a fresh process: fills ``n`` keys, returns RSS and stats."""
    import psutil

    proc = psutil.Process()
    stats: Callable[[], dict[str, Any]] | None = None
    if "middleware" in name:
        return middleware_memory(name, n, proc)
    if name.startswith("stanchion"):
        import stanchion

        algorithm = name.split()[1].rstrip(",")
        lim = stanchion.Limiter("10/hour", algorithm=algorithm, max_keys=n + 1)
        hit: Callable[[str], Any] = lim.hit
        stats = lim.stats
    elif name.startswith("limits"):
        import limits
        from limits.storage import MemoryStorage

        storage = MemoryStorage()
        strategy = limits.strategies.FixedWindowRateLimiter(storage)
        item = limits.RateLimitItemPerHour(10)

        def hit(key: str) -> Any:
            return strategy.hit(item, key)

    elif name.startswith("throttled"):
        import throttled

        store = throttled.MemoryStore(options={"MAX_SIZE": n + 1})
        t = throttled.Throttled(
            using="gcra", quota=throttled.per_hour(10), store=store, timeout=-1
        )
        hit = t.limit
    else:
        raise ValueError(f"unknown memory implementation {name!r}")

    if "36-byte" in name:
        keys = (f"client-{i:029d}" for i in range(n))  # like a UUID's length
    else:
        keys = (f"client-{i}" for i in range(n))
    # Warm up the code path (first-call caches) on a throwaway key.
    hit("warm-up")
    gc.collect()
    before = proc.memory_info().rss
    for key in keys:
        hit(key)
    gc.collect()
    after = proc.memory_info().rss
    out: dict[str, Any] = {"name": name, "keys": n, "rss_delta": after - before}
    if stats is not None:
        s = stats()
        out["stats_keys"] = s["keys"]
        out["memory_bytes"] = s["memory_bytes"]
        if s["keys"] != n + 1:
            raise AssertionError(f"{name}: {s['keys']} keys tracked, expected {n + 1}")
    return out


def middleware_memory(name: str, n: int, proc: Any) -> dict[str, Any]:
    """``memory_child`` for clients counted by the ASGI middleware: each a
    distinct socket peer (IPv4, or IPv6 /64 networks), so what it retains
    is the rule's table entry per client plus its bounded caches."""
    import asyncio

    from stanchion.asgi import RateLimitMiddleware

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start" and message["status"] != 200:
            raise AssertionError(message)

    mw = RateLimitMiddleware(app, limit="10/hour", max_keys=n + 1)
    if "IPv6" in name:
        peers = (f"2001:db8:{i >> 16:x}:{i & 0xFFFF:x}::1" for i in range(n))
    else:
        peers = (f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}" for i in range(n))

    async def fill(addresses: Any) -> None:
        for peer in addresses:
            scope = {"type": "http", "method": "GET", "path": "/", "headers": []}
            scope["client"] = (peer, 40000)
            await mw(scope, receive, send)

    loop = asyncio.new_event_loop()
    loop.run_until_complete(fill(["192.0.2.1"]))  # warm up
    gc.collect()
    before = proc.memory_info().rss
    loop.run_until_complete(fill(peers))
    gc.collect()
    after = proc.memory_info().rss
    info = mw.rule._fixed
    assert info is not None
    s = info.limiter.stats()  # type: ignore[attr-defined]
    if s["keys"] != n + 1:
        raise AssertionError(f"{name}: {s['keys']} keys tracked, expected {n + 1}")
    return {
        "name": name,
        "keys": n,
        "rss_delta": after - before,
        "stats_keys": s["keys"],
        "memory_bytes": s["memory_bytes"],
    }


def measure_memory(n: int) -> list[dict[str, Any]]:
    results = []
    for name in MEMORY_IMPLS:
        proc = subprocess.run(
            [sys.executable, __file__, "--memory-child", name, str(n)],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"memory run of {name} failed:\n{proc.stderr}")
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    return results


# -- report --------------------------------------------------------------------

NOTES = """\
Notes on the peers:
- limits' fixed window counts denied hits too (its denied path is an
  increment); its moving window keeps one entry per hit and inserts at the
  head of a list, so its allowed path slows as the window fills.
- throttled-py is called through `Throttled(using=..., store=MemoryStore(),
  timeout=-1).limit(key)`, its public entry point.
- pyrate-limiter's `Limiter(rate)` holds one bucket shared by every name
  (per-key limits need a custom BucketFactory), so its figures include no
  per-key lookup at all; its sliding log appends one item per allowed hit."""


def verdict(met: bool, detail: str) -> str:
    return f"{'MET' if met else 'MISSED'}: {detail}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="short smoke run, writes nothing"
    )
    parser.add_argument(
        "--rounds", type=int, default=5, help="interleaved rounds (default 5)"
    )
    parser.add_argument(
        "--memory-child", nargs=2, metavar=("IMPL", "KEYS"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.memory_child:
        name, n = args.memory_child
        print(json.dumps(memory_child(name, int(n))))
        return 0
    if args.quick:
        os.environ["STANCHION_BENCH_QUICK"] = "1"

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from _bench import fmt_ns, fmt_ratio, md_table, print_table, quick, write_section

    rounds = 1 if quick() else args.rounds
    n_keys = QUICK_MEMORY_KEYS if quick() else MEMORY_KEYS

    load_before = os.getloadavg()[0]
    medians, counterparts, floor_spread = measure_speed(rounds)
    floor = medians[FLOOR]
    stanchion_ns = {a: medians[f"stanchion {a}"] for a in ALGORITHMS}

    headers = [
        "implementation",
        "allowed",
        "x floor",
        "denied",
        "x floor",
        "stanchion speed-up (allowed / denied)",
    ]
    rows = []
    for name, ns in medians.items():
        cp = counterparts[name]
        if name == FLOOR or name.startswith("stanchion"):
            speedup = ""
        else:
            s = stanchion_ns[cp]
            speedup = (
                f"{fmt_ratio(ns['allowed'] / s['allowed'])} / "
                f"{fmt_ratio(ns['denied'] / s['denied'])} (vs {cp})"
            )
        rows.append(
            [
                name,
                fmt_ns(ns["allowed"]),
                fmt_ratio(ns["allowed"] / floor["allowed"]),
                fmt_ns(ns["denied"]),
                fmt_ratio(ns["denied"] / floor["denied"]),
                speedup,
            ]
        )
    spread = f"{fmt_ns(floor_spread[0])} to {fmt_ns(floor_spread[1])}"
    print(
        f"hit on one key, median of {rounds} interleaved round(s) of medians "
        f"(the floor's samples ranged {spread})\n"
    )
    print_table(headers, rows)

    context = measure_context(rounds)
    ctx_headers = ["call", "time", "x dict.get"]
    ctx_floor = dict(context)["dict.get(key) (floor)"]
    ctx_rows = [[label, fmt_ns(ns), fmt_ratio(ns / ctx_floor)] for label, ns in context]
    print("Where stanchion's time goes (reference calls, same process)\n")
    print_table(ctx_headers, ctx_rows)

    conc = measure_concurrency(rounds)
    conc_ns = dict(conc)
    conc_hit = conc_ns["rate limit: lim.hit(key)"]
    conc_ahit = conc_ns["asyncio: await lim.ahit(key)"]
    conc_headers = ["call (a free slot, taken and given back)", "time", "x lim.hit"]
    conc_rows = [
        [
            label,
            fmt_ns(ns),
            fmt_ratio(ns / (conc_ahit if label.startswith("asyncio") else conc_hit)),
        ]
        for label, ns in conc
    ]
    print("Concurrency: a free slot beside a rate-limit hit (asyncio rows: x ahit)\n")
    print_table(conc_headers, conc_rows)

    shm_rates, shm_memory = measure_shm(n_keys)
    shm_rate_headers = ["processes hitting one segment", "aggregate"]
    shm_mem_headers = ["segment", "max_keys (filled)", "bytes / key", "evicted"]
    print(f"Shared memory: decisions per second on {os.cpu_count()} CPUs\n")
    print_table(shm_rate_headers, shm_rates)
    print("Shared memory: segment bytes per key (nginx: 64 B per state)\n")
    print_table(shm_mem_headers, shm_memory)

    memory = measure_memory(n_keys)
    mem_headers = [
        "implementation",
        "keys",
        "RSS delta / key",
        "stats()['memory_bytes'] / key",
    ]
    mem_rows = []
    for m in memory:
        per_rss = m["rss_delta"] / m["keys"]
        per_stats = m["memory_bytes"] / m["stats_keys"] if "memory_bytes" in m else None
        mem_rows.append(
            [
                m["name"],
                f"{m['keys']:,}",
                f"{per_rss:.1f} B",
                "" if per_stats is None else f"{per_stats:.1f} B",
            ]
        )
        m["per_key"] = max(per_rss, per_stats or 0.0)
    print(f"Memory per tracked key ({n_keys:,} keys, fresh subprocess each)\n")
    print_table(mem_headers, mem_rows)

    # Targets.
    target_rows = []
    for a in ALGORITHMS:
        for path in ("allowed", "denied"):
            r = stanchion_ns[a][path] / floor[path]
            target_rows.append(
                [
                    f"stanchion {a} hit, {path} <= {FLOOR_TARGET}x dict.get",
                    verdict(r <= FLOOR_TARGET, f"{fmt_ratio(r)} the floor"),
                ]
            )
    for peer, cp in (
        ("limits FixedWindow (MemoryStorage)", "fixed_window"),
        ("throttled-py gcra (MemoryStore)", "token_bucket"),
    ):
        for path in ("allowed", "denied"):
            r = medians[peer][path] / stanchion_ns[cp][path]
            target_rows.append(
                [
                    f"stanchion {cp} >= {SPEEDUP_TARGET:.0f}x faster than {peer}, {path}",
                    verdict(r >= SPEEDUP_TARGET, f"{fmt_ratio(r)} faster"),
                ]
            )
    for m in memory:
        if "middleware" in m["name"]:
            target_rows.append(
                [
                    f"{m['name']} <= {CLIENT_BYTES_TARGET:.0f} B per client",
                    verdict(
                        m["per_key"] <= CLIENT_BYTES_TARGET,
                        f"{m['per_key']:.1f} B per client",
                    ),
                ]
            )
        elif m["name"].startswith("stanchion"):
            target_rows.append(
                [
                    f"{m['name']} <= {BYTES_TARGET:.0f} B per key, key included",
                    verdict(
                        m["per_key"] <= BYTES_TARGET, f"{m['per_key']:.1f} B per key"
                    ),
                ]
            )
    ctx_ns = dict(context)
    for suffix in ("", ", denied"):
        r = (
            ctx_ns[f"stanchion token_bucket hit(key), shared memory{suffix}"]
            / ctx_ns[f"stanchion token_bucket hit(key){suffix}"]
        )
        target_rows.append(
            [
                f"shared-memory hit{suffix} <= {SHM_TARGET:.0f}x the in-process hit",
                verdict(r <= SHM_TARGET, f"{fmt_ratio(r)} the in-process hit"),
            ]
        )
    plain = ctx_ns["stanchion token_bucket hit(key)"]
    for label in (PENALTY_HIT, PENALTY_BUSY_HIT):
        r = ctx_ns[label] / plain
        target_rows.append(
            [
                f"{label.split(', ', 1)[1]}: <= {PENALTY_TARGET}x a plain hit",
                verdict(r <= PENALTY_TARGET, f"{fmt_ratio(r)} a plain hit"),
            ]
        )
    r = ctx_ns[BANNED_HIT] / plain
    target_rows.append(
        [
            "a banned client's refusal <= a plain hit",
            verdict(r <= 1.0, f"{fmt_ratio(r)} a plain hit"),
        ]
    )
    for label, base in (
        ("concurrency: with c.hold(key): pass", conc_hit),
        ("concurrency: c.try_acquire(key).release()", conc_hit),
        ("asyncio: async with c.ahold(key): pass", conc_ahit),
    ):
        r = conc_ns[label] / base
        target_rows.append(
            [
                f"{label.split(': ', 1)[1]} <= {CONCURRENCY_TARGET:.0f}x "
                + ("await lim.ahit(key)" if base is conc_ahit else "lim.hit(key)"),
                verdict(r <= CONCURRENCY_TARGET, f"{fmt_ratio(r)}"),
            ]
        )
    print("Targets\n")
    print_table(["target", "result"], target_rows)

    body = "\n\n".join(
        [
            "One `hit` on one str key, allowed path (a huge rate) and denied path "
            "(1/hour, exhausted); each implementation called as a pre-bound method, "
            f"`call(key)`. Median of {rounds} interleaved rounds, each the median of "
            "repeats, in process CPU time. The floor is `dict.get(key)` (one figure "
            f"for both paths; its samples ranged {spread}, a measure of the "
            f"machine's noise; load average {load_before:.2f} before, "
            f"{os.getloadavg()[0]:.2f} after, on {os.cpu_count()} CPUs).",
            md_table(headers, rows),
            NOTES,
            "Reference calls (where stanchion's time goes):",
            md_table(ctx_headers, ctx_rows),
            "Concurrency limits (`stanchion.Concurrency`): a free slot taken and "
            "given back on one key, beside a rate-limit hit (x `lim.hit`; asyncio "
            "rows x `await lim.ahit`) and the stdlib's semaphores; asyncio rows run "
            f"{ASYNC_BATCH} times in one coroutine per timed statement:",
            md_table(conc_headers, conc_rows),
            f"Memory per tracked key at {n_keys:,} keys (`client-0` ...; RSS delta in a "
            "fresh subprocess; the caller's key string is dropped after each hit, so "
            "the delta is what the limiter retains):",
            md_table(mem_headers, mem_rows),
            "Shared memory (`SharedMemoryStorage`): aggregate decisions per second "
            "by forked processes hitting one segment (one key each), and the "
            "segment's bytes per key when created for, and filled with, "
            f"{n_keys:,} keys (nginx keeps 64 B per `limit_req` state):",
            md_table(shm_rate_headers, shm_rates),
            md_table(shm_mem_headers, shm_memory),
            "Targets:",
            md_table(["target", "result"], target_rows),
        ]
    )
    write_section("Limiter", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
