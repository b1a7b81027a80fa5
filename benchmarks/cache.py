"""stanchion.Cache and @stanchion.cached against the usual Python caches.

One process, one run: get-hit, get-miss, set-new (every write a new key, so
every write evicts) and a Zipf-distributed 90/10 read/write mix at maxsize
10,000, for stanchion.Cache (without and with a TTL), cachetools
(LRUCache, TTLCache), cachebox (LRUCache, TTLCache), lru-dict, moka-py (LRU
policy) and a plain dict as the floor; the hit overhead of @cached (TTL on)
against functools.lru_cache and cachetools' @cached; and bytes per entry at
1,000,000 entries (RSS growth, each measured in a fresh process).

    python benchmarks/cache.py            # full run, rewrites RESULTS.md
    STANCHION_BENCH_QUICK=1 python ...    # smoke run, writes nothing
"""

from __future__ import annotations

import bisect
import functools
import gc
import itertools
import os
import random
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import cachebox
import cachetools
import lru
import moka_py
import psutil

import stanchion
from _bench import (
    fmt_ns,
    fmt_ratio,
    md_table,
    per_call_ns,
    print_table,
    quick,
    write_section,
)

MAXSIZE = 10_000
TTL = 3600.0
MEMORY_ENTRIES = 1_000_000
STANCHION = ("stanchion.Cache", "stanchion.Cache ttl")
FLOOR = "dict"

# name -> factory(maxsize) -> cache. Every cache here is a mapping with
# get(); moka-py has set() instead of item assignment.
MAKERS: dict[str, Callable[[int], Any]] = {
    "dict": lambda n: {},
    "stanchion.Cache": lambda n: stanchion.Cache(n),
    "stanchion.Cache ttl": lambda n: stanchion.Cache(n, ttl=TTL),
    "cachetools.LRUCache": lambda n: cachetools.LRUCache(n),
    "cachetools.TTLCache": lambda n: cachetools.TTLCache(n, ttl=TTL),
    "cachebox.LRUCache": lambda n: cachebox.LRUCache(n),
    "cachebox.TTLCache": lambda n: cachebox.TTLCache(n, TTL),
    "lru-dict": lambda n: lru.LRU(n),
    "moka-py (lru)": lambda n: moka_py.Moka(n, policy="lru"),
}


def writer(cache: Any) -> Callable[[Any, Any], Any]:
    return cache.set if isinstance(cache, moka_py.Moka) else cache.__setitem__


def write_stmt(name: str) -> str:
    return "c.set(k, v)" if name.startswith("moka") else "c[k] = v"


# ---------------------------------------------------------------------------
# Workloads
# ---------------------------------------------------------------------------


def keys(prefix: str, n: int) -> list[str]:
    return [f"{prefix}:{i:08d}" for i in range(n)]


def zipf_ops(
    n_ops: int, universe: int, s: float = 1.0, reads: float = 0.9
) -> list[tuple[bool, str]]:
    """(is_read, key) pairs: keys ranked by a Zipf law over `universe`."""
    rng = random.Random(1234)
    weights = [1.0 / (r**s) for r in range(1, universe + 1)]
    cdf = list(itertools.accumulate(weights))
    total = cdf[-1]
    names = keys("zipf", universe)
    rng.shuffle(names)  # popularity is not key order
    return [
        (rng.random() < reads, names[bisect.bisect_left(cdf, rng.random() * total)])
        for _ in range(n_ops)
    ]


def filled(name: str, present: list[str]) -> Any:
    c = MAKERS[name](MAXSIZE)
    put = writer(c)
    for k in present:
        put(k, k)
    if isinstance(c, moka_py.Moka):
        c.run_pending_tasks()
    return c


def interleaved(
    setups: dict[str, tuple[str, dict[str, Any], int]], rounds: int
) -> dict[str, float]:
    """ns per operation for each name: the best of `rounds` medians, the
    implementations taking turns so a burst of load elsewhere on the
    machine hits them all alike. setups: name -> (stmt, globals, ops per
    stmt)."""
    best: dict[str, float] = {}
    for _ in range(rounds):
        for name, (stmt, g, n) in setups.items():
            ns = per_call_ns(stmt, g, repeat=5) / n
            best[name] = min(best.get(name, ns), ns)
    return best


