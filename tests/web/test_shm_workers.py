"""Worker processes on a shm:// storage share one limit, so the 429
count is exact across them: FastAPI under uvicorn --workers 2, Flask
under gunicorn -w 2 and under werkzeug's forking server."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from stanchion import SharedMemoryStorage

from .test_load import free_port

HERE = Path(__file__).resolve().parent
QUOTA = 30  # the app's "30/day"


def _two_workers_share_one_limit(command: list[str]) -> None:
    """Run ``command`` (a server of tests/web/_shm_app.py with 2 worker
    processes on PORT) and send 200 requests, 8 at a time, each on its own
    connection: exactly the quota passes, and both workers answered."""
    name = f"test-{uuid.uuid4().hex}"
    port = free_port()
    env = {**os.environ, "SHM_NAME": name}
    server = subprocess.Popen(
        [arg.replace("PORT", str(port)) for arg in command], env=env, cwd=HERE
    )
    base = f"http://127.0.0.1:{port}"
    statuses: Counter[int] = Counter()
    pids: set[str] = set()
    try:
        deadline = time.monotonic() + 30

        def get(_: int) -> tuple[int, str]:
            with httpx.Client(timeout=5) as c:  # one connection per request
                r = c.get(base + "/")
                return r.status_code, r.headers["x-worker"]

        while True:
            try:
                status, text = get(0)
                break
            except httpx.TransportError:
                assert server.poll() is None, "the server exited"
                assert time.monotonic() < deadline, "the server did not start"
                time.sleep(0.1)
        statuses[status] += 1
        pids.add(text)
        with ThreadPoolExecutor(8) as pool:
            for status, text in pool.map(get, range(199)):
                statuses[status] += 1
                pids.add(text)
    finally:
        server.terminate()
        server.wait(timeout=10)
        SharedMemoryStorage(name).unlink(missing_ok=True)
    assert statuses == {200: QUOTA, 429: 200 - QUOTA}, statuses
    # Both workers decided requests against the one budget.
    assert len(pids) == 2, pids


@pytest.mark.slow
def test_uvicorn_two_workers_share_one_limit() -> None:
    """FastAPI behind the ASGI middleware with storage="shm://...", under
    uvicorn --workers 2."""
    _two_workers_share_one_limit(
        [
            *(sys.executable, "-m", "uvicorn", "_shm_app:app", "--workers", "2"),
            *("--host", "127.0.0.1", "--port", "PORT", "--log-level", "warning"),
            "--no-access-log",
        ]
    )


@pytest.mark.slow
def test_gunicorn_two_workers_share_one_limit() -> None:
    """Flask with STANCHION_STORAGE_URL = "shm://...", under gunicorn -w 2."""
    _two_workers_share_one_limit(
        [
            *(sys.executable, "-m", "gunicorn", "-w", "2", "-b", "127.0.0.1:PORT"),
            *("--log-level", "warning", "_shm_app:flask_app"),
        ]
    )


def test_flask_rules_with_other_rates_share_one_shm_url() -> None:
    """A Flask app's default limit and a view's own limit on one
    STANCHION_STORAGE_URL = "shm://...": each rate keeps its own state."""
    from flask import Flask

    from stanchion.flask import Stanchion

    name = f"test-{uuid.uuid4().hex}"
    app = Flask(__name__)
    app.config["STANCHION_STORAGE_URL"] = f"shm://{name}"
    app.config["STANCHION_DEFAULT_LIMIT"] = "2/day"
    ext = Stanchion()

    @app.get("/default")
    def default() -> str:
        return "ok"

    @app.get("/own")
    @ext.limit("3/day")
    def own() -> str:
        return "ok"

    ext.init_app(app)
    try:
        c = app.test_client()
        assert [c.get("/default").status_code for _ in range(3)] == [200, 200, 429]
        assert [c.get("/own").status_code for _ in range(4)] == [200, 200, 200, 429]
        assert len(SharedMemoryStorage(name).segments()) == 2
    finally:
        SharedMemoryStorage(name).unlink(missing_ok=True)


_FLASK_SERVER = """
import sys
from flask import Flask
from werkzeug.serving import run_simple
from stanchion.flask import Stanchion

app = Flask(__name__)
app.config["STANCHION_STORAGE_URL"] = sys.argv[2]
app.config["STANCHION_DEFAULT_LIMIT"] = "20/day"


@app.get("/")
def hello():
    return "ok"


Stanchion(app)
run_simple("127.0.0.1", int(sys.argv[1]), app, processes=4)
"""


@pytest.mark.slow
@pytest.mark.parametrize(
    ("storage", "expected"),
    [("shm", {200: 20, 429: 40}), ("memory", {200: 60})],
    ids=["shm", "memory"],
)
def test_flask_under_a_forking_server(storage: str, expected: dict[int, int]) -> None:
    """werkzeug with processes=4 forks a child per request: with the
    in-process table every child starts from the parent's empty state
    (all 60 pass); with shm:// the 20/day holds across them."""
    name = f"test-{uuid.uuid4().hex}"
    url = f"shm://{name}" if storage == "shm" else "memory://"
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-c", _FLASK_SERVER, str(port), url],
        stderr=subprocess.DEVNULL,
    )
    statuses: Counter[int] = Counter()
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                statuses[httpx.get(f"http://127.0.0.1:{port}/").status_code] += 1
                break
            except httpx.TransportError:
                assert server.poll() is None, "the server exited"
                assert time.monotonic() < deadline, "the server did not start"
                time.sleep(0.1)
        with ThreadPoolExecutor(4) as pool:
            for status in pool.map(
                lambda _: httpx.get(f"http://127.0.0.1:{port}/").status_code,
                range(59),
            ):
                statuses[status] += 1
    finally:
        server.terminate()
        server.wait(timeout=10)
        SharedMemoryStorage(name).unlink(missing_ok=True)
    assert statuses == expected
