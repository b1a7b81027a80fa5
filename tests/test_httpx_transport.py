"""stanchion.httpx: per-host budgets for httpx clients, against real
loopback HTTP servers that enforce their own limits with 429s."""

from __future__ import annotations

import asyncio
import math
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

import stanchion
import stanchion.httpx as sh
from stanchion import SharedMemoryStorage

from ._redis import SLOW, RedisServer, free_port


class Upstream:
    """A threaded HTTP/1.1 server on 127.0.0.1, counting what it serves.

    ``/ok``: 200, or 429 with Retry-After once more than ``limit``
    requests arrived within ``period`` seconds (a sliding log);
    ``/retry?after=N&status=S``: status S (429) with ``Retry-After: N``;
    ``/status?code=C``: status C; ``/slow?s=X``: 200 after X seconds;
    ``/stream``: the headers at once, the body only after ``release``.
    """

    def __init__(
        self, limit: int | None = None, period: float = 1.0, port: int = 0
    ) -> None:
        self.limit = limit
        self.period = period
        self.served: Counter[str] = Counter()
        self.refused = 0
        self.log: deque[float] = deque()
        self.lock = threading.Lock()
        self.release = threading.Event()
        self.body_sent = threading.Event()
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # no 40 ms stalls on keep-alive

            def log_message(self, format: str, *args: object) -> None:
                pass

            def answer(
                self, status: int, body: bytes = b"ok", headers: dict | None = None
            ) -> None:
                self.send_response(status)
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                url = urlsplit(self.path)
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                with upstream.lock:
                    upstream.served[url.path] += 1
                if url.path == "/ok":
                    wait = upstream.admit()
                    if wait is None:
                        self.answer(200)
                    else:
                        self.answer(429, b"slow down", {"Retry-After": str(wait)})
                elif url.path == "/retry":
                    status = int(query.get("status", "429"))
                    self.answer(status, b"later", {"Retry-After": query["after"]})
                elif url.path == "/status":
                    self.answer(int(query["code"]))
                elif url.path == "/slow":
                    time.sleep(float(query["s"]))
                    self.answer(200)
                elif url.path == "/stream":
                    self.send_response(200)
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    self.wfile.flush()
                    upstream.release.wait(10)
                    upstream.body_sent.set()
                    self.wfile.write(b"4\r\nbody\r\n0\r\n\r\n")
                else:
                    self.answer(404)

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}
        )
        self.thread.start()

    def admit(self) -> int | None:
        """None to serve a request to /ok, or the Retry-After of a 429."""
        if self.limit is None:
            return None
        with self.lock:
            now = time.monotonic()
            while self.log and self.log[0] <= now - self.period:
                self.log.popleft()
            if len(self.log) >= self.limit:
                self.refused += 1
                return max(1, math.ceil(self.log[0] + self.period - now))
            self.log.append(now)
            return None

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return f"http://{self.host}{path}"

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    server = Upstream(limit=10, period=0.9)
    yield server
    server.close()


@pytest.fixture
def other() -> Iterator[Upstream]:
    server = Upstream()
    yield server
    server.close()


@pytest.fixture(params=["shm", "redis"])
def storages(request: pytest.FixtureRequest) -> Iterator[tuple[object, object]]:
    """Two storage objects naming one shared store, as two processes
    would have."""
    if request.param == "shm":
        name = f"test-httpx-{uuid.uuid4().hex[:12]}"
        yield SharedMemoryStorage(name), SharedMemoryStorage(name)
        SharedMemoryStorage(name).unlink(missing_ok=True)
    else:
        from stanchion.redis import RedisStorage

        server: RedisServer = request.getfixturevalue("redis_server")
        prefix = f"t{uuid.uuid4().hex[:12]}:"
        a = RedisStorage(server.url, prefix=prefix, timeout=SLOW)
        b = RedisStorage(server.url, prefix=prefix, timeout=SLOW)
        yield a, b
        a.close()
        b.close()


# -- sync ---------------------------------------------------------------------


