"""``stanchion report``: replay speed through the simulated limiter, and the
whole command, on a generated combined-format log.

The log comes from ``stanchion.report.sample`` (normal visitors, a burst,
an abuser) scaled to about 290,000 lines (300 visitors over 8 hours).

- Replay: the log's lines are parsed once into events; then each
  algorithm replays them all through a fresh ``Limiter`` on the log's own
  clock (``Replay.feed``: a hit per line plus the refused tallies), with
  and without a penalty. The floor is a bare loop that sets the clock and
  calls ``Limiter.hit`` per line, tallying nothing.
- The whole command: ``stanchion report LOG --simulate ... --suggest --html
  FILE --json`` in this process (output to /dev/null), with the pure-Python
  parser and, when the build has it, the C one.

Rates are lines per second of process CPU time (``time.process_time``), the
median of the repeats.

    python benchmarks/report.py            # full run, rewrites RESULTS.md
    python benchmarks/report.py --quick    # smoke run, writes nothing
"""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if "--quick" in sys.argv[1:]:
    os.environ["STANCHION_BENCH_QUICK"] = "1"

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import stanchion._core
from _bench import md_table, print_table, quick, write_section
from stanchion import Limiter, Penalty
from stanchion.__main__ import main as stanchion_main
from stanchion.report._pyparse import PyLogParser
from stanchion.report._simulate import Replay
from stanchion.report.sample import write_sample

RATES = "10/second;100/minute"
ALGORITHMS = ("token_bucket", "fixed_window", "sliding_window")


def cpu(fn: Any) -> float:
    t0 = time.process_time()
    fn()
    return time.process_time() - t0


def events_of(path: Path) -> list[Any]:
    p = PyLogParser(events=True)
    out = []
    with open(path, "rb") as f:
        while data := f.read(1 << 20):
            out.append(p.feed(data))
    out.append(p.finish())
    return out


def bare(chunks: list[Any]) -> None:
    now = [0.0]
    lim = Limiter(RATES, clock=lambda: now[0])
    hit = lim.hit
    for ts_ns, clients, _, _ in chunks:
        for ts, c in zip(ts_ns, clients, strict=True):
            now[0] = ts / 1e9
            hit(c)


def replay(chunks: list[Any], algorithm: str, penalty: Penalty | None) -> None:
    r = Replay(RATES, algorithm=algorithm, penalty=penalty)
    for ev in chunks:
        r.feed(ev)
    r.result(10)


def whole(path: Path, html: Path, engine: str) -> None:
    args = [
        "report",
        str(path),
        "--simulate",
        RATES,
        "--suggest",
        "--html",
        str(html),
        "--json",
        "--no-progress",
        "--engine",
        engine,
    ]
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        assert stanchion_main(args) == 0


def main() -> int:
    repeats = 1 if quick() else 3
    minutes, clients = (30, 30) if quick() else (480, 300)
    with tempfile.TemporaryDirectory(prefix="stanchion-bench-report-") as tmp:
        path = Path(tmp) / "access.log"
        lines = write_sample(str(path), 15, minutes=minutes, clients=clients)
        size = path.stat().st_size
        print(
            f"log: {lines:,} lines, {size / 1e6:.1f} MB ({minutes} min, {clients} visitors)\n"
        )
        chunks = events_of(path)
        parsed = sum(len(c[0]) for c in chunks)

        rows: list[list[str]] = []
        cases: list[tuple[str, Any]] = [
            ("bare Limiter.hit loop (floor)", lambda: bare(chunks))
        ]
        for a in ALGORITHMS:
            cases.append((f"replay {a}", lambda a=a: replay(chunks, a, None)))
        pen = Penalty(after=5, within=60, ban=300)
        cases.append(
            (
                "replay token_bucket + penalty",
                lambda: replay(chunks, "token_bucket", pen),
            )
        )
        for name, fn in cases:
            s = statistics.median(cpu(fn) for _ in range(repeats))
            rows.append(
                [name, f"{parsed / s:,.0f} lines/s", f"{s * 1e9 / parsed:.0f} ns/line"]
            )

        engines = ["python"] + (["c"] if hasattr(stanchion._core, "LogParser") else [])
        html = Path(tmp) / "report.html"
        for engine in engines:
            s = statistics.median(
                cpu(lambda e=engine: whole(path, html, e)) for _ in range(repeats)
            )
            rows.append(
                [
                    f"whole command ({engine} parser)",
                    f"{lines / s:,.0f} lines/s",
                    f"{s:.2f} s",
                ]
            )
        headers = ["case", "rate", "cost"]
        print_table(headers, rows)
        if "c" not in engines:
            print(
                "(this build has no C log parser: the whole command ran on the Python one)"
            )
        write_section(
            "Traffic report",
            f"A generated combined log of {lines:,} lines ({size / 1e6:.1f} MB), "
            f'rates "{RATES}" per client; process CPU time, median of {repeats}.\n\n'
            + md_table(headers, rows),
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
