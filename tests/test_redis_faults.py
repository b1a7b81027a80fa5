"""Redis failing under load: killed, paused beyond the timeout, restarted
empty. Every on_error policy answers as documented, within the timeout
(plus a margin), logs once per outage, and resumes by itself."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from redis.exceptions import RedisError

import stanchion
from stanchion.redis import RedisLimiter, RedisStorage

from ._redis import RedisServer, free_port
from .conftest import SANITIZED, FakeClock

# Under load the tests use a timeout well above the scheduling stalls of a
# busy 2-core machine (a healthy call must not time out), and far below
# the outage, so a call that waited for Redis would show. The default 50 ms
# is tested alone (test_default_timeout_bounds_a_paused_server).
TIMEOUT = 0.5 if SANITIZED else 0.25
RETRY_INTERVAL = 0.05
MARGIN = 0.25
OUTAGE = 1.2 if SANITIZED else 1.0
DEFAULT_TIMEOUT = 0.05
SLOW_TIMEOUT = 1.0  # for tests of behaviour, not of failures


@dataclass
class Call:
    start: float
    end: float
    outcome: str  # "real" | "allowed" | "denied" | "raised"


class Stalls:
    """When the whole process stood still (a full garbage collection late
    in a long suite, a busy machine's scheduler): a thread that wakes
    every 5 ms records each gap of more than 30 ms between its wake-ups.
    A call that spans such a gap did not wait for Redis during it."""

    TICK = 0.005
    GAP = 0.03

    def __init__(self) -> None:
        self.gaps: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        last = time.monotonic()
        while not self._stop.wait(self.TICK):
            now = time.monotonic()
            if now - last > self.GAP:
                self.gaps.append((last + self.TICK, now))
            last = now

    def __enter__(self) -> Stalls:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def within(self, start: float, end: float) -> float:
        return sum(max(0.0, min(end, b) - max(start, a)) for a, b in self.gaps)


@dataclass
class Timeline:
    calls: list[Call] = field(default_factory=list)
    down_at: float = 0.0  # just before the kill or pause
    back_at: float = 0.0  # just before the restart or resume
    up_at: float = 0.0  # once it answers again
    stalls: Stalls = field(default_factory=Stalls)

    def record(self, start: float, result: object) -> None:
        end = time.monotonic()
        if isinstance(result, BaseException):
            assert isinstance(result, stanchion.StorageUnavailable), result
            assert isinstance(result, ConnectionError)
            assert isinstance(result.__cause__, (RedisError, OSError)), result.__cause__
            outcome = "raised"
        else:
            assert isinstance(result, stanchion.Decision)
            if result.allowed and result.reset_after > 0:
                outcome = "real"  # the script answered (a huge limit)
            elif result.allowed:
                assert result.remaining == result.limit - 1 and result.retry_after == 0
                outcome = "allowed"
            else:
                assert result.retry_after == 1.0 and result.remaining == 0
                outcome = "denied"
        self.calls.append(Call(start, end, outcome))

    def check(self, policy: str) -> None:
        expected = {"allow": "allowed", "deny": "denied", "raise": "raised"}[policy]
        before = [c for c in self.calls if c.end < self.down_at]
        during = [
            c
            for c in self.calls
            if self.down_at + 0.01 < c.start and c.end < self.back_at
        ]
        after = [c for c in self.calls if c.start > self.up_at + RETRY_INTERVAL + 0.15]
        assert len(before) > 5 and len(during) > 5 and len(after) > 5
        for phase, calls, want in (
            ("before", before, "real"),
            ("during", during, expected),
            ("after", after, "real"),
        ):
            odd = [
                (round(c.start - self.down_at, 3), round(c.end - c.start, 3), c.outcome)
                for c in calls
                if c.outcome != want
            ]
            assert not odd, (
                phase,
                self.back_at - self.down_at,
                self.up_at - self.down_at,
                odd,
            )

        # No call waits much beyond the timeout. The process standing
        # still is not waiting for Redis: the time a call spent in such a
        # stall is not counted (it is reported if the bound is crossed).
        def waited(c: Call) -> float:
            return c.end - c.start - self.stalls.within(c.start, c.end)

        worst = max(self.calls, key=waited)
        assert waited(worst) < TIMEOUT + MARGIN, (
            round(waited(worst), 3),
            round(worst.start - self.down_at, 3),
            round(worst.end - worst.start, 3),
            worst.outcome,
            [
                (round(a - self.down_at, 3), round(b - a, 3))
                for a, b in self.stalls.gaps
            ],
        )
        # Most calls during the outage do not even wait for the timeout:
        # one per retry interval tries Redis, the others answer at once.
        waits = sorted(c.end - c.start for c in during)
        assert waits[len(waits) // 2] < TIMEOUT / 2, waits


def _limiter(server: RedisServer, policy: str) -> RedisLimiter:
    storage = RedisStorage(server.url, timeout=TIMEOUT, retry_interval=RETRY_INTERVAL)
    lim = stanchion.Limiter("1000000/second", storage=storage, on_error=policy)
    assert isinstance(lim, RedisLimiter)
    return lim


def _one_warning_one_info(caplog: pytest.LogCaptureFixture) -> None:
    records = [r for r in caplog.records if r.name == "stanchion.redis"]
    levels = [r.levelno for r in records]
    assert levels == [logging.WARNING, logging.INFO], [r.getMessage() for r in records]
    assert "unavailable" in records[0].getMessage()
    assert "available again" in records[1].getMessage()


def _outage(server: RedisServer, kind: str, timeline: Timeline) -> None:
    time.sleep(0.4)
    timeline.down_at = time.monotonic()
    if kind == "kill":
        server.kill()
        time.sleep(OUTAGE)
        timeline.back_at = time.monotonic()
        server.start()  # empty: no data, no scripts
    else:
        server.pause()
        time.sleep(OUTAGE)
        timeline.back_at = time.monotonic()
        server.resume()
    timeline.up_at = time.monotonic()
    time.sleep(0.6)


@pytest.mark.parametrize("kind", ["kill", "pause"])
@pytest.mark.parametrize("policy", ["allow", "deny", "raise"])
def test_outage_under_load(
    private_redis: RedisServer, caplog: pytest.LogCaptureFixture, policy: str, kind: str
) -> None:
    caplog.set_level(logging.INFO, logger="stanchion")
    lim = _limiter(private_redis, policy)
    timeline = Timeline()
    stop = threading.Event()

    def load() -> None:
        lim.hit("warm-up")  # connect before the clock starts
        i = 0
        while not stop.is_set():
            i += 1
            start = time.monotonic()
            try:
                result: object = lim.hit(f"client-{i % 7}")
            except stanchion.StorageUnavailable as exc:
                result = exc
            timeline.record(start, result)
            time.sleep(0.002)

    threads = [threading.Thread(target=load) for _ in range(2)]
    with timeline.stalls:
        for t in threads:
            t.start()
        try:
            _outage(private_redis, kind, timeline)
        finally:
            stop.set()
            for t in threads:
                t.join()
    lim.storage.close()
    timeline.check(policy)
    _one_warning_one_info(caplog)


@pytest.mark.parametrize("kind", ["kill", "pause"])
@pytest.mark.parametrize("policy", ["allow", "deny", "raise"])
async def test_outage_under_async_load(
    private_redis: RedisServer, caplog: pytest.LogCaptureFixture, policy: str, kind: str
) -> None:
    caplog.set_level(logging.INFO, logger="stanchion")
    lim = _limiter(private_redis, policy)
    timeline = Timeline()
    stop = False

    async def load(n: int) -> None:
        await lim.ahit("warm-up")  # connect before the clock starts
        i = 0
        while not stop:
            i += 1
            start = time.monotonic()
            try:
                result: object = await lim.ahit(f"client-{n}-{i % 7}")
            except stanchion.StorageUnavailable as exc:
                result = exc
            timeline.record(start, result)
            await asyncio.sleep(0.002)

    with timeline.stalls:
        tasks = [asyncio.create_task(load(n)) for n in range(4)]
        try:
            # The outage is driven from a thread: kill/pause/sleep block.
            await asyncio.to_thread(_outage, private_redis, kind, timeline)
        finally:
            stop = True
            await asyncio.gather(*tasks)
            await lim.storage.aclose()
    timeline.check(policy)
    _one_warning_one_info(caplog)


def test_a_late_failure_does_not_reopen_the_outage(
    private_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """During an outage several probes can be in flight (one starts per
    retry interval, each waits up to the timeout). Once one of them gets
    through, another that started before it and fails afterwards is old
    news: it answers by the policy, but Redis stays up and nothing is
    logged. A failure of a call sent after the recovery opens a new
    outage as usual."""
    caplog.set_level(logging.INFO, logger="stanchion")
    storage = RedisStorage(private_redis.url, retry_interval=0)
    lim = stanchion.Limiter("5/minute", storage=storage, on_error="deny")
    conn = storage._connector
    try:
        assert lim.hit("k").remaining == 4
        sent_during_outage = conn.epoch
        conn.failed(TimeoutError("first probe"), sent_during_outage, lim._who)
        assert conn.down_since is not None
        assert lim.hit("k").remaining == 3  # a later probe gets through
        assert conn.down_since is None
        conn.failed(
            TimeoutError("earlier probe, timed out late"), sent_during_outage, lim._who
        )
        assert conn.down_since is None and conn.last_error is None
        assert lim.hit("k").remaining == 2
        levels = [r.levelno for r in caplog.records if r.name == "stanchion.redis"]
        assert levels == [logging.WARNING, logging.INFO]
        conn.failed(TimeoutError("sent after the recovery"), conn.epoch, lim._who)
        assert conn.down_since is not None
        levels = [r.levelno for r in caplog.records if r.name == "stanchion.redis"]
        assert levels == [logging.WARNING, logging.INFO, logging.WARNING]
    finally:
        storage.close()


def test_a_call_sent_before_the_outage_does_not_end_it(
    private_redis: RedisServer, caplog: pytest.LogCaptureFixture, clock: FakeClock
) -> None:
    """Threaded WSGI: a call already waiting on Redis when another
    thread's call fails (opening the outage) gets its answer when Redis
    resumes. That answer was asked for before the outage began: it does
    not end it. The next probe, sent during the outage, does: one
    warning, one info line."""
    caplog.set_level(logging.INFO, logger="stanchion")
    storage = RedisStorage(private_redis.url, timeout=5, retry_interval=0.5)
    conn = storage._connector
    conn.clock = clock
    lim = stanchion.Limiter("5/minute", storage=storage, on_error="deny")
    assert isinstance(lim, RedisLimiter)
    try:
        assert lim.hit("k").remaining == 4
        private_redis.pause()
        answers: list[stanchion.Decision] = []
        early = threading.Thread(target=lambda: answers.append(lim.hit("k")))
        early.start()
        try:
            time.sleep(0.2)  # it is waiting on the paused server
            # Another thread's call fails meanwhile: the outage begins.
            conn.failed(TimeoutError("another thread's call"), conn.epoch, lim._who)
            assert conn.down_since is not None
        finally:
            private_redis.resume()
        early.join(5)
        assert [d.remaining for d in answers] == [3]  # a real answer
        assert conn.down_since is not None  # but the outage goes on
        assert not lim.hit("k")  # within the retry interval: no probe
        clock.advance(0.5)
        assert lim.hit("k").remaining == 2  # the probe ends it
        assert conn.down_since is None
        records = [r for r in caplog.records if r.name == "stanchion.redis"]
        assert [r.levelno for r in records] == [logging.WARNING, logging.INFO]
    finally:
        storage.close()


@pytest.mark.parametrize("asynchronous", [False, True])
async def test_default_timeout_bounds_a_paused_server(
    private_redis: RedisServer, asynchronous: bool
) -> None:
    storage = RedisStorage(private_redis.url)
    assert storage.timeout == DEFAULT_TIMEOUT
    lim = stanchion.Limiter("5/minute", storage=storage, on_error="deny")

    async def hit() -> stanchion.Decision:
        return await lim.ahit("k") if asynchronous else lim.hit("k")

    try:
        # Connected and answering (a busy machine may need a few tries
        # within 50 ms).
        for _ in range(50):
            if (await hit()).remaining < 5 and storage._connector.down_since is None:
                break
            time.sleep(0.11)
        assert storage._connector.down_since is None
        private_redis.pause()
        try:
            t0 = time.monotonic()
            d = await hit()
            elapsed = time.monotonic() - t0
        finally:
            private_redis.resume()
        assert not d and d.retry_after == 1.0  # the deny policy's answer
        assert DEFAULT_TIMEOUT <= elapsed < DEFAULT_TIMEOUT + MARGIN, elapsed
    finally:
        storage.close()
        await storage.aclose()


def test_restart_empty_needs_nothing(
    private_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A restart loses the scripts and the idle connection: the next
    decision reconnects, reloads the script and answers for real."""
    caplog.set_level(logging.INFO, logger="stanchion")
    storage = RedisStorage(private_redis.url, timeout=SLOW_TIMEOUT)
    for algorithm in ("token_bucket", "fixed_window", "sliding_window"):
        lim = stanchion.Limiter(
            "5/minute", algorithm=algorithm, storage=storage, on_error="raise"
        )
        assert lim.hit("k").remaining == 4
        assert lim.hit("k").remaining == 3
        private_redis.restart()
        assert lim.hit("k").remaining == 4  # the state went with the server
        assert lim.peek("k").remaining == 3
    assert [r for r in caplog.records if r.name == "stanchion.redis"] == []
    storage.close()


async def test_async_restart_empty(private_redis: RedisServer) -> None:
    # The first connection after a restart may take longer than the
    # default 50 ms on a busy machine; this test is about the lost state.
    storage = RedisStorage(private_redis.url, timeout=SLOW_TIMEOUT)
    lim = stanchion.Limiter("5/minute;50/hour", storage=storage, on_error="raise")
    try:
        assert (await lim.ahit("k")).remaining == 4
        private_redis.restart()
        assert (await lim.ahit("k")).remaining == 4
    finally:
        await storage.aclose()


def test_down_from_the_start(
    private_redis: RedisServer, caplog: pytest.LogCaptureFixture, clock: FakeClock
) -> None:
    caplog.set_level(logging.INFO, logger="stanchion")
    private_redis.kill()
    allow = _limiter(private_redis, "allow")
    allow.storage._connector.clock = clock
    deny = stanchion.Limiter(
        "10 per 0.25 seconds;100/minute", storage=allow.storage, on_error="deny"
    )
    d = allow.hit("k", 3)
    assert d.allowed and d.limit == 1000000 and d.remaining == 999997
    d = deny.hit("k")
    # Denied, with the shortest period as the wait (at most 1 s).
    assert not d and d.limit == 10 and d.retry_after == 0.25 and d.reset_after == 0.25
    with pytest.raises(stanchion.StorageUnavailable):
        stanchion.Limiter("1/s", storage=allow.storage, on_error="raise").hit("k")
    # reset answers by the policy too.
    allow.reset("k")
    allow.reset()
    with pytest.raises(stanchion.StorageUnavailable):
        stanchion.Limiter("1/s", storage=allow.storage, on_error="raise").reset()
    # acquire with the deny policy waits, then gives up at its timeout.
    t0 = time.monotonic()
    with pytest.raises(stanchion.RateLimitExceeded):
        deny.acquire("k", timeout=0.1)
    assert time.monotonic() - t0 < 0.1 + MARGIN
    records = [r for r in caplog.records if r.name == "stanchion.redis"]
    assert [r.levelno for r in records] == [logging.WARNING]
    private_redis.start()
    assert allow.hit("k").reset_after == 0  # no try within the retry interval
    clock.advance(RETRY_INTERVAL)
    assert allow.hit("k").reset_after > 0
    records = [r for r in caplog.records if r.name == "stanchion.redis"]
    assert [r.levelno for r in records] == [logging.WARNING, logging.INFO]


@pytest.mark.parametrize("policy", ["allow", "deny", "raise"])
def test_outage_lines_say_who_where_and_what(
    private_redis: RedisServer, caplog: pytest.LogCaptureFixture, policy: str
) -> None:
    caplog.set_level(logging.INFO, logger="stanchion")
    storage = RedisStorage(private_redis.url.replace("/0", "/3"), retry_interval=0)
    lim = stanchion.Limiter("5/minute", storage=storage, on_error=policy)
    where = f"127.0.0.1:{private_redis.port}/3"
    try:
        private_redis.kill()
        try:
            lim.hit("k")
        except stanchion.StorageUnavailable:
            assert policy == "raise"
        private_redis.start()
        assert lim.hit("k").remaining == 4
        records = [r for r in caplog.records if r.name == "stanchion.redis"]
        down, up = (r.getMessage() for r in records)
        assert down.startswith(
            f"stanchion rate limiter: Redis at {where} is unavailable"
        )
        assert "(ConnectionError: " in down  # the cause
        meanwhile = {"allow": "allowed", "deny": "denied", "raise": "raise"}[policy]
        assert f"hits are {meanwhile}" in down or f"hits {meanwhile}" in down
        assert f"(on_error={policy!r})" in down
        assert up.startswith(f"stanchion rate limiter: Redis at {where} is available")
    finally:
        storage.close()


def test_cache_outage_lines_name_the_cache_and_no_password(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="stanchion")
    port = free_port()  # nothing listens there
    for on_error, meanwhile in (
        ("ignore", "reads miss and writes are dropped"),
        ("raise", "calls raise StorageUnavailable (on_error='raise')"),
    ):
        caplog.clear()
        cache = stanchion.RedisCache(
            f"redis://user:pa55word@127.0.0.1:{port}/0", on_error=on_error
        )
        try:
            cache.get("k")
        except stanchion.StorageUnavailable:
            assert on_error == "raise"
        (record,) = [r for r in caplog.records if r.name == "stanchion.redis"]
        line = record.getMessage()
        assert line.startswith(f"stanchion cache: Redis at 127.0.0.1:{port} is ")
        assert line.endswith(f"; {meanwhile} until it answers again")
        assert "pa55word" not in line
        if on_error == "ignore":
            assert "on_error" not in line  # the limiter's policy is not its own
        cache.close()


UVICORN_APP = """
import os

import stanchion

storage = stanchion.RedisStorage(os.environ["REDIS_URL"], retry_interval=0)
limiter = stanchion.Limiter("1000/second", storage=storage)


async def app(scope, receive, send):
    d = await limiter.ahit("k")
    body = b"real" if d.reset_after > 0 else b"fallback"
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})
"""


def test_outage_lines_under_plain_uvicorn(
    private_redis: RedisServer, tmp_path: Path
) -> None:
    """uvicorn's default logging configures its own loggers only: the
    outage lines still reach stderr, with time and level, both of them."""
    (tmp_path / "outage_app.py").write_text(UVICORN_APP)
    port = free_port()
    env = dict(os.environ, REDIS_URL=private_redis.url)
    log = tmp_path / "stderr.txt"
    with open(log, "wb") as err:
        server = subprocess.Popen(
            [
                sys.executable, "-m", "uvicorn", "--app-dir", str(tmp_path),
                "outage_app:app", "--port", str(port), "--lifespan", "off",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )  # fmt: skip
        try:
            base = f"http://127.0.0.1:{port}/"
            deadline = time.monotonic() + 30
            while True:
                try:
                    assert httpx.get(base, timeout=5).text == "real"
                    break
                except httpx.TransportError:
                    assert server.poll() is None, log.read_text()
                    assert time.monotonic() < deadline, "uvicorn did not start"
                    time.sleep(0.1)
            private_redis.kill()
            assert httpx.get(base, timeout=5).text == "fallback"
            private_redis.start()
            assert httpx.get(base, timeout=5).text == "real"
        finally:
            server.terminate()
            server.wait(10)
    lines = [ln for ln in log.read_text().splitlines() if "stanchion.redis" in ln]
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}"
    where = f"Redis at 127.0.0.1:{private_redis.port} is"
    assert len(lines) == 2, log.read_text()
    assert re.match(
        rf"{stamp} WARNING stanchion\.redis: stanchion rate limiter: {where} "
        r"unavailable \(\w+Error: .*\); hits are allowed",
        lines[0],
    ), lines
    assert re.match(
        rf"{stamp} INFO stanchion\.redis: stanchion rate limiter: {where} "
        r"available again after",
        lines[1],
    ), lines


@pytest.mark.parametrize("asynchronous", [False, True])
async def test_hits_that_timed_out_in_a_stall_are_not_applied_later(
    private_redis: RedisServer, asynchronous: bool
) -> None:
    """SIGSTOP: the hits sent meanwhile wait in the server's socket
    buffers, and their callers get the on_error answer at the timeout.
    On SIGCONT the server reads and runs them, after their deadline on
    its own clock: not one is counted."""
    storage = RedisStorage(private_redis.url, timeout=TIMEOUT, retry_interval=0)
    # No refill to speak of while the test runs.
    lim = stanchion.Limiter("100/day", storage=storage, on_error="allow")

    async def hit() -> stanchion.Decision:
        return await lim.ahit("k") if asynchronous else lim.hit("k")

    try:
        assert (await hit()).remaining == 99
        assert (await hit()).remaining == 98
        private_redis.pause()
        try:
            fallbacks = [await hit() for _ in range(3)]
            if asynchronous:  # and some at once, pipelined on one connection
                fallbacks += await asyncio.gather(*(hit() for _ in range(5)))
        finally:
            private_redis.resume()
        assert all(d.allowed and d.reset_after == 0 for d in fallbacks)
        # The server has run what it read on resume; the next probe ends
        # the outage, and only the answered hits count.
        for _ in range(100):
            d = await lim.apeek("k") if asynchronous else lim.peek("k")
            if d.reset_after > 0 and storage._connector.down_since is None:
                break
            time.sleep(0.02)
        time.sleep(0.2)
        assert (await hit()).remaining == 97
    finally:
        storage.close()
        await storage.aclose()


async def test_hits_pipelined_behind_a_stalled_one_wait_for_their_own_deadline(
    private_redis: RedisServer,
) -> None:
    """Hits sent one after another on the connection of a paused server:
    when the first times out, the others are not failed with it (before
    their own deadlines, which the server still honours on resume) but
    each at its own timeout; resumed right after the last gave up, the
    server applies none of them."""
    storage = RedisStorage(private_redis.url, timeout=TIMEOUT, retry_interval=0)
    lim = stanchion.Limiter("100/day", storage=storage, on_error="allow")

    async def later(delay: float) -> stanchion.Decision:
        await asyncio.sleep(delay)
        return await lim.ahit("k")

    try:
        assert (await lim.ahit("k")).remaining == 99
        assert (await lim.ahit("k")).remaining == 98
        private_redis.pause()
        t0 = time.monotonic()
        try:
            gave_up = await asyncio.gather(*(later(i * 0.04) for i in range(5)))
        finally:
            private_redis.resume()
        # The last one was sent 0.16 s after the first: it waited its own
        # timeout, not the first's.
        assert time.monotonic() - t0 >= 0.16 + TIMEOUT
        assert all(d.allowed and d.reset_after == 0 for d in gave_up)
        for _ in range(100):
            d = await lim.apeek("k")
            if d.reset_after > 0 and storage._connector.down_since is None:
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.2)
        assert (await lim.ahit("k")).remaining == 97
    finally:
        await storage.aclose()
        storage.close()