def test_the_upstream_refuses_an_unlimited_client(upstream: Upstream) -> None:
    # The check on the tests below: without the transport, 12 requests in a
    # row meet 429s.
    with httpx.Client() as client:
        codes = [client.get(upstream.url("/ok")).status_code for _ in range(12)]
    assert codes.count(429) >= 2 and upstream.refused >= 2


def test_paces_a_host_and_leaves_the_others_alone(
    upstream: Upstream, other: Upstream
) -> None:
    transport = sh.LimitedTransport(rates={upstream.host: "10/second"})
    with httpx.Client(transport=transport) as client:
        start = time.monotonic()
        codes = [client.get(other.url("/ok")).status_code for _ in range(12)]
        assert time.monotonic() - start < 0.5  # not limited: no default
        assert codes == [200] * 12
        start = time.monotonic()
        codes = [client.get(upstream.url("/ok")).status_code for _ in range(12)]
        elapsed = time.monotonic() - start
    assert codes == [200] * 12
    assert upstream.refused == 0
    assert elapsed >= 11 * 0.1 - 0.02  # paced: one request per 100 ms


def test_default_rates_apply_per_host(upstream: Upstream, other: Upstream) -> None:
    transport = sh.LimitedTransport(default="4/second")
    with httpx.Client(transport=transport) as client:
        start = time.monotonic()
        for _ in range(3):
            assert client.get(upstream.url("/ok")).status_code == 200
            assert client.get(other.url("/ok")).status_code == 200
        elapsed = time.monotonic() - start
    # Two budgets, each paced at 250 ms: 500 ms in all, not 1250 ms.
    assert 0.45 <= elapsed < 1.0
    assert transport.budget(upstream.url("/")).name == f"host:{upstream.host}"
    assert transport.budget(other.url("/")).name == f"host:{other.host}"


def test_raises_when_the_budget_is_beyond_wait(upstream: Upstream) -> None:
    transport = sh.LimitedTransport(rates={upstream.host: "1 per 10 seconds"}, wait=0.2)
    with httpx.Client(transport=transport) as client:
        assert client.get(upstream.url("/ok")).status_code == 200
        start = time.monotonic()
        with pytest.raises(sh.HostRateLimited) as info:
            client.get(upstream.url("/ok"))
        assert time.monotonic() - start < 0.15  # no point waiting: raised at once
    e = info.value
    assert isinstance(e, httpx.TransportError)
    assert isinstance(e, stanchion.RateLimitExceeded)
    assert 9.5 < e.retry_after <= 10.0
    assert e.decision.retry_after == e.retry_after and not e.decision.allowed
    assert e.decision.limit == 1
    assert e.host == upstream.host
    assert e.request.url == upstream.url("/ok")
    assert upstream.host in str(e)
    assert upstream.served["/ok"] == 1  # the refused request was never sent


def test_wait_zero_never_waits(upstream: Upstream) -> None:
    transport = sh.LimitedTransport(rates={upstream.host: "5/second"}, wait=0)
    with httpx.Client(transport=transport) as client:
        client.get(upstream.url("/ok"))
        with pytest.raises(sh.HostRateLimited) as info:
            client.get(upstream.url("/ok"))
    assert 0.1 < info.value.retry_after <= 0.2


def test_on_limit_response_answers_a_429(upstream: Upstream) -> None:
    transport = sh.LimitedTransport(
        rates={upstream.host: "1 per 10 seconds"}, wait=0, on_limit="response"
    )
    with httpx.Client(transport=transport) as client:
        client.get(upstream.url("/ok"))
        response = client.get(upstream.url("/ok"))
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "10"
    assert upstream.host in response.text
    assert upstream.served["/ok"] == 1


def test_waits_within_wait(upstream: Upstream) -> None:
    transport = sh.LimitedTransport(rates={upstream.host: "1 per 0.4 seconds"}, wait=1)
    with httpx.Client(transport=transport) as client:
        start = time.monotonic()
        for _ in range(3):
            assert client.get(upstream.url("/ok")).status_code == 200
    assert time.monotonic() - start >= 0.8 - 0.02


