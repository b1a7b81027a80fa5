"""pause_from_answer: what a provider's answer says about waiting."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Mapping
from email.utils import formatdate
from http.client import HTTPMessage
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stanchion._upstream import MAX_VALUE, pause_from_answer, retry_after_seconds

NOW = 1_700_000_000.0  # 2023-11-14T22:13:20Z


def pause(status: int, headers: Any, **kw: Any) -> float | None:
    kw.setdefault("now", NOW)
    return pause_from_answer(status, headers, **kw)


def http_date(when: float) -> str:
    return formatdate(when, usegmt=True)


# -- Retry-After ------------------------------------------------------------


@pytest.mark.parametrize("status", [429, 503, 200, 301, 500])
def test_retry_after_seconds_on_any_status(status):
    assert pause(status, {"Retry-After": "7"}) == 7.0


def test_retry_after_fraction_and_spaces():
    assert pause(429, {"Retry-After": " 1.5 "}) == 1.5
    assert pause(429, {"Retry-After": "0"}) == 0.0


def test_retry_after_http_date():
    assert pause(429, {"Retry-After": http_date(NOW + 42)}) == 42.0


def test_retry_after_obsolete_date_forms():
    # RFC 850 and asctime, which recipients must accept (RFC 9110 5.6.7).
    rfc850 = "Tuesday, 14-Nov-23 22:14:00 GMT"
    asctime = "Tue Nov 14 22:14:00 2023"
    assert pause(429, {"Retry-After": rfc850}) == 40.0
    assert pause(429, {"Retry-After": asctime}) == 40.0


def test_retry_after_date_in_the_past_is_now():
    assert pause(429, {"Retry-After": http_date(NOW - 3600)}) == 0.0


def test_retry_after_date_with_an_offset():
    # 23:14:20 at +0100 is 22:14:20 GMT: 60 s from NOW.
    assert pause(429, {"Retry-After": "Tue, 14 Nov 2023 23:14:20 +0100"}) == 60.0


def test_retry_after_defaults_to_the_wall_clock():
    got = pause_from_answer(429, {"Retry-After": http_date(time.time() + 100)})
    assert got is not None and 97 <= got <= 100


def test_retry_after_ms_wins_for_its_precision():
    assert pause(429, {"Retry-After": "2", "Retry-After-Ms": "1500"}) == 1.5


def test_retry_after_wins_over_reset_headers():
    headers = {
        "Retry-After": "3",
        "X-RateLimit-Remaining": "0",
        "X-RateLimit-Reset": "60",
        "RateLimit": '"default";r=0;t=30',
    }
    assert pause(429, headers) == 3.0


def test_bad_retry_after_falls_back_to_the_reset():
    headers = {"Retry-After": "soon", "X-RateLimit-Reset": "12"}
    assert pause(429, headers) == 12.0


def test_first_valid_retry_after_of_several():
    pairs = [("Retry-After", "later"), ("Retry-After", "9"), ("Retry-After", "4")]
    assert pause(429, pairs) == 9.0
    # A list folded into one line, as requests joins repeated headers.
    assert pause(429, {"Retry-After": "120, 60"}) == 120.0


@pytest.mark.parametrize(
    "value",
    [
        "-5",
        "inf",
        "nan",
        "1e3",
        "0x10",
        "",
        " ",
        "5 s",
        "Wed, 32 Oct 2015 07:28:00 GMT",
    ],
)
def test_unusable_retry_after_is_ignored(value):
    assert pause(429, {"Retry-After": value}) is None


def test_retry_after_seconds_helper():
    assert retry_after_seconds("10", NOW) == 10.0
    assert retry_after_seconds(http_date(NOW + 5), NOW) == 5.0
    assert retry_after_seconds("Fri, 31 Dec 1999 23:59:59 GMT", NOW) == 0.0
    assert retry_after_seconds("soon", NOW) is None
    assert retry_after_seconds("9" * (MAX_VALUE + 1), NOW) is None


# -- resets when the budget is spent -----------------------------------------


@pytest.mark.parametrize("status", [429, 503])
def test_reset_delta_on_a_refusal(status):
    assert pause(status, {"X-RateLimit-Reset": "17"}) == 17.0
    assert pause(status, {"RateLimit-Reset": "8"}) == 8.0
    assert pause(status, {"X-RateLimit-Reset-After": "2.25"}) == 2.25


def test_reset_epoch_seconds():
    assert pause(429, {"X-RateLimit-Reset": str(int(NOW) + 45)}) == 45.0
    # A reset in the past: the budget is back.
    assert pause(429, {"X-RateLimit-Reset": str(int(NOW) - 45)}) == 0.0


def test_reset_epoch_milliseconds():
    assert pause(429, {"X-RateLimit-Reset": str(int(NOW * 1000) + 2500)}) == 2.5


def test_reset_neither_seconds_nor_milliseconds_is_ignored():
    assert pause(429, {"X-RateLimit-Reset": "9" * 18}) is None


def test_reset_hyphenated_names():
    headers = {"X-Rate-Limit-Remaining": "0", "X-Rate-Limit-Reset": str(int(NOW) + 9)}
    assert pause(200, headers) == 9.0


def test_reset_on_a_success_with_nothing_left():
    headers = {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "30"}
    assert pause(200, headers) == 30.0
    headers = {"RateLimit-Remaining": "0", "RateLimit-Reset": "11"}
    assert pause(200, headers) == 11.0


def test_remaining_counts_in_other_notations():
    assert pause(200, {"X-RateLimit-Remaining": "0.0", "X-RateLimit-Reset": "4"}) == 4.0
    assert pause(200, {"X-RateLimit-Remaining": "-1", "X-RateLimit-Reset": "4"}) == 4.0
    assert pause(200, {"X-RateLimit-Remaining": "0.5", "X-RateLimit-Reset": "4"}) == 4.0
    assert (
        pause(200, {"X-RateLimit-Remaining": "1.5", "X-RateLimit-Reset": "4"}) is None
    )
    # Unreadable: says nothing either way.
    assert (
        pause(200, {"X-RateLimit-Remaining": "none", "X-RateLimit-Reset": "4"}) is None
    )


def test_success_with_budget_left_says_nothing():
    headers = {"X-RateLimit-Remaining": "5", "X-RateLimit-Reset": "30"}
    assert pause(200, headers) is None
    assert pause(200, {"RateLimit": '"default";r=5;t=30'}) is None
    assert pause(200, {"RateLimit": "limit=10, remaining=5, reset=5"}) is None
    assert pause(200, {}) is None


def test_refusal_without_anything_usable_says_nothing():
    assert pause(429, {}) is None
    assert pause(503, {"X-RateLimit-Reset": "soon"}) is None
    assert pause(429, {"Content-Type": "text/plain"}) is None


def test_reset_delta_headers_come_before_the_unix_time():
    headers = {
        "X-RateLimit-Reset": str(int(NOW) + 60),
        "X-RateLimit-Reset-After": "1.5",
    }
    assert pause(429, headers) == 1.5


def test_reset_duration_headers():
    assert pause(429, {"x-ratelimit-reset-requests": "6m0s"}) == 360.0
    assert pause(429, {"x-ratelimit-reset-requests": "20ms"}) == 0.02
    headers = {
        "x-ratelimit-remaining-tokens": "0",
        "x-ratelimit-reset-tokens": "1h2m3.5s",
        "x-ratelimit-reset-requests": "1s",
    }
    assert pause(200, headers, max_seconds=7200) == 3723.5
    # Only the spent budget's reset counts.
    headers["x-ratelimit-remaining-requests"] = "0"
    headers["x-ratelimit-remaining-tokens"] = "9"
    assert pause(200, headers) == 1.0
    assert pause(429, {**headers, "x-ratelimit-remaining-requests": "3"}) == 3600.0
    assert pause(429, {"x-ratelimit-reset-requests": "6x"}) is None


# -- the IETF RateLimit field ------------------------------------------------


def test_ratelimit_field_old_form():
    assert pause(429, {"RateLimit": "limit=10, remaining=0, reset=5"}) == 5.0
    assert pause(200, {"RateLimit": "limit=10, remaining=0, reset=5"}) == 5.0


def test_ratelimit_field_structured_form():
    assert pause(200, {"RateLimit": '"default";r=0;t=30'}) == 30.0
    assert pause(429, {"RateLimit": "default;r=3;t=12"}) == 12.0


def test_ratelimit_field_several_quotas():
    # Two quotas spent: wait for both. One spent: wait for that one.
    both = '"burst";r=0;t=2, "day";r=0;t=600, "hour";r=10;t=40'
    assert pause(200, {"RateLimit": both}) == 600.0
    one = '"burst";r=0;t=2, "day";r=40;t=600'
    assert pause(200, {"RateLimit": one}) == 2.0
    # A refusal with no quota at 0: the one with the least left.
    assert pause(429, {"RateLimit": '"a";r=3;t=9, "b";r=1;t=4'}) == 4.0


def test_ratelimit_field_quoted_separators():
    assert pause(200, {"RateLimit": '"a,b;c";r=0;t=7'}) == 7.0


def test_ratelimit_field_wins_over_reset_headers():
    headers = {"RateLimit": '"default";r=0;t=30', "X-RateLimit-Reset": "99"}
    assert pause(429, headers) == 30.0


def test_remaining_from_a_header_reset_from_the_field():
    headers = {"RateLimit-Remaining": "0", "RateLimit": '"q";t=20'}
    assert pause(200, headers) == 20.0


# -- header containers -------------------------------------------------------


HEADERS = {"x-ratelimit-remaining": "0", "x-ratelimit-reset": "21"}


class CaseInsensitive(Mapping[str, str]):
    """A requests-style mapping: lookups in any case, the names as given
    when iterated."""

    def __init__(self, items: dict[str, str]) -> None:
        self._items = {k.lower(): (k, v) for k, v in items.items()}

    def __getitem__(self, name: str) -> str:
        return self._items[name.lower()][1]

    def __iter__(self) -> Iterator[str]:
        return (k for k, _ in self._items.values())

    def __len__(self) -> int:
        return len(self._items)


def _message(items: dict[str, str]) -> HTTPMessage:
    """urllib's headers (an email.message.Message)."""
    message = HTTPMessage()
    for name, value in items.items():
        message[name] = value
    return message


