"""The loopback fake providers of examples/outbound: their limits, their
headers, and a provider killed and restarted on its port."""

from __future__ import annotations

import http.client
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import FakeClock

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "outbound"
sys.path.insert(0, str(EXAMPLE))

from providers import FakeProvider, parse_spec  # noqa: E402

LIMIT_HEADERS = (
    "Retry-After",
    "RateLimit",
    "RateLimit-Policy",
    "X-RateLimit-Limit",
    "X-RateLimit-Remaining",
    "X-RateLimit-Reset",
)


class Client:
    """One keep-alive connection to a provider."""

    def __init__(self, provider: FakeProvider) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", provider.port, timeout=5)

    def get(self, path: str = "/search?q=abba") -> tuple[int, dict[str, str], bytes]:
        self.conn.request("GET", path)
        r = self.conn.getresponse()
        return r.status, dict(r.getheaders()), r.read()

    def statuses(self, n: int) -> list[int]:
        return [self.get()[0] for _ in range(n)]

    def close(self) -> None:
        self.conn.close()


@pytest.fixture
def started():
    providers: list[FakeProvider] = []

    def start(*args, **kwargs) -> tuple[FakeProvider, Client]:
        p = FakeProvider(*args, **kwargs).start()
        providers.append(p)
        c = Client(p)
        clients.append(c)
        return p, c

    clients: list[Client] = []
    yield start
    for c in clients:
        c.close()
    for p in providers:
        p.stop()


def test_sliding_log_refuses_exactly_above_the_limit(started, clock: FakeClock):
    # Times exact in binary, so that "0.5 s later" is exact.
    p, c = started("s", 5, 0.5, kind="sliding", clock=clock)
    t = clock.now
    assert c.statuses(3) == [200] * 3
    clock.now = t + 0.25
    assert c.statuses(4) == [200, 200, 429, 429]
    clock.now = t + 0.4921875  # just under 0.5 s after the first three
    assert c.statuses(1) == [429]
    clock.now = t + 0.5  # the first three leave the window
    assert c.statuses(4) == [200, 200, 200, 429]
    clock.now = t + 0.75  # the two of 0.25 leave; those of 0.5 stay
    assert c.statuses(3) == [200, 200, 429]
    assert (p.served, p.refused, p.requests) == (10, 5, 15)


def test_fixed_windows_are_aligned_to_the_start(started, clock: FakeClock):
    p, c = started("f", 5, 0.5, kind="fixed", clock=clock)
    t = clock.now  # the provider's start: windows begin at t, t + 0.5...
    clock.now = t + 0.375
    assert c.statuses(6) == [200] * 5 + [429]
    clock.now = t + 0.5  # a new window: a whole quota at once
    assert c.statuses(6) == [200] * 5 + [429]
    clock.now = t + 0.9921875
    assert c.statuses(1) == [429]
    clock.now = t + 1.0
    assert c.statuses(6) == [200] * 5 + [429]
    assert (p.served, p.refused) == (15, 4)


def test_real_clock(started):
    _p, c = started("r", 5, 0.5)
    assert c.statuses(8) == [200] * 5 + [429] * 3
    time.sleep(0.55)
    assert c.statuses(6) == [200] * 5 + [429]


def test_advertised_headers(started, clock: FakeClock):
    _p, c = started("adv", 5, 2, kind="fixed", clock=clock)
    clock.advance(0.5)
    status, headers, body = c.get("/search?q=dancing+queen")
    assert status == 200
    assert json.loads(body) == {
        "provider": "adv",
        "query": "dancing queen",
        "results": [
            {"title": "dancing queen (adv #1)"},
            {"title": "dancing queen (adv #2)"},
        ],
    }
    assert headers["X-RateLimit-Limit"] == "5"
    assert headers["X-RateLimit-Remaining"] == "4"
    assert headers["X-RateLimit-Reset"] == "2"  # 1.5 s, rounded up
    assert headers["RateLimit-Policy"] == '"adv";q=5;w=2'
    assert headers["RateLimit"] == '"adv";r=4;t=2'
    assert "Retry-After" not in headers
    c.statuses(4)
    clock.advance(0.6)
    status, headers, _ = c.get()
    assert status == 429
    assert headers["Retry-After"] == "1"  # 0.9 s to the next window
    assert headers["X-RateLimit-Remaining"] == "0"
    assert headers["RateLimit"] == '"adv";r=0;t=1'


