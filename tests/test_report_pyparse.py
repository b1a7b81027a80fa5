"""The pure-Python access-log parser pins REPORT_SPEC on hand-written lines:
it is the oracle the C parser (stanchion._core.LogParser) is checked
against, so every expected value here is worked out by hand."""

from __future__ import annotations

import calendar

import pytest

from stanchion.report._pyparse import (
    PyLogParser,
    bucket,
    compile_format,
    percentiles,
    template,
)


def epoch(y, mo, d, h=0, mi=0, s=0):
    return calendar.timegm((y, mo, d, h, mi, s, 0, 0, 0))


def line(ip="1.2.3.4", when="10/Oct/2000:13:55:36 -0700", req="GET / HTTP/1.1",
         status="200", size="100", ref="-", ua="curl/8"):  # fmt: skip
    return f'{ip} - - [{when}] "{req}" {status} {size} "{ref}" "{ua}"\n'.encode()


def parse(data, fmt="combined", chunks=None, **kw):
    p = PyLogParser(fmt, **kw)
    if chunks is None:
        p.feed(data)
    else:
        for i in range(0, len(data), chunks):
            p.feed(data[i : i + chunks])
    p.finish()
    return p.summary()


T0 = epoch(2000, 10, 10, 20, 55, 36)  # 13:55:36 -0700


# -- formats -------------------------------------------------------------


def test_combined_line_fields():
    s = parse(line(req="POST /a/b?x=1&y=2 HTTP/1.0", status="201", size="2326"))
    assert s["lines"] == s["parsed"] == 1 and s["malformed"] == 0
    assert s["first_ts"] == s["last_ts"] == float(T0)
    assert s["bytes"] == 2326
    assert s["status"] == {"201": 1}
    assert s["methods"] == {"POST": 1}
    assert [p["key"] for p in s["paths"]] == ["/a/b"]
    assert s["clients"][0]["key"] == "1.2.3.4"
    assert s["per_second"] == [[T0, 1, 2326, 0, 0]]
    assert s["distinct_exact"] is True


def test_common_format_and_trailing_fields_ignored():
    common = b'10.0.0.1 - frank [10/Oct/2000:13:55:36 -0700] "GET /x HTTP/1.0" 404 -\n'
    s = parse(common, "common")
    assert s["parsed"] == 1 and s["bytes"] == 0 and s["status"] == {"404": 1}
    # A combined line read as common: what follows the format is ignored.
    assert parse(line(), "common")["parsed"] == 1
    # A common line read as combined lacks the referer: malformed.
    assert parse(common, "combined")["malformed"] == 1


def test_nginx_default_equals_combined():
    data = line() + line(ip="5.6.7.8", status="503") + b"junk\n"
    assert parse(data, "nginx") == parse(data, "combined")


def test_nginx_custom_format_iso_time_and_opaque_fields():
    fmt = '$remote_addr [$time_iso8601] "$request" $status $bytes_sent $request_time ${upstream_x}'
    data = (
        b'9.9.9.9 [2000-10-10T13:55:36-07:00] "GET /u/1 HTTP/2.0" 302 10 0.004 -\n'
        b'9.9.9.9 [2000-10-10T20:55:37Z] "HEAD /u/2" 200 5 0.1 x\n'
    )
    s = parse(data, fmt)
    assert s["parsed"] == 2
    assert s["first_ts"] == T0 and s["last_ts"] == T0 + 1
    assert s["methods"] == {"GET": 1, "HEAD": 1}
    assert s["templates"] == [{"key": "/u/{id}", "requests": 2, "error": 0}]


def test_apache_logformat_with_escaped_quotes_and_modifiers():
    fmt = r"%a %l %u %t \"%r\" %>s %B %D \"%{User-Agent}i\""
    data = (
        b'::1 - - [01/Jan/2024:00:00:00 +0000] "GET / HTTP/1.1" 200 7 1234 "ua \\" q"\n'
    )
    s = parse(data, fmt)
    assert s["parsed"] == 1
    assert s["clients"][0]["key"] == "::1"
    assert s["first_ts"] == epoch(2024, 1, 1)


def test_quoted_field_with_escaped_quote():
    s = parse(line(ua='Mozilla \\"x\\" 5', ref='a \\" b'))
    assert s["parsed"] == 1


@pytest.mark.parametrize(
    "fmt",
    [
        "%l %u %t",  # no client
        "$remote_addr $status",  # no time
        "%h%t",  # two fields with nothing between
        "apache",  # unknown name
        "%h %t %",  # a dangling %
        "$remote_addr $ [$time_local]",  # $ without a name
    ],
)
def test_bad_formats(fmt):
    with pytest.raises(ValueError):
        PyLogParser(fmt)


