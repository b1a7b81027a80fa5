"""``stanchion probe``: finding a provider's limit by experiment, against
the loopback fake providers of examples/outbound."""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from stanchion import parse_rates
from stanchion._probe import (
    infer_limit,
    parse_concurrency,
    parse_duration,
    parse_header,
    probe,
    round_window,
)

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "outbound"
sys.path.insert(0, str(EXAMPLE))

from providers import FakeProvider  # noqa: E402

ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}


@pytest.fixture
def provider():
    started: list[FakeProvider] = []

    def start(*args, **kwargs) -> FakeProvider:
        p = FakeProvider(*args, **kwargs).start()
        started.append(p)
        return p

    yield start
    for p in started:
        p.stop()


def within(value: float, truth: float, share: float = 0.10) -> bool:
    return abs(value - truth) <= share * truth


# -- input ---------------------------------------------------------------------


def test_concurrency_notations():
    assert parse_concurrency("1..10") == tuple(range(1, 11))
    assert parse_concurrency("4") == (4,)
    assert parse_concurrency(" 1,2,4,8 ") == (1, 2, 4, 8)
    assert parse_concurrency(3) == (3,)
    assert parse_concurrency([2, 64]) == (2, 64)


@pytest.mark.parametrize(
    "bad", ["1..0", "0", "abc", "65", "1..65", "1,,2", "", "2..", "-1"]
)
def test_bad_concurrency(bad):
    with pytest.raises(ValueError, match="concurrency"):
        parse_concurrency(bad)


def test_a_huge_concurrency_range_is_refused_at_once():
    # Checked by its bounds, before the range is listed: 1..10**8 took
    # seconds and gigabytes of memory before being refused.
    with pytest.raises(ValueError, match=r"1\.\.64 workers"):
        parse_concurrency("1..100000000000000")
    with pytest.raises(ValueError, match=r"1\.\.64 workers"):
        parse_concurrency("-100000000000000..2")


def test_the_number_of_steps_is_bounded():
    # Each step may last 600 s: a list of steps bounds the whole run too
    # (1..64 at most, so 64 steps).
    assert len(parse_concurrency([1] * 64)) == 64
    with pytest.raises(ValueError, match="at most 64 steps"):
        parse_concurrency(",".join(["1"] * 65))
    with pytest.raises(ValueError, match="at most 64 steps"):
        parse_concurrency([2] * 10_000)


def test_concurrency_types():
    for bad in (True, 2.0, [1, "2"], None):
        with pytest.raises(TypeError):
            parse_concurrency(bad)


def test_durations():
    assert parse_duration("30s") == 30.0
    assert parse_duration("2m") == 120.0
    assert parse_duration("500ms") == 0.5
    assert parse_duration("1.5") == 1.5
    assert parse_duration("10M") == 600.0
    assert parse_duration(2) == 2.0


@pytest.mark.parametrize(
    "bad", ["30x", "0", "0s", "601s", "11m", "abc", "-1s", "", "1h", float("nan")]
)
def test_bad_durations(bad):
    with pytest.raises(ValueError, match="duration"):
        parse_duration(bad)


def test_headers():
    assert parse_header("Authorization: Bearer x:y") == ("Authorization", "Bearer x:y")
    for bad in ("NoColon", ": v", "Bad Name: v", "X:a\r\nInjected: 1"):
        with pytest.raises(ValueError):
            parse_header(bad)


def test_round_window():
    assert round_window(29.4) == 30.0
    assert round_window(61.5) == 60.0
    assert round_window(2.09) == 2.0
    assert round_window(2.11) == 2.11
    assert round_window(25.0) == 25.0  # not within 5 % of 20 or 30
    assert round_window(0.4567) == 0.457


@pytest.mark.parametrize(
    "kwargs",
    [
        {"url": "ftp://127.0.0.1/search"},
        {"url": "127.0.0.1:80/search"},
        {"url": "http:///search"},
        {"concurrency": 65},
        {"concurrency": "1..0"},
        {"duration": 601},
        {"duration": "30x"},
        {"max_requests": 0},
        {"max_requests": 10**9},
        {"method": "G ET"},
        {"timeout": 0},
        {"headers": {"X": "a\nb"}},
        {"url": "http://127.0.0.1:99999/search"},
        {"url": "http://127.0.0.1:abc/search"},
    ],
)
def test_probe_refuses_bad_input_before_sending(provider, kwargs):
    p = provider("p", 100, 1)
    args = {"url": p.url + "/search", "concurrency": 1, "duration": 0.2, **kwargs}
    with pytest.raises(ValueError):
        probe(**args)
    assert p.requests == 0


# -- inference from the timing, on simulated runs -------------------------------