def _forms() -> list[Any]:
    upper = {k.upper(): v for k, v in HEADERS.items()}
    return [
        HEADERS,
        upper,
        {k.title(): v for k, v in HEADERS.items()},
        httpx.Headers(upper),
        httpx.Response(200, headers=upper).headers,
        CaseInsensitive(upper),
        _message(upper),
        list(upper.items()),
        tuple((k.encode(), v.encode()) for k, v in upper.items()),
        [[bytearray(k.encode()), v] for k, v in upper.items()],
        {k: [v] for k, v in upper.items()},
        iter(list(upper.items())),
    ]


@pytest.mark.parametrize("headers", _forms(), ids=lambda h: type(h).__name__)
def test_header_containers(headers):
    assert pause(200, headers) == 21.0


def test_httpx_headers_keep_repeated_values():
    headers = httpx.Headers([("Retry-After", "nope"), ("Retry-After", "6")])
    assert pause(429, headers) == 6.0
    message = HTTPMessage()
    message["Retry-After"] = "nope"
    message["retry-after"] = "6"
    assert pause(429, message) == 6.0


def test_latin1_bytes_are_read():
    assert pause(429, [(b"Retry-After", b"\xe9")]) is None
    assert pause(429, [(b"Retry-After", b"8")]) == 8.0


