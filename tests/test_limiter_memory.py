"""Bounded memory under key floods, eviction order, and leak checks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psutil

from stanchion import Limiter

from .conftest import SANITIZED, FakeClock

ISOLATED = Path(__file__).with_name("isolated")


def rss() -> int:
    return int(psutil.Process().memory_info().rss)


def test_flood_of_two_million_keys_stays_bounded_and_blocked_stays_blocked(
    clock: FakeClock,
) -> None:
    lim = Limiter("5/minute", max_keys=10_000, clock=clock)
    for _ in range(5):
        assert lim.hit("attacker")
    assert not lim.hit("attacker")
    # Warm up to the bound so the table has reached its final size.
    for i in range(20_000):
        lim.hit(f"warm-{i}")
    before = rss()
    hit = lim.hit
    for i in range(2_000_000):
        hit(f"flood-{i}")
        if i % 250_000 == 0:
            clock.advance(1)  # time moves, slower than any key refills
    grown = rss() - before
    stats = lim.stats()
    assert stats["keys"] <= 10_000
    assert stats["evicted"] >= 2_000_000 - 10_000
    assert stats["memory_bytes"] < 10_000 * 100
    if not SANITIZED:
        assert grown < 8 * 1024 * 1024, f"RSS grew by {grown} bytes"
    # Every flood key was one hit away from full (12 s), the attacker a full
    # minute: eviction always preferred the flood keys.
    d = lim.hit("attacker")
    assert not d and d.reset_after > 40


def test_full_keys_are_dropped_before_live_ones(clock: FakeClock) -> None:
    lim = Limiter("5/second;3/hour", max_keys=100, clock=clock)
    for i in range(90):
        lim.hit(f"idle-{i}")
    for i in range(10):
        lim.hit(f"busy-{i}")
        lim.hit(f"busy-{i}")
        lim.hit(f"busy-{i}")  # the hourly rate is exhausted
    # Idle keys' hourly state needs 20 minutes to be full again.
    clock.advance(1201)
    for i in range(50):
        lim.hit(f"new-{i}")
    s = lim.stats()
    assert s["evicted"] == 0, s
    assert s["expired"] >= 50
    for i in range(10):
        # Their state survived: one token back after 20 minutes, so a hit
        # now would leave 0 (a forgotten key would leave 2).
        assert lim.peek(f"busy-{i}").remaining == 0


def test_peeks_and_denials_never_grow_the_table(clock: FakeClock) -> None:
    lim = Limiter("1/hour", max_keys=10, clock=clock)
    for i in range(1000):
        lim.peek(f"p-{i}")
    assert lim.stats()["keys"] == 0


def test_max_keys_one(clock: FakeClock) -> None:
    lim = Limiter("1/hour", max_keys=1, clock=clock)
    assert lim.hit("a")
    assert lim.hit("b")  # "a" evicted: the only way to admit a new key
    assert lim.stats() == {**lim.stats(), "keys": 1, "evicted": 1}
    assert not lim.hit("b")


def run_isolated(script: str) -> str:
    env = dict(os.environ)
    proc = subprocess.run(
        [sys.executable, str(ISOLATED / script)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_a_million_hits_leak_nothing() -> None:
    out = run_isolated("leak_limiter.py")
    assert "ok" in out