def simulate(limit, window, kind, steps, phase=0.0):
    """Requests evenly spaced at each step's rate against a provider of
    ``limit`` per ``window``: (success times, refusal times, end)."""
    log: collections.deque[float] = collections.deque()
    index, count = -1, 0
    t, successes, refusals = 0.0, [], []
    for rate, duration in steps:
        end = t + duration
        while t < end:
            if kind == "sliding":
                while log and log[0] <= t - window:
                    log.popleft()
                ok = len(log) < limit
                if ok:
                    log.append(t)
            else:
                i = int((t + phase) // window)
                if i != index:
                    index, count = i, 0
                ok = count < limit
                count += ok
            (successes if ok else refusals).append(t)
            t += 1.0 / rate
    return successes, refusals, t


@pytest.mark.parametrize(
    ("kind", "steps", "phase"),
    [
        ("sliding", [(1000, 30)] * 3, 0.0),
        ("fixed", [(1000, 30)] * 3, 13.0),
        # Ten windows: starts picked evenly would fall in step with them.
        ("sliding", [(1000, 30)] * 10, 0.0),
        # Earlier steps under the limit spent part of the quota first.
        ("sliding", [(5, 10), (20, 30), (30, 30), (40, 30)], 0.0),
        ("fixed", [(5, 30), (20, 30), (30, 30), (40, 30)], 7.0),
    ],
)
def test_infer_350_per_30_seconds(kind, steps, phase):
    found = infer_limit(*simulate(350, 30, kind, steps, phase))
    assert found is not None and not found.sustained
    assert within(found.limit, 350, 0.01)
    assert within(found.window, 30, 0.015)
    assert round_window(found.window) == 30


def test_infer_needs_two_windows_of_refusals():
    # 55 s of refusals against a 30 s window: too short to tell.
    assert infer_limit(*simulate(350, 30, "sliding", [(1000, 55)])) is None
    found = infer_limit(*simulate(350, 30, "sliding", [(1000, 70)]))
    assert found is not None and found.limit == 350
    assert round_window(found.window) == 30


def test_infer_evenly_spread_successes_give_the_sustained_rate():
    # A quota spent evenly over a whole window before the first refusal
    # replays evenly: any window fits, only the rate is known.
    found = infer_limit(*simulate(100, 1, "sliding", [(50, 1), (100, 1), (200, 2)]))
    assert found is not None and found.sustained
    assert found.window == 1 and within(found.limit, 100)


def test_infer_does_not_take_a_replay_for_the_sustained_rate():
    # One worker at 42/s spent most of a 60/s quota evenly; right after the
    # first refusal, the successes replay those 42/s: even, but not the
    # limit's rate (the two halves of the refused part differ).
    assert infer_limit(*simulate(60, 1, "sliding", [(42, 1), (80, 1.2)])) is None


def test_infer_without_refusals():
    assert infer_limit([0.1 * i for i in range(100)], [], 10.0) is None


# -- against the fake providers ------------------------------------------------


@pytest.mark.parametrize("kind", ["sliding", "fixed"])
def test_finds_a_silent_providers_limit(provider, kind):
    p = provider("quiet", 40, 2, kind=kind, advertise=False)
    result = probe(p.url + "/search?q=x", "1..5", "1.5s")
    assert result.source == "inferred", result.format()
    (rate,) = parse_rates(result.suggested)
    assert within(rate.limit, 40) and within(rate.period, 2), result.format()
    assert result.stopped.startswith("the limit was known after")
    assert len(result.steps) < 5
    first = result.steps[0]
    assert first.concurrency == 1
    assert first.ok == 40  # the whole quota, then refusals
    assert first.limited == first.requests - 40 > 0
    assert first.other == first.errors == 0
    assert first.failures_began is not None and first.failures_began < 1.5
    assert result.failures_began is not None
    assert result.failures_began["concurrency"] == 1
    assert sum(s.ok for s in result.steps) == p.served
    assert sum(s.limited for s in result.steps) == p.refused


def test_finds_a_limit_that_bites_at_a_later_step(provider):
    # Answers take 20 ms: one worker asks ~45/s, under the limit's 60/s.
    p = provider("slow", 120, 2, kind="fixed", advertise=False, latency=0.02)
    result = probe(p.url + "/search?q=x", "1..8", "1.5s")
    assert result.steps[0].limited == 0
    assert result.failures_began is not None
    assert result.failures_began["concurrency"] > 1
    assert result.source == "inferred", result.format()
    (rate,) = parse_rates(result.suggested)
    assert within(rate.limit, 120) and within(rate.period, 2), result.format()


def test_reads_an_advertised_limit(provider):
    p = provider("loud", 40, 2)
    result = probe(p.url + "/search?q=x", "1..4", "300ms")
    assert result.source == "advertised"
    assert result.suggested == "40 per 2 seconds"
    assert result.advertised == {"RateLimit-Policy": '"loud";q=40;w=2'}
    assert len(result.steps) == 1


def test_reads_x_ratelimit_headers_without_a_policy():
    from stanchion._probe import _Advertised

    seen = _Advertised()
    for reset in ("28", "30", "12"):
        seen.see({"x-ratelimit-limit": "350", "x-ratelimit-reset": reset})
    rates, info = seen.rates()
    assert [str(r) for r in rates] == ["350 per 30 seconds"]
    assert info["X-RateLimit-Limit"] == 350


def test_steps_count_answers_apart(provider):
    p = provider("q", 5, 60, advertise=False)
    result = probe(p.url + "/search?q=x", "1,3", "200ms", stop_early=False)
    assert [s.concurrency for s in result.steps] == [1, 3]
    first, second = result.steps
    assert first.ok == 5 and first.limited == first.requests - 5
    assert second.ok == 0 and second.limited == second.requests > 0
    assert second.failures_began is not None and second.failures_began < 0.2
    assert first.offered_rate == pytest.approx(first.requests / first.elapsed)
    assert first.success_rate == pytest.approx(5 / first.elapsed)
    # 60 s windows cannot be told from 0.4 s: no suggestion.
    assert result.suggested is None
    assert result.stopped == "all steps ran"
    p404 = probe(p.url + "/elsewhere", 1, "100ms")
    assert p404.steps[0].other == p404.steps[0].requests > 0
    assert p404.steps[0].statuses == {"404": p404.steps[0].requests}


def test_connection_errors_are_counted(provider):
    p = provider("gone", 5, 1)
    url = p.url + "/search"
    p.stop()
    result = probe(url, 2, "200ms")
    step = result.steps[0]
    assert step.errors == step.requests > 0
    assert step.ok == step.limited == step.other == 0
    assert step.error_kinds == {"ConnectError": step.errors}
    assert result.suggested is None


def test_an_undecodable_body_is_an_error_not_a_crash():
    # A host answering "Content-Encoding: gzip" with a body that is not:
    # httpx raises DecodingError (not a TransportError) reading it.
    import http.server
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"not gzip"
            self.send_response(200)
            self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/"
        result = probe(url, 1, "200ms", max_requests=5)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    step = result.steps[0]
    assert step.errors == step.requests == 5
    assert step.error_kinds == {"DecodingError": 5}


def test_max_requests_caps_the_whole_probe(provider):
    p = provider("c", 10**6, 1, advertise=False)
    result = probe(p.url + "/search", "1..3", "5s", max_requests=120)
    assert sum(s.requests for s in result.steps) == 120 == p.requests
    assert result.stopped == "the cap of 120 requests was reached"


# -- command line --------------------------------------------------------------


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stanchion", "probe", *args],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=60,
    )


