"""Real redis-server processes for the tests: one server on a free port in
a temporary directory (no persistence), a 3-master Redis Cluster, or a
master, a replica and a Sentinel.

Fixtures (imported by conftest.py): ``redis_server`` (one per session,
shared; tests keep apart by key prefix), ``private_redis`` (one per test,
for tests that kill or pause it), ``redis_cluster`` (one per session) and
``redis_sentinel`` (one per test: tests fail it over).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator

import pytest

REDIS_SERVER = shutil.which("redis-server") or "redis-server"
REDIS_CLI = shutil.which("redis-cli") or "redis-cli"

# The timeout for tests of behaviour rather than of failures: a loaded
# 2-core machine can take longer than the 50 ms default to connect.
SLOW = 1.0


def server_env() -> dict[str, str]:
    """The environment for redis-server and redis-cli: without the
    sanitizer pass's preloaded runtime, which is for Python only."""
    drop = ("LD_PRELOAD", "ASAN_OPTIONS", "UBSAN_OPTIONS")
    return {k: v for k, v in os.environ.items() if k not in drop}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free too."""
    for _ in range(200):
        port = free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


def ping(port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith((b"+PONG", b"-NOAUTH"))  # up (auth aside)
    except OSError:
        return False


class RedisServer:
    """One redis-server process; can be killed, paused and restarted on the
    same port (restarted empty: no data, no scripts)."""

    def __init__(self, directory: str, port: int | None = None, *extra: str) -> None:
        self.dir = directory
        self.port = port or free_port()
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        assert self.proc is None
        args = [
            REDIS_SERVER,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", self.dir,
            "--logfile", os.path.join(self.dir, f"redis-{self.port}.log"),
            "--daemonize", "no",
            *self.extra,
        ]  # fmt: skip
        self.proc = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=server_env()
        )
        deadline = time.monotonic() + 10
        while not ping(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server on port {self.port} did not start")
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
        """Stop, then start empty on the same port."""
        self.kill()
        self.start()

    def cli(self, *args: str) -> str:
        out = subprocess.run(
            [REDIS_CLI, "-p", str(self.port), *args],
            env=server_env(),
            check=True,
            capture_output=True,
            timeout=10,
        )
        return out.stdout.decode()


class RedisCluster:
    """Three masters, no replicas, slots spread by redis-cli."""

    def __init__(self, directory: str) -> None:
        self.nodes = [
            RedisServer(
                os.path.join(directory, str(i)),
                free_cluster_port(),
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "2000",
            )
            for i in range(3)
        ]

    @property
    def port(self) -> int:
        return self.nodes[0].port

    def start(self) -> None:
        for node in self.nodes:
            os.makedirs(node.dir, exist_ok=True)
            node.start()
        subprocess.run(
            [
                REDIS_CLI,
                "--cluster",
                "create",
                *(f"127.0.0.1:{n.port}" for n in self.nodes),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            env=server_env(),
            check=True,
            capture_output=True,
            timeout=60,
        )
        deadline = time.monotonic() + 30
        while True:
            states = [n.cli("cluster", "info") for n in self.nodes]
            if all("cluster_state:ok" in s for s in states):
                slots = self.nodes[0].cli("cluster", "slots")
                if slots.count("127.0.0.1") >= 3:
                    return
            if time.monotonic() > deadline:
                raise RuntimeError("the Redis Cluster did not become ready")
            time.sleep(0.05)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    with tempfile.TemporaryDirectory(prefix="stanchion-redis-") as d:
        server = RedisServer(d)
        server.start()
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    with tempfile.TemporaryDirectory(prefix="stanchion-redis-") as d:
        server = RedisServer(d)
        server.start()
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisCluster]:
    with tempfile.TemporaryDirectory(prefix="stanchion-cluster-") as d:
        cluster = RedisCluster(d)
        try:
            cluster.start()
            yield cluster
        finally:
            cluster.stop()


class RedisSentinelGroup:
    """A master, one replica and one Sentinel watching them as
    ``mymaster`` (``redis-server --sentinel``), for failover tests."""

    NAME = "mymaster"

    def __init__(self, directory: str) -> None:
        self.dir = directory
        # Replicas sync at once (not after the default 5 s wait for more).
        self.master = RedisServer(
            os.path.join(directory, "a"), None, "--repl-diskless-sync-delay", "0"
        )
        self.replica = RedisServer(os.path.join(directory, "b"))
        self.sentinel_port = free_port()
        self.sentinel: subprocess.Popen[bytes] | None = None

    @property
    def servers(self) -> list[RedisServer]:
        return [self.master, self.replica]

    def start(self) -> None:
        for server in self.servers:
            os.makedirs(server.dir, exist_ok=True)
        self.master.start()
        self.replica.extra = ("--replicaof", "127.0.0.1", str(self.master.port))
        self.replica.start()
        conf = os.path.join(self.dir, "sentinel.conf")
        with open(conf, "w") as f:
            f.write(
                f"port {self.sentinel_port}\n"
                "bind 127.0.0.1\n"
                f"dir {self.dir}\n"
                f"logfile {os.path.join(self.dir, 'sentinel.log')}\n"
                f"sentinel monitor {self.NAME} 127.0.0.1 {self.master.port} 1\n"
                f"sentinel down-after-milliseconds {self.NAME} 1000\n"
                f"sentinel failover-timeout {self.NAME} 10000\n"
                # Known at once, rather than from the master's INFO, which
                # a Sentinel reads every 10 s.
                f"sentinel known-replica {self.NAME} 127.0.0.1 {self.replica.port}\n"
            )
        self.sentinel = subprocess.Popen(
            [REDIS_SERVER, conf, "--sentinel"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=server_env(),
        )
        # Ready once the Sentinel knows the replica (failover needs one).
        self.wait(
            lambda: (
                self.sentinel_cli("SENTINEL", "REPLICAS", self.NAME).count("127.0.0.1")
                >= 1
            ),
            "the Sentinel did not find the replica",
        )
        self.wait(
            lambda: "master_link_status:up" in self.replica.cli("INFO", "replication"),
            "the replica did not sync",
        )

    @staticmethod
    def wait(check: Callable[[], bool], what: str, seconds: float = 30) -> None:
        deadline = time.monotonic() + seconds
        while True:
            try:
                if check():
                    return
            except (OSError, subprocess.SubprocessError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(what)
            time.sleep(0.05)

    def sentinel_cli(self, *args: str) -> str:
        out = subprocess.run(
            [REDIS_CLI, "-p", str(self.sentinel_port), *args],
            env=server_env(),
            check=True,
            capture_output=True,
            timeout=10,
        )
        return out.stdout.decode()

    def master_port(self) -> int:
        reply = self.sentinel_cli("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.NAME)
        return int(reply.split()[1])

    def _switched(self, new: RedisServer) -> bool:
        fields = self.sentinel_cli("SENTINEL", "MASTER", self.NAME).splitlines()
        info = dict(zip(fields[::2], fields[1::2], strict=False))
        return info.get("port") == str(new.port) and info.get("flags") == "master"

    def failover(self) -> RedisServer:
        """Promote the replica; the new master once both servers agree
        (the old master a replica of the new one)."""
        old_port = self.master_port()
        old = next(s for s in self.servers if s.port == old_port)
        new = next(s for s in self.servers if s.port != old_port)
        # A forced failover does not wait for the replica to catch up:
        # writes it has not yet received would be lost (Redis replication
        # is asynchronous). The tests are about following the new master,
        # so let the replica catch up first.
        self.wait(
            lambda: (
                _repl_offset(new, "slave_repl_offset")
                >= _repl_offset(old, "master_repl_offset")
            ),
            "the replica did not catch up",
        )
        self.sentinel_cli("SENTINEL", "FAILOVER", self.NAME)
        # Done when the Sentinel's own view has switched (its clients ask
        # SENTINEL MASTERS, which names the old master until then).
        self.wait(
            lambda: self.master_port() == new.port and self._switched(new),
            "the failover did not happen",
        )
        self.wait(
            lambda: "role:master" in new.cli("INFO", "replication"),
            "the new master did not take over",
        )
        # The Sentinel turns the old master into a replica when it next
        # reads its INFO (up to 10 s later): done here at once, as it would.
        old.cli("REPLICAOF", "127.0.0.1", str(new.port))
        self.wait(
            lambda: "role:slave" in old.cli("INFO", "replication"),
            "the old master did not become a replica",
        )
        return new

    def stop(self) -> None:
        if self.sentinel is not None:
            self.sentinel.terminate()
            self.sentinel.wait(5)
            self.sentinel = None
        for server in self.servers:
            server.stop()


@pytest.fixture
def redis_sentinel() -> Iterator[RedisSentinelGroup]:
    with tempfile.TemporaryDirectory(prefix="stanchion-sentinel-") as d:
        group = RedisSentinelGroup(d)
        try:
            group.start()
            yield group
        finally:
            group.stop()


def _repl_offset(server: RedisServer, field: str) -> int:
    """A replication offset from INFO replication (-1 when absent)."""
    for line in server.cli("INFO", "replication").splitlines():
        name, _, value = line.strip().partition(":")
        if name == field:
            return int(value)
    return -1
