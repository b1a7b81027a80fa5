from __future__ import annotations

import pytest

import stanchion
from stanchion import Rate, parse_rates


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10/second", [Rate(10, 1.0)]),
        ("10/s", [Rate(10, 1.0)]),
        ("10 per minute", [Rate(10, 60.0)]),
        ("10 PER Minute", [Rate(10, 60.0)]),
        ("100 per 2 hours", [Rate(100, 7200.0)]),
        ("100/2 hours", [Rate(100, 7200.0)]),
        ("5/s;1000/day", [Rate(5, 1.0), Rate(1000, 86400.0)]),
        ("5/s, 1000/day", [Rate(5, 1.0), Rate(1000, 86400.0)]),
        ("5/s|1000/day", [Rate(5, 1.0), Rate(1000, 86400.0)]),
        ("1/second | 2/minute; 3/hour", [Rate(1, 1.0), Rate(2, 60.0), Rate(3, 3600.0)]),
        ("10persecond", [Rate(10, 1.0)]),
        ("10 per2 minutes", [Rate(10, 120.0)]),
        ("  3 / hour ", [Rate(3, 3600.0)]),
        ("1/month", [Rate(1, 30 * 86400.0)]),
        ("1 per year", [Rate(1, 365 * 86400.0)]),
        ("7/d", [Rate(7, 86400.0)]),
        ("0.5/second", [Rate(0.5, 1.0)]),
        ("90 per 1.5 minutes", [Rate(90, 90.0)]),
        ("2/min", [Rate(2, 60.0)]),
        ("2/m", [Rate(2, 60.0)]),
        ("2/h", [Rate(2, 3600.0)]),
    ],
)
def test_parse(text: str, expected: list[Rate]) -> None:
    assert parse_rates(text) == expected


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "expected a number"),
        ("ten/second", "'ten/second'"),
        ("10/fortnight", "unknown unit 'fortnight'"),
        ("10 second", "expected '/' or 'per'"),
        ("10/", "expected a unit"),
        ("0/second", "must be positive"),
        ("10/second;", "expected a number"),
        ("10/second;5/eon", "'5/eon'"),
        ("10/second extra", "unexpected text 'extra'"),
        ("10 per 0 seconds", "multiple must be positive"),
        ("-5/second", "expected a number"),
        ("1e3/second", "expected '/' or 'per'"),
        ("10/100 years", "between 1 ns and 30 years"),
        (";".join(["1/s"] * 9), "too many rates"),
        ("|".join(["1/s"] * 9), "too many rates"),
        ("1/second|", "expected a number"),
        ("10\u00a0per second", "non-ASCII or control byte 0xC2"),
        ("10/s\u00e9cond", "non-ASCII or control byte 0xC3"),
        ("10/second\x1c", "non-ASCII or control byte 0x1C"),
        ("1/second:;2/minute", "unexpected text ':'"),
        ("10 person", "unknown unit 'son'"),
    ],
)
def test_parse_errors_name_the_bad_part(text: str, fragment: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_rates(text)
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        # A long part is cut at 57 bytes: never inside a character (the
        # message would not decode: UnicodeDecodeError, not the reason).
        ("1" * 56 + "\u00e9" + "x" * 10, "'" + "1" * 56 + "..."),
        ("1/second;" + "x" * 56 + "\u20ac" + "y" * 10, "'" + "x" * 56 + "..."),
        ("x" * 55 + "\U0001f600" + "/second", "'" + "x" * 55 + "..."),
        # A NUL or control byte is shown as '?', not cut the text short.
        ("10/second\x00;5/minute", "'10/second?'"),
        ("10/sec\x00ond", "'10/sec?ond'"),
    ],
)
def test_parse_errors_show_the_part_whatever_its_bytes(text: str, shown: str) -> None:
    for parse in (parse_rates, stanchion.Limiter):
        with pytest.raises(ValueError) as info:
            parse(text)
        assert type(info.value) is ValueError
        assert f"invalid rate {shown}" in str(info.value)
        assert "non-ASCII or control byte" in str(info.value)


def test_parse_rejects_non_str() -> None:
    with pytest.raises(TypeError, match="must be a str"):
        parse_rates(10)  # type: ignore[arg-type]


def test_rate_str_round_trips() -> None:
    for text in [
        "10/second",
        "100 per 2 hours",
        "5/minute",
        "1/day",
        "3 per 10 seconds",
    ]:
        (rate,) = parse_rates(text)
        assert parse_rates(str(rate)) == [rate]
    assert str(Rate(10, 1.0)) == "10/second"
    assert str(Rate(100, 7200.0)) == "100 per 2 hours"


def test_limiter_accepts_rate_objects_and_lists(clock: object) -> None:
    a = stanchion.Limiter([Rate(2, 1.0), "5/minute"])
    assert a.rates == (Rate(2, 1.0), Rate(5, 60.0))
    b = stanchion.Limiter(Rate(3, 2.0))
    assert b.rates == (Rate(3, 2.0),)
    assert [b.hit("k").allowed for _ in range(4)] == [True, True, True, False]
