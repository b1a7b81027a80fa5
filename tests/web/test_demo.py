"""``python -m stanchion demo``: its output, which a simulated clock and
one-at-a-time arrivals make the same on every run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from stanchion.__main__ import main

ROOT = Path(__file__).resolve().parents[2]


def run_demo(capsys: pytest.CaptureFixture[str]) -> str:
    assert main(["demo"]) == 0
    return capsys.readouterr().out


def test_rate_limit_parts(capsys: pytest.CaptureFixture[str]) -> None:
    out = run_demo(capsys)
    assert "t=0.0s  ok(4 left)" in out
    # The web part: mallory's forged X-Forwarded-For buys nothing.
    mallory = next(line for line in out.splitlines() if "mallory (spoofs" in line)
    assert "200 200 200 200 200 429 429 429" in mallory
    assert "5/8" in mallory
    assert '"global";r=0;t=9' in out


def test_burst_queued_and_served_in_order(capsys: pytest.CaptureFixture[str]) -> None:
    out = run_demo(capsys)
    rows = [
        line.strip() for line in out.splitlines() if "request " in line and "->" in line
    ]
    assert len(rows) == 8
    served = [r for r in rows if "-> 200 served" in r]
    refused = [r for r in rows if "-> 503 refused  Retry-After: 1" in r]
    assert [r.split(":")[0] for r in served] == [f"request {i}" for i in range(6)]
    assert [r.split(":")[0] for r in refused] == ["request 6", "request 7"]
    assert "on arrival 2 in flight, 4 queued" in rows[5]
    assert "on arrival 1 in flight, 0 queued" in rows[0]
    assert "the endpoint started them in this order: 0 1 2 3 4 5\n" in out


def test_abuser_banned_and_ban_escalates(capsys: pytest.CaptureFixture[str]) -> None:
    out = run_demo(capsys)
    lines = out.splitlines()
    first = next(line for line in lines if "t=   0s" in line)
    assert first.split()[2:] == (["200"] * 5 + ["429(12s)"] * 3 + ["403(30s)"] * 2)
    assert "t=  29s  403(1s)" in out
    second = next(line for line in lines if "t=  31s" in line)
    assert second.split()[2:] == (["200"] * 2 + ["429(5s)"] * 3 + ["403(60s)"] * 3)
    assert "t=  92s  200" in out
    assert "banned 30 s more (ban 1)" in out
    assert "banned 60 s more (ban 2)" in out
    assert "2 log lines, one per ban" in out


def test_demo_command_runs() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "stanchion", "demo"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "A concurrency limit with a queue" in proc.stdout
    assert "The penalty box" in proc.stdout
    # The ban log lines are the demo's own count, not noise on stderr.
    assert "banned for" not in proc.stderr
