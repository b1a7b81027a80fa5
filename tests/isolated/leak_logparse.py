"""Parsers made, fed (with and without events), summarised, refused and
dropped thousands of times leave refcounts and RSS flat.

Run in its own process so RSS is not disturbed by other tests.
"""

from __future__ import annotations

import gc
import os
import sys

import psutil

from stanchion._core import LogParser

proc = psutil.Process()


def rss() -> int:
    return int(proc.memory_info().rss)


LINES = (
    b"".join(
        b'10.0.%d.%d - - [10/Oct/2000:13:55:%02d -0700] "GET /u/%d?x HTTP/1.1" %d %d "-" "ua"\n'
        % (i % 7, i % 50, i % 60, i, (200, 404, 503)[i % 3], i)
        for i in range(400)
    )
    + b"junk\n"
    + b"x" * 70_000
    + b"\n"
)
FORMAT = "combined"


def churn(n: int) -> None:
    for i in range(n):
        p = LogParser(FORMAT, top=1 + i % 64, windows=(1, 60, 7), events=i % 2 == 0)
        p.feed(LINES[:5000])
        p.feed(LINES[5000:])
        p.finish()
        p.summary()
        try:
            p.feed(LINES)
        except ValueError:
            pass
        for bad in ({"top": 0}, {"windows": (1, 1)}, {"log_format": "%h"}):
            try:
                LogParser(**bad)  # type: ignore[arg-type]
            except ValueError:
                pass
        try:
            LogParser().feed("text")  # type: ignore[arg-type]
        except TypeError:
            pass


churn(200)  # warm up: freelists, pymalloc arenas
gc.collect()
refs = (sys.getrefcount(LINES), sys.getrefcount(FORMAT), sys.getrefcount(LogParser))
objects = len(gc.get_objects())
before = rss()
churn(2000)
gc.collect()
after = rss()
# leaked event lists or summary dicts would stay tracked
assert len(gc.get_objects()) - objects < 50, len(gc.get_objects()) - objects
refs_after = (
    sys.getrefcount(LINES),
    sys.getrefcount(FORMAT),
    sys.getrefcount(LogParser),
)
assert refs == refs_after, (refs, refs_after)
grown = after - before
if not os.environ.get("STANCHION_SANITIZED"):
    assert grown < 2 * 1024 * 1024, f"RSS grew by {grown} bytes over 2000 parsers"
print("ok", grown)