def test_a_learned_pause_holds_every_transport_sharing_the_storage(
    upstream: Upstream, storages: tuple[object, object]
) -> None:
    one, two = storages
    rates = {upstream.host: "100/second"}
    first = httpx.Client(transport=sh.LimitedTransport(rates=rates, storage=one))
    second = httpx.Client(
        transport=sh.LimitedTransport(rates=rates, storage=two, wait=0)
    )
    patient = httpx.Client(
        transport=sh.LimitedTransport(rates=rates, storage=two, wait=3)
    )
    with first, second, patient:
        # The upstream's 429 reaches the caller, and pauses the host.
        assert first.get(upstream.url("/retry?after=1")).status_code == 429
        with pytest.raises(sh.HostRateLimited) as info:
            second.get(upstream.url("/ok"))
        assert 0.5 < info.value.retry_after <= 1.0
        start = time.monotonic()
        assert patient.get(upstream.url("/ok")).status_code == 200
        assert 0.5 < time.monotonic() - start < 1.5
    assert upstream.served["/ok"] == 1


def test_a_503_with_retry_after_pauses_too(upstream: Upstream) -> None:
    transport = sh.LimitedTransport(rates={upstream.host: "100/second"}, wait=0.1)
    with httpx.Client(transport=transport) as client:
        assert client.get(upstream.url("/retry?after=5&status=503")).status_code == 503
        with pytest.raises(sh.HostRateLimited) as info:
            client.get(upstream.url("/ok"))
    assert 4.5 < info.value.retry_after <= 5.0


def test_a_spent_ratelimit_budget_pauses_until_its_reset() -> None:
    def app(request: httpx.Request) -> httpx.Response:
        # The last request of the window: allowed, but nothing left.
        return httpx.Response(200, headers={"RateLimit": '"default";r=0;t=7'})

    transport = sh.LimitedTransport(httpx.MockTransport(app), wait=0)
    with httpx.Client(transport=transport) as client:
        assert client.get("https://api.example.com/").status_code == 200
        with pytest.raises(sh.HostRateLimited) as info:
            client.get("https://api.example.com/")
    assert 6.5 < info.value.retry_after <= 7.0


def test_auto_rates_learn_a_pace() -> None:
    transport = sh.LimitedTransport(
        httpx.MockTransport(lambda r: httpx.Response(200)),
        rates={"api.example.com": "auto"},
        wait=0,
    )
    budget = transport.budget("https://api.example.com/")
    assert budget.auto is not None and budget.limiter is None
    with httpx.Client(transport=transport) as client:
        assert client.get("https://api.example.com/").status_code == 200
        with pytest.raises(sh.HostRateLimited) as info:
            client.get("https://api.example.com/")  # auto starts at 1/second
    assert 0.5 < info.value.retry_after <= 1.0
    assert info.value.decision.limit == 0


def test_hosts_without_rates_still_learn_pauses(upstream: Upstream) -> None:
    transport = sh.LimitedTransport(wait=0)
    with httpx.Client(transport=transport) as client:
        assert client.get(upstream.url("/retry?after=5")).status_code == 429
        with pytest.raises(sh.HostRateLimited):
            client.get(upstream.url("/ok"))
        # but no breaker: failures only count for hosts with rates
        budget = transport.budget(upstream.url("/"))
        assert budget is not None and budget.limiter is None


def test_learn_false_ignores_what_answers_ask(upstream: Upstream) -> None:
    transport = sh.LimitedTransport(learn=False, wait=0)
    assert transport.budget(upstream.url("/")) is None  # nothing to do for it
    with httpx.Client(transport=transport) as client:
        assert client.get(upstream.url("/retry?after=5")).status_code == 429
        assert client.get(upstream.url("/ok")).status_code == 200
    limited = sh.LimitedTransport(rates={upstream.host: "100/second"}, learn=False)
    with httpx.Client(transport=limited) as client:
        assert client.get(upstream.url("/retry?after=5")).status_code == 429
        assert client.get(upstream.url("/ok")).status_code == 200