def test_none_headers_say_nothing():
    assert pause(429, None) is None


def test_malformed_items_are_skipped():
    items: list[Any] = [
        ("Retry-After",),
        5,
        ("a", "b", "c"),
        (None, "3"),
        ("Retry-After", "4"),
    ]
    assert pause(429, items) == 4.0


# -- bounds and bad arguments ----------------------------------------------------


def test_pause_is_clamped():
    assert pause(429, {"Retry-After": "99999999"}) == 3600.0
    assert pause(429, {"Retry-After": "99999999"}, max_seconds=60) == 60.0
    assert pause(429, {"X-RateLimit-Reset": str(int(NOW) + 10**8)}) == 3600.0
    assert pause(429, {"Retry-After": "9" * 39}) == 3600.0


def test_overlong_values_are_ignored():
    assert pause(429, {"Retry-After": " " * MAX_VALUE + "5"}) is None
    assert pause(429, {"Retry-After": " " * (MAX_VALUE - 1) + "5"}) == 5.0


def test_bad_arguments():
    with pytest.raises(TypeError):
        pause_from_answer("429", {})  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        pause_from_answer(True, {})
    with pytest.raises(TypeError):
        pause_from_answer(429, 5)
    with pytest.raises(TypeError):
        pause_from_answer(429, "Retry-After: 5")
    with pytest.raises(ValueError):
        pause_from_answer(429, {}, now=math.nan)
    with pytest.raises(TypeError):
        pause_from_answer(429, {}, now="now")  # type: ignore[arg-type]
    for bad in (0, -1, math.inf, math.nan):
        with pytest.raises(ValueError):
            pause_from_answer(429, {}, max_seconds=bad)