def test_bad_arguments():
    with pytest.raises(TypeError):
        PyLogParser(42)
    with pytest.raises(ValueError):
        PyLogParser(top=0)
    with pytest.raises(TypeError):
        PyLogParser(top=True)
    for windows, exc in [
        ((), ValueError),
        ((1, 2, 3, 4, 5), ValueError),
        ((1, 1), ValueError),
        ((0,), ValueError),
        ((1.5,), TypeError),
        (60, TypeError),
    ]:
        with pytest.raises(exc):
            PyLogParser(windows=windows)
    with pytest.raises(TypeError):
        PyLogParser(events=1)
    p = PyLogParser()
    with pytest.raises(TypeError):
        p.feed("text")
    p.finish()
    with pytest.raises(ValueError):
        p.feed(b"")
    with pytest.raises(ValueError):
        p.finish()


def test_first_time_field_wins():
    _, kinds = compile_format("$remote_addr [$time_local] $time_iso8601")
    assert "time" in kinds and "iso" not in kinds


# -- malformed lines ------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        line(when="10/Oct/2000:13:55:36"),  # no offset
        line(when="10/oct/2000:13:55:36 -0700"),  # month case
        line(when="31/Apr/2000:13:55:36 -0700"),  # no such day
        line(when="29/Feb/2001:13:55:36 +0000"),  # not a leap year
        line(when="10/Oct/2000:24:00:00 +0000"),
        line(when="10/Oct/2000:13:60:00 +0000"),
        line(when="10/Oct/1969:13:00:00 +0000"),
        line(when="01/Jan/1970:00:30:00 +0100"),  # before the epoch in UTC
        line(when="10/Oct/2000:13:55:36 -0760"),
        line(status="20"),
        line(status="2000"),
        line(status="OK!"),
        line(size="12a"),
        line(size=""),
        line(req="-"),  # nginx's bad request
        line(req="GET"),
        line(req="get / HTTP/1.1"),
        line(req="GET  / HTTP/1.1"),
        line(req="GET / HTTP/1.1 extra"),
        line(req="\\x16\\x03\\x01"),
        b' - - [10/Oct/2000:13:55:36 -0700] "GET / HTTP/1.1" 200 1 "-" "-"\n',
        b'1.2.3.4 - - [10/Oct/2000:13:55:36 -0700] "GET / HTTP/1.1" 200 1 "-" "-\n',
    ],
)
def test_malformed(bad):
    s = parse(line() + bad)
    assert (s["lines"], s["parsed"], s["malformed"]) == (2, 1, 1)
    text = bad.rstrip(b"\n").decode("latin-1")
    assert s["malformed_examples"] == [[2, text]]


def test_leap_second_and_leap_day_parse():
    s = parse(
        line(when="29/Feb/2000:23:59:60 +0000")
        + line(when="01/Mar/2000:00:00:00 +0000")
    )
    assert s["parsed"] == 2
    assert s["first_ts"] == s["last_ts"] == epoch(2000, 3, 1)


def test_examples_first_five_line_numbers_count_empty_lines_and_truncate():
    data = b"\n\r\n" + b"".join(b"bad %d\n" % i for i in range(7)) + b"x" * 300 + b"\n"
    s = parse(data)
    assert s["lines"] == 8  # the two empty lines are not counted
    assert s["malformed"] == 8
    assert s["malformed_examples"] == [[3 + i, f"bad {i}"] for i in range(5)]
    s = parse(b"\xff" * 300 + b"\r\n")
    assert s["malformed_examples"] == [[1, "\xff" * 200]]


def test_crlf_and_no_final_newline():
    data = line().replace(b"\n", b"\r\n") + line().rstrip(b"\n")
    s = parse(data)
    assert s["parsed"] == 2 and s["malformed"] == 0


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64, 1000])
def test_chunk_splits_change_nothing(size):
    data = (
        b"".join(
            line(ip=f"10.0.0.{i % 3}", status=("404" if i % 4 == 0 else "200"))
            for i in range(20)
        )
        + b"bad\r\n\n"
        + line().rstrip(b"\n")
    )
    assert parse(data, chunks=size) == parse(data)


def test_events_per_chunk_only_parsed_lines():
    p = PyLogParser(events=True)
    first = line(ip="a", req="GET /p?q HTTP/1.1", status="404")
    ev = p.feed(first + b"bad\n" + first[:10])
    assert ev == ([T0 * 10**9], ["a"], ["/p"], [404])
    ev = p.feed(first[10:-1])
    assert ev == ([], [], [], [])
    assert p.finish() == ([T0 * 10**9], ["a"], ["/p"], [404])
    assert PyLogParser().feed(first) is None


