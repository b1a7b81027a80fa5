"""examples/outbound/run.py, the one command, on 3-second windows: three
providers enforcing their limits with 429s (one silent, found by probe),
two uvicorn processes sharing the budgets through a real redis-server,
3x the capacity offered, one provider killed and revived."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ..conftest import SANITIZED

pytestmark = pytest.mark.slow

RUN = Path(__file__).resolve().parents[2] / "examples" / "outbound" / "run.py"
WINDOW = 3.0
DURATION = 6.0
# Latency slack over the deadline: the sanitizer pass runs every Python
# process of the scene (search services, load) several times slower.
SLACK = 2.0 if SANITIZED else 0.5


@pytest.fixture(scope="module")
def scene() -> dict[str, object]:
    proc = subprocess.run(
        [
            sys.executable,
            str(RUN),
            "--window",
            str(WINDOW),
            "--duration",
            str(DURATION),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=os.environ.copy(),
    )
    assert proc.returncode in (0, 1), proc.stdout + proc.stderr
    figures: dict[str, object] = json.loads(proc.stdout)
    figures["returncode"] = proc.returncode
    return figures


def test_no_provider_ever_answers_429(scene: dict) -> None:
    assert scene["provider_429s"] == {"a": 0, "b": 0, "c": 0}, scene
    assert scene["returncode"] == 0


def test_every_search_is_answered_or_refused_with_retry_after(scene: dict) -> None:
    assert scene["failed"] == 0, scene
    assert scene["refused"] > 0, "3x the capacity offered: some searches are refused"
    assert scene["refused_with_retry_after"] == scene["refused"]
    assert scene["answered"] + scene["refused"] == scene["offered"]


def test_answers_come_within_the_deadline_and_refusals_promptly(scene: dict) -> None:
    deadline_ms = 1000 * scene["deadline_s"]
    bound = deadline_ms + 1000 * SLACK
    # What the services held each search (their Server-Timing header): the
    # part the deadline bounds, on any machine.
    assert scene["untimed"] == 0, scene
    assert scene["answered_held_p99_ms"] <= bound, scene
    assert scene["refused_held_p99_ms"] <= bound, scene
    # Most refusals come at once, not at the deadline: a search whose turn
    # is past it is not kept waiting to learn so.
    slow = 1000 * SLACK if SANITIZED else 0.0
    assert scene["refused_held_p50_ms"] < deadline_ms / 2 + slow, scene
    if SANITIZED:
        # Seen from the client, a search also waits for a CPU: under the
        # sanitizer the scene's processes fall seconds behind the load
        # (span_s over duration_s), the machine's time, not the deadline's.
        return
    assert scene["answered_p99_ms"] <= bound, scene
    assert scene["refused_p99_ms"] <= bound, scene
    assert scene["refused_p50_ms"] < deadline_ms / 2, scene


def test_the_budgets_are_spent_not_wasted(scene: dict) -> None:
    # The providers' capacity over the run, less b's downtime: the pool
    # answers most of it, and never more than the providers allow.
    # (Over the span the answers came in: on a slow machine, such as the
    # sanitizer pass, the services may answer past the load's duration.)
    capacity = scene["capacity_per_s"] * scene["duration_s"]
    most = scene["capacity_per_s"] * max(scene["duration_s"], scene["span_s"])
    served = sum(scene["provider_served"].values())
    assert scene["answered"] == served
    # Paced: a provider's first call, then one per interval.
    assert served <= most + 3, scene
    assert served >= 0.6 * capacity, scene


def test_a_killed_provider_is_skipped_and_rejoins(scene: dict) -> None:
    assert scene["b_served_after_revival"] > 0, scene
    rejoined = scene["b_rejoined_after_s"]
    assert rejoined is not None
    assert rejoined <= scene["cooldown_s"] + 2.0, scene


def test_probe_finds_the_silent_limit_within_ten_percent(scene: dict) -> None:
    assert abs(scene["probe_error"]) <= 0.10, scene["probe_suggested"]
