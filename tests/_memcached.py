"""Real memcached processes for the tests, started on a free port and
stopped afterwards (the pattern of ``tests/_redis.py``).

Fixtures (imported by conftest.py): ``memcached_server`` (one per
session, shared; tests keep apart by key prefix) and
``private_memcached`` (one per test, for tests that kill or pause it).
Without a ``memcached`` binary the tests skip, and fail in CI (CI=true),
where ``scripts/_setup.sh`` installs it.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest

from ._redis import free_port, server_env

MEMCACHED = shutil.which("memcached")


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes", "on")


def ping(port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(b"version\r\n")
            return s.recv(64).startswith(b"VERSION")
    except OSError:
        return False


class MemcachedServer:
    """One memcached process; can be killed, paused and restarted on the
    same port (restarted empty)."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"memcached://127.0.0.1:{self.port}"

    def start(self) -> None:
        assert self.proc is None
        assert MEMCACHED is not None
        args = [
            MEMCACHED,
            "-p", str(self.port),
            "-U", "0",  # no UDP
            "-l", "127.0.0.1",
            "-m", "64",
            "-t", "2",
        ]  # fmt: skip
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            args += ["-u", "root"]
        self.proc = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=server_env()
        )
        deadline = time.monotonic() + 10
        while not ping(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"memcached on port {self.port} did not start")
            time.sleep(0.01)

    def kill(self) -> None:
        """SIGKILL: the server vanishes mid-whatever."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None

    def pause(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def restart(self) -> None:
        """Kill, then start empty on the same port."""
        self.kill()
        self.start()


def _require() -> None:
    if MEMCACHED is not None:
        return
    what = "memcached is not installed (apt-get install memcached)"
    if _in_ci():
        pytest.fail(what + "; CI must have it", pytrace=False)
    pytest.skip(what)


def _served() -> Iterator[MemcachedServer]:
    _require()
    server = MemcachedServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def memcached_server() -> Iterator[MemcachedServer]:
    yield from _served()


@pytest.fixture
def private_memcached() -> Iterator[MemcachedServer]:
    yield from _served()
