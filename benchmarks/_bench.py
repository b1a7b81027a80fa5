"""Shared timing and reporting for the side-by-side benchmarks.

Every benchmark runs stanchion and its peers in one process, takes the
median of several repeats (machines here are noisy: ratios from one run
mean more than any lone absolute time), prints a table and rewrites its
own section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import datetime
import os
import platform
import re
import statistics
import sys
import timeit
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).with_name("RESULTS.md")


def quick() -> bool:
    """STANCHION_BENCH_QUICK=1 shortens every benchmark (smoke runs in CI)."""
    return os.environ.get("STANCHION_BENCH_QUICK", "") not in ("", "0")


def per_call_ns(
    stmt: str | Callable[[], Any],
    globals: dict[str, Any] | None = None,
    *,
    repeat: int = 7,
    target_s: float = 0.05,
    clock: Callable[[], float] = timeit.default_timer,
) -> float:
    """Median nanoseconds per execution of ``stmt`` over ``repeat`` runs,
    each run sized to last about ``target_s`` seconds of ``clock``
    (wall time by default; ``time.process_time`` leaves out the time other
    processes hold the CPU, which steadies figures on a shared machine)."""
    if quick():
        repeat, target_s = 3, 0.005
    timer = timeit.Timer(stmt, globals=globals, timer=clock)
    number, _ = timer.autorange()
    # autorange aims at 0.2 s; scale to the target.
    number = max(1, int(number * target_s / 0.2))
    runs = timer.repeat(repeat=repeat, number=number)
    return statistics.median(runs) / number * 1e9


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (
        f"{cpu}, {os.cpu_count()} cores, {platform.system()} "
        f"{platform.release()}, CPython {platform.python_version()}"
    )


def md_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in rows:
        out.append("| " + " | ".join(str(c) for c in row) + " |")
    return "\n".join(out)


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    widths = [
        max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(headers)
    ]
    line = "  ".join(str(h).ljust(w) for h, w in zip(headers, widths, strict=True))
    print(line)
    print("-" * len(line))
    for r in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)))
    print()


def fmt_ns(ns: float) -> str:
    if ns >= 1e6:
        return f"{ns / 1e6:.2f} ms"
    if ns >= 1e3:
        return f"{ns / 1e3:.2f} us"
    return f"{ns:.0f} ns"


def fmt_ratio(x: float) -> str:
    return f"{x:.2f}x" if x < 100 else f"{x:.0f}x"


def write_section(name: str, body: str) -> None:
    """Replace (or append) the section ``name`` of RESULTS.md."""
    if quick():
        return
    command = "python " + " ".join([os.path.relpath(sys.argv[0]), *sys.argv[1:]])
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    section = (
        f"<!-- section:{name} -->\n## {name}\n\n"
        f"Run {stamp} on {machine()}.\n\nCommand: `{command}`\n\n{body.strip()}\n"
        f"<!-- /section:{name} -->\n"
    )
    text = (
        RESULTS.read_text()
        if RESULTS.exists()
        else (
            "# Benchmark results\n\nEach section is rewritten by the benchmark named in "
            "its command. Figures are medians of repeats in one process; compare the "
            "ratios, not the absolute times, across machines.\n\n"
        )
    )
    pattern = re.compile(
        rf"<!-- section:{re.escape(name)} -->.*?<!-- /section:{re.escape(name)} -->\n",
        re.S,
    )
    text = (
        pattern.sub(lambda _: section, text)
        if pattern.search(text)
        else text + "\n" + section
    )
    RESULTS.write_text(text)
