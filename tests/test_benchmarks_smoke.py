"""The benchmarks still run: a short smoke pass of each, writing nothing."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import in_ci, require_peers

pytestmark = pytest.mark.bench

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
RESULTS = BENCHMARKS / "RESULTS.md"
TIME = re.compile(r"\d (ns|us|ms) ")

LIMITER_ROWS = [
    "dict.get (floor)",
    "stanchion token_bucket",
    "stanchion fixed_window",
    "stanchion sliding_window",
    "limits FixedWindow (MemoryStorage)",
    "limits MovingWindow (MemoryStorage)",
    "limits SlidingWindowCounter (MemoryStorage)",
    "throttled-py token_bucket (MemoryStore)",
    "throttled-py gcra (MemoryStore)",
    "pyrate-limiter InMemoryBucket",
    "pyrate-limiter StateBucket GCRA",
]


def run_quick(script: str) -> str:
    before = RESULTS.read_text() if RESULTS.exists() else None
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / script)],
        env={**os.environ, "STANCHION_BENCH_QUICK": "1"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    after = RESULTS.read_text() if RESULTS.exists() else None
    assert after == before, f"a quick run of {script} must not write RESULTS.md"
    return proc.stdout


def test_limiter_benchmark_runs_every_implementation() -> None:
    require_peers("limits", "throttled", "pyrate_limiter", "psutil")
    out = run_quick("limiter.py")
    lines = out.splitlines()
    for name in LIMITER_ROWS:
        # One timing row per implementation: its name, then two times.
        rows = [
            ln
            for ln in lines
            if ln.startswith(name + "  ") and len(TIME.findall(ln)) >= 2
        ]
        assert rows, f"no timing line for {name!r} in:\n{out}"
    for name in (
        "stanchion token_bucket",
        "stanchion fixed_window",
        "stanchion sliding_window",
        "limits FixedWindow (MemoryStorage)",
    ):
        assert any(ln.startswith(name) and " B " in ln for ln in lines), (
            f"no memory line for {name!r} in:\n{out}"
        )
    # The penalty box's rows: a hit with a penalty, banned or not.
    for label in (
        "with a penalty, no penalty state",
        "another key banned",
        "banned client",
    ):
        assert any(label in ln and TIME.search(ln) for ln in lines), (
            f"no penalty row {label!r} in:\n{out}"
        )
    assert any("a banned client's refusal <= a plain hit" in ln for ln in lines), out
    verdicts = [ln for ln in lines if "MET: " in ln or "MISSED: " in ln]
    # 3 algorithms x 2 paths vs the floor, 2 peers x 2 paths, memory.
    assert len(verdicts) >= 3 * 2 + 2 * 2 + 3, out


CACHE_ROWS = [
    "dict",
    "stanchion.Cache",
    "stanchion.Cache ttl",
    "cachetools.LRUCache",
    "cachetools.TTLCache",
    "cachebox.LRUCache",
    "cachebox.TTLCache",
    "lru-dict",
    "moka-py (lru)",
]


def test_cache_benchmark_runs_every_implementation() -> None:
    require_peers("cachetools", "cachebox", "lru", "moka_py", "psutil")
    out = run_quick("cache.py")
    lines = out.splitlines()
    for op in ("get-hit", "get-miss", "set-new", "zipf 90/10"):
        for name in CACHE_ROWS:
            assert any(
                ln.startswith(op) and f"  {name}  " in ln and TIME.search(ln + " ")
                for ln in lines
            ), f"no {op} line for {name!r} in:\n{out}"
    for name in (
        "stanchion @cached(ttl=60)",
        "functools.lru_cache",
        "cachetools @cached(LRUCache)",
    ):
        assert any(ln.startswith(name) for ln in lines), out
    for name in CACHE_ROWS:
        assert any(ln.startswith(name + "  ") and "x" in ln for ln in lines), out
    verdicts = [
        ln for ln in lines if ln.endswith(("(met)", ": met", "(MISSED)", ": MISSED"))
    ]
    # get-hit vs dict, 4 operations x 2 caches, the decorator, 2 memory lines.
    assert len(verdicts) == 1 + 4 * 2 + 1 + 2, out


WEB_CACHE_ROWS = [
    "fastapi bare endpoint",
    "stanchion asgi CacheMiddleware",
    "stanchion fastapi @cache",
    "fastapi-cache2 @cache (InMemoryBackend)",
    "flask bare endpoint",
    "stanchion wsgi CacheMiddleware",
    "stanchion flask @ext.cache",
    "flask-caching @cached (SimpleCache)",
    "django bare endpoint",
    "stanchion django CacheMiddleware",
    "stanchion django @cache_response",
    "stanchion wsgi CacheMiddleware around Django",
    "django cache_page (LocMemCache)",
]


def test_web_cache_benchmark_runs_every_case() -> None:
    require_peers("fastapi", "fastapi_cache", "flask", "flask_caching", "django")
    out = run_quick("web_cache.py")
    lines = out.splitlines()
    for name in WEB_CACHE_ROWS:
        row = [x for x in lines if x.startswith(name + " ")]
        assert row and TIME.search(row[0] + " "), (name, out)
    assert "peer's hit / ours" in out


def test_web_benchmark_runs_every_case() -> None:
    """Every stack's rows print with figures, and every target line a
    verdict (the web benchmark is the only one timing whole frameworks)."""
    require_peers(
        "fastapi",
        "slowapi",
        "flask",
        "flask_limiter",
        "django",
        "django_ratelimit",
        "prometheus_client",
        "opentelemetry.sdk",
    )
    out = run_quick("web.py")
    lines = out.splitlines()
    rows = [
        ln
        for ln in lines
        if ln.startswith(("ASGI ", "FastAPI ", "WSGI ", "Flask ", "Django "))
    ]
    for peer in ("slowapi", "flask-limiter", "django-ratelimit"):
        assert any(peer in ln and TIME.search(ln + " ") for ln in rows), (peer, out)
    assert sum("stanchion" in ln for ln in rows) == 23, out
    targets = [ln for ln in lines if ": added " in ln]
    assert len(targets) == 15, out
    for ln in targets:
        assert re.search(r"; (within|OVER) the [\d.]+ [un]?s target", ln), ln
        if " vs " in ln:
            # (A quick run's figures are noise: a peer's added cost may
            # come out below zero, and its ratio with it.)
            assert re.search(
                r"peer adds (inf|-?[\d.]+)x more \((meets|misses) \d+x\)", ln
            ), ln


def test_logparse_benchmark_runs_every_parser() -> None:
    """The C parser, the Python regex parser and GoAccess each print a
    lines-per-second figure and a ratio; the peak RSS and the verdict on
    the 1.5 million lines/s target print too."""
    if shutil.which("goaccess") is None:
        what = "goaccess is not installed (apt-get install goaccess)"
        if in_ci():
            pytest.fail(what + "; CI must have it", pytrace=False)
        pytest.skip(what)
    out = run_quick("logparse.py")
    lines = out.splitlines()
    rate = re.compile(r"  [\d,]+ +[\d.]+x")
    for name in ("stanchion LogParser (C)", "PyLogParser (Python regex)", "GoAccess "):
        row = [ln for ln in lines if ln.startswith(name)]
        assert row and rate.search(row[0]), (name, out)
    assert any(ln.startswith("peak RSS of a full C parse: ") for ln in lines), out
    assert any(
        re.search(r"lines/s on one core: (MET|MISSED): [\d,]+$", ln) for ln in lines
    ), out


def test_report_benchmark_runs_every_case() -> None:
    """The replay rows (floor, each algorithm, a penalty) and the whole
    command print a rate each."""
    require_peers("rich", "plotly")
    out = run_quick("report.py")
    lines = out.splitlines()
    for name in (
        "bare Limiter.hit loop (floor)",
        "replay token_bucket",
        "replay fixed_window",
        "replay sliding_window",
        "replay token_bucket + penalty",
        "whole command (python parser)",
    ):
        assert any(
            ln.startswith(name + "  ") and re.search(r"[\d,]+ lines/s", ln)
            for ln in lines
        ), f"no row for {name!r} in:\n{out}"