def test_fractional_window_policy_is_whole_seconds(started):
    _p, c = started("half", 5, 0.5)
    _, headers, _ = c.get()
    assert headers["RateLimit-Policy"] == '"half";q=10;w=1'


def test_silent_provider_sends_a_bare_429(started):
    _p, c = started("quiet", 2, 5, advertise=False)
    for _ in range(2):
        status, headers, body = c.get()
        assert status == 200
        assert not set(headers) & set(LIMIT_HEADERS)
        assert json.loads(body)["provider"] == "quiet"
    status, headers, body = c.get()
    assert status == 429
    assert body == b""
    assert not set(headers) & set(LIMIT_HEADERS)


def test_other_paths_and_methods(started):
    p, c = started("x", 1, 5)
    assert c.get("/other")[0] == 404
    c.conn.request("POST", "/search", body=b"{}")
    r = c.conn.getresponse()
    r.read()
    assert r.status == 405
    assert p.requests == 0  # only searches count
    assert c.statuses(2) == [200, 429]


def test_keep_alive_serves_many_requests_per_connection(started):
    p, c = started("k", 10**9, 1)
    for _ in range(200):
        status, _, _ = c.get()
        assert status == 200
    assert p.connections == 1
    assert p.served == 200


def test_stop_drops_connections_and_restart_uses_the_same_port(started):
    p, c = started("k", 3, 60)
    port = p.port
    assert c.statuses(2) == [200, 200]
    p.stop()
    with pytest.raises((ConnectionError, http.client.HTTPException)):
        c.get()  # the kept-alive connection is gone
    c.close()
    with pytest.raises(ConnectionRefusedError):
        Client(p).get()
    p.restart()
    assert p.port == port
    c2 = Client(p)
    try:
        # The limit's state carried over: one more 200, then refusals.
        assert c2.statuses(2) == [200, 429]
    finally:
        c2.close()
    assert (p.served, p.refused, p.connections) == (3, 1, 2)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"limit": 0},
        {"limit": 1.5},
        {"window": 0},
        {"window": float("nan")},
        {"kind": "token"},
        {"latency": -1},
        {"port": 70000},
    ],
)
def test_bad_arguments(kwargs):
    args = {"name": "a", "limit": 5, "window": 1.0, **kwargs}
    with pytest.raises(ValueError):
        FakeProvider(**args)


def test_spec():
    p = parse_spec("b:300/30:silent:fixed:latency=0.02:port=8123")
    assert (p.name, p.limit, p.window, p.kind, p.advertise, p.latency, p.port) == (
        "b",
        300,
        30.0,
        "fixed",
        False,
        0.02,
        8123,
    )
    for bad in ("b", "b:300", "b:x/30", "b:300/30:loud", "b:300/30:port=x"):
        with pytest.raises(ValueError):
            parse_spec(bad)


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_command_line_runs_providers_until_interrupted(sig):
    proc = subprocess.Popen(
        [
            sys.executable,
            str(EXAMPLE / "providers.py"),
            "--provider",
            "a:2/30",
            "--provider",
            "b:1/30:silent:fixed",
        ],
        stdout=subprocess.PIPE,
        text=True,
        # Ctrl-C as a terminal sends it, whatever this run inherited: a
        # suite started as a background job (nohup, &) ignores SIGINT, and
        # a child would too.
        preexec_fn=_default_sigint,
    )
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(2)]
        assert lines[0].startswith("a: http://127.0.0.1:")
        assert "(1 per 30 s, fixed, silent)" in lines[1]
        port = int(lines[1].split(":")[3].split("/")[0])
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        for expected in (200, 429):
            conn.request("GET", "/search?q=x")
            r = conn.getresponse()
            r.read()
            assert r.status == expected
        conn.close()
    finally:
        proc.send_signal(sig)
        try:
            out, _ = proc.communicate(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert proc.returncode == 0
    assert "b: 1 served, 1 refused" in out


def test_command_line_rejects_a_bad_spec():
    proc = subprocess.run(
        [sys.executable, str(EXAMPLE / "providers.py"), "--provider", "a:lots"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2
    assert "NAME:LIMIT/WINDOW" in proc.stderr
