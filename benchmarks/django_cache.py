"""stanchion.django.CacheBackend against Django's LocMemCache.

One process, one run, both configured in CACHES with MAX_ENTRIES 10,000
and the default TIMEOUT (300 s), used through ``caches[alias]`` as an app
uses them: get-hit, get-miss, set, add of a present key, incr, and the
async aget-hit and aincr (stanchion runs them in the event loop;
LocMemCache hands them to a thread with sync_to_async). Values are a
small dict (pickled by both) and a short str (stanchion stores a str as
it is; LocMemCache pickles it).

    python benchmarks/django_cache.py            # full run, rewrites RESULTS.md
    STANCHION_BENCH_QUICK=1 python ...           # smoke run, writes nothing
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import django
from django.conf import settings

from _bench import (
    fmt_ns,
    fmt_ratio,
    md_table,
    per_call_ns,
    print_table,
    quick,
    write_section,
)

MAX_ENTRIES = 10_000
N_KEYS = 1000
N_ASYNC = 100  # LocMemCache's thread hop makes async calls slow: fewer of them
OPTIONS = {"MAX_ENTRIES": MAX_ENTRIES}
BACKENDS = {
    "stanchion": "stanchion.django.CacheBackend",
    "LocMemCache": "django.core.cache.backends.locmem.LocMemCache",
}
DICT_VALUE = {"id": 42, "name": "Ada Lovelace", "tags": ["admin", "staff"]}
STR_VALUE = "a cached fragment of text"

settings.configure(
    CACHES={
        name: {"BACKEND": path, "LOCATION": f"bench-{name}", "OPTIONS": OPTIONS}
        for name, path in BACKENDS.items()
    },
)
django.setup()

from django.core.cache import caches  # noqa: E402  (after settings)


def interleaved(
    setups: dict[str, tuple[str, dict[str, Any], int]], rounds: int
) -> dict[str, float]:
    """ns per operation: the best of ``rounds`` medians, the backends
    taking turns so that load elsewhere on the machine hits both alike."""
    best: dict[str, float] = {}
    for _ in range(rounds):
        for name, (stmt, g, n) in setups.items():
            ns = per_call_ns(stmt, g, repeat=5, clock=time.process_time) / n
            best[name] = min(best.get(name, ns), ns)
    return best


SYNC_OPS: dict[str, tuple[str, str]] = {
    # operation -> (setup run once, statement timed; `ks` are the keys)
    "get-hit (dict)": ("for k in ks: c.set(k, DICT_VALUE)", "for k in ks: c.get(k)"),
    "get-hit (str)": ("for k in ks: c.set(k, STR_VALUE)", "for k in ks: c.get(k)"),
    "get-miss": ("c.clear()", "for k in ks: c.get(k)"),
    "set (dict)": ("", "for k in ks: c.set(k, DICT_VALUE)"),
    "set (str)": ("", "for k in ks: c.set(k, STR_VALUE)"),
    "add (present)": ("for k in ks: c.set(k, STR_VALUE)", "for k in ks: c.add(k, 1)"),
    "incr": ("for k in ks: c.set(k, 0)", "for k in ks: c.incr(k)"),
}


def bench_sync(rounds: int) -> dict[str, dict[str, float]]:
    ks = [f"user:{i}:profile" for i in range(N_KEYS)]
    out: dict[str, dict[str, float]] = {}
    for op, (setup, stmt) in SYNC_OPS.items():
        setups = {}
        for name in BACKENDS:
            c = caches[name]
            g = {"c": c, "ks": ks, "DICT_VALUE": DICT_VALUE, "STR_VALUE": STR_VALUE}
            c.clear()
            if setup:
                exec(setup, g)
            setups[name] = (stmt, g, len(ks))
        out[op] = interleaved(setups, rounds)
    return out


def bench_async(rounds: int) -> dict[str, dict[str, float]]:
    ks = [f"user:{i}:profile" for i in range(N_ASYNC)]
    loop = asyncio.new_event_loop()

    async def aget_all(c: Any) -> None:
        for k in ks:
            await c.aget(k)

    async def aincr_all(c: Any) -> None:
        for k in ks:
            await c.aincr(k)

    out: dict[str, dict[str, float]] = {}
    try:
        for op, fn, value in (
            ("aget-hit (dict)", aget_all, DICT_VALUE),
            ("aincr", aincr_all, 0),
        ):
            setups = {}
            for name in BACKENDS:
                c = caches[name]
                c.clear()
                for k in ks:
                    c.set(k, value)
                g = {"run": loop.run_until_complete, "fn": fn, "c": c}
                setups[name] = ("run(fn(c))", g, len(ks))
            out[op] = interleaved(setups, rounds)
    finally:
        loop.close()
    return out


def main() -> None:
    load = os.getloadavg()[0]
    print(f"load average before the run: {load:.2f}\n")
    rounds = 1 if quick() else 5
    results = {**bench_sync(rounds), **bench_async(rounds)}
    load_end = os.getloadavg()[0]

    headers = ["operation", "stanchion", "LocMemCache", "LocMemCache / stanchion"]
    rows = [
        [
            op,
            fmt_ns(r["stanchion"]),
            fmt_ns(r["LocMemCache"]),
            fmt_ratio(r["LocMemCache"] / r["stanchion"]),
        ]
        for op, r in results.items()
    ]
    print_table(headers, rows)
    print(f"load average after the run: {load_end:.2f}")

    body = "\n\n".join(
        [
            f"Both backends in CACHES with OPTIONS MAX_ENTRIES {MAX_ENTRIES:,} and the "
            f"default TIMEOUT (300 s), called through `caches[alias]`. Sync "
            f"operations run over {N_KEYS:,} keys like `user:17:profile` (Django's "
            "key prefix, version and memcached key check included); the dict value "
            "is a three-field dict (pickled by both), the str value a 25-character "
            "str (stored as it is by stanchion, pickled by LocMemCache). `add "
            "(present)` is an add that finds the key. The async rows await "
            f"{N_ASYNC} calls in one event loop: stanchion runs them in the loop, "
            "LocMemCache's come from BaseCache, which sends each to a thread with "
            "sync_to_async. Figures are per operation, this process's CPU time (all "
            "threads), the best of 5 rounds in which the two take turns. Load "
            f"average (2 cores, shared with other work): {load:.2f} at start, "
            f"{load_end:.2f} at the end.",
            md_table(headers, rows),
        ]
    )
    write_section("Django cache backend", body)


if __name__ == "__main__":
    main()
