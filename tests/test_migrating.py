"""Migration from limits, flask-limiter, slowapi and django-ratelimit.

Every rate string the limits package accepts (flask-limiter and slowapi
parse with it) is read by stanchion.parse_rates to the same (N, period), or
differs in a way docs/migrating.md lists and the error message names. The
migration page's tables name every parameter of the peers' real signatures,
so a parameter a new release adds is noticed here.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from stanchion import Rate, parse_rates

from .conftest import require_peers

pytestmark = pytest.mark.docs

MIGRATING = Path(__file__).resolve().parent.parent / "docs" / "migrating.md"

# The differences, each with the words its ValueError carries.
NOT_ASCII = "non-ASCII or control byte"
COLON = "unexpected text ':'"
ZERO = "the number of requests must be positive"
ZERO_MULTIPLE = "the period multiple must be positive"
TOO_LARGE = "the number of requests is too large"
TOO_LONG = "the period must be between 1 ns and 30 years"
TOO_MANY = "too many rates (at most 8)"

# stanchion's seconds per unit; limits counts a year as 360 days.
UNIT_SECONDS = {
    "second": 1,
    "minute": 60,
    "hour": 3600,
    "day": 86400,
    "month": 30 * 86400,
    "year": 365 * 86400,
}
LIMITS_YEAR = 360 * 86400

# What Python's \s matches, as limits' regular expression sees it.
PY_SPACES = [chr(c) for c in range(0x110000) if re.fullmatch(r"\s", chr(c))]
ASCII_SPACES = [c for c in PY_SPACES if c in " \t\n\r\f\v"]


class Part(NamedTuple):
    """One generated rate in limits' notation, and what it means."""

    text: str
    amount: int
    multiple: int | None  # as written; None when absent
    unit: str  # singular, lower case
    colon: bool  # the ':' limits' pattern lets through before a separator


def _cases(word: str) -> st.SearchStrategy[str]:
    return st.lists(st.booleans(), min_size=len(word), max_size=len(word)).map(
        lambda ups: "".join(
            c.upper() if up else c for c, up in zip(word, ups, strict=True)
        )
    )


def _space(unicode: bool) -> st.SearchStrategy[str]:
    alphabet = st.sampled_from(PY_SPACES if unicode else ASCII_SPACES)
    return st.lists(alphabet, max_size=2).map("".join)


def _digits(value: st.SearchStrategy[int]) -> st.SearchStrategy[tuple[int, str]]:
    """A number and how it is written (leading zeros at times)."""
    return st.tuples(value, st.integers(0, 2)).map(
        lambda vz: (vz[0], "0" * vz[1] + str(vz[0]))
    )


def rare(
    usual: st.SearchStrategy[int], *odd: st.SearchStrategy[int]
) -> st.SearchStrategy[int]:
    """``usual`` nine times in ten, else one of ``odd``."""
    return st.sampled_from(range(10)).flatmap(
        lambda r: st.one_of(*odd) if r == 7 else usual
    )


@st.composite
def limits_rate(draw: st.DrawFn, unicode: bool) -> Part:
    sp = _space(unicode)
    # Mostly rates both read alike; at times a zero or a huge number.
    usual = st.integers(1, 1000)
    amount, amount_text = draw(
        _digits(rare(usual, st.just(0), st.integers(10**12 + 1, 10**14)))
    )
    per = draw(st.one_of(st.just("/"), _cases("per")))
    multiple: int | None = None
    multiple_text = ""
    if draw(st.booleans()):
        multiple, multiple_text = draw(
            _digits(rare(st.integers(1, 60), st.just(0), st.integers(61, 10**6)))
        )
    unit = draw(st.sampled_from(sorted(UNIT_SECONDS)))
    unit_text = draw(_cases(unit + draw(st.sampled_from(["", "s"]))))
    text = "".join(
        [
            draw(sp),
            amount_text,
            draw(sp),
            per,
            draw(sp),
            multiple_text,
            draw(sp),
            unit_text,
            draw(sp),
        ]
    )
    return Part(text, amount, multiple, unit, colon=False)


