"""Access-log parse speed: stanchion's C LogParser against a plain Python
regex parser and GoAccess.

A combined-format log of 1 GB is generated once and kept in the temporary
directory (about 100,000 clients, paths with ids, a burst and an abuser).
In one process, in interleaved rounds (medians reported):

- stanchion._core.LogParser: the whole file read in 1 MiB chunks, fed,
  finished and summarised (parse and aggregate: clients, paths, templates,
  per-second series, rate percentiles);
- stanchion.report._pyparse.PyLogParser, the pure-Python reference (one
  compiled regex per line plus the same aggregation) on a slice of the
  file, its rate scaled to lines per second;
- GoAccess (`goaccess FILE --log-format=COMBINED -o report.json`) on a
  slice, if installed (Debian's goaccess package).

CPU time of the process (or of the goaccess child) gives the rates, so
other work on a shared machine weighs less. The peak RSS of a full C
parse is measured in a fresh process: streaming keeps it flat whatever
the file's size.

    python benchmarks/logparse.py            # full run, rewrites RESULTS.md
    python benchmarks/logparse.py --quick    # smoke run (8 MB), writes nothing
    STANCHION_BENCH_QUICK=1 python ...       # the same as --quick
"""

from __future__ import annotations

import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if "--quick" in sys.argv[1:]:
    os.environ["STANCHION_BENCH_QUICK"] = "1"

from _bench import fmt_ratio, md_table, print_table, quick, write_section
from stanchion._core import LogParser
from stanchion.report._pyparse import PyLogParser

FULL_BYTES = 1 << 30
QUICK_BYTES = 8 << 20
CHUNK = 1 << 20
TARGET_LINES_PER_S = 1_500_000
GENERATOR_VERSION = 2

METHODS = ["GET"] * 90 + ["POST"] * 7 + ["PUT", "DELETE", "HEAD"]
STATUSES = (
    ["200"] * 85 + ["304"] * 5 + ["301", "302"] + ["404"] * 5 + ["500", "503", "403"]
)
AGENTS = [
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/126.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 "
    '(KHTML, like Gecko) Version/17.5 Safari/605.1.15 \\"quoted\\"',
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:127.0) Gecko/20100101 Firefox/127.0",
    "curl/8.8.0",
    "python-httpx/0.27.0",
    "Googlebot/2.1 (+http://www.google.com/bot.html)",
]
REFERERS = ["-", "-", "https://example.com/", "https://www.google.com/search?q=x"]
MONTHS = [
    "Jan",
    "Feb",
    "Mar",
    "Apr",
    "May",
    "Jun",
    "Jul",
    "Aug",
    "Sep",
    "Oct",
    "Nov",
    "Dec",
]


def _path(rng: random.Random) -> str:
    r = rng.random()
    if r < 0.3:
        return f"/api/users/{rng.randrange(1, 200_000)}/orders/{rng.randrange(1, 50)}"
    if r < 0.5:
        return f"/api/items/{rng.getrandbits(64):016x}?page={rng.randrange(1, 9)}"
    if r < 0.6:
        return f"/static/app.{rng.randrange(1, 40)}.js"
    if r < 0.7:
        return "/api/search?q=" + "".join(rng.choices("abcdefgh", k=8))
    return rng.choice(["/", "/login", "/health", "/api/cart", "/favicon.ico"])


