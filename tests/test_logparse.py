"""stanchion._core.LogParser, the C access-log parser of `stanchion report`:
formats and fields worked out by hand, malformed and hostile input, chunk
boundaries anywhere, events, bad arguments, the bounded tables, a fuzz
build without Python under ASan+UBSan, and a differential test against
the pure-Python reference stanchion.report._pyparse.PyLogParser."""

from __future__ import annotations

import calendar
import gc
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stanchion._core import LogParser
from stanchion.report._pyparse import PyLogParser

from ._fuzz import build, fuzz

ROOT = Path(__file__).resolve().parent.parent


def epoch(y: int, mo: int, d: int, h: int = 0, mi: int = 0, s: int = 0) -> int:
    return calendar.timegm((y, mo, d, h, mi, s, 0, 0, 0))


def line(
    ip: str = "1.2.3.4",
    when: str = "10/Oct/2000:13:55:36 -0700",
    req: str = "GET / HTTP/1.1",
    status: str = "200",
    size: str = "100",
    ua: str = "curl/8",
) -> bytes:
    return f'{ip} - - [{when}] "{req}" {status} {size} "-" "{ua}"\n'.encode()


def parse(data: bytes, fmt: str = "combined", **kw: object) -> dict:
    p = LogParser(fmt, **kw)  # type: ignore[arg-type]
    p.feed(data)
    p.finish()
    return p.summary()


T0 = epoch(2000, 10, 10, 20, 55, 36)  # 13:55:36 -0700


# -- formats and fields ----------------------------------------------------


def test_combined_line_every_field() -> None:
    s = parse(line(req="POST /a/b?x=1 HTTP/1.0", status="201", size="2326"))
    assert (s["lines"], s["parsed"], s["malformed"]) == (1, 1, 0)
    assert s["first_ts"] == s["last_ts"] == float(T0)
    assert s["bytes"] == 2326
    assert s["status"] == {"201": 1}
    assert s["methods"] == {"POST": 1}
    assert s["per_second"] == [[T0, 1, 2326, 0, 0]]
    (client,) = s["clients"]
    assert client == {
        "key": "1.2.3.4",
        "requests": 1,
        "bytes": 2326,
        "n4xx": 0,
        "n5xx": 0,
        "first_ts": float(T0),
        "last_ts": float(T0),
        "error": 0,
        "rates": {"1": [1, 1, 1, 1], "60": [1, 1, 1, 1]},
    }
    assert s["paths"] == [
        {"key": "/a/b", "requests": 1, "bytes": 2326, "n4xx": 0, "n5xx": 0, "error": 0}
    ]
    assert s["templates"] == [{"key": "/a/b", "requests": 1, "error": 0}]
    assert s["distinct_exact"] is True


def test_common_nginx_and_named_formats() -> None:
    common = b'10.0.0.1 - frank [10/Oct/2000:13:55:36 -0700] "GET /x HTTP/1.0" 404 -\n'
    s = parse(common, "common")
    assert s["parsed"] == 1 and s["bytes"] == 0 and s["status"] == {"404": 1}
    assert parse(common, "combined")["malformed"] == 1  # no referer
    data = line() + line(ip="5.6.7.8", status="503")
    assert parse(data, "nginx") == parse(data, "combined")
    # nginx's default has a literal "-" where combined has %l
    assert parse(line().replace(b" - - ", b" x - "), "nginx")["malformed"] == 1
    assert parse(line().replace(b" - - ", b" x - "), "combined")["parsed"] == 1


def test_user_nginx_format_iso_time_and_opaque_fields() -> None:
    fmt = '$remote_addr [$time_iso8601] "$request" $status $bytes_sent $request_time'
    data = (
        b'9.9.9.9 [2000-10-10T13:55:36-07:00] "GET /u/1 HTTP/2.0" 302 10 0.004\n'
        b'9.9.9.9 [2000-10-10T20:55:37Z] "HEAD /u/2" 200 5 0.1\n'
    )
    s = parse(data, fmt)
    assert s["parsed"] == 2
    assert [r[0] for r in s["per_second"]] == [T0, T0 + 1]
    assert s["methods"] == {"GET": 1, "HEAD": 1}
    assert s["templates"] == [{"key": "/u/{id}", "requests": 2, "error": 0}]


def test_user_apache_format_with_escaped_quotes() -> None:
    fmt = r"%a %{X-Id}i %t \"%r\" %>s %B %D"
    data = b'7.7.7.7 abc [10/Oct/2000:13:55:36 -0700] "GET /x HTTP/1.1" 200 12 99\n'
    s = parse(data, fmt)
    assert s["parsed"] == 1 and s["bytes"] == 12
    assert s["clients"][0]["key"] == "7.7.7.7"