def test_breaker_opens_on_connection_failures_then_probes() -> None:
    port = free_port()  # nothing listens there yet
    host = f"127.0.0.1:{port}"
    url = f"http://{host}"
    transport = sh.LimitedTransport(
        rates={host: "100/second"}, failures=3, cooldown=0.5, wait=0.1
    )
    budget = transport.budget(url)
    assert budget is not None
    with httpx.Client(transport=transport) as client:
        for _ in range(3):
            with pytest.raises(httpx.ConnectError):
                client.get(url + "/ok")
        assert budget.state() == "open"
        with pytest.raises(sh.HostRateLimited) as info:
            client.get(url + "/ok")
        assert 0.3 < info.value.retry_after <= 0.5
        # Half-open: one probe goes, fails, and opens the breaker again.
        time.sleep(0.55)
        assert budget.state() == "half_open"
        with pytest.raises(httpx.ConnectError):
            client.get(url + "/ok")
        assert budget.state() == "open"
        server = Upstream(port=port)
        try:
            time.sleep(0.55)
            assert budget.state() == "half_open"
            # One probe at a time: while a slow one is out, others wait.
            probe: list[int] = []
            thread = threading.Thread(
                target=lambda: probe.append(client.get(url + "/slow?s=0.3").status_code)
            )
            thread.start()
            time.sleep(0.1)
            with pytest.raises(sh.HostRateLimited):
                client.get(url + "/ok")
            thread.join()
            assert probe == [200]
            assert budget.state() == "closed"
            assert client.get(url + "/ok").status_code == 200
            assert server.served == Counter({"/slow": 1, "/ok": 1})
        finally:
            server.close()


def test_breaker_counts_5xx_and_what_ok_rejects(upstream: Upstream) -> None:
    transport = sh.LimitedTransport(
        rates={upstream.host: "100/second"}, failures=2, cooldown=5, wait=0.1
    )
    with httpx.Client(transport=transport) as client:
        assert client.get(upstream.url("/status?code=500")).status_code == 500
        assert client.get(upstream.url("/status?code=404")).status_code == 404
        assert client.get(upstream.url("/status?code=502")).status_code == 502
        assert transport.budget(upstream.url("/")).state() == "closed"  # not in a row
        assert client.get(upstream.url("/status?code=500")).status_code == 500
        assert transport.budget(upstream.url("/")).state() == "open"
        with pytest.raises(sh.HostRateLimited):
            client.get(upstream.url("/ok"))
    picky = sh.LimitedTransport(
        rates={upstream.host: "100/second"},
        failures=1,
        wait=0.1,
        ok=lambda r: r.status_code == 200,
    )
    with httpx.Client(transport=picky) as client:
        assert client.get(upstream.url("/status?code=404")).status_code == 404
        with pytest.raises(sh.HostRateLimited):
            client.get(upstream.url("/ok"))
    lenient = sh.LimitedTransport(
        rates={upstream.host: "100/second"}, failures=1, wait=0.1, ok=lambda r: True
    )
    with httpx.Client(transport=lenient) as client:
        assert client.get(upstream.url("/status?code=500")).status_code == 500
        assert client.get(upstream.url("/ok")).status_code == 200


def test_streams_are_not_read(upstream: Upstream) -> None:
    transport = sh.LimitedTransport(rates={upstream.host: "100/second"})
    with (
        httpx.Client(transport=transport) as client,
        client.stream("GET", upstream.url("/stream")) as response,
    ):
        # The headers are here; the server has not even sent the body.
        assert response.status_code == 200
        assert not response.is_stream_consumed
        assert not upstream.body_sent.is_set()
        upstream.release.set()
        assert response.read() == b"body"


class Recording(httpx.BaseTransport):
    def __init__(self) -> None:
        self.closed = 0
        self.requests: list[httpx.Request] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return httpx.Response(200, request=request)

    def close(self) -> None:
        self.closed += 1