def generate(path: Path, size: int) -> int:
    """Writes about `size` bytes of combined-format log; returns lines."""
    rng = random.Random(20261204)
    clients = [
        f"{rng.randrange(1, 224)}.{rng.randrange(256)}.{rng.randrange(256)}."
        f"{rng.randrange(1, 255)}"
        for _ in range(100_000)
    ]
    abuser = "203.0.113.66"
    t0 = 1_764_806_400  # 2025-12-04 00:00:00 UTC
    stamps: dict[int, str] = {}
    written = lines = 0
    sec, in_sec = t0, 0
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", encoding="latin-1", newline="\n") as f:
        while written < size:
            block = []
            for _ in range(10_000):
                # ~300 lines a second, ten times that in the burst
                in_sec += 1
                burst = 3600 <= sec - t0 < 3660
                if in_sec >= (3000 if burst else 300):
                    sec, in_sec = sec + 1, 0
                ts = stamps.get(sec)
                if ts is None:
                    tm = time.gmtime(sec)
                    ts = stamps[sec] = (
                        f"{tm.tm_mday:02d}/{MONTHS[tm.tm_mon - 1]}/{tm.tm_year}:"
                        f"{tm.tm_hour:02d}:{tm.tm_min:02d}:{tm.tm_sec:02d} +0000"
                    )
                if rng.random() < 0.05:
                    ip, req, status = (
                        abuser,
                        f"GET /login?u={rng.randrange(10**6)}",
                        "401",
                    )
                else:
                    # a long tail: the busiest client sends about 1%
                    # of the requests, half come from anywhere
                    rank = int((rng.paretovariate(1.0) - 1.0) * 50)
                    ip = clients[min(rank, 99_999)]
                    if rng.random() < 0.5:
                        ip = rng.choice(clients)
                    req = f"{rng.choice(METHODS)} {_path(rng)}"
                    status = rng.choice(STATUSES)
                size_b = "-" if status == "304" else str(rng.randrange(200, 60_000))
                block.append(
                    f'{ip} - - [{ts}] "{req} HTTP/1.1" {status} {size_b} '
                    f'"{rng.choice(REFERERS)}" "{rng.choice(AGENTS)}"\n'
                )
            text = "".join(block)
            f.write(text)
            written += len(text)
            lines += len(block)
    tmp.rename(path)
    return lines


def log_file(size: int) -> Path:
    path = Path(tempfile.gettempdir()) / (
        f"stanchion-bench-combined-{size}-v{GENERATOR_VERSION}.log"
    )
    if not path.exists():
        t = time.perf_counter()
        print(f"generating {path} ({size >> 20} MiB) ...", flush=True)
        generate(path, size)
        print(f"  done in {time.perf_counter() - t:.1f} s", flush=True)
    return path


def slice_of(path: Path, size: int) -> Path:
    """The first `size` bytes of `path` (whole lines), cached beside it."""
    out = path.with_name(path.stem + f"-slice{size}.log")
    if not out.exists():
        with path.open("rb") as f:
            data = f.read(size)
        data = data[: data.rfind(b"\n") + 1]
        tmp = out.with_suffix(".tmp")
        tmp.write_bytes(data)
        tmp.rename(out)
    return out


def run_parser(cls: type, path: Path) -> tuple[float, int]:
    """CPU seconds of feeding `path` in 1 MiB chunks, finish and summary;
    and the lines counted."""
    p = cls("combined")
    t = time.process_time()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            p.feed(chunk)
    p.finish()
    s = p.summary()
    return time.process_time() - t, s["lines"]


def run_goaccess(exe: str, path: Path, out: Path) -> float:
    """CPU seconds (user + system) of one goaccess run over `path`."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(
        [exe, str(path), "--log-format=COMBINED", "--no-global-config", "-o", str(out)],
        check=True,
        stdin=subprocess.DEVNULL,
        capture_output=True,
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


# ru_maxrss survives execve on Linux (the child would report the parent's
# peak): VmHWM of /proc/self/status belongs to the new image alone.
PEAK_RSS_SCRIPT = """
import sys
from stanchion._core import LogParser


def kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])


base = kib("VmRSS")
p = LogParser("combined")
with open(sys.argv[1], "rb") as f:
    while chunk := f.read(1 << 20):
        p.feed(chunk)