@st.composite
def limits_string(draw: st.DrawFn) -> tuple[str, list[Part]]:
    unicode = draw(st.sampled_from(range(10))) == 7
    parts = draw(st.lists(limits_rate(unicode), min_size=1, max_size=10))
    out = []
    for i, part in enumerate(parts):
        if i < len(parts) - 1 and draw(st.sampled_from(range(40))) == 7:
            parts[i] = part._replace(text=part.text + ":", colon=True)
        out.append(parts[i].text)
        if i < len(parts) - 1:
            out.append(draw(st.sampled_from(",;|")))
    return "".join(out), parts


def first_difference(parts: list[Part]) -> str | None:
    """The documented difference the parser meets first in this limits
    string (it reads rates left to right, each part in the order of
    these checks), or None when both must read it alike."""
    for i, p in enumerate(parts):
        if i == 8:
            return TOO_MANY
        if any(not c.isascii() or c in "\x1c\x1d\x1e\x1f" for c in p.text):
            return NOT_ASCII
        if p.amount == 0:
            return ZERO
        if p.amount > 10**12:
            return TOO_LARGE
        if p.multiple == 0:
            return ZERO_MULTIPLE
        if p.colon:
            return COLON
        if (p.multiple or 1) * UNIT_SECONDS[p.unit] > 30 * 365 * 86400:
            return TOO_LONG
    return None


def _limits_parse_many() -> Callable[[str], list[object]]:
    require_peers("limits")
    from limits import parse_many

    return parse_many  # type: ignore[return-value]


@settings(max_examples=300, deadline=None)
@given(limits_string())
@example(("1/year", [Part("1/year", 1, None, "year", False)]))
@example(("5 per 2 years", [Part("5 per 2 years", 5, 2, "year", False)]))
@example(("1/second|2/minute", [Part("1/second", 1, None, "second", False)] * 2))
@example(("10persecond", [Part("10persecond", 10, None, "second", False)]))
@example(("10 per 0 seconds", [Part("10 per 0 seconds", 10, 0, "second", False)]))
@example(("1/second:;2/minute", [Part("1/second:", 1, None, "second", True)] * 2))
@example(("1\xa0per\xa0second", [Part("1\xa0per\xa0second", 1, None, "second", False)]))
def test_every_limits_string_is_read_alike_or_refused_by_name(
    case: tuple[str, list[Part]],
) -> None:
    text, parts = case
    parse_many = _limits_parse_many()
    theirs = parse_many(text)  # the generator writes only what limits takes
    assert len(theirs) == len(parts)
    expected = first_difference(parts)
    if expected is not None:
        with pytest.raises(ValueError) as info:
            parse_rates(text)
        assert expected in str(info.value)
        return
    ours = parse_rates(text)
    assert len(ours) == len(theirs)
    for rate, item in zip(ours, theirs, strict=True):
        seconds = item.GRANULARITY.seconds * item.multiples  # type: ignore[attr-defined]
        assert rate.limit == item.amount  # type: ignore[attr-defined]
        if item.GRANULARITY.name == "year":  # type: ignore[attr-defined]
            # The one silent difference, listed in docs/migrating.md.
            assert seconds == LIMITS_YEAR * item.multiples  # type: ignore[attr-defined]
            assert rate.period == seconds * 365 / 360
        else:
            assert rate.period == seconds


def test_year_is_365_days_here_and_360_in_limits() -> None:
    parse_many = _limits_parse_many()
    (theirs,) = parse_many("1/year")
    assert theirs.get_expiry() == 360 * 86400  # type: ignore[attr-defined]
    assert parse_rates("1/year") == [Rate(1, 365 * 86400.0)]
    assert "360 days" in MIGRATING.read_text()


def test_python_spaces_beyond_ascii_exist() -> None:
    """The generator's Unicode spaces: what limits' \\s takes and the
    parser names as not ASCII."""
    assert "\xa0" in PY_SPACES and "\u3000" in PY_SPACES
    assert set(ASCII_SPACES) == set(" \t\n\r\f\v")


# ---- the settings tables ---------------------------------------------------