def bench_ops() -> dict[str, dict[str, float]]:
    rng = random.Random(42)
    present = keys("key", MAXSIZE)
    hits = rng.sample(present, 1000)
    misses = keys("absent", 1000)
    fresh = keys("new", 2 * MAXSIZE)  # cycling through 2N keys: every write is new
    ops = zipf_ops(20_000 if quick() else 100_000, 10 * MAXSIZE)
    rounds = 1 if quick() else 3
    results: dict[str, dict[str, float]] = {name: {} for name in MAKERS}

    def run(op: str, setups: dict[str, tuple[str, dict[str, Any], int]]) -> None:
        for name, ns in interleaved(setups, rounds).items():
            results[name][op] = ns
        setups.clear()
        gc.collect()

    run(
        "get-hit",
        {
            n: (
                "for k in hits: c.get(k)",
                {"c": filled(n, present), "hits": hits},
                len(hits),
            )
            for n in MAKERS
        },
    )
    run(
        "get-miss",
        {
            n: (
                "for k in misses: c.get(k)",
                {"c": filled(n, present), "misses": misses},
                len(misses),
            )
            for n in MAKERS
        },
    )
    run(
        "set-new",
        {
            n: (
                f"for k in fresh: {write_stmt(n)}",
                {"c": filled(n, fresh[MAXSIZE:]), "fresh": fresh, "v": "value"},
                len(fresh),
            )
            for n in MAKERS
        },
    )
    # The dict floor for the mix does the same reads and writes but never
    # evicts (it grows to the whole key universe).
    mix = "for r, k in ops:\n    if r: c.get(k)\n    else: {}"
    run(
        "zipf 90/10",
        {
            n: (
                mix.format(write_stmt(n)),
                {"c": filled(n, present), "ops": ops, "v": "value"},
                len(ops),
            )
            for n in MAKERS
        },
    )
    return results


def bench_decorators() -> dict[str, float]:
    args = list(range(100))

    def plain(x: int) -> int:
        return x

    funcs: dict[str, Callable[[int], int]] = {
        "no cache (plain call)": plain,
        "stanchion @cached(ttl=60)": stanchion.cached(ttl=60, maxsize=1024)(plain),
        "stanchion @cached": stanchion.cached(maxsize=1024)(plain),
        "functools.lru_cache": functools.lru_cache(maxsize=1024)(plain),
        "cachetools @cached(LRUCache)": cachetools.cached(cachetools.LRUCache(1024))(
            plain
        ),
        "cachetools @cached(TTLCache)": cachetools.cached(
            cachetools.TTLCache(1024, ttl=60)
        )(plain),
        "cachebox @cached(LRUCache)": cachebox.cached(cachebox.LRUCache(1024))(plain),
    }
    out: dict[str, float] = {}
    for name, f in funcs.items():
        for a in args:
            f(a)
        out[name] = per_call_ns("for a in args: f(a)", {"f": f, "args": args}) / len(
            args
        )
    return out


# ---------------------------------------------------------------------------
# Memory: a fresh process per cache
# ---------------------------------------------------------------------------


def memory_child(name: str, n: int) -> None:
    proc = psutil.Process()
    ks = list(range(10**9, 10**9 + n))  # the keys exist before the baseline
    c = MAKERS[name](n)
    put = writer(c)
    gc.collect()
    before = proc.memory_info().rss
    for k in ks:
        put(k, None)
    if isinstance(c, moka_py.Moka):
        c.run_pending_tasks()
    gc.collect()
    after = proc.memory_info().rss
    assert len(ks) == n
    print((after - before) / n)


def bench_memory() -> dict[str, float]:
    n = 100_000 if quick() else MEMORY_ENTRIES
    out: dict[str, float] = {}
    for name in MAKERS:
        proc = subprocess.run(
            [sys.executable, __file__, "--memory", name, str(n)],
            capture_output=True,
            text=True,
            check=True,
        )
        out[name] = float(proc.stdout.strip())
    return out


# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------


def fastest_peer(values: dict[str, float]) -> tuple[str, float]:
    peers = {
        k: v
        for k, v in values.items()
        if k != FLOOR and k not in STANCHION and "stanchion" not in k
    }
    best = min(peers, key=lambda k: peers[k])
    return best, peers[best]