def test_long_hostile_inputs_take_bounded_time():
    many = [("X-Junk", "x")] * 100_000 + [("Retry-After", "5")]
    big = {"RateLimit": ('"' + "a;" * 400) + ", " * 100}
    start = time.perf_counter()
    assert pause(429, many) is None  # past the lines read
    assert pause(429, big) is None
    for _ in range(200):
        pause(200, {"RateLimit": ",;=" * 333, "Retry-After": "\\" * 999})
    # Linear: a quadratic parse of these would take tens of seconds.
    assert time.perf_counter() - start < 5.0


_NAMES = st.sampled_from(
    [
        "Retry-After",
        "retry-after-ms",
        "RateLimit",
        "RateLimit-Reset",
        "RateLimit-Remaining",
        "X-RateLimit-Reset",
        "X-RateLimit-Reset-After",
        "X-RateLimit-Remaining",
        "x-ratelimit-reset-requests",
        "x-ratelimit-remaining-tokens",
    ]
)
_VALUES = st.one_of(
    st.text(max_size=60),
    st.text(alphabet='0123456789.-,;=" rtemainglsc', max_size=60),
    st.integers(min_value=-(10**20), max_value=10**20).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.binary(max_size=40),
    st.datetimes().map(lambda d: d.strftime("%a, %d %b %Y %H:%M:%S GMT")),
)


@settings(max_examples=400, deadline=None)
@given(
    status=st.integers(min_value=100, max_value=599),
    pairs=st.lists(st.tuples(_NAMES, _VALUES), max_size=6),
    now=st.floats(min_value=0, max_value=4e9),
    max_seconds=st.floats(min_value=1e-3, max_value=1e6),
)
def test_hostile_headers_never_raise(status, pairs, now, max_seconds):
    got = pause_from_answer(status, pairs, now=now, max_seconds=max_seconds)
    assert got is None or (math.isfinite(got) and 0.0 <= got <= max_seconds)
    got = pause_from_answer(status, dict(pairs), now=now, max_seconds=max_seconds)
    assert got is None or (math.isfinite(got) and 0.0 <= got <= max_seconds)