def test_a_format_without_request_or_status() -> None:
    s = parse(b"1.1.1.1|[10/Oct/2000:13:55:36 -0700]|x\n", "%h|%t|%U")
    assert s["parsed"] == 1
    assert s["paths"] == s["templates"] == [] and s["methods"] == {}
    assert s["status"] == {}


def test_quoted_fields_with_escapes_and_trailing_text() -> None:
    ua = r"Mozilla \"quoted\" \\"
    s = parse(line(ua=ua)[:-1] + b" extra fields\n")
    assert s["parsed"] == 1


@pytest.mark.parametrize(
    "bad",
    [
        line(when="10/Foo/2000:13:55:36 -0700"),
        line(when="31/Feb/2000:13:55:36 -0700"),
        line(when="10/Oct/2000:24:00:00 -0700"),
        line(when="10/Oct/1969:13:55:36 -0700"),
        line(when="10/Oct/2262:13:55:36 -0700"),
        line(when="10/Oct/2000:13:55:36 -07000"),
        line(status="20"),
        line(status="2000"),
        line(status="abc"),
        line(size="12a"),
        line(size="1" * 19),
        line(req="-"),
        line(req="get / HTTP/1.1"),
        line(req="GET /a b HTTP/1.1"),
        line(req="GET"),
        line(req="\x16\x03\x01"),
        line(ip=""),
        b'1.2.3.4 - - [10/Oct/2000:13:55:36 -0700] "GET / HTTP/1.1" 200 1 "-\n',
        b"garbage\n",
    ],
)
def test_malformed_lines(bad: bytes) -> None:
    s = parse(bad + line())
    assert (s["lines"], s["parsed"], s["malformed"]) == (2, 1, 1)
    assert s["malformed_examples"] == [[1, bad[:-1].decode("latin-1")]]


def test_leap_second_and_leap_day() -> None:
    s = parse(line(when="29/Feb/2000:23:59:60 +0000"))
    assert s["first_ts"] == float(epoch(2000, 3, 1))


def test_examples_first_five_line_numbers_and_200_bytes() -> None:
    data = b"\n" + b"x" * 300 + b"\n" + b"".join(b"bad%d\n" % i for i in range(8))
    s = parse(data)
    assert s["malformed"] == 9 and s["lines"] == 9
    assert s["malformed_examples"][0] == [2, "x" * 200]
    assert [e[0] for e in s["malformed_examples"]] == [2, 3, 4, 5, 6]


def test_crlf_empty_lines_and_no_final_newline() -> None:
    data = line()[:-1] + b"\r\n\r\n\n" + line(ip="9.9.9.9")[:-1]
    p = LogParser()
    assert p.feed(data) is None
    assert p.summary()["lines"] == 1
    p.finish()
    s = p.summary()
    assert (s["lines"], s["parsed"]) == (2, 2)


# -- hostile input ----------------------------------------------------------


def test_a_huge_line_is_malformed_and_not_buffered() -> None:
    p = LogParser()
    p.feed(line())
    for _ in range(64):  # 64 MiB without a newline
        p.feed(b"y" * (1 << 20))
    p.feed(b"\n" + line())
    p.finish()
    s = p.summary()
    assert (s["lines"], s["parsed"], s["malformed"]) == (3, 2, 1)
    assert s["malformed_examples"] == [[2, "y" * 200]]


def test_line_length_limit_is_65536_bytes() -> None:
    ok = line(ua="u" * 100)
    pad = 65536 - (len(ok) - 1)
    at_limit = line(ua="u" * (100 + pad))
    assert len(at_limit) - 1 == 65536
    assert parse(at_limit + b"\r\n".join([b""]))["parsed"] == 1
    over = line(ua="u" * (101 + pad))
    assert parse(over)["malformed"] == 1
    # a trailing '\r' is dropped before the length is checked
    assert parse(at_limit[:-1] + b"\r\n")["parsed"] == 1


def test_nul_bytes_and_invalid_utf8_are_latin1_keys() -> None:
    ip = b"\xff\x00\xc3("
    data = (
        ip
        + b' - - [10/Oct/2000:13:55:36 -0700] "GET /\xe9\x00x HTTP/1.1" 200 1 "-" "-"\n'
    )
    p = LogParser(events=True)
    ev = p.feed(data)
    s = p.summary()
    assert s["parsed"] == 1
    assert s["clients"][0]["key"] == ip.decode("latin-1")
    assert s["clients"][0]["key"].encode("latin-1") == ip
    assert s["paths"][0]["key"] == "/\xe9\x00x"
    assert ev == ([T0 * 10**9], [ip.decode("latin-1")], ["/\xe9\x00x"], [200])
    s = parse(b"\x00\xff\xfe\n")
    assert s["malformed_examples"] == [[1, "\x00\xff\xfe"]]