def test_cli_json(provider):
    p = provider("quiet", 20, 1, advertise=False)
    out = run_cli(
        p.url + "/search?q=x",
        "--concurrency",
        "1..4",
        "--duration",
        "1s",
        "--header",
        "X-Probe: yes",
        "--json",
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    (rate,) = parse_rates(result["suggested"])
    assert within(rate.limit, 20) and within(rate.period, 1), out.stdout
    assert result["source"] == "inferred"
    assert result["steps"][0]["concurrency"] == 1
    assert {"requests", "ok", "limited", "other", "errors"} <= set(result["steps"][0])


def test_cli_text(provider):
    p = provider("loud", 40, 2)
    out = run_cli(p.url + "/search?q=x", "--concurrency", "2", "--duration", "300ms")
    assert out.returncode == 0, out.stderr
    assert 'suggested rate: "40 per 2 seconds"' in out.stdout
    assert "workers  requests" in out.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--concurrency", "1..0"], "is empty"),
        (["--concurrency", "0"], "1..64"),
        (["--concurrency", "abc"], "concurrency must be"),
        (["--duration", "30x"], "duration must be"),
        (["--duration", "11m"], "at most 600"),
        (["--max-requests", "0"], "max_requests"),
        (["--header", "nocolon"], "NAME:VALUE"),
        (["--concurrency", "1..100000000000"], "1..64"),
    ],
)
def test_cli_refuses_bad_input(args, message):
    out = run_cli("http://127.0.0.1:9/search", *args)
    assert out.returncode == 2
    assert message in out.stderr


def test_cli_refuses_other_schemes():
    out = run_cli("file:///etc/passwd")
    assert out.returncode == 2
    assert "http:// or https://" in out.stderr


def test_cli_without_httpx_names_the_extra():
    code = (
        "import sys; sys.modules['httpx'] = None\n"
        "from stanchion.__main__ import main\n"
        "sys.exit(main(['probe', 'http://127.0.0.1:9/', '--duration', '1s']))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=ENV
    )
    assert out.returncode == 1
    assert "pip install stanchion[probe]" in out.stderr