def _table_names(heading: str) -> set[str]:
    """First-column names (in backticks) of the table under a heading."""
    text = MIGRATING.read_text()
    start = text.index(heading)
    section = text[start : text.find("\n## ", start + 1)]
    names = set()
    for line in section.splitlines():
        if line.startswith("| `"):
            first = line.split("|")[1]
            names.update(re.findall(r"`([A-Za-z_][A-Za-z0-9_]*)`", first))
    return names


def _parameters(fn: Callable[..., object]) -> set[str]:
    return {
        p.name
        for p in inspect.signature(fn).parameters.values()
        if p.name not in ("self", "cls")
        and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    }


def test_flask_limiter_parameters_are_in_the_table() -> None:
    require_peers("flask_limiter")
    import flask_limiter

    names = _table_names("## flask-limiter")
    for fn in (
        flask_limiter.Limiter.__init__,
        flask_limiter.Limiter.limit,
        flask_limiter.Limiter.shared_limit,
    ):
        missing = _parameters(fn) - names
        assert not missing, f"{fn.__qualname__}: {sorted(missing)}"
    configs = {
        v
        for k, v in vars(flask_limiter.constants.ConfigVars).items()
        if not k.startswith("_") and isinstance(v, str)
    }
    missing = configs - names
    assert not missing, f"flask-limiter config keys: {sorted(missing)}"


def test_slowapi_parameters_are_in_the_table() -> None:
    require_peers("slowapi")
    import slowapi

    names = _table_names("## slowapi")
    for fn in (
        slowapi.Limiter.__init__,
        slowapi.Limiter.limit,
        slowapi.Limiter.shared_limit,
    ):
        missing = _parameters(fn) - names
        assert not missing, f"{fn.__qualname__}: {sorted(missing)}"
    # The keys of its config file (config_filename), one class of names.
    configs = {
        v
        for k, v in vars(slowapi.extension.C).items()
        if not k.startswith("_") and isinstance(v, str)
    }
    assert configs, "slowapi names no config keys: the scan is broken"
    missing = configs - names
    assert not missing, f"slowapi config keys: {sorted(missing)}"


def test_django_ratelimit_parameters_are_in_the_table() -> None:
    require_peers("django_ratelimit")
    from django_ratelimit import decorators

    names = _table_names("## django-ratelimit")
    missing = _parameters(decorators.ratelimit) - names
    assert not missing, f"ratelimit(): {sorted(missing)}"
    # Its settings: every RATELIMIT_* name its code reads.
    package = Path(decorators.__file__).parent
    settings_read = set()
    for path in package.rglob("*.py"):
        if "tests" in path.parts or path.name == "tests.py":
            continue
        settings_read.update(re.findall(r"\b(RATELIMIT_[A-Z_]+)\b", path.read_text()))
    assert settings_read, "django-ratelimit reads no settings: the scan is broken"
    missing = settings_read - names
    assert not missing, f"django-ratelimit settings: {sorted(missing)}"


def test_flask_limiter_recipes_of_the_table() -> None:
    """default_limits_per_method and application_limits, as the table
    writes them, with Flask's test client."""
    require_peers("flask")
    from flask import Flask

    import stanchion.wsgi
    from stanchion.flask import Stanchion

    app = Flask(__name__)
    Stanchion(app, default_limit="1/minute", key=lambda r: f"{r.client}:{r.method}")

    @app.route("/a", methods=["GET", "POST"])
    def a() -> str:
        return "ok"

    client = app.test_client()
    # One bucket per method: a GET does not spend the POST's.
    assert [client.get("/a").status_code, client.post("/a").status_code] == [200, 200]
    assert [client.get("/a").status_code, client.post("/a").status_code] == [429, 429]

    app = Flask(__name__)
    app.route("/b")(lambda: "ok")
    app.wsgi_app = stanchion.wsgi.RateLimitMiddleware(  # type: ignore[method-assign]
        app.wsgi_app, limit="3/minute", key=lambda r: "app"
    )
    client = app.test_client()
    codes = [
        client.get("/b", environ_base={"REMOTE_ADDR": f"10.0.0.{i}"}).status_code
        for i in range(5)
    ]
    # Every client spends the one application bucket.
    assert codes == [200, 200, 200, 429, 429]
