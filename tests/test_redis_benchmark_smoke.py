"""benchmarks/redis.py still runs: a short smoke pass, writing nothing."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import require_peers

pytestmark = pytest.mark.bench

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
RESULTS = BENCHMARKS / "RESULTS.md"
ROW = re.compile(r"^(?P<name>.+?)\s{2,}(?P<n>[18])\s+[\d,]+\s+[\d.]+ us\s+[\d.]+ us\s")

SYNC_ROWS = [
    "redis-py PING (floor)",
    *(
        f"stanchion {a}, {r}"
        for a in ("token_bucket", "fixed_window", "sliding_window")
        for r in ("1 rate", "3 rates")
    ),
    "limits fixed window, 1 rate",
    "limits moving window, 1 rate",
    "throttled-py token_bucket",
]
ASYNC_ROWS = [
    "redis-py asyncio PING (floor)",
    "stanchion token_bucket, 1 rate",
    "limits (asyncio) fixed window, 1 rate",
    "fastapi-limiter (pyrate-limiter RedisBucket)",
]


def test_redis_benchmark_runs_every_implementation() -> None:
    require_peers(
        "redis", "limits", "throttled", "fastapi_limiter", "pyrate_limiter", "starlette"
    )
    before = RESULTS.read_text() if RESULTS.exists() else None
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / "redis.py")],
        env={**os.environ, "STANCHION_BENCH_QUICK": "1"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    after = RESULTS.read_text() if RESULTS.exists() else None
    assert after == before, "a quick run must not write RESULTS.md"
    out = proc.stdout
    blocking, _, asyncio_part = out.partition("== asyncio clients")
    for part, names in ((blocking, SYNC_ROWS), (asyncio_part, ASYNC_ROWS)):
        rows = {
            (m["name"].strip(), m["n"]) for m in map(ROW.match, part.splitlines()) if m
        }
        for name in names:
            assert (name, "1") in rows and (name, "8") in rows, (
                f"{name!r} missing in:\n{out}"
            )
    # The round-trip claim is checked, not assumed.
    assert "3 rates cost the same round trips as 1: met (1.00, 1.00" in out, out