# -- chunks, events ------------------------------------------------------------


def sample_log() -> bytes:
    return (
        line()
        + b"\r\n"
        + line(ip="5.6.7.8", req="POST /u/12?x HTTP/1.1", status="404", size="-")
        + b"junk line\n"
        + line(when="10/Oct/2000:13:55:37 -0700", status="503", ua=r"a \"b\" c")
        + line(ip="5.6.7.8", when="10/Oct/2000:13:56:40 -0700")[:-1]
    )


def test_split_at_every_offset_gives_the_same_summary() -> None:
    data = sample_log()
    whole = parse(data)
    for i in range(len(data) + 1):
        p = LogParser()
        p.feed(data[:i])
        p.feed(data[i:])
        p.finish()
        assert p.summary() == whole, i
    # one byte at a time
    p = LogParser()
    for i in range(len(data)):
        p.feed(data[i : i + 1])
    p.finish()
    assert p.summary() == whole


def test_events_per_chunk_parsed_lines_only() -> None:
    data = sample_log()
    cut = data.index(b"junk")
    p = LogParser(events=True)
    e1 = p.feed(data[:cut])
    e2 = p.feed(data[cut:])
    e3 = p.finish()
    assert e1 == ([T0 * 10**9] * 2, ["1.2.3.4", "5.6.7.8"], ["/", "/u/12"], [200, 404])
    assert e2 == ([(T0 + 1) * 10**9], ["1.2.3.4"], ["/"], [503])
    assert e3 == ([(T0 + 64) * 10**9], ["5.6.7.8"], ["/"], [200])
    assert LogParser().feed(data) is None


def test_feed_after_finish_and_finish_twice() -> None:
    p = LogParser()
    p.feed(line())
    p.finish()
    before = p.summary()
    with pytest.raises(ValueError, match="after finish"):
        p.feed(line())
    with pytest.raises(ValueError, match="twice"):
        p.finish()
    assert p.summary() == before


def test_summary_any_time_does_not_close_windows() -> None:
    p = LogParser(windows=(60,))
    p.feed(line() + line())
    assert p.summary()["clients"][0]["rates"] == {"60": [2, 2, 2, 2]}
    p.feed(line())
    assert p.summary()["clients"][0]["rates"] == {"60": [3, 3, 3, 3]}


def test_feed_takes_any_bytes_like_object() -> None:
    data = line()
    for obj in (data, bytearray(data), memoryview(data)):
        assert parse(obj)["parsed"] == 1  # type: ignore[arg-type]


# -- bad arguments -------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "exc"),
    [
        ({"log_format": b"combined"}, TypeError),
        ({"log_format": "apache"}, ValueError),
        ({"log_format": "%h %l"}, ValueError),  # no time
        ({"log_format": "%t %r"}, ValueError),  # no client
        ({"log_format": "%h%t"}, ValueError),  # fields touching
        ({"log_format": "%h %t%r"}, ValueError),
        ({"log_format": "$remote_addr $ [$time_local]"}, ValueError),
        ({"log_format": "%h %t %"}, ValueError),
        ({"top": 0}, ValueError),
        ({"top": -1}, ValueError),
        ({"top": 2**40}, ValueError),
        ({"top": 1.5}, TypeError),
        ({"top": True}, TypeError),
        ({"windows": ()}, ValueError),
        ({"windows": (1, 2, 3, 4, 5)}, ValueError),
        ({"windows": (1, 1)}, ValueError),
        ({"windows": (0,)}, ValueError),
        ({"windows": (2**31,)}, ValueError),
        ({"windows": (1.0,)}, TypeError),
        ({"windows": 60}, TypeError),
        ({"windows": "60"}, TypeError),
        ({"events": 1}, TypeError),
    ],
)
def test_bad_constructor_arguments(kwargs: dict, exc: type) -> None:
    with pytest.raises(exc):
        LogParser(**kwargs)
    if kwargs.get("top") == 2**40:
        return  # the reference has no upper bound on top
    with pytest.raises(exc):
        PyLogParser(**kwargs)