def main() -> None:
    load = os.getloadavg()[0]
    print(f"load average before the run: {load:.2f}\n")
    ops = bench_ops()
    op_names = ["get-hit", "get-miss", "set-new", "zipf 90/10"]
    headers = ["operation", "implementation", "per op", "x dict", "x fastest peer"]
    rows: list[list[str]] = []
    verdicts: list[str] = []
    for op in op_names:
        col = {name: ops[name][op] for name in ops}
        best_name, best = fastest_peer(col)
        for name in MAKERS:
            ns = col[name]
            rows.append(
                [op, name, fmt_ns(ns), fmt_ratio(ns / col[FLOOR]), fmt_ratio(ns / best)]
            )
        for s in STANCHION:
            ok = col[s] <= best
            verdicts.append(
                f"- {op}, {s}: {fmt_ns(col[s])} vs fastest peer {best_name} "
                f"{fmt_ns(best)} ({fmt_ratio(col[s] / best)}): {'met' if ok else 'MISSED'}"
            )
    print_table(headers, rows)

    get_ratio = ops["stanchion.Cache"]["get-hit"] / ops[FLOOR]["get-hit"]
    get_ratio_ttl = ops["stanchion.Cache ttl"]["get-hit"] / ops[FLOOR]["get-hit"]
    verdicts.insert(
        0,
        f"- get-hit <= 1.5x dict.get: stanchion.Cache {fmt_ratio(get_ratio)} "
        f"({'met' if get_ratio <= 1.5 else 'MISSED'}); with TTL {fmt_ratio(get_ratio_ttl)} "
        f"({'met' if get_ratio_ttl <= 1.5 else 'MISSED'})",
    )

    dec = bench_decorators()
    base = dec["functools.lru_cache"]
    dpeers = {k: v for k, v in dec.items() if "stanchion" not in k and "plain" not in k}
    dbest_name = min(dpeers, key=lambda k: dpeers[k])
    dheaders = ["decorator (hit)", "per call", "x lru_cache", "x fastest peer"]
    drows = [
        [name, fmt_ns(ns), fmt_ratio(ns / base), fmt_ratio(ns / dpeers[dbest_name])]
        for name, ns in dec.items()
    ]
    print_table(dheaders, drows)
    dratio = dec["stanchion @cached(ttl=60)"] / base
    verdicts.append(
        f"- @cached(ttl=60) hit <= 1.3x functools.lru_cache hit: {fmt_ratio(dratio)} "
        f"({'met' if dratio <= 1.3 else 'MISSED'})"
    )

    mem = bench_memory()
    mbest_name, mbest = fastest_peer(mem)
    mheaders = ["memory at 1M entries", "bytes/entry", "x dict", "x smallest peer"]
    mrows = [
        [name, f"{b:.0f}", fmt_ratio(b / mem[FLOOR]), fmt_ratio(b / mbest)]
        for name, b in mem.items()
    ]
    print_table(mheaders, mrows)
    for s in STANCHION:
        verdicts.append(
            f"- bytes per entry, {s}: {mem[s]:.0f} vs smallest peer {mbest_name} {mbest:.0f} "
            f"({'met' if mem[s] <= mbest else 'MISSED'})"
        )

    print("\n".join(verdicts))
    body = "\n\n".join(
        [
            f"maxsize {MAXSIZE:,}, str keys; TTL caches use ttl={TTL:.0f}s. get-hit reads "
            "1,000 random present keys, get-miss 1,000 absent ones; set-new cycles "
            f"through {2 * MAXSIZE:,} keys so every write inserts a new key and evicts "
            "one (the dict floor just stores); the Zipf mix is 90% get / 10% set over "
            f"{10 * MAXSIZE:,} keys (s=1.0). Times include the Python loop around each "
            f"call, the same for everyone. Load average at start: {load:.2f}.",
            md_table(headers, rows),
            "Decorator hit: a one-argument function called with 100 cached int "
            "arguments in turn.",
            md_table(dheaders, drows),
            f"Memory: RSS growth when inserting {MEMORY_ENTRIES:,} int keys (created "
            "beforehand) with the value None, each cache in a fresh process, divided "
            "by the entries: the structure's own cost.",
            md_table(mheaders, mrows),
            "Targets:\n\n" + "\n".join(verdicts),
        ]
    )
    write_section("Cache", body)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--memory":
        memory_child(sys.argv[2], int(sys.argv[3]))
    else:
        main()