def test_close_reaches_the_wrapped_transport() -> None:
    inner = Recording()
    with httpx.Client(transport=sh.LimitedTransport(inner)) as client:
        client.get("http://example.test/")
    assert inner.closed == 1
    assert len(inner.requests) == 1


def test_transport_errors_reach_the_caller_unchanged() -> None:
    def fail(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    transport = sh.LimitedTransport(
        httpx.MockTransport(fail), default="100/second", failures=2, wait=0.1
    )
    with httpx.Client(transport=transport) as client:
        for _ in range(2):
            with pytest.raises(httpx.ReadTimeout):
                client.get("http://example.test/")
        with pytest.raises(sh.HostRateLimited):
            client.get("http://example.test/")


class Body(httpx.SyncByteStream, httpx.AsyncByteStream):
    """A response body that counts its closes (the connection it holds
    goes back to the pool on close)."""

    def __init__(self) -> None:
        self.closed = 0

    def __iter__(self) -> Iterator[bytes]:
        yield b"ok"

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield b"ok"

    def close(self) -> None:
        self.closed += 1

    async def aclose(self) -> None:
        self.closed += 1


def broken_ok(response: httpx.Response) -> bool:
    raise ValueError("ok broke")


def test_a_response_ok_raised_on_is_closed() -> None:
    body = Body()
    transport = sh.LimitedTransport(
        httpx.MockTransport(lambda request: httpx.Response(200, stream=body)),
        default="100/second",
        ok=broken_ok,
    )
    with (
        httpx.Client(transport=transport) as client,
        pytest.raises(ValueError, match="ok broke"),
    ):
        client.get("http://example.test/")
    assert body.closed == 1


async def test_async_a_response_ok_raised_on_is_closed() -> None:
    body = Body()

    async def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=body)

    transport = sh.AsyncLimitedTransport(
        httpx.MockTransport(answer), default="100/second", ok=broken_ok
    )
    async with httpx.AsyncClient(transport=transport) as client:
        with pytest.raises(ValueError, match="ok broke"):
            await client.get("http://example.test/")
    assert body.closed == 1


def test_the_default_transport_is_an_http_transport(upstream: Upstream) -> None:
    transport = sh.LimitedTransport()
    assert isinstance(transport._transport, httpx.HTTPTransport)
    with httpx.Client(transport=transport) as client:
        assert client.get(upstream.url("/ok")).status_code == 200


# -- hosts --------------------------------------------------------------------


def names(transport: sh.LimitedTransport, *urls: str) -> list[str | None]:
    budgets = [transport.budget(url) for url in urls]
    return [None if b is None else b.name for b in budgets]


def test_hosts_match_case_insensitively_on_any_port() -> None:
    transport = sh.LimitedTransport(
        rates={
            "API.Example.com": "10/second",
            "api.example.com:8443": "5/second",
            "other.example:443": "5/second",
            "bücher.de": "1/second",
            "[::1]:8080": "1/second",
            "127.0.0.1": "1/second",
        },
        learn=False,
    )
    assert names(
        transport,
        "https://api.example.com/x",
        "http://API.EXAMPLE.COM:8080/",
        "https://api.example.com:8443/",
        "https://other.example/",
        "http://other.example/",
        "https://other.example:444/",
        "http://xn--bcher-kva.de/",
        "http://[::1]:8080/",
        "http://[::1]/",
        "http://127.0.0.1:9999/",
    ) == [
        "host:api.example.com",
        "host:api.example.com",
        "host:api.example.com:8443",
        "host:other.example:443",
        None,
        None,
        "host:xn--bcher-kva.de",
        "host:[::1]:8080",
        None,
        "host:127.0.0.1",
    ]