def test_bad_feed_argument_changes_nothing() -> None:
    p = LogParser()
    p.feed(line()[:20])
    before = p.summary()
    for bad in ("text", None, 12, [1, 2]):
        with pytest.raises(TypeError, match="bytes"):
            p.feed(bad)  # type: ignore[arg-type]
    assert p.summary() == before
    p.feed(line()[20:])
    assert p.summary()["parsed"] == 1


def test_format_by_position_or_name_and_keyword_only_rest() -> None:
    with pytest.raises(TypeError):
        LogParser("combined", 10)  # type: ignore[misc]
    p = LogParser(log_format="common", top=5)
    p.feed(line())
    assert p.summary()["parsed"] == 1


# -- bounded tables -------------------------------------------------------------


def test_more_clients_than_top_keeps_top_and_the_heavy_hitter() -> None:
    lines = []
    for i in range(5000):
        lines.append(
            line(ip=f"10.0.{i // 250}.{i % 250}", req=f"GET /item/{i} HTTP/1.1")
        )
        if i % 10 == 0:
            lines.append(line(ip="6.6.6.6", req="GET /login HTTP/1.1"))
    s = parse(b"".join(lines), top=50)
    assert len(s["clients"]) == len(s["paths"]) == 50
    assert s["distinct_exact"] is False
    top = s["clients"][0]
    assert top["key"] == "6.6.6.6" and top["requests"] - top["error"] <= 500
    assert top["requests"] >= 500
    assert s["paths"][0]["key"] == "/login"
    assert s["templates"] == [
        {"key": "/item/{id}", "requests": 5000, "error": 0},
        {"key": "/login", "requests": 500, "error": 0},
    ]
    assert s["lines"] == s["parsed"] == 5500
    assert sum(r[1] for r in s["per_second"]) == 5500


def test_space_saving_eviction_tie_rule() -> None:
    # a, b, c fill top=3; d evicts a (1 request, least recently updated);
    # then b is the oldest of the ones with 1 request.
    data = b"".join(line(ip=ip) for ip in ("a", "b", "c", "d", "e"))
    s = parse(data, top=3)
    assert [(c["key"], c["requests"], c["error"]) for c in s["clients"]] == [
        ("d", 2, 1),
        ("e", 2, 1),
        ("c", 1, 0),
    ]
    # an evicted entry's bytes and times are its own
    data = line(ip="a", size="5") + line(
        ip="b", size="7", when="10/Oct/2000:13:55:40 -0700"
    )
    (b,) = parse(data, top=1)["clients"]
    assert (b["key"], b["requests"], b["error"], b["bytes"]) == ("b", 2, 1, 7)
    assert b["first_ts"] == float(T0 + 4)


def test_rate_histograms_per_window() -> None:
    # 3 requests in second 0, 1 in second 1, 70 in second 5
    whens = ["10/Oct/2000:13:55:36 -0700"] * 3 + ["10/Oct/2000:13:55:37 -0700"]
    whens += ["10/Oct/2000:13:55:41 -0700"] * 70
    s = parse(b"".join(line(when=w) for w in whens), windows=(1, 60, 3600))
    rates = s["clients"][0]["rates"]
    # samples 3, 1, 70 -> bucket(70) = 70 >> 1 << 1 = 70; p50 = 3
    assert rates["1"] == [3, 70, 70, 70]
    assert rates["60"] == rates["3600"] == [74, 74, 74, 74]
    big = parse(line() * 1000, windows=(1,))
    assert big["clients"][0]["rates"]["1"] == [992, 992, 992, 1000]


def test_another_thread_is_refused_while_feed_parses() -> None:
    data = line() * 200_000
    p = LogParser()
    errors: list[BaseException] = []

    def other() -> None:
        for _ in range(200):
            try:
                p.summary()
            except RuntimeError as e:  # busy: refused, not corrupted
                assert "busy" in str(e)
            except BaseException as e:  # pragma: no cover
                errors.append(e)

    t = threading.Thread(target=other)
    t.start()
    p.feed(data)
    t.join()
    p.finish()
    assert not errors
    assert p.summary()["parsed"] == 200_000


# -- differential test against the Python reference ---------------------------

