"""_core.RateHeaders renders the rate limit headers byte for byte as the
reference below, written from the header rules (RateLimit-Policy,
RateLimit, X-RateLimit-*), says."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stanchion._adapt import outer_headers
from stanchion._core import Decision, RateHeaders

NS = 10**9
INT64_MAX = 2**63 - 1
# A Decision's times are below 2**62 ns (given in seconds, as floats).
MAX_NS = 2**61


def ceil_s(ns: int) -> int:
    """Whole seconds, rounded up."""
    q, r = divmod(ns, NS)
    return q + (1 if r else 0)


def reference(
    policy: str,
    names: tuple[str, ...],
    capacities: tuple[int, ...],
    ietf: bool,
    x: bool,
    d: Decision,
) -> list[tuple[str, str]]:
    """The headers for one decision, in Python."""
    # Several rates: the decision's limit picks the first rate with that
    # capacity; a limit no rate has (or a single rate) gets the first name.
    name = names[0]
    if len(names) > 1:
        for n, c in zip(names, capacities, strict=True):
            if c == d.limit:
                name = n
                break
    reset = ceil_s(d.reset_after_ns)
    t = reset if d.allowed else ceil_s(d.retry_after_ns)
    headers: list[tuple[str, str]] = []
    if ietf:
        if policy != "":
            headers.append(("RateLimit-Policy", policy))
        headers.append(("RateLimit", name + ";r=" + str(d.remaining) + ";t=" + str(t)))
    if x:
        headers += [
            ("X-RateLimit-Limit", str(d.limit)),
            ("X-RateLimit-Remaining", str(d.remaining)),
            ("X-RateLimit-Reset", str(reset)),
        ]
    return headers


def raw(pairs: list[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    return [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in pairs]


# Boundaries: 0, exact multiples of a second and one ns either side.
ns_values = st.one_of(
    st.integers(0, MAX_NS),
    st.integers(0, 10**6).flatmap(
        lambda s: st.sampled_from([s * NS - 1, s * NS, s * NS + 1]).filter(
            lambda v: 0 <= v <= MAX_NS
        )
    ),
    st.sampled_from([0, 1, NS - 1, NS, NS + 1, MAX_NS]),
)
counts = st.one_of(
    st.integers(0, 1000), st.integers(0, INT64_MAX), st.sampled_from([0, INT64_MAX])
)
sf_names = st.text(
    st.characters(min_codepoint=32, max_codepoint=126), min_size=0, max_size=30
).map(lambda s: '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"')


@st.composite
def setups(draw: Any) -> tuple[str, tuple[str, ...], tuple[int, ...], bool, bool]:
    n = draw(st.integers(1, 4))
    names = tuple(draw(st.lists(sf_names, min_size=n, max_size=n)))
    caps = tuple(draw(st.lists(st.integers(1, 50), min_size=n, max_size=n)))
    policy = draw(
        st.one_of(
            st.just(""),
            st.just(
                ", ".join(f"{nm};q={c};w=60" for nm, c in zip(names, caps, strict=True))
            ),
            st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40),
        )
    )
    return policy, names, caps, draw(st.booleans()), draw(st.booleans())


@st.composite
def decisions(draw: Any, caps: tuple[int, ...]) -> Decision:
    limit = draw(st.one_of(st.sampled_from(caps), counts))
    # The constructor takes seconds: the reference reads the ns fields
    # the Decision holds, whatever the float rounding made of them.
    reset = draw(ns_values) / NS
    retry = draw(ns_values) / NS
    return Decision(draw(st.booleans()), limit, draw(counts), reset, retry)


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_pairs_match_the_reference(data: Any) -> None:
    policy, names, caps, ietf, x = data.draw(setups())
    h = RateHeaders(policy, names, caps, ietf, x)
    for _ in range(4):
        d = data.draw(decisions(caps))
        want = reference(policy, names, caps, ietf, x, d)
        assert h.pairs(d) == want
        assert h.raw_pairs(d) == raw(want)
        out: list[Any] = [("Other", "1")]
        h.extend(d, out)
        assert out == [("Other", "1"), *want]
        out_raw: list[Any] = [(b"other", b"1")]
        h.extend_raw(d, out_raw)
        assert out_raw == [(b"other", b"1"), *raw(want)]
        for k, v in h.pairs(d):
            assert type(k) is str and type(v) is str
        for kb, vb in h.raw_pairs(d):
            assert type(kb) is bytes and type(vb) is bytes


@pytest.mark.parametrize(
    ("reset_ns", "retry_ns", "allowed", "reset_s", "t"),
    [
        (0, 0, True, 0, 0),
        (1, 0, True, 1, 1),
        (NS - 1, 0, True, 1, 1),
        (NS, 0, True, 1, 1),
        (NS + 1, 0, True, 2, 2),
        (60 * NS, 5 * NS, False, 60, 5),
        (60 * NS, 5 * NS + 1, False, 60, 6),
        (60 * NS, 5 * NS - 1, False, 60, 5),
    ],
)
def test_second_boundaries(
    reset_ns: int, retry_ns: int, allowed: bool, reset_s: int, t: int
) -> None:
    h = RateHeaders('"s";q=10;w=60', ('"s"',), (10,))
    d = Decision(allowed, 10, 3, reset_ns / NS, retry_ns / NS)
    assert (d.reset_after_ns, d.retry_after_ns) == (reset_ns, retry_ns)
    assert h.pairs(d) == [
        ("RateLimit-Policy", '"s";q=10;w=60'),
        ("RateLimit", f'"s";r=3;t={t}'),
        ("X-RateLimit-Limit", "10"),
        ("X-RateLimit-Remaining", "3"),
        ("X-RateLimit-Reset", str(reset_s)),
    ]


def test_several_rates_name_the_decisions_rate() -> None:
    h = RateHeaders("p", ('"a"', '"b"', '"c"'), (5, 100, 5), x=False)
    assert h.pairs(Decision(True, 100, 1)) == [
        ("RateLimit-Policy", "p"),
        ("RateLimit", '"b";r=1;t=0'),
    ]
    # The first rate with that capacity; an unknown capacity: the first.
    assert h.pairs(Decision(True, 5, 1))[1] == ("RateLimit", '"a";r=1;t=0')
    assert h.pairs(Decision(True, 7, 1))[1] == ("RateLimit", '"a";r=1;t=0')


def test_families_and_empty_policy() -> None:
    d = Decision(True, 10, 9, 1.0)
    assert RateHeaders("", ('"a"',), (10,), ietf=True, x=False).pairs(d) == [
        ("RateLimit", '"a";r=9;t=1')
    ]
    assert RateHeaders("p", ('"a"',), (10,), ietf=False, x=True).raw_pairs(d) == [
        (b"x-ratelimit-limit", b"10"),
        (b"x-ratelimit-remaining", b"9"),
        (b"x-ratelimit-reset", b"1"),
    ]
    assert RateHeaders("p", ('"a"',), (10,), ietf=False, x=False).pairs(d) == []


class NotADecision:
    allowed = True
    limit = 10
    remaining = 1
    reset_after_ns = 0
    retry_after_ns = 0


@pytest.mark.parametrize("bad", [None, 1, "d", NotADecision()])
def test_a_non_decision_is_a_type_error(bad: Any) -> None:
    h = RateHeaders("p", ('"a"',), (10,))
    out: list[Any] = []
    with pytest.raises(TypeError, match="Decision"):
        h.pairs(bad)
    with pytest.raises(TypeError, match="Decision"):
        h.raw_pairs(bad)
    with pytest.raises(TypeError, match="Decision"):
        h.extend(bad, out)
    with pytest.raises(TypeError, match="Decision"):
        h.extend_raw(bad, out)
    assert out == []


def test_extend_needs_a_list() -> None:
    h = RateHeaders("p", ('"a"',), (10,))
    d = Decision(True, 10, 1)
    with pytest.raises(TypeError, match="list"):
        h.extend(d, ())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="2 positional"):
        h.extend(d)  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("args", "exc"),
    [
        (("p", ('"a"', '"b"'), (1,)), ValueError),
        (("p", ('"a"',), (1, 2)), ValueError),
        (("p", (), ()), ValueError),
        (("p", ("é",), (1,)), ValueError),
        (("pé", ('"a"',), (1,)), ValueError),
        ((b"p", ('"a"',), (1,)), TypeError),
        (("p", ['"a"'], (1,)), TypeError),
        (("p", ('"a"',), [1]), TypeError),
        (("p", (1,), (1,)), TypeError),
        (("p", ('"a"',), ("1",)), TypeError),
        (("p", ('"a"',), (True,)), TypeError),
    ],
)
def test_bad_construction(args: tuple[Any, ...], exc: type[Exception]) -> None:
    with pytest.raises(exc):
        RateHeaders(*args)


def test_attributes_and_repr() -> None:
    h = RateHeaders("p", ('"a"',), (10,), ietf=False)
    assert (h.policy, h.names, h.capacities, h.ietf, h.x) == (
        "p",
        ('"a"',),
        (10,),
        False,
        True,
    )
    assert "RateHeaders(" in repr(h)


def test_http_renders_a_duck_typed_decision_alike() -> None:
    # A limiter object of the user's may answer with its own kind of
    # decision: stanchion.http renders it in Python, to the same headers.
    from stanchion.http import _HeaderParts

    info: Any = object()
    for ietf, x in [(True, True), (True, False), (False, True)]:
        parts = _HeaderParts(info, "p", ('"a"', '"b"'), (10, 20), ietf, x)
        duck = NotADecision()
        duck.allowed = False
        duck.limit = 20
        duck.remaining = 0
        duck.reset_after_ns = 2 * NS + 1
        duck.retry_after_ns = NS
        real = Decision(False, 20, 0, (2 * NS + 1) / NS, 1.0)
        assert parts.py_pairs(duck) == parts.render.pairs(real)
        assert parts.py_raw_pairs(duck) == parts.render.raw_pairs(real)


# -- two layers: extend and into_store keep an inner layer's X-RateLimit-* ----

INNER = [
    ("RateLimit-Policy", '"inner";q=2;w=1'),
    ("RateLimit", '"inner";r=1;t=1'),
    ("X-RateLimit-Limit", "2"),
    ("X-RateLimit-Remaining", "1"),
    ("X-RateLimit-Reset", "1"),
]


def django_store(pairs: list[tuple[str, str]]) -> dict[str, tuple[str, str]]:
    return {k.lower(): (k, v) for k, v in pairs}


def store_reference(
    pairs: list[tuple[str, str]], store: dict[str, tuple[str, str]]
) -> None:
    """What Django's own ``response[k] = v`` would leave, by the rule of
    ``outer_headers``: list fields joined, the inner trio kept."""
    for k, v in outer_headers(pairs, store, lambda s: "x-ratelimit-limit" in s):
        old = store.get(k.lower())
        if old is not None and not k.startswith("X-"):
            v = f"{old[1]}, {v}"
        store[k.lower()] = (k, v)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_extend_and_into_store_follow_the_two_layer_rule(data: Any) -> None:
    policy, names, caps, ietf, x = data.draw(setups())
    h = RateHeaders(policy, names, caps, ietf, x)
    d = data.draw(decisions(caps))
    inner = data.draw(st.lists(st.sampled_from(INNER), unique=True))
    want = h.pairs(d)

    out: list[Any] = list(inner)
    h.extend(d, out)
    assert out == [*inner, *outer_headers(want, inner)]
    out_raw: list[Any] = raw(inner)
    h.extend_raw(d, out_raw)
    assert out_raw == [*raw(inner), *outer_headers(raw(want), raw(inner))]

    store = django_store(inner)
    expected = dict(store)
    store_reference(want, expected)
    h.into_store(d, store)
    assert store == expected


def test_outer_headers_never_compares_bytes_with_str() -> None:
    """ASGI's byte names are never compared with str ones: under
    ``python -bb`` that comparison raises BytesWarning."""
    code = """if True:
        from stanchion._adapt import outer_headers
        trio = [(b"x-ratelimit-limit", b"5"), (b"x-ratelimit-remaining", b"4"),
                (b"x-ratelimit-reset", b"9")]
        extra = [(b"ratelimit", b"r"), *trio]
        assert outer_headers(extra, []) == extra
        assert outer_headers(extra, [(b"X-RateLimit-Limit", b"7")]) == extra[:1]
        s = [(k.decode(), v.decode()) for k, v in extra]
        assert outer_headers(s, [("x-ratelimit-limit", "7")]) == s[:1]
        """
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    subprocess.run([sys.executable, "-bb", "-c", code], check=True, env=env)


def test_into_store_checks_its_arguments_first() -> None:
    h = RateHeaders("p", ('"a"',), (10,))
    d = Decision(True, 10, 1)
    with pytest.raises(TypeError, match="dict"):
        h.into_store(d, [])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="2 positional"):
        h.into_store(d)  # type: ignore[call-arg]
    store: dict[str, Any] = {"ratelimit": ("RateLimit", "x")}
    with pytest.raises(TypeError, match="Decision"):
        h.into_store(NotADecision(), store)  # type: ignore[arg-type]
    assert store == {"ratelimit": ("RateLimit", "x")}
    # A value of the wrong shape under our name is replaced, not joined.
    store = {"ratelimit": "not a pair", "ratelimit-policy": ("P", 5)}  # type: ignore[dict-item]
    h.into_store(d, store)
    assert store["ratelimit"] == ("RateLimit", '"a";r=1;t=0')
    assert store["ratelimit-policy"] == ("RateLimit-Policy", "p")


def test_into_store_leaks_nothing_in_a_hot_loop() -> None:
    h = RateHeaders('"g";q=5;w=60', ('"g"',), (5,))
    d = Decision(True, 5, 4, 12.0)
    inner = ("RateLimit", '"inner";r=1;t=1')
    objs = (h, d, inner, *inner)
    before = [sys.getrefcount(o) for o in objs]
    for i in range(10_000):
        store = {"ratelimit": inner} if i % 2 else {}
        h.into_store(d, store)
        out: list[Any] = [("X-RateLimit-Limit", "1")] if i % 3 else []
        h.extend(d, out)
    del store, out
    assert [sys.getrefcount(o) for o in objs] == before