async def test_a_wrong_deadline_costs_a_round_trip_not_the_hit(
    private_redis: RedisServer,
) -> None:
    """A hit past its deadline whose caller is still waiting means the
    client's idea of the server clock is off (the clock stepped, or a
    failover put another server there): it is sent again, counted once."""
    storage = RedisStorage(private_redis.url, timeout=SLOW_TIMEOUT)
    lim = stanchion.Limiter("100/day", storage=storage, on_error="deny")
    conn = storage._connector
    try:
        assert lim.hit("k").remaining == 99
        assert conn.skew is not None
        right = conn.skew
        conn.skew = right - 60e6  # the server's clock a minute ahead of it
        assert lim.hit("k").remaining == 98
        assert abs(conn.skew - right) < 1e6 and conn.down_since is None
        conn.skew = right - 60e6
        assert (await lim.ahit("k")).remaining == 97
        assert abs(conn.skew - right) < 1e6 and conn.down_since is None
        # The server's clock a minute behind: deadlines would be a minute
        # late. The first answer proves it (the server read its clock
        # before the offset believed allows) and sets it right.
        conn.skew = right + 60e6
        assert lim.hit("k").remaining == 96
        assert abs(conn.skew - right) < 1e6
    finally:
        storage.close()
        await storage.aclose()