_IPS = st.sampled_from(["1.1.1.1", "2.2.2.2", "3.3.3.3", "::1", "h\xe9", "a b", ""])
_WHEN = st.builds(
    "{:02d}/{}/{}:{:02d}:{:02d}:{:02d} {}".format,
    st.integers(0, 31),
    st.sampled_from(["Jan", "Feb", "Oct", "oct", "Foo"]),
    st.sampled_from([1969, 1970, 2000, 2024, 2261, 2262]),
    st.integers(0, 24),
    st.integers(0, 60),
    st.integers(0, 61),
    st.sampled_from(["+0000", "-0700", "+2359", "+0060", "0000"]),
)
_REQ = st.one_of(
    st.builds(
        "{} {}{}".format,
        st.sampled_from(["GET", "POST", "X-Y_Z", "get", ""]),
        st.sampled_from(
            [
                "/",
                "/u/42",
                "/u/42/p/7?x=1",
                "/a/0123456789abcdef0",
                "/f/123e4567-e89b-12d3-a456-426614174000",
                "?q",
                "",
            ]
        ),
        st.sampled_from([" HTTP/1.1", "", " ", " A B"]),
    ),
    st.sampled_from(["-", "\\x16\\x03", 'a\\"b']),
)
_STATUS = st.sampled_from(["200", "404", "503", "099", "20", "abc"])
_SIZE = st.sampled_from(["0", "-", "123", "1" * 18, "1" * 19, "x"])


@st.composite
def _lines(draw: st.DrawFn) -> bytes:
    kind = draw(st.integers(0, 9))
    if kind == 0:
        return draw(st.binary(max_size=60)).replace(b"\n", b"")
    text = '{} - - [{}] "{}" {} {} "-" "{}"'.format(
        draw(_IPS),
        draw(_WHEN if kind == 1 else st.just("10/Oct/2000:13:55:36 -0700")),
        draw(_REQ),
        draw(_STATUS if kind == 2 else st.just("200")),
        draw(_SIZE if kind == 3 else st.just("10")),
        draw(st.sampled_from(["ua", 'a \\"q\\"', "\\\\", ""])),
    )
    data = text.encode("latin-1")
    if kind == 4 and data:
        i = draw(st.integers(0, len(data) - 1))
        data = (
            data[:i] + draw(st.binary(max_size=3)).replace(b"\n", b"") + data[i + 1 :]
        )
    return data + draw(st.sampled_from([b"", b"\r", b" trailing"]))


@st.composite
def _timed_line(draw: st.DrawFn) -> bytes:
    """A well-formed line from a small pool of clients, paths and seconds,
    so tables evict and rate windows open and close."""
    sec = draw(st.integers(0, 200))
    when = f"10/Oct/2000:13:{sec // 60:02d}:{sec % 60:02d} +0000"
    return line(
        ip=f"10.0.0.{draw(st.integers(0, 12))}",
        when=when,
        req=f"{draw(st.sampled_from(['GET', 'PUT']))} /p/{draw(st.integers(0, 9))} HTTP/1.1",
        status=draw(st.sampled_from(["200", "404", "500"])),
        size=str(draw(st.integers(0, 999))),
    )[:-1]


def _both(data: bytes, cuts: list[int], **kw: object) -> tuple[dict, dict, list, list]:
    out = []
    for cls in (LogParser, PyLogParser):
        p = cls("combined", events=True, **kw)  # type: ignore[arg-type]
        events: list = [[], [], [], []]
        prev = 0
        for c in [*sorted(set(cuts)), len(data)]:
            ev = p.feed(data[prev:c])
            prev = c
            for i in range(4):
                events[i] += ev[i]
        ev = p.finish()
        for i in range(4):
            events[i] += ev[i]
        out.append((p.summary(), events))
    return out[0][0], out[1][0], out[0][1], out[1][1]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    lines=st.lists(_lines(), max_size=25),
    seps=st.data(),
    top=st.integers(1, 6),
)
def test_differential_random_lines(
    lines: list[bytes], seps: st.DataObject, top: int
) -> None:
    data = b"\n".join(lines) + seps.draw(st.sampled_from([b"", b"\n", b"\n\n"]))
    cuts = seps.draw(st.lists(st.integers(0, len(data)), max_size=6))
    c, py, ce, pe = _both(data, cuts, top=top)
    assert c == py
    assert ce == pe


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    lines=st.lists(_timed_line(), min_size=1, max_size=80),
    cuts=st.lists(st.integers(0, 20_000), max_size=8),
    top=st.integers(1, 8),
    windows=st.lists(st.integers(1, 90), min_size=1, max_size=4, unique=True),
)
def test_differential_tables_and_rates(
    lines: list[bytes], cuts: list[int], top: int, windows: list[int]
) -> None:
    data = b"\n".join(lines) + b"\n"
    cuts = [c % (len(data) + 1) for c in cuts]
    c, py, ce, pe = _both(data, cuts, top=top, windows=tuple(windows))
    assert c == py
    assert ce == pe