def test_a_host_written_another_way_is_the_same_host() -> None:
    # A fully qualified name (trailing dot) and an IPv6 address written
    # longhand name the same host: they must not escape its rates.
    transport = sh.LimitedTransport(
        rates={
            "api.example.com": "10/second",
            "[::1]:8080": "1/second",
            "[2001:db8::1]": "1/second",
            "other.example.": "1/second",
        },
        learn=False,
    )
    assert names(
        transport,
        "https://api.example.com./x",
        "http://API.EXAMPLE.COM.:8080/",
        "http://[0:0::1]:8080/",
        "http://[0000:0000:0000:0000:0000:0000:0000:0001]:8080/",
        "http://[2001:DB8:0::1]/",
        "http://other.example/",
    ) == [
        "host:api.example.com",
        "host:api.example.com",
        "host:[::1]:8080",
        "host:[::1]:8080",
        "host:[2001:db8::1]",
        "host:other.example",
    ]
    # IPv4 written as the system's resolver reads it (inet_aton): short,
    # one number, hexadecimal.
    local = sh.LimitedTransport(rates={"127.0.0.1": "1/second"}, learn=False)
    assert names(
        local,
        "http://127.1/",
        "http://2130706433/",
        "http://0x7f.0.0.1/",
        "http://127.0.0.2/",
        "http://face.example/",
    ) == ["host:127.0.0.1", "host:127.0.0.1", "host:127.0.0.1", None, None]
    others = sh.LimitedTransport(default="10/second")
    assert others.budget("http://a.example./") is others.budget("http://a.example/")
    assert others.budget("http://[0::1]/") is others.budget("http://[::1]/")


def test_other_hosts_get_a_budget_each_with_their_port() -> None:
    transport = sh.LimitedTransport(default="10/second")
    assert names(
        transport,
        "https://a.example/",
        "https://A.example:443/",
        "http://a.example:8080/",
        "http://b.example/",
    ) == ["host:a.example", "host:a.example", "host:a.example:8080", "host:b.example"]


def test_hosts_without_rates_are_bounded_in_number() -> None:
    inner = Recording()
    transport = sh.LimitedTransport(inner, default="100/second", max_hosts=3)
    first = transport.budget("http://h0.example/")
    with httpx.Client(transport=transport) as client:
        for i in range(10):
            client.get(f"http://h{i}.example/")
    assert len(transport._hosts.others) == 3
    assert transport.budget("http://h0.example/") is not first  # dropped, made anew
    assert transport.budget("http://h9.example/") is transport.budget(
        "http://h9.example/"
    )
    assert len(inner.requests) == 10