p.finish()
s = p.summary()
print(base, kib("VmHWM"), s["lines"])
"""


def peak_rss(path: Path) -> tuple[int, int]:
    """(RSS before, peak RSS) in KiB of a fresh process parsing `path`."""
    proc = subprocess.run(
        [sys.executable, "-c", PEAK_RSS_SCRIPT, str(path)],
        check=True,
        capture_output=True,
        text=True,
    )
    base, peak, _ = proc.stdout.split()
    return int(base), int(peak)


def main() -> None:
    size = QUICK_BYTES if quick() else FULL_BYTES
    rounds = 1 if quick() else 3
    path = log_file(size)
    file_mb = path.stat().st_size / 1e6
    py_slice = slice_of(path, size // 8 if quick() else 32 << 20)
    ga_slice = slice_of(path, size // 4 if quick() else 64 << 20)
    goaccess = shutil.which("goaccess")
    if goaccess is None and os.environ.get("CI", "").lower() in ("1", "true"):
        raise SystemExit("goaccess is not installed (apt-get install goaccess)")
    out_json = Path(tempfile.mkdtemp()) / "goaccess.json"

    c_rates: list[float] = []
    py_rates: list[float] = []
    ga_rates: list[float] = []
    c_lines = py_lines = 0
    ga_lines = sum(1 for _ in ga_slice.open("rb"))
    for _ in range(rounds):
        secs, c_lines = run_parser(LogParser, path)
        c_rates.append(c_lines / secs)
        secs, py_lines = run_parser(PyLogParser, py_slice)
        py_rates.append(py_lines / secs)
        if goaccess is not None:
            ga_rates.append(ga_lines / run_goaccess(goaccess, ga_slice, out_json))
    base_kib, peak_kib = peak_rss(path)

    c = statistics.median(c_rates)
    py = statistics.median(py_rates)
    rows = [
        [
            "stanchion LogParser (C)",
            f"{file_mb:,.0f} MB, {c_lines:,} lines",
            f"{c:,.0f}",
            "1.00x",
        ],
        [
            "PyLogParser (Python regex)",
            f"{py_slice.stat().st_size / 1e6:,.0f} MB slice, {py_lines:,} lines",
            f"{py:,.0f}",
            fmt_ratio(c / py),
        ],
    ]
    if ga_rates:
        ga = statistics.median(ga_rates)
        rows.append(
            [
                "GoAccess " + goaccess_version(goaccess),
                f"{ga_slice.stat().st_size / 1e6:,.0f} MB slice, {ga_lines:,} lines",
                f"{ga:,.0f}",
                fmt_ratio(c / ga),
            ]
        )
    else:
        rows.append(["GoAccess", "not installed", "-", "-"])
    headers = ["parser", "input", "lines/s (CPU)", "C is faster by"]
    print(f"combined-format log {path} ({file_mb:,.0f} MB), {rounds} round(s)")
    print_table(headers, rows)
    grew = (peak_kib - base_kib) / 1024
    print(
        f"peak RSS of a full C parse: {peak_kib / 1024:,.1f} MiB "
        f"({grew:,.1f} MiB over the interpreter with stanchion imported)"
    )
    met = c >= TARGET_LINES_PER_S
    verdict = (
        f"target >= {TARGET_LINES_PER_S:,} lines/s on one core: "
        f"{'MET' if met else 'MISSED'}: {c:,.0f}"
    )
    print(verdict)
    body = (
        f"A generated combined-format log of {file_mb:,.0f} MB ({c_lines:,} "
        "lines, about 100,000 clients, paths with ids, a burst and an abuser), "
        "read in 1 MiB chunks; parse and aggregate, then the summary. The "
        "Python regex parser and GoAccess run on slices of the same file and "
        "their rates are per line. Rates are lines per CPU second, medians of "
        f"{rounds} interleaved rounds.\n\n"
        + md_table(headers, rows)
        + f"\n\nPeak RSS of a full C parse in a fresh process: {peak_kib / 1024:,.1f}"
        f" MiB, {grew:,.1f} MiB over the interpreter (streaming: the tables are "
        f"bounded by top=10,000, whatever the file's size).\n\n{verdict}\n"
    )
    write_section("Access-log parser", body)


def goaccess_version(exe: str) -> str:
    proc = subprocess.run(
        [exe, "--version"], capture_output=True, text=True, check=False
    )
    for word in proc.stdout.split():
        if word[:1].isdigit():
            return word.rstrip(".")
    return ""


if __name__ == "__main__":
    main()