@pytest.mark.parametrize(
    "fmt",
    [
        "common",
        "nginx",
        '$remote_addr [$time_iso8601] "$request" $status $bytes_sent',
        r"%h %l %u %t \"%r\" %>s %b %D",
        "%a|%t|%s",
    ],
)
def test_differential_other_formats(fmt: str) -> None:
    data = b"".join(
        [
            line(),
            line(ip="2.2.2.2", status="404", size="-"),
            b'3.3.3.3 [2000-10-10T13:55:36-07:00] "GET /u/1 HTTP/1.1" 200 5\n',
            b'4.4.4.4 - - [10/Oct/2000:13:55:36 -0700] "GET /x HTTP/1.1" 200 1 42\n',
            b"5.5.5.5|[10/Oct/2000:13:55:39 -0700]|503\n",
            b"junk\n",
        ]
    )
    results = []
    for cls in (LogParser, PyLogParser):
        p = cls(fmt)
        p.feed(data)
        p.finish()
        results.append(p.summary())
    assert results[0] == results[1]
    assert results[0]["parsed"] >= 1


# -- the engine fuzzed without Python -----------------------------------------


@pytest.mark.slow
def test_engine_builds_without_python_and_survives_fuzzing(tmp_path: Path) -> None:
    out = fuzz(tmp_path, "logparse_fuzz", ["logparse.c"], 20000, timeout=600)
    # the inputs reach the parser's far end: lines parse, some are bad,
    # tables evict
    _, parsed, malformed, evicting = map(int, re.findall(r"\d+", out))
    assert parsed > 100_000 and malformed > 10_000 and evicting > 1000


@pytest.mark.slow
def test_engine_reads_no_uninitialised_memory_under_valgrind(tmp_path: Path) -> None:
    """The fuzz harness built plain and run under valgrind's memcheck,
    which sees what ASan does not: a branch on memory never written
    (ASan fills new blocks alike, so both parses of an input agree)."""
    valgrind = shutil.which("valgrind")
    assert valgrind, "valgrind is required (apt-get install valgrind)"
    exe = build(tmp_path, "logparse_fuzz", ["logparse.c"], sanitize=False)
    proc = subprocess.run(
        [valgrind, "-q", "--error-exitcode=9", "--leak-check=full", str(exe), "2000"],
        capture_output=True,
        text=True,
        timeout=600,
        env={"PATH": "/usr/bin:/bin"},  # not the sanitizer pass's LD_PRELOAD
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "2000 inputs ok" in proc.stdout


def test_differential_long_lines_at_the_limit() -> None:
    ok = line(ua="u" * 100)
    pad = 65536 - (len(ok) - 1)
    data = b"".join(
        [
            line(ua="u" * (100 + pad)),  # 65536 bytes: parsed
            line(ua="u" * (101 + pad)),  # one more: malformed
            line(ua="u" * (100 + pad))[:-1] + b"\r\n",
            b"z" * 200_000 + b"\n",
            line(),
        ]
    )
    c, py, ce, pe = _both(data, [70_000, 140_000, 300_000])
    assert c == py and ce == pe
    assert (c["parsed"], c["malformed"]) == (3, 2)


def test_a_finalizer_calling_the_parser_mid_summary_is_refused() -> None:
    p = LogParser(events=True)
    p.feed(b"".join(line(ip=f"10.0.0.{i}") for i in range(50)))
    seen: list[str] = []

    class Calls:
        def __init__(self) -> None:
            self.me = self  # a cycle: only the collector frees it

        def __del__(self) -> None:
            try:
                p.feed(line(ip="9.9.9.9"))
                seen.append("fed")
            except RuntimeError as e:
                seen.append(str(e))

    threshold = gc.get_threshold()
    gc.collect()
    gc.disable()
    try:
        for _ in range(20):
            Calls()
        gc.set_threshold(1)
        gc.enable()
        s = p.summary()  # allocations collect, the finalizers run
    finally:
        gc.set_threshold(*threshold)
        gc.enable()
    gc.collect()
    assert seen and all(x == "fed" or "busy" in x for x in seen)
    if sys.version_info < (3, 12):
        # Before 3.12 the collector runs inside an allocation, so mid-
        # summary; since, only between bytecodes (after summary returns).
        assert "busy" in seen[0]
    assert s["parsed"] == 50 and len(s["clients"]) == 50
    assert p.summary()["parsed"] == 50 + seen.count("fed")


def test_format_literals_are_latin1_like_the_lines() -> None:
    data = b"1.1.1.1 \xe9 [10/Oct/2000:13:55:36 -0700]\n"
    for cls in (LogParser, PyLogParser):
        p = cls("%h \xe9 %t")
        p.feed(data)
        assert p.summary()["parsed"] == 1
        with pytest.raises(ValueError):
            cls("%h \u20ac %t")  # not latin-1


def test_a_bad_format_is_reported_before_other_arguments() -> None:
    for cls in (LogParser, PyLogParser):
        with pytest.raises(ValueError):
            cls("apache", top=1.5)  # type: ignore[arg-type]


def test_thousands_of_parsers_leak_nothing() -> None:
    from .test_limiter_memory import run_isolated

    assert "ok" in run_isolated("leak_logparse.py")


# Pieces of a format and what each puts in a line.
_PIECES = {
    "%h": "1.2.3.4",
    "%a": "5.6.7.8",
    "%t": "[10/Oct/2000:13:55:36 -0700]",
    "%r": "GET /u/1?x HTTP/1.1",
    "%>s": "404",
    "%s": "200",
    "%b": "-",
    "%B": "17",
    "%D": "99",
    "%{X-Y}i": "v w",
    "%%": "%",
    "%": "%",
    "%!200,304<s": "304",
    "\\": "\\",
    '\\"': '"',
    '"': '"',
    " ": " ",
    "[": "[",
    "]": "]",
    "|": "|",
    "-": "-",
    "$remote_addr": "9.9.9.9",
    "$time_local": "10/Oct/2000:13:55:37 -0700",
    "$time_iso8601": "2000-10-10T13:55:38-07:00",
    "$request": "POST /a/b HTTP/2.0",
    "$status": "503",
    "$body_bytes_sent": "5",
    "${upstream}": "u",
    "$": "$",
    "\xe9": "\xe9",
}


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    pieces=st.lists(st.sampled_from(sorted(_PIECES)), min_size=1, max_size=14),
    noise=st.lists(st.tuples(st.integers(0, 200), st.binary(max_size=2)), max_size=2),
)
def test_differential_random_formats(pieces: list[str], noise: list) -> None:
    """Random formats compile alike (both accept or both refuse with a
    ValueError), and lines rendered from them, exact or with noise, give
    the same summary."""
    fmt = "".join(pieces)
    outcomes = []
    for cls in (LogParser, PyLogParser):
        try:
            outcomes.append(cls(fmt, events=True))
        except ValueError:
            outcomes.append(None)
    c, py = outcomes
    assert (c is None) == (py is None), fmt
    if c is None or py is None:
        return
    good = "".join(_PIECES[p] for p in pieces).encode("latin-1")
    bad = bytearray(good)
    for pos, junk in noise:
        bad[pos % (len(bad) + 1) : pos % (len(bad) + 1) + 1] = junk.replace(b"\n", b"")
    data = good + b"\n" + bytes(bad) + b"\n" + good + b" extra\n"
    assert c.feed(data) == py.feed(data), fmt
    assert c.summary() == py.summary(), fmt


