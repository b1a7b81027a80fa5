"""Load test: uvicorn serving examples/fastapi_app.py on loopback, a
bounded asyncio client for about 20 seconds.

Every request goes to ``/report`` (20 per API key per day) with one of
100 API keys, round robin. Over 20 s a day-long token bucket refills
less than one token, so each key must get exactly 20 responses 200 and
every other response must be a 429 (from the route, or from the
middleware's per-minute limit once a key passes 60). No 5xx, and the
server's RSS stays flat once warm.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import psutil
import pytest

from ..conftest import SANITIZED

ROOT = Path(__file__).resolve().parents[2]
DURATION = 20.0
MAX_REQUESTS = 200_000
CONCURRENCY = 16
KEYS = 100
QUOTA = 20  # "/report": 20/day per key


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_uvicorn_load() -> None:
    port = free_port()
    env = dict(os.environ)
    env.pop("TRUSTED_PROXIES", None)
    env["API_KEYS"] = ",".join(f"load-{i}" for i in range(KEYS))
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "--app-dir",
            str(ROOT / "examples"),
            "fastapi_app:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--no-access-log",
        ],
        env=env,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(base + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert server.poll() is None, "uvicorn exited"
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.1)
        proc = psutil.Process(server.pid)
        statuses, per_key, rss = asyncio.run(drive(base, proc))
    finally:
        server.terminate()
        server.wait(timeout=10)

    total = sum(statuses.values())
    print(f"\n{total} requests in {DURATION:.0f} s: {dict(statuses)}; RSS MB {rss}")
    assert total >= KEYS * (QUOTA + 1), "too few requests to judge the limits"
    assert not [s for s in statuses if s >= 500]
    assert set(statuses) <= {200, 429}
    for key, got in per_key.items():
        sent = sum(got.values())
        assert got[200] == min(sent, QUOTA), (key, dict(got))
        assert got[429] == sent - min(sent, QUOTA)
    assert statuses[200] == KEYS * QUOTA
    assert statuses[429] == total - KEYS * QUOTA
    if not SANITIZED:
        warm, last = rss[1], rss[-1]
        assert last - warm < 16, f"RSS grew from {warm} to {last} MB"


async def drive(
    base: str, proc: psutil.Process
) -> tuple[Counter[int], dict[str, Counter[int]], list[int]]:
    statuses: Counter[int] = Counter()
    per_key: dict[str, Counter[int]] = {f"load-{i}": Counter() for i in range(KEYS)}
    rss: list[int] = []
    start = time.monotonic()
    stop = start + DURATION
    sent = 0

    async def worker() -> None:
        # A minimal keep-alive HTTP/1.1 client: httpx costs more CPU per
        # request than the server does, and both share this machine.
        nonlocal sent
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while time.monotonic() < stop and sent < MAX_REQUESTS:
                key = f"load-{sent % KEYS}"
                sent += 1
                writer.write(
                    f"GET /report HTTP/1.1\r\nHost: {host}\r\nX-API-Key: {key}\r\n\r\n".encode()
                )
                head = await reader.readuntil(b"\r\n\r\n")
                status = int(head.split(b" ", 2)[1])
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                await reader.readexactly(length)
                statuses[status] += 1
                per_key[key][status] += 1
        finally:
            writer.close()
            await writer.wait_closed()

    async def sample() -> None:
        while time.monotonic() < stop:
            rss.append(proc.memory_info().rss >> 20)
            await asyncio.sleep(DURATION / 8)
        rss.append(proc.memory_info().rss >> 20)

    host, port = base.removeprefix("http://").split(":")
    await asyncio.gather(sample(), *(worker() for _ in range(CONCURRENCY)))
    return statuses, per_key, rss