def test_methods_first_sixteen_then_other():
    data = b"".join(line(req=f"M{chr(65 + i)} / HTTP/1.1") for i in range(18))
    s = parse(data + line(req="MA /x"))
    assert len(s["methods"]) == 17
    assert s["methods"]["OTHER"] == 2
    assert s["methods"]["MA"] == 2


def test_per_second_counts_errors_and_bytes():
    data = (
        line(when="10/Oct/2000:13:55:37 -0700", status="500", size="5")
        + line(status="404", size="-")
        + line(status="200", size="3")
        + line(when="10/Oct/2000:13:55:37 -0700", status="503", size="1")
    )
    s = parse(data)
    assert s["per_second"] == [[T0, 2, 3, 1, 0], [T0 + 1, 2, 6, 0, 2]]
    assert s["status"] == {"500": 1, "404": 1, "200": 1, "503": 1}
    c = s["clients"][0]
    assert (c["requests"], c["bytes"], c["n4xx"], c["n5xx"]) == (4, 9, 1, 2)


# -- templates -------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/users/42/posts/7", "/users/{id}/posts/{id}"),
        ("/", "/"),
        ("/a/0", "/a/{id}"),
        ("/o/123e4567-e89b-12d3-a456-426614174000", "/o/{id}"),
        ("/o/123E4567-E89B-12D3-A456-426614174000/x", "/o/{id}/x"),
        ("/o/123e4567e89b12d3a456426614174000", "/o/{id}"),
        ("/h/0123456789abcdef", "/h/{id}"),
        ("/h/0123456789abcde", "/h/0123456789abcde"),  # 15 hex digits
        ("/v2/x1", "/v2/x1"),
        ("/a//b/", "/a//b/"),
        ("/n/\u0663", "/n/\u0663"),  # not an ASCII digit
        ("/static/app.js", "/static/app.js"),
    ],
)
def test_template(path, expected):
    assert template(path) == expected


# -- space-saving tables -----------------------------------------------------


def test_space_saving_eviction_and_tie_rule():
    # top=2: a(2 requests), b(1), then c arrives: b is evicted (fewest),
    # c takes requests 1 + 1 = 2 with error 1.
    order = ["a", "a", "b", "c"]
    s = parse(b"".join(line(ip=k, size="10") for k in order), top=2)
    assert s["distinct_exact"] is False
    got = {c["key"]: (c["requests"], c["error"], c["bytes"]) for c in s["clients"]}
    assert got == {"a": (2, 0, 20), "c": (2, 1, 10)}
    # Ties by key in the listing: a and c both have 2.
    assert [c["key"] for c in s["clients"]] == ["a", "c"]

    # Tie on requests: x and y both 1; y was updated last, so x goes.
    s = parse(b"".join(line(ip=k) for k in ["x", "y", "z"]), top=2)
    assert {c["key"] for c in s["clients"]} == {"y", "z"}
    # Updating x again makes y the oldest of the tied entries.
    s = parse(b"".join(line(ip=k) for k in ["x", "y", "x", "y", "x", "z"]), top=2)
    # x=3, y=2 -> z evicts y: z = 3 with error 2.
    got = {c["key"]: (c["requests"], c["error"]) for c in s["clients"]}
    assert got == {"x": (3, 0), "z": (3, 2)}


def test_space_saving_chain_matches_a_model():
    """A long random stream against a straightforward model of the rule."""
    import random

    rng = random.Random(7)
    keys = [f"k{rng.randrange(12)}" for _ in range(400)]
    model: dict[str, list[int]] = {}  # key -> [requests, error, seq]
    for seq, k in enumerate(keys):
        if k in model:
            model[k][0] += 1
            model[k][2] = seq
        elif len(model) < 5:
            model[k] = [1, 0, seq]
        else:
            victim = min(model, key=lambda v: (model[v][0], model[v][2]))
            n = model.pop(victim)[0]
            model[k] = [n + 1, n, seq]
    s = parse(b"".join(line(ip=k) for k in keys), top=5)
    got = {c["key"]: [c["requests"], c["error"]] for c in s["clients"]}
    assert got == {k: v[:2] for k, v in model.items()}
    # Paths and templates use the same table; here all share one path.
    assert s["paths"] == [
        {"key": "/", "requests": 400, "bytes": 40000, "n4xx": 0, "n5xx": 0, "error": 0}
    ]