_APACHE_FIELDS = ["%h", "%a", "%t", "%r", "%>s", "%s", "%b", "%B", "%D", "%{X-Y}i"]
_NGINX_FIELDS = [
    "$remote_addr",
    "$time_local",
    "$time_iso8601",
    "$request",
    "$status",
    "$body_bytes_sent",
    "${upstream}",
]
_SEPARATORS = [" ", "|", " - ", " [", "] ", '"', '" "', ' "', '" ', "\xe9", " %% "]


@st.composite
def _format(draw: st.DrawFn) -> list[str]:
    """A format as pieces: fields of one style (with a client and a time
    among them) between separators, sometimes a stray piece."""
    nginx = draw(st.booleans())
    fields = _NGINX_FIELDS if nginx else _APACHE_FIELDS
    client, when = (
        ("$remote_addr", draw(st.sampled_from(["$time_local", "$time_iso8601"])))
        if nginx
        else (draw(st.sampled_from(["%h", "%a"])), "%t")
    )
    chosen = [*draw(st.lists(st.sampled_from(fields), max_size=5)), client, when]
    chosen = draw(st.permutations(chosen))
    out: list[str] = []
    for i, f in enumerate(chosen):
        sep = draw(st.sampled_from(_SEPARATORS))
        if nginx and sep == " %% ":
            sep = " % "
        if i or draw(st.booleans()):
            out.append(sep)
        if f == "$time_local":
            out += ["[", f, "]"]
        elif f in ("%r", "$request") and draw(st.booleans()):
            out += ['"', f, '"']
        else:
            out.append(f)
    if draw(st.integers(0, 9)) == 0:
        out.insert(
            draw(st.integers(0, len(out))), draw(st.sampled_from(sorted(_PIECES)))
        )
    return out


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    pieces=_format(),
    noise=st.lists(st.tuples(st.integers(0, 200), st.binary(max_size=2)), max_size=2),
)
def test_differential_structured_formats(pieces: list[str], noise: list) -> None:
    fmt = "".join(pieces)
    outcomes = []
    for cls in (LogParser, PyLogParser):
        try:
            outcomes.append(cls(fmt, events=True))
        except ValueError:
            outcomes.append(None)
    c, py = outcomes
    assert (c is None) == (py is None), fmt
    if c is None or py is None:
        return
    values = {**_PIECES, " %% ": " % ", " % ": " % "}
    good = "".join(values.get(p, p) for p in pieces).encode("latin-1")
    bad = bytearray(good)
    for pos, junk in noise:
        bad[pos % (len(bad) + 1) : pos % (len(bad) + 1) + 1] = junk.replace(b"\n", b"")
    data = good + b"\n" + bytes(bad) + b"\n" + good + b" extra\n"
    assert c.feed(data) == py.feed(data), fmt
    assert c.summary() == py.summary(), fmt