def test_every_call_waits_for_the_probe_during_an_outage(
    private_redis: RedisServer, clock: FakeClock
) -> None:
    """While Redis is down only one call per retry interval tries it,
    whatever the call: a reset or a cache clear within the interval
    answers at once by its policy, as hits and reads do, instead of
    waiting out the timeout on a stalled server."""
    storage = RedisStorage(private_redis.url, timeout=0.5, retry_interval=1)
    storage._connector.clock = clock
    lim = stanchion.Limiter("5/minute", storage=storage, on_error="allow")
    strict = stanchion.Limiter("5/minute", storage=storage, on_error="raise")
    cache = stanchion.RedisCache(storage)
    try:
        assert lim.hit("k").remaining == 4
        private_redis.pause()
        try:
            assert lim.hit("k").remaining == 4  # timed out: the outage begins
            assert storage._connector.down_since is not None
            t0 = time.monotonic()
            lim.reset("k")
            lim.reset()
            cache.clear()
            with pytest.raises(stanchion.StorageUnavailable):
                strict.reset()
            elapsed = time.monotonic() - t0
        finally:
            private_redis.resume()
        assert elapsed < MARGIN
        clock.advance(1)
        assert lim.hit("k").reset_after > 0  # the next probe gets through
        assert storage._connector.down_since is None
    finally:
        storage.close()


def test_one_slow_answer_does_not_stretch_the_deadlines(
    private_redis: RedisServer,
) -> None:
    """The server's clock is bounded by each answer (the server read it
    between the send and the answer). An answer delayed by a short stall
    gives a loose bound: it must not move the deadlines by that much,
    later (hits timed out in the next stall would be applied) or earlier
    (hits would be refused while their callers wait)."""
    storage = RedisStorage(private_redis.url, timeout=SLOW_TIMEOUT)
    lim = stanchion.Limiter("100/day", storage=storage, on_error="deny")
    conn = storage._connector
    try:
        for _ in range(3):
            lim.hit("k")
        assert conn.skew is not None
        quick = conn.skew
        private_redis.pause()
        timer = threading.Timer(0.3, private_redis.resume)
        timer.start()
        assert lim.hit("k").remaining == 96  # answered 0.3 s late
        timer.join()
        assert abs(conn.skew - quick) < 100_000, (conn.skew - quick) / 1e6
    finally:
        storage.close()