def test_a_flood_of_other_hosts_does_not_forget_a_rated_hosts_pause(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # An app fetching URLs it is given (link previews, webhooks) meets
    # hosts asking for long pauses: enough of them fill the in-process
    # pauses table (100 000 entries; 50 here), which forgets the entries
    # closest to expiring first: those of the hosts in rates must stay.
    from stanchion._pauses import MemoryPauses

    kwdefaults = MemoryPauses.__init__.__kwdefaults__
    assert kwdefaults is not None
    monkeypatch.setitem(kwdefaults, "max_keys", 50)

    def answer(request: httpx.Request) -> httpx.Response:
        after = "30" if request.url.host == "api.example.com" else "3600"
        return httpx.Response(429, headers={"Retry-After": after})

    transport = sh.LimitedTransport(
        httpx.MockTransport(answer),
        rates={"api.example.com": "100/second"},
        wait=0,
        max_hosts=1000,
    )
    with httpx.Client(transport=transport) as client:
        assert client.get("http://api.example.com/").status_code == 429
        for i in range(200):
            client.get(f"http://h{i}.evil.example/")
        with pytest.raises(sh.HostRateLimited):
            client.get("http://api.example.com/")  # still paused


# -- asyncio ------------------------------------------------------------------


async def test_async_paces_a_host_and_leaves_the_others_alone(
    upstream: Upstream, other: Upstream
) -> None:
    transport = sh.AsyncLimitedTransport(rates={upstream.host: "10/second"})
    async with httpx.AsyncClient(transport=transport) as client:
        start = time.monotonic()
        for _ in range(12):
            assert (await client.get(other.url("/ok"))).status_code == 200
        assert time.monotonic() - start < 0.5
        start = time.monotonic()
        responses = await asyncio.gather(
            *(client.get(upstream.url("/ok")) for _ in range(12))
        )
        elapsed = time.monotonic() - start
    assert [r.status_code for r in responses] == [200] * 12
    assert upstream.refused == 0
    assert elapsed >= 11 * 0.1 - 0.02


async def test_async_raises_or_answers_beyond_wait(upstream: Upstream) -> None:
    rates = {upstream.host: "1 per 10 seconds"}
    transport = sh.AsyncLimitedTransport(rates=rates, wait=0.2)
    async with httpx.AsyncClient(transport=transport) as client:
        assert (await client.get(upstream.url("/ok"))).status_code == 200
        with pytest.raises(sh.HostRateLimited) as info:
            await client.get(upstream.url("/ok"))
    assert 9.5 < info.value.retry_after <= 10.0
    assert isinstance(info.value, httpx.HTTPError)
    answering = sh.AsyncLimitedTransport(rates=rates, wait=0, on_limit="response")
    async with httpx.AsyncClient(transport=answering) as client:
        assert (await client.get(upstream.url("/ok"))).status_code == 200
        response = await client.get(upstream.url("/ok"))
        assert response.status_code == 429
        assert response.headers["Retry-After"] == "10"
    assert upstream.served["/ok"] == 2


async def test_async_learned_pause_is_shared(
    upstream: Upstream, storages: tuple[object, object]
) -> None:
    one, two = storages
    rates = {upstream.host: "100/second"}
    first = httpx.AsyncClient(
        transport=sh.AsyncLimitedTransport(rates=rates, storage=one)
    )
    second = httpx.AsyncClient(
        transport=sh.AsyncLimitedTransport(rates=rates, storage=two, wait=0)
    )
    patient = httpx.AsyncClient(
        transport=sh.AsyncLimitedTransport(rates=rates, storage=two, wait=3)
    )
    async with first, second, patient:
        assert (await first.get(upstream.url("/retry?after=1"))).status_code == 429
        with pytest.raises(sh.HostRateLimited) as info:
            await second.get(upstream.url("/ok"))
        assert 0.5 < info.value.retry_after <= 1.0
        start = time.monotonic()
        assert (await patient.get(upstream.url("/ok"))).status_code == 200
        assert 0.5 < time.monotonic() - start < 1.5
    assert upstream.served["/ok"] == 1
    for storage in storages:  # this event loop's Redis connections
        if hasattr(storage, "aclose"):
            await storage.aclose()


async def test_async_breaker_opens_then_probes() -> None:
    port = free_port()
    host = f"127.0.0.1:{port}"
    url = f"http://{host}"
    transport = sh.AsyncLimitedTransport(
        rates={host: "100/second"}, failures=2, cooldown=0.4, wait=0.1
    )
    budget = transport.budget(url)
    async with httpx.AsyncClient(transport=transport) as client:
        for _ in range(2):
            with pytest.raises(httpx.ConnectError):
                await client.get(url + "/ok")
        with pytest.raises(sh.HostRateLimited):
            await client.get(url + "/ok")
        server = Upstream(port=port)
        try:
            await asyncio.sleep(0.45)
            assert budget.state() == "half_open"
            probe = asyncio.ensure_future(client.get(url + "/slow?s=0.3"))
            await asyncio.sleep(0.1)
            with pytest.raises(sh.HostRateLimited):
                await client.get(url + "/ok")
            assert (await probe).status_code == 200
            assert budget.state() == "closed"
            assert (await client.get(url + "/ok")).status_code == 200
        finally:
            server.close()


async def test_async_cancelled_requests_count_for_nothing(upstream: Upstream) -> None:
    transport = sh.AsyncLimitedTransport(
        rates={upstream.host: "100/second"}, failures=1, cooldown=5, wait=0.1
    )
    async with httpx.AsyncClient(transport=transport) as client:
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(client.get(upstream.url("/slow?s=0.5")), 0.1)
        assert transport.budget(upstream.url("/")).state() == "closed"
        assert (await client.get(upstream.url("/ok"))).status_code == 200


async def test_async_streams_are_not_read(upstream: Upstream) -> None:
    transport = sh.AsyncLimitedTransport(rates={upstream.host: "100/second"})
    async with (
        httpx.AsyncClient(transport=transport) as client,
        client.stream("GET", upstream.url("/stream")) as response,
    ):
        assert response.status_code == 200
        assert not upstream.body_sent.is_set()
        upstream.release.set()
        assert await response.aread() == b"body"


async def test_async_close_reaches_the_wrapped_transport() -> None:
    closed = []

    class Inner(httpx.AsyncBaseTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            return httpx.Response(200, request=request)

        async def aclose(self) -> None:
            closed.append(True)

    async with httpx.AsyncClient(transport=sh.AsyncLimitedTransport(Inner())) as c:
        assert (await c.get("http://example.test/")).status_code == 200
    assert closed == [True]
    assert isinstance(sh.AsyncLimitedTransport()._transport, httpx.AsyncHTTPTransport)


# -- bad input ----------------------------------------------------------------


async def async_ok(response: httpx.Response) -> bool:
    return False


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"rates": ["api.example.com"]}, TypeError),
        ({"rates": {1: "1/second"}}, TypeError),
        ({"rates": {"http://api.example.com": "1/second"}}, ValueError),
        ({"rates": {"api.example.com/v1": "1/second"}}, ValueError),
        ({"rates": {"user@api.example.com": "1/second"}}, ValueError),
        ({"rates": {"": "1/second"}}, ValueError),
        ({"rates": {"api.example.com:0": "1/second"}}, ValueError),
        ({"rates": {"api.example.com:70000": "1/second"}}, ValueError),
        ({"rates": {"a.example": "1/s", "A.example": "2/s"}}, ValueError),
        ({"rates": {"api.example.com": "ten per second"}}, ValueError),
        ({"rates": {"api.example.com": 10}}, TypeError),
        ({"default": "ten per second"}, ValueError),
        ({"default": 10}, TypeError),
        ({"wait": -1}, ValueError),
        ({"wait": float("nan")}, ValueError),
        ({"wait": "1"}, TypeError),
        ({"wait": None}, TypeError),
        ({"on_limit": "ignore"}, ValueError),
        ({"on_limit": None}, TypeError),
        ({"ok": 200}, TypeError),
        ({"ok": async_ok}, TypeError),
        ({"failures": 0}, ValueError),
        ({"failures": 1.5}, TypeError),
        ({"cooldown": 0}, ValueError),
        ({"max_pause": float("inf")}, ValueError),
        # Beyond what a budget takes: refused here, not on the first
        # request to a host outside rates.
        ({"cooldown": 1e9}, ValueError),
        ({"max_pause": 1e9}, ValueError),
        ({"learn": 1}, TypeError),
        ({"max_hosts": 0}, ValueError),
        ({"max_hosts": True}, TypeError),
        ({"storage": object()}, TypeError),
        ({"nope": 1}, TypeError),
    ],
)
def test_bad_input_is_rejected(kwargs: dict, error: type[Exception]) -> None:
    with pytest.raises(error):
        sh.LimitedTransport(
            httpx.MockTransport(lambda r: httpx.Response(200)), **kwargs
        )
    with pytest.raises(error):
        sh.AsyncLimitedTransport(**kwargs)


def test_transports_of_the_other_kind_are_rejected() -> None:
    with pytest.raises(TypeError, match="AsyncLimitedTransport"):
        sh.LimitedTransport(httpx.AsyncHTTPTransport())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="LimitedTransport"):
        sh.AsyncLimitedTransport(httpx.HTTPTransport())  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        sh.LimitedTransport("http://api.example.com")  # type: ignore[arg-type]