def test_long_clients_and_paths_are_cut_to_bound_the_tables() -> None:
    """Tables hold `top` keys of at most 2048 bytes each, however long the
    lines: 60 kB paths that differ after the cut are one key, in both
    parsers, in the tables, the templates and the events."""
    data = b"".join(
        line(ip="c" * 3000 + str(i % 3), req=f"GET /{'1/' * 30_000}{i}?q HTTP/1.1")
        for i in range(6)
    ) + line(req="GET /" + "a" * 2046 + "?x HTTP/1.1")
    c, py, ce, pe = _both(data, [100_001, 200_003])
    assert c == py and ce == pe
    assert c["parsed"] == 7
    client, _ = c["clients"]
    assert client["key"] == "c" * 2048 and client["requests"] == 6
    long_path = "/" + "1/" * 1023 + "1"  # 2048 bytes
    assert [(p["key"], p["requests"]) for p in c["paths"]] == [
        (long_path, 6),
        ("/" + "a" * 2046, 1),
    ]
    assert c["templates"][0] == {
        "key": "/" + "{id}/" * 1023 + "{id}",
        "requests": 6,
        "error": 0,
    }
    assert {len(k) for k in ce[1] + ce[2]} <= {7, 2047, 2048}


def test_memory_stays_bounded_under_a_flood_of_long_distinct_paths() -> None:
    """1000 tracked paths of 60 kB each, each with its template, would take
    over 400 MB; cut keys keep the parser's memory small."""
    script = (
        "import resource\n"
        "from stanchion._core import LogParser\n"
        "p = LogParser(top=1000)\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "body = '/1' * 30000\n"
        "for i in range(2000):\n"
        "    p.feed(f'10.0.{i % 250}.1 - - [10/Oct/2000:13:55:36 -0700] "
        '"GET {body}/p{i} HTTP/1.1" 200 1 "-" "u"\\n\'.encode())\n'
        "s = p.summary()\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)\n"
    )
    import os
    import sys

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env
    )
    assert proc.returncode == 0, proc.stderr
    grown_kb = int(proc.stdout)
    assert grown_kb < 60_000, grown_kb


def test_both_parsers_bound_a_format_to_256_items() -> None:
    """Literal runs and fields (Apache's %t is "[", a field, "]"): 256
    are taken, 257 are refused, by the C parser and the reference alike."""
    fits = "%h" + " %x" * 126 + " %t"  # 1 + 2 * 126 + 3 items
    for cls in (LogParser, PyLogParser):
        p = cls(fits)
        p.feed(b"1.1.1.1" + b" x" * 126 + b" [10/Oct/2000:13:55:36 -0700]\n")
        assert p.summary()["parsed"] == 1
        for over in (fits + " %x", "%h" + " %x" * 200 + " %t", "$x " * 300):
            with pytest.raises(ValueError, match="too many fields"):
                cls(over)


def test_byte_sums_stop_at_the_largest_int64_in_both_parsers() -> None:
    big = line(size="9" * 18)
    data = big * 10 + line(ip="5.5.5.5", size="1")
    c, py, ce, pe = _both(data, [len(big) * 3 + 7])
    assert c == py and ce == pe
    top = 2**63 - 1
    assert c["bytes"] == c["clients"][0]["bytes"] == c["paths"][0]["bytes"] == top
    assert c["per_second"][0][2] == top
    assert c["clients"][1]["bytes"] == 1