def test_evicted_entry_starts_fresh_rates_and_times():
    data = (
        line(ip="a", when="10/Oct/2000:13:55:36 -0700")
        + line(ip="a", when="10/Oct/2000:13:55:36 -0700")
        + line(ip="b", when="10/Oct/2000:13:55:37 -0700", status="404")
        + line(ip="c", when="10/Oct/2000:13:55:40 -0700")
    )
    s = parse(data, top=2)
    c = next(c for c in s["clients"] if c["key"] == "c")
    assert (c["requests"], c["error"], c["n4xx"]) == (2, 1, 0)
    assert c["first_ts"] == c["last_ts"] == T0 + 4
    assert c["rates"]["1"] == [1, 1, 1, 1]


# -- rate histograms ---------------------------------------------------------


def test_bucket_rounding():
    assert [bucket(v) for v in (0, 1, 63)] == [0, 1, 63]
    assert bucket(64) == 64
    assert bucket(127) == 126  # 0b1111111 -> top 6 bits 0b1111110
    assert bucket(129) == 128
    assert bucket(1000) == 992  # 0b1111101000 -> 0b1111100000
    assert bucket(2**40 + 12345) == 2**40


def test_percentile_rule():
    # 100 samples: 1 x 90, 10 x 9, 99 x 1 -> p50 = 1 (target 50),
    # p90 = 1 (target 90), p99 = 10 (target 99).
    hist = {1: 90, 10: 9, 99: 1}
    assert percentiles(hist, 99) == [1, 1, 10, 99]
    # 3 samples: targets ceil(1.5)=2, ceil(2.7)=3, ceil(2.97)=3.
    assert percentiles({2: 1, 5: 1, 7: 1}, 7) == [5, 7, 7, 7]
    assert percentiles({4: 1}, 4) == [4, 4, 4, 4]


def _at(sec):
    t = T0 + sec
    day = 10 + (t - epoch(2000, 10, 10)) // 86400
    return f"{day:02d}/Oct/2000:{(t // 3600) % 24:02d}:{(t // 60) % 60:02d}:{t % 60:02d} +0000"


def test_client_rates_windows_histogram_and_max():
    # Seconds (relative to T0 = xx:55:36): 0 x3, 1 x1, 5 x2, 30 x70.
    # 1-s windows: samples 3, 1, 2, 70 -> bucket(70) = 70 (< 128: 70 =
    # 0b1000110, 7 bits, e=1 -> 70); sorted 1,2,3,70: p50 target 2 -> 2,
    # p90 target 4 -> 70, p99 -> 70, max 70.
    # 60-s windows aligned to epoch minutes: T0 is hh:55:36, so seconds 0..23
    # are one window (6 requests) and second 30 (hh:56:06) the next (70).
    seconds = [0] * 3 + [1] + [5] * 2 + [30] * 70
    s = parse(b"".join(line(when=_at(x)) for x in seconds), windows=(1, 60))
    rates = s["clients"][0]["rates"]
    assert rates["1"] == [2, 70, 70, 70]
    assert rates["60"] == [6, 70, 70, 70]


def test_rate_bucket_rounding_shows_in_percentiles_not_max():
    seconds = [0] * 127 + [1]
    s = parse(b"".join(line(when=_at(x)) for x in seconds), windows=(1,))
    # samples 127 (bucket 126) and 1: p50 target 1 -> 1, p90/p99 -> 126.
    assert s["clients"][0]["rates"] == {"1": [1, 126, 126, 127]}


def test_out_of_order_line_counts_in_current_window():
    seconds = [0, 5, 2, 5, 9]
    s = parse(b"".join(line(when=_at(x)) for x in seconds), windows=(1, 7))
    # 1-s windows: 0:1, 5:3 (the 2 counts in the open window 5), 9:1.
    assert s["clients"][0]["rates"]["1"] == [1, 3, 3, 3]
    # per_second still files the line under its own second.
    assert [row[:2] for row in s["per_second"]] == [
        [T0, 1], [T0 + 2, 1], [T0 + 5, 2], [T0 + 9, 1]
    ]  # fmt: skip
    # first/last are min/max.
    assert s["clients"][0]["first_ts"] == T0 and s["clients"][0]["last_ts"] == T0 + 9


def test_summary_does_not_close_open_windows():
    p = PyLogParser(windows=(1,))
    p.feed(line(when=_at(0)) * 2)
    assert p.summary()["clients"][0]["rates"]["1"] == [2, 2, 2, 2]
    assert p.summary()["clients"][0]["rates"]["1"] == [2, 2, 2, 2]
    p.feed(line(when=_at(0)))
    p.finish()
    assert p.summary()["clients"][0]["rates"]["1"] == [3, 3, 3, 3]


def test_empty_input():
    s = parse(b"")
    assert s["lines"] == s["parsed"] == 0
    assert s["first_ts"] is None and s["last_ts"] is None
    assert s["clients"] == s["paths"] == s["templates"] == s["per_second"] == []
