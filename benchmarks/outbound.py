"""Calling rate-limited APIs: the outbound scene and the pool's own cost.

1. The scene of ``examples/outbound/run.py``: three loopback providers
   enforcing their limits with 429s (one silent, its limit found by
   ``probe``), two search processes sharing the budgets through Redis,
   3x the combined capacity offered, one provider killed and revived.
   Figures: the providers' 429s, the share answered, p50/p99 latencies.
2. What a call through a ``Pool`` costs over calling the function
   directly (the floor), beside doing the same by hand with peers'
   limiters (check a budget, then call): in-process storage, one
   provider with budget to spare, a function that returns at once.

``python benchmarks/outbound.py [--window 30]``
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from _bench import (
    fmt_ns,
    fmt_ratio,
    md_table,
    per_call_ns,
    print_table,
    quick,
    write_section,
)

sys.path.insert(
    0, str(Path(__file__).resolve().parent.parent / "examples" / "outbound")
)

import stanchion


def overhead() -> tuple[list[list[str]], str]:
    import limits
    from limits.storage import MemoryStorage
    from limits.strategies import FixedWindowRateLimiter

    def call(q: str) -> str:
        return q

    async def acall(q: str) -> str:
        return q

    big = "1000000000 per 1 second"
    pool = stanchion.Pool([stanchion.Provider("p", call, rate=big)])
    apool = stanchion.Pool([stanchion.Provider("p", acall, rate=big)])
    window = FixedWindowRateLimiter(MemoryStorage())
    item = limits.parse(big.replace(" per 1 second", "/second"))

    def by_hand_limits() -> str:
        if not window.hit(item, "p"):
            raise RuntimeError("out of budget")
        return call("x")

    loop = asyncio.new_event_loop()
    n = 200

    def async_pool() -> None:
        async def many() -> None:
            for _ in range(n):
                await apool.acall("x")

        loop.run_until_complete(many())

    def async_floor() -> None:
        async def many() -> None:
            for _ in range(n):
                await acall("x")

        loop.run_until_complete(many())

    rows: dict[str, list[float]] = {
        k: [] for k in ("floor", "pool", "limits", "afloor", "apool")
    }
    for _ in range(1 if quick() else 5):  # interleaved rounds
        rows["floor"].append(per_call_ns(lambda: call("x")))
        rows["pool"].append(per_call_ns(lambda: pool("x")))
        rows["limits"].append(per_call_ns(by_hand_limits))
        rows["afloor"].append(per_call_ns(async_floor) / n)
        rows["apool"].append(per_call_ns(async_pool) / n)
    loop.close()
    med = {k: sorted(v)[len(v) // 2] for k, v in rows.items()}
    table = [
        ["direct call (floor)", fmt_ns(med["floor"]), "1.00x", ""],
        [
            "stanchion Pool, one provider",
            fmt_ns(med["pool"]),
            fmt_ratio(med["pool"] / med["floor"]),
            fmt_ratio(med["pool"] / med["limits"]),
        ],
        [
            "limits FixedWindow hit, then call",
            fmt_ns(med["limits"]),
            fmt_ratio(med["limits"] / med["floor"]),
            "1.00x",
        ],
        ["await coroutine (floor)", fmt_ns(med["afloor"]), "1.00x", ""],
        [
            "await Pool.acall, one provider",
            fmt_ns(med["apool"]),
            fmt_ratio(med["apool"] / med["afloor"]),
            "",
        ],
    ]
    return table, ""


def scene(window: float) -> list[list[str]]:
    from run import run_scene

    f = run_scene(window)
    return [
        [
            "offered",
            f"{f['offered']} searches in {f['duration_s']:g} s "
            f"({f['offered_per_s']:.0f}/s = 3x the providers' {f['capacity_per_s']:.0f}/s)",
        ],
        [
            "providers' 429s",
            str(sum(f["provider_429s"].values()))
            + " ("
            + ", ".join(f"{k}: {v}" for k, v in f["provider_429s"].items())
            + ")",
        ],
        ["answered", f"{f['answered']} ({f['answered_share']:.1%})"],
        [
            "answered latency p50 / p99",
            f"{f['answered_p50_ms']:.1f} / {f['answered_p99_ms']:.1f} ms",
        ],
        ["answered over 100 ms past the deadline", str(f["answered_late"])],
        [
            "refused (503, with retry_after)",
            f"{f['refused']} ({f['refused_with_retry_after']})",
        ],
        [
            "refused latency p50 / p99",
            f"{f['refused_p50_ms']:.1f} / {f['refused_p99_ms']:.1f} ms",
        ],
        ["failed (no answer)", str(f["failed"])],
        [
            "provider b killed / back / answering again",
            f"{f['b_killed_at_s']:.1f} s / {f['b_revived_at_s']:.1f} s / "
            + (
                "never"
                if f["b_rejoined_after_s"] is None
                else f"{f['b_rejoined_after_s']:.1f} s after (cool-down {f['cooldown_s']:g} s)"
            ),
        ],
        [
            "probe on the silent provider c",
            f"{f['probe_suggested']!r}, "
            f"{f['probe_error']:+.1%} from its true 300 per 30 seconds",
        ],
        ["rates the pool used", "; ".join(f"{k}: {v}" for k, v in f["rates"].items())],
    ]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--window", type=float, default=3.0 if quick() else 30.0)
    args = parser.parse_args()
    over, _ = overhead()
    heads = ["", "per call", "vs floor", "vs limits"]
    print_table(heads, over)
    sc = scene(args.window)
    print_table(["scene", ""], sc)
    body = (
        "### The scene (`examples/outbound/run.py`)\n\n"
        + md_table(["", ""], sc)
        + "\n\n### A call through the pool\n\nMedians of interleaved rounds; "
        "the called function returns at once, so the figures are the "
        "pool's own cost.\n\n" + md_table(heads, over)
    )
    write_section("Outbound", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
